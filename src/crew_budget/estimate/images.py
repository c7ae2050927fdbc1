"""Image sizes from data URLs and the providers' image-token formulas.

A budget estimate must price images without the network, so sizes are read
from the header of a base64 data URL (PNG, JPEG, GIF, WebP). An image given by
an ``http(s)`` URL, a file id or an unreadable header has no known size.
Claude's policies price it at the *largest* token count the model can bill
(``max_tokens``). OpenAI's and the OpenAI-compatible hosts' policies price it
as a 512x512 image (``UNKNOWN_SIZE``): the low-resolution rendition OpenAI's
guide says every image gets ("The model receives a low-resolution 512px x
512px version of the image"), i.e. one tile on the tile models (85 + 170 for
gpt-4o). The maximum (85 + 8 x 170 on gpt-4o, 48k tokens on gpt-4o-mini,
3,000 on gpt-5.4) over-reserved 5-30 times for the icons, logos and
thumbnails agents usually link; a larger linked image is under-estimated by
at most the difference, which the per-model calibration and the reserve
margin absorb. Send the bytes (a data URL) for an exact count.

Formulas (OpenAI "Images and vision" guide, section "Calculating costs",
developers.openai.com/api/docs/guides/images-vision; Anthropic "Vision" guide,
section "Calculate image costs", platform.claude.com/docs/en/build-with-claude/vision;
Google "Gemini API: token counting", section "Images"):

- OpenAI tile models (gpt-4o, gpt-4.1, gpt-5/5.1, o1/o3, 4o-mini, CUA):
  ``detail: low`` costs the base tokens; otherwise fit the image in
  2048x2048, scale the shortest side down to 768 px (rounding the other side
  down), count 512 px tiles: ``base + tiles * tile``.
- OpenAI patch models (gpt-4.1-mini/nano, o4-mini, gpt-5-mini/nano, gpt-5.2+):
  fit the detail level's maximum dimension, cover with 32 px patches, shrink
  to the patch budget if it is exceeded, multiply by the model's multiplier
  and round up. Where revisions of the guide disagree (gpt-4.1-mini's budget
  went from 1,536 to 6,144 patches; gpt-5-mini/nano multipliers went from
  1.62/2.46 to 1.2/1.5) the larger value is used.
- Anthropic: ``ceil(width * height / 750)`` after scaling the image down to a
  1568 px long edge and ~1.2 megapixels (the largest unresized sizes in
  Anthropic's table, e.g. 784x1568, bill ~1,640 tokens). Claude Opus 4.7 and
  later read larger images (2576 px long edge, ~3.75 MP, as announced with
  Opus 4.7); those limits are used for that family.
- Gemini: 258 tokens per 768x768 tile (one tile up to 384x384); Gemini 3
  bills at least 1,120 tokens per image at the default (high) resolution.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
import struct
from dataclasses import dataclass

__all__ = [
    "UNKNOWN_SIZE",
    "ImagePolicy",
    "anthropic_policy",
    "compat_policy",
    "data_url_size",
    "gemini_policy",
    "image_size",
    "openai_policy",
]

_DATA_URL = re.compile(r"^data:([^;,]*)(;[^,]*)?,", re.IGNORECASE)


# -- sizes -----------------------------------------------------------------


def image_size(data: bytes) -> tuple[int, int] | None:
    """``(width, height)`` from the first bytes of a PNG/JPEG/GIF/WebP file."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        w, h = struct.unpack(">II", data[16:24])
        return _valid(w, h)
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        w, h = struct.unpack("<HH", data[6:10])
        return _valid(w, h)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _webp_size(data)
    if data[:2] == b"\xff\xd8":
        return _jpeg_size(data)
    return None


def _valid(w: int, h: int) -> tuple[int, int] | None:
    return (w, h) if w > 0 and h > 0 else None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8X" and len(data) >= 30:
        w = int.from_bytes(data[24:27], "little") + 1
        h = int.from_bytes(data[27:30], "little") + 1
        return _valid(w, h)
    if chunk == b"VP8 " and len(data) >= 30:
        w, h = struct.unpack("<HH", data[26:30])
        return _valid(w & 0x3FFF, h & 0x3FFF)
    if chunk == b"VP8L" and len(data) >= 25:
        bits = int.from_bytes(data[21:25], "little")
        return _valid((bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1)
    return None


_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        if marker in _SOF:
            if i + 9 > n:
                return None
            h, w = struct.unpack(">HH", data[i + 5 : i + 9])
            return _valid(w, h)
        i += 2 + length
    return None


def data_url_size(url: str) -> tuple[int, int] | None:
    """Size of a base64 ``data:image/...`` URL, decoding only as much as needed.

    PNG, GIF and WebP need the first ~30 bytes; a JPEG's frame header can sit
    behind EXIF data, so the decoded prefix doubles until it is found.
    """
    match = _DATA_URL.match(url)
    if match is None or "base64" not in (match.group(2) or "").lower():
        return None
    return base64_size(url[match.end() :])


def base64_size(payload: str) -> tuple[int, int] | None:
    """Size of a base64-encoded image (Anthropic ``source.data``)."""
    chunk = 64
    total = len(payload)
    while True:
        take = min(total, chunk) // 4 * 4
        try:
            head = base64.b64decode(payload[:take], validate=False)
        except (binascii.Error, ValueError):
            return None
        size = image_size(head)
        if size is not None or take >= total - 3 or head[:2] != b"\xff\xd8":
            return size
        chunk *= 4


# -- policies ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ImagePolicy:
    """How one model family bills an image. ``key`` identifies it in caches."""

    key: str
    kind: str  # "tile" | "patch" | "pixels" | "gemini"
    base: int = 0
    tile: int = 0
    multiplier: float = 1.0
    # patch models: detail -> (max pixel dimension, patch budget or 0 for none)
    limits: tuple[tuple[str, int, int], ...] = ()
    long_edge: int = 1568
    max_pixels: int = 1_229_312
    min_tokens: int = 258
    # The size assumed for an image whose size is unknown; None: the maximum.
    unknown: tuple[int, int] | None = None

    def tokens(self, size: tuple[int, int] | None, detail: str = "auto") -> int:
        """Billed tokens of one image; ``size=None`` means unknown (see module doc)."""
        detail = (detail or "auto").lower()
        if size is None:
            if self.unknown is None:
                return self.max_tokens(detail)
            size = self.unknown
        w, h = size
        if self.kind == "tile":
            return _tile_tokens(w, h, self.base, self.tile, detail)
        if self.kind == "patch":
            max_dim, budget = self._limit(detail)
            return math.ceil(_patches(w, h, max_dim, budget) * self.multiplier - 1e-9)
        if self.kind == "gemini":
            tiles = 1 if w <= 384 and h <= 384 else math.ceil(w / 768) * math.ceil(h / 768)
            return max(258 * tiles, self.min_tokens)
        return _pixel_tokens(w, h, self.long_edge, self.max_pixels)

    def max_tokens(self, detail: str = "auto") -> int:
        """The most this model bills for one image at ``detail`` (unknown size)."""
        if self.kind == "tile":
            # After fitting 2048x2048 and scaling the short side to 768 px the
            # image spans at most 2 x 4 tiles.
            return self.base if detail == "low" else self.base + 8 * self.tile
        if self.kind == "patch":
            max_dim, budget = self._limit(detail)
            side = math.ceil(max_dim / 32)
            patches = side * side
            if budget:
                patches = min(patches, budget)
            # The API rejects images needing more than 30,000 patches.
            return math.ceil(min(patches, 30_000) * self.multiplier - 1e-9)
        if self.kind == "gemini":
            return max(258 * 16, self.min_tokens)
        # Claude: the largest image not scaled down is the larger of the pixel
        # cap and a 1:2 image at the long edge (Vision docs: 784x1568, 1,639
        # tokens), whichever the shape.
        return math.ceil(max(self.max_pixels, self.long_edge * self.long_edge // 2) / 750)

    def _limit(self, detail: str) -> tuple[int, int]:
        fallback: tuple[int, int] | None = None
        for name, max_dim, budget in self.limits:
            if name == detail:
                return max_dim, budget
            if name == "auto":
                fallback = (max_dim, budget)
        return fallback or (2048, 1536)


def _tile_tokens(w: int, h: int, base: int, tile: int, detail: str) -> int:
    if detail == "low":
        return base
    fw, fh = float(w), float(h)
    if max(fw, fh) > 2048:
        scale = 2048 / max(fw, fh)
        fw, fh = fw * scale, fh * scale
    if min(fw, fh) > 768:
        scale = 768 / min(fw, fh)
        fw, fh = math.floor(fw * scale + 1e-9), math.floor(fh * scale + 1e-9)
    tiles = math.ceil(fw / 512 - 1e-9) * math.ceil(fh / 512 - 1e-9)
    return base + tile * tiles


def _patches(w: int, h: int, max_dim: int, budget: int) -> int:
    fw, fh = float(w), float(h)
    if max(fw, fh) > max_dim:
        scale = max_dim / max(fw, fh)
        fw, fh = math.floor(fw * scale), math.floor(fh * scale)
    patches = math.ceil(fw / 32) * math.ceil(fh / 32)
    if not budget or patches <= budget:
        return patches
    shrink = math.sqrt(32 * 32 * budget / (fw * fh))
    shrink *= min(
        math.floor(fw * shrink / 32) / (fw * shrink / 32),
        math.floor(fh * shrink / 32) / (fh * shrink / 32),
    )
    rw, rh = math.floor(fw * shrink), math.floor(fh * shrink)
    return min(math.ceil(rw / 32) * math.ceil(rh / 32), budget)


# Claude's documented ``(w*h)/750`` is an approximation: 750 is about the
# area of a 28 px square, and small images bill whole 28 px patches plus the
# image block's delimiters. On recorded Claude 3 Haiku, 3.5 Sonnet, Sonnet 4,
# 4.5 and Haiku 4.5 calls with 50x65 to 228x148 px images, the bill is
# ceil(w/28) * ceil(h/28) + 3 (0-2 tokens off), where w*h/750 was 4-11 under;
# large images keep the documented formula (never below it).
_CLAUDE_PATCH = 28
_CLAUDE_IMAGE_DELIMITERS = 3


def _pixel_tokens(w: int, h: int, long_edge: int, max_pixels: int) -> int:
    scale = min(1.0, long_edge / max(w, h), math.sqrt(max_pixels / (w * h)))
    sw, sh = w * scale, h * scale
    documented = max(1, math.ceil(sw * sh / 750 - 1e-9))
    patches = math.ceil(sw / _CLAUDE_PATCH - 1e-9) * math.ceil(sh / _CLAUDE_PATCH - 1e-9)
    return max(documented, patches) + _CLAUDE_IMAGE_DELIMITERS


# -- per-model policies -------------------------------------------------------

_HIGH_2500 = (("low", 512, 0), ("high", 2048, 2500))
_PATCH_FAMILIES: tuple[tuple[str, float, tuple[tuple[str, int, int], ...]], ...] = (
    # gpt-5.6: original/auto have no patch budget (the API rejects > 30,000).
    ("gpt-5.6", 1.2, (*_HIGH_2500, ("original", 65535, 0), ("auto", 65535, 0))),
    ("gpt-5.5", 1.2, (*_HIGH_2500, ("original", 6000, 10000), ("auto", 6000, 10000))),
    ("gpt-5.4", 1.2, (("low", 2048, 6144), ("high", 2048, 2500), ("original", 6000, 10000),
                      ("auto", 2048, 2500))),
    ("gpt-5.3", 1.2, (("auto", 2048, 6144),)),
    ("gpt-5.2", 1.2, (("auto", 2048, 6144),)),
    ("gpt-5-mini", 1.62, (("auto", 2048, 1536),)),
    ("gpt-5-nano", 2.46, (("auto", 2048, 1536),)),
    ("gpt-4.1-mini", 1.62, (("auto", 2048, 6144),)),
    ("gpt-4.1-nano", 2.46, (("auto", 2048, 1536),)),
    ("o4-mini", 1.72, (("auto", 2048, 1536),)),
)
_TILE_FAMILIES: tuple[tuple[str, int, int], ...] = (
    ("gpt-4o-mini", 2833, 5667),
    ("gpt-5.1", 70, 140),
    ("gpt-5", 70, 140),
    ("computer-use", 65, 129),
    ("o1", 75, 150),
    ("o3", 75, 150),
    ("gpt-4o", 85, 170),
    ("chatgpt-4o", 85, 170),
    ("gpt-4.1", 85, 170),
    ("gpt-4.5", 85, 170),
    ("gpt-4", 85, 170),
)
# OpenAI's low-resolution rendition of any image ("Images and vision": "The
# model receives a low-resolution 512px x 512px version of the image"): the
# size assumed for an image the request does not carry (see module doc).
UNKNOWN_SIZE = (512, 512)
# A model we do not know: the largest documented budget/multiplier pair of
# the current patch models (2,500 patches x 1.62), i.e. over- not under-.
_UNKNOWN_OPENAI = ImagePolicy("patch:unknown", "patch", multiplier=1.62,
                              limits=(("auto", 2048, 2500),), unknown=UNKNOWN_SIZE)


def openai_policy(model: str) -> ImagePolicy:
    """The image rule of an OpenAI model (name without provider prefix, lower case)."""
    for prefix, mult, limits in _PATCH_FAMILIES:
        if model.startswith(prefix):
            return ImagePolicy(f"patch:{prefix}", "patch", multiplier=mult, limits=limits,
                               unknown=UNKNOWN_SIZE)
    for prefix, base, tile in _TILE_FAMILIES:
        if model.startswith(prefix):
            return ImagePolicy(f"tile:{base}:{tile}", "tile", base=base, tile=tile,
                               unknown=UNKNOWN_SIZE)
    return _UNKNOWN_OPENAI


# Anthropic, "Vision" > "Evaluate image size": an image whose long edge is over
# 1568 px, or that is over ~1,600 tokens (~1.15 megapixels), is scaled down
# first; the table of the largest sizes not scaled lists 1092x1092 (1:1),
# 951x1268 (3:4), 896x1344 (2:3), 819x1456 (9:16) and 784x1568 (1:2, where
# the long edge binds first). The pixel cap is the largest of the rows the
# long edge does not bind, 951 x 1268 = 1,205,868 px (1,608 tokens): a
# US Letter or A4 PDF page image bills ~1,600 tokens (recorded pages: about
# 1,570-1,590), not the 1:2 row's 1,639. The price is a 784x1568 image
# estimated 1.9 % under that row; an image of unknown size still reserves it.
_ANTHROPIC = ImagePolicy("pixels:1568", "pixels", long_edge=1568, max_pixels=951 * 1268)
_ANTHROPIC_HIRES = ImagePolicy("pixels:2576", "pixels", long_edge=2576, max_pixels=3_750_000)


def anthropic_policy(hires: bool) -> ImagePolicy:
    """Claude's ``width*height/750`` rule; ``hires`` for Opus 4.7 and later."""
    return _ANTHROPIC_HIRES if hires else _ANTHROPIC


def gemini_policy(model: str) -> ImagePolicy:
    """Gemini's 258-token tiles (Gemini 3: at least 1,120 per image)."""
    floor = 1120 if "gemini-3" in model else 258
    return ImagePolicy(f"gemini:{floor}", "gemini", min_tokens=floor, unknown=UNKNOWN_SIZE)


# Models on OpenAI-compatible hosts (Qwen-VL, Pixtral/Mistral, Llama 4, Grok):
# their vision encoders cut the image into 14-16 px patches merged in 2x2
# groups (Qwen2.5-VL's processor: 28x28 px per token plus the vision start/end
# tokens, Qwen/Qwen2.5-VL-7B-Instruct preprocessor_config.json "patch_size":
# 14, "merge_size": 2), which Claude's 28 px rule above also counts; an
# unknown size is the 512x512 assumption, as for OpenAI.
_COMPAT = ImagePolicy("pixels:compat", "pixels", long_edge=1568, max_pixels=1_229_312,
                      unknown=UNKNOWN_SIZE)


def compat_policy(model: str) -> ImagePolicy:
    """The image rule of a model served by an OpenAI-compatible host."""
    if "gemini" in model:
        return gemini_policy(model)
    return _COMPAT
