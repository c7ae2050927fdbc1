"""Two crews in two processes share one SQLite ledger file.

Each process runs the researcher/writer crew against its own cassette;
the parent then reads the shared ledger. Prices as in test_callback.py:

    pair_crew    researcher 0.0000264   writer 0.00002475   (total 0.00005115)
    pair_crew_b  researcher 0.0000288   writer 0.0000246    (total 0.0000534)
      (84 in + 27 out: 0.0000126 + 0.0000162; 120 in + 11 out: 0.000018 + 0.0000066)
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from crew_budget import Guard

pytestmark = pytest.mark.slow


def warm_up(barrier: Any) -> int:
    """Import CrewAI once per worker; the barrier puts each call in its own worker."""
    import crew_budget.crewai  # noqa: F401
    import tests.crewai.scenarios  # noqa: F401

    os.environ.setdefault("OPENAI_API_KEY", "sk-test")  # nothing is sent; CrewAI wants one
    barrier.wait(timeout=120)
    return os.getpid()


def run_crew(cassette: str, ledger_url: str, config: dict[str, Any],
             barrier: Any) -> dict[str, Any]:
    """Child process: one crew, one cassette, the shared ledger."""
    from crewai import LLM

    from crew_budget.crewai import BudgetCallback, CrewBudgetExceeded
    from tests.crewai.replay import replay
    from tests.crewai.scenarios import pair_crew

    budget = BudgetCallback(config, ledger_url)
    crew = budget.attach(pair_crew(LLM(model="gpt-4o-mini"), LLM(model="gpt-4o-mini")))
    stopped = None
    barrier.wait(timeout=60)  # both crews start together
    with replay(cassette) as cas:
        try:
            crew.kickoff()
        except CrewBudgetExceeded as exc:
            stopped = exc.scope
    budget.guard.close()
    return {"pid": os.getpid(), "played": sorted(cas.play_counts), "stopped": stopped}


class Workers:
    def __init__(self, pool: ProcessPoolExecutor, manager: Any) -> None:
        self.pool = pool
        self.manager = manager

    def run_both(self, ledger_url: str, config: dict[str, Any]) -> list[dict[str, Any]]:
        # Create the ledger file first. (Two processes creating a brand-new
        # SQLite ledger at the same instant can still hit "database is locked"
        # while switching it to WAL: reported to the SQLite ledger's owner.)
        Guard(config, ledger_url).close()
        barrier = self.manager.Barrier(2)
        futures = [self.pool.submit(run_crew, name, ledger_url, config, barrier)
                   for name in ("pair_crew", "pair_crew_b")]
        results = [f.result(timeout=120) for f in futures]
        # Two processes, running at the same time (the barrier needs both).
        assert results[0].pop("pid") != results[1].pop("pid")
        return results


@pytest.fixture(scope="module")
def workers() -> Iterator[Workers]:
    ctx = multiprocessing.get_context("spawn")  # fresh interpreters, like separate workers
    with ctx.Manager() as manager, ProcessPoolExecutor(max_workers=2, mp_context=ctx) as pool:
        barrier = manager.Barrier(2)
        pids = [f.result(timeout=180) for f in [pool.submit(warm_up, barrier) for _ in range(2)]]
        assert len(set(pids)) == 2
        yield Workers(pool, manager)


def _spent(guard: Guard) -> dict[str, Decimal]:
    out = {}
    for s in guard.status():
        assert s.reserved == 0
        out[s.scope] = s.spent
    return out


def test_two_processes_share_one_ledger(tmp_path: Path, workers: Workers) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    config = {"crew": {"name": "pair", "daily": 1},
              "roles": {"researcher": {"daily": 1, "max_output_tokens": 200},
                        "writer": {"daily": 1, "max_output_tokens": 200}}}
    results = workers.run_both(url, config)
    assert results == [{"played": [0, 1], "stopped": None}] * 2
    with Guard(config, url) as guard:
        assert _spent(guard) == {
            "role:researcher": Decimal("0.0000264") + Decimal("0.0000288"),
            "role:writer": Decimal("0.00002475") + Decimal("0.0000246"),
            "crew:pair": Decimal("0.00005115") + Decimal("0.0000534"),
        }
        assert sorted(r.outcome for r in guard.ledger.records()) == ["settled"] * 4


def test_shared_crew_limit_holds_across_processes(tmp_path: Path, workers: Workers) -> None:
    # $0.0002 for the whole crew: each call reserves ~$0.00013 (200 output tokens)
    # and costs ~$0.000026, so the two crews cannot both run to the end.
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    config = {"crew": {"name": "pair", "daily": "0.0002"},
              "roles": {"researcher": {"max_output_tokens": 200},
                        "writer": {"max_output_tokens": 200}}}
    results = workers.run_both(url, config)
    cost = {("pair_crew", 0): Decimal("0.0000264"), ("pair_crew", 1): Decimal("0.00002475"),
            ("pair_crew_b", 0): Decimal("0.0000288"), ("pair_crew_b", 1): Decimal("0.0000246")}
    played = [(name, i) for name, r in zip(("pair_crew", "pair_crew_b"), results, strict=True)
              for i in r["played"]]
    assert any(r["stopped"] == "crew:pair" for r in results)
    with Guard(config, url) as guard:
        (crew,) = [s for s in guard.status() if s.scope == "crew:pair"]
        assert crew.reserved == 0
        # Exactly the requests that went out are charged, and never past the limit.
        assert crew.spent == sum((cost[p] for p in played), Decimal(0))
        assert crew.spent <= Decimal("0.0002")
        records = guard.ledger.records()
        assert sum(r.outcome == "settled" for r in records) == len(played)
