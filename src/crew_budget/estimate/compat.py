"""OpenAI-compatible hosts serving other model families (Llama, Qwen, Mistral, ...).

Groq, Together, Fireworks, OpenRouter, Hugging Face, Cloudflare, DeepSeek,
Mistral, x.ai and Ollama take OpenAI's wire format but bill with the model's
own tokenizer, after rendering the conversation with the model's *chat
template*. No local tokenizer for those families ships with crew-budget, so
text is a tiktoken count scaled by a per-family factor (corrected per model
by calibration), and the template's fixed text (default system preambles,
tool instructions) is counted from the template itself, which is public: it
is the ``chat_template`` of the model's ``tokenizer_config.json`` on Hugging
Face. Sources are cited at each family.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from crew_budget.estimate.openai import render_functions


@dataclass(frozen=True, slots=True)
class Family:
    """How one model family's chat template bills a request.

    ``preamble``: text every request carries (a default system message or
    date header), counted once; ``tool_intro``/``tool_outro``: the fixed text
    around tool definitions; ``tool_json``: how each definition is written
    (``"indent4"``, ``"spaced"``, ``"deepseek"``, ``"lines"`` (one function object
    a line), ``"harmony"`` (OpenAI's TypeScript namespace), ``"none"``).
    """

    fragment: str
    encoding: str
    factor: float
    preamble: str = ""
    tool_intro: str = ""
    tool_outro: str = ""
    tool_json: str = "spaced"
    per_message: int = 4
    reply: int = 3
    schema_in_prompt: bool = True  # a json_schema response_format is written into the prompt
    role_names: bool = True  # the template writes each message's role as text
    call_ids: bool = True  # the template writes tool-call ids (calls and results)
    # Fixed text the template writes around an assistant message's tool calls,
    # around each call, and around each tool result ("" where unknown).
    calls_text: str = ""
    call_text: str = ""
    result_text: str = ""
    # The framing of the system block the template writes when the request has
    # no system message (counted in ``reply``), and whether ``preamble`` is
    # that block's default text: both are not billed when a system message
    # takes the block's place.
    system_block: int = 0
    default_system: bool = False


# Llama 3.1 / 3.2 / 3.3 Instruct (meta-llama/Llama-3.1-8B-Instruct,
# tokenizer_config.json "chat_template"): every prompt opens with a system
# block holding "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul
# 2024\n\n" (plus "Environment: ipython\n" with tools) before any system
# text, and tools are put into the first user message as
# ``tool | tojson(indent=4)`` after a fixed instruction. Framing: 4 special
# tokens and "\n\n" around each message's role, the system block's own 5,
# and 4 for the assistant header that primes the reply (reply = 9); a
# system message of the request fills that block, so its own 5 are then not
# extra (``system_block``); the date header stays. Text: Llama 3 uses a
# 128k-token tiktoken BPE (Meta, "Introducing Meta Llama 3": "a tokenizer
# with a vocabulary of 128K tokens"), close to cl100k_base plus 28k tokens.
_LLAMA_DATE = "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"
_LLAMA_TOOLS = ("Environment: ipython\n"
                "Given the following functions, please respond with a JSON for a function "
                "call with its proper arguments that best answers the given prompt.\n\n"
                'Respond in the format {"name": function name, "parameters": dictionary of '
                "argument name and its value}.Do not use variables.\n\n")

# Qwen2.5 Instruct (Qwen/Qwen2.5-7B-Instruct, tokenizer_config.json): with no
# system message the template adds "You are Qwen, created by Alibaba Cloud.
# You are a helpful assistant." (Qwen2.5-VL: "You are a helpful assistant.";
# Qwen3 adds none); tools go into the system message between this text and
# ``<tools>`` tags, one ``tool | tojson`` per line. Framing (ChatML):
# ``<|im_start|>role\n ... <|im_end|>\n`` is 4 tokens besides the role; the
# reply is primed with ``<|im_start|>assistant\n`` (3), plus 5 for the
# default system message's own framing where there is one (reply = 8). A
# request's own system message replaces the default one, text and framing.
_QWEN_TOOLS = ("\n\n# Tools\n\nYou may call one or more functions to assist with the user "
               "query.\n\nYou are provided with function signatures within <tools></tools> "
               "XML tags:\n<tools>")
_QWEN_TOOLS_END = ("\n</tools>\n\nFor each function call, return a json object with function "
                   "name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n"
                   '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>')

# DeepSeek V3.1 (deepseek-ai/DeepSeek-V3.1, tokenizer_config.json; the
# template the deepseek-chat API serves): tools become "## Tools" with one
# "### name / Description / Parameters" section each and a fixed block of
# format instructions. Every DeepSeek V3/R1/V4 template writes no role
# names: ``{bos}{system}`` then the User marker, the content and the
# Assistant marker per user turn (V3.1 and V4 add ``</think>`` or ``<think>``
# there: 3 special tokens, V3/R1 2) and the content plus the end-of-sentence
# token per assistant turn;
# the BOS token primes the reply (1). Tool calls are written by name and
# arguments and results by content: call ids are not in the prompt. Their
# 128k-vocabulary byte-level BPE is counted as o200k_base, the tiktoken
# vocabulary of that size class.
_DEEPSEEK_TOOLS_END = (
    "IMPORTANT: ALWAYS adhere to this exact format for tool use:\n"
    "<\uff5ctool\u2581calls\u2581begin\uff5c><\uff5ctool\u2581call\u2581begin\uff5c>tool_call_name<\uff5ctool\u2581sep\uff5c>tool_call_arguments"
    "<\uff5ctool\u2581call\u2581end\uff5c>{{additional_tool_calls}}<\uff5ctool\u2581calls\u2581end\uff5c>\n\nWhere:\n\n"
    "- `tool_call_name` must be an exact match to one of the available tools\n"
    "- `tool_call_arguments` must be valid JSON that strictly follows the tool's Parameters "
    "Schema\n- For multiple tool calls, chain them directly without separators or spaces\n")

# DeepSeek V4 (deepseek-v4-flash / -pro; DeepSeek's reference encoder
# ``encoding_dsv4.encode_messages``, as ported byte-exact in ml-explore/mlx-lm
# ``chat_templates/deepseek_v4.py``): tools are appended to the system
# message after "\n\n" as a "## Tools" section (DSML ``tool_calls``
# instructions, then ``### Available Tool Schemas`` with one ``json.dumps``
# of each function object per line, then a closing instruction). V3.2 uses
# the same layout with different wording; V3.1 the sections above.
_DSML = "\uff5cDSML\uff5c"
_DEEPSEEK_V4_TOOLS = (
    "\n\n## Tools\n\nYou have access to a set of tools to help answer the user's question. "
    f'You can invoke tools by writing a "<{_DSML}tool_calls>" block like the following:\n\n'
    f"<{_DSML}tool_calls>\n<{_DSML}invoke name=\"$TOOL_NAME\">\n"
    f'<{_DSML}parameter name="$PARAMETER_NAME" string="true|false">$PARAMETER_VALUE'
    f"</{_DSML}parameter>\n...\n</{_DSML}invoke>\n<{_DSML}invoke name=\"$TOOL_NAME2\">\n...\n"
    f"</{_DSML}invoke>\n</{_DSML}tool_calls>\n\n"
    'String parameters should be specified as is and set `string="true"`. For all other types '
    '(numbers, booleans, arrays, objects), pass the value in JSON format and set '
    '`string="false"`.\n\nIf thinking_mode is enabled (triggered by <think>), you MUST output '
    "your complete reasoning inside <think>...</think> BEFORE any tool calls or final response."
    "\n\nOtherwise, output directly after </think> with tool calls or final response.\n\n"
    "### Available Tool Schemas\n\n")
# encoding_dsv4 again: an assistant's calls follow its content as
# "\n\n<DSML tool_calls>\n" + one ``<DSML invoke name="...">\n{args}\n</DSML
# invoke>`` per call (joined by "\n") + "\n</DSML tool_calls>"; a tool result
# is a user turn holding ``<tool_result>{content}</tool_result>``.
_DEEPSEEK_V4_CALLS = f"\n\n<{_DSML}tool_calls>\n\n</{_DSML}tool_calls>"
_DEEPSEEK_V4_CALL = f'<{_DSML}invoke name="">\n\n</{_DSML}invoke>\n'
_DEEPSEEK_V4_RESULT = "<tool_result></tool_result>"
_DEEPSEEK_V4_TOOLS_END = ("\n\nYou MUST strictly follow the above defined tool name and "
                          "parameter schemas to invoke tool calls.\n")

# Mistral (mistralai/Mistral-Small-Instruct, tokenizer_config.json /
# mistral-common): tools are written once as ``[AVAILABLE_TOOLS]<json list>
# [/AVAILABLE_TOOLS]``; messages are ``[INST] ... [/INST]`` with no role
# names. Mistral's Tekken tokenizer (131k vocabulary, tiktoken-based;
# Mistral, "Mistral NeMo" announcement) counts English like o200k_base.
# A ``json_schema`` response_format is not prompt text: mistral-common (the
# request validation, normalization and tokenizer Mistral's API uses, per
# its README) encodes only the messages and the tools; the schema constrains
# decoding (``schema_in_prompt=False``).
#
# Gemini's OpenAI-compatible endpoint reports only the text of the messages
# (Google bills Gemini by its own count of the contents; a one-line prompt
# with a forced tool is reported as 8 tokens): no framing, no tool text, and
# no role names (a Content's role is a field, not text: "Gemini API: token
# counting" counts the parts).
# gpt-oss (openai/gpt-oss-120b chat_template.jinja, the harmony format): every
# prompt opens with a system message the template writes itself (model
# identity, knowledge cutoff, the current date, reasoning effort, the valid
# channels), framed by <|start|>system<|message|> ... <|end|> (4 with the
# role); a request's system message becomes a developer message. Messages are
# <|start|>{role}<|message|>{content}<|end|> (3 + role, OpenAI's rule) and the
# reply is primed with <|start|>assistant (2). Tools: the developer message's
# "# Tools" section in harmony's TypeScript namespace (openai.render_functions)
# and one more line in the system message. o200k_harmony is o200k_base plus
# the special tokens.
_GPT_OSS_SYSTEM = ("You are ChatGPT, a large language model trained by OpenAI.\n"
                   "Knowledge cutoff: 2024-06\nCurrent date: 2025-06-28\n\n"
                   "Reasoning: medium\n\n# Valid channels: analysis, commentary, final. "
                   "Channel must be included for every message.")
_GPT_OSS_TOOLS = ("\nCalls to these tools must go to the commentary channel: 'functions'."
                  "# Tools\n\n## functions\n\n")

FAMILIES: tuple[Family, ...] = (
    Family("gpt-oss", "o200k_base", 1.0, preamble=_GPT_OSS_SYSTEM, tool_intro=_GPT_OSS_TOOLS,
           tool_json="harmony", per_message=3, reply=2 + 4),
    Family("gemini", "o200k_base", 1.15, tool_json="none", per_message=0, reply=0,
           role_names=False),
    Family("gemma", "o200k_base", 1.15),
    Family("llama", "cl100k_base", 1.05, preamble=_LLAMA_DATE, tool_intro=_LLAMA_TOOLS,
           tool_json="indent4", per_message=4, reply=9, system_block=5),
    Family("qwen2.5-vl", "cl100k_base", 1.05, preamble="You are a helpful assistant.",
           tool_intro=_QWEN_TOOLS, tool_outro=_QWEN_TOOLS_END, reply=8, system_block=5,
           default_system=True),
    Family("qwen2", "cl100k_base", 1.05,
           preamble="You are Qwen, created by Alibaba Cloud. You are a helpful assistant.",
           tool_intro=_QWEN_TOOLS, tool_outro=_QWEN_TOOLS_END, reply=8, system_block=5,
           default_system=True),
    Family("qwen", "cl100k_base", 1.05, tool_intro=_QWEN_TOOLS, tool_outro=_QWEN_TOOLS_END),
    Family("qwq", "cl100k_base", 1.05, tool_intro=_QWEN_TOOLS, tool_outro=_QWEN_TOOLS_END),
    Family("deepseek-v4", "o200k_base", 1.0, tool_intro=_DEEPSEEK_V4_TOOLS,
           tool_outro=_DEEPSEEK_V4_TOOLS_END, tool_json="lines", per_message=3, reply=1,
           role_names=False, call_ids=False, calls_text=_DEEPSEEK_V4_CALLS,
           call_text=_DEEPSEEK_V4_CALL, result_text=_DEEPSEEK_V4_RESULT),
    # DeepSeek-R1's template primes the reply with the Assistant marker and
    # "<think>\n" (deepseek-ai/DeepSeek-R1 tokenizer_config.json): 2 more than V3's.
    Family("deepseek-r1", "o200k_base", 1.0,
           tool_intro="## Tools\nYou have access to the following tools:\n",
           tool_outro=_DEEPSEEK_TOOLS_END, tool_json="deepseek", per_message=2, reply=3,
           role_names=False, call_ids=False),
    Family("deepseek", "o200k_base", 1.0,
           tool_intro="## Tools\nYou have access to the following tools:\n",
           tool_outro=_DEEPSEEK_TOOLS_END, tool_json="deepseek", per_message=2, reply=1,
           role_names=False, call_ids=False),
    Family("mistral", "o200k_base", 1.0, tool_intro="[AVAILABLE_TOOLS]",
           tool_outro="[/AVAILABLE_TOOLS]", per_message=2, reply=1, schema_in_prompt=False),
    Family("mixtral", "cl100k_base", 1.20, tool_intro="[AVAILABLE_TOOLS]",
           tool_outro="[/AVAILABLE_TOOLS]", schema_in_prompt=False),
    Family("stral", "o200k_base", 1.0, tool_intro="[AVAILABLE_TOOLS]",  # codestral, devstral...
           tool_outro="[/AVAILABLE_TOOLS]", per_message=2, reply=1, schema_in_prompt=False),
    Family("command", "cl100k_base", 1.15),
    Family("grok", "cl100k_base", 1.15),
)
DEFAULT = Family("", "cl100k_base", 1.25)
_TIKTOKEN_NAMES = ("o200k_base", "cl100k_base", "o200k_harmony", "p50k_base", "r50k_base")
# Tool instructions of a family whose template is unknown: a typical size.
_APPROX_TOOL_PREAMBLE = 60


def family_of(name: str) -> Family | None:
    """The first family whose fragment is in the (lower-case, bare) model name."""
    for family in FAMILIES:
        if family.fragment in name:
            return family
    return None


def tools_text(family: Family, functions: Sequence[Mapping[str, Any]]) -> str:
    """The text a family's chat template adds for these tool definitions."""
    if family.tool_json == "none":
        return ""
    parts = [family.tool_intro]
    for fn in functions:
        tool = {"type": "function", "function": dict(fn)}
        if family.tool_json == "indent4":
            parts.append(json.dumps(tool, indent=4, ensure_ascii=False, default=str) + "\n\n")
        elif family.tool_json == "harmony":
            if len(parts) == 1:
                parts.append(render_functions(list(functions)))
        elif family.tool_json == "lines":
            sep = "\n" if len(parts) > 1 else ""
            parts.append(sep + json.dumps(dict(fn), ensure_ascii=False, default=str))
        elif family.tool_json == "deepseek":
            params = json.dumps(fn.get("parameters") or {}, ensure_ascii=False, default=str)
            parts.append(f"\n### {fn.get('name', '')}\nDescription: {fn.get('description', '')}"
                         f"\n\nParameters: {params}\n")
        else:
            parts.append("\n" + json.dumps(tool, ensure_ascii=False, default=str))
    parts.append(family.tool_outro)
    return "".join(parts)


def tools_tokens(family: Family | None, count: Callable[[str], int],
                 functions: Sequence[Mapping[str, Any]]) -> tuple[int, int]:
    """(text, fixed) tokens of tool definitions for a compatible host's model."""
    if family is None or not (family.tool_intro or family.tool_json == "none"):
        # Unknown template: Hugging Face chat templates write tools with
        # Jinja's ``tojson`` (``json.dumps`` spacing), as the OpenAI tool
        # objects they are given, after some instructions.
        body = "".join(json.dumps({"type": "function", "function": dict(fn)},
                                  ensure_ascii=False, default=str) for fn in functions)
        return count(body), _APPROX_TOOL_PREAMBLE
    return count(tools_text(family, functions)), 0
