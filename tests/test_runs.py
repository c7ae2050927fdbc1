"""Per-run budgets: ``crew_budget.run``, YAML ``per_run``, run buckets on every ledger.

Prices are configured (``m``: $1/M input, $2/M output) so every amount is
exact: each call's prompt is estimated at 11 tokens and reserves 10 output
tokens, so it reserves $0.000031; it settles with usage 11 in / 5 out, so it
costs $0.000021. A run capped at $0.00005 therefore admits one call
($0.000021 spent + $0.000031 reserved = $0.000052 > $0.00005 for a second).
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from decimal import Decimal
from typing import Any

import pytest

import crew_budget
from crew_budget import BudgetExceeded, ConfigError, Guard
from crew_budget.report import build_report
from crew_budget.runs import current_run, run

MSG = [{"role": "user", "content": "hello there"}]
PRICES = {"m": {"input_per_million": 1, "output_per_million": 2}}
ESTIMATE = Decimal("0.000031")
COST = Decimal("0.000021")
USAGE = {"prompt_tokens": 11, "completion_tokens": 5}


def make_guard(url: str = "memory://", **config: Any) -> Guard:
    config.setdefault("roles", {"r": {}, "w": {}})
    return Guard({**config, "prices": PRICES}, url)


def call(guard: Guard, role: str = "r", model: str = "m") -> Decimal:
    ticket = guard.preflight(role, model, MSG, max_tokens=10)
    assert ticket.estimate == ESTIMATE
    return guard.settle(ticket, USAGE).cost


def calls_until_blocked(guard: Guard, limit: int = 10, **kw: Any) -> tuple[int, BudgetExceeded]:
    for n in range(limit):
        try:
            assert call(guard, **kw) == COST
        except BudgetExceeded as exc:
            return n, exc
    raise AssertionError(f"{limit} calls and no block")


def run_spent(guard: Guard, r: crew_budget.Run, scope: str = "run") -> Decimal:
    [row] = [s for s in r.status(guard) if s.scope == scope]
    assert row.reserved == 0
    return row.spent


def test_the_estimate_and_cost_in_the_docstring() -> None:
    guard = make_guard()
    assert guard.estimate("r", "m", MSG, max_tokens=10).amount == ESTIMATE
    assert call(guard) == COST


def test_a_run_cap_stops_its_own_calls_and_a_new_run_starts_fresh() -> None:
    guard = make_guard()
    with run("nightly-report", usd="0.00005") as first:
        n, exc = calls_until_blocked(guard)
    assert n == 1
    assert (exc.scope, exc.window, exc.period) == ("run", "run", first.run_id)
    assert (exc.limit, exc.spent, exc.reserved, exc.estimate) == (
        Decimal("0.00005"), COST, 0, ESTIMATE)
    assert str(exc) == (
        "budget exceeded for role 'r': run budget $0.00005 "
        f"(run {first.run_id}) has $0.000021 spent and $0.00 reserved ($0.000029 left); "
        "this m call is estimated at $0.000031, so it was not sent.")
    with run("nightly-report", usd="0.00007") as second:
        n, _ = calls_until_blocked(guard)
    assert n == 2
    assert first.run_id != second.run_id
    assert first.run_id.startswith("nightly-report#") and len(first.run_id) == 15 + 16
    assert run_spent(guard, first) == COST and run_spent(guard, second) == 2 * COST
    # Outside any run: no run limit applies.
    assert [call(guard) for _ in range(3)] == [COST] * 3
    records = guard.ledger.records()
    assert [(r.outcome, r.metadata.get("run")) for r in records] == [
        ("settled", first.run_id), ("blocked", first.run_id),
        ("settled", second.run_id), ("settled", second.run_id), ("blocked", second.run_id),
        ("settled", None), ("settled", None), ("settled", None)]


def test_yaml_per_run_for_crew_and_role_all_or_nothing() -> None:
    # crew: two calls per run; writer: one call per run; daily bucket counts everything.
    guard = make_guard(crew={"name": "team", "per_run": "0.00007", "daily": 1},
                       roles={"r": {}, "w": {"per_run": "0.00005"}})
    with run("kickoff") as r1:
        assert call(guard, "w") == COST
        with pytest.raises(BudgetExceeded) as info:
            call(guard, "w")
        assert (info.value.scope, info.value.window) == ("role:w", "run")
        assert call(guard, "r") == COST  # the crew still has room for one
        with pytest.raises(BudgetExceeded) as info:
            call(guard, "r")
        assert (info.value.scope, info.value.window, info.value.spent) == (
            "crew:team", "run", 2 * COST)
    status = {(s.scope, s.window): (s.limit, s.spent) for s in r1.status(guard, "w")}
    assert status == {("run", "run"): (None, 2 * COST),
                      ("role:w", "run"): (Decimal("0.00005"), COST),
                      ("crew:team", "run"): (Decimal("0.00007"), 2 * COST)}
    # The refused calls charged nothing anywhere (invariant 2).
    [day] = [s for s in guard.status() if s.scope == "crew:team"]
    assert (day.window, day.spent, day.reserved) == ("day", 2 * COST, 0)
    # Outside a run, per_run does not apply: the calls go through.
    assert [call(guard, "w") for _ in range(3)] == [COST] * 3


def test_concurrent_runs_in_threads_are_separate_budgets() -> None:
    guard = make_guard(crew={"name": "team", "per_run": "0.00005"})
    barrier = threading.Barrier(4)
    results: dict[int, tuple[str, int, str]] = {}

    def worker(i: int) -> None:
        with run("same-code") as r:
            barrier.wait()
            n, exc = calls_until_blocked(guard)
            results[i] = (r.run_id, n, exc.period)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(n for _, n, _ in results.values()) == [1, 1, 1, 1]
    assert len({rid for rid, _, _ in results.values()}) == 4
    assert all(rid == period for rid, _, period in results.values())
    report = build_report(guard.ledger.records(), ["run"])
    assert sorted((row.key[0], row.calls, row.blocked, row.cost) for row in report.rows) == \
        sorted((rid, 1, 1, COST) for rid, _, _ in results.values())


async def test_concurrent_runs_in_asyncio_tasks_are_separate_budgets() -> None:
    guard = make_guard(crew={"name": "team", "per_run": "0.00007"})

    async def job() -> tuple[str, int]:
        with run("async-job") as r:
            n = 0
            while True:
                await asyncio.sleep(0)  # interleave the tasks' calls
                try:
                    call(guard)
                except BudgetExceeded:
                    return r.run_id, n
                n += 1

    done = await asyncio.gather(*(job() for _ in range(3)))
    assert [n for _, n in done] == [2, 2, 2]
    assert len({rid for rid, _ in done}) == 3
    assert current_run() is None


def test_threads_see_the_run_only_with_a_copied_context() -> None:
    guard = make_guard()
    seen: dict[str, Any] = {}
    with run("parent", usd=1) as r:
        plain = threading.Thread(target=lambda: seen.update(plain=current_run()))
        plain.start()
        plain.join()
        ctx = contextvars.copy_context()
        copied = threading.Thread(target=ctx.run, args=(lambda: seen.update(
            copied=current_run(), cost=call(guard)),))
        copied.start()
        copied.join()
    assert seen["plain"] is None  # documented: a plain thread is outside the run
    assert seen["copied"] is r and seen["cost"] == COST
    assert run_spent(guard, r) == COST


def test_nested_runs_charge_both_and_each_cap_applies() -> None:
    guard = make_guard(roles={"r": {"per_run": 1}})
    with run("outer", usd="0.00007") as outer:
        assert call(guard) == COST
        with run("inner") as inner:
            assert current_run() is inner and inner.parent is outer
            assert call(guard) == COST
            with pytest.raises(BudgetExceeded) as info:
                call(guard)  # the inner run has no cap; the outer's is used up
            assert (info.value.scope, info.value.period) == ("run", outer.run_id)
        assert current_run() is outer
    assert run_spent(guard, outer) == 2 * COST and run_spent(guard, inner) == COST
    # role:r per_run applies to the innermost run only.
    assert run_spent(guard, inner, "role:r") == COST
    assert run_spent(guard, outer, "role:r") == COST
    records = [r for r in guard.ledger.records() if r.outcome == "settled"]
    assert [r.metadata.get("runs") for r in records] == [None, [inner.run_id, outer.run_id]]


def test_a_caller_cannot_name_a_run_through_metadata() -> None:
    guard = make_guard()
    ticket = guard.preflight("r", "m", MSG, max_tokens=10, metadata={"run": "x#1", "runs": [1]})
    guard.settle(ticket, USAGE)
    [record] = guard.ledger.records()
    assert "run" not in record.metadata and "runs" not in record.metadata


@pytest.mark.parametrize(("name", "usd", "message"), [
    ("", None, "crew_budget.run(): a run needs a name, got ''; e.g. "
     "crew_budget.run('nightly-report')"),
    ("a|b", None, "crew_budget.run(): run name 'a|b' contains '|' or a control character, "
     "which ledger keys cannot hold; use letters, digits, '-', '_' or spaces"),
    ("x" * 201, None, "crew_budget.run(): run name of 201 characters is longer than 200; use "
     "a short label such as 'nightly-report'"),
    ("job", -1, "crew_budget.run(): usd: budget -1 is negative; use 0 to block all calls "
     "or a positive amount"),
    ("job", "lots", "crew_budget.run(): usd: 'lots' is not a dollar amount (write e.g. 5 "
     "or \"5.00\")"),
])
def test_bad_run_arguments_are_config_errors(name: str, usd: Any, message: str) -> None:
    with pytest.raises(ConfigError) as info, run(name, usd=usd):
        pass
    assert str(info.value) == message
    assert current_run() is None


def test_public_names() -> None:
    assert crew_budget.run is run and crew_budget.current_run is current_run
    with crew_budget.run("x", usd=Decimal("2.5")) as r:
        assert isinstance(r, crew_budget.Run) and r.limit == Decimal("2.5")
        assert r.limit_nano == 2_500_000_000


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_run_buckets_on_persistent_ledgers(kind: str, tmp_path: Any,
                                           request: pytest.FixtureRequest) -> None:
    url = (f"sqlite:///{tmp_path / 'l.db'}" if kind == "sqlite"
           else request.getfixturevalue("redis_url"))
    guard = make_guard(url, crew={"name": "team", "per_run": "0.00005"}, retention_days=2)
    try:
        with run("job") as r:
            n, exc = calls_until_blocked(guard)
        assert (n, exc.scope, exc.window, exc.period) == (1, "crew:team", "run", r.run_id)
        assert run_spent(guard, r, "crew:team") == COST
        with run("job") as r2:
            assert call(guard) == COST
        assert run_spent(guard, r2, "crew:team") == COST
        if kind == "redis":
            # The run counter expires like the others: a day after its first call
            # (the run's horizon) plus retention.
            server = request.getfixturevalue("redis_server")
            key = f"cb:{{default}}:b:crew:team|run|{r.run_id}"
            ttl = int(server.command("TTL", key).split(b"\r\n")[0][1:])
            assert 3 * 86400 - 120 <= ttl <= 3 * 86400 + 1
    finally:
        guard.close()


def test_cli_report_by_run_and_task(tmp_path: Any) -> None:
    import json
    import subprocess

    from tests.cli.conftest import cli_executable, subprocess_env

    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    guard = make_guard(url)
    try:
        with run("nightly") as a:
            call(guard)
            ticket = guard.preflight("w", "m", MSG, max_tokens=10, metadata={"task": "write"})
            guard.settle(ticket, USAGE)
        with run("nightly") as b:
            call(guard)
        call(guard)  # outside any run
    finally:
        guard.close()
    proc = subprocess.run([*cli_executable(), "report", "--ledger", url, "--by", "run",
                           "--format", "json", "--sort", "key"], env=subprocess_env(),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    rows = {r["run"]: (r["calls"], r["cost_usd"]) for r in json.loads(proc.stdout)["rows"]}
    assert rows == {"": (1, "0.000021"), a.run_id: (2, "0.000042"), b.run_id: (1, "0.000021")}
    proc = subprocess.run([*cli_executable(), "report", "--ledger", url, "--by", "task,role",
                           "--format", "csv", "--sort", "key"], env=subprocess_env(),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert [line.split(",")[:4] for line in proc.stdout.splitlines()] == [
        ["task", "role", "calls", "blocked"], ["", "r", "3", "0"], ["write", "w", "1", "0"]]


def test_fail_open_calls_of_a_run_are_booked_into_its_buckets_after_an_outage(
    tmp_path: Any,
) -> None:
    from tests.fixtures.redis_server import RedisServer

    config = {"roles": {"r": {"daily": 1}}, "crew": {"name": "team", "per_run": 1},
              "models": {"m": {"daily": 1}}, "fail_open": True,
              "journal": str(tmp_path / "journal.jsonl")}
    (tmp_path / "redis").mkdir()
    with RedisServer(directory=tmp_path / "redis", appendonly=True) as server:
        guard = make_guard(server.url, **config)
        try:
            with run("outage") as r:
                assert call(guard) == COST
                server.stop()  # killed: the next calls are let through and journaled
                for _ in range(2):
                    ticket = guard.preflight("r", "m", MSG, max_tokens=10)
                    assert ticket.guarded is False
                    assert guard.settle(ticket, USAGE).state == "unguarded"
                server.start()
                assert call(guard) == COST  # books the journal first
            assert {s.scope: (s.spent, s.reserved) for s in r.status(guard)} == {
                "run": (4 * COST, 0), "crew:team": (4 * COST, 0)}
            assert {(s.scope, s.window): s.spent for s in guard.status()} == {
                ("role:r", "day"): 4 * COST, ("model:m", "day"): 4 * COST}
            booked = [x for x in guard.ledger.records() if x.outcome == "unguarded"]
            assert [x.metadata["run"] for x in booked] == [r.run_id] * 2
        finally:
            guard.close()


def test_run_as_a_decorator_makes_each_call_a_new_run() -> None:
    guard = make_guard()

    @run("cron", usd="0.00005")
    def job() -> str:
        r = current_run()
        assert r is not None
        assert call(guard) == COST  # one call fits each run
        with pytest.raises(BudgetExceeded):
            call(guard)
        return r.run_id

    first, second = job(), job()
    assert first != second and current_run() is None
    assert [x.metadata["run"] for x in guard.ledger.records()] == [first] * 2 + [second] * 2
