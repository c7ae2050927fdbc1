"""Live limits across processes: the CLI changes them, running workers obey at once.

Two worker processes each keep one ``Guard`` for their whole life (no
restart, no reload) and make one call per command they receive, reporting
what happened. Between calls the test runs the real ``crew-budget`` console
script (``pause``, ``resume``, ``set --daily``, ``pause --until``) against
the same SQLite file or real redis-server. The *very next* call of every
worker must follow the change. Money: ``test-model`` at $1 per million input
tokens; each call settles 10,000 tokens, exactly $0.01.
"""

from __future__ import annotations

import getpass
import multiprocessing as mp
import socket
import subprocess
import time
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from crew_budget import BudgetExceeded, Guard, RolePaused
from tests.cli.conftest import cli_executable, subprocess_env

CONFIG: dict[str, Any] = {
    "roles": {"researcher": {"daily": "4.00"}},
    "prices": {"test-model": {"input_per_million": 1, "output_per_million": 2}},
}
MESSAGES = [{"role": "user", "content": "Summarise the quarterly revenue figures."}]


def _worker(url: str, commands: Any, results: Any) -> None:
    """One long-lived guard; one call per command; what happened goes back."""
    guard = Guard(CONFIG, url)
    while commands.get(timeout=120) == "call":
        try:
            ticket = guard.preflight("researcher", "test-model", MESSAGES, max_tokens=10)
            cost = guard.settle(ticket, {"prompt_tokens": 10_000, "completion_tokens": 0}).cost
            results.put(("ok", str(cost)))
        except RolePaused as exc:
            results.put(("RolePaused", exc.paused_by, exc.reason))
        except BudgetExceeded as exc:
            results.put(("BudgetExceeded", str(exc.limit)))
    guard.close()


def _cli(*args: str) -> None:
    done = subprocess.run([*cli_executable(), *args], capture_output=True, text=True,
                          timeout=60, env=subprocess_env(), check=False)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_workers_follow_pause_resume_set_and_until_on_their_next_call(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest,
) -> None:
    url = (f"sqlite:///{tmp_path / 'ledger.db'}" if backend == "sqlite"
           else request.getfixturevalue("redis_url"))
    cfg = tmp_path / "budgets.yaml"
    cfg.write_text(yaml.safe_dump(CONFIG))
    common = ["--config", str(cfg), "--ledger", url]
    me = f"{getpass.getuser()}@{socket.gethostname()}"

    ctx = mp.get_context("fork")
    pipes = [(ctx.Queue(), ctx.Queue()) for _ in range(2)]
    procs = [ctx.Process(target=_worker, args=(url, cmd, res)) for cmd, res in pipes]
    for p in procs:
        p.start()

    def step() -> list[tuple[str, ...]]:
        """Every worker makes its next call; what each saw."""
        for cmd, _ in pipes:
            cmd.put("call")
        return [res.get(timeout=60) for _, res in pipes]

    try:
        assert step() == [("ok", "0.01")] * 2
        _cli("pause", "--role", "researcher", "--reason", "runaway loop", *common)
        assert step() == [("RolePaused", me, "runaway loop")] * 2  # the very next call
        assert step() == [("RolePaused", me, "runaway loop")] * 2
        _cli("resume", "--role", "researcher", *common)
        assert step() == [("ok", "0.01")] * 2
        _cli("set", "--role", "researcher", "--daily", "0.02", *common)  # $0.04 spent
        assert step() == [("BudgetExceeded", "0.02")] * 2
        _cli("set", "--role", "researcher", "--daily", "10", *common)
        assert step() == [("ok", "0.01")] * 2
        observer = Guard(CONFIG, url)
        end = observer.ledger.now() + 2.0
        _cli("pause", "--role", "researcher", "--until",
             datetime.fromtimestamp(end, timezone.utc).isoformat(), *common)
        assert step() == [("RolePaused", me, "")] * 2
        time.sleep(max(0.0, end - observer.ledger.now()) + 0.1)
        assert step() == [("ok", "0.01")] * 2  # the pause expired; nothing was written
    finally:
        for cmd, _ in pipes:
            cmd.put("stop")
        for p in procs:
            p.join(timeout=30)
    assert [p.exitcode for p in procs] == [0, 0]

    (st,) = observer.status("researcher")
    assert (st.spent, st.reserved) == (Decimal("0.08"), 0)  # 2 workers x 4 calls x $0.01
    records = observer.ledger.records()
    assert sum(r.outcome == "settled" for r in records) == 8
    assert sum(r.outcome == "blocked" for r in records) == 8
    assert [r.metadata["event"] for r in records if r.outcome == "override"] == [
        "pause", "resume", "set", "set", "pause"]
    assert {r.metadata["who"] for r in records if r.outcome == "override"} == {me}
    observer.close()
