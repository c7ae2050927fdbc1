"""Replay recorded calls through one tight budget, with and without the estimate margin.

    python bench/margin_replay.py /path/to/corpus [--fractions 0.1,0.25,0.5,0.75,0.9]
        [--in-flight 1,8]

The corpus (recorded provider calls with the usage they were billed; see its
README) is read from the directory given, never copied here: its ``score.py``
is imported from there for which pairs count and what each one billed as
prompt, and its ``placeholder-prices.yaml`` prices the models no price list
knows. Each recorded call goes through a real ``Guard`` on a ``memory://``
ledger: ``preflight`` with the recorded request (model, messages, tools,
system, max_tokens and the other estimate inputs, as ``crew-budget
estimate`` reads them), then ``settle`` with the recorded ``usage``.
``--in-flight K`` reserves K calls before settling them, as K agents would.

Where the recorded request set no output cap, the guard injects one (the
role's ``max_output_tokens``) and a real provider would stop there; a
recorded answer longer than that cap is cut to it (counted as "outputs
cut"), so every overrun left is the prompt estimate's.

Each run: one role, one daily limit of ``fraction`` x the whole corpus's
billed cost. Two passes per run: a generous role first (so the margin has
been learned, as in a long-running deployment; without the margin this pass
changes nothing but the in-process calibration, which it also warms), then
the tight one. Reported per run, with the margin off (``estimate_margin:
{enabled: false}``) and on (defaults):

- max committed: the most ``spent + reserved`` reached, after any step,
  against the limit (the hard-limit invariant: at or below 100 %)
- over: settles that put committed spend above the limit, and by how much
- overruns: settles above their own reservation (whatever the limit)
- blocked-but-fit: calls refused although their billed cost fitted in what
  was left (the price of the margin)
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import os
import sys
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from crew_budget import BudgetExceeded, Guard
from crew_budget.cli.estimate import _request  # how `estimate` reads a body
from crew_budget.config import load_config
from crew_budget.errors import CrewBudgetError
from crew_budget.money import from_nano, to_nano
from crew_budget.usage import cost_nano_of, parse_usage


def _load_scorer(corpus: Path) -> Any:
    spec = importlib.util.spec_from_file_location("corpus_score", corpus / "score.py")
    if spec is None or spec.loader is None:
        raise SystemExit(f"{corpus / 'score.py'} not found: pass the corpus directory")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass
class Call:
    body: dict[str, Any]
    request: dict[str, Any]
    usage: dict[str, Any]


@dataclass
class Result:
    limit: int
    max_committed: int = 0
    over_steps: int = 0
    over_nano: int = 0
    overruns: int = 0
    overrun_nano: int = 0
    granted: int = 0
    blocked: int = 0
    blocked_fit: int = 0
    cut: int = 0
    spent: int = 0
    margins: dict[str, str] = field(default_factory=dict)


def _cut_output(usage: dict[str, Any], cap: int | None) -> tuple[dict[str, Any], bool]:
    """``usage`` with its output cut to ``cap`` (the injected max_tokens)."""
    if cap is None:
        return usage, False
    for key in ("completion_tokens", "output_tokens"):
        value = usage.get(key)
        if isinstance(value, int) and value > cap:
            return {**usage, key: cap}, True
    return usage, False


def load_calls(corpus: Path, score: Any) -> list[Call]:
    calls = []
    for line in (corpus / "pairs.jsonl").open(encoding="utf-8"):
        rec = json.loads(line)
        if rec.get("api") not in score.APIS or not score.actual_prompt_tokens(rec):
            continue
        body = dict(rec["request"])
        if not body.get("model") and rec.get("model"):
            body["model"] = rec["model"]
        try:
            request = _request("the request", body, None)
        except Exception:
            continue
        calls.append(Call(body, request, dict(rec["usage"])))
    return calls


MARGIN: dict[str, Any] = {}  # estimate_margin settings of the "on" runs (defaults)


def _config(prices: dict[str, Any], limit: int | None, margin: bool) -> dict[str, Any]:
    roles: dict[str, Any] = {"learn": {"daily": "1000000"}}
    if limit is not None:
        roles["tight"] = {"daily": str(from_nano(limit))}
    return {"prices": prices, "roles": roles,
            "estimate_margin": MARGIN if margin else {"enabled": False}}


def billed_total(calls: list[Call], prices: dict[str, Any]) -> int:
    guard = Guard(_config(prices, None, False), "memory://", start_alerts=False)
    total = 0
    for c in calls:
        try:
            price = guard.price(c.request["model"])
            total += cost_nano_of(parse_usage(c.usage), price)
        except CrewBudgetError:
            continue
    return total


def _billed_output(usage: dict[str, Any]) -> int:
    for key in ("completion_tokens", "output_tokens"):
        value = usage.get(key)
        if isinstance(value, int):
            return max(1, value)
    return 1


def replay(calls: list[Call], prices: dict[str, Any], limit: int, margin: bool,
           in_flight: int, output: str) -> Result:
    guard = Guard(_config(prices, limit, margin), "memory://", start_alerts=False)
    result = Result(limit)
    for role in ("learn", "tight"):
        batch: list[tuple[Any, dict[str, Any]]] = []
        for i, c in enumerate(calls):
            r = c.request
            try:
                # "billed": max_tokens is what the call wrote, so the output part of
                # the reservation has no slack and only the prompt estimate can miss.
                cap = _billed_output(c.usage) if output == "billed" else r["max_tokens"]
                ticket = guard.preflight(role, r["model"], r["messages"], r["tools"],
                                         cap, system=r["system"], extra=r["extra"])
            except BudgetExceeded as exc:
                if role == "tight":
                    result.blocked += 1
                    # Fitted: what it billed was within what the limit left.
                    true = cost_nano_of(parse_usage(c.usage), guard.price(r["model"]))
                    if to_nano(exc.spent) + to_nano(exc.reserved) + true <= limit:
                        result.blocked_fit += 1
                ticket = None
            except CrewBudgetError:
                ticket = None  # unpriced / unreadable: not part of the measure
            if ticket is not None:
                usage, cut = _cut_output(c.usage, ticket.max_tokens)
                batch.append((ticket, usage))
                if role == "tight":
                    result.granted += 1
                    result.cut += cut
            if len(batch) >= in_flight or i == len(calls) - 1:
                for ticket, usage in batch:
                    settled = guard.settle(ticket, usage)
                    if role != "tight":
                        continue
                    cost, reserved = to_nano(settled.cost), to_nano(ticket.estimate)
                    if cost > reserved:
                        result.overruns += 1
                        result.overrun_nano += cost - reserved
                    row = next(s for s in guard.status("tight") if s.scope == "role:tight")
                    committed = to_nano(row.spent) + to_nano(row.reserved)
                    result.max_committed = max(result.max_committed, committed)
                    if committed > limit:
                        result.over_steps += 1
                        result.over_nano = max(result.over_nano, committed - limit)
                batch = []
    row = next(s for s in guard.status("tight") if s.scope == "role:tight")
    result.spent = to_nano(row.spent)
    result.margins = {v.family: f"{float(v.margin) * 100:.1f}%" for v in guard.margins.views()
                      if v.active}
    guard.close()
    return result


def _usd(nano: int) -> str:
    return f"${from_nano(nano).quantize(Decimal('0.000001'))}"


def main() -> int:
    import logging

    logging.getLogger("crew_budget").setLevel(logging.ERROR)  # OVERRUN lines: counted below
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus", type=Path, help="the corpus directory (holds pairs.jsonl)")
    parser.add_argument("--fractions", default="0.1,0.25,0.5,0.75,0.9",
                        help="limits, as fractions of the corpus's billed total")
    parser.add_argument("--in-flight", default="1,8", help="calls reserved before settling")
    parser.add_argument("--margins", action="store_true", help="list the learned margins")
    parser.add_argument("--output", default="billed,request",
                        help="max_tokens per call: billed (what it wrote: no output slack, the "
                        "worst case) and/or request (as recorded, else the injected cap)")
    parser.add_argument("--quantile", help="estimate_margin quantile of the 'on' runs")
    parser.add_argument("--max", help="estimate_margin max of the 'on' runs")
    args = parser.parse_args()
    MARGIN.update({k: v for k, v in (("quantile", args.quantile), ("max", args.max)) if v})
    score = _load_scorer(args.corpus)
    prices = dict(load_config(args.corpus / "placeholder-prices.yaml").model_dump(
        mode="json")["prices"])
    calls = load_calls(args.corpus, score)
    total = billed_total(calls, prices)
    print(f"{len(calls)} recorded calls, billed {_usd(total)} in all (placeholder prices for "
          "the models no price list knows)\n")
    head = (f"{'output':>7} {'limit':>6} {'K':>2} {'margin':>6} {'max committed':>22} {'over':>14} "
            f"{'overruns':>16} {'granted':>7} {'blocked':>7} {'blocked-but-fit':>15}")
    print(head)
    print("-" * len(head))
    last: Result | None = None
    runs = itertools.product(args.output.split(","),
                             (int(x) for x in args.in_flight.split(",")),
                             (Decimal(x) for x in args.fractions.split(",")))
    for output, k, fraction in runs:
        limit = int(total * fraction)
        for margin in (False, True):
            r = replay(calls, prices, limit, margin, k, output)
            pct = Decimal(r.max_committed * 100) / limit
            print(f"{output:>7} {float(fraction) * 100:>5.0f}% {k:>2} "
                  f"{'on' if margin else 'off':>6} "
                  f"{_usd(r.max_committed):>13} {pct:>7.2f}% "
                  f"{r.over_steps:>3} {_usd(r.over_nano):>10} "
                  f"{r.overruns:>3} {_usd(r.overrun_nano):>12} {r.granted:>7} "
                  f"{r.blocked:>7} {r.blocked_fit:>15}")
            last = r
    if args.margins and last is not None:
        print("\nmargins learned (the last run's settings; defaults p95, max 100 %, "
              "from 20 settles):")
        for family, value in sorted(last.margins.items()):
            print(f"  {family:<48} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
