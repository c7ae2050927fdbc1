"""The text a PDF shows, read from its content streams with the standard library.

Both providers bill a PDF page as its extracted text plus an image of the
page (Anthropic "PDF support", OpenAI "File inputs"), so the estimate needs the
text. A full PDF library is not needed to *count* it: the text is the string
operands of the text-showing operators (``Tj``, ``TJ``, ``'``, ``"``) inside
``BT`` ... ``ET`` blocks (ISO 32000-1, 9.4 "Text objects", 9.4.3 "Text-showing
operators"). Two encodings matter in practice:

- simple fonts (one byte a character): literal strings ``(...)``, decoded as
  Latin-1 after their escapes (7.3.4.2 "Literal strings");
- composite fonts (``Type0``, ``Identity-H``; what Word, Chrome and LaTeX
  write): hex strings ``<...>`` of 2-byte glyph codes, which only the font's
  ``ToUnicode`` CMap turns into text (9.10.3 "ToUnicode CMaps": ``bfchar``
  and ``bfrange`` entries). Without it a page's text would count as nothing
  and its price would be short by the whole text half.

The CMaps of all fonts are merged (a code seldom means two different
characters on one page, and only the amount of text is needed). Spacing
follows the positioning operators: a new line (``Td``/``TD`` with a vertical
move, ``T*``, ``Tm``, ``'``, ``"``), a new ``BT`` block, or a ``TJ``
adjustment wider than a space (more than 200 thousandths of an em, the
convention text extractors such as pdfminer use) starts a new word; a
horizontal ``Td`` between glyphs of one word (Chrome positions each glyph)
does not.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import re
import zlib
from collections.abc import Iterable

__all__ = ["decode_stream", "shown_text", "to_unicode"]

_STRING = rb"\((?:[^()\\]|\\.)*\)|<[0-9A-Fa-f\s]*>"  # literal (no nesting) or hex
# A number is matched whole (not after or before a digit or a point), so a
# long array that is not shown (a dash pattern) or a run of digits cannot
# make the search backtrack.
_NUMBER = rb"(?<![\d.])[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?![\d.])"
# The operators that matter, each with the operands it needs, in one pass.
_OPERATION = re.compile(
    rb"(?P<bt>\bBT\b)|(?P<et>\bET\b)"
    rb"|(?P<move>" + _NUMBER + rb"\s+(?P<ty>" + _NUMBER + rb")\s+T[dD]\b)"
    rb"|(?P<line>T\*|\bTm\b)"
    rb"|(?P<show>(?P<string>" + _STRING + rb")\s*(?P<op>Tj\b|'|\"))"
    rb"|(?P<array>\[(?P<items>(?:" + _STRING + rb"|" + _NUMBER + rb"|\s)*)\]\s*TJ\b)",
    re.S,
)
_ARRAY_ITEM = re.compile(_STRING + rb"|" + _NUMBER, re.S)
_BFCHAR = re.compile(rb"beginbfchar(.*?)endbfchar", re.S)
_BFRANGE = re.compile(rb"beginbfrange(.*?)endbfrange", re.S)
_HEX = re.compile(rb"<([0-9A-Fa-f\s]*)>")
_ESCAPES = {b"n": b"\n", b"r": b"\r", b"t": b"\t", b"b": b"\b", b"f": b"\f",
            b"(": b"(", b")": b")", b"\\": b"\\"}
_ESCAPE = re.compile(rb"\\([0-7]{1,3}|.)", re.S)
# A TJ adjustment (thousandths of an em) wider than a space: a word break.
_TJ_SPACE = 200.0


def decode_stream(body: bytes) -> bytes:
    """A stream's data under the filters text is written with: ``FlateDecode``,
    and ``ASCII85Decode`` before it (ReportLab's default; 7.4.3); other data
    is returned as is. (Flate data is binary: never stripped.)"""
    data = body
    text = body.strip()
    if text.endswith(b"~>"):
        with contextlib.suppress(ValueError, binascii.Error):
            data = base64.a85decode(text, adobe=text.startswith(b"<~"),
                                    ignorechars=b" \t\n\r\x0b\x0c")
    try:
        return zlib.decompress(data)
    except zlib.error:
        return data


def _hex_bytes(text: bytes) -> bytes:
    digits = re.sub(rb"\s", b"", text)
    if len(digits) % 2:
        digits += b"0"  # 7.3.4.3: an odd final digit is followed by 0
    return bytes.fromhex(digits.decode("ascii"))


def _utf16(code: bytes) -> str:
    return code.decode("utf-16-be", errors="replace")


def to_unicode(streams: Iterable[bytes]) -> dict[bytes, str]:
    """Source codes -> text from every ``ToUnicode`` CMap among ``streams``."""
    table: dict[bytes, str] = {}
    for body in streams:
        if b"begincmap" not in body:
            continue
        for block in _BFCHAR.findall(body):
            pairs = _HEX.findall(block)
            for src, dst in zip(pairs[::2], pairs[1::2], strict=False):
                table[_hex_bytes(src)] = _utf16(_hex_bytes(dst))
        for block in _BFRANGE.findall(body):
            _add_ranges(table, block)
    return table


def _add_ranges(table: dict[bytes, str], block: bytes) -> None:
    # Each entry: <lo> <hi> <dst>  or  <lo> <hi> [<dst1> <dst2> ...].
    for entry in re.finditer(rb"<([0-9A-Fa-f\s]*)>\s*<([0-9A-Fa-f\s]*)>\s*"
                             rb"(<[0-9A-Fa-f\s]*>|\[[^\]]*\])", block, re.S):
        lo, hi = _hex_bytes(entry.group(1)), _hex_bytes(entry.group(2))
        width = len(lo)
        start, stop = int.from_bytes(lo, "big"), int.from_bytes(hi, "big")
        if width == 0 or stop < start or stop - start > 0xFFFF:
            continue
        target = entry.group(3)
        if target.startswith(b"["):
            for i, dst in enumerate(_HEX.findall(target)):
                if start + i > stop:
                    break
                table[(start + i).to_bytes(width, "big")] = _utf16(_hex_bytes(dst))
            continue
        first = _hex_bytes(target[1:-1])
        if not first:
            continue
        base = int.from_bytes(first[-2:], "big")
        prefix = first[:-2]
        for i in range(stop - start + 1):
            last = (base + i) & 0xFFFF
            table[(start + i).to_bytes(width, "big")] = _utf16(prefix + last.to_bytes(2, "big"))


def _literal(token: bytes) -> bytes:
    def unescape(match: re.Match[bytes]) -> bytes:
        value = match.group(1)
        if value[:1].isdigit():
            return bytes([int(value, 8) & 0xFF])
        if value in (b"\n", b"\r"):
            return b""  # a line continuation
        return _ESCAPES.get(value, value)

    return _ESCAPE.sub(unescape, token[1:-1])


def _decode(raw: bytes, table: dict[bytes, str], widths: tuple[int, ...]) -> str:
    """Text of a shown string: through the ToUnicode codes where they match,
    else Latin-1 (a simple font's bytes)."""
    for width in widths:
        if len(raw) % width:
            continue
        codes = [raw[i:i + width] for i in range(0, len(raw), width)]
        known = [table.get(code) for code in codes]
        if codes and sum(k is not None for k in known) * 2 >= len(codes):
            return "".join(k if k is not None else "\ufffd" for k in known)
    return raw.decode("latin-1")


def shown_text(streams: Iterable[bytes]) -> str:
    """The text the content streams among ``streams`` show, words spaced."""
    bodies = list(streams)
    table = to_unicode(bodies)
    widths = tuple(sorted({len(code) for code in table}, reverse=True))
    out: list[str] = []
    for body in bodies:
        if b"BT" not in body or b"begincmap" in body:
            continue
        _show(body, table, widths, out)
    return "".join(out).strip()


def _show(body: bytes, table: dict[bytes, str], widths: tuple[int, ...],
          out: list[str]) -> None:
    in_text = False
    space = False  # a word break is due before the next shown text

    def emit(token: bytes) -> None:
        nonlocal space
        raw = _literal(token) if token.startswith(b"(") else _hex_bytes(token[1:-1])
        text = _decode(raw, table, widths)
        if not text:
            return
        if space and out and not out[-1].endswith(" "):
            out.append(" ")
        out.append(text)
        space = False

    for match in _OPERATION.finditer(body):
        kind = match.lastgroup
        if kind == "bt":
            in_text, space = True, True
        elif kind == "et":
            in_text = False
        elif not in_text:
            continue
        elif kind == "move":
            if _number(match.group("ty")) != 0.0:
                space = True  # a vertical move: a new line
        elif kind == "line":
            space = True
        elif kind == "show":
            space = space or match.group("op") != b"Tj"
            emit(match.group("string"))
        elif kind == "array":
            for item in _ARRAY_ITEM.findall(match.group("items")):
                if item[:1] in (b"(", b"<"):
                    emit(item)
                elif -_number(item) > _TJ_SPACE:
                    space = True


def _number(token: bytes) -> float:
    try:
        return float(token)
    except ValueError:
        return 0.0
