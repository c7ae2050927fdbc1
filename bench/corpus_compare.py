"""crew-budget, ``litellm.token_counter`` and tokencost on the development corpus.

    pip install tokencost          # once; the dev extra has it
    python bench/corpus_compare.py /path/to/corpus [--config FILE] [--worst N]

Prints three tables of the corpus scorer, measured in one run on the same
pairs: crew-budget (the scorer itself, running ``crew-budget estimate`` from
this interpreter's environment with ``--config``, by default the corpus's
``placeholder-prices.yaml``), ``litellm.token_counter`` and tokencost's
``count_message_tokens``. The corpus (recorded provider calls with the usage
they were billed; see its README) is read from the directory given, never
copied here: its ``score.py`` is imported from there for the grouping and the
billed counts, so all tables group and score pairs identically.

Each request is handed to the two libraries as a caller would: OpenAI bodies
as they are, an Anthropic ``system`` prepended as a system message;
``token_counter`` also gets the ``tools`` (tokencost takes none). tokencost
counts Claude models only through Anthropic's ``count_tokens`` HTTP API; the
bench is offline, so ``ANTHROPIC_API_KEY`` is removed for it and those
requests fail. A request a library cannot count (it raises) is scored as 0
tokens and reported, so failures are visible rather than dropped. tiktoken's
encodings are read from the copy litellm ships (``TIKTOKEN_CACHE_DIR``), as
crew-budget does, so nothing is downloaded.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.pop("ANTHROPIC_API_KEY", None)  # offline: tokencost must not call Anthropic
_LITELLM_SPEC = importlib.util.find_spec("litellm")
if _LITELLM_SPEC is not None and _LITELLM_SPEC.origin is not None:
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", os.path.join(
        os.path.dirname(_LITELLM_SPEC.origin), "litellm_core_utils", "tokenizers"))


def _load_scorer(corpus: Path) -> Any:
    spec = importlib.util.spec_from_file_location("corpus_score", corpus / "score.py")
    if spec is None or spec.loader is None:
        raise SystemExit(f"{corpus / 'score.py'} not found: pass the corpus directory")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _as_caller_sends(record: dict[str, Any]) -> tuple[str, list[Any], Any]:
    """(model, messages with an Anthropic system prepended, tools)."""
    body = record["request"]
    model = str(body.get("model") or record.get("model") or "")
    messages = list(body.get("messages") or [])
    system = body.get("system")
    if isinstance(system, list):
        system = "".join(b.get("text", "") for b in system if isinstance(b, dict))
    if system:
        messages = [{"role": "system", "content": system}, *messages]
    return model, messages, body.get("tools") or None


def _litellm_count(litellm: Any, record: dict[str, Any]) -> int:
    model, messages, tools = _as_caller_sends(record)
    return int(litellm.token_counter(model=model, messages=messages, tools=tools))


def _tokencost_count(tokencost: Any, record: dict[str, Any]) -> int:
    model, messages, _tools = _as_caller_sends(record)
    return int(tokencost.count_message_tokens(messages, model))


def _import_tokencost() -> Any:
    try:
        import tokencost
    except ImportError:
        raise SystemExit(
            "bench/corpus_compare.py: tokencost is not installed, so its column cannot be "
            "measured; install it (pip install tokencost, or pip install -e '.[dev]') and "
            "run again") from None
    logging.getLogger("tokencost").setLevel(logging.ERROR)  # one warning per call otherwise
    return tokencost


def _crew_budget_table(corpus: Path, config: Path) -> None:
    """The scorer's own table for ``crew-budget estimate`` (this environment's)."""
    script = Path(sys.executable).with_name("crew-budget")
    if not script.exists():
        raise SystemExit(f"{script} not found: pip install -e . in this environment")
    print(f"crew-budget {importlib.metadata.version('crew-budget')} estimate "
          "(the corpus scorer's own table)\n", flush=True)
    done = subprocess.run([sys.executable, str(corpus / "score.py"), "--estimator",
                           f"{script} estimate", "--config", str(config)], check=False)
    if done.returncode != 0:
        raise SystemExit(f"the corpus scorer failed (exit {done.returncode})")


def _table(score: Any, title: str, records: list[dict[str, Any]],
           count: Callable[[dict[str, Any]], int], worst: int) -> None:
    groups: dict[str, list[tuple[int, int]]] = {g: [] for g in score.GROUPS}
    everything: list[tuple[int, int]] = []
    failures = 0
    scored: list[tuple[int, int, dict[str, Any]]] = []
    for record in records:
        actual = score.actual_prompt_tokens(record)
        try:
            estimate = count(record)
        except Exception:  # counted and reported below, not hidden
            estimate, failures = 0, failures + 1
        groups[score.primary_group(record)].append((estimate, actual))
        everything.append((estimate, actual))
        scored.append((estimate, actual, record))
    print(f"\n{title}; within = |est-actual| <= max(1%, 2 tok); "
          "under>2% = est more than 2% below actual\n")
    print(f"{'group':<28}{'n':>5}{'within':>9}{'under>2%':>10}{'med err%':>10}{'med tok':>9}")
    print("-" * 71)
    for name in score.GROUPS:
        print(score.row(name, groups[name]))
    print("-" * 71)
    print(score.row("ALL", everything))
    print(f"\n{failures} request(s) it could not count (scored as 0)")
    if worst:
        print()
        scored.sort(key=lambda x: -abs(x[0] - x[1]) / x[1])
        for estimate, actual, record in scored[:worst]:
            print(f"{100 * (estimate - actual) / actual:>+8.1f}% {estimate:>8} {actual:>8}  "
                  f"{score.primary_group(record):<20} {score.model_of(record)[:32]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus", type=Path, help="the corpus directory (holds pairs.jsonl)")
    parser.add_argument("--config", type=Path, default=None,
                        help="budget YAML for crew-budget (default: the corpus's "
                        "placeholder-prices.yaml)")
    parser.add_argument("--worst", type=int, default=0, help="list the N largest relative errors")
    args = parser.parse_args()
    score = _load_scorer(args.corpus)
    tokencost = _import_tokencost()  # fail before any table if it is missing
    import litellm

    records = [r for r in (json.loads(line) for line in (args.corpus / "pairs.jsonl").open()
                           if line.strip())
               if r.get("api") in score.APIS and score.actual_prompt_tokens(r)]
    _crew_budget_table(args.corpus, args.config or args.corpus / "placeholder-prices.yaml")
    _table(score, f"litellm {importlib.metadata.version('litellm')} token_counter", records,
           lambda r: _litellm_count(litellm, r), args.worst)
    _table(score, f"tokencost {importlib.metadata.version('tokencost')} count_message_tokens",
           records, lambda r: _tokencost_count(tokencost, r), args.worst)
    return 0


if __name__ == "__main__":
    sys.exit(main())
