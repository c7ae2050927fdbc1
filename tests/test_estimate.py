"""The pre-flight estimator against independent counts.

Where every expected number comes from:

- OpenAI cassettes (cassettes/estimation/openai_*.yaml): ``usage.prompt_tokens``
  is the count of the *reference implementation* below, written straight from
  the OpenAI cookbook (never from crew_budget's estimator), plus the vision
  formula from OpenAI's "Images and vision" guide. The provenance test
  recomputes it, so an edited cassette fails.
- Anthropic cassettes (cassettes/estimation/anthropic_*.yaml): there is no
  offline Claude tokenizer, so ``usage.input_tokens`` follows a documented
  rule (``anthropic_reference_input_tokens``): cl100k_base text tokens x 1.077
  (the ratio of a real recorded claude-sonnet-4-5 call, 1,220 billed for 1,133
  cl100k tokens) + 8 framing + Anthropic's documented fixed parts (image
  ``w*h/750``; tool-use system prompt 496 for Sonnet 4.5 auto). The estimate
  must sit in a tolerance band around it and never below the documented lower
  bound (documented fixed parts + the cl100k text count: Claude bills more
  tokens than cl100k for English text, 7.7-12.4 % more on recorded calls).
- Real provider counts: Anthropic's token-counting docs (claude-opus-4:
  14 / 403 / 88 tokens) and API-verified OpenAI function-definition counts
  from pamelafox/openai-messages-token-helper (tests/functions.py, checked
  against the API by its tests/verify_functions.py).
- Dollars: token counts x the per-token prices in litellm's bundled price map
  (gpt-4o-mini input 1.5e-07 / output 6e-07, gpt-4o 2.5e-06 / 1e-05,
  claude-sonnet-4-5 3e-06 / 1.5e-05), checked against the map first.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import math
import os
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import tiktoken
import vcr
import yaml

from crew_budget import images, tokens
from crew_budget.estimate import Estimator, render_functions
from crew_budget.guard import Guard
from crew_budget.pricing import Price, PriceBook

CASSETTES = Path(__file__).resolve().parent.parent / "cassettes" / "estimation"
PRICES = PriceBook()

# ---------------------------------------------------------------------------
# Independent reference implementation (NOT crew_budget's estimator).
#
# From the OpenAI cookbook notebook "How to count tokens with tiktoken"
# (github.com/openai/openai-cookbook, examples/How_to_count_tokens_with_tiktoken.ipynb):
# `num_tokens_from_messages` (gpt-4o family: 3 tokens per message, 1 per
# name, 3 to prime the reply; every value of a message is encoded) and
# `num_tokens_for_tools` (gpt-4o constants func_init=7, prop_init=3,
# prop_key=3, enum_init=-3, enum_item=3, func_end=12). Two documented
# extensions: image_url parts are priced by OpenAI's vision formula (tiles:
# 85 + 170 per 512 px tile after fitting 2048x2048 and scaling the short side
# to 768; gpt-4.1-mini: ceil(32 px patches x 1.62)); list/dict values
# (tool_calls) are walked and every string in them encoded, i.e. the
# cookbook's loop applied recursively.
# ---------------------------------------------------------------------------
_LITELLM = importlib.util.find_spec("litellm")
assert _LITELLM is not None and _LITELLM.origin is not None
os.environ.setdefault(
    "TIKTOKEN_CACHE_DIR",
    os.path.join(os.path.dirname(_LITELLM.origin), "litellm_core_utils", "tokenizers"),
)


def _encoding(name: str) -> tiktoken.Encoding:
    return tiktoken.get_encoding(name)


def ref_png_size(data: str) -> tuple[int, int]:
    raw = base64.b64decode(data.split(",", 1)[-1])
    w, h = struct.unpack(">II", raw[16:24])
    return w, h


def ref_tile_image(width: float, height: float, detail: str, base: int = 85,
                   tile: int = 170) -> int:
    if detail == "low":
        return base
    if max(width, height) > 2048:
        s = 2048 / max(width, height)
        width, height = width * s, height * s
    if min(width, height) > 768:
        s = 768 / min(width, height)
        width, height = math.floor(width * s), math.floor(height * s)
    return base + tile * math.ceil(width / 512) * math.ceil(height / 512)


def ref_image(model: str, part: dict[str, Any]) -> int:
    w, h = ref_png_size(part["image_url"]["url"])
    if model.startswith("gpt-4.1-mini"):
        patches = math.ceil(w / 32) * math.ceil(h / 32)
        assert patches <= 1536
        return math.ceil(patches * 1.62)
    return ref_tile_image(w, h, part["image_url"].get("detail", "auto"))


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def num_tokens_from_messages(messages: list[dict[str, Any]], model: str) -> int:
    encoding = _encoding("o200k_base")
    tokens_per_message = 3
    tokens_per_name = 1
    num_tokens = 0
    for message in messages:
        num_tokens += tokens_per_message
        for key, value in message.items():
            if value is None:
                continue
            if key == "content" and isinstance(value, list):
                for part in value:
                    if part["type"] == "text":
                        num_tokens += len(encoding.encode(part["text"]))
                    elif part["type"] == "image_url":
                        num_tokens += ref_image(model, part)
            else:
                for text in _strings(value):
                    num_tokens += len(encoding.encode(text))
            if key == "name":
                num_tokens += tokens_per_name
    num_tokens += 3  # every reply is primed with <|start|>assistant<|message|>
    return num_tokens


def harmony_history_tokens(body: dict[str, Any]) -> int:
    """Messages with tool calls and results, counted by harmony's rendering.

    Harmony (github.com/openai/harmony, docs/format.md "Function calling")
    renders each call as ``<|start|>assistant to=functions.NAME ...<|message|>ARGS``
    and each result as ``<|start|>functions.NAME to=assistant ...<|message|>RESULT``:
    no call ids, no ``tool`` role. With chat-completions framing (3 tokens a
    message) a call plus its result's author tag costs 3 + those texts - 1
    (as billed on recorded gpt-4o traffic); several (parallel) calls in one
    message are one call to the ``multi_tool_use.parallel`` wrapper (the OpenAI
    forum's threads on it): 3 + its header + its compact JSON arguments, and
    each of their results is addressed " to=assistant" instead; an assistant
    message holding only calls has no framing of its own; a result costs 3 +
    its content. Other messages: the cookbook rule. Written independently of
    the estimator.
    """
    encoding = _encoding("o200k_base")

    def n(text: str) -> int:
        return len(encoding.encode(text))

    total = 3  # reply priming
    for message in body["messages"]:
        calls = message.get("tool_calls") or []
        if message["role"] == "tool":
            total += 3 + n(message["content"])
            continue
        if not calls:
            total += num_tokens_from_messages([message], body["model"]) - 3
            continue
        if message.get("content"):
            total += 3 + n("assistant") + n(message["content"])
        if len(calls) > 1:
            uses = [{"recipient_name": "functions." + call["function"]["name"],
                     "parameters": json.loads(call["function"]["arguments"])}
                    for call in calls]
            wrapper = json.dumps({"tool_uses": uses}, separators=(",", ":"))
            total += 3 + n("assistant to=multi_tool_use.parallel") + n(wrapper)
            total += len(calls) * n(" to=assistant")
            continue
        per_call = 2
        for call in calls:
            name, args = call["function"]["name"], call["function"]["arguments"]
            total += per_call + n(f"assistant to=functions.{name}") + n(args)
            total += n(f"functions.{name} to=assistant")
    return total


def num_tokens_for_tools(functions: list[dict[str, Any]]) -> int:
    encoding = _encoding("o200k_base")
    func_init, prop_init, prop_key, enum_init, enum_item, func_end = 7, 3, 3, -3, 3, 12
    func_token_count = 0
    if len(functions) > 0:
        for f in functions:
            func_token_count += func_init
            function = f["function"]
            f_desc = function["description"]
            if f_desc.endswith("."):
                f_desc = f_desc[:-1]
            func_token_count += len(encoding.encode(function["name"] + ":" + f_desc))
            properties = function["parameters"]["properties"]
            if len(properties) > 0:
                func_token_count += prop_init
                for key in list(properties.keys()):
                    func_token_count += prop_key
                    p_type = properties[key]["type"]
                    p_desc = properties[key]["description"]
                    if "enum" in properties[key]:
                        func_token_count += enum_init
                        for item in properties[key]["enum"]:
                            func_token_count += enum_item
                            func_token_count += len(encoding.encode(item))
                    if p_desc.endswith("."):
                        p_desc = p_desc[:-1]
                    func_token_count += len(encoding.encode(f"{key}:{p_type}:{p_desc}"))
        func_token_count += func_end
    return func_token_count


def openai_reference_prompt_tokens(body: dict[str, Any]) -> int:
    total = num_tokens_from_messages(body["messages"], body["model"])
    if body.get("tools"):
        total += num_tokens_for_tools(body["tools"])
    fmt = body.get("response_format")
    if fmt:
        # No cookbook rule: the compact schema + 3, the overhead a real recorded
        # gpt-4.1-mini json_schema call showed (276 billed = 240 + 33 + 3).
        schema = json.dumps(fmt["json_schema"]["schema"], separators=(",", ":"))
        total += len(_encoding("o200k_base").encode(schema)) + 3
    return total


# Anthropic: documented synthetic rule (see module docstring).
ANTH_TEXT_RATIO = 1.077
ANTH_FRAMING = 8
TOOL_PROMPT_SONNET_45_AUTO = 496  # Anthropic tool-use pricing table, Claude Sonnet 4.5


def anthropic_texts(body: dict[str, Any]) -> Iterator[str]:
    system = body.get("system")
    if isinstance(system, str):
        yield system
    elif isinstance(system, list):
        for block in system:
            yield block["text"]
    for tool in body.get("tools", []):
        yield json.dumps(tool, separators=(",", ":"))
    for message in body["messages"]:
        content = message["content"]
        if isinstance(content, str):
            yield content
            continue
        for block in content:
            if block["type"] == "text":
                yield block["text"]
            elif block["type"] == "tool_use":
                yield block["name"]
                yield json.dumps(block["input"], separators=(",", ":"))
            elif block["type"] == "tool_result":
                inner = block["content"]
                if isinstance(inner, str):
                    yield inner
                else:
                    for b in inner:
                        yield b["text"]


def anthropic_documented_parts(body: dict[str, Any]) -> int:
    fixed = TOOL_PROMPT_SONNET_45_AUTO if body.get("tools") else 0
    for message in body["messages"]:
        if isinstance(message["content"], list):
            for block in message["content"]:
                if block["type"] == "image":
                    w, h = ref_png_size(block["source"]["data"])
                    fixed += math.ceil(w * h / 750)  # Anthropic vision docs
    return fixed


def anthropic_cl100k_text(body: dict[str, Any]) -> int:
    enc = _encoding("cl100k_base")
    return sum(len(enc.encode(t)) for t in anthropic_texts(body))


def anthropic_reference_input_tokens(body: dict[str, Any]) -> int:
    text = anthropic_cl100k_text(body)
    return math.ceil(text * ANTH_TEXT_RATIO) + ANTH_FRAMING + anthropic_documented_parts(body)


# ---------------------------------------------------------------------------
# Cassette helpers
# ---------------------------------------------------------------------------


def load(name: str) -> list[dict[str, Any]]:
    data = yaml.safe_load((CASSETTES / name).read_text())
    assert data["version"] == 1
    return list(data["interactions"])


def request_body(interaction: dict[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(interaction["request"]["body"])
    return body


def response_usage(interaction: dict[str, Any]) -> dict[str, Any]:
    """``usage`` of a JSON response, or of the final usage event of an SSE stream."""
    text = interaction["response"]["body"]["string"]
    if not text.lstrip().startswith(("data:", "event:")):
        usage: dict[str, Any] = json.loads(text)["usage"]
        return usage
    found: dict[str, Any] = {}
    for line in text.splitlines():
        if line.startswith("data: {"):
            event = json.loads(line[6:])
            usage = event.get("usage") or (event.get("message") or {}).get("usage")
            if usage:
                found = {**found, **usage}
    return found


def openai_cases() -> list[Any]:
    cases = []
    for name in sorted(p.name for p in CASSETTES.glob("openai_*.yaml")):
        for i, interaction in enumerate(load(name)):
            cases.append(pytest.param(interaction, id=f"{name[:-5]}-{i}"))
    return cases


def anthropic_cases() -> list[Any]:
    return [pytest.param(load(p.name)[0], id=p.name[:-5])
            for p in sorted(CASSETTES.glob("anthropic_*.yaml"))]


def estimate_body(est: Estimator, body: dict[str, Any]) -> int:
    model = body["model"]
    extra = {k: body[k] for k in ("tool_choice", "response_format", "thinking") if k in body}
    return est.count_prompt(model, PRICES.get(model), body["messages"], body.get("tools"),
                            system=body.get("system"), extra=extra)


# ---------------------------------------------------------------------------
# Cassette provenance: the usage numbers are the independent counts
# ---------------------------------------------------------------------------


def test_cassettes_exist_for_every_required_shape() -> None:
    names = {p.name for p in CASSETTES.glob("*.yaml")}
    assert names == {
        "openai_plain.yaml", "openai_name.yaml", "openai_tools.yaml",
        "openai_tool_results.yaml", "openai_image.yaml", "openai_response_format.yaml",
        "anthropic_plain.yaml", "anthropic_system.yaml", "anthropic_tools.yaml",
        "anthropic_tool_result.yaml", "anthropic_image.yaml",
    }


@pytest.mark.parametrize("interaction", openai_cases())
def test_openai_cassette_usage_is_the_cookbook_count(interaction: dict[str, Any]) -> None:
    body = request_body(interaction)
    assert response_usage(interaction)["prompt_tokens"] == openai_reference_prompt_tokens(body)


@pytest.mark.parametrize("interaction", anthropic_cases())
def test_anthropic_cassette_usage_follows_the_documented_rule(interaction: dict[str, Any]) -> None:
    body = request_body(interaction)
    assert response_usage(interaction)["input_tokens"] == anthropic_reference_input_tokens(body)


# ---------------------------------------------------------------------------
# Estimator vs the cassettes
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("interaction", openai_cases())
def test_openai_estimate_against_reference(interaction: dict[str, Any]) -> None:
    body = request_body(interaction)
    actual = response_usage(interaction)["prompt_tokens"]
    estimate = estimate_body(Estimator(), body)
    if body.get("response_format"):
        # The cassette's hand-written usage bills the compact schema + 3 (see
        # openai_reference_prompt_tokens). The estimator follows what recorded
        # gpt-4o / gpt-5.4 traffic bills (estimate/openai.py): harmony's
        # "# Response Formats" section with the schema written as harmony
        # writes function parameters, a measured 27-token format prompt
        # (gpt-4o-mini is not a harmony model), and no framing of its own: the
        # request has a system message for the section to join.
        spec = body["response_format"]["json_schema"]
        section = (f"# Response Formats\n\n## {spec['name']}\n\n{{\n"
                   "title: string,\nscore: number,\nreasons: string[],\n}")
        assert set(spec["schema"]["properties"]) == {"title", "score", "reasons"}
        expected = (num_tokens_from_messages(body["messages"], body["model"])
                    + len(_encoding("o200k_base").encode(section)) + 27)
        assert estimate == expected
        # The hand-written usage (an older guess, not a recording) is 3 above.
        assert actual - estimate == 3
    elif body.get("tools") and any(m.get("tool_calls") for m in body["messages"]):
        # This cassette's usage is the cookbook count, which bills every
        # field of a tool call (call ids included, twice: on the call and on
        # the result). The estimator now follows harmony's rendering of calls
        # and results (no ids; see harmony_history_tokens), so it is compared
        # with that rule, the tools part within 2 as in the next branch.
        expected = harmony_history_tokens(body) + num_tokens_for_tools(body["tools"])
        assert abs(estimate - expected) <= 2, (estimate, expected)
        assert estimate < actual  # the ids the cookbook count bills are not billed
    elif body.get("tools"):
        # TypeScript rendering vs the cookbook's per-field constants.
        assert abs(estimate - actual) <= 2
    else:
        assert estimate == actual


@pytest.mark.parametrize("interaction", anthropic_cases())
def test_anthropic_estimate_within_band_and_above_documented_floor(
    interaction: dict[str, Any],
) -> None:
    body = request_body(interaction)
    usage = response_usage(interaction)["input_tokens"]
    estimate = estimate_body(Estimator(), body)
    floor = anthropic_documented_parts(body) + anthropic_cl100k_text(body)
    assert estimate >= floor
    assert 0.95 * usage <= estimate <= 1.25 * usage, (estimate, usage)


# Anthropic "Token counting" docs, claude-opus-4-20250514 examples.
WEATHER_ANTHROPIC = {
    "name": "get_weather",
    "description": "Get the current weather in a given location",
    "input_schema": {"type": "object", "properties": {"location": {
        "type": "string", "description": "The city and state, e.g. San Francisco, CA"}},
        "required": ["location"]},
}
THINKING_HISTORY = [
    {"role": "user",
     "content": "Are there an infinite number of prime numbers such that n mod 4 == 3?"},
    {"role": "assistant", "content": [
        {"type": "thinking", "thinking": "This is a nice number theory question. Let's think "
                                         "about it step by step...",
         "signature": "EuYBCkQYAiJAgCs1le6/Pol5Z4/JMomVOouGrWdhYNsH3ukzUECbB6iWrSQtsQuRHJ"
                      "ID6lWV..."},
        {"type": "text",
         "text": "Yes, there are infinitely many prime numbers p such that p mod 4 = 3..."}]},
    {"role": "user", "content": "Can you write a formal proof?"},
]


@pytest.mark.parametrize(
    ("kwargs", "documented"),
    [
        ({"messages": [{"role": "user", "content": "Hello, Claude"}],
          "system": "You are a scientist"}, 14),
        ({"messages": [{"role": "user", "content": "What's the weather like in San Francisco?"}],
          "tools": [WEATHER_ANTHROPIC]}, 403),
        ({"messages": THINKING_HISTORY,
          "extra": {"thinking": {"type": "enabled", "budget_tokens": 16000}}}, 88),
    ],
    ids=["basic", "tools", "thinking"],
)
def test_anthropic_documented_count_tokens_examples(kwargs: dict[str, Any],
                                                     documented: int) -> None:
    price = Price("claude-opus-4-20250514", "anthropic", Decimal("0.000015"), Decimal("0.000075"))
    estimate = Estimator().count_prompt(
        "claude-opus-4-20250514", price, kwargs["messages"], kwargs.get("tools"),
        system=kwargs.get("system"), extra=kwargs.get("extra"),
    )
    assert documented <= estimate <= 1.25 * documented


# pamelafox/openai-messages-token-helper tests/functions.py: prompt_tokens the
# OpenAI API reported for the system message "You are a bot." plus tools (a
# cl100k model). Its own estimates were allowed "over by up to 3 tokens".
def _fn(name: str, desc: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    function: dict[str, Any] = {"name": name, "description": desc}
    if params is not None:
        function["parameters"] = params
    return [{"type": "function", "function": function}]


_SEARCH = _fn("search_sources", "Retrieve sources from the Azure AI Search index", {
    "type": "object", "properties": {"search_query": {
        "type": "string",
        "description": "Query string to retrieve documents from azure search eg: "
                       "'Health care plan'"}},
    "required": ["search_query"]})
_NESTED = _fn("data_demonstration", "This is the main function description", {
    "type": "object", "properties": {
        "object_1": {"type": "object", "description": "The object data type as a property",
                     "properties": {"string_2a": {"type": "string", "enum": ["Happy", "Sad"]},
                                    "string_2b": {"type": "string", "description":
                                                  "Description in a second object is lost"}}},
        "string_1": {"type": "string", "description": "Not required gets a question mark"}},
    "required": ["object_1"]})
API_VERIFIED_TOOL_COUNTS = [
    (_SEARCH, "auto", 66),
    (_SEARCH, "none", 67),
    (_SEARCH, {"type": "function", "function": {"name": "search_sources"}}, 75),
    (_fn("search_sources", "Retrieve sources from the Azure AI Search index"), "auto", 42),
    (_fn("summarize_order", "Summarize the customer order request", {
        "type": "object", "properties": {
            "product_name": {"type": "string", "description": "Product name ordered by customer"},
            "quantity": {"type": "integer", "description": "Quantity ordered by customer"},
            "unit": {"type": "string", "enum": ["meals", "days"],
                     "description": "unit of measurement of the customer order"}},
        "required": ["product_name", "quantity", "unit"]}), "none", 86),
    (_NESTED, "none", 103),
    (_fn("get_coordinates", "Get the latitude and longitude of multiple mailing addresses", {
        "type": "object", "properties": {"addresses": {
            "type": "array", "description": "The mailing addresses to be located",
            "items": {"type": "string"}}}, "required": ["addresses"]}), "none", 59),
    (_fn("data_demonstration", "This is the main function description", {
        "type": "object", "properties": {"integer_enum": {"type": "integer",
                                                          "enum": [-1, 1]}}}), "none", 54),
]


@pytest.mark.parametrize(("tools", "choice", "api_count"), API_VERIFIED_TOOL_COUNTS)
def test_tool_definitions_match_api_verified_counts(tools: list[dict[str, Any]], choice: Any,
                                                    api_count: int) -> None:
    estimate = Estimator().count_prompt(
        "gpt-3.5-turbo", PRICES.get("gpt-3.5-turbo"),
        [{"role": "system", "content": "You are a bot."}], tools, extra={"tool_choice": choice},
    )
    assert api_count <= estimate <= api_count + 3


def test_legacy_functions_are_rendered_like_tools() -> None:
    est = Estimator()
    msgs = [{"role": "system", "content": "You are a bot."}]
    price = PRICES.get("gpt-3.5-turbo")
    as_tools = est.count_prompt("gpt-3.5-turbo", price, msgs, _SEARCH)
    as_functions = est.count_prompt("gpt-3.5-turbo", price, msgs,
                                    extra={"functions": [_SEARCH[0]["function"]]})
    assert as_tools == as_functions == 66


def test_typescript_rendering() -> None:
    assert render_functions([_NESTED[0]["function"]]) == (
        "namespace functions {\n\n"
        "// This is the main function description\n"
        "type data_demonstration = (_: {\n"
        "// The object data type as a property\n"
        "object_1: {\n"
        '  string_2a?: "Happy" | "Sad",\n'
        "  // Description in a second object is lost\n"
        "  string_2b?: string,\n"
        "},\n"
        "// Not required gets a question mark\n"
        "string_1?: string,\n"
        "}) => any;\n\n"
        "} // namespace functions"
    )


# ---------------------------------------------------------------------------
# End to end: Guard -> real SDK (HTTP replayed by VCR) -> settle
# ---------------------------------------------------------------------------
VCR = vcr.VCR(match_on=["method", "scheme", "host", "path"], record_mode="none")

GPT_4O_MINI_IN, GPT_4O_MINI_OUT = Decimal("0.00000015"), Decimal("0.0000006")
GPT_4O_IN, GPT_4O_OUT = Decimal("0.0000025"), Decimal("0.00001")
SONNET_45_IN, SONNET_45_OUT = Decimal("0.000003"), Decimal("0.000015")


def test_prices_used_below_are_litellms() -> None:
    assert (PRICES.get("gpt-4o-mini").input, PRICES.get("gpt-4o-mini").output) == (
        GPT_4O_MINI_IN, GPT_4O_MINI_OUT)
    assert (PRICES.get("gpt-4o").input, PRICES.get("gpt-4o").output) == (GPT_4O_IN, GPT_4O_OUT)
    sonnet = PRICES.get("claude-sonnet-4-5")
    assert (sonnet.input, sonnet.output) == (SONNET_45_IN, SONNET_45_OUT)


def _guard() -> Guard:
    return Guard({"roles": {"researcher": {"daily": 5}}}, "memory://")


def _spent(guard: Guard) -> Decimal:
    return next(s.spent for s in guard.status("researcher") if s.window == "day")


@pytest.mark.parametrize(
    ("cassette", "index", "price_in", "price_out"),
    [("openai_plain.yaml", 0, GPT_4O_MINI_IN, GPT_4O_MINI_OUT),
     ("openai_plain.yaml", 1, GPT_4O_MINI_IN, GPT_4O_MINI_OUT),
     ("openai_tools.yaml", 0, GPT_4O_IN, GPT_4O_OUT),
     ("openai_image.yaml", 0, GPT_4O_IN, GPT_4O_OUT)],
    ids=["plain", "stream", "tools", "image"],
)
def test_openai_call_through_sdk_is_estimated_and_settled_exactly(
    cassette: str, index: int, price_in: Decimal, price_out: Decimal
) -> None:
    import openai

    body = request_body(load(cassette)[index])
    guard = _guard()
    ticket = guard.preflight("researcher", body["model"], body["messages"], body.get("tools"),
                             body["max_tokens"], extra={"tool_choice": body.get("tool_choice")})
    client = openai.OpenAI(api_key="sk-test", max_retries=0)
    with VCR.use_cassette(str(CASSETTES / cassette), allow_playback_repeats=False) as cass:
        # vcrpy replays in order; skip earlier interactions of the cassette.
        for _ in range(index):
            client.chat.completions.create(**request_body(load(cassette)[_]))
        if body.get("stream"):
            chunks = list(client.chat.completions.create(**body))
            usage = chunks[-1].usage
        else:
            usage = client.chat.completions.create(**body).usage
        assert cass.play_count == index + 1
    assert usage is not None
    # The estimate is the reference count; the reservation covers max_tokens.
    assert usage.prompt_tokens - 1 <= ticket.prompt_tokens <= usage.prompt_tokens + 1
    assert ticket.output_tokens_reserved == body["max_tokens"]
    settled = guard.settle(ticket, usage)
    expected = usage.prompt_tokens * price_in + usage.completion_tokens * price_out
    assert settled.cost == expected
    assert _spent(guard) == expected
    assert ticket.estimate >= expected


def test_anthropic_stream_through_sdk_is_estimated_and_settled_exactly() -> None:
    import anthropic

    body = request_body(load("anthropic_system.yaml")[0])
    guard = _guard()
    ticket = guard.preflight("researcher", body["model"], body["messages"], None,
                             body["max_tokens"], system=body["system"])
    client = anthropic.Anthropic(api_key="sk-ant-test", max_retries=0)
    kwargs = {k: v for k, v in body.items() if k != "stream"}
    with VCR.use_cassette(str(CASSETTES / "anthropic_system.yaml")) as cass:
        with client.messages.stream(**kwargs) as stream:
            final = stream.get_final_message()
        assert cass.play_count == 1
    usage = final.usage
    assert usage.input_tokens == response_usage(load("anthropic_system.yaml")[0])["input_tokens"]
    assert usage.input_tokens <= ticket.prompt_tokens <= 1.25 * usage.input_tokens
    settled = guard.settle(ticket, usage)
    expected = usage.input_tokens * SONNET_45_IN + usage.output_tokens * SONNET_45_OUT
    assert settled.cost == expected == _spent(guard)


def test_anthropic_tool_call_through_sdk() -> None:
    import anthropic

    body = request_body(load("anthropic_tools.yaml")[0])
    guard = _guard()
    ticket = guard.preflight("researcher", body["model"], body["messages"], body["tools"],
                             body["max_tokens"], extra={"tool_choice": body["tool_choice"]})
    client = anthropic.Anthropic(api_key="sk-ant-test", max_retries=0)
    with VCR.use_cassette(str(CASSETTES / "anthropic_tools.yaml")) as cass:
        message = client.messages.create(**body)
        assert cass.play_count == 1
    assert message.stop_reason == "tool_use"
    # 496 of the input is Anthropic's documented tool-use system prompt.
    assert ticket.prompt_tokens >= TOOL_PROMPT_SONNET_45_AUTO + anthropic_cl100k_text(body)
    settled = guard.settle(ticket, message.usage)
    assert settled.cost == (message.usage.input_tokens * SONNET_45_IN
                            + message.usage.output_tokens * SONNET_45_OUT)


# ---------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------


def _png(w: int, h: int) -> bytes:
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + struct.pack(">II", w, h)


def _data_url(raw: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(raw).decode()}"


@pytest.mark.parametrize(
    ("model", "size", "detail", "tokens_"),
    [
        # OpenAI guide worked examples (tile models, gpt-4o: 85 + 170 per tile).
        ("gpt-4o", (1024, 1024), "high", 765),
        ("gpt-4o", (2048, 4096), "high", 1105),
        ("gpt-4o", (4096, 8192), "low", 85),
        ("gpt-4o-mini", (1024, 1024), "auto", 2833 + 4 * 5667),
        ("o3", (512, 512), "high", 75 + 150),
        ("gpt-5", (512, 512), "high", 70 + 140),
        # Patch models: 1024x1024 = 1024 patches; 1800x2400 -> 1452 patches.
        ("gpt-4.1-mini", (1024, 1024), "auto", math.ceil(1024 * 1.62)),
        ("o4-mini", (1800, 2400), "auto", math.ceil(1452 * 1.72)),
        ("gpt-4.1-nano", (1800, 2400), "auto", math.ceil(1452 * 2.46)),
        # gpt-5.4 high: 2048x2048 -> 2,500-patch budget -> ceil(2500 x 1.2) = 3000.
        ("gpt-5.4", (2048, 2048), "high", 3000),
        ("gpt-5.4", (1024, 1024), "high", 1229),
    ],
)
def test_openai_image_formulas(model: str, size: tuple[int, int], detail: str,
                               tokens_: int) -> None:
    assert images.openai_policy(model).tokens(size, detail) == tokens_


@pytest.mark.parametrize(
    ("size", "tokens_"),
    # Anthropic "Images and vision": ceil(w/28) x ceil(h/28) visual tokens
    # (200x200: 8 x 8; 1000x1000: 36 x 36; 1092x1092: 39 x 39, the size
    # table's largest unresized square), and every image block costs 3 more
    # (its delimiters): see images.py.
    [((200, 200), 64 + 3), ((1000, 1000), 1296 + 3), ((1092, 1092), 1521 + 3),
     # 3000x3000 is first resized to the largest square within 1,568 visual
     # tokens: 39 x 39 patches (1092 px; 40 x 40 = 1,600 is over).
     ((3000, 3000), 1521 + 3)],
)
def test_anthropic_image_formula(size: tuple[int, int], tokens_: int) -> None:
    assert images.anthropic_policy(False).tokens(size) == tokens_


def test_unknown_image_size_is_openais_512px_rendition_and_claudes_maximum() -> None:
    est = Estimator()
    url = "https://example.com/cat.png"
    msgs = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}]
    # OpenAI: an image the request cannot size is priced as the 512x512
    # low-resolution rendition the vision guide describes: on gpt-4o one tile,
    # 85 + 170; framing 3 + 1 ("user") + 3.
    assert est.count_prompt("gpt-4o", PRICES.get("gpt-4o"), msgs) == 85 + 170 + 7
    # gpt-4o-mini's tile rule: 2833 + 5667 for one tile.
    assert est.count_prompt("gpt-4o-mini", PRICES.get("gpt-4o-mini"), msgs) == 2833 + 5667 + 7
    # gpt-5.4 (patches x 1.2): 16 x 16 patches of 32 px -> ceil(256 x 1.2) = 308.
    assert images.openai_policy("gpt-5.4").tokens(None, "auto") == 308
    # detail "low" is the base whatever the size; the documented maximum stays available.
    assert images.openai_policy("gpt-4o").tokens(None, "low") == 85
    assert images.openai_policy("gpt-4o").max_tokens("high") == 85 + 8 * 170
    claude = [{"role": "user", "content": [{"type": "image", "source": {"type": "url",
                                                                        "url": url}}]}]
    tokens_ = est.count_prompt("claude-sonnet-4-5", PRICES.get("claude-sonnet-4-5"), claude)
    # The ceiling: 1,568 visual tokens (784x1568 px, the Vision docs' 1:2 row) + 3.
    assert tokens_ >= 1568 + 3


def test_image_sizes_from_data_urls() -> None:
    assert images.data_url_size(_data_url(_png(640, 480))) == (640, 480)
    gif = b"GIF89a" + struct.pack("<HH", 320, 200) + b"\x00" * 4
    assert images.data_url_size(_data_url(gif, "image/gif")) == (320, 200)
    vp8x = b"RIFF\x00\x00\x00\x00WEBPVP8X" + b"\x00" * 8 + (799).to_bytes(3, "little") + (
        599).to_bytes(3, "little")
    assert images.data_url_size(_data_url(vp8x, "image/webp")) == (800, 600)
    bits = (1023) | (767 << 14)
    vp8l = b"RIFF\x00\x00\x00\x00WEBPVP8L" + b"\x00" * 4 + b"\x2f" + bits.to_bytes(4, "little")
    assert images.data_url_size(_data_url(vp8l, "image/webp")) == (1024, 768)
    # JPEG: SOI, a 2 kB APP1 (EXIF) segment, then the SOF0 frame header.
    app1 = b"\xff\xe1" + (2002).to_bytes(2, "big") + b"E" * 2000
    sof0 = b"\xff\xc0" + (17).to_bytes(2, "big") + b"\x08" + struct.pack(">HH", 1080, 1920)
    jpeg = b"\xff\xd8" + app1 + sof0 + b"\x03" + b"\x00" * 9
    assert images.data_url_size(_data_url(jpeg, "image/jpeg")) == (1920, 1080)
    assert images.data_url_size("data:image/png;base64,!!!not-base64") is None
    assert images.data_url_size(_data_url(b"not an image")) is None


def test_anthropic_pdf_document_is_priced_per_page() -> None:
    import io

    from pypdf import PdfWriter

    writer = PdfWriter()  # three blank US Letter pages
    for _ in range(3):
        writer.add_blank_page(612, 792)
    out = io.BytesIO()
    writer.write(out)
    pdf = out.getvalue()
    msg = [{"role": "user", "content": [
        {"type": "document", "source": {"type": "base64", "media_type": "application/pdf",
                                        "data": base64.b64encode(pdf).decode()}}]}]
    price = PRICES.get("claude-sonnet-4-5")
    # Anthropic "PDF support": each page is billed as an image of the page
    # plus its extracted text (none here). Pages are rasterized at a size
    # the caller does not control: the largest image Claude reads, 1,568
    # visual tokens + 3 delimiters (estimate/__init__.py _pdf_page_image);
    # + 4 message framing + 3 reply priming. (3,000 a page is used only when
    # the PDF's bytes are not in the request.)
    page = 1568 + 3
    assert 1_500 <= page <= 3_000  # Anthropic's documented 1,500-3,000 a page
    assert Estimator().count_prompt("claude-sonnet-4-5", price, msg) == 3 * page + 4 + 3


# ---------------------------------------------------------------------------
# Per-message cache
# ---------------------------------------------------------------------------


def _history(turns: int = 20) -> list[dict[str, Any]]:
    msgs: list[dict[str, Any]] = [{"role": "system", "content": "You are a research agent. " * 8}]
    for i in range(turns):
        msgs.append({"role": "user", "content": f"Step {i}: look up fact number {i} and report "
                                                "what you found, with the source URL. " * 3})
        msgs.append({"role": "assistant", "content": f"Fact {i}: the value is {i * 7}. Source: "
                                                     f"https://example.org/facts/{i}. " * 4})
    return msgs


def test_second_estimate_tokenizes_only_the_new_message(monkeypatch: pytest.MonkeyPatch) -> None:
    est = Estimator()
    price = PRICES.get("gpt-4o")
    history = _history(20)
    tools = _SEARCH
    first = est.count_prompt("gpt-4o", price, history, tools)
    assert first > 2000  # a realistic agent history (~4k tokens)

    seen: list[str] = []
    original = tiktoken.Encoding.encode_ordinary

    def spy(self: tiktoken.Encoding, text: str) -> list[int]:
        seen.append(text)
        return original(self, text)

    monkeypatch.setattr(tiktoken.Encoding, "encode_ordinary", spy)
    new = {"role": "user", "content": "Now summarise everything in one paragraph."}
    # The framework rebuilds its message list every call: equal, not identical.
    second = est.count_prompt("gpt-4o", price, [*json.loads(json.dumps(history)), new],
                              json.loads(json.dumps(tools)))
    # Only the new content: its role, "user", is a short string already counted.
    assert seen == [new["content"]]
    assert second == first + 3 + len(_encoding("o200k_base").encode(new["content"])) + 1


def test_cache_is_a_bounded_lru() -> None:
    est = Estimator(cache_size=10)
    price = PRICES.get("gpt-4o-mini")
    for i in range(50):
        est.count_prompt("gpt-4o-mini", price, [{"role": "user", "content": f"message {i}"}])
    assert est.cache_info()["size"] == 10


def test_long_strings_are_not_copied_into_cache_keys() -> None:
    est = Estimator()
    big = "lorem ipsum dolor sit amet " * 5000
    est.count_prompt("gpt-4o-mini", PRICES.get("gpt-4o-mini"), [{"role": "user", "content": big}])

    def longest(value: Any) -> int:
        if isinstance(value, str):
            return len(value)
        if isinstance(value, tuple):
            return max((longest(v) for v in value), default=0)
        return 0

    assert max(longest(k) for k in est._cache) <= 256


def test_cache_is_thread_safe() -> None:
    est = Estimator(cache_size=64)
    price = PRICES.get("gpt-4o-mini")
    expected = est.count_prompt("gpt-4o-mini", price, _history(5))
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        try:
            for i in range(40):
                extra_msg = {"role": "user", "content": f"thread {seed} message {i}"}
                n = est.count_prompt("gpt-4o-mini", price, [*_history(5), extra_msg])
                assert n > expected
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert est.cache_info()["size"] <= 64
    assert est.count_prompt("gpt-4o-mini", price, _history(5)) == expected


# ---------------------------------------------------------------------------
# Calibration
# ---------------------------------------------------------------------------


def test_calibration_corrects_underestimates_fast_and_overestimates_slowly() -> None:
    est = Estimator()
    price = PRICES.get("claude-sonnet-4-5")
    msgs = _history(3)
    base = est.count_prompt("claude-sonnet-4-5", price, msgs)
    est.calibrate("claude-sonnet-4-5", base, int(base * 1.3))  # billed 30 % more
    after_under = est.count_prompt("claude-sonnet-4-5", price, msgs)
    assert after_under >= base * 1.17  # 60 % of the gap at once
    for _ in range(3):
        est.calibrate("claude-sonnet-4-5", after_under, base)  # now 23 % over
    after_over = est.count_prompt("claude-sonnet-4-5", price, msgs)
    assert after_under * 0.95 <= after_over < after_under  # down, but slowly
    for _ in range(500):
        est.calibrate("claude-sonnet-4-5", 1000, 100)
    assert est.calibration("claude-sonnet-4-5") == pytest.approx(0.7)  # bounded
    for _ in range(50):
        est.calibrate("claude-sonnet-4-5", 100, 10_000)
    assert est.calibration("claude-sonnet-4-5") == pytest.approx(3.0)


def test_exact_tokenizer_models_only_drift_upward() -> None:
    est = Estimator()
    price = PRICES.get("gpt-4o-mini")
    msgs = _history(2)
    base = est.count_prompt("gpt-4o-mini", price, msgs)
    for _ in range(200):
        est.calibrate("gpt-4o-mini", base, base // 2)
    assert est.count_prompt("gpt-4o-mini", price, msgs) == base
    est.calibrate("gpt-4o-mini", base, base + 100)
    assert est.count_prompt("gpt-4o-mini", price, msgs) > base


def test_tiny_calls_do_not_calibrate() -> None:
    est = Estimator()
    est.calibrate("claude-sonnet-4-5", 10, 25)
    assert est.calibration("claude-sonnet-4-5") == 1.0


def test_guard_settle_feeds_calibration() -> None:
    guard = _guard()
    msgs = _history(3)
    first = guard.preflight("researcher", "claude-sonnet-4-5", msgs, max_tokens=100)
    billed = {"input_tokens": int(first.prompt_tokens * 1.5), "output_tokens": 20}
    guard.settle(first, billed)
    second = guard.preflight("researcher", "claude-sonnet-4-5", msgs, max_tokens=100)
    assert second.prompt_tokens > first.prompt_tokens * 1.25
    guard.release(second)


def test_guard_estimate_is_what_preflight_reserves() -> None:
    guard = _guard()
    msgs = _history(2)
    est = guard.estimate("researcher", "gpt-4o-mini", msgs)
    assert est.max_tokens == est.output_tokens_reserved == 4096  # config default cap
    assert sum(s.reserved for s in guard.status("researcher")) == 0  # nothing reserved
    ticket = guard.preflight("researcher", "gpt-4o-mini", msgs)
    assert (ticket.estimate, ticket.prompt_tokens, ticket.max_tokens) == (
        est.amount, est.prompt_tokens, est.max_tokens)
    assert est.amount == (est.prompt_tokens * GPT_4O_MINI_IN + 4096 * GPT_4O_MINI_OUT)
    guard.release(ticket)


# ---------------------------------------------------------------------------
# Formats, families and inputs
# ---------------------------------------------------------------------------


def test_encoding_by_model_family() -> None:
    est = Estimator()
    text = "Straße 東京 🚀 tokenization differs between encodings"
    msgs = [{"role": "user", "content": text}]
    for model, encoding in [("gpt-4o", "o200k_base"), ("gpt-4.1-mini", "o200k_base"),
                            ("o3-mini", "o200k_base"), ("gpt-4", "cl100k_base"),
                            ("gpt-3.5-turbo", "cl100k_base")]:
        # o-series (harmony-style reasoning models) are primed with
        # "<|start|>assistant" (2 tokens, openai/harmony) instead of 3.
        reply = 2 if model.startswith("o3") else 3
        expected = 3 + 1 + len(_encoding(encoding).encode(text)) + reply
        assert est.count_prompt(model, PRICES.get(model), msgs) == expected, model


def test_tokenizer_hint_and_provider_pick_the_format() -> None:
    est = Estimator()
    msgs = [{"role": "user", "content": "Hello there, how are you today?"}]
    text = len(_encoding("cl100k_base").encode(msgs[0]["content"]))
    hinted = Price("my-finetune", "other", Decimal("1e-6"), Decimal("2e-6"),
                   tokenizer="cl100k_base")
    # exact count with OpenAI framing
    assert est.count_prompt("my-finetune", hinted, msgs) == 3 + 1 + text + 3
    llama = Price("groq/llama-3.3-70b", "groq", Decimal("1e-6"), Decimal("2e-6"))
    # Llama 3.x's chat template (meta-llama/Llama-3.1-8B-Instruct tokenizer_config.json)
    # opens every prompt with a system block holding a knowledge-cutoff / date
    # header: that text (x1.05) + 4 framing tokens a message + 9 (system block
    # framing 5 + the assistant header 4).
    date = "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"
    header = math.ceil(len(_encoding("cl100k_base").encode(date)) * 1.05)
    assert est.count_prompt("groq/llama-3.3-70b", llama, msgs) == (
        math.ceil((1 + text) * 1.05) + 4 + 9 + header)
    custom = Price("x", "other", Decimal("1e-6"), Decimal("2e-6"), tokenizer="approx:2")
    assert est.count_prompt("x", custom, msgs) == math.ceil((1 + text) * 2) + 7
    # Claude on Bedrock: Claude's rules from the model name, whatever the provider.
    bedrock = Price("bedrock/anthropic.claude-sonnet-4-5-v1:0", "bedrock", Decimal("3e-6"),
                    Decimal("1.5e-5"))
    direct = est.count_prompt("claude-sonnet-4-5", PRICES.get("claude-sonnet-4-5"), msgs)
    assert est.count_prompt(bedrock.model, bedrock, msgs) == direct


def test_unidentified_model_is_counted_by_the_request_shape() -> None:
    est = Estimator()
    proxy = Price("team-proxy-model", "other", Decimal("1e-6"), Decimal("2e-6"))
    msgs = [{"role": "user", "content": "What's the weather like in San Francisco?"}]
    openai_tool = {"type": "function", "function": {
        "name": WEATHER_ANTHROPIC["name"], "description": WEATHER_ANTHROPIC["description"],
        "parameters": WEATHER_ANTHROPIC["input_schema"]}}
    openai_shaped = est.count_prompt("team-proxy-model", proxy, msgs, [openai_tool])
    anthropic_shaped = est.count_prompt("team-proxy-model", proxy, msgs, [WEATHER_ANTHROPIC])
    # Anthropic-shaped: Claude's rules for an unknown version, so the largest
    # documented tool-use system prompt (675, Claude Opus 4.7) is included.
    assert anthropic_shaped >= 675 + openai_shaped - 60
    assert openai_shaped < 200


def test_response_format_schema_is_priced_and_json_mode_is_not() -> None:
    est = Estimator()
    msgs = [{"role": "user", "content": "Rate this title."}]
    schema_fmt = {"type": "json_schema", "json_schema": {"name": "Score", "schema": {
        "type": "object", "properties": {"score": {"type": "integer"}}}}}
    for model in ("gpt-4o-mini", "claude-sonnet-4-5"):
        price = PRICES.get(model)
        plain = est.count_prompt(model, price, msgs)
        assert est.count_prompt(model, price, msgs,
                                extra={"response_format": {"type": "json_object"}}) == plain
        assert est.count_prompt(model, price, msgs, extra={"response_format": schema_fmt}) > plain
    # Claude gets a JSON schema as a forced tool (litellm): the tool-use prompt.
    sonnet = PRICES.get("claude-sonnet-4-5")
    assert est.count_prompt("claude-sonnet-4-5", sonnet, msgs,
                            extra={"response_format": schema_fmt}) >= 588


def test_newer_claude_tokenizer_counts_more() -> None:
    est = Estimator()
    msgs = _history(2)
    old = est.count_prompt("claude-opus-4-6", PRICES.get("claude-opus-4-6"), msgs)
    new = est.count_prompt("claude-opus-4-7", PRICES.get("claude-opus-4-7"), msgs)
    assert new >= old * 1.3  # Anthropic: the 4.7 tokenizer yields up to 1.35x the tokens


def test_langchain_messages_count_like_dicts() -> None:
    from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage

    call = {"name": "get_current_weather", "args": {"location": "Paris"}, "id": "call_1"}
    objects = [SystemMessage("You are helpful."), HumanMessage("Weather in Paris?"),
               AIMessage("", tool_calls=[call]),
               ToolMessage('{"temperature": 14}', tool_call_id="call_1")]
    dicts = [{"role": "system", "content": "You are helpful."},
             {"role": "user", "content": "Weather in Paris?"},
             {"role": "assistant", "content": "", "tool_calls": [
                 {"id": "call_1", "type": "function", "function": {
                     "name": "get_current_weather", "arguments": '{"location":"Paris"}'}}]},
             {"role": "tool", "content": '{"temperature": 14}', "tool_call_id": "call_1"}]
    price = PRICES.get("gpt-4o")
    # Tool calls and results as harmony renders them (harmony_history_tokens).
    assert (Estimator().count_prompt("gpt-4o", price, objects)
            == Estimator().count_prompt("gpt-4o", price, dicts)
            == harmony_history_tokens({"model": "gpt-4o", "messages": dicts}))


def test_import_is_lazy_and_tiktoken_comes_from_litellms_bundle(tmp_path: Path) -> None:
    code = (
        "import os, sys\n"
        "import crew_budget, crew_budget.estimate\n"
        "assert 'tiktoken' not in sys.modules and 'litellm' not in sys.modules\n"
        "from crew_budget.tokens import count_function\n"
        "print(count_function('o200k_base')('hello world'))\n"
        "print(os.environ['TIKTOKEN_CACHE_DIR'])\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TIKTOKEN_CACHE_DIR"}
    # Any download attempt would go through this dead proxy and fail.
    env.update(HTTPS_PROXY="http://127.0.0.1:9", HTTP_PROXY="http://127.0.0.1:9")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True, timeout=60).stdout.split()
    assert out[0] == "2"
    assert Path(out[1]) == tokens.litellm_tokenizer_dir()
    assert (Path(out[1]) / "fb374d419588a4632f3f557e76b4b70aebbca790").is_file()  # o200k_base

    # A user's TIKTOKEN_CACHE_DIR is respected; without the file there and no
    # network, the estimate still works (1 token per 2 bytes, errs high).
    env["TIKTOKEN_CACHE_DIR"] = str(tmp_path)
    code = (
        "import os\n"
        "from decimal import Decimal\n"
        "from crew_budget.estimate import Estimator\n"
        "from crew_budget.pricing import Price\n"
        "p = Price('gpt-4o', 'openai', Decimal('1e-6'), Decimal('1e-6'))\n"
        "print(Estimator().count_prompt('gpt-4o', p, [{'role': 'user', 'content': 'x' * 100}]))\n"
        "print(os.environ['TIKTOKEN_CACHE_DIR'])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True, timeout=60).stdout.split()
    assert int(out[0]) >= 50
    assert out[1] == str(tmp_path)


def test_short_strings_are_remembered_and_long_ones_are_not() -> None:
    """The counter memoizes short strings (roles, names) only, bounded, and a
    remembered count is the tokenizer's count."""
    from crew_budget import tokens

    calls: list[str] = []

    def raw(text: str) -> int:
        calls.append(text)
        return len(text.split())

    count = tokens._with_short_memo(raw)
    assert count("assistant") == 1 and count("assistant") == 1
    long_text = "word " * 20
    assert count(long_text) == 20 and count(long_text) == 20
    assert calls == ["assistant", long_text, long_text]
    for i in range(tokens._SHORT_MEMO + 10):
        count(f"name {i}")
    assert count("name 1") == 2 and calls.count("name 1") == 1  # kept: bounded, not evicted
    last = f"name {tokens._SHORT_MEMO + 9}"
    count(last)
    assert calls.count(last) == 2  # past the bound: counted every time
