"""OpenAI rules of ``estimate/openai.py``, each on an input written here.

Every expected count is worked out by hand from the public rule it cites:
the text the rule says the model sees is written out literally below and
counted with tiktoken (``o200k_base``), plus the documented framing:

- the OpenAI cookbook's chat framing (3 tokens a message + its role, 3 to
  prime the reply; harmony models prime with 2: ``<|start|>assistant``),
- tool definitions: the TypeScript namespace of hmarr/openai-chat-tokens
  (``src/functions.ts``) + 9,
- harmony's ``# Response Formats`` section (openai/harmony docs/format.md),
  and its call header ``<|channel|>commentary <|constrain|>json``.

None of these numbers comes from running the estimator, and nothing in this
file comes from the development corpus.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from crew_budget.estimate import Estimator
from crew_budget.pricing import Price
from tests.estimate.tiktoken_counts import o200k


def price(model: str) -> Price:
    return Price(model, "openai", Decimal("1e-6"), Decimal("2e-6"))


GPT4O = price("gpt-4o")
GPT5 = price("gpt-5.4")
USER = {"role": "user", "content": "Plan my week, please."}
# Cookbook: one user message (3 + role + content) and the reply priming (3).
USER_ONLY_GPT4O = 3 + o200k("user") + o200k(USER["content"]) + 3
TOOLS_FIXED = 9  # hmarr/openai-chat-tokens: the namespace's text + 9


def count(model: str, messages: list[Any], tools: list[Any] | None = None,
          **extra: Any) -> int:
    prices = {"gpt-4o": GPT4O, "gpt-5.4": GPT5}
    return Estimator().count_prompt(model, prices[model], messages, tools, extra=extra)


# -- function definitions ------------------------------------------------------


def test_a_many_line_function_description_is_one_comment() -> None:
    description = "Plans a week.\n\nRules:\n- weekdays first\n- no meetings on Friday"
    tool = {"type": "function", "function": {
        "name": "plan", "description": description,
        "parameters": {"type": "object",
                       "properties": {"days": {"type": "integer",
                                               "description": "How many\ndays"}},
                       "required": ["days"]}}}
    # hmarr/openai-chat-tokens: lines.push(`// ${f.description}`): the text
    # keeps its newlines, with "// " once, not on each line; the same for a
    # property's description.
    rendered = ("namespace functions {\n\n"
                "// Plans a week.\n\nRules:\n- weekdays first\n- no meetings on Friday\n"
                "type plan = (_: {\n"
                "// How many\ndays\n"
                "days: number,\n"
                "}) => any;\n\n"
                "} // namespace functions")
    assert o200k(rendered) == 42  # tiktoken's count of the text above, pinned
    assert count("gpt-4o", [USER], [tool]) == USER_ONLY_GPT4O + 42 + TOOLS_FIXED


def test_the_parameters_root_title_is_a_comment_line() -> None:
    # pydantic's model_json_schema() gives the parameters a root "title" and
    # each property one. Property titles are a "// Title" line (harmony's
    # renderer); the root title one more "// FuncModel" line above the type.
    params = {"title": "PlusArgs", "type": "object",
              "properties": {"a": {"title": "A", "type": "integer"},
                             "b": {"title": "B", "type": "integer"}},
              "required": ["a", "b"]}
    tool = {"type": "function", "function": {"name": "plus", "description": "Adds.",
                                             "parameters": params}}
    rendered = ("namespace functions {\n\n// Adds.\n// PlusArgs\ntype plus = (_: {\n"
                "// A\na: number,\n// B\nb: number,\n}) => any;\n\n} // namespace functions")
    assert o200k(rendered) == 34
    assert count("gpt-4o", [USER], [tool]) == USER_ONLY_GPT4O + 34 + TOOLS_FIXED


# -- response_format json_schema -------------------------------------------------

BOOK_FORMAT = {"type": "json_schema", "json_schema": {
    "name": "Book", "strict": True,
    "schema": {"title": "Book", "type": "object",
               "properties": {"title": {"title": "Title", "type": "string"},
                              "pages": {"title": "Pages", "type": "integer",
                                        "description": "Page count"}},
               "required": ["title", "pages"], "additionalProperties": False}}}
# Harmony's "# Response Formats\n\n## {name}\n\n{schema}", the schema written
# the way harmony writes a function's parameters (a "// Title" line per
# titled property, descriptions as comments), in braces (openai.py).
BOOK_SECTION = ("# Response Formats\n\n## Book\n\n{\n"
                "// Title\ntitle: string,\n"
                "// Pages\n// Page count\npages: number,\n}")
FORMAT_PROMPT, FORMAT_PROMPT_HARMONY, FRAMING = 27, 20, 4  # openai.py, measured


def test_json_schema_format_is_its_typescript_section() -> None:
    assert o200k(BOOK_SECTION) == 25  # tiktoken's count of the text above, pinned
    # No system message to join: the section is a message of its own (3 + role).
    assert (count("gpt-4o", [USER], response_format=BOOK_FORMAT)
            == USER_ONLY_GPT4O + 25 + FORMAT_PROMPT + FRAMING)
    # With one, it joins it: no framing of its own.
    system = {"role": "system", "content": "Be brief."}
    with_system = USER_ONLY_GPT4O + 3 + o200k("system") + o200k("Be brief.")
    assert (count("gpt-4o", [system, USER], response_format=BOOK_FORMAT)
            == with_system + 25 + FORMAT_PROMPT)
    # gpt-5: harmony primes the reply with 2 tokens; its own measured prompt.
    assert (count("gpt-5.4", [USER], response_format=BOOK_FORMAT)
            == USER_ONLY_GPT4O - 1 + 25 + FORMAT_PROMPT_HARMONY + FRAMING)


def test_a_format_description_is_a_comment_line() -> None:
    described = {"type": "json_schema", "json_schema": {
        **BOOK_FORMAT["json_schema"], "description": "One book"}}
    section = BOOK_SECTION.replace("## Book\n\n", "## Book\n\n// One book\n")
    assert o200k(section) - o200k(BOOK_SECTION) == 4
    assert (count("gpt-4o", [USER], response_format=described)
            == count("gpt-4o", [USER], response_format=BOOK_FORMAT) + 4)


def test_earlier_structured_answers_carry_the_constrain_marker() -> None:
    answer = {"role": "assistant", "content": '{"title":"Dune","pages":412}'}
    messages = [USER, answer, {"role": "user", "content": "Another one."}]
    cookbook = (3 + o200k("user") + o200k(USER["content"])
                + 3 + o200k("assistant") + o200k(answer["content"])
                + 3 + o200k("user") + o200k("Another one.") + 3)
    # `` <|constrain|>json`` in the answer's header (harmony): " ", the
    # special token and "json", 3 tokens.
    assert o200k(" ") + 1 + o200k("json") == 3
    assert (count("gpt-4o", messages, response_format=BOOK_FORMAT)
            == cookbook + 25 + FORMAT_PROMPT + FRAMING + 3)
    # Without a schema format an answer has no such marker.
    assert count("gpt-4o", messages) == cookbook


def test_nested_models_behind_refs_are_counted_inline() -> None:
    # pydantic puts a nested model in "$defs" and points at it with "$ref";
    # the section counts it where it is used (openai.py: a ref left as "any"
    # would drop its fields, and an over-count is the safe side). A nested
    # object's properties are indented by 2, its brace at the outer indent
    # (the nested-object case of hmarr/openai-chat-tokens).
    order = {"type": "json_schema", "json_schema": {"name": "Order", "schema": {
        "$defs": {"Item": {"title": "Item", "type": "object",
                           "properties": {"sku": {"title": "Sku", "type": "string"}},
                           "required": ["sku"]}},
        "type": "object",
        "properties": {"items": {"title": "Items", "type": "array",
                                 "items": {"$ref": "#/$defs/Item"}}},
        "required": ["items"]}}}
    section = ("# Response Formats\n\n## Order\n\n{\n// Items\nitems: {\n"
               "  // Sku\n  sku: string,\n}[],\n}")
    assert o200k(section) == 26  # tiktoken's count of the text above, pinned
    assert (count("gpt-4o", [USER], response_format=order)
            == USER_ONLY_GPT4O + 26 + FORMAT_PROMPT + FRAMING)


def test_json_object_mode_adds_no_section() -> None:
    assert count("gpt-4o", [USER], response_format={"type": "json_object"}) == USER_ONLY_GPT4O


# -- gpt-5: harmony channels on tool calls ---------------------------------------


def test_gpt5_call_has_a_channel_and_its_result_has_none() -> None:
    tool = {"type": "function", "function": {
        "name": "get_day", "description": "Today's weekday",
        "parameters": {"type": "object", "properties": {}}}}
    call = {"id": "c1", "type": "function",
            "function": {"name": "get_day", "arguments": "{}"}}
    messages = [USER, {"role": "assistant", "content": None, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "c1", "content": "Monday"}]
    with_call = count("gpt-5.4", messages, [tool])
    without = count("gpt-5.4", [USER], [tool])
    # Harmony: <|start|>assistant<|channel|>commentary to=functions.get_day
    #   <|constrain|>json<|message|>{}<|call|>  and
    # <|start|>functions.get_day to=assistant<|message|>Monday<|end|>
    # (a chat-completions result names no channel). In chat-completions
    # framing (openai.py): 3 + "assistant to=functions.NAME" + arguments +
    # "functions.NAME to=assistant" - 1 for the call, then the channel's and
    # constrain's 2 special tokens with "commentary", " " and "json"; the
    # result message is 3 + its content (its author is the function).
    call_tokens = (3 + o200k("assistant to=functions.get_day") + o200k("{}")
                   + o200k("functions.get_day to=assistant") - 1
                   + 2 + o200k("commentary") + o200k(" ") + o200k("json"))
    result_tokens = 3 + o200k("Monday")
    assert call_tokens == 21
    assert with_call - without == call_tokens + result_tokens


def test_a_forced_function_costs_its_name_on_gpt4o_and_nothing_on_harmony() -> None:
    tool = {"type": "function", "function": {
        "name": "get_day", "description": "Today's weekday",
        "parameters": {"type": "object", "properties": {}}}}
    forced = {"type": "function", "function": {"name": "get_day"}}
    # gpt-4o: the name + 7 (measured on recorded calls, openai.py).
    assert (count("gpt-4o", [USER], [tool], tool_choice=forced)
            == count("gpt-4o", [USER], [tool]) + 7 + o200k("get_day"))
    # Harmony's prompt has no place for a tool choice: gpt-5 bills what auto does.
    assert (count("gpt-5.4", [USER], [tool], tool_choice=forced)
            == count("gpt-5.4", [USER], [tool], tool_choice="auto")
            == count("gpt-5.4", [USER], [tool]))


def test_one_estimator_keeps_each_models_format_prompt() -> None:
    # The format's count is cached per model scheme (whose key includes the
    # format prompt): an o-series model, which speaks harmony, gets its own
    # 20-token prompt after gpt-4o's 27 was counted and cached.
    est = Estimator()
    o3 = Price("o3-mini", "openai", Decimal("1e-6"), Decimal("2e-6"))
    gpt4o = est.count_prompt("gpt-4o", GPT4O, [USER], extra={"response_format": BOOK_FORMAT})
    o3_count = est.count_prompt("o3-mini", o3, [USER], extra={"response_format": BOOK_FORMAT})
    # Both: the user message and the same 25-token section with its framing;
    # gpt-4o primes with 3 and adds 27, o3-mini primes with 2 and adds 20.
    assert gpt4o == USER_ONLY_GPT4O + 25 + FORMAT_PROMPT + FRAMING
    assert o3_count == USER_ONLY_GPT4O - 1 + 25 + FORMAT_PROMPT_HARMONY + FRAMING


def test_gpt5_bills_a_system_prompt_without_its_surrounding_whitespace() -> None:
    # Harmony models take the system message as the developer's instructions;
    # gpt-5 bills it trimmed (openai.py), gpt-4o bills every character.
    indented = "\n        Be brief.\n        "
    system = {"role": "system", "content": indented}
    trimmed_tokens = o200k("Be brief.")
    assert o200k(indented) - trimmed_tokens == 3  # the whitespace around it
    cookbook_user = 3 + o200k("user") + o200k(USER["content"])
    assert (count("gpt-5.4", [system, USER])
            == 3 + o200k("system") + trimmed_tokens + cookbook_user + 2)
    assert (count("gpt-4o", [system, USER])
            == 3 + o200k("system") + o200k(indented) + cookbook_user + 3)
    # A user message keeps its whitespace on gpt-5 too.
    spaced_user = {"role": "user", "content": "\n  Hi  \n"}
    assert count("gpt-5.4", [spaced_user]) == 3 + o200k("user") + o200k("\n  Hi  \n") + 2


# -- parallel calls: the multi_tool_use.parallel wrapper ----------------------


PARALLEL_TOOL = {"type": "function", "function": {
    "name": "get_day", "description": "Weekday of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}


def _parallel_messages(arguments: list[str]) -> list[Any]:
    calls = [{"id": f"c{i}", "type": "function",
              "function": {"name": "get_day", "arguments": args}}
             for i, args in enumerate(arguments)]
    results = [{"role": "tool", "tool_call_id": f"c{i}", "content": day}
               for i, day in enumerate(["Monday", "Tuesday", "Friday"][:len(arguments)])]
    return [USER, {"role": "assistant", "content": None, "tool_calls": calls}, *results]


def test_parallel_calls_are_one_wrapper_call_and_addressed_results() -> None:
    # openai.py, from the OpenAI forum's multi_tool_use.parallel threads: the
    # model emits parallel calls as one call to the wrapper, whose compact
    # arguments are {"tool_uses":[{"recipient_name":"functions.NAME",
    # "parameters":{...}}, ...]}; the history bills that call once
    # (3 + its header + that JSON) and each result as its framing and content
    # plus " to=assistant". The arguments are sent back spaced; the wrapper
    # holds them compact.
    messages = _parallel_messages(['{"city": "Oslo"}', '{"city": "Lima"}'])
    with_calls = count("gpt-4o", messages, [PARALLEL_TOOL])
    without = count("gpt-4o", [USER], [PARALLEL_TOOL])
    wrapper = ('{"tool_uses":[{"recipient_name":"functions.get_day","parameters":{"city":"Oslo"}},'
               '{"recipient_name":"functions.get_day","parameters":{"city":"Lima"}}]}')
    call_tokens = 3 + o200k("assistant to=multi_tool_use.parallel") + o200k(wrapper)
    result_tokens = (3 + o200k("Monday") + o200k(" to=assistant")
                     + 3 + o200k("Tuesday") + o200k(" to=assistant"))
    assert (call_tokens, result_tokens) == (46, 14)
    assert with_calls - without == call_tokens + result_tokens


def test_three_parallel_calls_share_one_wrapper() -> None:
    args = ['{"city":"Oslo"}', '{"city":"Lima"}', '{"city":"Pune"}']
    with_calls = count("gpt-4o", _parallel_messages(args), [PARALLEL_TOOL])
    without = count("gpt-4o", [USER], [PARALLEL_TOOL])
    uses = ",".join('{"recipient_name":"functions.get_day","parameters":' + a + "}" for a in args)
    wrapper = '{"tool_uses":[' + uses + "]}"
    call_tokens = 3 + o200k("assistant to=multi_tool_use.parallel") + o200k(wrapper)
    result_tokens = sum(3 + o200k(day) + o200k(" to=assistant")
                        for day in ("Monday", "Tuesday", "Friday"))
    assert (call_tokens, result_tokens) == (61, 21)
    assert with_calls - without == call_tokens + result_tokens


def test_gpt5_parallel_calls_stay_single_calls_with_their_channels() -> None:
    # No public harmony rendering of the wrapper: gpt-5 counts each call as a
    # single one (with its channel) plus 3 (openai.py).
    messages = _parallel_messages(['{"city":"Oslo"}', '{"city":"Lima"}'])
    with_calls = count("gpt-5.4", messages, [PARALLEL_TOOL])
    without = count("gpt-5.4", [USER], [PARALLEL_TOOL])
    per_call = (3 + o200k("assistant to=functions.get_day") + o200k('{"city":"Oslo"}')
                + o200k("functions.get_day to=assistant") - 1
                + 2 + o200k("commentary") + o200k(" ") + o200k("json") + 3)
    results = 3 + o200k("Monday") + 3 + o200k("Tuesday")
    assert o200k('{"city":"Oslo"}') == o200k('{"city":"Lima"}')
    assert with_calls - without == 2 * per_call + results
