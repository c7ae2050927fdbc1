"""Live limits (issue 12 item 6): overrides in the ledger, applied on the next call.

Every test runs on the three ledgers (memory, SQLite, a real redis-server)
with two guards sharing one ledger: one is the operator's (it writes the
override), the other the agent's (it must see the change on its very next
call, with no restart). Money: ``test-model`` costs $1 per million input
tokens and $2 per million output tokens, so ``usage(10_000)`` is exactly $0.01.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from crew_budget import BudgetExceeded, Guard, RolePaused, UnknownRoleError
from crew_budget.errors import ConfigError
from crew_budget.ledger import Ledger, ReserveRequest, StaleOverrides, open_ledger
from crew_budget.ledger.memory import MemoryLedger
from tests.cli.conftest import cli_executable, subprocess_env

CONFIG: dict[str, Any] = {
    "roles": {"researcher": {"daily": "4.00"}, "writer": {"daily": "2.00"}},
    "prices": {"test-model": {"input_per_million": 1, "output_per_million": 2}},
}
MESSAGES = [{"role": "user", "content": "Summarise the quarterly revenue figures."}]
WHO = "alice@ops-box"


def usage(prompt_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": 0}


def call(guard: Guard, prompt_tokens: int = 10_000, role: str = "researcher") -> Decimal:
    ticket = guard.preflight(role, "test-model", MESSAGES, max_tokens=10)
    return guard.settle(ticket, usage(prompt_tokens)).cost


def spent(guard: Guard, role: str = "researcher") -> tuple[Decimal, Decimal]:
    (st,) = guard.status(role)
    return st.spent, st.reserved


@pytest.fixture(params=["memory", "sqlite", "redis"])
def ledgers(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Ledger, Ledger]]:
    """Two ledger clients on one store (memory: one object, it lives in one process)."""
    if request.param == "memory":
        mem = MemoryLedger()
        yield mem, mem
        return
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'ledger.db'}"
    else:
        url = request.getfixturevalue("redis_url")
    a, b = open_ledger(url), open_ledger(url)
    yield a, b
    a.close()
    b.close()


@pytest.fixture
def guards(ledgers: tuple[Ledger, Ledger]) -> Iterator[tuple[Guard, Guard]]:
    """(operator, agent): two guards, as in two processes."""
    op, agent = Guard(CONFIG, ledgers[0]), Guard(CONFIG, ledgers[1])
    yield op, agent


def test_a_pause_refuses_the_agents_very_next_call_and_resume_lets_it_run(
    guards: tuple[Guard, Guard],
) -> None:
    op, agent = guards
    assert call(agent) == Decimal("0.01")
    blocked_before = sum(r.outcome == "blocked" for r in agent.ledger.records())
    op.pause("Researcher", who=WHO, reason="runaway loop")
    with pytest.raises(RolePaused) as caught:
        agent.preflight("researcher", "test-model", MESSAGES, max_tokens=10)
    err = caught.value
    assert isinstance(err, BudgetExceeded)  # adapters stop the agent as at a spent budget
    assert (err.role, err.scope, err.window, err.limit) == ("researcher", "role:researcher",
                                                             "day", Decimal(0))
    assert (err.paused_by, err.reason, err.until) == (WHO, "runaway loop", None)
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(err.paused_at))
    assert str(err) == (
        f"role 'researcher' is paused by {WHO} since {stamp} (runaway loop) until resumed, "
        "so this test-model call was not sent. Fix: `crew-budget resume --role researcher` "
        "when its calls may run again")
    # Refused before anything was reserved; the refusal is one "blocked" record.
    assert spent(op) == (Decimal("0.01"), 0)
    assert sum(r.outcome == "blocked" for r in agent.ledger.records()) == blocked_before + 1
    # Other roles are untouched.
    assert call(agent, role="writer") == Decimal("0.01")
    op.resume("researcher", who=WHO, reason="fixed")
    assert call(agent) == Decimal("0.01")
    assert spent(op) == (Decimal("0.02"), 0)
    # The pickled error keeps who paused it (multiprocessing, Celery).
    again = pickle.loads(pickle.dumps(err))
    assert (type(again), again.paused_by, str(again)) == (RolePaused, WHO, str(err))


def test_set_daily_loosens_and_tightens_the_agents_next_call(guards: tuple[Guard, Guard]) -> None:
    op, agent = guards
    # $0.00001 left of the YAML's $4: less than the call's estimate ($0.000039)
    assert call(agent, 3_999_990) == Decimal("3.99999")
    with pytest.raises(BudgetExceeded) as first:
        agent.preflight("researcher", "test-model", MESSAGES, max_tokens=10)
    assert first.value.limit == Decimal("4")
    op.set_limits("researcher", daily_usd="10", who=WHO, reason="deadline")
    assert call(agent, 1_000_000) == Decimal("1.00")  # loosened: $4.99999 spent of $10
    op.set_limits("researcher", daily_usd="4.5", who=WHO)
    with pytest.raises(BudgetExceeded) as tight:
        agent.preflight("researcher", "test-model", MESSAGES, max_tokens=10)
    assert type(tight.value) is BudgetExceeded
    assert (tight.value.limit, tight.value.spent) == (Decimal("4.5"), Decimal("4.99999"))
    op.clear_limits("researcher", who=WHO)  # back to the YAML's $4
    assert agent.refresh_overrides() == []
    assert agent.status("researcher")[0].limit == Decimal("4")
    assert spent(op) == (Decimal("4.99999"), 0)


def test_until_expires_the_override_without_another_write(guards: tuple[Guard, Guard]) -> None:
    op, agent = guards
    assert call(agent) == Decimal("0.01")
    until = op.ledger.now() + 1.0
    op.pause("researcher", until=until, who=WHO, reason="cool down")
    with pytest.raises(RolePaused) as caught:
        agent.preflight("researcher", "test-model", MESSAGES, max_tokens=10)
    assert caught.value.until == until
    assert "until " + time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(until)) in str(
        caught.value)
    assert agent.status("researcher")[0].limit == 0
    time.sleep(max(0.0, until - op.ledger.now()) + 0.05)
    assert agent.status("researcher")[0].limit == Decimal("4")  # the YAML's, by itself
    writes = len(op.ledger.records())
    assert call(agent) == Decimal("0.01")  # expired: runs, nothing rewritten to get there
    assert [r.outcome for r in op.ledger.records()[writes:]] == ["settled"]
    assert spent(op) == (Decimal("0.02"), 0)


def test_each_change_is_an_audited_override_record(guards: tuple[Guard, Guard]) -> None:
    op, _agent = guards
    until = op.ledger.now() + 3600
    op.set_limits("researcher", daily_usd="10", hourly_usd="1.5", until=until, who=WHO,
                  reason="deadline")
    op.pause("writer", who=WHO, reason="loop")
    op.resume("writer", who="bob@laptop")
    records = [r for r in op.ledger.records() if r.outcome == "override"]
    assert [(r.role, r.scope, r.cost_nano, dict(r.metadata)) for r in records] == [
        ("researcher", "role:researcher", 0,
         {"event": "set", "who": WHO, "reason": "deadline", "until": until,
          "limits": {"hourly": "1.5", "daily": "10"}}),
        ("writer", "role:writer", 0,
         {"event": "pause", "who": WHO, "reason": "loop", "until": None}),
        ("writer", "role:writer", 0,
         {"event": "resume", "who": "bob@laptop", "reason": "", "until": None}),
    ]
    live = op.refresh_overrides()
    assert [(o.role, o.kind, o.limit_nano, o.who, o.until) for o in live] == [
        ("researcher", "daily", 10_000_000_000, WHO, until),
        ("researcher", "hourly", 1_500_000_000, WHO, until),
    ]


def test_overrides_are_read_only_when_they_changed(ledgers: tuple[Ledger, Ledger]) -> None:
    """The hot path: a version compared inside reserve; one read per change."""
    reads = []
    base = ledgers[1]

    class Counting(type(base)):  # type: ignore[misc]
        def overrides_state(self) -> Any:
            reads.append(1)
            return super().overrides_state()

    # The agent's ledger client counts its reads; memory is one object for both.
    led = Counting() if isinstance(base, MemoryLedger) else Counting(base.url)
    op = Guard(CONFIG, led if isinstance(base, MemoryLedger) else ledgers[0])
    agent = Guard(CONFIG, led)
    for _ in range(5):
        call(agent)
    assert reads == []  # nothing ever set: no read at all
    op.set_limits("researcher", daily_usd="10", who=WHO)
    reads.clear()
    for _ in range(5):
        call(agent)
    assert len(reads) == 1  # the first call after the change, once
    assert spent(op) == (Decimal("0.10"), 0)


def test_the_version_check_comes_before_any_write(guards: tuple[Guard, Guard]) -> None:
    op, agent = guards
    call(agent)
    version = op.pause("researcher", who=WHO)
    led = agent.ledger
    buckets = tuple(agent.buckets("researcher"))
    before = (len(led.records()), led.status(buckets))
    from crew_budget.ledger import RecordDraft

    req = ReserveRequest("stale-check", buckets, 1_000, 60.0, RecordDraft("researcher", "m"),
                         overrides_version=version - 1)
    with pytest.raises(StaleOverrides) as caught:
        led.reserve(req)
    assert caught.value.version == version
    assert (len(led.records()), led.status(buckets)) == before
    assert led.reservation_state("stale-check") is None


def test_limits_keep_the_yaml_bounds_and_name_a_configured_role(
    guards: tuple[Guard, Guard],
) -> None:
    op, _agent = guards
    with pytest.raises(ConfigError) as big:
        op.set_limits("researcher", daily_usd="1000001")
    assert str(big.value) == (
        "live limits: researcher: daily: budget '1000001' is above the maximum of $1,000,000; "
        "limits are kept in nano-dollars that the Redis ledger compares exactly only below "
        "2**53; use at most 1000000 (split larger budgets across roles or windows)")
    with pytest.raises(ConfigError) as negative:
        op.set_limits("researcher", daily_usd="-1")
    assert "daily: budget '-1' is negative" in str(negative.value)
    with pytest.raises(ConfigError) as nothing:
        op.set_limits("researcher")
    assert str(nothing.value) == ("live limits: researcher: set which limit? give hourly_usd, "
                                  "daily_usd or monthly_usd")
    with pytest.raises(ConfigError) as past:
        op.pause("researcher", until=op.ledger.now() - 5)
    assert "is not in the future" in str(past.value)
    with pytest.raises(UnknownRoleError):
        op.pause("nobody")
    loose = Guard({**CONFIG, "unknown_roles": "allow"}, op.ledger)
    with pytest.raises(ConfigError) as unbudgeted:
        loose.pause("nobody")
    assert str(unbudgeted.value) == (
        "live limits: nobody: role 'nobody' has no budget of its own under roles: (known "
        "roles: researcher, writer), so there is no limit to change; add it to the YAML first")
    assert [r for r in op.ledger.records() if r.outcome == "override"] == []
    assert op.refresh_overrides() == []


def test_metadata_cannot_pause_resume_or_raise_a_limit(guards: tuple[Guard, Guard]) -> None:
    """Invariant 8: only the ledger's overrides count, never the request."""
    op, agent = guards
    op.pause("researcher", who=WHO)
    with pytest.raises(RolePaused):
        agent.preflight("researcher", "test-model", MESSAGES, max_tokens=10,
                        metadata={"resume": True, "paused": False, "daily": "1000"})
    assert spent(op) == (0, 0)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*cli_executable(), *args], capture_output=True, text=True,
                          timeout=60, env=subprocess_env(), check=False)


def test_cli_set_pause_resume_and_status(tmp_path: Path) -> None:
    cfg = tmp_path / "budgets.yaml"
    cfg.write_text(yaml.safe_dump(CONFIG))
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    agent = Guard(cfg, url)
    assert call(agent) == Decimal("0.01")
    common = ["--config", str(cfg), "--ledger", url]
    done = _cli("set", "--role", "researcher", "--daily", "10", "--until", "2h", "--reason",
                "deadline", *common)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"set live limits of role researcher on ledger {url}; every "
                                  "process applies it on its next call.\n  role researcher: "
                                  "daily $10.00 (by ")
    assert done.stdout.rstrip().endswith(": deadline")
    paused = _cli("pause", "--role", "writer", "--reason", "loop", *common)
    assert paused.returncode == 0, paused.stderr
    with pytest.raises(RolePaused):
        call(agent, role="writer")
    assert call(agent, 5_000_000) == Decimal("5.00")  # above the YAML's $4: the override
    status = _cli("status", *common)
    assert status.returncode == 0, status.stderr
    assert "live limits" in status.stdout
    rows = [line for line in status.stdout.splitlines() if "│ researcher" in line
            or "│ writer" in line]
    assert len(rows) == 2
    assert "daily $10.00" in rows[0] and "deadline" in rows[0]
    assert "paused" in rows[1] and "loop" in rows[1] and " - " in rows[1]
    assert "│ $10.00 │ $5.01" in status.stdout.replace("  ", " ")
    resumed = _cli("resume", "--role", "writer", *common)
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.endswith("role writer: no live limits; the YAML's apply\n")
    assert call(agent, role="writer") == Decimal("0.01")
    bad = [
        (_cli("set", "--role", "researcher", "--daily", "2000000", *common), 2,
         "crew-budget set: error: live limits: researcher: daily: budget '2000000' is above "
         "the maximum of $1,000,000"),
        (_cli("set", "--role", "researcher", *common), 2,
         "crew-budget set: error: give at least one of --hourly, --daily, --monthly (USD), "
         "or --clear"),
        (_cli("pause", "--role", "nobody", *common), 2,
         "crew-budget pause: error: unknown role 'nobody'"),
        (_cli("pause", "--role", "writer", "--ledger", "redis://127.0.0.1:1/0",
              "--config", str(cfg)), 3, "crew-budget pause: error: ledger redis://127.0.0.1:1/0"
         " is unreachable"),
    ]
    for done, code, message in bad:
        assert (done.returncode, done.stderr[:len(message)]) == (code, message), done.stderr
    cleared = _cli("set", "--role", "researcher", "--clear", *common)
    assert cleared.returncode == 0, cleared.stderr
    export = _cli("export", "--since", "1d", "--format", "jsonl", *common)
    assert export.returncode == 0, export.stderr
    events = [line for line in export.stdout.splitlines() if '"override"' in line]
    assert len(events) == 4  # set, pause, resume, clear
    report = _cli("report", "--since", "1d", "--format", "json", *common)
    assert report.returncode == 0, report.stderr
    data = json.loads(report.stdout)
    assert [(o["role"], o["event"], o.get("limits")) for o in data["overrides"]] == [
        ("researcher", "set", {"daily": "10"}), ("writer", "pause", None),
        ("writer", "resume", None), ("researcher", "clear", None)]
    assert data["overrides"][0]["reason"] == "deadline"
    assert data["overrides"][0]["until"].endswith("+00:00")
    # Not calls: the rows hold the 4 calls only ($0.01 + $5.00 + $0.01 + $0.01).
    assert [(r["role"], r["calls"]) for r in data["rows"]] == [("researcher", 2), ("writer", 1)]
    assert data["total"]["cost_usd"] == "5.02"
    agent.close()


def test_redis_refuses_a_bad_version_argument_before_any_write(redis_url: str) -> None:
    from crew_budget.errors import AmountError
    from crew_budget.ledger import RecordDraft

    guard = Guard(CONFIG, redis_url)
    call(guard)
    led = guard.ledger
    buckets = tuple(guard.buckets("researcher"))
    before = (len(led.records()), led.status(buckets))
    req = ReserveRequest("bad-version", buckets, 1_000, 60.0, RecordDraft("researcher", "m"),
                         overrides_version=-1)
    with pytest.raises(AmountError) as caught:
        led.reserve(req)
    assert 'the live-limits version must be a whole number from 0 to 9007199254740991, got ' \
        '"-1"' in str(caught.value)
    assert (len(led.records()), led.status(buckets)) == before
    assert led.reservation_state("bad-version") is None
    guard.close()


def test_threads_of_one_guard_all_obey_a_change_made_while_they_run(
    guards: tuple[Guard, Guard],
) -> None:
    """Four threads share the agent's guard and call in a loop: every call made
    wholly after ``pause`` returned is refused, every one after ``resume`` runs."""
    import threading

    op, agent = guards
    phase = ["open"]  # read by each thread before it starts a call
    seen: list[tuple[str, str]] = []
    lock = threading.Lock()
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            started_in = phase[0]
            try:
                call(agent)
                outcome = "ok"
            except RolePaused:
                outcome = "paused"
            except BudgetExceeded:  # the $4.00 day ran out: a failure, said plainly
                outcome = "exhausted"
            if phase[0] == started_in:  # not one that straddled a change
                with lock:
                    seen.append((started_in, outcome))
            # Paced: unpaced threads on the memory ledger made 400 calls while
            # the test thread waited for the GIL and used up the day's $4.00.
            stop.wait(0.02)

    threads = [threading.Thread(target=loop) for _ in range(4)]
    for t in threads:
        t.start()

    def wait_for(n: int) -> None:
        deadline = time.monotonic() + 60
        while len(seen) < n and time.monotonic() < deadline:
            time.sleep(0.01)

    wait_for(8)
    phase[0] = "changing"  # calls that overlap a write are not judged
    op.pause("researcher", who=WHO)
    phase[0] = "paused"
    mark = len(seen)
    wait_for(mark + 8)
    phase[0] = "changing"
    op.resume("researcher", who=WHO)
    phase[0] = "resumed"
    mark = len(seen)
    wait_for(mark + 8)
    stop.set()
    for t in threads:
        t.join(timeout=60)
    after_pause = [o for p, o in seen if p == "paused"]
    after_resume = [o for p, o in seen if p == "resumed"]
    assert len(after_pause) >= 8 and set(after_pause) == {"paused"}
    assert len(after_resume) >= 8 and set(after_resume) == {"ok"}
    ok = [r for r in agent.ledger.records() if r.outcome == "settled"]
    assert spent(op) == (Decimal("0.01") * len(ok), 0)
