"""Anthropic messages rules: Claude generations, tool-use system prompts, documents.

Sources are cited at each rule.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import logging
import math
import re
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# -- model families ---------------------------------------------------------

# -- text ---------------------------------------------------------------------
#
# Claude 3 and later have no public tokenizer (Anthropic, "Token counting":
# the count_tokens endpoint is the way to know exactly; litellm's bundled
# "Claude tokenizer" is Claude 2's). Claude's tokenizer produces more tokens
# than OpenAI's cl100k_base for the same English text; on long recorded
# prompts (2k-5k tokens of prose and code) the billed text is 1.12-1.13x the
# cl100k_base count for Claude 3 Opus, Sonnet 4 and Haiku 4.5 alike, far
# steadier than litellm's Claude 2 tokenizer (1.03-1.15x), so:
CLAUDE_ENCODING = "cl100k_base"
_PROSE_FACTOR = 1.13
# (major, minor) the factor applies from -> factor, newest first.
_CLAUDE_TEXT_FACTORS: tuple[tuple[tuple[int, int], float], ...] = (
    # Claude Opus 4.7 introduced a new tokenizer that "may use roughly
    # 1.0-1.35x as many tokens" for the same text (Anthropic, "What's new in
    # Claude Opus 4.7", docs.claude.com/en/docs/about-claude/models/whats-new-claude-4-7):
    # the top of that range.
    ((4, 7), _PROSE_FACTOR * 1.35),
    # Claude 3, 3.5, 3.7, 4, 4.1, 4.5, 4.6 share a tokenizer (Anthropic
    # announced no change until 4.7; recorded 3-opus, 4 and 4.5 traffic agrees).
    ((3, 0), _PROSE_FACTOR),
)
_CLAUDE_UNKNOWN_FACTOR = _CLAUDE_TEXT_FACTORS[0][1]  # an unknown Claude: the newest, highest


def claude_text_factor(version: tuple[str, int, int] | None) -> float:
    """Billed Claude tokens per ``cl100k_base`` token of text, by generation."""
    if version is None:
        return _CLAUDE_UNKNOWN_FACTOR
    for since, factor in _CLAUDE_TEXT_FACTORS:
        if (version[1], version[2]) >= since:
            return factor
    return _CLAUDE_TEXT_FACTORS[-1][1]


# Dense text. Claude's tokenizer has a vocabulary of about 65k entries
# (Anthropic's public Claude 2 tokenizer, ``@anthropic-ai/tokenizer``; Rando &
# Tramer, "The Worst (But Only) Claude 3 Tokenizer", 2024, found Claude 3's of
# similar size), against ``cl100k_base``'s 100k, whose extra entries go to
# code, whitespace runs, JSON punctuation and number chunks. So where
# ``cl100k_base`` packs text tightly, Claude needs relatively more tokens than
# on prose. Measured in aggregate on the recorded Claude 3-4.6 traffic:
# prose, where ``cl100k_base`` averages 4.2-5.3 characters a token, bills
# 1.11-1.13x its count; pretty-printed JSON, number tables and identifier
# strings, under 4 characters a token, 1.17-1.20x. Text the user sends (a
# message or system text block, a tool result) of at least
# ``_DENSE_MIN_TOKENS`` tokens and under ``_DENSE_CHARS_PER_TOKEN`` characters
# a token is therefore counted at ``_DENSE_FACTOR`` instead of the
# generation's prose factor (a ratio, so Opus 4.7's new tokenizer scales the
# same way). Short strings are left alone: a few-word prompt has few
# characters a token without being dense, and bills about its
# ``cl100k_base`` count.
_DENSE_CHARS_PER_TOKEN = 4.0
_DENSE_MIN_TOKENS = 20
_DENSE_FACTOR = 1.18


def claude_text_tokens(n: int, text: str) -> int:
    """``cl100k_base`` tokens ``n`` of user ``text``, raised for dense text
    so that the prose factor applied later yields ``_DENSE_FACTOR``."""
    if n >= _DENSE_MIN_TOKENS and len(text) < _DENSE_CHARS_PER_TOKEN * n:
        return math.ceil(n * _DENSE_FACTOR / _PROSE_FACTOR - 1e-9)
    return n


# Anthropic "Tool use overview > Pricing" (platform.claude.com/docs/en/agents-
# and-tools/tool-use/overview#pricing, current version): tool-use system
# prompt tokens for (auto|none, any|tool). Keyed by (tier, major, minor); tier
# "" = any tier. Claude Sonnet 4, Opus 4 and 4.1 are 313 / 315 there (an
# earlier version of the page listed 346 / 313 for every Claude 4 model; the
# recorded Sonnet 4 traffic agrees with the current table, not the earlier
# one). Claude 3.7 / 3.5 Sonnet, retired and gone from the current table,
# keep the earlier page's 346 / 313.
_CLAUDE_TOOL_PROMPT: dict[tuple[str, int, int], tuple[int, int]] = {
    ("opus", 5, 0): (286, 406),
    ("sonnet", 5, 0): (354, 474),
    ("opus", 4, 8): (290, 410),
    ("opus", 4, 7): (675, 804),
    ("", 4, 6): (497, 589),
    ("", 4, 5): (496, 588),
    ("opus", 4, 1): (313, 315),
    ("", 4, 0): (313, 315),
    ("", 3, 7): (346, 313),
    ("", 3, 5): (346, 313),
    ("haiku", 3, 5): (264, 355),
    ("opus", 3, 0): (530, 281),
    ("sonnet", 3, 0): (159, 235),
    ("haiku", 3, 0): (264, 340),
}
_CLAUDE_TOOL_PROMPT_UNKNOWN = (675, 804)  # the largest documented: over, not under
_SERVER_TOOL_TOKENS = 1000  # bash 245, text editor 700, computer 735 (+ system prompt)
_PDF_PAGE_TOKENS = 3000
_UNKNOWN_DOCUMENT_TOKENS = 10 * _PDF_PAGE_TOKENS
# Extended thinking adds hidden prompt text: Anthropic's token-counting docs
# bill 88 tokens for a thinking-enabled request whose text is 40 tokens
# (claude-opus-4); after framing that leaves ~30.
_THINKING_PROMPT = 30

_CLAUDE_RE = re.compile(
    r"claude-(?:(?P<t1>opus|sonnet|haiku)-(?P<a1>\d+)(?:[-.](?P<b1>\d{1,2}))?(?!\d)"
    r"|(?P<a2>\d+)(?:[-.](?P<b2>\d{1,2}))?-(?P<t2>opus|sonnet|haiku))"
)


def _claude_version(name: str) -> tuple[str, int, int] | None:
    match = _CLAUDE_RE.search(name)
    if match is None:
        return None
    tier = match.group("t1") or match.group("t2") or ""
    major = int(match.group("a1") or match.group("a2"))
    minor = int(match.group("b1") or match.group("b2") or 0)
    return tier, major, minor


# -- PDF documents -------------------------------------------------------------
#
# Anthropic, "PDF support" > "How PDF support works" / "Estimate your costs"
# (docs.claude.com/en/docs/build-with-claude/pdf-support): each page is
# converted into an image *and* its text is extracted; a page bills its text
# tokens plus the image cost of the page ("Image token costs: each page is
# converted into an image, and the same image-based cost calculations are
# applied"). OpenAI's "File inputs" guide says the same ("both the extracted
# text and an image of each page" go into the context). Pages are
# "rasterized to images server-side at dimensions you don't control"
# ("Coordinates and bounding boxes"), so a page costs the largest image the
# model reads (estimate/__init__.py ``_pdf_page_image``), plus the tokens of
# its text.
#
# The pages, the first page's MediaBox and the text each page shows are read
# with pypdf (public API only: ``PdfReader``, ``pages``, ``mediabox``,
# ``extract_text``), not by a parser of our own: fonts' ToUnicode CMaps,
# stream filters, object streams, xref streams and word spacing are its job.
# It is imported only when a request holds a PDF's bytes. A page whose text
# it finds empty (scanned pages) still bills its image. When the PDF cannot
# be read (malformed, truncated, encrypted with a password, no pages) the
# estimate falls back to bounds: the top of Anthropic's documented
# 1,500-3,000 tokens a page (``_PDF_PAGE_TOKENS``) when the page count is
# known, else ``_UNKNOWN_DOCUMENT_TOKENS`` (as for a PDF given by URL or file
# id): an over-reservation, never a crash.

_log = logging.getLogger(__name__)

# The page's shape, as rendered large (a point as several pixels): kept in
# ``PdfLayout`` for callers; the estimate prices a page at the model's
# largest image whatever its shape (see above).
_PAGE_RENDER_SCALE = 4
_LETTER = (612.0, 792.0)


@dataclass(frozen=True, slots=True)
class PdfLayout:
    """What a PDF's bytes say about its billed size."""

    pages: int
    page_size: tuple[int, int]  # rendered pixels of the first page
    # The pages' text (pypdf's lines, pages joined by a space); None if unreadable.
    text: str | None


# Layouts of PDFs read lately, by the SHA-256 of their bytes: an agent loop
# resends the same document with every turn, and pypdf takes ~5 ms a dense
# page; a digest key keeps no copy of the document alive.
_LAYOUT_CACHE_SIZE = 64
_layouts: OrderedDict[bytes, PdfLayout | None] = OrderedDict()
_layouts_lock = threading.Lock()


def pdf_layout(data: str) -> PdfLayout | None:
    """Pages, page shape and shown text of a base64 PDF (or data URL).

    None if it is not a PDF or its pages cannot be counted; ``text`` is None
    if the pages were counted but their text could not be read. Each distinct
    PDF is read once (a small LRU by digest), so pypdf's own WARNING records
    about a file it repairs (left to the application's logging config: they
    name a real defect of the file) come once per PDF, not once per call.
    """
    raw = _pdf_bytes(data)
    if raw is None:
        _log.debug("document data is not a base64 PDF: the document's size bound is used")
        return None
    key = hashlib.sha256(raw).digest()
    with _layouts_lock:
        if key in _layouts:
            _layouts.move_to_end(key)
            return _layouts[key]
    layout = _read_pdf(raw)
    with _layouts_lock:
        _layouts[key] = layout
        while len(_layouts) > _LAYOUT_CACHE_SIZE:
            _layouts.popitem(last=False)
    return layout


def _read_pdf(raw: bytes) -> PdfLayout | None:
    try:
        from pypdf import PdfReader  # imported only for requests that hold a PDF
    except ImportError:  # a core dependency; missing only from a broken install
        _log.warning("pypdf is not installed: PDFs are priced at the size bound; "
                     "fix: pip install 'pypdf>=5'")
        return None
    # A malformed PDF can fail in pypdf in many ways (its own errors, but also
    # KeyError, ValueError, RecursionError ...): every failure is a fallback
    # to the bound, never an error of the call being budgeted.
    try:
        reader = PdfReader(io.BytesIO(raw), strict=False)
        pages = len(reader.pages)
    except Exception as exc:
        _log.debug("PDF not readable (%s: %s): the document's size bound is used",
                   type(exc).__name__, exc)
        return None
    if not pages:
        _log.debug("PDF has no pages: the document's size bound is used")
        return None
    size = _first_page_size(reader)
    try:
        text = " ".join(page.extract_text() for page in reader.pages).strip()
    except Exception as exc:
        _log.debug("PDF text not readable (%s: %s): %d pages at the page bound",
                   type(exc).__name__, exc, pages)
        return PdfLayout(pages, size, None)
    return PdfLayout(pages, size, text)


def _first_page_size(reader: Any) -> tuple[int, int]:
    """The first page's MediaBox in rendered pixels; US Letter if it has none."""
    w, h = _LETTER
    try:
        box = reader.pages[0].mediabox
        bw, bh = abs(float(box.width)), abs(float(box.height))
    except Exception:  # no or malformed MediaBox (required, ISO 32000-1 7.7.3.3)
        bw = bh = 0.0
    if bw > 1 and bh > 1:
        w, h = bw, bh
    return round(w * _PAGE_RENDER_SCALE), round(h * _PAGE_RENDER_SCALE)


def _pdf_bytes(data: str) -> bytes | None:
    if data.startswith("data:"):
        data = data.partition(",")[2]
    try:
        raw = base64.b64decode(data, validate=False)
    except (binascii.Error, ValueError):
        return None
    return raw if raw.startswith(b"%PDF") else None


_ANTHROPIC_BLOCKS = frozenset({"tool_use", "tool_result", "image", "document", "thinking",
                               "redacted_thinking"})


def _looks_anthropic(messages: Sequence[Any], tools: Sequence[Any] | None, system: Any) -> bool:
    """An Anthropic messages request: separate ``system``, ``input_schema`` tools
    or Anthropic content blocks."""
    if system:
        return True
    if any(isinstance(t, Mapping) and "input_schema" in t for t in tools or ()):
        return True
    for message in messages:
        content = message.get("content") if isinstance(message, Mapping) else None
        if isinstance(content, list):
            for block in content:
                if isinstance(block, Mapping) and block.get("type") in _ANTHROPIC_BLOCKS:
                    return True
    return False


def _thinking_enabled(value: Any) -> bool:
    if isinstance(value, Mapping):
        return value.get("type") not in (None, "disabled")
    return bool(value)


# -- tool definitions -------------------------------------------------------------
#
# Anthropic, "How to implement tool use" > "Tool use system prompt"
# (docs.claude.com/en/docs/agents-and-tools/tool-use/implement-tool-use): with
# ``tools`` the request gets a system prompt built as
#     In this environment you have access to a set of tools ...
#     {{ FORMATTING INSTRUCTIONS }}
#     ... Here are the functions available in JSONSchema format:
#     {{ TOOL DEFINITIONS IN JSON SCHEMA }}
#     {{ USER SYSTEM PROMPT }}
#     {{ TOOL CONFIGURATION }}
# The fixed text is the per-model "tool use system prompt" token count of the
# pricing table (``_CLAUDE_TOOL_PROMPT``); the definitions are added to it.
# Claude's own prompts show each definition as
#     <functions>
#     <function>{"description": ..., "name": ..., "parameters": {...}}</function>
#     </functions>
# i.e. ``json.dumps`` with its default ", " / ": " spacing, counted that way
# (on recorded calls this is within 2 % where compact JSON was 3 % under).
TOOLS_WRAPPER = "<functions>\n</functions>\n"


def anthropic_tool_text(function: Mapping[str, Any]) -> str:
    """One tool definition as Claude's tool-use system prompt holds it."""
    body = {"description": function.get("description", ""), "name": function.get("name", ""),
            "parameters": function.get("parameters") or {}}
    return "<function>" + json.dumps(body, ensure_ascii=False, default=str) + "</function>\n"


def forced_tool_name(choice: Any) -> str | None:
    """The tool a ``tool_choice`` forces by name (``{"type": "tool", "name": ...}``).

    Anthropic, "How to implement tool use" > "Tool use system prompt": the
    prompt ends with a ``{{ TOOL CONFIGURATION }}`` section that carries the
    ``tool_choice``; the pricing table's ``any, tool`` count is the fixed
    text, so a forced tool's name, written into that section, is billed on
    top of it (as OpenAI bills a named function's name with its
    ``tool_choice``). On recorded Claude 3 Haiku calls forcing a one-tool
    choice this turns 2.3-2.5 % under-estimates into 1.3-1.4 % ones.
    """
    if isinstance(choice, Mapping) and choice.get("type") == "tool":
        name = choice.get("name")
        return name if isinstance(name, str) and name else None
    return None


def _param_value(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, default=str)


# -- tool_use / tool_result blocks in the history -----------------------------------
#
# The same documentation: Claude calls a tool by writing a ``function_calls``
# block, which the API returns as a ``tool_use`` content block, and reads
# results in ``function_results``; sent back in the history they are
# rendered that way again (Anthropic's legacy tool-use prompt format,
# github.com/anthropics/anthropic-tools, and the format Claude's published
# system prompts use):
#     <function_calls>
#     <invoke name="get_weather">
#     <parameter name="location">Paris</parameter>
#     </invoke>
#     </function_calls>
#     <function_results>
#     <result>
#     <tool_name>get_weather</tool_name>
#     <stdout>
#     ...
#     </stdout>
#     </result>
#     </function_results>
# String parameters are written as is, others as JSON. The result's name tag is
# counted with the call (a ``tool_result`` carries only the call's id), the
# ``stdout`` wrapper with the result. On recorded Claude 3-haiku, 4, 4.5 and
# 4.6 traffic this turns 100 % under-estimates (median -62 tokens) into a
# median of +2.7 %.


def tool_use_text(block: Mapping[str, Any]) -> str:
    """A ``tool_use`` block as Claude reads it, plus its result's name tag."""
    name = str(block.get("name", ""))
    args = block.get("input") or {}
    params = "".join(f'<parameter name="{k}">{_param_value(v)}</parameter>\n'
                     for k, v in (args.items() if isinstance(args, Mapping) else ()))
    return (f'<function_calls>\n<invoke name="{name}">\n{params}</invoke>\n</function_calls>\n'
            f"<function_results>\n<result>\n<tool_name>{name}</tool_name>\n</result>\n"
            "</function_results>\n")


TOOL_RESULT_WRAPPER = "<stdout>\n\n</stdout>\n"


# -- structured outputs ---------------------------------------------------------
#
# Claude's structured outputs (``output_format``, now ``output_config.format``:
# {"type": "json_schema", "schema": {...}}). Anthropic, "Structured outputs":
# the schema is compiled into a grammar and the request carries an extra
# system prompt describing the expected format, billed as input. Anthropic
# does not publish that prompt. Measured in aggregate on recorded Claude
# haiku-4.5, sonnet-4.5/4.6 and opus-4.6 calls (seven distinct schemas of
# 43-152 compact tokens): the billed extra is the schema written as
# pretty-printed JSON (``json.dumps(indent=2)``, times the text factor) plus
# 75-104 tokens, a steady remainder; counted compactly the remainder grew
# with the schema (116-174) and large schemas were 8-9 % under. So the
# schema is counted pretty-printed, plus 100 (all but one remainder at or
# below it; that one is 104, an estimate 1.2 % under):
STRUCTURED_OUTPUT_PROMPT = 100


def native_format(extra: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """Claude's native structured-output format of a request, if any."""
    fmt = extra.get("output_format")
    if not isinstance(fmt, Mapping):
        config = extra.get("output_config")
        fmt = config.get("format") if isinstance(config, Mapping) else None
    if isinstance(fmt, Mapping) and fmt.get("type", "json_schema") == "json_schema":
        return fmt
    return None


def structured_output_text(fmt: Mapping[str, Any]) -> str:
    """The JSON schema of a structured-output format, pretty-printed as counted."""
    return json.dumps(fmt.get("schema", {}), ensure_ascii=False, default=str, indent=2)


# -- thinking blocks in the history ----------------------------------------------
#
# Anthropic, "Building with extended thinking" > "Thinking blocks from
# previous turns are removed from context" (and the context-window diagram
# there): thinking blocks of earlier assistant turns are stripped and not
# billed as input. The exception is the tool-use loop: the thinking of the
# assistant turn that made the tool call being answered must be sent back and
# is billed. A message's count must not depend on later messages (it is
# cached per message), so a thinking block is billed when its message also
# holds a ``tool_use`` (the shape of that tool-use turn), and not otherwise.
THINKING_BLOCKS = frozenset({"thinking", "redacted_thinking"})


def unbilled_thinking(content: Sequence[Any]) -> bool:
    """Are the thinking blocks of this message's content not billed?"""
    return not any(isinstance(b, Mapping) and b.get("type") in ("tool_use", "server_tool_use")
                   for b in content)


def document_text(block: Mapping[str, Any], data: str) -> str:
    """A plain-text ``document`` block as Claude reads it: its ``title`` and
    ``context`` with the text, in the document structure Anthropic's
    "Long context prompting tips" describe (``<document>`` with ``<source>``
    and ``<document_content>``): one recorded Claude Haiku 4.5 call with a
    titled CSV document billed 44 tokens more than its text alone."""
    title = block.get("title")
    context = block.get("context")
    head = f"<document>\n<source>{title}</source>\n" if title else "<document>\n"
    if context:
        head += f"<context>{context}</context>\n"
    return f"{head}<document_content>\n{data}\n</document_content>\n</document>\n"
