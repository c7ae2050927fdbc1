"""Image and PDF rules, checked on the providers' own documented numbers.

Expected counts come from the documentation each rule cites (Anthropic's
"Images and vision" patch formula and size table; OpenAI's "Images and
vision" worked examples and tile rule), never from running the estimator
first. The PDFs are written by a tiny generator in this file.
"""

from __future__ import annotations

import base64
import math
from typing import Any

import pytest

from crew_budget.estimate import Estimator, images
from tests.estimate.tiktoken_counts import cl100k, o200k, price

# -- Claude: 28 px patches within two ceilings ---------------------------------

# Anthropic "Images and vision": an image costs ceil(w/28) x ceil(h/28)
# visual tokens; the size table lists the largest sizes not resized, one a
# shape. Each is billed as is, + 3 for the image block's delimiters.
SIZE_TABLE = [
    ((1092, 1092), 39 * 39),   # 1:1
    ((951, 1268), 34 * 46),    # 3:4
    ((896, 1344), 32 * 48),    # 2:3
    ((819, 1456), 30 * 52),    # 9:16
    ((784, 1568), 28 * 56),    # 1:2 (the long edge binds too)
]


@pytest.mark.parametrize(("size", "patches"), SIZE_TABLE)
def test_claude_size_table_rows_bill_their_patches_unresized(
        size: tuple[int, int], patches: int) -> None:
    policy = images.anthropic_policy(False)
    assert policy.tokens(size) == patches + 3
    # The ceiling (1,568 visual tokens, the 1:2 row) holds every row.
    assert patches <= 1568


def test_claude_larger_images_are_resized_within_both_ceilings() -> None:
    policy = images.anthropic_policy(False)
    # 1000x1000 (the docs' "~1334" by w*h/750): 36 x 36 whole patches.
    assert policy.tokens((1000, 1000)) == 36 * 36 + 3
    # A 3000x3000 image: the largest square within 1,568 visual tokens is
    # 39 x 39 patches (40 x 40 = 1,600 is over).
    assert policy.tokens((3000, 3000)) == 39 * 39 + 3
    # Twice the 1:2 row: scaled to the 1568 px long edge, 784x1568 again.
    assert policy.tokens((1568 * 2, 784 * 2)) == 28 * 56 + 3
    # Any shape stays at or under the ceiling; an unknown size reserves it.
    for size in [(4000, 3000), (8000, 500), (500, 8000), (2000, 2001)]:
        assert policy.tokens(size) <= 1568 + 3
    assert policy.tokens(None) == policy.max_tokens() == 1568 + 3


def test_claude_opus_47_reads_2576_px_and_4784_visual_tokens() -> None:
    hires = images.anthropic_policy(True)
    # Opus 4.7: 2576 px long edge, ~3.75 MP: a 16:9 image at 2576 px is
    # 92 x 52 patches, 4,784 visual tokens.
    assert hires.tokens((2576, 1449)) == 92 * 52 + 3
    assert hires.tokens((2576 * 2, 1449 * 2)) == 92 * 52 + 3
    assert hires.tokens((1000, 1000)) == 36 * 36 + 3  # within both: as is
    assert hires.max_tokens() == 4784 + 3


# -- OpenAI: the documented worked examples --------------------------------------

@pytest.mark.parametrize(
    ("model", "size", "detail", "expected"),
    [
        # "A 1024 x 1024 square image in detail: high mode costs 765 tokens".
        ("gpt-4o", (1024, 1024), "high", 765),
        # "A 2048 x 4096 image in detail: high mode costs 1105 tokens".
        ("gpt-4o", (2048, 4096), "high", 1105),
        # "A 4096 x 8192 image in detail: low most costs 85 tokens".
        ("gpt-4o", (4096, 8192), "low", 85),
        # Patch models: 1024 x 1024 is 32 x 32 = 1024 patches; 1800 x 2400 is
        # scaled to 1452 patches (the guide's two examples), x the multiplier.
        ("gpt-4.1-mini", (1024, 1024), "auto", math.ceil(1024 * 1.62)),
        ("o4-mini", (1800, 2400), "auto", math.ceil(1452 * 1.72)),
    ],
)
def test_openai_documented_examples(model: str, size: tuple[int, int], detail: str,
                                    expected: int) -> None:
    assert images.openai_policy(model).tokens(size, detail) == expected


# -- PDFs: the page text + an image of the page -----------------------------------


def _pdf(pages: list[str], box: tuple[int, int] = (612, 792)) -> str:
    """A minimal PDF: one ``Tj`` line of text a page on a ``box``-point MediaBox."""
    objects: list[bytes] = []
    kids = " ".join(f"{3 + 2 * i} 0 R" for i in range(len(pages)))
    objects.append(b"<< /Type /Catalog /Pages 2 0 R >>")
    objects.append(f"<< /Type /Pages /Kids [{kids}] /Count {len(pages)} >>".encode())
    for i, text in enumerate(pages):
        content = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
        objects.append(f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 {box[0]} {box[1]}] "
                       f"/Contents {4 + 2 * i} 0 R >>".encode())
        objects.append(b"<< /Length " + str(len(content)).encode() + b" >>\nstream\n"
                       + content + b"\nendstream")
    body = b"%PDF-1.4\n" + b"".join(
        f"{n} 0 obj\n".encode() + obj + b"\nendobj\n" for n, obj in enumerate(objects, 1))
    return base64.b64encode(body + b"%%EOF\n").decode()


PAGES = ["Quarterly revenue grew by twelve percent.", "Costs fell in every region."]


def _openai_file(data: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [
        {"type": "file", "file": {"filename": "report.pdf",
                                  "file_data": "data:application/pdf;base64," + data}}]}]


def test_claude_pdf_page_is_its_text_and_the_largest_image() -> None:
    doc = {"type": "document", "source": {"type": "base64", "media_type": "application/pdf",
                                          "data": _pdf(PAGES, box=(595, 842))}}
    msg = [{"role": "user", "content": [doc]}]
    # Anthropic "PDF support": each page is its extracted text plus an image
    # of the page, rasterized at a size the caller does not control: the
    # model's largest image, 1,568 visual tokens + 3 a page. Text: cl100k x
    # 1.13 (Claude's prose factor); framing 4 + 3.
    text = math.ceil(cl100k(" ".join(PAGES)) * 1.13 - 1e-9)
    got = Estimator().count_prompt("claude-sonnet-4-5", price("claude-sonnet-4-5", "anthropic"),
                                   msg)
    assert got == text + 2 * (1568 + 3) + 7


@pytest.mark.parametrize(
    ("model", "page_image", "priming"),
    [
        # OpenAI documents no page-image size: the most one image bills at
        # high detail is the bound. gpt-4o: 768x2048 spans 2 x 4 tiles,
        # 85 + 8 x 170 = 1445.
        ("gpt-4o", 85 + 8 * 170, 3),
        # gpt-5.4: 2,500 patches x 1.2 = 3,000 (harmony primes the reply with 2).
        ("gpt-5.4", 3000, 2),
        # gpt-4o-mini's 33x image multiplier would be 48k: capped at 3,000,
        # the top of the documented 1,500-3,000 tokens a page.
        ("gpt-4o-mini", 3000, 3),
    ],
)
def test_openai_pdf_page_is_its_text_and_a_bounded_image(model: str, page_image: int,
                                                         priming: int) -> None:
    msg = _openai_file(_pdf(PAGES))
    # OpenAI "File inputs": "both the extracted text and an image of each
    # page"; framing 3 + 1 ("user") + the reply priming.
    expected = o200k(" ".join(PAGES)) + 2 * page_image + 4 + priming
    assert Estimator().count_prompt(model, price(model, "openai"), msg) == expected


def test_pdf_text_counts_even_when_it_outgrows_the_old_flat_page() -> None:
    # A page of dense text bills more than 3,000 tokens with its image: the
    # page's own text is counted, not a flat 3,000 a page.
    dense = " ".join(f"row {i}: {i * 7919 % 10007}" for i in range(900))
    msg = _openai_file(_pdf([dense]))
    got = Estimator().count_prompt("gpt-5.4", price("gpt-5.4", "openai"), msg)
    assert got == o200k(dense) + 3000 + 4 + 2  # gpt-5.4 primes the reply with 2
    assert got > 3000 + o200k(dense) // 2 > 3000


# -- the text a PDF shows (estimate/documents.py) ---------------------------------


def _cid_pdf(words: list[str]) -> str:
    """A page in a composite font (Type0, Identity-H) the way Chrome writes it:
    each glyph a 2-byte hex code placed by its own ``Td``, one ``BT`` block a
    word, and a ToUnicode CMap (a ``bfrange`` for a-z, ``bfchar`` for the rest)
    that alone maps the codes back to text."""
    def code(ch: str) -> str:
        return f"{ord(ch) + 0x100:04X}"  # glyph ids, deliberately not Unicode

    blocks = []
    for word in words:
        glyphs = " ".join(f"{7.5 if i else 0} {0 if i else -13.2} Td <{code(c)}> Tj"
                          for i, c in enumerate(word))
        blocks.append(f"BT /F1 14 Tf {glyphs} ET")
    content = "\n".join(blocks).encode()
    others = sorted({c for w in words for c in w if not c.islower()})
    bfchar = "".join(f"<{code(c)}> <{ord(c):04X}>\n" for c in others)
    cmap = ("/CIDInit /ProcSet findresource begin 12 dict begin begincmap\n"
            "1 begincodespacerange <0000> <FFFF> endcodespacerange\n"
            f"{len(others)} beginbfchar\n{bfchar}endbfchar\n"
            f"1 beginbfrange\n<{code('a')}> <{code('z')}> <0061>\nendbfrange\n"
            "endcmap CMapName currentdict /CMap defineresource pop end end").encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 6 0 R >> >> >>",
        b"<< /Length " + str(len(content)).encode() + b" >>\nstream\n" + content
        + b"\nendstream",
        b"<< /Length " + str(len(cmap)).encode() + b" >>\nstream\n" + cmap + b"\nendstream",
        b"<< /Type /Font /Subtype /Type0 /BaseFont /Arial /Encoding /Identity-H "
        b"/ToUnicode 5 0 R >>",
    ]
    body = b"%PDF-1.4\n" + b"".join(
        f"{n} 0 obj\n".encode() + obj + b"\nendobj\n" for n, obj in enumerate(objects, 1))
    return base64.b64encode(body + b"%%EOF\n").decode()


def test_composite_font_text_is_read_through_its_tounicode_cmap() -> None:
    from crew_budget.estimate.anthropic import pdf_layout

    layout = pdf_layout(_cid_pdf(["This", "is", "a", "Test."]))
    assert layout is not None
    # Per-glyph positioning joins a word; each BT block is a new word.
    assert layout.text == "This is a Test."


def test_literal_strings_escapes_and_tj_spacing() -> None:
    from crew_budget.estimate.documents import shown_text

    stream = (rb"BT /F1 12 Tf 72 700 Td (Cost \(net\): \101\102 ) Tj "
              rb"[(Hel) -30 (lo) -250 (wor) 10 (ld)] TJ "
              rb"0 -14 Td (next line) Tj T* (third) ' ET")
    # \( \) are parentheses, \101\102 octal "AB"; a TJ gap over 200/1000 em
    # is a space, a small one is kerning; Td with a vertical move, T* and '
    # start new lines.
    assert shown_text([stream]) == "Cost (net): AB Hello world next line third"
    # Text outside BT ... ET (and streams without text) shows nothing.
    assert shown_text([b"(not shown) Tj", b"q 1 0 0 1 0 0 cm Q"]) == ""


def test_claude_prices_a_composite_font_page_by_its_text() -> None:
    words = ["Quarterly", "revenue", "grew", "by", "twelve", "percent."]
    doc = {"type": "document", "source": {"type": "base64", "media_type": "application/pdf",
                                          "data": _cid_pdf(words)}}
    msg = [{"role": "user", "content": [doc]}]
    text = math.ceil(cl100k(" ".join(words)) * 1.13 - 1e-9)
    got = Estimator().count_prompt("claude-sonnet-4-5", price("claude-sonnet-4-5", "anthropic"),
                                   msg)
    # Before the CMap was read this page priced its image alone (text 0).
    assert got == text + 1568 + 3 + 7


def test_ascii85_and_flate_streams_are_decoded() -> None:
    import zlib

    from crew_budget.estimate.documents import decode_stream, shown_text

    content = b"BT /F1 12 Tf 72 700 Td (Invoice total: 42 EUR) Tj ET"
    # ReportLab writes /Filter [/ASCII85Decode /FlateDecode]; others Flate only.
    a85 = base64.a85encode(zlib.compress(content), adobe=True, wrapcol=64)
    assert decode_stream(a85) == content
    assert decode_stream(zlib.compress(content)) == content
    assert decode_stream(content) == content  # unfiltered
    assert shown_text([decode_stream(a85)]) == "Invoice total: 42 EUR"


def test_pages_inside_an_object_stream_are_counted() -> None:
    import zlib

    from crew_budget.estimate.anthropic import pdf_layout

    # PDF 1.5 object streams: the Pages and Page dictionaries are compressed
    # inside a /Type /ObjStm stream; only the content streams are outside.
    shown = [b"BT /F1 12 Tf 72 700 Td (First page) Tj ET",
             b"BT /F1 12 Tf 72 700 Td (Second page) Tj ET"]
    dicts = (b"<< /Type /Pages /Kids [3 0 R 4 0 R] /Count 2 >> "
             b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents 6 0 R >> "
             b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents 7 0 R >>")
    objstm = zlib.compress(b"2 0 3 48 4 130 " + dicts)
    parts = [b"<< /Type /Catalog /Pages 2 0 R >>",
             b"<< /Type /ObjStm /N 3 /First 15 /Filter /FlateDecode /Length "
             + str(len(objstm)).encode() + b" >>\nstream\n" + objstm + b"\nendstream"]
    parts += [b"<< /Filter /FlateDecode /Length " + str(len(zlib.compress(c))).encode()
              + b" >>\nstream\n" + zlib.compress(c) + b"\nendstream" for c in shown]
    body = b"%PDF-1.5\n" + b"".join(f"{n} 0 obj\n".encode() + obj + b"\nendobj\n"
                                    for n, obj in zip((1, 5, 6, 7), parts, strict=True))
    layout = pdf_layout(base64.b64encode(body + b"%%EOF\n").decode())
    assert layout is not None
    assert layout.pages == 2
    assert layout.text == "First page Second page"
