"""The Redis ledger on a real 3-master Redis Cluster (one replica each).

The cluster is ``tests/fixtures/redis_cluster.py``'s. What is checked here
beyond the conformance suite (which runs on it too):

- a namespace lives in ONE slot (every key carries the hash tag ``{ns}``),
  so on one master; different namespaces (crews, tenants) spread over all
  masters;
- the scripts reach the node that owns the keys: ``EVALSHA`` routes by its
  first key, and after ``SCRIPT FLUSH`` (or a promoted replica that never
  loaded them) ``NOSCRIPT`` loads them again;
- ``?cluster_retry_seconds=``: a call made right after a master died waits
  for its replica's promotion (default 5 s); with 0 it fails at once with
  ``LedgerUnavailable`` and charges nothing; an operation that must not
  repeat (``claim``) waits only through replies saying it never ran;
- a replica promoted without the namespace is a detected loss (LedgerReset);
- ``crew-budget doctor`` judges the replicas and the failover window.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
import uuid
from pathlib import Path

import pytest

from crew_budget.errors import ConfigError, LedgerReset, LedgerUnavailable
from crew_budget.ledger import Bucket, RecordDraft, Reservation, ReserveRequest
from crew_budget.ledger.base import rollup_hour
from crew_budget.ledger.redis import RedisLedger
from crew_budget.usage import Usage
from tests.fixtures.redis_cluster import RedisCluster


def ended(p: str, ts: float, rid: str) -> list[str]:
    """The keys an ended reservation leaves (lua/_common.lua): its day's
    TOMBSTONE count and level-1 shard (SHA1 of the id), and the day's COMPACT
    record contexts. All carry the namespace's hash tag."""
    day = int(ts // 86400)
    shard = int(hashlib.sha1(rid.encode()).hexdigest()[:5], 16) % 4
    return [f"{p}t:{day}:n", f"{p}t:{day}:1:{shard}", f"{p}c:{day}"]

def day_bucket(led: RedisLedger, scope: str, limit: int | None) -> Bucket:
    now = led.now()
    return Bucket(scope, "day", "p1", limit, now - 3600, now + 3600)


def reserve(led: RedisLedger, buckets: list[Bucket], amount: int, rid: str) -> object:
    draft = RecordDraft(role="r", model="m", crew="c", estimate_nano=amount, metadata={})
    return led.reserve(ReserveRequest(rid, tuple(buckets), amount, 600.0, draft))


def led_usage() -> Usage:
    return Usage(10, 0, 0, 10, 0)


def keys_on(cluster: RedisCluster, port: int, namespace: str) -> list[str]:
    return sorted(cluster.cli(port, "KEYS", f"cb:{{{namespace}}}:*").split())


def test_each_namespace_lives_on_one_master_and_namespaces_spread_over_all_three(
    redis_cluster: RedisCluster,
) -> None:
    # Fixed names, so the spread is fixed too (CRC16 of "tenant-N" mod 16384,
    # against redis-cli's even split of the slots): the session's cluster is
    # fresh, and no other test uses these names.
    namespaces = [f"tenant-{i}" for i in range(24)]
    masters = redis_cluster.masters()
    assert len(masters) == 3
    homes: dict[str, int] = {}
    for ns in namespaces:
        led = RedisLedger(redis_cluster.url, namespace=ns)
        crew, role = day_bucket(led, "crew:c", 10_000), day_bucket(led, "role:r", 5_000)
        a = reserve(led, [role, crew], 1_200, "a")
        assert isinstance(a, Reservation)
        led.settle("a", 1_000, led_usage())
        held = {port: keys_on(redis_cluster, port, ns) for port in masters}
        # Every key of the namespace on exactly one master: the one serving {ns}'s slot.
        (home,) = [port for port, found in held.items() if found]
        assert home == redis_cluster.master_of(f"{{{ns}}}")
        p = f"cb:{{{ns}}}:"
        ts = led.records()[-1].ts
        hour = int(rollup_hour(ts))  # the settle's hourly rollup
        assert held[home] == sorted([p + "b:crew:c|day|p1", p + "b:role:r|day|p1", p + "epoch",
                                     p + "records", p + f"ru:{hour}", *ended(p, ts, "a")])
        # (leases: empty, so gone; "a"'s key too: its tombstone answers repeats)
        assert [(s.spent_nano, s.reserved_nano) for s in led.status([role, crew])] == [
            (1_000, 0), (1_000, 0)]
        homes[ns] = home
        led.close()
    per_master = {port: sum(1 for h in homes.values() if h == port) for port in masters}
    assert set(homes.values()) == set(masters)  # all 3 masters carry namespaces
    assert sum(per_master.values()) == 24
    assert sorted(per_master.values()) == [7, 8, 9]  # CRC16 spreads them, about a third each


def test_scripts_are_loaded_again_on_the_node_that_owns_the_keys(
    redis_cluster: RedisCluster,
) -> None:
    ns = "scripts-" + uuid.uuid4().hex[:8]
    led = RedisLedger(redis_cluster.url, namespace=ns)
    b = day_bucket(led, "role:r", 1_000)
    assert isinstance(reserve(led, [b], 100, "one"), Reservation)
    for port in redis_cluster.masters():
        assert redis_cluster.cli(port, "SCRIPT", "FLUSH").strip() == "OK"
    # NOSCRIPT on the owner: loaded again (SCRIPT LOAD goes to every master), then run.
    assert isinstance(reserve(led, [b], 200, "two"), Reservation)
    home = redis_cluster.master_of(f"{{{ns}}}")
    sha = led._lua["reserve"].sha  # the test reads which script to look for
    assert redis_cluster.cli(home, "SCRIPT", "EXISTS", sha).split() == ["1"]
    assert [(s.spent_nano, s.reserved_nano) for s in led.status([b])] == [(0, 300)]
    led.close()


def test_cluster_retry_seconds_is_read_checked_and_cluster_only() -> None:
    assert RedisLedger("redis+cluster://127.0.0.1:7000").cluster_retry_seconds == 5.0
    assert RedisLedger("redis://127.0.0.1:7000/0").cluster_retry_seconds == 0.0
    led = RedisLedger("redis+cluster://127.0.0.1:7000?cluster_retry_seconds=12.5")
    assert led.cluster_retry_seconds == 12.5
    assert "cluster_retry_seconds" not in led._raw_url  # redis-py is not handed it
    assert RedisLedger("rediss+cluster://h:7000?cluster_retry_seconds=0").cluster_retry_seconds \
        == 0.0
    with pytest.raises(ConfigError) as bad:
        RedisLedger("redis+cluster://127.0.0.1:7000?cluster_retry_seconds=soon")
    assert str(bad.value) == (
        "ledger: cluster_retry_seconds='soon' in the ledger URL "
        "redis+cluster://127.0.0.1:7000?cluster_retry_seconds=soon is not a retry window; "
        "write seconds from 0 (no waiting) to 600, e.g. ?cluster_retry_seconds=5")
    with pytest.raises(ConfigError) as plain:
        RedisLedger("redis://127.0.0.1:6379/0?cluster_retry_seconds=5")
    assert str(plain.value) == (
        "ledger: cluster_retry_seconds in the ledger URL "
        "redis://127.0.0.1:6379/0?cluster_retry_seconds=5 applies to Redis Cluster only; "
        "use a redis+cluster:// URL, or drop the option")


def test_a_call_made_right_after_a_master_died_waits_for_the_promotion(
    redis_cluster: RedisCluster,
) -> None:
    ns = "late-" + uuid.uuid4().hex[:8]
    master = redis_cluster.master_of(f"{{{ns}}}")
    replica = redis_cluster.replica_of(master)
    survivor = next(p for p in redis_cluster.masters() if p != master)
    url = f"redis+cluster://127.0.0.1:{survivor}"
    setup = RedisLedger(url, namespace=ns)
    b = day_bucket(setup, "role:r", 1_000)
    assert isinstance(reserve(setup, [b], 100, "before"), Reservation)
    redis_cluster.cli(master, "WAIT", "1", "2000")  # replicated, so the books survive
    setup.close()

    redis_cluster.kill(master)
    # No waiting: the dead master's slot fails the call at once, and nothing is charged.
    impatient = RedisLedger(url + "?cluster_retry_seconds=0", namespace=ns)
    with pytest.raises(LedgerUnavailable) as caught:
        reserve(impatient, [b], 100, "impatient")
    assert caught.value.url == url + "?cluster_retry_seconds=0"
    impatient.close()
    # The default window: a new client's first call waits for the promotion.
    patient = RedisLedger(url, namespace=ns)
    assert isinstance(reserve(patient, [b], 250, "after"), Reservation)
    assert redis_cluster.master_of(f"{{{ns}}}") == replica
    assert patient.reservation_state("impatient") is None
    assert patient.reservation_state("before") == "reserved"
    assert [(s.spent_nano, s.reserved_nano) for s in patient.status([b])] == [(0, 350)]
    assert patient.settle("after", 200, led_usage()).cost_nano == 200
    assert [(s.spent_nano, s.reserved_nano) for s in patient.status([b])] == [(200, 100)]
    patient.close()


def test_a_window_that_runs_out_says_what_it_waited_for_and_how_to_widen_it() -> None:
    from tests.fixtures.redis_server import free_port

    url = f"redis+cluster://127.0.0.1:{free_port()}?cluster_retry_seconds=0.3"
    led = RedisLedger(url, namespace="nobody")
    with pytest.raises(LedgerUnavailable) as caught:
        led.now()
    reason = caught.value.reason
    assert reason.startswith("RedisClusterException: Redis Cluster cannot be connected.")
    assert re.search(r"; still failing after 0\.\d s of retries \(cluster_retry_seconds=0\.3: "
                     r"raise it above your cluster's failover time, cluster-node-timeout "
                     r"\+ ~1 s\)$", reason), reason


def test_a_replica_promoted_without_the_namespace_is_a_detected_loss_until_recovered(
    redis_cluster: RedisCluster,
) -> None:
    """Async replication's worst case: the promoted replica lacks the namespace.

    Made certain rather than waited for: after the promotion (and before any
    client reaches the new master) the namespace's keys are deleted there, the
    state a replica that never received them would be promoted in. The empty
    ledger is refused (invariant 10), not taken for a new one."""
    ns = "gone-" + uuid.uuid4().hex[:8]
    master = redis_cluster.master_of(f"{{{ns}}}")
    replica = redis_cluster.replica_of(master)
    url = f"redis+cluster://127.0.0.1:{next(p for p in redis_cluster.masters() if p != master)}"
    led = RedisLedger(url, namespace=ns)
    b = day_bucket(led, "role:r", 1_000)
    assert isinstance(reserve(led, [b], 400, "kept"), Reservation)
    assert led.settle("kept", 300, led_usage()).cost_nano == 300
    redis_cluster.kill(master)
    deadline = time.monotonic() + 15
    while replica not in redis_cluster.masters():
        assert time.monotonic() < deadline, "the replica was never promoted"
        time.sleep(0.05)
    keys = sorted(redis_cluster.cli(replica, "KEYS", f"cb:{{{ns}}}:*").split())
    p = f"cb:{{{ns}}}:"
    rollups = [k for k in keys if k.startswith(p + "ru:")]
    assert len(rollups) == 1  # the settle's hourly rollup, replicated with it
    assert keys == sorted([p + "b:role:r|day|p1", p + "epoch", p + "records", *rollups,
                           *ended(p, int(rollups[0].rsplit(":", 1)[1]), "kept")])
    assert redis_cluster.cli(replica, "DEL", *keys).strip() == str(len(keys))

    with pytest.raises(LedgerReset) as caught:
        reserve(led, [b], 100, "after")  # this client saw the epoch: it knows
    assert "lost its state" in str(caught.value)
    assert redis_cluster.master_of(f"{{{ns}}}") == replica
    assert led.reservation_state("after") is None
    fresh = RedisLedger(url, namespace=ns)  # a client started after the loss is refused too
    with pytest.raises(LedgerReset):
        reserve(fresh, [b], 100, "fresh")
    led.recover(who="test", reason="failover to a replica without the writes")
    assert isinstance(reserve(fresh, [b], 100, "fresh"), Reservation)
    assert [(s.spent_nano, s.reserved_nano) for s in fresh.status([b])] == [(0, 100)]
    led.close()
    fresh.close()


def test_doctor_judges_replicas_and_the_failover_window(redis_cluster: RedisCluster) -> None:
    from typer.testing import CliRunner

    from crew_budget.cli import app

    def doctor(url: str) -> list[str]:
        result = CliRunner().invoke(app, ["doctor", "--ledger", url])
        assert result.stdout.splitlines()[0] == f"ledger {url}"
        return result.stdout.splitlines()

    lines = doctor(redis_cluster.url)
    assert "  OK   cluster: cluster_state ok" in lines
    assert "  OK   replicas: every master has a replica" in lines
    assert ("  OK   failover: calls wait up to 5 s (cluster_retry_seconds) for a promotion "
            "taking ~2 s (cluster-node-timeout 1 s + election)") in lines
    short = doctor(redis_cluster.url + "?cluster_retry_seconds=1.5")
    assert ("  WARN failover: a promotion takes ~2 s (cluster-node-timeout 1 s + election) "
            "but calls wait only 1.5 s: during a failover they fail with LedgerUnavailable. "
            "Fix: ?cluster_retry_seconds=3 in the ledger URL, or a lower "
            "cluster-node-timeout") in short
    # A master whose replica died: its namespaces have no one to take over.
    master = next(iter(redis_cluster.masters()))
    redis_cluster.kill(redis_cluster.replica_of(master))
    deadline = time.monotonic() + 15
    while True:
        lines = doctor(redis_cluster.url)
        if any("replicas:" in line and "WARN" in line for line in lines) \
                or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert ("  WARN replicas: 1 master(s) without a healthy replica: if one dies, the budgets "
            "of its namespaces are unreachable until it is back. Fix: one replica per master "
            "(redis-cli --cluster add-node ... --cluster-slave)") in lines


def test_an_operation_that_must_not_repeat_waits_only_while_the_cluster_refuses_it(
    tmp_path: Path,
) -> None:
    """``claim`` (SET NX: a repeat that landed would answer False) is re-sent only
    on replies saying it never ran. A one-node cluster whose slots are taken
    away answers CLUSTERDOWN: the claim waits until the slots are back, then
    lands exactly once."""
    cluster = RedisCluster(tmp_path, masters=1, replicas=0)
    cluster.start()
    try:
        (port,) = cluster.nodes
        led = RedisLedger(cluster.url + "?cluster_retry_seconds=10", namespace="once")
        assert led.claim("warm", 60) is True  # the client knows the topology
        assert cluster.cli(port, "CLUSTER", "DELSLOTSRANGE", "0", "16383").strip() == "OK"

        def give_back() -> None:
            time.sleep(0.5)
            cluster.cli(port, "CLUSTER", "ADDSLOTSRANGE", "0", "16383")

        helper = threading.Thread(target=give_back)
        helper.start()
        assert led.claim("m", 60) is True
        helper.join()
        assert led.claim("m", 60) is False  # landed once: the marker is there
        assert sorted(cluster.cli(port, "KEYS", "cb:{once}:claim:*").split()) == [
            "cb:{once}:claim:m", "cb:{once}:claim:warm"]
        led.close()
    finally:
        cluster.stop()
