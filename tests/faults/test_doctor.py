"""``crew-budget doctor`` against real redis-servers configured to lose budgets, or not."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
from typer.testing import CliRunner

from crew_budget import Guard
from crew_budget.cli import app
from crew_budget.cli.ops import judge_redis
from tests.faults.test_ledger_loss import CONFIG, call, new_dir
from tests.fixtures.redis_server import RedisServer


@pytest.fixture(autouse=True)
def _no_budgets_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CREW_BUDGET_CONFIG", raising=False)


def doctor(tmp_path: Path, name: str, *, appendonly: bool = False,
           extra: Sequence[str] = ()) -> tuple[int, list[str], str]:
    with RedisServer(directory=new_dir(tmp_path / name), appendonly=appendonly,
                     extra_args=extra) as server:
        result = CliRunner().invoke(app, ["doctor", "--ledger", server.url])
        lines = result.stdout.splitlines()
        assert lines[0] == f"ledger {server.url}"
        return result.exit_code, lines[1:], result.stderr


def test_a_server_without_persistence_fails(tmp_path: Path) -> None:
    code, lines, err = doctor(tmp_path, "plain")
    assert code == 4
    assert ("  FAIL persistence: none: a restart comes back empty and every budget restarts "
            "from $0. Fix: appendonly yes (appendfsync always or everysec)") in lines
    assert "  OK   eviction: maxmemory-policy noeviction" in lines
    assert err == "crew-budget doctor: 1 setting(s) can lose budgets\n"


def test_aof_always_with_noeviction_passes(tmp_path: Path) -> None:
    code, lines, err = doctor(tmp_path, "aof", appendonly=True)
    assert code == 0, lines
    assert [line.split(":")[0] for line in lines] == [
        "  OK   version", "  OK   persistence", "  OK   eviction", "  OK   clock",
        "  OK   integrity"]
    assert "  OK   persistence: AOF, appendfsync always" in lines
    assert "  OK   integrity: no epoch yet (the first reserve writes one)" in lines
    assert err == ""


def test_rdb_snapshots_only_and_everysec(tmp_path: Path) -> None:
    code, lines, _ = doctor(tmp_path, "rdb", extra=["--save", "900 1"])
    assert code == 4
    assert ("  FAIL persistence: RDB snapshots only (save '900 1'): a crash or restart loses "
            "the spend since the last snapshot. Fix: appendonly yes (appendfsync always or "
            "everysec)") in lines
    code, lines, _ = doctor(tmp_path, "everysec", appendonly=True,
                            extra=["--appendfsync", "everysec"])
    assert code == 0  # a warning, not a failure
    assert lines[1].startswith("  WARN persistence: AOF, appendfsync everysec: a crash")


@pytest.mark.parametrize("policy", ["allkeys-lru", "volatile-lru"])
def test_an_eviction_policy_with_a_memory_limit_fails(tmp_path: Path, policy: str) -> None:
    code, lines, _ = doctor(tmp_path, policy, appendonly=True,
                            extra=["--maxmemory", "100mb", "--maxmemory-policy", policy])
    assert code == 4
    (line,) = [x for x in lines if "eviction" in x]
    assert line.startswith(f"  FAIL eviction: maxmemory-policy {policy} (maxmemory 104857600):"
                           " under memory pressure Redis deletes keys silently; ")
    if policy.startswith("volatile"):
        assert "crew-budget's counters and reservations carry expiries" in line
    assert line.endswith("Fix: maxmemory-policy noeviction")


def test_a_ledger_that_lost_its_state_fails_the_integrity_check(tmp_path: Path) -> None:
    with RedisServer(directory=new_dir(tmp_path / "lost"), appendonly=True) as server:
        guard = Guard(CONFIG, server.url)
        call(guard, 1_000)
        server.command("FLUSHALL")
        with pytest.raises(Exception, match="lost its state"):
            call(guard, 1_000)
        result = CliRunner().invoke(app, ["doctor", "--ledger", server.url])
        guard.close()
    assert result.exit_code == 4
    (line,) = [x for x in result.stdout.splitlines() if "integrity" in x]
    assert line.startswith("  FAIL integrity: the ledger lost its state (its epoch new:")
    assert line.endswith("guards refuse every call. Fix: crew-budget recover --accept-loss "
                         "--reason '...'")


def test_judge_redis_reads_cluster_replica_version_and_clock() -> None:
    facts = {"redis_version": "6.0.9", "config:appendonly": "yes",
             "config:appendfsync": "always", "config:maxmemory-policy": "noeviction",
             "cluster_enabled": "1", "cluster_state": "fail", "role": "slave",
             "clock_skew_s": "-12.5", "epoch": "recovered:ab"}
    got = {c.topic: (c.level, c.text) for c in judge_redis(facts)}
    assert got["version"][0] == "fail"
    assert got["cluster"] == ("fail", "cluster_state fail: some slots are not served")
    assert got["replication"][0] == "fail"
    assert got["clock"][0] == "warn" and got["clock"][1].startswith("Redis TIME is -12.5 s")
    assert got["integrity"] == ("ok", "epoch recovered:ab")


def test_sqlite_ledger(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'l.db'}"
    Guard(CONFIG, url).close()  # doctor reads a ledger; it need not create one
    result = CliRunner().invoke(app, ["doctor", "--ledger", url])
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[1] == "  OK   journal mode: wal"
    assert lines[2].startswith("  OK   integrity: epoch new:")


def test_a_one_node_cluster_is_judged_on_its_cluster_state(tmp_path: Path) -> None:
    from tests.fixtures.redis_server import free_port

    port = free_port()
    while port > 55535:  # Redis refuses cluster nodes above it (bus port = port + 10000)
        port = free_port()
    with RedisServer(port=port, directory=new_dir(tmp_path / "cluster"), appendonly=True,
                     extra_args=("--cluster-enabled", "yes", "--cluster-config-file",
                                 "nodes.conf", "--cluster-port", str(free_port()))) as server:
        unserved = CliRunner().invoke(app, ["doctor", "--ledger", server.url])
        assert server.command("CLUSTER", "ADDSLOTSRANGE", "0", "16383").startswith(b"+OK")
        import time

        deadline = time.monotonic() + 10
        while True:
            served = CliRunner().invoke(
                app, ["doctor", "--ledger", f"redis+cluster://127.0.0.1:{server.port}"])
            if "cluster_state ok" in served.stdout or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    # No slot served: the ledger cannot even be read (exit 3, named).
    assert unserved.exit_code == 3
    assert unserved.stderr == (
        f"crew-budget doctor: error: ledger {server.url} is unreachable (ClusterDownError: Hash "
        "slot not served); start it or pass the right --ledger URL (or set CREW_BUDGET_LEDGER)\n")
    assert served.exit_code == 0, served.stdout
    assert "  OK   cluster: cluster_state ok" in served.stdout.splitlines()
