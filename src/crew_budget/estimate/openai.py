"""OpenAI chat-completions rules: encodings, tool definitions as the model sees them.

Sources are cited at each rule.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any


def _is_openai_name(name: str) -> bool:
    if name.startswith("gpt-oss"):
        return False
    return name.startswith(("gpt-", "o1", "o3", "o4", "chatgpt-", "computer-use", "ft:gpt",
                            "codex-"))


def _openai_encoding(name: str) -> str:
    if name.startswith(("gpt-3.5", "gpt-35")) or (
        name.startswith("gpt-4") and not name.startswith(("gpt-4o", "gpt-4.1", "gpt-4.5"))
    ):
        return "cl100k_base"
    return "o200k_base"


def _args(fn: Mapping[str, Any]) -> str:
    args = fn.get("arguments", fn.get("args", fn.get("input", "")))
    if isinstance(args, str):
        return args
    return json.dumps(args, separators=(",", ":"), ensure_ascii=False, default=str)


# -- tool definitions as the model sees them --------------------------------


def _as_function(tool: Any) -> dict[str, Any] | None:
    """``{name, description, parameters}`` from an OpenAI tool, a legacy function
    or an Anthropic tool; ``None`` for server tools (bash, computer use, ...)."""
    if not isinstance(tool, Mapping):
        name = getattr(tool, "name", None)
        if isinstance(name, str):
            schema = getattr(tool, "args_schema", None)
            params: Any = {}
            if schema is not None and hasattr(schema, "model_json_schema"):
                params = schema.model_json_schema()
            return {"name": name, "description": str(getattr(tool, "description", "") or ""),
                    "parameters": params}
        return {"name": str(tool), "description": "", "parameters": {}}
    if isinstance(tool.get("function"), Mapping):
        return dict(tool["function"])
    if "input_schema" in tool:
        return {"name": tool.get("name", ""), "description": tool.get("description", ""),
                "parameters": tool.get("input_schema")}
    if "parameters" in tool or ("name" in tool and tool.get("type") in (None, "function",
                                                                          "custom")):
        return {"name": tool.get("name", ""), "description": tool.get("description", ""),
                "parameters": tool.get("parameters") or {}}
    return None


def render_functions(functions: Sequence[Mapping[str, Any]]) -> str:
    """Function definitions in the TypeScript namespace OpenAI renders them as."""
    lines = ["namespace functions {", ""]
    for fn in functions:
        description = str(fn.get("description") or "")
        if description:
            # One comment, newlines kept as they are: hmarr/openai-chat-tokens
            # (src/functions.ts, ``lines.push(`// ${f.description}`)``, whose
            # counts are checked against the API) and harmony's renderer for
            # property descriptions; the API bills a many-line description
            # without a ``// `` on each line (a 160-line description on a
            # recorded gpt-4o call is ~130 tokens under the per-line form).
            lines.append(f"// {description}")
        params = fn.get("parameters") or {}
        properties = params.get("properties") if isinstance(params, Mapping) else None
        name = fn.get("name", "")
        if properties:
            title = params.get("title")
            if title:
                # The parameters' own ``title`` (pydantic's ``model_json_schema``
                # adds the model's name): harmony's renderer drops it, but
                # gpt-4o bills it as one comment line: the same function
                # recorded with and without a root title differs by exactly
                # ``// <title>`` (4 tokens).
                lines.append(f"// {title}")
            lines.append(f"type {name} = (_: {{")
            lines.append(_ts_object(params, 0))
            lines.append("}) => any;")
        else:
            lines.append(f"type {name} = () => any;")
        lines.append("")
    lines.append("} // namespace functions")
    return "\n".join(lines)


def _ts_object(schema: Mapping[str, Any], indent: int) -> str:
    """The properties of an object schema, one per line, as harmony renders them.

    Per the harmony renderer (openai/harmony, ``render_conversation`` of a
    developer message with function tools; observed with openai-harmony 0.0.8):
    a property's ``title`` becomes a ``// <title>`` comment line (harmony
    follows it with an empty ``//`` line; gpt-4o and gpt-4o-mini bill exactly
    one line, on recorded calls with pydantic-generated ``title`` fields), its
    ``description`` lines become ``// <line>`` comments above it, a
    ``default`` is appended after the comma as ``// default: <value>`` (JSON for
    plain values, the bare value for an enum). Harmony indents a nested
    object's properties by 4 spaces and its closing brace too; the
    API-verified counts of openai-chat-tokens (hmarr/openai-chat-tokens,
    ``tests/token-counts.test.ts``, the nested-object case: 103 tokens) fit
    2 spaces and a closing brace at the outer indent, which is kept.
    """
    properties = schema.get("properties") or {}
    required = schema.get("required") or ()
    pad = " " * indent
    lines: list[str] = []
    for key, value in properties.items():
        prop: Mapping[str, Any] = value if isinstance(value, Mapping) else {}
        title = prop.get("title")
        if title:
            lines.append(f"{pad}// {title}")
        description = prop.get("description")
        if description:
            lines.append(f"{pad}// {description}")  # one comment, as the function's
        optional = "" if key in required else "?"
        line = f"{pad}{key}{optional}: {_ts_type(prop, indent)},"
        if "default" in prop:
            default = prop["default"]
            shown = (str(default) if "enum" in prop and isinstance(default, str)
                     else json.dumps(default, ensure_ascii=False, default=str))
            line += f" // default: {shown}"
        lines.append(line)
    return "\n".join(lines)


def _ts_type(prop: Mapping[str, Any], indent: int) -> str:
    if "enum" in prop:
        return " | ".join(json.dumps(v, ensure_ascii=False) for v in prop["enum"])
    if "const" in prop:
        return json.dumps(prop["const"], ensure_ascii=False)
    for union in ("anyOf", "oneOf"):
        if isinstance(prop.get(union), list):
            return " | ".join(_ts_type(p, indent) for p in prop[union] if isinstance(p, Mapping))
    kind = prop.get("type")
    if isinstance(kind, list):
        return " | ".join(_ts_type({**prop, "type": k}, indent) for k in kind)
    if kind == "string":
        return "string"
    if kind in ("integer", "number"):
        return "number"
    if kind == "boolean":
        return "boolean"
    if kind == "null":
        return "null"
    if kind == "array":
        items = prop.get("items")
        return f"{_ts_type(items, indent) if isinstance(items, Mapping) else 'any'}[]"
    if kind == "object" or "properties" in prop:
        if not prop.get("properties"):
            return "object"
        return "{\n" + _ts_object(prop, indent + 2) + "\n" + " " * indent + "}"
    return "any"


# -- tool calls and results in the history -----------------------------------
#
# Harmony (github.com/openai/harmony, docs/format.md "Function calling"; and
# openai-harmony 0.0.8's ``render_conversation``) renders an assistant's
# function call as its own message addressed to the tool, and the result as a
# message *from* the tool addressed back to the assistant:
#
#     <|start|>assistant to=functions.get_weather<|channel|>commentary json
#         <|message|>{"location":"Paris"}<|call|>
#     <|start|>functions.get_weather to=assistant<|channel|>commentary
#         <|message|>{"t":20}<|end|>
#
# The call id is not rendered (``tool_call_id`` only links the result to its
# call on the wire), nor is the ``tool`` role or a ``name`` on the result
# message: the author is the function.
# Chat-completions models (gpt-4o, 4.1, 5) bill the same shape with their
# 3-token message framing and no channel: on recorded gpt-4o/4o-mini traffic
# a single call plus its result costs exactly
#     3 + "assistant to=functions.NAME" + arguments + "functions.NAME to=assistant" - 1
# tokens on top of the result's own framing and content, and an assistant
# message that carries only tool calls (no text) has no framing of its own.
_CALL_FRAMING = 2  # 3 framing tokens, less the one the measured total is below the rendering
# Parallel calls (one assistant message with several ``tool_calls``) are not
# billed as that many calls: chat models (gpt-4o family, gpt-4.1) emit them as
# ONE call to the ``multi_tool_use.parallel`` wrapper that OpenAI puts beside
# the ``functions`` namespace, and "the layer at the OpenAI API that turns
# multi_tool_use.parallel into normal tool calls" splits it into ``tool_calls``
# (OpenAI community forum, "The multi_tool_use.parallel bug and how to fix it",
# t/880771). The wrapper's definition, as the forum quotes it (t/609610,
# "GPT-4-0125-preview hallucinating tool calls"):
#     namespace multi_tool_use { type parallel = (_: { tool_uses: {
#         recipient_name: string, parameters: object }[] }) => any; }
# and when the split fails the API hands the raw call out, written compactly
# (forum t/490653, "Model tries to call unknown function multi_tool_use.parallel"):
#     name: multi_tool_use.parallel
#     arguments: {"tool_uses":[{"recipient_name":"functions.NAME","parameters":{...}}]}
# So the history bills the wrapper call as the model emitted it, once:
#     3 + "assistant to=multi_tool_use.parallel" + that JSON (compact as in
#     that raw call, each call's arguments parsed and written compactly
#     whatever spacing the client sends them back with)
# and each result, which has no function of its own to be authored by (the
# call went to the wrapper), its framing and content plus its address back to
# the assistant, " to=assistant" (harmony's ``... to=assistant`` result header).
# On every recorded gpt-4o / gpt-4o-mini conversation with parallel calls
# (four distinct ones, two calls each: one function twice or two functions,
# with and without a system message, compact or spaced arguments) this is
# exact on three and 1 token under on the fourth, where "single calls + 3
# tokens each" ranged from 4 under to 2 over. Only pairs of calls are
# recorded: the per-result share is the assumption for three or more.
_PARALLEL_WRAPPER = "multi_tool_use.parallel"
_PARALLEL_FRAMING = 3
_RESULT_ADDRESS = " to=assistant"
# Harmony models (gpt-5) render calls in channels, and no public source shows
# a harmony rendering of the wrapper: their parallel calls stay counted as
# single calls plus 3 tokens each (a recorded gpt-5.4 conversation with two
# parallel calls bills 2 tokens more than that; the wrapper form above with
# the channel header would be 3 under it).
_PARALLEL_EXTRA = 3
# Harmony's own example of a call (docs/format.md, "Receiving tool calls"):
#     <|start|>assistant<|channel|>commentary to=functions.get_current_weather
#         <|constrain|>json<|message|>{...}<|call|>
# and of a result:
#     <|start|>functions.get_current_weather to=assistant<|channel|>commentary<|message|>...
# Models that speak harmony (the gpt-5 family; gpt-oss) bill the call's
# channel and constrain tokens: <|channel|>commentary and <|constrain|>json.
# A result's channel is the caller's choice in harmony (``Message.with_channel``;
# a message without one renders no ``<|channel|>``), and a chat-completions
# ``tool`` message names none: recorded gpt-5.4 conversations with one to
# four calls bill exactly the call's channel and none on the result.
_CHANNEL_SPECIALS = 2
# Framing of an assistant message (3 + its role token) that holds only tool calls.
ASSISTANT_FRAMING = 4


def tool_calls_tokens(count: Callable[[str], int], calls: Any, *,
                      channels: bool = False) -> tuple[int, int]:
    """(text, fixed) tokens of an assistant message's ``tool_calls`` and their results'
    author tags (so a ``tool`` message costs only its framing and content).

    ``channels``: the model renders harmony channels (``uses_channels``), so
    each call also carries ``<|channel|>commentary <|constrain|>json``.
    Without channels, several calls are one ``multi_tool_use.parallel`` call
    (``parallel_call_text``) and their results are addressed, not authored.
    """
    text = fixed = 0
    functions: list[Mapping[str, Any]] = []
    for call in calls or ():
        if not isinstance(call, Mapping):
            text += count(str(call))
            continue
        fn = call.get("function", call)
        functions.append(fn if isinstance(fn, Mapping) else {})
    if len(functions) > 1 and not channels:
        # One wrapper call (header, then its JSON after a special token), and
        # each result addressed back to the assistant.
        text += count(f"assistant to={_PARALLEL_WRAPPER}") + count(parallel_call_text(functions))
        return text + count(_RESULT_ADDRESS) * len(functions), fixed + _PARALLEL_FRAMING
    per_call = _CALL_FRAMING + (_PARALLEL_EXTRA if len(functions) > 1 else 0)
    for fn in functions:
        name = str(fn.get("name", ""))
        text += count(f"assistant to=functions.{name}") + count(_args(fn))
        text += count(f"functions.{name} to=assistant")
        fixed += per_call
        if channels:
            # "<|channel|>commentary" + " <|constrain|>json": the special
            # tokens split the text, so " " and "json" are tokens of their own.
            text += count("commentary") + count(" ") + count("json")
            fixed += _CHANNEL_SPECIALS
    return text, fixed


def parallel_call_text(functions: Sequence[Mapping[str, Any]]) -> str:
    """The arguments of the ``multi_tool_use.parallel`` call that several parallel
    calls were emitted as: compact JSON, each call's arguments parsed and
    re-serialized compactly (kept as written when they are not JSON)."""
    uses = []
    for fn in functions:
        raw = _args(fn)
        try:
            params = json.dumps(json.loads(raw), separators=(",", ":"), ensure_ascii=False)
        except ValueError:
            params = raw
        name = json.dumps(f"functions.{fn.get('name', '')}", ensure_ascii=False)
        uses.append(f'{{"recipient_name":{name},"parameters":{params}}}')
    return '{"tool_uses":[' + ",".join(uses) + "]}"


# -- the gpt-5 family's hidden tool preamble ---------------------------------
#
# gpt-5-family chat models bill a constant number of extra prompt tokens when
# a request has tools, beyond the namespace rendering above: 85 (+-3) on every
# recorded gpt-5.4 call with 1-3 tools, with or without tool history, and
# about the same on gpt-5-mini. OpenAI does not publish this text; harmony's
# system message for tools (the "# Valid channels ... Calls to these tools
# must go to the commentary channel: 'functions'." block and the developer
# message's "# Tools" header) is the visible part of such a preamble.
GPT5_TOOL_PREAMBLE = 85


# -- harmony framing of reasoning models ------------------------------------------
#
# Harmony ends the prompt of a completion with ``<|start|>assistant`` (2
# tokens; docs/format.md, and ``render_conversation_for_completion``), where
# the cookbook's chat models are primed with 3 (``<|start|>assistant<|message|>``),
# and an assistant answer in the history carries its channel
# (``<|start|>assistant<|channel|>final<|message|>...<|end|>``: 2 tokens more).
# Recorded gpt-5, gpt-5-mini/nano, o3-mini and o4-mini calls bill exactly that:
# one token under the cookbook for a single message, and a 3-message
# conversation with an assistant turn one over it.
FINAL_CHANNEL = 2


def choice_in_prompt(reply: int) -> bool:
    """Does a ``tool_choice`` add prompt tokens, for a model that primes its reply
    with ``reply`` tokens?

    On chat models (gpt-4o, gpt-4.1, ...) a named function costs its name + 7
    and ``"none"`` one token (exact on recorded gpt-4o, gpt-4-1106 calls).
    Harmony's prompt format has no place for a tool choice (docs/format.md
    renders tools, not which one to call: forcing one is done when sampling,
    by the header the reply must start with), and a recorded gpt-5-mini call
    forcing a named function bills exactly what ``auto`` would.
    """
    return reply != 2


def trimmed_instructions(content: Any) -> Any:
    """A gpt-5 system / developer message's content as it is billed: without
    the whitespace around it.

    Harmony models take that message as the developer's instructions
    (docs/format.md, "Developer message format"). Recorded gpt-5.4 calls
    whose system prompt is an indented, newline-wrapped block bill it
    without the leading and trailing whitespace (exactly those tokens
    fewer), while gpt-4o calls with such a prompt bill all of it, and
    whitespace around a gpt-5.4 *user* message is billed too.
    """
    if isinstance(content, str):
        return content.strip()
    if isinstance(content, (list, tuple)):
        return [{**part, "text": part["text"].strip()}
                if isinstance(part, Mapping) and isinstance(part.get("text"), str) else part
                for part in content]
    return content


def reply_priming(name: str) -> int:
    """Tokens that prime the reply: 2 for harmony models (gpt-5, o-series), else 3."""
    return 2 if uses_channels(name) or name.startswith(("o1", "o3", "o4")) else 3


def uses_channels(name: str) -> bool:
    """Does this OpenAI model render tool calls in harmony channels? (gpt-5 family)"""
    return name.startswith("gpt-5")


def tool_preamble(name: str) -> int:
    """Hidden prompt tokens a model adds when the request has tools."""
    return GPT5_TOOL_PREAMBLE if name.startswith("gpt-5") else 0


# -- structured outputs: the ``# Response Formats`` section --------------------
#
# Harmony (github.com/openai/harmony, docs/format.md "Structured output")
# puts a response format at the end of the developer message as
#
#     # Response Formats
#
#     ## {format name}
#
#     // {description or context}
#     {schema}
#
# with the schema as JSON. What chat-completions models bill for a
# ``json_schema`` response format (recorded gpt-4o and gpt-5.4 calls with
# five different pydantic / hand-written schemas, 1-4 properties, with and
# without a system message, a format description, earlier answers) fits
# that section with the schema written the way harmony writes a function's
# parameters (``_ts_object``: ``name: type,`` lines, a ``// title`` line per
# titled property, descriptions as comments), in braces: the compact JSON
# of the same schemas misses by 5-13 tokens from one schema to the next,
# this form by 0-2. On top of it a fixed FORMAT_PROMPT (the format's
# instructions, which OpenAI does not publish; measured: 27 on gpt-4o,
# 18-22 on gpt-5.4: 20), and a message's framing (3 + the role token) when the
# request has no system or developer message for the section to join
# (harmony puts it "at the end of the developer message").
FORMAT_PROMPT = 27
FORMAT_PROMPT_HARMONY = 20
FORMAT_MESSAGE_FRAMING = 4
# Each earlier assistant answer of a structured-output conversation costs 3
# tokens more on gpt-4o than the same answer without a format: harmony
# marks a message whose content is constrained with `` <|constrain|>json``
# in its header (docs/format.md, "Receiving tool calls"), 3 tokens. Harmony
# models, which already bill the answer's ``final`` channel, do not.
CONSTRAINED_ANSWER = 3


def response_format_text(fmt: Mapping[str, Any]) -> str:
    """The ``# Response Formats`` section a ``json_schema`` response format becomes."""
    inner = fmt.get("json_schema")
    spec: Mapping[str, Any] = inner if isinstance(inner, Mapping) else fmt
    schema = spec.get("schema", spec)
    head = f"# Response Formats\n\n## {spec.get('name', 'response')}\n\n"
    if spec.get("description"):
        head += f"// {spec['description']}\n"
    if isinstance(schema, Mapping):
        schema = _inline_refs(schema, schema, 0)
    if isinstance(schema, Mapping) and schema.get("properties"):
        body = "{\n" + _ts_object(schema, 0) + "\n}"
    elif isinstance(schema, Mapping):
        body = _ts_type(schema, 0)
    else:
        body = json.dumps(schema, ensure_ascii=False, default=str)
    return head + body


def _inline_refs(value: Any, root: Mapping[str, Any], depth: int) -> Any:
    """``value`` with local ``$ref``s (``#/$defs/X``, ``#/definitions/X``)
    replaced by what they point to, so nested models (pydantic puts them in
    ``$defs``) are counted; not how OpenAI is known to render them, but a
    ``$ref`` left as ``any`` would drop the nested model's fields from the
    count, and an over-count is the safe side. Cycles stop at depth 8."""
    if isinstance(value, list):
        return [_inline_refs(v, root, depth) for v in value]
    if not isinstance(value, Mapping):
        return value
    ref = value.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/") and depth < 8:
        target: Any = root
        for part in ref[2:].split("/"):
            target = target.get(part) if isinstance(target, Mapping) else None
        if isinstance(target, Mapping):
            merged = {**target, **{k: v for k, v in value.items() if k != "$ref"}}
            return _inline_refs(merged, root, depth + 1)
    return {k: _inline_refs(v, root, depth) for k, v in value.items()
            if k not in ("$defs", "definitions")}


def response_format_overhead(name: str) -> int:
    """Fixed tokens of a ``json_schema`` response format beyond its section's text
    (without the framing of a message of its own)."""
    return FORMAT_PROMPT_HARMONY if _harmony(name) else FORMAT_PROMPT


def constrained_answer(name: str) -> int:
    """Extra tokens of each earlier assistant answer under a ``json_schema`` format."""
    return 0 if _harmony(name) else CONSTRAINED_ANSWER


def _harmony(name: str) -> bool:
    return reply_priming(name) == 2
