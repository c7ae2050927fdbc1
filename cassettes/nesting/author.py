"""Write the nesting cassettes (cassettes/nesting/*.yaml) from the scenario table below.

Same rules as cassettes/langchain/author.py (whose writer this reuses):
responses and ``usage`` chosen by hand in api.openai.com's wire format,
never computed by crew-budget; request bodies as litellm 1.110 sends them
for CrewAI 1.15's litellm-routed ``LLM`` and for the test's litellm-backed
LangChain chat model (checked against the live requests the tests capture).

    python cassettes/nesting/author.py
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location(
    "_lc_author", Path(__file__).resolve().parents[1] / "langchain" / "author.py")
assert _spec is not None and _spec.loader is not None
_author = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_author)
chat_json, interaction = _author.chat_json, _author.interaction
sse, usage = _author.sse, _author.usage
OUT = Path(__file__).resolve().parent


def write(name, interactions, header):
    _author.write(name, interactions, header, out=OUT)


HDR = """# Hand-written OpenAI Chat Completions traffic for tests/test_nesting.py: one HTTP
# call made through two crew-budget adapters (CrewAI BudgetLLM or LangChain's middleware/
# handler outside, litellm's BudgetLogger inside) must be charged once.
# Responses (content, usage) are written by hand in the exact wire format of api.openai.com
# (JSON, and SSE streams whose last chunk carries usage); the usage numbers are plausible
# counts chosen by hand, never computed by crew-budget. Request bodies are what litellm 1.110
# sends (the outer adapter adds max_tokens when the call has no cap); replay matches on
# method + URL, in order. See cassettes/README.md.
"""


def main() -> None:
    q_it = [{"role": "user", "content": "Name the capital of Italy in one word."}]
    q_museum = [{"role": "user", "content": "Suggest one museum in Rome."}]

    write("crewai_call", [
        interaction({"model": "gpt-4o-mini", "messages": q_it, "max_tokens": 256}, 200,
                    chat_json("chatcmpl-nest-call-1", 1764074000, "Rome.", usage(21, 3)),
                    "application/json", 212),
    ], HDR + "# crewai_call: one plain call (Italy), non-streaming.\n")

    write("crewai_stream", [
        interaction({"model": "gpt-4o-mini", "messages": q_it, "max_tokens": 256, "stream": True,
                     "stream_options": {"include_usage": True}}, 200,
                    sse("chatcmpl-nest-stream-1", 1764074100, ["Rome", "."], usage(21, 4), True),
                    "text/event-stream; charset=utf-8", 141),
    ], HDR + "# crewai_stream: one SSE stream (Italy) whose final chunk carries usage.\n")

    write("langchain_call", [
        interaction({"model": "gpt-4o-mini", "messages": q_museum, "max_tokens": 256}, 200,
                    chat_json("chatcmpl-nest-lc-1", 1764074200, "The Vatican Museums.",
                              usage(30, 5)),
                    "application/json", 233),
    ], HDR + "# langchain_call: one plain call (a museum in Rome), non-streaming.\n")

    write("server_error", [
        interaction({"model": "gpt-4o-mini", "messages": q_it, "max_tokens": 256}, 500,
                    {"error": {"message": "The server had an error while processing your "
                               "request. Sorry about that!", "type": "server_error",
                               "param": None, "code": None}}, "application/json", 51),
    ], HDR + "# server_error: HTTP 500 (providers do not bill failed requests).\n")


if __name__ == "__main__":
    main()
