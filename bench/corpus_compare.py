"""``litellm.token_counter`` on the development corpus, in the scorer's table.

    python bench/corpus_compare.py /path/to/corpus [--worst N]

The corpus (recorded provider calls with the usage they were billed; see its
README) is read from the directory given, never copied here: its ``score.py``
is imported from there for the grouping and the billed counts, so both tables
group and score pairs identically. crew-budget's own table comes from the
corpus scorer itself::

    PYTHONPATH=src python3 /path/to/corpus/score.py \\
        --estimator ".venv/bin/crew-budget estimate" \\
        --config /path/to/corpus/placeholder-prices.yaml

Each request is handed to ``litellm.token_counter(model, messages, tools)``
as a caller would: OpenAI bodies as they are, an Anthropic ``system`` prepended
as a system message. A request it cannot count (it raises) is scored as 0
tokens and reported, so failures are visible rather than dropped.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _load_scorer(corpus: Path) -> Any:
    spec = importlib.util.spec_from_file_location("corpus_score", corpus / "score.py")
    if spec is None or spec.loader is None:
        raise SystemExit(f"{corpus / 'score.py'} not found: pass the corpus directory")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _litellm_count(litellm: Any, record: dict[str, Any]) -> int:
    body = record["request"]
    model = str(body.get("model") or record.get("model") or "")
    messages = list(body.get("messages") or [])
    system = body.get("system")
    if isinstance(system, list):
        system = "".join(b.get("text", "") for b in system if isinstance(b, dict))
    if system:
        messages = [{"role": "system", "content": system}, *messages]
    tools = body.get("tools") or None
    return int(litellm.token_counter(model=model, messages=messages, tools=tools))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus", type=Path, help="the corpus directory (holds pairs.jsonl)")
    parser.add_argument("--worst", type=int, default=0, help="list the N largest relative errors")
    args = parser.parse_args()
    score = _load_scorer(args.corpus)
    import litellm

    records = [json.loads(line) for line in (args.corpus / "pairs.jsonl").open()
               if line.strip()]
    groups: dict[str, list[tuple[int, int]]] = {g: [] for g in score.GROUPS}
    everything: list[tuple[int, int]] = []
    failures = 0
    scored: list[tuple[int, int, dict[str, Any]]] = []
    for record in records:
        if record.get("api") not in score.APIS:
            continue
        actual = score.actual_prompt_tokens(record)
        if not actual:
            continue
        try:
            estimate = _litellm_count(litellm, record)
        except Exception:  # counted and reported below, not hidden
            estimate, failures = 0, failures + 1
        groups[score.primary_group(record)].append((estimate, actual))
        everything.append((estimate, actual))
        scored.append((estimate, actual, record))
    print(f"litellm {importlib.metadata.version('litellm')} token_counter; "
          "within = |est-actual| <= max(1%, 2 tok); under>2% = est more than 2% below actual\n")
    print(f"{'group':<28}{'n':>5}{'within':>9}{'under>2%':>10}{'med err%':>10}{'med tok':>9}")
    print("-" * 71)
    for name in score.GROUPS:
        print(score.row(name, groups[name]))
    print("-" * 71)
    print(score.row("ALL", everything))
    print(f"\n{failures} request(s) token_counter could not count (scored as 0)")
    if args.worst:
        print()
        scored.sort(key=lambda x: -abs(x[0] - x[1]) / x[1])
        for estimate, actual, record in scored[:args.worst]:
            print(f"{100 * (estimate - actual) / actual:>+8.1f}% {estimate:>8} {actual:>8}  "
                  f"{score.primary_group(record):<20} {score.model_of(record)[:32]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
