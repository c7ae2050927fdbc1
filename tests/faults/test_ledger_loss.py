"""The books survive the ledger: real redis-servers emptied, restarted, swapped.

Every test runs its own ``redis-server`` (so it can kill it) and asserts on
dollars: the configured price (``test-model``: $1 per million input tokens,
$2 per million output tokens) times the token counts of the usage we settle
with, so ``usage(3_990_000)`` costs exactly $3.99. Estimates are read from the
tickets the guard returned, never recomputed here.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from crew_budget import BudgetExceeded, Guard, LedgerReset, LedgerUnavailable
from crew_budget.errors import ConfigError
from crew_budget.ledger.redis import RedisLedger
from tests.cli.conftest import cli_executable, subprocess_env
from tests.fixtures.redis_server import RedisServer

LIMIT = Decimal("4.00")
CONFIG: dict[str, Any] = {
    "roles": {"researcher": {"daily": str(LIMIT)}},
    "prices": {"test-model": {"input_per_million": 1, "output_per_million": 2}},
}
MESSAGES = [{"role": "user", "content": "Summarise the quarterly revenue figures."}]


def usage(prompt_tokens: int, completion_tokens: int = 0) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens}


def call(guard: Guard, prompt_tokens: int) -> Decimal:
    """One call settled at ``prompt_tokens`` x $1/M; returns its cost."""
    ticket = guard.preflight("researcher", "test-model", MESSAGES, max_tokens=10)
    return guard.settle(ticket, usage(prompt_tokens)).cost


def spent(guard: Guard) -> tuple[Decimal, Decimal]:
    (st,) = guard.status("researcher")
    return st.spent, st.reserved


def recover_cli(url: str, reason: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*cli_executable(), "recover", "--ledger", url, "--accept-loss", "--reason", reason],
        capture_output=True, text=True, timeout=60, env=subprocess_env(), check=False,
    )


def new_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer(directory=new_dir(tmp_path / "redis")) as s:
        yield s


@pytest.fixture
def aof_server(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer(directory=new_dir(tmp_path / "redis-aof"), appendonly=True) as s:
        yield s


def lose_state(server: RedisServer, how: str, tmp_path: Path) -> RedisServer:
    """Empty the ledger the way production does; returns the server now on the port."""
    if how in ("FLUSHALL", "FLUSHDB"):
        assert server.command(how).startswith(b"+OK")
        return server
    if how == "restart without persistence":
        server.restart()
        return server
    assert how == "failover to an empty replica"
    # Another, empty server takes over the address (as a promoted replica
    # that had not received the data would).
    server.stop()
    replica = RedisServer(port=server.port, directory=new_dir(tmp_path / "replica"))
    replica.start()
    return replica


@pytest.mark.parametrize(
    "how", ["FLUSHALL", "FLUSHDB", "restart without persistence", "failover to an empty replica"]
)
def test_a_ledger_that_lost_its_state_refuses_until_recovered(
    server: RedisServer, tmp_path: Path, how: str
) -> None:
    guard = Guard(CONFIG, server.url)
    assert call(guard, 3_990_000) == Decimal("3.99")
    assert spent(guard) == (Decimal("3.99"), 0)
    now_serving = lose_state(server, how, tmp_path)
    try:
        # The next call is refused, with nothing charged (the data is gone,
        # so "charged" would mean a new counter): no counter, no record.
        with pytest.raises(LedgerReset) as caught:
            guard.preflight("researcher", "test-model", MESSAGES, max_tokens=10)
        assert isinstance(caught.value, LedgerUnavailable)
        assert str(caught.value).startswith(
            f"budget ledger {server.url} lost its state (its epoch new:")
        assert ("the spend, reservations and records it held are gone, so budgets would "
                "restart from $0. The LLM call was blocked and nothing was charged. Fix:"
                ) in str(caught.value)
        assert "crew-budget recover --accept-loss" in str(caught.value)
        assert spent(guard) == (0, 0)
        assert guard.ledger.records() == []
        # A guard that never saw the old epoch is refused too: the first
        # detection marked the ledger lost for everyone.
        newcomer = Guard(CONFIG, server.url)
        with pytest.raises(LedgerReset):
            newcomer.preflight("researcher", "test-model", MESSAGES, max_tokens=10)
        assert spent(newcomer) == (0, 0)
        # An operator accepts the loss; the audit record keeps who and why.
        done = recover_cli(server.url, "redis lost its data in the test")
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith(f"re-armed ledger {server.url} (lost its state (its "
                                      "epoch new:")
        assert "spend restarts from $0.00." in done.stdout
        (audit,) = guard.ledger.records()
        assert (audit.outcome, audit.cost_nano) == ("reset", 0)
        assert audit.metadata["event"] == "ledger_recovered"
        assert audit.metadata["reason"] == "redis lost its data in the test"
        assert "@" in audit.metadata["who"]
        assert str(audit.metadata["replaced_epoch"]).startswith("lost:")
        # Both guards proceed, from zero.
        assert call(guard, 500_000) == Decimal("0.50")
        assert call(newcomer, 250_000) == Decimal("0.25")
        assert spent(guard) == (Decimal("0.75"), 0)
        assert guard.ledger.epoch_state() == guard.ledger.epoch  # type: ignore[attr-defined]
    finally:
        guard.close()
        now_serving.stop()


def test_a_restart_with_aof_keeps_the_books_and_is_not_a_loss(aof_server: RedisServer) -> None:
    guard = Guard(CONFIG, aof_server.url)
    assert call(guard, 3_990_000) == Decimal("3.99")
    aof_server.restart()
    # Not a LedgerReset: the spend survived, and the limit still holds.
    with pytest.raises(BudgetExceeded) as caught:
        guard.preflight("researcher", "test-model", MESSAGES, max_tokens=10_000)
    assert caught.value.spent == Decimal("3.99")
    assert spent(guard) == (Decimal("3.99"), 0)
    assert call(guard, 10_000) == Decimal("0.01")
    assert spent(guard) == (LIMIT, 0)
    guard.close()


def test_recover_on_a_healthy_ledger_refuses_and_without_accept_loss_explains(
    server: RedisServer,
) -> None:
    guard = Guard(CONFIG, server.url)
    call(guard, 1_000_000)
    done = recover_cli(server.url, "no reason")
    assert done.returncode == 1
    assert done.stdout == (f"ledger {server.url} has not lost its state (epoch "
                           f"{guard.ledger.epoch}); nothing to recover.\n")  # type: ignore[attr-defined]
    server.command("FLUSHALL")
    with pytest.raises(LedgerReset):
        guard.preflight("researcher", "test-model", MESSAGES, max_tokens=10)
    asked = subprocess.run([*cli_executable(), "recover", "--ledger", server.url],
                           capture_output=True, text=True, timeout=60, env=subprocess_env(),
                           check=False)
    assert asked.returncode == 2
    assert re.fullmatch(
        rf"crew-budget recover: error: ledger {re.escape(server.url)}: lost its state \(its "
        r"epoch new:[\w-]+ is gone: the data was deleted; detected [-\d: ]+UTC\)\. Budgets would "
        r"restart from \$0; if that is what you want, run again with --accept-loss "
        r"--reason '\.\.\.'\n", asked.stderr)
    # Still refused: nothing was re-armed.
    with pytest.raises(LedgerReset):
        guard.preflight("researcher", "test-model", MESSAGES, max_tokens=10)
    guard.close()


def test_a_settle_pending_across_the_loss_never_wedges_the_guard(
    server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 9: a settle pending when Redis lost its data made every later
    preflight reserve and then raise ReservationError, and close() raise."""
    guard = Guard(CONFIG, server.url)
    ticket = guard.preflight("researcher", "test-model", MESSAGES, max_tokens=10)
    server.stop()
    assert guard.settle(ticket, usage(1_000_000)).state == "pending"
    assert guard.pending_settles == 1
    server.start()  # back, empty
    with pytest.raises(LedgerReset):
        guard.preflight("researcher", "test-model", MESSAGES, max_tokens=10)
    assert guard.pending_settles == 1  # kept: nothing can be decided while refused
    done = recover_cli(server.url, "accepted in test")
    assert done.returncode == 0, done.stderr
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="crew_budget"):
        costs = [call(guard, 100_000) for _ in range(8)]
    assert costs == [Decimal("0.10")] * 8
    assert spent(guard) == (Decimal("0.80"), 0)  # the 8 calls, each charged once
    assert (guard.pending_settles, guard.dropped_settles) == (0, 1)
    dropped = [r for r in caplog.records if "dropped the pending settle" in r.getMessage()]
    assert len(dropped) == 1
    assert ticket.reservation_id in dropped[0].getMessage()
    guard.close()  # does not raise


def test_close_never_raises_for_a_settle_it_cannot_write(server: RedisServer) -> None:
    guard = Guard(CONFIG, server.url)
    ticket = guard.preflight("researcher", "test-model", MESSAGES, max_tokens=10)
    server.stop()
    assert guard.settle(ticket, usage(1_000_000)).state == "pending"
    guard.close()  # the ledger is down: logged, not raised
    server.start()
    # and with the ledger back but emptied, the pending settle is dropped
    guard2 = Guard(CONFIG, server.url)
    t2 = guard2.preflight("researcher", "test-model", MESSAGES, max_tokens=10)
    server.command("FLUSHALL")
    server.stop()
    guard2.settle(t2, usage(1_000))
    server.start()
    guard2.close()
    assert guard2.dropped_settles == 1


def test_on_ledger_reset_continue_records_the_loss_and_goes_on(
    server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    guard = Guard({**CONFIG, "on_ledger_reset": "continue"}, server.url)
    assert call(guard, 3_990_000) == Decimal("3.99")
    server.command("FLUSHALL")
    with caplog.at_level(logging.ERROR, logger="crew_budget"):
        assert call(guard, 500_000) == Decimal("0.50")
    assert spent(guard) == (Decimal("0.50"), 0)
    audit = [r for r in guard.ledger.records() if r.outcome == "reset"]
    assert len(audit) == 1
    assert audit[0].metadata["who"] == f"crew-budget guard (pid {os.getpid()})"
    assert str(audit[0].metadata["reason"]).startswith("on_ledger_reset: continue (its epoch")
    assert sum("Continuing from $0" in r.getMessage() for r in caplog.records) == 1
    guard.close()


def test_a_frozen_server_fails_within_the_url_timeout_and_charges_nothing(
    server: RedisServer,
) -> None:
    url = server.url + "?socket_timeout=0.3"
    guard = Guard(CONFIG, url)
    call(guard, 1_000_000)  # connection made, epoch known
    assert server.proc is not None
    os.kill(server.proc.pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        with pytest.raises(LedgerUnavailable) as caught:
            guard.preflight("researcher", "test-model", MESSAGES, max_tokens=10)
        waited = time.monotonic() - t0
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)
    assert not isinstance(caught.value, LedgerReset)
    assert "Timeout" in caught.value.reason
    # 0.3 s from the URL, not the 2 s default (one timeout, not retried);
    # the slack above 0.3 s is for a loaded machine, still short of 2 s.
    assert 0.25 <= waited < 1.9
    # Nothing was charged. The frozen server did run the reserve once it was
    # thawed; the guard releases it with its next call instead of letting its
    # lease expire at the reserved amount.
    assert guard.pending_settles == 1
    assert call(guard, 100_000) == Decimal("0.10")
    assert guard.pending_settles == 0
    assert spent(guard) == (Decimal("1.10"), 0)
    released = [r for r in guard.ledger.records() if r.outcome == "released"]
    assert [(r.cost_nano, r.role) for r in released] == [(0, "researcher")]
    assert guard.dropped_settles == 0
    guard.close()


def test_url_timeouts_are_read_and_checked() -> None:
    ledger = RedisLedger("redis://127.0.0.1:1/0?socket_timeout=0.25&socket_connect_timeout=0.3")
    assert (ledger.op_timeout, ledger.connect_timeout) == (0.25, 0.3)
    assert (RedisLedger("redis://127.0.0.1:1/0").op_timeout,
            RedisLedger("redis://127.0.0.1:1/0").connect_timeout) == (2.0, 1.0)
    with pytest.raises(ConfigError) as caught:
        RedisLedger("redis://127.0.0.1:1/0?socket_timeout=soon")
    assert str(caught.value) == (
        "ledger: socket_timeout='soon' in the ledger URL redis://127.0.0.1:1/0?socket_timeout=soon "
        "is not a timeout; write seconds greater than 0, e.g. ?socket_timeout=0.5")


def test_a_refusal_caused_by_held_leases_says_so_and_when_they_end(
    server: RedisServer,
) -> None:
    guard = Guard({**CONFIG, "lease_seconds": 300}, server.url)
    call(guard, 1_000_000)
    # A "dead process": reserves $2.99 (1_495_000 output tokens x $2/M, plus
    # the prompt) and never settles.
    dead = guard.preflight("researcher", "test-model", MESSAGES, max_tokens=1_495_000)
    with pytest.raises(BudgetExceeded) as caught:
        guard.preflight("researcher", "test-model", MESSAGES, max_tokens=10_000)
    err = caught.value
    assert err.reserved == dead.estimate
    assert err.spent == Decimal("1.00")
    held = (f"${dead.estimate} of it is held by reservations of calls in flight, or of "
            "processes that died before settling: a lease held that long is charged at its "
            "reserved amount when it ends; the oldest lease ends at ")
    assert held in str(err)
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(dead.expires_at))
    assert f"ends at {when} UTC (in " in str(err)
    assert str(err).endswith("Fix: wait, or lower `lease_seconds` (now 300 s) so dead "
                             "processes' reservations are reaped sooner.")
    # A refusal that spend alone causes says nothing about leases.
    guard.release(dead)
    call(guard, 2_990_000)
    with pytest.raises(BudgetExceeded) as plain:
        guard.preflight("researcher", "test-model", MESSAGES, max_tokens=10_000)
    assert "lease" not in str(plain.value)
    guard.close()


def test_a_deleted_or_replaced_sqlite_file_is_a_loss_until_recovered(tmp_path: Path) -> None:
    db = tmp_path / "ledger.db"
    url = f"sqlite:///{db}"
    old = Guard(CONFIG, url)
    assert call(old, 3_990_000) == Decimal("3.99")
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    with pytest.raises(LedgerReset) as caught:
        old.preflight("researcher", "test-model", MESSAGES, max_tokens=10)
    assert str(caught.value).startswith(
        f"budget ledger {url} lost its state (the ledger file was deleted or moved away): ")
    # A new process makes a fresh file and, never having seen the old one,
    # takes it as new (the documented limit) ...
    new = Guard(CONFIG, url)
    assert call(new, 100_000) == Decimal("0.10")
    # ... until a process that knew the old file notices: it refuses, and
    # marks the new file lost, so the newcomer stops too.
    with pytest.raises(LedgerReset) as replaced:
        old.preflight("researcher", "test-model", MESSAGES, max_tokens=10)
    assert "(the ledger file was replaced by another)" in str(replaced.value)
    with pytest.raises(LedgerReset):
        new.preflight("researcher", "test-model", MESSAGES, max_tokens=10)
    assert spent(new) == (Decimal("0.10"), 0)
    done = recover_cli(url, "restored an empty file")
    assert done.returncode == 0, done.stderr
    assert call(old, 200_000) == Decimal("0.20")
    assert call(new, 300_000) == Decimal("0.30")
    assert spent(old) == (Decimal("0.60"), 0)
    audit = [r for r in new.ledger.records() if r.outcome == "reset"]
    assert [a.metadata["reason"] for a in audit] == ["restored an empty file"]
    old.close()
    new.close()


def test_settling_a_call_reserved_before_the_loss_does_not_raise_into_the_agent(
    server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    guard = Guard(CONFIG, server.url)
    ticket = guard.preflight("researcher", "test-model", MESSAGES, max_tokens=10)
    server.command("FLUSHALL")
    with caplog.at_level(logging.ERROR, logger="crew_budget"):
        result = guard.settle(ticket, usage(1_000_000))
    assert (result.state, result.cost, result.applied) == ("lost", Decimal("1.00"), False)
    assert guard.dropped_settles == 1
    assert sum(f"could not settle {ticket.reservation_id}" in r.getMessage()
               for r in caplog.records) == 1
    assert spent(guard) == (0, 0)  # nothing written into the emptied ledger
    guard.close()


def _flush_worker(url: str, results: Any, ready: Any, flushed: Any, recovered: Any) -> None:
    guard = Guard({**CONFIG, "roles": {"researcher": {"daily": "100"}}}, url)
    call(guard, 10_000)
    ready.put(1)
    before = 1
    while not flushed.is_set():
        try:
            call(guard, 10_000)
        except LedgerReset:  # the flush landed before the event was set
            break
        before += 1
    flushed.wait(60)
    errors: dict[str, int] = {}
    for _ in range(20):
        try:
            call(guard, 10_000)
            errors["none"] = errors.get("none", 0) + 1
        except Exception as exc:  # counted by type below
            errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
    ready.put(2)
    recovered.wait(60)
    after = [str(call(guard, 10_000)) for _ in range(5)]
    guard.close()
    results.put((before, errors, after, guard.dropped_settles))


@pytest.mark.slow
def test_four_worker_processes_all_refuse_after_a_flush_and_all_resume_after_recover(
    server: RedisServer,
) -> None:
    """Issue 9's run: after the flush every worker is refused with LedgerReset
    (not wedged on ReservationError), nothing is charged, and all resume."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    results, ready, flushed, recovered = ctx.Queue(), ctx.Queue(), ctx.Event(), ctx.Event()
    procs = [ctx.Process(target=_flush_worker,
                         args=(server.url, results, ready, flushed, recovered))
             for _ in range(4)]
    for p in procs:
        p.start()
    for _ in procs:
        ready.get(timeout=60)  # every worker has made a call on the old epoch
    time.sleep(0.3)
    server.command("FLUSHALL")
    flushed.set()
    for _ in procs:
        ready.get(timeout=60)  # every worker has made its 20 attempts
    observer = Guard(CONFIG, server.url)
    assert spent(observer) == (0, 0)  # nothing charged after the flush
    done = recover_cli(server.url, "flushed in test")
    assert done.returncode == 0, done.stderr
    recovered.set()
    outcomes = [results.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    assert all(before > 0 for before, _, _, _ in outcomes)
    assert [errors for _, errors, _, _ in outcomes] == [{"LedgerReset": 20}] * 4
    assert [after for _, _, after, _ in outcomes] == [["0.01"] * 5] * 4
    assert spent(observer) == (Decimal("0.20"), 0)  # 4 workers x 5 calls x $0.01
    assert sum(dropped for *_, dropped in outcomes) <= 4  # at most one in flight each
    observer.close()


def test_a_client_that_sends_no_epoch_is_served_as_new(server: RedisServer) -> None:
    """crew-budget 0.1.0 clients (no epoch argument) keep working mid-upgrade."""
    import redis as redis_py

    from crew_budget.ledger.redis import _sources

    guard = Guard(CONFIG, server.url)
    call(guard, 1_000)
    ledger = guard.ledger
    assert isinstance(ledger, RedisLedger)
    (bucket,) = guard.buckets("researcher")
    plan = ledger._plan((bucket,))
    client = redis_py.Redis.from_url(server.url)
    try:
        reply = client.eval(
            _sources()["reserve"], 4, ledger.prefix + "leases", ledger.prefix + "records",
            ledger.prefix + "r:old1", *plan.keys, "old1", '"old1"', "1000", "60000",
            "86400000", '"role":"researcher","model":"m","crew":null,"estimate_nano":1000,'
            '"metadata":{}', *plan.fixed_args)
    finally:
        client.close()
    assert reply[0] == b"ok" and len(reply) == 3  # granted, told the epoch in force
    assert reply[2].decode() == ledger.epoch
    assert spent(guard) == (Decimal("0.001"), Decimal("0.000001"))
    guard.close()
