"""OpenAI-compatible hosts and OpenAI images: rules checked on inputs written here.

Each expected count is worked out from the public rule it cites (a chat
template's text counted with tiktoken in the test, a documented image
formula applied to a size read from the image's own header bytes), never
from the estimator. The development corpus is only used to measure the rules
(bench/README.md); nothing from it is in these tests.
"""

from __future__ import annotations

import base64
import json
import math
import struct
from typing import Any

from crew_budget.estimate import Estimator, compat, images
from tests.estimate.tiktoken_counts import cl100k, o200k, price

DATE_TOOL: dict[str, Any] = {"type": "function", "function": {
    "name": "get_date", "description": "Today's date",
    "parameters": {"type": "object", "properties": {}, "required": []}}}
CITY_TOOL: dict[str, Any] = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}


def _png(w: int, h: int) -> str:
    """A data URL whose PNG header (IHDR) says ``w`` x ``h``."""
    raw = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + struct.pack(">II", w, h)
    return "data:image/png;base64," + base64.b64encode(raw + b"\x00" * 16).decode()


def _image_message(url: str, detail: str | None = None) -> list[dict[str, Any]]:
    ref: dict[str, Any] = {"url": url}
    if detail is not None:
        ref["detail"] = detail
    return [{"role": "user", "content": [{"type": "image_url", "image_url": ref}]}]


# -- DeepSeek V4: its reference encoder's tool section ------------------------


def test_deepseek_v4_writes_tools_as_its_encoder_does() -> None:
    family = compat.family_of("deepseek-v4-flash")
    assert family is not None and family.fragment == "deepseek-v4"
    text = compat.tools_text(family, [DATE_TOOL["function"], CITY_TOOL["function"]])
    # encoding_dsv4: "\n\n" + "## Tools" section; each function object as
    # json.dumps (default spacing), one a line, under "### Available Tool
    # Schemas"; a closing instruction.
    schemas = (json.dumps(DATE_TOOL["function"]) + "\n" + json.dumps(CITY_TOOL["function"]))
    assert text.startswith("\n\n## Tools\n\nYou have access to a set of tools")
    assert ("### Available Tool Schemas\n\n" + schemas + "\n\nYou MUST strictly follow the above "
            "defined tool name and parameter schemas to invoke tool calls.\n") in text
    assert "<\uff5cDSML\uff5ctool_calls>" in text


def test_deepseek_v4_counts_o200k_with_its_turn_markers() -> None:
    est = Estimator()
    v4 = price("deepseek-v4-flash", "deepseek")
    msgs = [{"role": "user", "content": "What's the date?"}]
    # DeepSeek V3+'s 128k-vocabulary BPE is counted as o200k_base (x1.0);
    # no role names; framing: 3 a message (User, Assistant and think
    # markers), 1 for the BOS token.
    plain = o200k("What's the date?") + 3 + 1
    assert est.count_prompt("deepseek-v4-flash", v4, msgs) == plain
    # The tool section is counted as it is written, with no guessed constant.
    section = compat.tools_text(compat.family_of("deepseek-v4-flash"),  # type: ignore[arg-type]
                                [DATE_TOOL["function"]])
    assert est.count_prompt("deepseek-v4-flash", v4, msgs, [DATE_TOOL]) == plain + o200k(section)


# -- Claude through an OpenAI-compatible endpoint -----------------------------


def test_claude_with_openai_shaped_messages_counts_as_the_messages_api() -> None:
    """Databricks, Bedrock, litellm and Anthropic's own compat endpoint hoist the
    system message and turn tool calls/results into tool_use/tool_result blocks:
    the same request, written either way, is counted the same."""
    est = Estimator()
    claude = price("claude-3-7-sonnet-20250219", "anthropic")
    system = "Answer in one word."
    openai_shaped = [
        {"role": "system", "content": system},
        {"role": "user", "content": "What's the date?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_date", "arguments": "{\"tz\": \"UTC\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "2024-01-01"},
    ]
    native = [
        {"role": "user", "content": "What's the date?"},
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "call_1", "name": "get_date", "input": {"tz": "UTC"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "call_1", "content": "2024-01-01"}]},
    ]
    tools = [{"name": "get_date", "description": "Today's date",
              "input_schema": {"type": "object", "properties": {}, "required": []}}]
    assert (est.count_prompt("claude-3-7-sonnet-20250219", claude, openai_shaped, [DATE_TOOL])
            == est.count_prompt("claude-3-7-sonnet-20250219", claude, native, tools,
                                system=system))
    # Without tools too (the system prompt is +1, not a message's framing of 4).
    assert (est.count_prompt("claude-3-7-sonnet-20250219", claude, openai_shaped[:2])
            == est.count_prompt("claude-3-7-sonnet-20250219", claude, openai_shaped[1:2],
                                system=system))


# -- Mistral: structured outputs are decoding constraints -----------------------


def test_mistral_json_schema_is_not_prompt_text() -> None:
    est = Estimator()
    mistral = price("mistral-large-latest", "mistral")
    msgs = [{"role": "user", "content": "Title and author?"}]
    schema = {"type": "json_schema", "json_schema": {"name": "book", "schema": {
        "type": "object", "properties": {"title": {"type": "string"}}}}}
    plain = est.count_prompt("mistral-large-latest", mistral, msgs)
    # mistral-common encodes messages and tools only: the schema adds nothing.
    assert est.count_prompt("mistral-large-latest", mistral, msgs,
                            extra={"response_format": schema}) == plain
    # Llama's template has no such rule: the schema is counted there.
    llama = price("meta-llama/Llama-3.3-70B-Instruct", "together")
    assert (est.count_prompt("meta-llama/Llama-3.3-70B-Instruct", llama, msgs,
                             extra={"response_format": schema})
            > est.count_prompt("meta-llama/Llama-3.3-70B-Instruct", llama, msgs))


# -- images whose bytes are in the request ------------------------------------


def test_openai_images_sized_from_their_header_bytes() -> None:
    est = Estimator()
    gpt4o = price("gpt-4o", "openai")
    mini = price("gpt-4o-mini", "openai")
    gpt54 = price("gpt-5.4", "openai")
    framing = 3 + o200k("user") + 3  # cookbook: 3 a message + role, 3 to prime the reply
    # 60x30 PNG on gpt-4o: under 768 px, one 512 px tile: 85 + 170.
    assert est.count_prompt("gpt-4o", gpt4o, _image_message(_png(60, 30))) == 255 + framing
    # 1024x1024: scaled to 768x768, 2x2 tiles: 85 + 4 x 170 = 765 (the guide's example).
    assert est.count_prompt("gpt-4o", gpt4o,
                            _image_message(_png(1024, 1024), "high")) == 765 + framing
    # detail "low": the base, whatever the size.
    assert est.count_prompt("gpt-4o", gpt4o,
                            _image_message(_png(4096, 8192), "low")) == 85 + framing
    # gpt-4o-mini: 2833 base + 5667 a tile; a 1x1 PNG is one tile.
    assert est.count_prompt("gpt-4o-mini", mini, _image_message(_png(1, 1))) == 8500 + framing
    # gpt-5.4 (32 px patches x 1.2): 60x30 is 2 x 1 patches -> ceil(2.4) = 3.
    gpt5_framing = o200k("user") + 3 + 2  # harmony: 3 a message; reply primed with 2
    assert (est.count_prompt("gpt-5.4", gpt54, _image_message(_png(60, 30)))
            == 3 + gpt5_framing)
    # 1800x2400 on gpt-4.1-nano: 57 x 75 = 4275 patches > its 1536 budget ->
    # shrink (the guide's worked example gives 1452) -> ceil(1452 x 2.46).
    assert images.openai_policy("gpt-4.1-nano").tokens((1800, 2400)) == math.ceil(1452 * 2.46)


def test_linked_images_are_priced_as_openais_512px_rendition() -> None:
    # A URL the request cannot size: OpenAI's guide says every image is also
    # seen as a 512x512 low-resolution version; that size is assumed.
    assert images.UNKNOWN_SIZE == (512, 512)
    assert images.openai_policy("gpt-4o").tokens(None) == 85 + 170
    assert images.openai_policy("gpt-4.1-mini").tokens(None) == math.ceil(16 * 16 * 1.62)
    # Compatible hosts (Qwen-VL's 28 px merged patches): 19 x 19 + 3 delimiters.
    assert images.compat_policy("qwen2.5-vl-7b-instruct").tokens(None) == 19 * 19 + 3
    # Gemini on its compat endpoint: one 258-token tile.
    assert images.compat_policy("gemini-2.0-flash").tokens(None) == 258
    # Claude keeps its ceiling, 1,568 visual tokens + 3 delimiters (its own policy).
    assert images.anthropic_policy(False).tokens(None) == 1568 + 3


def test_deepseek_templates_write_no_role_names_and_no_call_ids() -> None:
    est = Estimator()
    v3 = price("deepseek/deepseek-chat-v3-0324", "openrouter")
    hello = [{"role": "user", "content": "Say hello!"}]
    # BOS, the User marker, "Say hello!", the Assistant marker: text + 2 + 1.
    assert (est.count_prompt("deepseek/deepseek-chat-v3-0324", v3, hello)
            == o200k("Say hello!") + 2 + 1)
    # R1 primes the reply with "<think>\n" as well: 2 more.
    r1 = price("deepseek/deepseek-r1", "openrouter")
    assert est.count_prompt("deepseek/deepseek-r1", r1, hello) == o200k("Say hello!") + 2 + 3

    def history(call_id: str) -> list[dict[str, Any]]:
        return [*hello,
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": call_id, "type": "function",
                     "function": {"name": "get_date", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": call_id, "content": "2024-01-01"}]

    # Call ids are not in the template: a long id costs what a short one does.
    assert (est.count_prompt("deepseek/deepseek-chat-v3-0324", v3, history("c1"))
            == est.count_prompt("deepseek/deepseek-chat-v3-0324", v3,
                                history("call_00_tz6Vq4aG59EtpFCVbpoY3635")))


def test_deepseek_v4_wraps_calls_and_results_as_its_encoder_does() -> None:
    est = Estimator()
    v4 = price("deepseek-v4-flash", "deepseek")
    dsml = "\uff5cDSML\uff5c"
    call = {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_date", "arguments": "{}"}}]}
    result = {"role": "tool", "tool_call_id": "call_1", "content": "2024-01-01"}
    # encoding_dsv4: "\n\n<DSML tool_calls>\n" ... "\n</DSML tool_calls>" around the
    # calls, <DSML invoke name="..."> ... </DSML invoke> around each; the name and
    # the arguments; 3 for the call; 3 a message.
    calls_text = f"\n\n<{dsml}tool_calls>\n\n</{dsml}tool_calls>"
    call_text = f'<{dsml}invoke name="">\n\n</{dsml}invoke>\n'
    expected_call = o200k(calls_text) + o200k(call_text) + o200k("get_date") + o200k("{}") + 3 + 3
    assert est.count_prompt("deepseek-v4-flash", v4, [call]) == expected_call + 1
    # A result: <tool_result>{content}</tool_result> in a user turn.
    expected_result = o200k("<tool_result></tool_result>") + o200k("2024-01-01") + 3
    assert est.count_prompt("deepseek-v4-flash", v4, [result]) == expected_result + 1


def test_a_system_message_takes_the_templates_default_system_block() -> None:
    est = Estimator()
    qwen = price("Qwen/Qwen2.5-7B-Instruct", "together")
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}]
    # Qwen2.5: the request's system message replaces "You are Qwen, created by
    # Alibaba Cloud..." and its framing: ChatML 4 + role a message, 3 to prime.
    text = cl100k("system") + cl100k("Be brief.") + cl100k("user") + cl100k("Hello there")
    assert (est.count_prompt("Qwen/Qwen2.5-7B-Instruct", qwen, msgs)
            == math.ceil(text * 1.05 - 1e-9) + 4 * 2 + 3)
    # Llama 3.x: the "Cutting Knowledge Date" header stays (it opens the system
    # block either way); only the default block's own framing (5) goes.
    llama = price("meta-llama/Llama-3.3-70B-Instruct", "together")
    date = math.ceil(cl100k("Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n")
                     * 1.05 - 1e-9)
    assert (est.count_prompt("meta-llama/Llama-3.3-70B-Instruct", llama, msgs)
            == math.ceil(text * 1.05 - 1e-9) + 4 * 2 + 4 + date)
    assert (est.count_prompt("meta-llama/Llama-3.3-70B-Instruct", llama, msgs[1:])
            == math.ceil((cl100k("user") + cl100k("Hello there")) * 1.05 - 1e-9) + 4 + 9 + date)


def test_gpt_oss_bills_its_harmony_system_message_and_typescript_tools() -> None:
    est = Estimator()
    oss = price("openai/gpt-oss-120b", "groq")
    msgs = [{"role": "user", "content": "Hello"}]
    # openai/gpt-oss-120b chat_template.jinja: a system message the template
    # writes itself (identity, knowledge cutoff, date, reasoning effort,
    # channels) in <|start|>system<|message|>...<|end|> (4 with the role);
    # each message 3 + its role; the reply primed with <|start|>assistant (2).
    system = ("You are ChatGPT, a large language model trained by OpenAI.\n"
              "Knowledge cutoff: 2024-06\nCurrent date: 2025-06-28\n\n"
              "Reasoning: medium\n\n# Valid channels: analysis, commentary, final. "
              "Channel must be included for every message.")
    plain = o200k(system) + 4 + 2 + 3 + o200k("user") + o200k("Hello")
    assert est.count_prompt("openai/gpt-oss-120b", oss, msgs) == plain
    # Tools: harmony's TypeScript namespace, as the OpenAI models read it.
    from crew_budget.estimate.openai import render_functions

    tools_text = ("\nCalls to these tools must go to the commentary channel: 'functions'."
                  "# Tools\n\n## functions\n\n" + render_functions([CITY_TOOL["function"]]))
    assert "type get_weather = (_: {" in tools_text
    assert (est.count_prompt("openai/gpt-oss-120b", oss, msgs, [CITY_TOOL])
            == plain + o200k(tools_text))
