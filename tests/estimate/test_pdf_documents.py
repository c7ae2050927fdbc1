"""PDF documents: their pages and text, read with pypdf, and the fallbacks.

Providers bill a PDF page as its extracted text plus an image of the page
(Anthropic "PDF support", OpenAI "File inputs"). The PDFs are written here
byte by byte (tests/estimate/pdfs.py), so the expected text is the text the
test itself wrote, counted with tiktoken; never a number from the estimator.
"""

from __future__ import annotations

import base64
import io
import logging
import math
import os
import subprocess
import sys
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from crew_budget.estimate import Estimator
from crew_budget.estimate.anthropic import pdf_layout
from tests.estimate.pdfs import HELVETICA, b64, object_stream_pdf, pdf_file, stream, text_pdf
from tests.estimate.tiktoken_counts import cl100k, price

SONNET = "claude-sonnet-4-5"
PAGE_IMAGE = 1568 + 3  # Claude's largest image: 1,568 visual tokens + 3 delimiters
FRAMING = 4 + 3  # one user message + the reply priming
PAGE_BOUND = 3000  # the top of Anthropic's documented 1,500-3,000 tokens a page
UNKNOWN_BOUND = 10 * PAGE_BOUND  # a document of unknown size (URL, file id, unreadable)


def _claude(data: str) -> int:
    doc = {"type": "document", "source": {"type": "base64", "media_type": "application/pdf",
                                          "data": data}}
    return Estimator().count_prompt(SONNET, price(SONNET, "anthropic"),
                                    [{"role": "user", "content": [doc]}])


def _claude_text(text: str) -> int:
    """Claude's text tokens: cl100k_base x 1.13 (estimate/anthropic.py)."""
    return math.ceil(cl100k(text) * 1.13 - 1e-9)


# -- text the way real writers put it ------------------------------------------


def _cid_pdf(words: list[str]) -> bytes:
    """A page in a composite font (Type0, Identity-H) the way Chrome writes it:
    each word a ``BT`` block placed by ``Tm``, each glyph a 2-byte hex code
    placed by its own ``Td``, and a ToUnicode CMap (a ``bfrange`` for a-z,
    ``bfchar`` for the rest) that alone maps the codes back to text."""
    def code(ch: str) -> str:
        return f"{ord(ch) + 0x100:04X}"  # glyph ids, deliberately not Unicode

    blocks, x = [], 72.0
    for word in words:
        glyphs = " ".join(f"{7.5 if i else 0} 0 Td <{code(c)}> Tj" for i, c in enumerate(word))
        blocks.append(f"BT /F1 14 Tf 1 0 0 1 {x} 720 Tm {glyphs} ET")
        x += 7.5 * len(word) + 4  # the next word after a space
    content = "\n".join(blocks).encode()
    others = sorted({c for w in words for c in w if not c.islower()})
    bfchar = "".join(f"<{code(c)}> <{ord(c):04X}>\n" for c in others)
    cmap = ("/CIDInit /ProcSet findresource begin 12 dict begin begincmap\n"
            "1 begincodespacerange <0000> <FFFF> endcodespacerange\n"
            f"{len(others)} beginbfchar\n{bfchar}endbfchar\n"
            f"1 beginbfrange\n<{code('a')}> <{code('z')}> <0061>\nendbfrange\n"
            "endcmap CMapName currentdict /CMap defineresource pop end end").encode()
    return pdf_file([
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 6 0 R >> >> >>",
        stream(content),
        stream(cmap),
        b"<< /Type /Font /Subtype /Type0 /BaseFont /Arial /Encoding /Identity-H "
        b"/ToUnicode 5 0 R >>",
    ])


def test_composite_font_text_is_read_through_its_tounicode_cmap() -> None:
    layout = pdf_layout(b64(_cid_pdf(["This", "is", "a", "Test."])))
    assert layout is not None
    assert layout.text == "This is a Test."


def test_claude_prices_a_composite_font_page_by_its_text() -> None:
    words = ["Quarterly", "revenue", "grew", "by", "twelve", "percent."]
    # Without the CMap this page would price its image alone (text 0).
    assert _claude(b64(_cid_pdf(words))) == (_claude_text(" ".join(words)) + PAGE_IMAGE
                                             + FRAMING)


def _one_page(content: bytes, extra: bytes = b"", box: bytes = b"/MediaBox [0 0 612 792] "
              ) -> bytes:
    return pdf_file([
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R " + box
        + b"/Contents 4 0 R /Resources << /Font << /F1 5 0 R >> >> >>",
        stream(content, extra),
        HELVETICA,
    ])


def test_ascii85_and_flate_content_is_read() -> None:
    # ReportLab writes /Filter [/ASCII85Decode /FlateDecode]; others Flate only.
    content = b"BT /F1 12 Tf 72 700 Td (Invoice total: 42 EUR) Tj ET"
    a85 = base64.a85encode(zlib.compress(content), adobe=True, wrapcol=64)
    for body, filters in [(a85, b"/Filter [/ASCII85Decode /FlateDecode] "),
                          (zlib.compress(content), b"/Filter /FlateDecode "),
                          (content, b"")]:
        got = _claude(b64(_one_page(body, filters)))
        assert got == _claude_text("Invoice total: 42 EUR") + PAGE_IMAGE + FRAMING


def test_escapes_and_tj_kerning_are_text_not_words() -> None:
    # \\( \\) are parentheses and \\101\\102 octal "AB" (ISO 32000-1 7.3.4.2); a
    # TJ gap of 30/1000 em is kerning inside "Hello", one of 250 a space.
    content = (rb"BT /F1 12 Tf 72 700 Td (Cost \(net\): \101\102 ) Tj "
               rb"[(Hel) -30 (lo) -250 (wor) 10 (ld)] TJ ET")
    layout = pdf_layout(b64(_one_page(content)))
    assert layout is not None
    assert layout.text == "Cost (net): AB Hello world"


def test_pages_inside_an_object_stream_are_counted() -> None:
    # PDF 1.5: the page tree is compressed inside a /Type /ObjStm stream and
    # the cross-reference table is a stream too.
    raw = object_stream_pdf([b"BT /F1 12 Tf 72 700 Td (First page) Tj ET",
                             b"BT /F1 12 Tf 72 700 Td (Second page) Tj ET"])
    layout = pdf_layout(b64(raw))
    assert layout is not None
    assert (layout.pages, layout.page_size) == (2, (595 * 4, 842 * 4))  # A4, 4 px a point
    assert layout.text == "First page Second page"
    assert _claude(b64(raw)) == _claude_text("First page Second page") + 2 * PAGE_IMAGE + FRAMING


# -- malformed, encrypted, empty: the bounds, never a crash ---------------------


def _encrypted(user: str) -> bytes:
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(text_pdf(["Salary table"]))))
    writer.encrypt(user_password=user, owner_password="owner")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def _zero_pages() -> bytes:
    from pypdf import PdfWriter

    out = io.BytesIO()
    PdfWriter().write(out)
    return out.getvalue()


GOOD = text_pdf(["Quarterly revenue grew by twelve percent."])
FALLBACKS: list[tuple[str, Callable[[], bytes], int]] = [
    # Cut in half: no cross-reference, no trailer, no page tree to follow.
    ("truncated", lambda: GOOD[: len(GOOD) // 2], UNKNOWN_BOUND),
    ("not a PDF", lambda: b"Quarterly revenue grew by twelve percent.", UNKNOWN_BOUND),
    ("PDF header, then garbage", lambda: b"%PDF-1.7\n" + bytes(range(256)) * 4, UNKNOWN_BOUND),
    # A user password: neither we nor the provider can read it.
    ("encrypted with a password", lambda: _encrypted("secret"), UNKNOWN_BOUND),
    ("zero pages", _zero_pages, UNKNOWN_BOUND),
    # One page, its text behind a filter pypdf does not implement: the page
    # count is known, its text is not: the page bound.
    ("text in an unknown filter",
     lambda: _one_page(b"BT /F1 12 Tf (x) Tj ET", b"/Filter /NoSuchDecode "), PAGE_BOUND),
]


@pytest.mark.parametrize(("raw", "expected"), [(make, fixed) for _, make, fixed in FALLBACKS],
                         ids=[name for name, _, _ in FALLBACKS])
def test_unreadable_pdfs_fall_back_to_the_bound(raw: Callable[[], bytes], expected: int,
                                                caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="crew_budget")
    assert _claude(b64(raw())) == expected + FRAMING
    ours = [r for r in caplog.records if r.name == "crew_budget.estimate.anthropic"]
    assert len(ours) == 1 and ours[0].levelno == logging.DEBUG, ours


@pytest.mark.parametrize(
    ("raw", "size"),
    [
        # No MediaBox (it is required; a reader takes US Letter): still read.
        (_one_page(b"BT /F1 12 Tf 72 700 Td (Salary table) Tj ET", box=b""), (612 * 4, 792 * 4)),
        # Encrypted with an empty user password (an owner password only):
        # every reader opens it, so is its text billed.
        (_encrypted(""), (612 * 4, 792 * 4)),
    ],
    ids=["page without MediaBox", "encrypted, empty user password"],
)
def test_readable_odd_pdfs_are_priced_by_their_text(raw: bytes, size: tuple[int, int]) -> None:
    layout = pdf_layout(b64(raw))
    assert layout is not None
    assert (layout.pages, layout.page_size, layout.text) == (1, size, "Salary table")
    assert _claude(b64(raw)) == _claude_text("Salary table") + PAGE_IMAGE + FRAMING


def test_a_repaired_pdf_is_priced_by_its_text_and_pypdf_warns_once(
        caplog: pytest.LogCaptureFixture) -> None:
    # A wrong startxref offset: pypdf repairs it and says so at WARNING.
    broken = GOOD.replace(b"startxref\n", b"startxref\n9").replace(b"%%EOF", b"\n%%EOF")
    caplog.set_level(logging.DEBUG)
    expected = _claude_text("Quarterly revenue grew by twelve percent.") + PAGE_IMAGE + FRAMING
    assert _claude(b64(broken)) == expected
    warned = [r for r in caplog.records if r.name.startswith("pypdf")]
    # pypdf's records are not hidden (the application's logging decides)...
    assert warned and all(r.levelno == logging.WARNING for r in warned)
    caplog.clear()
    for _ in range(3):  # ...but the PDF is read once, not on every call
        assert _claude(b64(broken)) == expected
    assert [r for r in caplog.records if r.name.startswith("pypdf")] == []


# -- pypdf is imported only for a request that holds a PDF -------------------------


def _run(code: str) -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_pypdf_is_imported_only_for_a_pdf() -> None:
    code = (
        "import sys\n"
        "import crew_budget\n"
        "from crew_budget.estimate import Estimator\n"
        "from tests.estimate.tiktoken_counts import price\n"
        "from tests.estimate.pdfs import b64, text_pdf\n"
        "print('pypdf' in sys.modules)\n"
        "e = Estimator()\n"
        "p = price('claude-sonnet-4-5', 'anthropic')\n"
        "e.count_prompt('claude-sonnet-4-5', p, [{'role': 'user', 'content': 'hi'}])\n"
        "print('pypdf' in sys.modules)\n"
        "doc = {'type': 'document', 'source': {'type': 'base64', "
        "'media_type': 'application/pdf', 'data': b64(text_pdf(['x']))}}\n"
        "e.count_prompt('claude-sonnet-4-5', p, [{'role': 'user', 'content': [doc]}])\n"
        "print('pypdf' in sys.modules)\n"
    )
    assert _run(code).split() == ["False", "False", "True"]


def test_cli_start_up_does_not_import_pypdf() -> None:
    cli = Path(sys.executable).with_name("crew-budget")
    env: dict[str, Any] = {**os.environ, "PYTHONPROFILEIMPORTTIME": "1"}
    out = subprocess.run([str(cli), "--help"], capture_output=True, text=True, timeout=120,
                         env=env)
    assert out.returncode == 0, out.stderr
    imported = [line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines()
                if line.startswith("import time:")]
    assert "crew_budget" in imported  # the importtime trace is there
    assert [m for m in imported if m.split(".")[0] == "pypdf"] == []
