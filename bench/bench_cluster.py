"""Redis Cluster: reservations per second with 1 vs 3 masters, many namespaces.

    python bench/bench_cluster.py [seconds] [processes] [namespaces]

Starts its own clusters on loopback (``tests/fixtures/redis_cluster.py``;
needs redis-server and redis-cli), one after the other:

- a plain ``redis://`` server (the reference: no cluster client);
- a 1-master cluster (all 16384 slots on one node);
- a 3-master cluster, no replicas;
- a 3-master cluster with one replica each (what the failover tests run).

On each, ``processes`` processes loop ``RedisLedger.reserve`` + ``settle``
for ``seconds`` seconds, each call on the next of ``namespaces`` namespaces
(crews or tenants: one hash tag each, so one slot each, spread over the
masters by CRC16). Printed: reservations per second in all, how the
namespaces spread over the masters, and (first, one process, one namespace)
the p50 of one reserve + settle: what the cluster client costs per call.

Then the price of synchronous replication: ``WAIT 1 100`` sent after each
write on the same connection (the only way it means anything), against the
write alone, p50 µs, on a master of the replicated cluster.

Results print as markdown tables. Timings are never assertions in tests.
"""

from __future__ import annotations

import multiprocessing as mp
import statistics
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import redis_server

if TYPE_CHECKING:
    from tests.fixtures.redis_cluster import RedisCluster


def _worker(url: str, namespaces: list[str], seconds: float, ready: Any, go: Any,
            out: Any) -> None:
    from crew_budget.ledger import Bucket, RecordDraft, ReserveRequest, new_reservation_id
    from crew_budget.ledger.redis import RedisLedger
    from crew_budget.usage import Usage

    ledgers = [RedisLedger(url, namespace=ns) for ns in namespaces]
    plans = []
    for led in ledgers:
        now = led.now()
        plans.append((led, (Bucket("role:r", "day", "p", 10**15, now - 3600, now + 86_400),
                            Bucket("crew:c", "day", "p", None, now - 3600, now + 86_400))))
    draft = RecordDraft(role="r", model="m", crew="c", estimate_nano=1000, metadata={})
    usage = Usage(10, 0, 0, 10, 0)
    ready.set()
    go.wait()
    n = 0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        led, buckets = plans[n % len(plans)]
        rid = new_reservation_id()
        led.reserve(ReserveRequest(rid, buckets, 1000, 600.0, draft))
        led.settle(rid, 900, usage)
        n += 1
    out.put(n)
    for led in ledgers:
        led.close()


def throughput(url: str, processes: int, seconds: float, namespaces: list[str]) -> float:
    ctx = mp.get_context("spawn")
    out: Any = ctx.Queue()
    go = ctx.Event()
    readies = [ctx.Event() for _ in range(processes)]
    procs = [ctx.Process(target=_worker, args=(url, namespaces[i::processes] or namespaces[:1],
                                                seconds, readies[i], go, out))
             for i in range(processes)]
    for p in procs:
        p.start()
    for r in readies:
        r.wait(60)
    go.set()
    total = sum(out.get(timeout=seconds + 60) for _ in procs)
    for p in procs:
        p.join(30)
    return total / seconds


def latency(url: str, calls: int = 1000) -> float:
    """p50 µs of one reserve + settle, one process, one namespace (the client's cost)."""
    from crew_budget.ledger import Bucket, RecordDraft, ReserveRequest, new_reservation_id
    from crew_budget.ledger.redis import RedisLedger
    from crew_budget.usage import Usage

    led = RedisLedger(url, namespace="latency")
    now = led.now()
    buckets = (Bucket("role:r", "day", "p", 10**15, now - 3600, now + 86_400),
               Bucket("crew:c", "day", "p", None, now - 3600, now + 86_400))
    draft = RecordDraft(role="r", model="m", crew="c", estimate_nano=1000, metadata={})
    usage = Usage(10, 0, 0, 10, 0)
    samples = []
    for _ in range(calls):
        rid = new_reservation_id()
        t = time.perf_counter()
        led.reserve(ReserveRequest(rid, buckets, 1000, 600.0, draft))
        led.settle(rid, 900, usage)
        samples.append(time.perf_counter() - t)
    led.close()
    return statistics.median(samples) * 1e6


def spread(cluster: RedisCluster, namespaces: list[str]) -> str:
    masters = cluster.masters()
    counts = dict.fromkeys(masters, 0)
    for ns in namespaces:
        counts[cluster.master_of(f"{{{ns}}}")] += 1
    return " / ".join(str(c) for c in sorted(counts.values(), reverse=True))


def wait_cost(cluster: RedisCluster, calls: int = 2000) -> tuple[float, float]:
    """p50 µs of INCRBY alone and of INCRBY + WAIT 1 100, one connection, one master."""
    import redis

    port = next(iter(cluster.masters()))
    key = next(f"{{w{i}}}k" for i in range(10_000)
               if cluster.master_of(f"{{w{i}}}") == port)
    client = redis.Redis(port=port, single_connection_client=True)
    alone, waited = [], []
    for i in range(calls):
        for with_wait in ((False, True) if i % 2 else (True, False)):
            pipe = client.pipeline(transaction=False)
            pipe.incrby(key, 1)
            if with_wait:
                pipe.execute_command("WAIT", 1, 100)
            t = time.perf_counter()
            reply = pipe.execute()
            (waited if with_wait else alone).append(time.perf_counter() - t)
            if with_wait:
                assert reply[1] == 1, reply  # the replica acknowledged
    client.close()
    return statistics.median(alone) * 1e6, statistics.median(waited) * 1e6


def main() -> None:
    from tests.fixtures.redis_cluster import RedisCluster

    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 5.0
    processes = int(sys.argv[2]) if len(sys.argv) > 2 else 4
    n_ns = int(sys.argv[3]) if len(sys.argv) > 3 else 48
    namespaces = [f"crew-{i}" for i in range(n_ns)]
    rows: list[tuple[str, float, float, str]] = []
    with redis_server() as url:
        rows.append(("plain `redis://` (reference)", latency(url),
                     throughput(url, processes, seconds, namespaces), "-"))
    wait = (0.0, 0.0)
    for label, masters, replicas in (("1 master", 1, 0), ("3 masters", 3, 0),
                                     ("3 masters + 1 replica each", 3, 1)):
        cluster = RedisCluster(masters=masters, replicas=replicas)
        cluster.start()
        try:
            rows.append((label, latency(cluster.url),
                         throughput(cluster.url, processes, seconds, namespaces),
                         spread(cluster, namespaces)))
            if replicas:
                wait = wait_cost(cluster)
        finally:
            cluster.stop()
    print(f"\n{processes} processes, {seconds:g} s each, {n_ns} namespaces, "
          "RedisLedger.reserve + settle\n")
    print("| ledger | reserve + settle p50 µs, 1 process | reservations/s | "
          "namespaces per master |")
    print("|---|---:|---:|---|")
    for label, p50, rate, where in rows:
        print(f"| {label} | {p50:.0f} | {rate:,.0f} | {where} |")
    print("\nSynchronous replication, one connection to a master, p50 µs:\n")
    print("| write | p50 µs |")
    print("|---|---:|")
    print(f"| INCRBY | {wait[0]:.0f} |")
    print(f"| INCRBY + WAIT 1 100 | {wait[1]:.0f} |")


if __name__ == "__main__":
    main()
