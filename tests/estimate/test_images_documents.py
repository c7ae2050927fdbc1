"""Image and PDF rules, checked on the providers' own documented numbers.

Expected counts come from the documentation each rule cites (Anthropic's
"Images and vision" patch formula and size table; OpenAI's "Images and
vision" worked examples and tile rule), never from running the estimator
first. The PDFs are written byte by byte (tests/estimate/pdfs.py), so the
text a page shows is the text the test wrote; pypdf reads them back.
"""

from __future__ import annotations

import math
from typing import Any

import pytest

from crew_budget.estimate import Estimator, images
from tests.estimate.pdfs import b64, text_pdf
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
    """A PDF with one ``Tj`` line of text a page on a ``box``-point MediaBox."""
    return b64(text_pdf(pages, box))


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


