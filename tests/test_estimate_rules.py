"""The estimator's provider rules, each checked on inputs written here.

Every expected count is derived from the public rule it cites (a rendering,
counted with tiktoken in the test, or a documented constant), not from the
estimator. The development corpus (real recorded traffic) is used to *measure*
the rules (bench/README.md); nothing from it is in these tests.
"""

from __future__ import annotations

import base64
import json
import math
import zlib
from typing import Any

from crew_budget.estimate import Estimator
from tests.estimate.tiktoken_counts import cl100k, o200k, price

GPT4O = price("gpt-4o", "openai")
GPT5 = price("gpt-5.4", "openai")
SONNET4 = price("claude-sonnet-4-0", "anthropic")

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}
USER = {"role": "user", "content": "Weather in Oslo and Bergen?"}


def _call(call_id: str, city: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function",
            "function": {"name": "get_weather", "arguments": json.dumps({"city": city})}}


def _openai_message(role: str, content: str) -> int:
    """Cookbook: 3 framing tokens + role + content."""
    return 3 + o200k(role) + o200k(content)


def _namespace() -> str:
    return ("namespace functions {\n\n// Weather of a city\ntype get_weather = (_: {\n"
            "city: string,\n}) => any;\n\n} // namespace functions")


# -- OpenAI: tool calls and results (harmony) ---------------------------------


def _harmony_call(city: str) -> int:
    """Harmony renders a call as ``assistant to=functions.NAME`` + its JSON
    arguments and the result's author as ``functions.NAME to=assistant``; with
    chat-completions framing that is 3 + those texts - 1 (openai.py)."""
    args = json.dumps({"city": city})
    return (2 + o200k("assistant to=functions.get_weather")
            + o200k(args) + o200k("functions.get_weather to=assistant"))


def test_single_tool_call_and_result_follow_harmony() -> None:
    messages = [USER,
                {"role": "assistant", "content": None, "tool_calls": [_call("call_1", "Oslo")]},
                {"role": "tool", "tool_call_id": "call_1", "content": "7 C, rain"}]
    # The assistant message holds only the call: no framing of its own; the
    # result: 3 + its content (no "tool" role, no id); + 3 reply priming.
    expected = _openai_message("user", USER["content"]) + _harmony_call("Oslo")
    expected += 3 + o200k("7 C, rain") + 3
    assert Estimator().count_prompt("gpt-4o", GPT4O, messages) == expected


def test_result_name_is_not_billed() -> None:
    call = [USER, {"role": "assistant", "content": None, "tool_calls": [_call("a", "Oslo")]}]
    plain = {"role": "tool", "tool_call_id": "a", "content": "7 C"}
    named = {**plain, "name": "get_weather"}
    # The result's author (functions.get_weather) is counted with the call.
    assert (Estimator().count_prompt("gpt-4o", GPT4O, [*call, named])
            == Estimator().count_prompt("gpt-4o", GPT4O, [*call, plain]))


def test_call_ids_are_not_billed() -> None:
    def count(call_id: str) -> int:
        messages = [USER,
                    {"role": "assistant", "content": None, "tool_calls": [_call(call_id, "Oslo")]},
                    {"role": "tool", "tool_call_id": call_id, "content": "7 C"}]
        return Estimator().count_prompt("gpt-4o", GPT4O, messages)

    # A 4-token id and a ~15-token id cost the same: harmony renders no ids.
    assert count("c1") == count("call_Xq81LmPzT0aaVbQw92KdLmZZ")


def test_parallel_calls_are_one_multi_tool_use_call() -> None:
    calls = [_call("a", "Oslo"), _call("b", "Bergen")]
    messages = [USER, {"role": "assistant", "content": "", "tool_calls": calls},
                {"role": "tool", "tool_call_id": "a", "content": "7 C"},
                {"role": "tool", "tool_call_id": "b", "content": "9 C"}]
    # openai.py: one call to the multi_tool_use.parallel wrapper, with its
    # compact JSON (the spaced arguments parsed and written compactly), and
    # each result addressed " to=assistant".
    wrapper = ('{"tool_uses":[{"recipient_name":"functions.get_weather","parameters":'
               '{"city":"Oslo"}},{"recipient_name":"functions.get_weather","parameters":'
               '{"city":"Bergen"}}]}')
    expected = _openai_message("user", USER["content"])
    expected += 3 + o200k("assistant to=multi_tool_use.parallel") + o200k(wrapper)
    expected += 3 + o200k("7 C") + o200k(" to=assistant")
    expected += 3 + o200k("9 C") + o200k(" to=assistant") + 3
    assert Estimator().count_prompt("gpt-4o", GPT4O, messages) == expected


def test_assistant_text_with_a_call_keeps_its_framing() -> None:
    messages = [USER, {"role": "assistant", "content": "Checking.",
                       "tool_calls": [_call("a", "Oslo")]},
                {"role": "tool", "tool_call_id": "a", "content": "7 C"}]
    expected = _openai_message("user", USER["content"]) + _openai_message("assistant", "Checking.")
    expected += _harmony_call("Oslo") + 3 + o200k("7 C") + 3
    assert Estimator().count_prompt("gpt-4o", GPT4O, messages) == expected


def test_gpt5_answers_carry_the_final_channel() -> None:
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                {"role": "user", "content": "Bye"}]
    # Harmony: <|start|>assistant<|channel|>final<|message|>...<|end|> is 2
    # tokens more than the cookbook's assistant message; reply primed with 2.
    cookbook = sum(3 + o200k(m["role"]) + o200k(m["content"]) for m in messages) + 3
    assert Estimator().count_prompt("gpt-5.4", GPT5, messages) == cookbook + 2 - 1


def test_gpt5_tools_add_the_preamble_and_harmony_channels() -> None:
    est = Estimator()
    plain = est.count_prompt("gpt-4o", GPT4O, [USER], [WEATHER])
    # Same o200k encoding and framing, but harmony primes the reply with
    # "<|start|>assistant" (2 tokens, not 3) and gpt-5 adds its 85-token
    # tool preamble.
    assert est.count_prompt("gpt-5.4", GPT5, [USER], [WEATHER]) == plain - 1 + 85
    messages = [USER,
                {"role": "assistant", "content": None, "tool_calls": [_call("a", "Oslo")]},
                {"role": "tool", "tool_call_id": "a", "content": "7 C"}]
    # Harmony's call carries "<|channel|>commentary <|constrain|>json" (2 special
    # tokens, which split " " and "json" apart); a chat-completions tool result
    # names no channel, so it renders none.
    channels = 2 + o200k("commentary") + o200k(" ") + o200k("json")
    assert (est.count_prompt("gpt-5.4", GPT5, messages, [WEATHER])
            == est.count_prompt("gpt-4o", GPT4O, messages, [WEATHER]) - 1 + 85 + channels)


# -- OpenAI: tool schemas -----------------------------------------------------


def _tools_tokens(namespace: str) -> int:
    """hmarr/openai-chat-tokens: the namespace text + 9."""
    return o200k(namespace) + 9


def test_property_title_and_default_are_rendered() -> None:
    tool = {"type": "function", "function": {
        "name": "set_unit", "description": "Set the unit",
        "parameters": {"type": "object", "properties": {
            "unit": {"type": "string", "title": "Unit", "enum": ["c", "f"], "default": "c"},
            "digits": {"type": "integer", "default": 1}}}}}
    # Harmony: a title is a "// <title>" comment; a default is appended as
    # "// default: <value>" (an enum's bare, other values as JSON).
    namespace = ("namespace functions {\n\n// Set the unit\ntype set_unit = (_: {\n"
                 "// Unit\nunit?: \"c\" | \"f\", // default: c\n"
                 "digits?: number, // default: 1\n}) => any;\n\n} // namespace functions")
    expected = _openai_message("user", "Hi") + _tools_tokens(namespace) + 3
    assert Estimator().count_prompt("gpt-4o", GPT4O, [{"role": "user", "content": "Hi"}],
                                    [tool]) == expected


def test_tool_choice_required_costs_what_auto_costs() -> None:
    est = Estimator()
    auto = est.count_prompt("gpt-4o", GPT4O, [USER], [WEATHER], extra={"tool_choice": "auto"})
    assert auto == _openai_message("user", USER["content"]) + _tools_tokens(_namespace()) + 3
    assert est.count_prompt("gpt-4o", GPT4O, [USER], [WEATHER],
                            extra={"tool_choice": "required"}) == auto


# -- Anthropic ----------------------------------------------------------------


def _claude_text(text: str, factor: float = 1.13) -> int:
    return math.ceil(cl100k(text) * factor - 1e-9)


def test_claude_text_is_cl100k_times_the_generation_factor() -> None:
    text = "Summarise the quarterly report in three bullet points, please."
    msg = [{"role": "user", "content": text}]
    # 4 framing per message + 3 reply priming.
    assert Estimator().count_prompt("claude-sonnet-4-0", SONNET4, msg) == _claude_text(text) + 7
    # Opus 4.7's new tokenizer: up to 1.35x the tokens of earlier Claudes.
    opus47 = price("claude-opus-4-7", "anthropic")
    assert (Estimator().count_prompt("claude-opus-4-7", opus47, msg)
            == _claude_text(text, 1.13 * 1.35) + 7)


def _claude_tool_definitions(tool: dict[str, Any]) -> str:
    fn = tool["function"]
    body = {"description": fn["description"], "name": fn["name"],
            "parameters": fn["parameters"]}
    return "<function>" + json.dumps(body) + "</function>\n"


def test_claude_tools_add_the_documented_prompt_and_their_json() -> None:
    msg = [{"role": "user", "content": "Weather in Oslo?"}]
    definitions = _claude_tool_definitions(WEATHER) + "<functions>\n</functions>\n"
    base = cl100k("Weather in Oslo?") + cl100k(definitions)
    # Anthropic's tool-use pricing table (current version), Claude Sonnet 4:
    # 313 tokens for tool_choice auto/none, 315 for any/tool.
    est = Estimator()
    auto = est.count_prompt("claude-sonnet-4-0", SONNET4, msg, [WEATHER])
    assert auto == math.ceil(base * 1.13 - 1e-9) + 7 + 313
    forced = est.count_prompt("claude-sonnet-4-0", SONNET4, msg, [WEATHER],
                              extra={"tool_choice": {"type": "any"}})
    assert forced == auto - 313 + 315


def test_tool_use_and_result_blocks_render_as_function_calls() -> None:
    use = {"type": "tool_use", "id": "toolu_1", "name": "get_weather",
           "input": {"city": "Oslo", "days": 2}}
    result = {"type": "tool_result", "tool_use_id": "toolu_1", "content": "7 C, rain"}
    messages = [{"role": "user", "content": "Weather?"},
                {"role": "assistant", "content": [use]},
                {"role": "user", "content": [result]}]
    rendered = ('<function_calls>\n<invoke name="get_weather">\n'
                '<parameter name="city">Oslo</parameter>\n<parameter name="days">2</parameter>\n'
                "</invoke>\n</function_calls>\n<function_results>\n<result>\n"
                "<tool_name>get_weather</tool_name>\n</result>\n</function_results>\n")
    text = (cl100k("Weather?") + cl100k(rendered) + cl100k("7 C, rain")
            + cl100k("<stdout>\n\n</stdout>\n"))
    assert (Estimator().count_prompt("claude-sonnet-4-0", SONNET4, messages)
            == math.ceil(text * 1.13 - 1e-9) + 3 * 4 + 3)


def test_earlier_thinking_is_not_billed_but_the_tool_turns_is() -> None:
    est = Estimator()
    thought = {"type": "thinking", "thinking": "Let me think about this at length. " * 20,
               "signature": "sig"}
    answer = {"type": "text", "text": "Paris."}
    with_thinking = [{"role": "user", "content": "Capital of France?"},
                     {"role": "assistant", "content": [thought, answer]},
                     {"role": "user", "content": "And of Italy?"}]
    without = [{"role": "user", "content": "Capital of France?"},
               {"role": "assistant", "content": [answer]},
               {"role": "user", "content": "And of Italy?"}]
    # Anthropic "Extended thinking": earlier turns' thinking is stripped.
    assert (est.count_prompt("claude-sonnet-4-0", SONNET4, with_thinking)
            == est.count_prompt("claude-sonnet-4-0", SONNET4, without))
    use = {"type": "tool_use", "id": "t", "name": "lookup", "input": {"q": "Italy"}}
    loop = [{"role": "user", "content": "Capital of Italy?"},
            {"role": "assistant", "content": [thought, use]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t",
                                          "content": "Rome"}]}]
    bare = [loop[0], {"role": "assistant", "content": [use]}, loop[2]]
    # ...except in the tool-use loop, where it is sent back and billed.
    assert (est.count_prompt("claude-sonnet-4-0", SONNET4, loop)
            - est.count_prompt("claude-sonnet-4-0", SONNET4, bare)) >= cl100k(thought["thinking"])


def test_claude_structured_output_counts_its_schema_and_format_prompt() -> None:
    schema = {"type": "object", "properties": {"name": {"type": "string"}},
              "required": ["name"], "additionalProperties": False}
    msg = [{"role": "user", "content": "Name a dog."}]
    extra = {"output_config": {"format": {"type": "json_schema", "schema": schema}}}
    text = cl100k("Name a dog.") + cl100k(json.dumps(schema, indent=2))
    # Pretty-printed schema JSON x text factor + 100 of format instructions
    # (estimate/anthropic.py STRUCTURED_OUTPUT_PROMPT); no tool prompt.
    assert (Estimator().count_prompt("claude-sonnet-4-5", price("claude-sonnet-4-5", "anthropic"),
                                     msg, extra=extra)
            == math.ceil(text * 1.13 - 1e-9) + 7 + 100)


def _pdf(content: bytes, *, compress: bool) -> str:
    from tests.estimate.pdfs import HELVETICA, pdf_file, stream

    body = zlib.compress(content) if compress else content
    filt = b"/Filter /FlateDecode " if compress else b""
    pdf = pdf_file([b"<< /Type /Catalog /Pages 2 0 R >>",
                    b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
                    b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents 4 0 R "
                    b"/Resources << /Font << /F1 5 0 R >> >> >>",
                    stream(body, filt), HELVETICA])
    return base64.b64encode(pdf).decode()


def test_pdf_page_bills_its_image_and_its_text() -> None:
    sonnet45 = price("claude-sonnet-4-5", "anthropic")
    shown = b"BT /F1 12 Tf 72 720 Td (Quarterly revenue grew by twelve percent.) Tj ET"
    # The page image: Claude's ceiling, 1,568 visual tokens + 3 delimiters.
    page = 1568 + 3
    text = math.ceil(cl100k("Quarterly revenue grew by twelve percent.") * 1.13 - 1e-9)
    for compress in (False, True):
        doc = {"type": "document", "source": {"type": "base64", "media_type": "application/pdf",
                                              "data": _pdf(shown, compress=compress)}}
        msg = [{"role": "user", "content": [doc]}]
        assert Estimator().count_prompt("claude-sonnet-4-5", sonnet45, msg) == text + page + 7


# -- OpenAI-compatible hosts: chat templates ----------------------------------


def test_qwen25_default_system_message_is_billed() -> None:
    qwen = price("Qwen/Qwen2.5-7B-Instruct", "together")
    msg = [{"role": "user", "content": "Hello there"}]
    # Qwen2.5's template adds "You are Qwen, created by Alibaba Cloud. You are
    # a helpful assistant." as a system message; ChatML framing 4 + role a
    # message, 3 to prime the reply, 5 for the default system message's own.
    default = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
    expected = (math.ceil((cl100k("user") + cl100k("Hello there")) * 1.05) + 4
                + 8 + math.ceil(cl100k(default) * 1.05))
    assert Estimator().count_prompt("Qwen/Qwen2.5-7B-Instruct", qwen, msg) == expected


def test_deepseek_tools_use_its_template_sections() -> None:
    deepseek = price("deepseek-chat", "deepseek")
    est = Estimator()
    msg = [{"role": "user", "content": "Weather?"}]
    without = est.count_prompt("deepseek-chat", deepseek, msg)
    section = ("\n### get_weather\nDescription: Weather of a city\n\nParameters: "
               + json.dumps(WEATHER["function"]["parameters"]) + "\n")
    with_tools = est.count_prompt("deepseek-chat", deepseek, msg, [WEATHER])
    # DeepSeek V3.1's template: "## Tools" header, one section a tool, then
    # ~100 tokens of fixed format instructions.
    assert with_tools - without >= cl100k("## Tools\nYou have access to the following tools:\n"
                                          + section) + 100


def test_gemini_compat_bills_message_text_only() -> None:
    gemini = price("gemini-2.0-flash", "gemini")
    msg = [{"role": "user", "content": "Say hello!"}]
    text = math.ceil(o200k("user") * 1.15 + o200k("Say hello!") * 1.15 - 1e-9)
    est = Estimator()
    # The compat endpoint reports the text alone (no framing), and no tool text.
    assert est.count_prompt("gemini-2.0-flash", gemini, msg) <= text + 1
    assert (est.count_prompt("gemini-2.0-flash", gemini, msg, [WEATHER])
            == est.count_prompt("gemini-2.0-flash", gemini, msg))


def test_unknown_template_tools_are_spaced_json_plus_instructions() -> None:
    grok = price("grok-2", "xai")
    est = Estimator()
    msg = [{"role": "user", "content": "Weather?"}]
    # No public template: Hugging Face templates write tools with Jinja's
    # ``tojson`` (json.dumps spacing) after some instructions (60 assumed);
    # grok's text is cl100k_base x 1.15.
    definition = json.dumps({"type": "function", "function": WEATHER["function"]})
    assert (est.count_prompt("grok-2", grok, msg, [WEATHER])
            - est.count_prompt("grok-2", grok, msg)) in (
        math.ceil(cl100k(definition) * 1.15) + 60 + d for d in (-1, 0, 1))


def test_small_claude_image_bills_whole_28px_patches() -> None:
    from crew_budget.estimate import images

    # 100x100: w*h/750 says 14; whole 28 px patches 4*4 = 16; + 3 delimiters.
    assert images.anthropic_policy(False).tokens((100, 100)) == 16 + 3
    # 1092x1092 (Anthropic's size table, "~1590" by w*h/750): 39 x 39 patches.
    assert images.anthropic_policy(False).tokens((1092, 1092)) == 39 * 39 + 3


def test_claude_text_document_is_wrapped_with_its_title() -> None:
    doc = {"type": "document", "title": "notes.txt",
           "source": {"type": "text", "media_type": "text/plain", "data": "Buy milk.\nCall Ann."}}
    msg = [{"role": "user", "content": [doc]}]
    # Anthropic's long-context structure: <document>, <source>, <document_content>.
    wrapped = ("<document>\n<source>notes.txt</source>\n<document_content>\n"
               "Buy milk.\nCall Ann.\n</document_content>\n</document>\n")
    assert (Estimator().count_prompt("claude-sonnet-4-0", SONNET4, msg)
            == math.ceil(cl100k(wrapped) * 1.13 - 1e-9) + 7)
