"""A tiny PNG reader (8-bit RGB/RGBA, non-interlaced) for screenshot checks.

Pure Python with zlib, so the Chromium test needs no imaging library.
"""

from __future__ import annotations

import struct
import zlib
from itertools import accumulate
from pathlib import Path


class Image:
    def __init__(self, width: int, height: int, bpp: int, rows: list[bytes]) -> None:
        self.width, self.height, self.bpp, self.rows = width, height, bpp, rows

    def pixel(self, x: int, y: int) -> tuple[int, int, int]:
        i = x * self.bpp
        r, g, b = self.rows[y][i:i + 3]
        return r, g, b

    def count(self, rgb: tuple[int, int, int]) -> int:
        return sum(1 for y in range(self.height) for x in range(self.width)
                   if self.pixel(x, y) == rgb)

    def columns(self, rgb: tuple[int, int, int]) -> dict[int, int]:
        """x -> number of pixels of exactly ``rgb`` in that column."""
        out: dict[int, int] = {}
        target = bytes(rgb)
        for row in self.rows:
            start = 0
            while True:
                i = row.find(target, start)
                if i < 0:
                    break
                if i % self.bpp == 0:
                    x = i // self.bpp
                    out[x] = out.get(x, 0) + 1
                start = i + 1
        return out

    def rows_with(self, rgb: tuple[int, int, int]) -> dict[int, int]:
        """y -> number of pixels of exactly ``rgb`` in that row."""
        out: dict[int, int] = {}
        target = bytes(rgb)
        for y, row in enumerate(self.rows):
            n, start = 0, 0
            while True:
                i = row.find(target, start)
                if i < 0:
                    break
                if i % self.bpp == 0:
                    n += 1
                start = i + 1
            if n:
                out[y] = n
        return out


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    if pa <= pb and pa <= pc:
        return a
    return b if pb <= pc else c


def read_png(path: Path) -> Image:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat = 8, []
    width = height = bpp = 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind = data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and color in (2, 6) and interlace == 0, (depth, color, interlace)
            bpp = 3 if color == 2 else 4
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
    raw = zlib.decompress(b"".join(idat))
    stride = width * bpp
    rows: list[bytes] = []
    prev = bytes(stride)
    for y in range(height):
        start = y * (stride + 1)
        ftype = raw[start]
        line = raw[start + 1:start + 1 + stride]
        if ftype == 0:
            cur = bytes(line)
        elif ftype == 1:  # Sub: a running sum per channel
            out = bytearray(stride)
            for c in range(bpp):
                out[c::bpp] = bytes(v & 0xFF for v in accumulate(line[c::bpp]))
            cur = bytes(out)
        elif ftype == 2:  # Up
            cur = bytes((a + b) & 0xFF for a, b in zip(line, prev, strict=True))
        else:
            out = bytearray(stride)
            for i in range(stride):
                a = out[i - bpp] if i >= bpp else 0
                b = prev[i]
                if ftype == 3:
                    out[i] = (line[i] + ((a + b) >> 1)) & 0xFF
                else:
                    c = prev[i - bpp] if i >= bpp else 0
                    out[i] = (line[i] + _paeth(a, b, c)) & 0xFF
            cur = bytes(out)
        rows.append(cur)
        prev = cur
    return Image(width, height, bpp, rows)
