"""Claude (Anthropic messages) estimate rules, each checked on inputs written here.

Every expected count is worked out from the rule it cites: tiktoken's
``cl100k_base`` count of a rendering written out in the test, times the
documented or measured factor, plus documented constants (Anthropic's tool-use
pricing table, the Vision formula). None is produced by running the estimator
first. The development corpus only measures the rules (bench/README.md);
nothing from it is in these tests.
"""

from __future__ import annotations

import json
import math
from decimal import Decimal

from crew_budget.estimate import Estimator
from crew_budget.pricing import Price
from tests.estimate.tiktoken_counts import cl100k

# Claude 3-4.6 prose: 1.13 billed tokens per cl100k_base token; dense text
# (under 4 characters a cl100k token, at least 20 tokens): 1.18
# (estimate/anthropic.py, _PROSE_FACTOR / _DENSE_FACTOR). Framing: 4 a
# message + 3 to prime the reply.
PROSE, DENSE, FRAMING = 1.13, 1.18, 4 + 3



def price(model: str) -> Price:
    return Price(model, "anthropic", Decimal("1e-6"), Decimal("2e-6"))


def tokens(n: float) -> int:
    return math.ceil(n - 1e-9)


PROSE_TEXT = ("Our quarterly planning meeting will review the hiring plan, the budget for "
              "the new office and the customer feedback we gathered in the spring survey.")
# A pretty-printed JSON table of numbers: cl100k_base packs it under 4
# characters a token (asserted below), the shape Claude's smaller vocabulary
# spends more tokens on.
DENSE_TEXT = json.dumps({"rows": [{"id": i, "x": i * 37 % 101, "y": i * 53 % 97}
                                  for i in range(12)]}, indent=2)


def test_prose_and_dense_text_factors() -> None:
    n_prose, n_dense = cl100k(PROSE_TEXT), cl100k(DENSE_TEXT)
    assert n_prose >= 20 and len(PROSE_TEXT) >= 4 * n_prose  # prose: the generation's factor
    assert n_dense >= 20 and len(DENSE_TEXT) < 4 * n_dense  # dense
    sonnet = price("claude-sonnet-4-5")
    est = Estimator()
    assert (est.count_prompt("claude-sonnet-4-5", sonnet, [{"role": "user", "content": PROSE_TEXT}])
            == tokens(n_prose * PROSE) + FRAMING)
    # Dense text is raised to 1.18/1.13 of its count (rounded up to whole
    # tokens), then takes the prose factor: 1.18x overall.
    dense = math.ceil(n_dense * DENSE / PROSE - 1e-9)
    assert (est.count_prompt("claude-sonnet-4-5", sonnet, [{"role": "user", "content": DENSE_TEXT}])
            == tokens(dense * PROSE) + FRAMING)
    # The same in a text block of a list content, and in the system prompt
    # (whose block costs 1 token of framing).
    block = [{"role": "user", "content": [{"type": "text", "text": DENSE_TEXT}]}]
    assert (est.count_prompt("claude-sonnet-4-5", sonnet, block)
            == tokens(dense * PROSE) + FRAMING)
    hello = [{"role": "user", "content": "Hello there"}]
    assert (est.count_prompt("claude-sonnet-4-5", sonnet, hello, system=DENSE_TEXT)
            == tokens((dense + cl100k("Hello there")) * PROSE) + FRAMING + 1)


def test_short_strings_are_never_dense() -> None:
    # "Say 42!" is under 4 characters a token but has fewer than 20 tokens:
    # counted as it is, times the prose factor.
    msg = [{"role": "user", "content": "Say 42!"}]
    assert (Estimator().count_prompt("claude-haiku-4-5", price("claude-haiku-4-5"), msg)
            == tokens(cl100k("Say 42!") * PROSE) + FRAMING)


WEATHER = {"name": "get_weather", "description": "Weather of a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}},
                            "required": ["city"]}}


def _definitions() -> int:
    # The tool as Claude's tool-use system prompt lists it (json.dumps spacing).
    body = {"description": WEATHER["description"], "name": WEATHER["name"],
            "parameters": WEATHER["input_schema"]}
    return cl100k("<function>" + json.dumps(body) + "</function>\n") + cl100k(
        "<functions>\n</functions>\n")


def test_tool_choice_prompt_sizes_from_the_current_pricing_table() -> None:
    msg = [{"role": "user", "content": "Weather in Oslo?"}]
    text = cl100k("Weather in Oslo?") + _definitions()
    est = Estimator()
    # Claude Haiku 4.5: 496 tokens for auto/none, 588 for any/tool.
    haiku = price("claude-haiku-4-5")
    auto = est.count_prompt("claude-haiku-4-5", haiku, msg, [WEATHER])
    assert auto == tokens(text * PROSE) + FRAMING + 496
    anyone = est.count_prompt("claude-haiku-4-5", haiku, msg, [WEATHER],
                              extra={"tool_choice": {"type": "any"}})
    assert anyone == tokens(text * PROSE) + FRAMING + 588
    # Forcing the tool by name writes its name into the prompt's tool
    # configuration: + the name's tokens times the prose factor.
    named = est.count_prompt("claude-haiku-4-5", haiku, msg, [WEATHER],
                             extra={"tool_choice": {"type": "tool", "name": "get_weather"}})
    assert named == anyone + tokens(cl100k("get_weather") * PROSE)
    # Claude Opus 4.1 and Sonnet 4: 313 / 315.
    opus41 = price("claude-opus-4-1")
    assert (est.count_prompt("claude-opus-4-1", opus41, msg, [WEATHER])
            == tokens(text * PROSE) + FRAMING + 313)
    assert (est.count_prompt("claude-opus-4-1", opus41, msg, [WEATHER],
                             extra={"tool_choice": {"type": "any"}})
            == tokens(text * PROSE) + FRAMING + 315)


def test_dense_plain_text_document_in_its_document_structure() -> None:
    # A CSV is dense (under 4 characters a cl100k token); it is read inside
    # Anthropic's long-context document structure with its title.
    csv = "city,day,high,low\n" + "".join(f"C{i},2024-06-{i + 10:02d},{20 + i},{9 + i}\n"
                                          for i in range(8))
    doc = {"type": "document", "title": "weather.csv",
           "source": {"type": "text", "media_type": "text/plain", "data": csv}}
    wrapped = ("<document>\n<source>weather.csv</source>\n<document_content>\n" + csv
               + "\n</document_content>\n</document>\n")
    n = cl100k(wrapped)
    assert n >= 20 and len(wrapped) < 4 * n
    msg = [{"role": "user", "content": [doc]}]
    assert (Estimator().count_prompt("claude-sonnet-4-5", price("claude-sonnet-4-5"), msg)
            == tokens(math.ceil(n * DENSE / PROSE - 1e-9) * PROSE) + FRAMING)
