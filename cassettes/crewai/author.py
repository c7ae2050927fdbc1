"""Write the request side of a hand-written CrewAI cassette from the real code path.

The responses in ``cassettes/crewai/<name>.yaml`` (content, tool calls,
``usage``) are written by hand. The requests are not: this script runs the
scenario of the same name (``tests/crewai/scenarios.py``) against the
cassette, captures every request CrewAI and crew-budget actually send, and
stores their bodies and non-secret headers in the matching interactions, so
a reader sees the exact wire traffic the responses answer.

    python cassettes/crewai/author.py research_crew            # rewrite requests
    python cassettes/crewai/author.py research_crew --sizes    # also print prompt sizes

``--sizes`` prints a rough prompt size per request (tiktoken ``o200k_base``
over message contents and tool schemas), a plausibility check for the
hand-written ``prompt_tokens``; the usage values themselves are edited by hand.
No network is used: requests are answered from the cassette.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

for key, value in {
    "LITELLM_LOCAL_MODEL_COST_MAP": "True", "HF_HUB_OFFLINE": "1",
    "CREWAI_DISABLE_TELEMETRY": "true", "CREWAI_DISABLE_TRACKING": "true",
    "OTEL_SDK_DISABLED": "true", "CREWAI_TRACING_ENABLED": "false",
    "OPENAI_API_KEY": "sk-test", "ANTHROPIC_API_KEY": "sk-ant-test",
}.items():
    os.environ.setdefault(key, value)

KEEP_HEADERS = ("accept", "content-type", "anthropic-version", "x-stainless-helper-method",
                "x-stainless-stream-helper")


def _dump(data: dict[str, Any], path: Path) -> None:
    import yaml

    class Dumper(yaml.SafeDumper):
        def ignore_aliases(self, data: Any) -> bool:
            return True

    def text(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
        style = "|" if "\n" in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    Dumper.add_representer(str, text)
    with path.open("w", encoding="utf-8") as fh:
        yaml.dump(data, fh, Dumper=Dumper, sort_keys=False, width=100, allow_unicode=True)


def _size(body: dict[str, Any]) -> int:
    from crew_budget.tokens import litellm_tokenizer_dir

    tokenizers = litellm_tokenizer_dir()
    if tokenizers is not None:  # offline: litellm bundles the encodings
        os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(tokenizers))
    import tiktoken

    enc = tiktoken.get_encoding("o200k_base")
    parts: list[str] = []
    for msg in body.get("messages", []):
        content = msg.get("content")
        parts.append(content if isinstance(content, str) else json.dumps(content))
        if msg.get("tool_calls"):
            parts.append(json.dumps(msg["tool_calls"]))
    system = body.get("system")
    if isinstance(system, str):
        parts.append(system)
    elif isinstance(system, list):
        parts.extend(str(block.get("text", "")) for block in system if isinstance(block, dict))
    if body.get("tools"):
        parts.append(json.dumps(body["tools"]))
    return sum(len(enc.encode(p or "")) for p in parts)


def main() -> int:
    from tests.crewai import replay as rp
    from tests.crewai.scenarios import SCENARIOS
    from vcr.cassette import Cassette

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name", choices=sorted(SCENARIOS))
    parser.add_argument("--sizes", action="store_true")
    args = parser.parse_args()

    played: list[tuple[int, Any]] = []
    original = Cassette.play_response

    def capture(self: Cassette, request: Any) -> Any:
        before = dict(self.play_counts)
        response = original(self, request)
        index = next(i for i, n in self.play_counts.items() if before.get(i, 0) != n)
        played.append((index, request))
        return response

    Cassette.play_response = capture  # type: ignore[method-assign]
    try:
        with rp.replay(args.name, mode="none"):
            try:
                SCENARIOS[args.name]()
            except Exception as exc:  # the scripted crew may end by running out of answers
                print(f"scenario ended with {type(exc).__name__}: {str(exc)[:120]}")
    finally:
        Cassette.play_response = original  # type: ignore[method-assign]

    path = rp.CASSETTE_DIR / f"{args.name}.yaml"
    data = rp.load(args.name)
    for index, request in played:
        body = request.body.decode() if isinstance(request.body, bytes) else request.body
        headers = {k: [v] for k, v in sorted(request.headers.items()) if k.lower() in KEEP_HEADERS}
        data["interactions"][index]["request"] = {
            "body": body, "headers": headers, "method": request.method, "uri": request.uri,
        }
        if args.sizes:
            print(f"interaction {index}: ~{_size(json.loads(body))} prompt tokens (o200k, "
                  "contents + tools)")
    _dump(data, path)
    total = len(data["interactions"])
    print(f"{path.relative_to(ROOT)}: {len(played)} of {total} requests written")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
