"""Write the provider-billing cassettes (cassettes/providers/*.yaml) by hand.

Each response is written in the provider's own wire format, with ``usage``
numbers chosen by hand (never computed by crew-budget) so that each exercises
one billing rule; tests/litellm/test_providers_billing.py computes the
expected dollars from them and the published prices.

- Gemini (Google AI Studio): ``POST /v1beta/models/{model}:generateContent``
  answers a ``GenerateContentResponse`` whose ``usageMetadata`` has
  ``promptTokenCount`` (including ``cachedContentTokenCount``),
  ``candidatesTokenCount`` (excluding ``thoughtsTokenCount``),
  ``toolUsePromptTokenCount`` and ``promptTokensDetails`` by modality
  (ai.google.dev/api/generate-content#UsageMetadata);
  ``:streamGenerateContent?alt=sse`` answers ``data: {...}`` events, each a
  ``GenerateContentResponse``, the last with the final ``usageMetadata``.
- Azure OpenAI: ``POST /openai/deployments/{deployment}/chat/completions
  ?api-version=2024-10-21`` answers an OpenAI ``chat.completion`` whose
  ``model`` is the model the deployment runs (not the deployment name), with
  ``prompt_filter_results``/``content_filter_results``; a stream starts with a
  chunk carrying only ``prompt_filter_results`` and ends with the ``usage``
  chunk (``stream_options.include_usage``, supported from that api-version).
- AWS Bedrock Converse: ``POST /model/{modelId}/converse`` answers
  ``{output, stopReason, usage: {inputTokens, outputTokens, totalTokens,
  cacheReadInputTokens, cacheWriteInputTokens}, metrics}`` where
  ``inputTokens`` *excludes* the cache reads and writes
  (docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_TokenUsage.html);
  ``/converse-stream`` answers ``application/vnd.amazon.eventstream``: binary
  frames (prelude with total and header lengths, CRC32, string headers
  ``:event-type``/``:content-type``/``:message-type``, a JSON payload, CRC32)
  for messageStart, contentBlockDelta..., contentBlockStop, messageStop and
  metadata (which carries ``usage``).

    python cassettes/providers/author.py
"""

from __future__ import annotations

import binascii
import json
import struct
from pathlib import Path
from typing import Any

import yaml

OUT = Path(__file__).resolve().parent

HDR = """# Hand-written provider traffic for tests/litellm/test_providers_billing.py, in the exact
# wire format of:
#   {provider}.
# Usage numbers are chosen by hand to exercise one billing
# rule each (never computed by crew-budget); request bodies document what litellm 1.110
# sends and are not matched (replay matches method + scheme + host + path, in order).
# Written by cassettes/providers/author.py; see cassettes/README.md.
"""

REQ_JSON = {"accept": ["application/json"], "content-type": ["application/json"]}


def interaction(uri: str, req_body: dict[str, Any], body: str | bytes, ctype: str,
                extra_headers: dict[str, list[str]] | None = None) -> dict[str, Any]:
    headers = {"Content-Type": [ctype], **(extra_headers or {})}
    return {
        "request": {"body": json.dumps(req_body, separators=(",", ":")), "headers": REQ_JSON,
                    "method": "POST", "uri": uri},
        "response": {"body": {"string": body}, "headers": headers,
                     "status": {"code": 200, "message": "OK"}},
    }


def write(name: str, interactions: list[dict[str, Any]], provider: str, note: str) -> None:
    path = OUT / f"{name}.yaml"
    text = yaml.safe_dump({"interactions": interactions, "version": 1}, sort_keys=False,
                          width=100, allow_unicode=True)
    path.write_text(HDR.format(provider=provider) + f"# {name}: {note}\n" + text)
    print("wrote", path)


# -- Gemini ------------------------------------------------------------------------

GEMINI = "https://generativelanguage.googleapis.com/v1beta/models/"


def gemini_usage(prompt: int, candidates: int, *, cached: int = 0, thoughts: int = 0,
                 tool_use: int = 0, modalities: dict[str, int] | None = None
                 ) -> dict[str, Any]:
    usage: dict[str, Any] = {"promptTokenCount": prompt, "candidatesTokenCount": candidates,
                             "totalTokenCount": prompt + candidates + thoughts + tool_use}
    if cached:
        usage["cachedContentTokenCount"] = cached
    usage["promptTokensDetails"] = [{"modality": m, "tokenCount": n}
                                    for m, n in (modalities or {"TEXT": prompt}).items()]
    if cached:
        usage["cacheTokensDetails"] = [{"modality": "TEXT", "tokenCount": cached}]
    if tool_use:
        usage["toolUsePromptTokenCount"] = tool_use
        usage["toolUsePromptTokensDetails"] = [{"modality": "TEXT", "tokenCount": tool_use}]
    if thoughts:
        usage["thoughtsTokenCount"] = thoughts
    return usage


def gemini_response(text: str | None, usage: dict[str, Any], model: str, rid: str,
                    finish: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if text is not None:
        cand: dict[str, Any] = {"content": {"parts": [{"text": text}], "role": "model"},
                                "index": 0}
        if finish:
            cand["finishReason"] = "STOP"
        out["candidates"] = [cand]
    out["usageMetadata"] = usage
    out["modelVersion"] = model
    out["responseId"] = rid
    return out


def gemini_request(question: str, max_tokens: int) -> dict[str, Any]:
    return {"contents": [{"role": "user", "parts": [{"text": question}]}],
            "generationConfig": {"max_output_tokens": max_tokens}}  # as litellm writes it


def gemini() -> None:
    q_long = ("Clause 0: the supplier delivers batch 0 by day 0. Clause 1: the supplier "
              "delivers batch 7 by day 1. ... (14,000 clauses, see the test's contract())")
    q_short = "Name the capital of France in one word."
    # 1. Gemini 2.5 Pro above 200k prompt tokens: 250,000 prompt (4,000 of them
    #    an implicit cache hit), 800 answer + 1,200 thinking tokens.
    long_usage = gemini_usage(250_000, 800, cached=4_000, thoughts=1_200)
    # 2. The same model below 200k, streamed: 12,000 prompt (4,000 cached),
    #    300 answer + 1,200 thinking; intermediate chunks report the prompt only.
    short_final = gemini_usage(12_000, 300, cached=4_000, thoughts=1_200)
    partial = {"promptTokenCount": 12_000, "totalTokenCount": 12_000,
               "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 12_000}]}
    # 3. Gemini 2.5 Flash with a tool (URL context) and an audio clip: 1,000
    #    prompt tokens (400 AUDIO, 600 TEXT), 500 tool-use prompt tokens, 200
    #    answer + 100 thinking.
    tool_usage = gemini_usage(1_000, 200, thoughts=100, tool_use=500,
                              modalities={"TEXT": 600, "AUDIO": 400})
    write("gemini_generate", [
        # The request the test sends is its contract(): 14,000 numbered clauses
        # (795,059 characters), left out of the recorded body to keep it small.
        interaction(GEMINI + "gemini-2.5-pro:generateContent", gemini_request(q_long, 2048),
                    json.dumps(gemini_response(
                        "The archive is a 2019 master services agreement with 14 amendments.",
                        long_usage, "gemini-2.5-pro", "gen-long-1"), indent=2),
                    "application/json; charset=UTF-8"),
        interaction(GEMINI + "gemini-2.5-flash:generateContent",
                    gemini_request("Does the clip match https://example.org/notes?", 512),
                    json.dumps(gemini_response("Yes: the clip reads the same three points.",
                                               tool_usage, "gemini-2.5-flash", "gen-tool-1"),
                               indent=2),
                    "application/json; charset=UTF-8"),
    ], "Google AI Studio generateContent",
        "gemini-2.5-pro above the 200k tier (250,000 prompt / 4,000 cached / 800 out / "
        "1,200 thoughts); gemini-2.5-flash with 500 tool-use prompt tokens and 400 audio tokens.")
    chunks = [
        gemini_response("Par", partial, "gemini-2.5-pro", "gen-stream-1", finish=False),
        gemini_response("is.", short_final, "gemini-2.5-pro", "gen-stream-1"),
    ]
    body = "".join("data: " + json.dumps(c, separators=(",", ":")) + "\r\n\r\n" for c in chunks)
    write("gemini_stream", [
        interaction(GEMINI + "gemini-2.5-pro:streamGenerateContent?alt=sse",
                    gemini_request(q_short, 2048), body, "text/event-stream"),
    ], "Google AI Studio streamGenerateContent (alt=sse)",
        "gemini-2.5-pro below the tier: 12,000 prompt / 4,000 cached / 300 out / 1,200 thoughts.")


# -- Azure OpenAI --------------------------------------------------------------------

AZURE = "https://contoso.openai.azure.com/openai/deployments/{}/chat/completions?api-version=2024-10-21"
FILTER_OK = {"hate": {"filtered": False, "severity": "safe"},
             "self_harm": {"filtered": False, "severity": "safe"},
             "sexual": {"filtered": False, "severity": "safe"},
             "violence": {"filtered": False, "severity": "safe"}}
PROMPT_FILTER = [{"prompt_index": 0, "content_filter_results": {
    **FILTER_OK, "jailbreak": {"filtered": False, "detected": False}}}]


def openai_usage(prompt: int, completion: int, cached: int = 0, reasoning: int = 0
                 ) -> dict[str, Any]:
    return {"completion_tokens": completion, "prompt_tokens": prompt,
            "total_tokens": prompt + completion,
            "completion_tokens_details": {"accepted_prediction_tokens": 0, "audio_tokens": 0,
                                          "reasoning_tokens": reasoning,
                                          "rejected_prediction_tokens": 0},
            "prompt_tokens_details": {"audio_tokens": 0, "cached_tokens": cached}}


def azure_json(cid: str, model: str, text: str, usage: dict[str, Any]) -> str:
    return json.dumps({
        "choices": [{"content_filter_results": FILTER_OK, "finish_reason": "stop", "index": 0,
                     "logprobs": None, "message": {"annotations": [], "content": text,
                                                   "refusal": None, "role": "assistant"}}],
        "created": 1764590400, "id": cid, "model": model, "object": "chat.completion",
        "prompt_filter_results": PROMPT_FILTER, "system_fingerprint": "fp_efad92c60b",
        "usage": usage}, indent=2)


def azure_sse(cid: str, model: str, pieces: list[str], usage: dict[str, Any]) -> str:
    events: list[dict[str, Any]] = [{"choices": [], "created": 0, "id": "", "model": "",
                                     "object": "", "prompt_filter_results": PROMPT_FILTER}]
    base = {"created": 1764590460, "id": cid, "model": model,
            "object": "chat.completion.chunk", "system_fingerprint": "fp_efad92c60b"}
    events.append({**base, "choices": [{"content_filter_results": {}, "delta": {
        "content": "", "refusal": None, "role": "assistant"}, "finish_reason": None,
        "index": 0, "logprobs": None}], "usage": None})
    for piece in pieces:
        events.append({**base, "choices": [{"content_filter_results": FILTER_OK, "delta": {
            "content": piece}, "finish_reason": None, "index": 0, "logprobs": None}],
            "usage": None})
    events.append({**base, "choices": [{"content_filter_results": {}, "delta": {},
                                        "finish_reason": "stop", "index": 0,
                                        "logprobs": None}], "usage": None})
    events.append({**base, "choices": [], "usage": usage})
    return "".join("data: " + json.dumps(e, separators=(",", ":")) + "\n\n"
                   for e in events) + "data: [DONE]\n\n"


def azure() -> None:
    msgs = [{"role": "user", "content": "Name the capital of France in one word."}]
    write("azure_chat", [
        # Deployment "gpt-4o-mini" runs gpt-4o-mini-2024-07-18: 2,400 prompt
        # tokens of which 1,280 were a prompt-cache hit, 40 out.
        interaction(AZURE.format("gpt-4o-mini"),
                    {"model": "gpt-4o-mini", "messages": msgs, "max_tokens": 256},
                    azure_json("chatcmpl-az-1", "gpt-4o-mini-2024-07-18", "Paris.",
                               openai_usage(2_400, 40, cached=1_280)), "application/json",
                    {"apim-request-id": ["7c1f0d0e-0000-4000-8000-000000000001"],
                     "x-ms-region": ["East US"]}),
        # Deployment "prod-chat", a name the caller chose: the response says it
        # runs gpt-4o-2024-11-20. 900 prompt tokens, 120 out.
        interaction(AZURE.format("prod-chat"),
                    {"model": "prod-chat", "messages": msgs, "max_tokens": 256},
                    azure_json("chatcmpl-az-2", "gpt-4o-2024-11-20", "Paris.",
                               openai_usage(900, 120)), "application/json",
                    {"apim-request-id": ["7c1f0d0e-0000-4000-8000-000000000002"],
                     "x-ms-region": ["East US"]}),
        # Deployment "gpt-4o-mini" again, after its owner redeployed it with
        # gpt-4o: the name says mini, the response says gpt-4o. 900 / 120.
        interaction(AZURE.format("gpt-4o-mini"),
                    {"model": "gpt-4o-mini", "messages": msgs, "max_tokens": 256},
                    azure_json("chatcmpl-az-5", "gpt-4o-2024-11-20", "Paris.",
                               openai_usage(900, 120)), "application/json",
                    {"apim-request-id": ["7c1f0d0e-0000-4000-8000-000000000005"],
                     "x-ms-region": ["East US"]}),
    ], "Azure OpenAI chat completions (api-version 2024-10-21)",
        "deployment gpt-4o-mini (2,400 prompt / 1,280 cached / 40 out); deployment prod-chat "
        "running gpt-4o-2024-11-20 (900 / 120); deployment gpt-4o-mini answering as "
        "gpt-4o-2024-11-20 (900 / 120).")
    write("azure_stream", [
        # Deployment "gpt-4.1" streamed: 3,000 prompt of which 2,048 cached, 90 out.
        interaction(AZURE.format("gpt-4.1"),
                    {"model": "gpt-4.1", "messages": msgs, "max_tokens": 2048,
                     "stream": True, "stream_options": {"include_usage": True}},
                    azure_sse("chatcmpl-az-3", "gpt-4.1-2025-04-14", ["Par", "is."],
                              openai_usage(3_000, 90, cached=2_048)), "text/event-stream"),
        # Deployment "o4-mini" asked to stream: litellm 1.110 sends Azure o-series
        # requests without "stream" and replays the JSON answer as chunks, so the
        # wire answer is a chat.completion: 1,500 prompt, 700 completion of which
        # 512 reasoning.
        interaction(AZURE.format("o4-mini"),
                    {"model": "o4-mini", "messages": msgs, "max_completion_tokens": 2048},
                    azure_json("chatcmpl-az-4", "o4-mini-2025-04-16", "Paris.",
                               openai_usage(1_500, 700, reasoning=512)), "application/json"),
    ], "Azure OpenAI chat completions streaming (api-version 2024-10-21)",
        "deployment gpt-4.1 streamed (3,000 prompt / 2,048 cached / 90 out); deployment "
        "o4-mini, which litellm fake-streams from one JSON answer (1,500 / 700 incl. 512 "
        "reasoning).")


# -- Bedrock --------------------------------------------------------------------------

BEDROCK = ("https://bedrock-runtime.us-east-1.amazonaws.com/model/"
           "us.anthropic.claude-sonnet-4-20250514-v1%3A0/")


def converse_usage(inp: int, out: int, read: int = 0, write: int = 0) -> dict[str, Any]:
    return {"inputTokens": inp, "outputTokens": out,
            "totalTokens": inp + out + read + write,
            "cacheReadInputTokens": read, "cacheWriteInputTokens": write}


def event(event_type: str, payload: dict[str, Any]) -> bytes:
    """One AWS event-stream message: prelude, prelude CRC, headers, payload, message CRC."""
    headers = b""
    for name, value in ((":event-type", event_type), (":content-type", "application/json"),
                        (":message-type", "event")):
        raw_name, raw_value = name.encode(), value.encode()
        headers += (struct.pack("!B", len(raw_name)) + raw_name + b"\x07"
                    + struct.pack("!H", len(raw_value)) + raw_value)
    body = json.dumps(payload, separators=(",", ":")).encode()
    total = 12 + len(headers) + len(body) + 4
    prelude = struct.pack("!II", total, len(headers))
    prelude += struct.pack("!I", binascii.crc32(prelude) & 0xFFFFFFFF)
    message = prelude + headers + body
    return message + struct.pack("!I", binascii.crc32(message) & 0xFFFFFFFF)


def bedrock() -> None:
    q = "Name the capital of France in one word."
    req = {"messages": [{"role": "user", "content": [{"text": q}]}],
           "inferenceConfig": {"maxTokens": 256}}
    # 1,800 uncached input, 4,000 cache-read, 1,000 cache-write (5 min), 400 out.
    u1 = converse_usage(1_800, 400, read=4_000, write=1_000)
    write("bedrock_converse", [
        interaction(BEDROCK + "converse", req, json.dumps({
            "metrics": {"latencyMs": 1840},
            "output": {"message": {"content": [{"text": "Paris."}], "role": "assistant"}},
            "stopReason": "end_turn", "usage": u1}), "application/json",
            {"x-amzn-RequestId": ["3f0b8f7e-0000-4000-8000-000000000001"]}),
    ], "the AWS Bedrock Converse API",
        "us.anthropic.claude-sonnet-4 (1,800 in / 4,000 cache read / 1,000 cache write / 400 out).")
    # Streamed: 2,600 uncached input, 6,000 cache-read, 250 out.
    u2 = converse_usage(2_600, 250, read=6_000)
    frames = b"".join([
        event("messageStart", {"p": "abcd", "role": "assistant"}),
        event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "Par"},
                                    "p": "abcdefgh"}),
        event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "is."},
                                    "p": "abcdefghij"}),
        event("contentBlockStop", {"contentBlockIndex": 0, "p": "abcdefghijk"}),
        event("messageStop", {"p": "abcdefghijklmn", "stopReason": "end_turn"}),
        event("metadata", {"metrics": {"latencyMs": 960}, "p": "abc", "usage": u2}),
    ])
    write("bedrock_converse_stream", [
        interaction(BEDROCK + "converse-stream", req, frames,
                    "application/vnd.amazon.eventstream",
                    {"x-amzn-RequestId": ["3f0b8f7e-0000-4000-8000-000000000002"]}),
    ], "the AWS Bedrock ConverseStream API (application/vnd.amazon.eventstream frames)",
        "us.anthropic.claude-sonnet-4 streamed (2,600 in / 6,000 cache read / 250 out).")


def bedrock_ttl() -> None:
    """Claude Sonnet 4.5 with a 1-hour cache write, through a regional (us.)
    and a global inference profile: the two are priced differently."""
    q = "Name the capital of France in one word."
    req = {"messages": [{"role": "user", "content": [{"text": q}, {"cachePoint": {
        "type": "default", "ttl": "1h"}}]}], "inferenceConfig": {"maxTokens": 256}}
    # 500 uncached input, 3,000 written to the cache with a 1-hour TTL, 200 out.
    usage = {**converse_usage(500, 200, write=3_000),
             "cacheDetails": [{"inputTokens": 3_000, "ttl": "1h"}]}
    write("bedrock_converse_ttl", [
        interaction(base + "converse", req, json.dumps({
            "metrics": {"latencyMs": 1320},
            "output": {"message": {"content": [{"text": "Paris."}], "role": "assistant"}},
            "stopReason": "end_turn", "usage": usage}), "application/json",
            {"x-amzn-RequestId": [f"3f0b8f7e-0000-4000-8000-00000000001{i}"]})
        for i, base in enumerate((
            "https://bedrock-runtime.us-east-1.amazonaws.com/model/"
            "us.anthropic.claude-sonnet-4-5-20250929-v1%3A0/",
            "https://bedrock-runtime.us-east-1.amazonaws.com/model/"
            "global.anthropic.claude-sonnet-4-5-20250929-v1%3A0/"))
    ], "the AWS Bedrock Converse API with cacheDetails (CacheDetail: ttl 5m | 1h)",
        "us. then global. claude-sonnet-4-5, each 500 in / 3,000 cache write (1 h) / 200 out.")


if __name__ == "__main__":
    gemini()
    azure()
    bedrock()
    bedrock_ttl()
