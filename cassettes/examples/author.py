"""Write the cassettes the examples replay (cassettes/examples/*.yaml).

    python cassettes/examples/author.py           # rewrite both cassettes
    python cassettes/examples/author.py --sizes   # ... and print each request's text size

Responses (content, tool calls and every ``usage`` number) are chosen by hand
in the tables below and written in api.openai.com's exact Chat Completions
wire format, through the helpers of ``cassettes/langchain/author.py``. The
request side is then filled in by running the example itself against the
cassette (offline) and storing the bodies it really sent, with only
non-secret headers. ``--sizes`` prints an ``o200k_base`` count of each
request's message text and tool schemas: the plausibility check used when
the ``prompt_tokens`` were picked (billed prompts run a little larger:
message framing and tool formatting). Nothing here asks crew-budget's
estimator for a number.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def _load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


lc = _load("lc_author", ROOT / "cassettes" / "langchain" / "author.py")

HDR = """# Hand-written OpenAI Chat Completions traffic replayed by {example}
# (and tests/test_examples.py). Responses (content, tool calls, usage) are written by hand in
# the exact wire format of api.openai.com; the usage numbers are plausible counts picked by
# hand (see cassettes/examples/author.py --sizes), never computed by crew-budget. Request
# bodies are what the example sends; replay matches on method + URL, in order.
# See cassettes/README.md.
"""

# -- examples/langchain_agent.py: gpt-4o researcher that always searches once more ------
# (prompt_tokens, completion_tokens, search query) per model call. Call 1: the system
# prompt (22 o200k tokens), the question (11), the web_search schema and message framing.
# Each next call adds the previous tool call (~27 tokens with framing) and the snippet it
# returned (106, 90, 91, 82, 82 o200k tokens). Completions: one short tool call each.
AGENT_CALLS = [
    (131, 18, "solid-state battery electrolyte manufacturing problems"),
    (264, 17, "solid-state battery lithium dendrites separator"),
    (381, 19, "solid-state battery production scale cost parity"),
    (499, 18, "oxide garnet electrolyte cathode interface degradation"),
    (608, 20, "solid-state battery prototype cells cycle life automakers"),
    (717, 21, "solid-state battery fast charging degradation"),
]

# -- examples/litellm_sdk.py: gpt-4o-mini two-sentence answers, sync then async -----------
# prompt_tokens: the question (14-16 o200k tokens) + 7 (message framing and reply priming);
# completion_tokens: the o200k length of the answer written here.
SDK_CALLS = [
    (22, 54, "Solid-state cells replace the flammable liquid electrolyte with a solid one, "
             "so they can pair with a lithium-metal anode for more range per kilogram and "
             "are harder to set on fire; the catch is making thin, crack-free layers cheaply "
             "at gigawatt-hour scale."),
    (23, 41, "Dendrites are needle-like lithium deposits that grow through the separator "
             "during fast charging; when one reaches the cathode it shorts the cell, which is "
             "why solid electrolytes must block them at high current."),
    (23, 36, "Sulfide electrolytes conduct ions almost as fast as liquids but release "
             "hydrogen sulfide in moist air, so every production step must happen in dry "
             "rooms, which raises factory cost."),
    (22, 41, "Oxide garnets such as LLZO are stable in air but brittle and must be sintered "
             "above 1000 C, and the cathode loses contact with them as particles swell and "
             "shrink during cycling."),
    (22, 30, "Automakers want at least 1000 full cycles in full-size cells before launching; "
             "most published results still come from small lab cells under high pressure."),
    (22, 31, "Pilot lines make a few hundred megawatt-hours a year, so analysts expect cost "
             "parity with liquid lithium-ion cells in the early 2030s."),
]


def agent_response(i: int) -> dict[str, Any]:
    prompt, completion, query = AGENT_CALLS[i]
    call = {"id": f"call_ex{i + 1}S3arch{i + 1:02d}", "type": "function",
            "function": {"name": "web_search", "arguments": json.dumps({"query": query})}}
    return lc.chat_json(f"chatcmpl-ex-agent-{i + 1}", 1764079200 + 3 * i, None,
                        lc.usage(prompt, completion), tool_calls=[call], finish="tool_calls")


def sdk_response(i: int) -> dict[str, Any]:
    prompt, completion, text = SDK_CALLS[i]
    return lc.chat_json(f"chatcmpl-ex-sdk-{i + 1}", 1764079300 + 2 * i, text,
                        lc.usage(prompt, completion))


def write(name: str, example: str, responses: list[dict[str, Any]],
          bodies: list[dict[str, Any]]) -> Path:
    interactions = [
        lc.interaction(bodies[i] if i < len(bodies) else {"note": "not reached: the budget "
                       "stops the example before this request"}, 200, resp, "application/json")
        for i, resp in enumerate(responses)
    ]
    path = HERE / f"{name}.yaml"
    text = yaml.dump({"interactions": interactions, "version": 1}, sort_keys=False, width=100,
                     allow_unicode=True)
    path.write_text(HDR.format(example=example) + text)
    return path


def captured(run: Any, path: Path) -> list[dict[str, Any]]:
    """Run an example against ``path`` and return the request bodies it sent."""
    sys.path.insert(0, str(ROOT))
    from tests.fixtures.http_replay import install_live_capture, live_bodies

    install_live_capture()
    import vcr

    bodies: list[dict[str, Any]] = []
    original = vcr.VCR.use_cassette

    def spying(self: Any, *args: Any, **kwargs: Any) -> Any:
        manager = original(self, *args, **kwargs)

        class Spy:
            def __enter__(self) -> Any:
                self.cassette = manager.__enter__()
                return self.cassette

            def __exit__(self, *exc: Any) -> Any:
                bodies.extend(live_bodies(self.cassette))
                return manager.__exit__(*exc)

        return Spy()

    vcr.VCR.use_cassette = spying  # type: ignore[method-assign]
    try:
        run()
    finally:
        vcr.VCR.use_cassette = original  # type: ignore[method-assign]
    return bodies


def sizes(bodies: list[dict[str, Any]]) -> None:
    import tiktoken

    enc = tiktoken.get_encoding("o200k_base")
    for n, body in enumerate(bodies, 1):
        text = json.dumps(body.get("messages", [])) + json.dumps(body.get("tools", []))
        print(f"  request {n}: ~{len(enc.encode(text))} o200k tokens of JSON text")


def main() -> None:
    agent_responses = [agent_response(i) for i in range(len(AGENT_CALLS))]
    sdk_responses = [sdk_response(i) for i in range(len(SDK_CALLS))]
    # Pass 1: responses only; pass 2: the same with the request bodies the examples sent.
    write("langchain_agent", "examples/langchain_agent.py", agent_responses, [])
    write("litellm_sdk", "examples/litellm_sdk.py", sdk_responses, [])
    agent = _load("ex_langchain_agent", ROOT / "examples" / "langchain_agent.py")
    sdk = _load("ex_litellm_sdk", ROOT / "examples" / "litellm_sdk.py")
    agent_bodies = captured(lambda: agent.main([]), HERE / "langchain_agent.yaml")
    sdk_bodies = captured(lambda: sdk.main([]), HERE / "litellm_sdk.yaml")
    print("wrote", write("langchain_agent", "examples/langchain_agent.py", agent_responses,
                         agent_bodies))
    print("wrote", write("litellm_sdk", "examples/litellm_sdk.py", sdk_responses, sdk_bodies))
    if "--sizes" in sys.argv:
        print("langchain_agent:")
        sizes(agent_bodies)
        print("litellm_sdk:")
        sizes(sdk_bodies)


if __name__ == "__main__":
    main()
