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
- Anthropic: ``ceil(width / 28) * ceil(height / 28)`` visual tokens (28 px
  patches) after resizing the image to the largest aspect-preserving size
  within the model's long edge and visual-token ceiling (1568 px and 1,568
  patches; Claude Opus 4.7 and later 2576 px and 4,784). See ``_claude_size``.
- Gemini: 258 tokens per 768x768 tile (one tile up to 384x384); Gemini 3
  bills at least 1,120 tokens per image at the default (high) resolution.

OpenAI PDF pages. OpenAI's "File inputs" guide says only that "both the
extracted text and an image of each page" go into the context; the size a
page is rasterized at, and the rule its image bills by, are not documented
(LangChain's maintainers reached the same conclusion, langchain-ai/langchain
PR 30601: "OpenAI does not appear to document how it transforms PDF pages to
images"). Recorded Chat Completions calls show that no documented image rule
applies: a one-page PDF with a line of text bills ~215 tokens on gpt-4o for
US Letter and for A4 alike (public: pydantic-ai's recorded gpt-4o call with
an A4 page, 235 prompt tokens with a 9-token question), the same on
gpt-4o-mini (no 33x image multiplier), and ~990 on gpt-5.4; a page with
nothing drawn bills no image at all (crewAI's recorded Responses calls: 4
tokens for a blank page). A high-detail gpt-4o image costs at least
85 + 170 = 255 and a low-detail one 85, so no page size reproduces 215.
The estimator therefore prices a page as its text plus a bound, the most
one image can bill at high detail, at most 3,000 (estimate/__init__.py,
``_pdf_page_image``): an over-reservation, never an under-estimate of the
image, until OpenAI documents the rule.
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
    kind: str  # "tile" | "patch" | "claude" | "pixels" | "gemini"
    base: int = 0
    tile: int = 0
    multiplier: float = 1.0
    # patch models: detail -> (max pixel dimension, patch budget or 0 for none)
    limits: tuple[tuple[str, int, int], ...] = ()
    long_edge: int = 1568
    max_pixels: int = 1_229_312
    # Claude: the most 28 px patches (visual tokens) one image may bill.
    max_patches: int = 1568
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
        if self.kind == "claude":
            rw, rh = _claude_size(w, h, self.long_edge, self.max_patches)
            return _claude_patches(rw, rh) + _CLAUDE_IMAGE_DELIMITERS
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
        if self.kind == "claude":
            return self.max_patches + _CLAUDE_IMAGE_DELIMITERS
        # Compat hosts (the pixel rule): the largest image not scaled down is
        # the larger of the pixel cap and a 1:2 image at the long edge
        # (784x1568 px, 1,639 tokens), whichever the shape.
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


# Anthropic, "Images and vision" (platform.claude.com/docs/en/build-with-claude/
# vision, current version): "Claude views images in patches instead of
# pixels. Each patch is a 28x28 pixel block of the image, referred to as a
# visual token. An image therefore costs ceil(width / 28) x ceil(height / 28)
# visual tokens." An image larger than the model's native resolution "is
# first resized to the largest possible size that preserves the aspect
# ratio", then padded to a multiple of 28 px (which the ceilings count); the
# "Coordinates and bounding boxes" page adds that the size must satisfy both
# ceilings, the long edge and the visual tokens. The earlier ``(w*h)/750`` is
# the same rule rounded (750 is about 28 x 28, without the padding).
# Ceilings: a 1568 px long edge, and 1,568 visual tokens, the largest
# unresized size the earlier table lists (784x1568 px, 1:2, = 28 x 56
# patches; the page's "~1,600 tokens"); Claude Opus 4.7 and later read
# 2576 px, "~3.75 megapixels" (2576x1456 px = 92 x 52 = 4,784 patches).
# Each image block also bills 3 tokens for its delimiters (recorded Claude
# 3 Haiku to Haiku 4.5 calls with 50x65 to 228x148 px images: patches + 3,
# 0-2 tokens off).
_CLAUDE_PATCH = 28
_CLAUDE_IMAGE_DELIMITERS = 3


def _claude_patches(w: int, h: int) -> int:
    return -(-w // _CLAUDE_PATCH) * -(-h // _CLAUDE_PATCH)


def _claude_size(w: int, h: int, long_edge: int, max_patches: int) -> tuple[int, int]:
    """The size Claude reads a ``w`` x ``h`` image at: the largest
    aspect-preserving size within ``long_edge`` px and ``max_patches`` visual
    tokens (never enlarged)."""

    def size(scale: float) -> tuple[int, int]:
        return max(1, math.floor(w * scale + 1e-9)), max(1, math.floor(h * scale + 1e-9))

    top = min(1.0, long_edge / max(w, h))
    if _claude_patches(*size(top)) <= max_patches:
        return size(top)
    # Visual tokens only grow with the scale: bisect for the largest that fits.
    low, high = 0.0, top
    for _ in range(48):
        mid = (low + high) / 2
        if _claude_patches(*size(mid)) <= max_patches:
            low = mid
        else:
            high = mid
    return size(low)


def _pixel_tokens(w: int, h: int, long_edge: int, max_pixels: int) -> int:
    # The compat hosts' rule (see ``_COMPAT``): the pixel-area form of the
    # 28 px patches, scaled to a long edge and a pixel cap.
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


# Claude's ceilings (see ``_claude_size``): 1568 px and 1,568 visual tokens;
# Opus 4.7 and later 2576 px and 4,784. An image of unknown size reserves the
# ceiling (``max_tokens``).
_ANTHROPIC = ImagePolicy("claude:1568", "claude", long_edge=1568, max_patches=1568)
_ANTHROPIC_HIRES = ImagePolicy("claude:2576", "claude", long_edge=2576, max_patches=4784)


def anthropic_policy(hires: bool) -> ImagePolicy:
    """Claude's 28 px patch rule; ``hires`` for Opus 4.7 and later."""
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
