"""Write the hand-written responses of the ``invisible_*`` cassettes.

The responses below (text, JSON answers of structured calls, and every
``usage`` number) are written by hand: each prompt size is an o200k count of
the request CrewAI sends, rounded the way the API reports it (checked with
``author.py NAME --sizes``), each completion size a count of the answer text.
They are never computed by crew-budget. After writing, ``author.py NAME``
fills in the exact request bodies from the real code path.

    python cassettes/crewai/write_invisible.py        # rewrites all invisible_*.yaml
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

CHAT = "https://api.openai.com/v1/chat/completions"
RESPONSES = "https://api.openai.com/v1/responses"
MODEL = "gpt-4o-mini-2024-07-18"
FACT = ("Sodium-ion batteries use abundant sodium instead of lithium, which cuts cell material "
        "cost by roughly a third.")


def _usage(prompt: int, completion: int, reasoning: int = 0) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt, "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": reasoning, "audio_tokens": 0,
                                      "accepted_prediction_tokens": 0,
                                      "rejected_prediction_tokens": 0},
    }


def chat(rid: str, content: str | None, prompt: int, completion: int,
         tool_calls: list[dict[str, Any]] | None = None, model: str = MODEL,
         reasoning: int = 0) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None,
                               "annotations": []}
    if tool_calls:
        message["tool_calls"] = tool_calls
    body = {
        "id": rid, "object": "chat.completion", "created": 1764064000, "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": None,
                     "finish_reason": "tool_calls" if tool_calls else "stop"}],
        "usage": _usage(prompt, completion, reasoning),
        "service_tier": "default", "system_fingerprint": "fp_cbinv01",
    }
    return _interaction(CHAT, json.dumps(body, indent=2) + "\n", "application/json")


def chat_sse(rid: str, pieces: list[str], prompt: int, completion: int) -> dict[str, Any]:
    def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
        return "data: " + json.dumps({
            "id": rid, "object": "chat.completion.chunk", "created": 1764064000, "model": MODEL,
            "service_tier": "default", "system_fingerprint": "fp_cbinv01",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
            "usage": None,
        }) + "\n\n"

    text = chunk({"role": "assistant", "content": "", "refusal": None})
    text += "".join(chunk({"content": p}) for p in pieces)
    text += chunk({}, "stop")
    text += "data: " + json.dumps({
        "id": rid, "object": "chat.completion.chunk", "created": 1764064000, "model": MODEL,
        "service_tier": "default", "system_fingerprint": "fp_cbinv01", "choices": [],
        "usage": _usage(prompt, completion),
    }) + "\n\n"
    text += "data: [DONE]\n\n"
    return _interaction(CHAT, text, "text/event-stream; charset=utf-8")


def responses(rid: str, text: str, prompt: int, completion: int,
              previous: str | None = None) -> dict[str, Any]:
    body = {
        "id": rid, "object": "response", "created_at": 1764064000, "status": "completed",
        "background": False, "error": None, "incomplete_details": None, "instructions": None,
        "max_output_tokens": None, "model": MODEL,
        "output": [{"id": "msg_" + rid[5:], "type": "message", "status": "completed",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": text, "annotations": [],
                                 "logprobs": []}]}],
        "parallel_tool_calls": True, "previous_response_id": previous, "reasoning":
            {"effort": None, "summary": None},
        "service_tier": "default", "store": True, "temperature": 1.0,
        "text": {"format": {"type": "text"}, "verbosity": "medium"}, "tool_choice": "auto",
        "tools": [], "top_p": 1.0, "truncation": "disabled",
        "usage": {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": 0},
                  "output_tokens": completion,
                  "output_tokens_details": {"reasoning_tokens": 0},
                  "total_tokens": prompt + completion},
        "user": None, "metadata": {},
    }
    return _interaction(RESPONSES, json.dumps(body, indent=2) + "\n", "application/json")


def _interaction(uri: str, body: str, content_type: str) -> dict[str, Any]:
    return {
        "request": {"body": "", "headers": {"accept": ["application/json"],
                                            "content-type": ["application/json"]},
                    "method": "POST", "uri": uri},
        "response": {"body": {"string": body},
                     "headers": {"Content-Type": [content_type],
                                 "openai-version": ["2020-10-01"]},
                     "status": {"code": 200, "message": "OK"}},
    }


def delegate(rid: str, prompt: int, completion: int) -> dict[str, Any]:
    """The manager's tool call handing the task to the researcher."""
    args = {"task": "State one fact about sodium-ion batteries.",
            "context": "One sentence, with its source.", "coworker": "researcher"}
    return chat(rid, None, prompt, completion, tool_calls=[{
        "id": "call_inv_delegate", "type": "function",
        "function": {"name": "delegate_work_to_coworker", "arguments": json.dumps(args)}}])


CASSETTES: dict[str, list[dict[str, Any]]] = {
    # Crew(stream=True), one agent: one SSE answer, usage in the last chunk.
    "invisible_stream": [
        chat_sse("chatcmpl-inv-stream", ["Sodium-ion batteries use abundant sodium",
                                         " instead of lithium, which cuts cell material",
                                         " cost by roughly a third."], 84, 23),
    ],
    # pair_crew on the Responses API, one auto-chaining LLM shared by both agents.
    "invisible_responses": [
        responses("resp_inv_0001", FACT, 84, 23),
        responses("resp_inv_0002", "Cheaper Cells Ahead: Sodium Steps In for Lithium", 117, 12,
                  previous="resp_inv_0001"),
    ],
    # Hierarchical crew, task with output_pydantic: manager delegates, researcher
    # answers, manager answers, then the manager's converter (no agent) structures it.
    "invisible_hierarchical": [
        delegate("chatcmpl-inv-h1", 722, 48),
        chat("chatcmpl-inv-h2", FACT, 112, 23),
        chat("chatcmpl-inv-h3", FACT, 818, 23),
        chat("chatcmpl-inv-h4", json.dumps({"fact": FACT, "source": "CATL 2025 cell data"}),
             271, 41),
    ],
    # Text guardrail: the answer, then CrewAI's "Guardrail Agent" judging it.
    "invisible_guardrail": [
        chat("chatcmpl-inv-g1", FACT, 84, 23),
        chat("chatcmpl-inv-g2", json.dumps({"valid": True, "feedback": None}), 229, 9),
    ],
    # planning=True: the planner's plan (structured), then the task.
    "invisible_planning": [
        chat("chatcmpl-inv-p1", json.dumps({"list_of_plans_per_task": [{
            "task_number": 1, "task": "State one fact about sodium-ion batteries.",
            "plan": "1. Recall a well-established fact about sodium-ion cells. 2. Name its "
                    "source. 3. Answer in one sentence."}]}), 690, 52),
        chat("chatcmpl-inv-p2", FACT, 109, 23),
    ],
    # crew.test(n_iterations=1): the task, then the evaluator's score (structured).
    "invisible_test": [
        chat("chatcmpl-inv-t1", FACT, 84, 23),
        chat("chatcmpl-inv-t2", json.dumps({"quality": 9.0}), 452, 6),
    ],
    # Crew memory (a callable embedder, local LanceDB): the answer, then memory's
    # own LLM (a copy CrewAI makes of the one you give Memory) extracting and
    # analysing what to remember, on its background save thread.
    "invisible_memory": [
        chat("chatcmpl-inv-m1", FACT, 448, 23),
        chat("chatcmpl-inv-m2", json.dumps({"memories": [
            "Sodium-ion cells cut cell material cost by roughly a third versus lithium-ion."]}),
             560, 21),
        chat("chatcmpl-inv-m3", json.dumps({
            "suggested_scope": "/batteries/sodium-ion", "categories": ["chemistry", "cost"],
            "importance": 0.6, "extracted_metadata": {
                "entities": ["sodium-ion batteries"], "dates": [], "topics": ["battery cost"]}}),
             243, 62),
    ],
    # A reasoning model that thinks at length: 2,011 output tokens, 1,984 of them
    # reasoning (the shape of a gpt-5-nano step seen in CrewAI's own suite).
    "invisible_reasoning": [
        chat("chatcmpl-inv-r1", FACT, 83, 2011, model="gpt-5-nano-2025-08-07", reasoning=1984),
    ],
    # agent.kickoff() outside any crew.
    "invisible_agent_kickoff": [
        chat("chatcmpl-inv-a1", FACT, 52, 23),
    ],
}


def main() -> int:
    import importlib.util

    spec = importlib.util.spec_from_file_location("author", Path(__file__).with_name("author.py"))
    assert spec is not None and spec.loader is not None
    author = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(author)
    _dump = author._dump

    for name, interactions in CASSETTES.items():
        _dump({"interactions": interactions, "version": 1},
              ROOT / "cassettes" / "crewai" / f"{name}.yaml")
        print(f"cassettes/crewai/{name}.yaml: {len(interactions)} responses")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
