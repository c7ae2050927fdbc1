"""Write the LangChain cassettes (cassettes/langchain/*.yaml) from the scenario table below.

The responses (content, tool calls and ``usage``) are chosen by hand and
written in api.openai.com's exact wire format: a JSON body, or an SSE stream
of ``chat.completion.chunk`` events whose last chunk carries ``usage`` when
the request asked for ``stream_options.include_usage``. The request bodies
are what langchain-openai 1.7 / litellm 1.110 send for each scenario (checked
against the live requests the tests capture). Nothing here is computed by
crew-budget: the usage numbers are plausible counts picked by hand.

    python cassettes/langchain/author.py          # rewrite cassettes/langchain/*.yaml

To record real traffic instead, run a test with an OpenAI key and VCR's
record mode (CREW_BUDGET_RECORD_MODE=all, see tests/fixtures/http_replay.py);
authorization and organization headers are filtered out of recordings.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml


MODEL = "gpt-4o-mini-2024-07-18"
FINGERPRINT = "fp_560af6e559"
REQ_HEADERS = {"accept": ["application/json"], "content-type": ["application/json"]}
STATUS_TEXT = {200: "OK", 400: "Bad Request", 429: "Too Many Requests",
               500: "Internal Server Error"}


class Literal(str):
    """An SSE body, dumped as a YAML block scalar so each event stays on its own line."""


yaml.add_representer(
    Literal, lambda dumper, data: dumper.represent_scalar("tag:yaml.org,2002:str", data,
                                                          style="|"))


def resp_headers(ctype: str, ms: int) -> dict[str, list[str]]:
    return {"Content-Type": [ctype], "openai-processing-ms": [str(ms)],
            "openai-version": ["2020-10-01"], "x-ratelimit-limit-requests": ["30000"],
            "x-ratelimit-remaining-requests": ["29999"]}


def usage(prompt: int, completion: int, cached: int = 0, reasoning: int = 0) -> dict[str, Any]:
    """An OpenAI chat ``usage`` object (prompt_tokens includes cached_tokens)."""
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": reasoning, "audio_tokens": 0,
                                          "accepted_prediction_tokens": 0,
                                          "rejected_prediction_tokens": 0}}


def chat_json(cid: str, created: int, content: str | None, u: dict[str, Any],
              tool_calls: list[dict[str, Any]] | None = None,
              finish: str = "stop") -> dict[str, Any]:
    """A ``chat.completion`` response body."""
    msg: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None,
                           "annotations": []}
    if tool_calls:
        msg["tool_calls"] = tool_calls
    return {"id": cid, "object": "chat.completion", "created": created, "model": MODEL,
            "choices": [{"index": 0, "message": msg, "logprobs": None, "finish_reason": finish}],
            "usage": u, "service_tier": "default", "system_fingerprint": FINGERPRINT}


def sse(cid: str, created: int, pieces: list[str], u: dict[str, Any] | None,
        include_usage: bool) -> Literal:
    """A ``chat.completion.chunk`` SSE stream; the last chunk carries ``usage`` if asked."""
    base = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": MODEL,
            "service_tier": "default", "system_fingerprint": FINGERPRINT}

    def chunk(choices: list[dict[str, Any]], chunk_usage: Any = None) -> dict[str, Any]:
        event = {**base, "choices": choices}
        if include_usage:
            event["usage"] = chunk_usage
        return event

    events = [chunk([{"index": 0, "delta": {"role": "assistant", "content": "", "refusal": None},
                      "logprobs": None, "finish_reason": None}])]
    events += [chunk([{"index": 0, "delta": {"content": p}, "logprobs": None,
                       "finish_reason": None}]) for p in pieces]
    events.append(chunk([{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}]))
    if include_usage:
        events.append(chunk([], u))
    lines = [f"data: {json.dumps(e, separators=(',', ':'))}\n\n" for e in events]
    return Literal("".join(lines) + "data: [DONE]\n\n")


def interaction(req_body: dict[str, Any], status: int, body: Any, ctype: str,
                ms: int = 300) -> dict[str, Any]:
    """One VCR.py interaction: POST /v1/chat/completions and its answer."""
    text = body if isinstance(body, Literal) else json.dumps(body, indent=2)
    return {"request": {"body": json.dumps(req_body, separators=(",", ":")),
                        "headers": REQ_HEADERS, "method": "POST",
                        "uri": "https://api.openai.com/v1/chat/completions"},
            "response": {"body": {"string": text}, "headers": resp_headers(ctype, ms),
                         "status": {"code": status, "message": STATUS_TEXT[status]}}}


def write(name: str, interactions: list[dict[str, Any]], header: str,
          out: Path | None = None) -> None:
    path = (out or OUT) / f"{name}.yaml"
    text = yaml.dump({"interactions": interactions, "version": 1}, sort_keys=False, width=100,
                     allow_unicode=True)
    path.write_text(header + text)
    print("wrote", path)


OUT = Path(__file__).resolve().parent


HDR = """# Hand-written OpenAI Chat Completions traffic for the LangChain tests (tests/langchain).
# Responses (content, tool calls, usage) are written by hand in the exact wire format of
# api.openai.com (JSON, and SSE streams whose last chunk carries usage when the request
# asks for stream_options.include_usage); the usage numbers are plausible counts chosen
# by hand, never computed by crew-budget. Request bodies are what langchain-openai 1.7
# sends for the scenario; replay matches on method + URL, in order. See cassettes/README.md.
"""


def main() -> None:
    Q_FR = "Name the capital of France in one word."
    Q_PT = "Name the capital of Portugal in one word."
    def req(q, **extra):
        b = {"messages": [{"content": q, "role": "user"}], "model": "gpt-4o-mini", "max_completion_tokens": 64, "stream": False}
        b.update(extra); return b

    write("chat", [
        interaction(req(Q_FR), 200, chat_json("chatcmpl-lc-chat-1", 1764072000, "Paris.", usage(16, 2)), "application/json", 212),
        interaction(req(Q_PT), 200, chat_json("chatcmpl-lc-chat-2", 1764072003, "Lisbon.", usage(16, 3)), "application/json", 198),
    ], HDR + "# chat: two plain calls (France, Portugal), non-streaming.\n")

    caps = [("Spain", "Madrid.", 16, 2), ("Italy", "Rome.", 16, 2), ("Japan", "Tokyo.", 16, 2), ("Canada", "Ottawa.", 16, 3)]
    write("batch", [
        interaction(req(f"Name the capital of {c} in one word."), 200,
                    chat_json(f"chatcmpl-lc-batch-{i}", 1764072100 + i, a, usage(p, k)), "application/json", 180 + i)
        for i, (c, a, p, k) in enumerate(caps, 1)
    ], HDR + "# batch: four calls answered in any order (the tests run them concurrently).\n")

    write("stream", [
        interaction(req(Q_FR, stream=True, stream_options={"include_usage": True}), 200,
                    sse("chatcmpl-lc-stream-1", 1764072200, ["Paris", "."], usage(16, 2), True), "text/event-stream; charset=utf-8", 141),
    ], HDR + "# stream: one SSE stream whose final chunk carries usage (stream_usage=True).\n")

    write("stream_no_usage", [
        interaction(req(Q_FR, stream=True), 200,
                    sse("chatcmpl-lc-stream-2", 1764072300, ["Paris", "."], None, False), "text/event-stream; charset=utf-8", 133),
    ], HDR + "# stream_no_usage: an SSE stream without a usage chunk (stream_usage=False).\n")

    write("server_error", [
        interaction(req(Q_FR), 500, {"error": {"message": "The server had an error while processing your request. Sorry about that!",
                                                "type": "server_error", "param": None, "code": None}}, "application/json", 52),
    ], HDR + "# server_error: HTTP 500 (providers do not bill failed requests).\n")

    SYS = "You are a concise travel assistant."
    Q_W = "What is the weather in Lisbon?"
    TOOL = {"type": "function", "function": {"name": "get_weather", "description": "Current weather for a city.",
            "parameters": {"properties": {"city": {"type": "string"}}, "required": ["city"], "type": "object"}}}
    call = {"id": "call_lcW3atherL1sb0n", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Lisbon\"}"}}
    t1 = {"messages": [{"content": SYS, "role": "system"}, {"content": Q_W, "role": "user"}], "model": "gpt-4o-mini",
          "max_completion_tokens": 256, "stream": False, "tools": [TOOL]}
    sent_call = {"type": "function", "id": call["id"],
                 "function": {"name": "get_weather", "arguments": "{\"city\": \"Lisbon\"}"}}
    t2 = {"messages": [{"content": SYS, "role": "system"}, {"content": Q_W, "role": "user"},
                       {"content": None, "role": "assistant", "tool_calls": [sent_call]},
                       {"content": "18C and sunny", "role": "tool", "tool_call_id": call["id"]}],
          "model": "gpt-4o-mini", "max_completion_tokens": 256, "stream": False, "tools": [TOOL]}
    write("agent_tools", [
        interaction(t1, 200, chat_json("chatcmpl-lc-agent-1", 1764072400, None, usage(72, 15), tool_calls=[call], finish="tool_calls"), "application/json", 402),
        interaction(t2, 200, chat_json("chatcmpl-lc-agent-2", 1764072402, "It is 18C and sunny in Lisbon.", usage(104, 12)), "application/json", 377),
    ], HDR + "# agent_tools: a create_agent run: a get_weather tool call, then the final answer.\n")

    t3 = {"messages": [{"content": SYS, "role": "system"}, {"content": "Suggest one museum in Lisbon.", "role": "user"}],
          "model": "gpt-4o-mini", "max_completion_tokens": 256, "stream": True, "stream_options": {"include_usage": True}}
    write("agent_stream", [
        interaction(t3, 200, sse("chatcmpl-lc-agent-3", 1764072500, ["The", " Gulbenkian", " Museum", "."], usage(24, 5), True),
                    "text/event-stream; charset=utf-8", 156),
    ], HDR + "# agent_stream: a streaming agent model call; the final chunk carries usage.\n")


if __name__ == "__main__":
    main()
