"""LiteLLM SDK calls, sync and async, under per-role dollar budgets (``BudgetLogger``).

    python examples/litellm_sdk.py           # offline: replays recorded HTTP, no key needed
    python examples/litellm_sdk.py --live    # real OpenAI calls (needs OPENAI_API_KEY)

One ``BudgetLogger`` is registered in ``litellm.callbacks``. The async half
calls plain ``litellm.acompletion``: the logger blocks a call that does not
fit in litellm's own pre-call hook and settles the rest from their usage.
litellm's sync ``completion`` gives callbacks no way to block a call, so the
sync half calls ``crew_budget.litellm.completion``, the same function budgeted
before it is sent. The role comes from ``metadata={"crew_budget_role": ...}``;
each role has $0.00017 a day and a 200-token output cap (injected as
``max_tokens``), so each side answers twice and is refused the third time,
with ``CrewBudgetExceededError`` (a ``litellm.BudgetExceededError`` and a
``crew_budget.BudgetExceeded``) and no HTTP request.

Offline, the OpenAI traffic is replayed from
``cassettes/examples/litellm_sdk.yaml`` (hand-written responses, see
``cassettes/README.md``) and spend goes to a ``memory://`` ledger.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # offline: no price-map fetch

import litellm  # after the offline switch above

from crew_budget.guard import GuardEvent
from crew_budget.litellm import BudgetLogger, CrewBudgetExceededError, completion

HERE = Path(__file__).resolve().parent
CASSETTE = HERE.parent / "cassettes" / "examples" / "litellm_sdk.yaml"
MODEL = "gpt-4o-mini"
BUDGETS = {"roles": {
    "support": {"daily": "0.00017", "max_output_tokens": 200},  # the sync calls
    "triage": {"daily": "0.00017", "max_output_tokens": 200},   # the async calls
}}
SYNC_QUESTIONS = (
    "In two sentences: why do carmakers want solid-state batteries at all?",
    "In two sentences: what is a lithium dendrite and why does it matter?",
    "In two sentences: what makes sulfide electrolytes hard to manufacture?",
)
ASYNC_QUESTIONS = (
    "In two sentences: what is the trouble with sulfide electrolytes in factories?",
    "In two sentences: why are oxide garnet electrolytes hard to use?",
    "In two sentences: what do automakers need to see before they commit?",
)


@contextlib.contextmanager
def replay(path: Path) -> Iterator[Any]:
    """Answer every OpenAI request from the cassette; an unrecorded one fails, never sends."""
    import vcr

    recorder = vcr.VCR(match_on=["method", "scheme", "host", "path"], record_mode="none")
    with recorder.use_cassette(str(path)) as cassette:
        yield cassette


def ask(question: str, role: str, key: dict[str, Any]) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": question}],
            "metadata": {"crew_budget_role": role}, "num_retries": 0, **key}


def stopped(exc: CrewBudgetExceededError) -> None:
    left = exc.limit - exc.spent - exc.reserved
    print(f"  stopped: CrewBudgetExceededError ({exc.scope}, ${left} left): no request sent")


def run_sync(key: dict[str, Any]) -> None:
    print("sync, crew_budget.litellm.completion (role 'support'):")
    for question in SYNC_QUESTIONS:
        try:
            completion(**ask(question, "support", key))
        except CrewBudgetExceededError as exc:
            stopped(exc)
            return


async def run_async(logger: BudgetLogger, key: dict[str, Any]) -> None:
    print("async, litellm.acompletion with the registered BudgetLogger (role 'triage'):")
    for question in ASYNC_QUESTIONS:
        try:
            await litellm.acompletion(**ask(question, "triage", key))
        except CrewBudgetExceededError as exc:
            stopped(exc)
            break
    # The logger settles async calls from litellm's success hook, which may run just
    # after acompletion returns: wait (bounded) until nothing is in flight.
    deadline = time.monotonic() + 10
    while logger.in_flight and time.monotonic() < deadline:
        await asyncio.sleep(0.01)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--live", action="store_true", help="call OpenAI for real")
    parser.add_argument("--ledger", help="ledger URL (default: memory:// offline, so replayed "
                        "spend never lands in a real ledger; the default ledger with --live)")
    args = parser.parse_args(argv)
    if args.live and not os.environ.get("OPENAI_API_KEY"):
        print("--live needs OPENAI_API_KEY", file=sys.stderr)
        return 2
    key = {} if args.live else {"api_key": "sk-offline-replay"}

    logger = BudgetLogger(config=BUDGETS,
                          ledger=args.ledger or (None if args.live else "memory://"))
    guard = logger.guard
    charged: dict[str, list[Decimal]] = {}

    def show(event: GuardEvent) -> None:
        if event.outcome == "settled":
            charged.setdefault(event.role, []).append(event.cost)
            print(f"  call {len(charged[event.role])}  {event.model}  reserved "
                  f"${event.estimate}  charged ${event.cost}")
        elif event.outcome == "blocked":
            print(f"  BLOCKED  {event.model}  needs ~${event.estimate}")

    guard.add_listener(show)
    saved = list(litellm.callbacks)
    litellm.callbacks = [*saved, logger]
    sent = None
    try:
        with contextlib.nullcontext() if args.live else replay(CASSETTE) as cassette:
            try:
                run_sync(key)
                asyncio.run(run_async(logger, key))
            finally:
                sent = None if cassette is None else cassette.play_count
    finally:
        litellm.callbacks = saved
    print()
    for role in ("support", "triage"):
        day = next(r for r in guard.status(role) if r.scope == f"role:{role}" and
                   r.window == "day")
        costs = charged.get(role, [])
        print(f"{role}: {len(costs)} calls, ${sum(costs, Decimal(0))} charged; today "
              f"${day.spent} spent, ${day.remaining} left of ${day.limit}")
    if sent is not None:
        print(f"HTTP requests sent: {sent}")
    guard.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
