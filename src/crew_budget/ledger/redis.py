"""Redis ledger: one Lua script per operation, cluster-safe, for many machines.

URLs: ``redis://[user:password@]host:6379/0``, ``rediss://`` (TLS), and
``redis+cluster://`` / ``rediss+cluster://`` for Redis Cluster. Needs Redis
>= 6.2 (``XADD ... MINID``) and redis-py (``pip install 'crew-budget[redis]'``).

Every operation that reads and writes is ONE Lua script, so it is atomic
without locks or ``WATCH``, and one network round trip. The scripts are
``lua/*.lua``, each headed by its contract (KEYS, ARGV, returns, invariants);
``lua/_common.lua`` holds the shared helpers and documents the key layout.
They are redis-py ``Script`` objects (``register_script``): called with
``EVALSHA`` and loaded again when the server forgot them (``NOSCRIPT``
after a restart), on a plain ``redis.Redis`` (or ``RedisCluster``) client.

On a plain Redis >= 7 the per-call operations (reserve, settle, release,
reap, status, charge, state) run instead as functions of one library
(``_library``: the same files, ``FUNCTION LOAD`` once per server, ``FCALL``
per call), so the shared helpers of ``_common.lua`` are built once per
server rather than on every call (~5 µs less server time per operation,
bench/README.md). A server that lost the library (a restart without
persistence, ``FUNCTION FLUSH``) gets it loaded again on the next call, as
``NOSCRIPT`` does for scripts; the data's loss is still the EPOCH check's
to refuse. A server without Functions (Redis 6) or a user whose ACL forbids
``FCALL``/``FUNCTION`` is served by ``EVALSHA``, decided once per client.
Redis Cluster keeps ``EVALSHA`` (the library would have to be loaded on
every primary, and the cluster path does not use kept connections: not
measured there, not done).

No private redis-py attribute is used, and no request is built by hand:
every operation goes through redis-py's public API (``evalsha``,
``script_load``; the per-call reserve/settle/release through the public
``Connection`` methods of the client's own pool, see ``_kept_call``, packed
by hiredis's public ``pack_command`` as redis-py's serializer does, see
``_send_args``), so a redis-py release cannot silently route around it.
That costs client CPU:
redis-py's generic command path took ~40 µs per command more than the
hand-built frames this module used before (with hiredis; ~60 µs with
redis-py's pure-Python parser; measured side by side, bench/README.md),
paid twice per guarded call. ``hiredis`` (``pip install
'crew-budget[redis]'`` brings it) makes redis-py parse replies in C,
~35-40 µs less per guarded call than its pure-Python parser. Forked processes are
safe: redis-py's connection pool notices the new pid and opens its own
connections.

Every key of a namespace starts with ``cb:{<namespace>}:``: the braces are a
Redis Cluster hash tag, so all keys live in one slot and every script is
single-slot.

Redis Cluster (``redis+cluster://host:port``; one node is enough, the client
learns the others and follows MOVED). A namespace (give each tenant or crew
fleet its own ``namespace:``) lives in one slot, so on one master; different
namespaces spread over the masters by CRC16 (tests/ledger/test_cluster.py:
24 namespaces land on all 3 masters). One namespace is never faster than one
master: a cluster scales by namespaces. ``EVALSHA`` is routed by its first
key; after ``NOSCRIPT`` (a promoted replica, ``SCRIPT FLUSH``) the script is
loaded on every master and run again.

Failover: when a master dies, its slots (and, with the default
``cluster-require-full-coverage yes``, the whole cluster) are down until its
replica is promoted, ``cluster-node-timeout`` plus an election (~1 s) later.
Calls wait through it: on a cluster URL every operation retries the failover
symptoms (dropped connection, timeout, CLUSTERDOWN, TRYAGAIN, READONLY,
uncovered slots) for up to ``?cluster_retry_seconds=`` (default 5; 0 turns
it off), then fails with ``LedgerUnavailable`` saying how long it waited.
Only what is safe to send twice is re-sent: reserve (its id makes a repeat
answer "dup"), settle, release, reads; ``append_record``, ``reset``,
``recover`` and ``claim`` only after a reply saying the command never ran.
``crew-budget doctor`` warns when the window is shorter than
``cluster-node-timeout`` + 1 s or a master has no healthy replica.

Replication is asynchronous: a write the dying master acknowledged but had
not sent to its replica yet dies with it. For the books: a lost settle
leaves its reservation held, charged at its reserved amount when the lease
ends (an over-count); a lost reserve makes its settle ``lost`` (counted in
``Guard.counters["dropped_settles"]``, logged): that call's cost is not
counted, the one under-count; a lost epoch (a namespace's very first
reserve) or a replica promoted without the namespace reads as a loss
(``LedgerReset``) until ``crew-budget recover --accept-loss``. At most the
writes in flight at the crash are lost; tests/faults/test_cluster_failover.py
saw none in its runs (~650 racing calls, a master SIGKILLed after 100).
``WAIT 1 <ms>`` after each write would close the gap for ~+30 µs p50 per
write on loopback (bench/bench_cluster.py), but it only covers writes made
on its own connection, and redis-py's public cluster API routes a keyless
command like WAIT to a node, not to the connection that wrote: not done.

The ledger clock is Redis ``TIME``, read inside the scripts: ``reserve``
refuses (``ClockSkew``) buckets whose window does not contain it, so a client
with a wrong clock cannot charge the wrong day.

Storage stays bounded: counters expire at their window's end plus the
retention period; a reservation's key lives while it is held and is deleted
when it ends, and its id stays known in a compact per-day tombstone set
(~14 bytes each) until the end of the next UTC day (at least a day), so
repeated settles and releases stay idempotent; spend records go to a stream
trimmed by ``MINID`` to the retention period on every append, as compact
entries (~75 bytes) for settles, releases and expiries. About 85 bytes per
call in all with the defaults (bench/bench_redis_memory.py; layouts:
TOMBSTONES and COMPACT in ``lua/_common.lua``).

Timeouts: 1 s to connect and 2 s per operation unless the URL says
otherwise, e.g. ``redis://host:6379/0?socket_timeout=0.5&socket_connect_timeout=0.3``
(seconds; redis-py enforces both on every command). A
reserve that timed out may still run on a server that was only slow; the
guard releases it with its next call.

Integrity: a Redis that lost its data (restart without persistence,
``FLUSHALL``/``FLUSHDB``, eviction, failover to an empty replica) is detected
by the epoch key ``P.."epoch"`` that every reserve script checks against the
epoch this client saw (see EPOCH in ``lua/_common.lua``), and refused with
``LedgerReset`` until ``crew-budget recover --accept-loss``. Detected: any
loss while at least one client that saw the old epoch keeps making calls (it
marks the ledger lost for every client, new ones included), a second
"fresh" start on top of a known epoch. Not detected: a loss seen only by
clients started after it (they take the empty ledger as new), and the loss
of some keys while the epoch key survives (only ``allkeys-*`` eviction does
that: ``crew-budget doctor`` fails such a policy; the epoch has no expiry, so
``volatile-*`` never takes it).

Connection failures become ``LedgerUnavailable`` naming the URL without its
password. Operations that are safe to repeat (reserve, by its id; settle,
release, reap, status and reads) are retried once after a dropped
connection (on Redis Cluster: through a failover, see above);
``append_record``, ``reset`` and ``claim`` are not.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any, TypeVar, cast
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from crew_budget.errors import (
    AmountError,
    ConfigError,
    LedgerError,
    LedgerReset,
    LedgerUnavailable,
    ReservationError,
)
from crew_budget.ledger.base import (
    ROLLUP_METRICS,
    ROLLUP_RETENTION_DAYS,
    Bucket,
    BucketState,
    ClockSkew,
    Denial,
    Ledger,
    OutboxEntry,
    OutboxState,
    Outcome,
    Override,
    Reservation,
    ReserveRequest,
    Rollup,
    RollupGroup,
    RollupKey,
    RollupTable,
    SettleResult,
    SpendRecord,
    StaleOverrides,
    Unit,
    add_rollup,
    bucket_need,
    decode_margin_bins,
    record_amount,
    rollup_hour,
    rollups_from,
)
from crew_budget.money import MAX_NANO, check_nano
from crew_budget.usage import Usage, check_usage
from crew_budget.windows import WindowName

_hiredis_pack: Callable[[Any], bytes] | None  # see _send_args
try:  # hiredis is optional (the redis extra brings it)
    from hiredis import pack_command as _pack_command

    _hiredis_pack = _pack_command  # its stub types the argument as a 1-tuple
except ImportError:  # pragma: no cover - only without hiredis
    _hiredis_pack = None

try:
    import redis
    import redis.exceptions as rexc
    from redis.backoff import NoBackoff
    from redis.commands.core import Script
    from redis.retry import Retry
except ImportError as _exc:  # pragma: no cover - only without the extra
    raise ConfigError(
        "a redis:// ledger needs redis-py, which is not installed. Fix: "
        "pip install 'crew-budget[redis]'",
        source="ledger",
    ) from _exc

__all__ = ["MAX_NANO", "RedisLedger", "redact_url"]


def _rollup_group(field: str) -> RollupGroup:
    """A rollup hash field (the group's JSON object) as a ``RollupGroup``."""
    d = json.loads(field)
    return (d.get("scope"), d["role"], d["model"], d.get("crew"))


T = TypeVar("T")

# Scripts compare money as Lua doubles: exact below 2^53 nano-USD (~ $9.0M).
# The bound is money.MAX_NANO, the same on every backend (kept importable here).

_DAY_MS = 86_400_000
REDIS_RECORDS_RETENTION_DAYS = 7
"""Default retention of raw records on Redis (rollups are kept 400 days)."""
_ODD_MS = 3_600_000
"""Records appended with a ts further than this from Redis TIME go to the odd set."""
_SCAN_SLACK_S = 86_400.0
"""Stream ids follow Redis TIME, not a record's ts: reads widen the id range by this."""
_PAGE = 5000
_CHARGE_TOMB_MS = 30 * _DAY_MS
"""A journaled charge's id stays known this long, so a late replay is a no-op."""

# Failures that mean "the ledger cannot serve us now", as opposed to a bug
# (a script error is a bug and must not be mistaken for an outage, which
# ``fail_open`` would let through).
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    rexc.ConnectionError,  # also refused, reset, auth failures, LOADING
    rexc.TimeoutError,
    rexc.OutOfMemoryError,
    rexc.ReadOnlyError,  # a replica after failover
    rexc.ClusterError,
    rexc.TryAgainError,
    rexc.NoPermissionError,
    rexc.SlotNotCoveredError,  # part of the cluster is down
    rexc.RedisClusterException,  # no node reachable, slots not covered (not a RedisError)
    OSError,
)
# Redis Cluster failover: what a call may wait through, within the URL's
# ``cluster_retry_seconds``. A killed master first drops connections, then
# the whole cluster answers CLUSTERDOWN (with the default
# ``cluster-require-full-coverage yes``) until its replica is promoted.
_FAILOVER: tuple[type[BaseException], ...] = (
    rexc.ConnectionError,
    rexc.TimeoutError,
    rexc.ClusterError,  # CLUSTERDOWN, MASTERDOWN
    rexc.TryAgainError,
    rexc.ReadOnlyError,
    rexc.RedisClusterException,
    OSError,
)
# Replies that say the command never ran: safe to send again even when the
# operation is not idempotent (append_record, reset, claim).
_NOT_RUN: tuple[type[BaseException], ...] = (
    rexc.ClusterError,
    rexc.TryAgainError,
    rexc.ReadOnlyError,
    rexc.SlotNotCoveredError,
)
_CLUSTER_RETRY_S = 5.0
"""Default ``cluster_retry_seconds``: long enough for a replica promotion with
``cluster-node-timeout`` up to ~3 s; set it above yours (see _url_cluster_retry)."""
_RETRY_PAUSE_S = 0.05
_STATES: dict[str, Outcome] = {
    "reserved": "reserved",
    "settled": "settled",
    "released": "released",
    "expired": "expired",
    "unguarded": "unguarded",
}


def redact_url(url: str) -> str:
    """``url`` with any password (userinfo or ``?password=``) replaced by ``***``."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        # redis://secret@host: to redis-py a lone userinfo is the password.
        userinfo = userinfo.split(":", 1)[0] + ":***" if ":" in userinfo else "***"
        netloc = f"{userinfo}@{hostport}"
    query = parts.query
    pairs = parse_qsl(query, keep_blank_values=True)
    if any(k.lower() == "password" for k, _ in pairs):
        query = urlencode(
            [(k, "***" if k.lower() == "password" else v) for k, v in pairs], safe="*"
        )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _secrets(url: str) -> list[str]:
    parts = urlsplit(url)
    found = [parts.password or ""]
    if parts.username and parts.password is None:
        found.append(parts.username)
    found += [v for k, v in parse_qsl(parts.query) if k.lower() == "password"]
    return sorted({s for v in found for s in (v, unquote(v)) if s}, key=len, reverse=True)


@lru_cache(maxsize=1)
def _sources() -> dict[str, str]:
    """Each operation's script: the shared helpers, then its own file."""
    lua = resources.files("crew_budget.ledger") / "lua"
    common = (lua / "_common.lua").read_text(encoding="utf-8")
    names = ("reserve", "settle", "release", "reap", "status", "reset", "append_record",
             "charge", "recover", "state")
    return {n: common + "\n" + (lua / f"{n}.lua").read_text(encoding="utf-8") for n in names}


_LIBRARY_OPS = ("reserve", "settle", "release", "reap", "status", "charge", "state")
"""The operations served from the function library (Redis >= 7): the ones the
ledger runs on its kept connections (``_kept_call``), reserve and settle first."""


@lru_cache(maxsize=1)
def _library() -> tuple[str, str]:
    """The Redis Functions library of the hot operations: its name and its code.

    The same ``lua/*.lua`` text as the scripts (``_sources``): ``_common.lua``
    once at the library's top level, then each operation file as the body of
    ``function(KEYS, ARGV) ... end`` registered as ``<library>_<op>``. Inside,
    ``KEYS`` and ``ARGV`` are that function's parameters, so the files read
    the same either way. Why: an ``EVALSHA`` runs the whole script text on
    every call, so the ~40 shared helpers (closures, pattern strings, tables)
    are built again each time; ``FUNCTION LOAD`` builds them once per server
    and ``FCALL`` runs only the operation's body.

    The name carries a digest of the code, so two crew-budget versions on
    one Redis each load (and call) their own library, and a changed script
    is never served by a stale function.
    """
    lua = resources.files("crew_budget.ledger") / "lua"
    common = (lua / "_common.lua").read_text(encoding="utf-8")
    bodies = {n: (lua / f"{n}.lua").read_text(encoding="utf-8") for n in _LIBRARY_OPS}
    digest = hashlib.sha1(
        "\0".join([common, *bodies.values()]).encode(), usedforsecurity=False).hexdigest()
    name = "crewbudget_" + digest[:16]
    # Redis 7.0 loads a library with only ``redis`` in its globals (no
    # ``string``, ``math``, ``cjson``), so the helpers are built on the first
    # FCALL after a load, once, and kept in the library's ``built`` upvalue.
    parts = [f"#!lua name={name}", "local built", "local function build()", common,
             "local op = {}"]
    for op, body in bodies.items():
        parts.append(f"op.{op} = function(KEYS, ARGV)\n{body}\nend")
    parts.append("return op\nend")
    for op in bodies:
        parts.append(f"redis.register_function('{name}_{op}', function(KEYS, ARGV)\n"
                     f"  built = built or build()\n  return built.{op}(KEYS, ARGV)\nend)")
    return name, "\n".join(parts) + "\n"


_FUNCTION_NAMES: dict[str, str] = {}
"""Operation -> its function's name in the library (``_function_name``)."""


def _function_name(op: str) -> str:
    """``<library>_<op>``, the name ``FCALL`` takes, remembered per operation."""
    name = _FUNCTION_NAMES[op] = f"{_library()[0]}_{op}"
    return name


def _send_args(conn: Any, args: tuple[str | bytes | int, ...]) -> None:
    """Send one command on a redis-py ``Connection``.

    With hiredis, what ``Connection.send_command`` does with it, without the
    per-argument pass redis-py's ``HiredisRespSerializer`` makes first (it
    turns ``bytearray``/``memoryview`` into ``bytes`` and splits a first
    argument holding spaces; ours are ``str``, ``bytes`` and ``int``, and the
    command a single word): ``hiredis.pack_command``, the function that
    serializer ends in, then the public ``send_packed_command``. The bytes
    sent are the same; the pass cost ~4 µs per reserve (31 arguments,
    bench/README.md). Without hiredis: ``send_command``.
    """
    if _hiredis_pack is None:
        conn.send_command(*args)
    else:
        conn.send_packed_command([_hiredis_pack(args)])


def _no_functions(exc: BaseException) -> bool:
    """Whether an error reply says this server or user cannot use Redis Functions:
    no such command (Redis < 7) or an ACL refusal (``NOPERM``)."""
    return isinstance(exc, rexc.NoPermissionError) or str(exc).lower().startswith(
        ("unknown command", "unknown subcommand"))


def _url_timeouts(url: str, shown: str, connect: float, op: float) -> tuple[float, float]:
    """``?socket_connect_timeout=`` and ``?socket_timeout=`` (seconds) from the URL,
    which win over the constructor's defaults (1 s to connect, 2 s per operation).

    Read here, not only by redis-py, so that a bad value is a ``ConfigError``
    naming the key and the fix, not redis-py's bare ``ValueError``.
    """
    found = {"socket_connect_timeout": connect, "socket_timeout": op}
    for key, value in parse_qsl(urlsplit(url).query):
        if key not in found:
            continue
        try:
            seconds = float(value)
        except ValueError:
            seconds = -1.0
        if not 0 < seconds < 86_400:
            raise ConfigError(
                f"{key}={value!r} in the ledger URL {shown} is not a timeout; write seconds "
                f"greater than 0, e.g. ?{key}=0.5",
                source="ledger",
            )
        found[key] = seconds
    return found["socket_connect_timeout"], found["socket_timeout"]


def _url_cluster_retry(url: str, shown: str) -> float:
    """``?cluster_retry_seconds=`` from a cluster URL (default 5; 0 turns it off).

    How long one call keeps retrying while Redis Cluster fails over (a master
    died and its replica is not promoted yet), instead of failing with
    ``LedgerUnavailable`` at once. Promotion takes ``cluster-node-timeout``
    plus an election (~0.5-1 s), so set it above that. Only cluster URLs take
    it: a plain Redis has no replica that takes over by itself.
    """
    parts = urlsplit(url)
    values = [v for k, v in parse_qsl(parts.query) if k == "cluster_retry_seconds"]
    if not values:
        return _CLUSTER_RETRY_S if parts.scheme.endswith("+cluster") else 0.0
    if not parts.scheme.endswith("+cluster"):
        raise ConfigError(
            f"cluster_retry_seconds in the ledger URL {shown} applies to Redis Cluster only; "
            f"use a redis+cluster:// URL, or drop the option",
            source="ledger",
        )
    try:
        seconds = float(values[-1])
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds <= 600:
        raise ConfigError(
            f"cluster_retry_seconds={values[-1]!r} in the ledger URL {shown} is not a retry "
            "window; write seconds from 0 (no waiting) to 600, e.g. ?cluster_retry_seconds=5",
            source="ledger",
        )
    return seconds


def _without(url: str, key: str) -> str:
    """``url`` without the query option ``key`` (redis-py refuses options it does not know)."""
    parts = urlsplit(url)
    pairs = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != key]
    return urlunsplit(parts._replace(query=urlencode(pairs)))


def _lonely(nodes: Mapping[str, Mapping[str, Any]]) -> int:
    """How many slot-serving masters have no healthy replica (``CLUSTER NODES``,
    as redis-py parses it): their namespaces are down until they come back."""
    def healthy(flags: str) -> bool:
        return not {"fail", "fail?", "noaddr", "handshake"} & set(flags.split(","))

    masters = {n["node_id"] for n in nodes.values()
               if "master" in n["flags"].split(",") and n.get("slots") and healthy(n["flags"])}
    covered = {n["master_id"] for n in nodes.values()
               if "slave" in n["flags"].split(",") and healthy(n["flags"])}
    return len(masters - covered)


def _loss(marker: str) -> str:
    """The readable part of a ``lost:<ts>:<what>`` epoch."""
    _lost, _, rest = marker.partition(":")
    ts, _, what = rest.partition(":")
    try:
        from datetime import datetime, timezone

        when = datetime.fromtimestamp(float(ts), timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    except ValueError:
        return rest
    return f"{what}; detected {when}"


def _check_nano(what: str, value: int) -> None:
    check_nano(what, value)


_UNIT_LETTERS = {"usd": "", "input_tokens": "i", "output_tokens": "o", "calls": "c"}
"""A bucket's unit as the reserve script's UNITS argument spells it."""


@lru_cache(maxsize=1024)
def _who(role: str, model: str, crew: str | None) -> str:
    return json.dumps({"role": role, "model": model, "crew": crew}, separators=(",", ":"))[1:-1]


def _tail(role: str, model: str, crew: str | None, estimate: int, metadata: Mapping[str, Any]
          ) -> str:
    """The record fields known before the call, as JSON without its braces."""
    meta = json.dumps(dict(metadata), separators=(",", ":"), default=str) if metadata else "{}"
    return f'{_who(role, model, crew)},"estimate_nano":{int(estimate)},"metadata":{meta}'


def _span_field(keys: Sequence[str], elements: Sequence[str]) -> str:
    """The RESERVATION key spans (see lua/_common.lua), or "" if a key is escaped.

    ``elements``: the buckets JSON's elements, ``[key, ...]`` each.
    """
    spans = []
    offset = 1  # "["
    for key, element in zip(keys, elements, strict=True):
        quoted = json.dumps(key, ensure_ascii=False)
        if quoted != f'"{key}"':
            return ""
        spans.append(f"{offset + 2}+{len(key.encode())}")  # past '["'
        offset += len(element.encode()) + 1  # and the ","
    return "@" + ",".join(spans)


_TS_MOD = 1 << 20
"""COMPACT records keep the ledger clock's microseconds modulo this (lua/_common.lua)."""
_COMPACT_OUTCOMES: dict[str, Outcome] = {"1": "settled", "2": "released", "3": "expired",
                                          "4": "blocked"}


def _compact_record(f: Mapping[str, str], contexts: Mapping[str, Mapping[str, Any]]
                    ) -> SpendRecord:
    """A COMPACT stream entry (see lua/_common.lua) as the SpendRecord it stands for."""
    g = contexts.get(f["g"])
    if g is None:  # its day's contexts were deleted by hand: say so rather than guess
        g = {"role": f"(unknown context {f['g']})", "model": "", "crew": None, "metadata": {}}
    return SpendRecord(
        ts=int(f["t"]) / 1_000_000, reservation_id=f["i"], outcome=_COMPACT_OUTCOMES[f["o"]],
        role=g["role"], model=g["model"], crew=g.get("crew"),
        input_tokens=int(f["n"]), cached_input_tokens=int(f["k"]),
        cache_write_tokens=int(f["w"]), output_tokens=int(f["x"]),
        reasoning_tokens=int(f["z"]), estimate_nano=int(f["e"]), cost_nano=int(f["c"]),
        scope=g.get("scope"), metadata=json.loads(f["m"]) if f["m"] else g["metadata"],
    )


@dataclass(frozen=True, slots=True)
class _Plan:
    """What reserve sends that depends only on the buckets (see ``_plan``)."""

    keys: tuple[bytes, ...]
    """The counter keys: the reserve script's KEYS after the reservation's."""
    fixed_args: tuple[bytes, ...]
    """Its ARGV between the record tail and the epoch (see lua/reserve.lua).

    Both UTF-8 encoded once per set of buckets: redis-py sends bytes as they
    are, and encodes each str argument on every call (~20 per reserve)."""
    letters: tuple[str, ...] = ()
    """UNITS (lua/reserve.lua): each bucket's unit letter ("" for USD), or
    empty when every bucket is USD (then no units argument is sent)."""


class RedisLedger(Ledger):
    """Budgets shared by every process and machine that reaches one Redis.

    ``namespace`` keeps independent deployments apart in one database (it is
    the hash tag of every key). ``reap_limit`` bounds how many expired
    leases one operation corrects, so no script runs long.
    """

    def __init__(
        self,
        url: str,
        *,
        namespace: str = "default",
        retention_days: int = 90,
        records_retention_days: int | None = None,
        reap_limit: int = 100,
        connect_timeout: float = 1.0,
        op_timeout: float = 2.0,
    ) -> None:
        if not namespace or any(c in namespace for c in "{}"):
            raise ConfigError(
                f"namespace {namespace!r} cannot be a Redis hash tag; use letters, digits, "
                "'_', '.' or '-'",
                source="ledger",
            )
        self.url = redact_url(url)
        self.namespace = namespace
        self._secrets = _secrets(url)
        self.retention_ms = int(retention_days) * _DAY_MS
        self._retention_s = int(retention_days) * 86_400
        self.reap_limit = int(reap_limit)
        # Raw records have their own, shorter retention (every call is in the
        # hourly rollups anyway, kept ROLLUP_RETENTION_DAYS): a record is
        # ~600 bytes of RAM, a rollup field a few per group-hour. None:
        # REDIS_RECORDS_RETENTION_DAYS (at most retention_days); 0: none.
        if records_retention_days is None:
            records_retention_days = min(REDIS_RECORDS_RETENTION_DAYS, int(retention_days))
        self.records_retention_ms = int(records_retention_days) * _DAY_MS
        self._retention_str = str(self.records_retention_ms)
        self._reap_str = str(self.reap_limit)
        self._plans: dict[tuple[Bucket, ...], _Plan] = {}
        self._last_plan: tuple[tuple[Bucket, ...], _Plan] | None = None
        self.prefix = f"cb:{{{namespace}}}:"
        self._leases = self.prefix + "leases"
        self._stream = self.prefix + "records"
        self._odd = self.prefix + "odd"
        self._oddseq = self.prefix + "oddseq"
        self._epoch_key = self.prefix + "epoch"
        self._epoch = ""  # the epoch last seen; see EPOCH in lua/_common.lua
        scheme = urlsplit(url).scheme
        if scheme not in ("redis", "rediss", "redis+cluster", "rediss+cluster"):
            raise ConfigError(
                f"unsupported Redis URL scheme {scheme!r} in {self.url}; use redis://, "
                "rediss://, redis+cluster:// or rediss+cluster://",
                source="ledger",
            )
        self.cluster_retry_seconds = _url_cluster_retry(url, self.url)
        self._raw_url = _without(url, "cluster_retry_seconds")
        connect_timeout, op_timeout = _url_timeouts(url, self.url, connect_timeout, op_timeout)
        self.connect_timeout, self.op_timeout = connect_timeout, op_timeout
        self._options: dict[str, Any] = {
            "socket_connect_timeout": connect_timeout,
            "socket_timeout": op_timeout,
            "decode_responses": True,
            # No hidden retries with back-off: we retry once ourselves, and
            # only what is safe to repeat, so an outage fails fast.
            "retry": Retry(NoBackoff(), 0),
        }
        self._lock = threading.Lock()
        self._client: Any = None
        self._cluster = urlsplit(url).scheme.endswith("+cluster")
        self._lua: dict[str, Script] = {}
        # Connections kept between calls (see _kept_call), and the
        # (client id, pid) they belong to.
        self._idle: list[Any] = []
        self._idle_owner: tuple[int, int] = (0, 0)
        # Whether kept calls try the function library first (see _send);
        # False once the server or user turned out unable to run it.
        self._functions = True

    def _conn(self) -> Any:
        """The client, made on first use.

        Not in ``__init__``: a cluster client connects as it is made, and a
        ledger that is down when the guard starts must fail each call (closed,
        or open if configured), not the guard's construction.
        """
        try:
            return self._connect()
        except _UNAVAILABLE as exc:  # "cannot be connected", a node refusing
            raise self._unavailable(exc) from exc

    def _connect(self) -> Any:
        """``_conn`` without the translation: a cluster client that cannot be made
        raises ``RedisClusterException`` or, when a node it learnt of refuses,
        ``ConnectionError`` (``_run`` may wait through either)."""
        client = self._client
        if client is None:
            with self._lock:
                if self._client is None:
                    parts = urlsplit(self._raw_url)
                    if parts.scheme.endswith("+cluster"):
                        from redis.cluster import RedisCluster

                        plain = parts._replace(scheme=parts.scheme.removesuffix("+cluster"))
                        made: Any = RedisCluster.from_url(urlunsplit(plain), **self._options)
                    else:
                        made = redis.Redis.from_url(self._raw_url, **self._options)
                    self._lua = {
                        name: cast(Script, made.register_script(source))
                        for name, source in _sources().items()
                    }
                    self._client = made
                client = self._client
        return client

    # -- plumbing -------------------------------------------------------------

    def _unavailable(self, exc: BaseException, waited: float = 0.0) -> LedgerUnavailable:
        reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if waited:
            reason += (f"; still failing after {waited:.1f} s of retries "
                       f"(cluster_retry_seconds={self.cluster_retry_seconds:g}: raise it "
                       "above your cluster's failover time, cluster-node-timeout + ~1 s)")
        for secret in self._secrets:
            reason = reason.replace(secret, "***")
        return LedgerUnavailable(self.url, reason)

    def _run(self, op: Callable[[Any], T], *, idempotent: bool = True, tries: int = 0,
             started: float = 0.0) -> T:
        """Run ``op(client)``; once more after a dropped connection if safe; on
        Redis Cluster, again and again through a failover for up to
        ``cluster_retry_seconds`` (see ``_again``). ``tries``/``started``: a
        caller that already failed once itself (``_call``'s fast path)."""
        while True:
            try:
                client = self._connect()
            except _UNAVAILABLE as exc:  # the cluster client cannot be made: nothing sent
                if not self._again(exc, True, tries, started):
                    raise self._unavailable(exc, self._waited(tries, started)) from exc
            else:
                try:
                    return op(client)
                except _UNAVAILABLE as exc:
                    if not self._again(exc, idempotent, tries, started):
                        raise self._unavailable(exc, self._waited(tries, started)) from exc
                except rexc.RedisError as exc:
                    raise self._rejected(exc) from exc
            if tries == 0:
                started = time.monotonic()
            else:
                time.sleep(_RETRY_PAUSE_S)
            tries += 1

    def _waited(self, tries: int, started: float) -> float:
        """Seconds spent retrying through a cluster failover (0: none)."""
        if tries < 2 or self.cluster_retry_seconds <= 0:
            return 0.0
        return max(time.monotonic() - started, 0.05)

    def _again(self, exc: BaseException, idempotent: bool, tries: int, started: float) -> bool:
        """Whether ``_run`` tries once more after ``exc`` (its ``tries``-th failure).

        Only what is safe to send twice: an idempotent operation, or a reply
        saying the command never ran (CLUSTERDOWN, TRYAGAIN, READONLY). A plain
        Redis: one retry after a dropped connection (e.g. Redis restarted and
        the pooled connection died). A cluster: every failover symptom, until
        ``cluster_retry_seconds`` have passed since the first failure.
        """
        # redis-py answers CLUSTERDOWN by re-reading the topology, which may
        # raise in turn: the reply it was handling still says "never ran".
        never_ran = isinstance(exc, _NOT_RUN) or (
            isinstance(exc, rexc.RedisClusterException) and isinstance(exc.__context__, _NOT_RUN))
        if not idempotent and not never_ran:
            return False
        if isinstance(exc, rexc.AuthenticationError):
            return False
        if self.cluster_retry_seconds <= 0:
            return tries == 0 and isinstance(exc, rexc.ConnectionError)
        if not isinstance(exc, _FAILOVER):
            return False
        return tries == 0 or time.monotonic() - started < self.cluster_retry_seconds

    def _rejected(self, exc: BaseException) -> LedgerError | AmountError:
        """A reply Redis refused (e.g. WRONGTYPE): a fault, not an outage; or a
        script's VALIDATION block refusing an argument (``AmountError``)."""
        reason = f"{type(exc).__name__}: {exc}"
        for secret in self._secrets:
            reason = reason.replace(secret, "***")
        if str(exc).startswith("CBINVALID "):  # a script's VALIDATION block (lua/_common.lua)
            return AmountError(
                f"budget ledger {self.url} refused a bad value before writing anything: "
                f"{str(exc)[10:]}. Fix: this is a bug in the caller of the ledger (amounts "
                "are whole nano-USD from 0 to 2^53-1, token counts at most 10^9); the books "
                "are unchanged"
            )
        return LedgerError(
            f"budget ledger {self.url} rejected an operation ({reason}). Fix: the ledger's "
            f"keys ({self.prefix}*) may have been written by another program; give crew-budget "
            "its own `namespace:` or Redis database. The call was not made."
        )

    def _call(self, script: str, keys: Sequence[str | bytes], args: Sequence[str | bytes], *,
              idempotent: bool = True) -> Any:
        """Run one of ``lua/*.lua``: ``EVALSHA``, and ``SCRIPT LOAD`` first when
        the server answers ``NOSCRIPT`` (it restarted, or its scripts were
        flushed); on a plain Redis >= 7 the operations safe to repeat run as
        ``FCALL`` of the function library instead (``_send``).

        What ``Script.__call__`` does, called on the client directly: it
        saves ~8 µs per call (measured, bench/README.md), and reserve and
        settle are on every LLM call's path. On Redis Cluster the client
        routes ``EVALSHA`` by its first key (one hash tag, one slot), and
        ``SCRIPT LOAD`` goes to every master, the one owning the keys
        included (tests/ledger/test_cluster.py flushes the scripts to check).
        """
        def op(c: Any) -> Any:
            lua = self._lua[script]  # made with the client
            if idempotent and not self._cluster:
                return self._kept_call(c, script, lua, keys, args)
            try:
                return c.evalsha(lua.sha, len(keys), *keys, *args)
            except rexc.NoScriptError:
                c.script_load(lua.script)
                return c.evalsha(lua.sha, len(keys), *keys, *args)

        client = self._client
        if idempotent and client is not None and not self._cluster:
            # reserve and settle on every LLM call: straight to the kept
            # connection; the retry loop only after a failure, as its 2nd try.
            try:
                return self._kept_call(client, script, self._lua[script], keys, args)
            except _UNAVAILABLE as exc:
                if not self._again(exc, True, 0, 0.0):
                    raise self._unavailable(exc) from exc
            except rexc.RedisError as exc:
                raise self._rejected(exc) from exc
            return self._run(op, idempotent=True, tries=1, started=time.monotonic())
        return self._run(op, idempotent=idempotent)

    def _kept_call(self, client: Any, script: str, lua: Script, keys: Sequence[str | bytes],
                   args: Sequence[str | bytes]) -> Any:
        """``FCALL`` (or ``EVALSHA``, see ``_send``) on a connection this ledger keeps
        between calls (plain Redis, operations safe to repeat: reserve, settle,
        release, reap, status, charge, state).

        redis-py's own path (``client.evalsha``) takes each command's connection
        from the pool and gives it back: a lock, a pid check and a ``poll`` on
        the socket, plus its generic command plumbing, ~15-20 µs per call
        (bench/README.md, "Keeping connections"), twice per guarded call. Here
        the connections come from the same pool (``ConnectionPool
        .get_connection``, so timeouts, TLS, auth and the parser are the
        client's) and are used through redis-py's public ``Connection
        .send_command`` / ``read_response``, but kept in ``self._idle`` (a list:
        ``pop``/``append`` are atomic, so each thread has its own for the call)
        instead of being returned after every call.

        A connection goes back to the list only after a whole reply was read
        (a result or an error reply). Anything else (a dropped connection, a
        timeout, an interrupt) disconnects it, so a late reply can never be
        read as another call's; after a dropped connection every kept one is
        dropped too (a restarted server closed them all), and ``_run`` retries
        the call once on a new connection. A forked child starts its own list
        (the pool also notices the new pid and opens new connections).
        """
        pid = os.getpid()
        idle = self._idle
        if self._idle_owner != (id(client), pid):
            with self._lock:
                if self._idle_owner != (id(client), pid):
                    self._idle = []  # a new client, or the parent's (never shared)
                    self._idle_owner = (id(client), pid)
                idle = self._idle
        try:
            conn = idle.pop()
        except IndexError:
            conn = client.connection_pool.get_connection()  # connected, checked
        try:
            reply = self._send(conn, script, lua, keys, args)
        except rexc.ResponseError:
            idle.append(conn)  # an error reply, read whole: the connection is fine
            raise
        except BaseException as exc:
            conn.disconnect()
            client.connection_pool.release(conn)
            if isinstance(exc, rexc.ConnectionError):
                while idle:  # the others are most likely dead as well
                    with contextlib.suppress(IndexError):
                        dead = idle.pop()
                        dead.disconnect()
                        client.connection_pool.release(dead)
            raise
        idle.append(conn)
        return reply

    def _send(self, conn: Any, script: str, lua: Script, keys: Sequence[str | bytes],
              args: Sequence[str | bytes]) -> Any:
        """Run operation ``script`` on ``conn``: ``FCALL`` of the function library
        (``_library``) where the server has Redis Functions, else ``EVALSHA``.

        Loading, like ``EVALSHA``'s ``NOSCRIPT`` path: a server that answers
        "Function not found" (it restarted without persistence, or ran
        ``FUNCTION FLUSH``; ``FLUSHALL`` keeps functions) gets ``FUNCTION
        LOAD`` and the call is sent again. A server without Functions (Redis
        < 7: "unknown command"), or a user whose ACL refuses ``FCALL`` or
        ``FUNCTION LOAD``, is served by ``EVALSHA`` from then on (decided
        once per client; ``close`` forgets it). Either way the reply is the
        same script's, so callers cannot tell which ran.
        """
        if self._functions:
            fname = _FUNCTION_NAMES.get(script) or _function_name(script)
            _send_args(conn, ("FCALL", fname, len(keys), *keys, *args))
            try:
                return conn.read_response()
            except rexc.ResponseError as exc:
                if not str(exc).startswith("Function not found"):
                    if not _no_functions(exc):
                        raise
                    self._functions = False
                elif self._load_library(conn, _library()[1]):
                    _send_args(conn, ("FCALL", fname, len(keys), *keys, *args))
                    return conn.read_response()
        _send_args(conn, ("EVALSHA", lua.sha, len(keys), *keys, *args))
        try:
            return conn.read_response()
        except rexc.NoScriptError:  # a restart or SCRIPT FLUSH: load it, run again
            conn.send_command("SCRIPT", "LOAD", lua.script)
            conn.read_response()
            _send_args(conn, ("EVALSHA", lua.sha, len(keys), *keys, *args))
            return conn.read_response()

    def _load_library(self, conn: Any, code: str) -> bool:
        """``FUNCTION LOAD`` the library on ``conn``; False (and ``EVALSHA`` from now
        on) if this server or user cannot load functions.

        ``REPLACE``: clients racing to load it after a restart all succeed (the
        name carries the code's digest, so what they replace is the same code).
        """
        conn.send_command("FUNCTION", "LOAD", "REPLACE", code)
        try:
            conn.read_response()
        except rexc.ResponseError as exc:
            if not _no_functions(exc):
                raise
            self._functions = False
            return False
        return True

    def _bkey(self, bucket: Bucket) -> str:
        return self.prefix + "b:" + bucket.key

    def _expireat(self, bucket: Bucket) -> int:
        return math.ceil(bucket.ends_at) + self._retention_s

    def _plan(self, buckets: tuple[Bucket, ...]) -> _Plan:
        """Everything reserve sends that depends only on the buckets (cached)."""
        last = self._last_plan
        if last is not None and last[0] == buckets:  # the same Buckets again: no hashing
            return last[1]
        plan = self._plans.get(buckets)
        if plan is None:
            for b in buckets:
                if b.limit_nano is not None:
                    _check_nano(f"the limit of {b.key}", b.limit_nano)
            keys = [self._bkey(b) for b in buckets]
            elements = [
                json.dumps([k, b.key, b.limit_nano, b.starts_at, b.ends_at, self._expireat(b),
                            json.dumps(b.scope), *(() if b.unit == "usd" else (b.unit,))],
                           separators=(",", ":"), ensure_ascii=False)
                for k, b in zip(keys, buckets, strict=True)
            ]
            meta = "[" + ",".join(elements) + "]"
            plan = _Plan(
                keys=tuple(k.encode() for k in keys),
                fixed_args=tuple(a.encode() for a in (
                    self._retention_str,
                    self._reap_str,
                    meta,
                    repr(max((float(b.starts_at) for b in buckets), default=0.0)),
                    repr(min((float(b.ends_at) for b in buckets), default=0.0)),
                    str(max((self._expireat(b) for b in buckets), default=0) * 1000),
                    _span_field(keys, elements),
                    *("" if b.limit_nano is None else str(b.limit_nano) for b in buckets),
                    *(str(self._expireat(b)) for b in buckets),
                    *(json.dumps(b.scope) for b in buckets),
                )),
                letters=(tuple(_UNIT_LETTERS[b.unit] for b in buckets)
                         if any(b.unit != "usd" for b in buckets) else ()),
            )
            if len(self._plans) >= 256:  # windows roll over: old plans are dead
                self._plans.clear()
            self._plans[buckets] = plan
        self._last_plan = (buckets, plan)
        return plan

    # -- the contract -----------------------------------------------------------

    def now(self) -> float:
        sec, usec = self._run(lambda c: c.time())
        return int(sec) + int(usec) / 1_000_000

    def reserve(self, request: ReserveRequest) -> Reservation | Denial:
        rid = request.reservation_id
        amount = request.amount_nano
        _check_nano("a reservation", amount)
        plan = self._plan(request.buckets)
        lease_ms = max(0, math.ceil(request.lease_seconds * 1000))
        d = request.draft
        rkey = self.prefix + "r:" + rid
        rid_json = f'"{rid}"' if rid.isalnum() and rid.isascii() else json.dumps(rid)
        amount_s = str(amount)
        tail = _tail(d.role, d.model, d.crew, d.estimate_nano, d.metadata)
        epoch = self._epoch
        # Safe to repeat: a second run with the same id answers "dup".
        version: tuple[str, ...] = (() if request.overrides_version is None
                                    else (str(request.overrides_version),))
        if plan.letters:  # UNITS (lua/reserve.lua): what each bucket takes, in its unit
            takes = {"": "", "i": f"i{int(d.prompt_tokens_estimate)}",
                     "o": f"o{int(d.output_tokens_reserved)}", "c": "c1"}
            version = (version[0] if version else "", ",".join(takes[x] for x in plan.letters))
        reply = self._call("reserve", [self._leases, self._stream, rkey, *plan.keys], [
            rid, rid_json, amount_s, str(lease_ms), str(lease_ms + _DAY_MS), tail,
            *plan.fixed_args, epoch, *version,
        ])
        kind = reply[0]
        if kind == "ok":
            if len(reply) > 2:  # first reserve, or the ledger was recovered: adopt its epoch
                self._epoch = reply[2]
            return Reservation(rid, amount, (int(reply[1]) + lease_ms) / 1000, request.buckets)
        if kind == "reset":
            raise LedgerReset(self.url, _loss(reply[1]))
        if kind == "deny":
            b = request.buckets[int(reply[1]) - 1]
            return Denial(BucketState(b, int(reply[2]), int(reply[3])),
                          bucket_need(b, amount, d))
        if kind == "skew":
            raise ClockSkew(float(reply[1]))
        if kind == "dup":
            return self._existing(rid, reply[1], request)
        if kind == "stale":
            raise StaleOverrides(int(reply[1]))
        raise AssertionError(f"reserve script returned {reply!r}")  # pragma: no cover

    # -- integrity (see EPOCH in lua/_common.lua) --------------------------------

    @property
    def epoch(self) -> str:
        """The epoch this client last saw ("" before its first reserve)."""
        return self._epoch

    def epoch_state(self) -> str | None:
        """The ledger's epoch value now: ``new:``/``recovered:``/``lost:...``, or None."""
        value = self._run(lambda c: c.get(self._epoch_key))
        return None if value is None else str(value)

    def recover(self, *, who: str, reason: str) -> str:
        """Re-arm the ledger after a loss; returns the epoch it replaced.

        Writes a new ``recovered:`` epoch (clients adopt it on their next
        reserve) and an audit record (outcome ``reset``, cost 0, metadata
        ``event: ledger_recovered``, ``who``, ``reason``, ``replaced_epoch``).
        """
        old = self.epoch_state() or ""
        new = "recovered:" + os.urandom(8).hex()
        record = SpendRecord(
            ts=self.now(), reservation_id="", outcome="reset", role="", model="",
            metadata={"event": "ledger_recovered", "who": who, "reason": reason,
                      "replaced_epoch": old, "epoch": new},
        )
        # Not repeated: a second try would write a second audit record.
        self._call("recover", [self._epoch_key, self._stream],
                   [new, record.to_json(), self._retention_str], idempotent=False)
        self._epoch = new
        return old

    def oldest_lease(self) -> float | None:
        """When the earliest lease still held ends (Unix s), or None if none is held."""
        found = self._run(lambda c: c.zrange(self._leases, 0, 0, withscores=True))
        return float(found[0][1]) / 1000 if found else None

    def charge(self, charge_id: str, buckets: Sequence[Bucket], cost_nano: int,
               record: SpendRecord) -> bool:
        _check_nano("a charge", cost_nano)
        keys = [self._stream, self._odd, self._oddseq, self.prefix + "r:" + charge_id,
                *(self._bkey(b) for b in buckets)]
        args = [json.dumps(charge_id), str(int(cost_nano)), str(_CHARGE_TOMB_MS),
                repr(float(record.ts)), record.to_json(), self._retention_str,
                *(str(self._expireat(b)) for b in buckets)]
        if any(b.unit != "usd" for b in buckets):  # UNITS (lua/charge.lua)
            args.append(",".join(
                "" if b.unit == "usd" else _UNIT_LETTERS[b.unit] + str(record_amount(b, 0, record))
                for b in buckets))
        # Safe to repeat: the id's tombstone makes a second run a no-op.
        return int(self._call("charge", keys, args)) == 1

    def inspect(self) -> dict[str, str]:
        """Server facts ``crew-budget doctor`` judges: INFO fields, CONFIG values
        (``config:<name>``, absent where CONFIG is not allowed), the clock skew
        (``clock_skew_s``: Redis TIME minus this machine's) and the epoch."""

        def one(reply: Any) -> dict[str, Any]:
            # Redis Cluster answers per node ({node: reply}): judge the first.
            if isinstance(reply, dict) and reply and all(isinstance(v, dict)
                                                         for v in reply.values()):
                return dict(next(iter(reply.values())))
            return dict(reply) if isinstance(reply, dict) else {}

        def read(c: Any) -> dict[str, str]:
            facts: dict[str, str] = {}
            for section in ("server", "persistence", "memory", "cluster", "replication"):
                for k, v in one(c.info(section)).items():
                    facts[str(k)] = str(v)
            for name in ("maxmemory-policy", "appendonly", "appendfsync", "save", "maxmemory",
                         "cluster-node-timeout"):
                try:
                    got = one(c.config_get(name))
                except rexc.ResponseError:  # CONFIG renamed or forbidden (managed Redis)
                    continue
                if name in got:
                    facts["config:" + name] = str(got[name])
            if facts.get("cluster_enabled") == "1":
                with contextlib.suppress(rexc.RedisError):
                    raw = c.execute_command("CLUSTER", "INFO")
                    if isinstance(raw, bytes):
                        raw = raw.decode()
                    if isinstance(raw, str):
                        raw = dict(line.split(":", 1) for line in raw.splitlines()
                                   if ":" in line)
                    facts.update({str(k): str(v).strip() for k, v in one(raw).items()})
                facts["ledger:cluster_retry_seconds"] = f"{self.cluster_retry_seconds:g}"
                with contextlib.suppress(rexc.RedisError, KeyError, TypeError, AttributeError):
                    facts["cluster_masters_without_replica"] = str(_lonely(c.cluster_nodes()))
            before = time.time()
            sec, usec = c.time()
            facts["clock_skew_s"] = repr(int(sec) + int(usec) / 1e6 - (before + time.time()) / 2)
            epoch = c.get(self._epoch_key)
            facts["epoch"] = "" if epoch is None else str(epoch)
            return facts

        return self._run(read)

    def _existing(self, rid: str, value: str, request: ReserveRequest) -> Reservation:
        """A reserve repeated with the same id: what was reserved the first time."""
        _state, _cost, expires_ms, amount, _tomb, _rid, _tail, meta = value.split("\n", 7)
        stored = json.loads(meta)
        if not stored or [m[1] for m in stored] == [b.key for b in request.buckets]:
            # A tombstone string of an earlier version keeps no buckets
            # ("[]"): the reservation has ended, and these are what the
            # caller asked for.
            buckets = request.buckets
        else:
            rebuilt = []
            for _key, bkey, limit, starts, ends, _x, _scope, *unit in stored:
                # A bucket of another unit: its key ends in "|<unit>".
                base = bkey.rsplit("|", 1)[0] if unit else bkey
                scope, window, period = base.rsplit("|", 2)
                rebuilt.append(Bucket(scope, cast(WindowName, window), period, limit,
                                      float(starts), float(ends),
                                      cast(Unit, unit[0]) if unit else "usd"))
            buckets = tuple(rebuilt)
        return Reservation(rid, int(amount), int(expires_ms) / 1000, buckets)

    def _result(self, rid: str, reply: Sequence[Any]) -> SettleResult:
        if reply[0] == "unknown":
            raise ReservationError(
                f"unknown reservation {rid!r} in Redis ledger {self.url} (namespace "
                f"{self.namespace!r}): it was never made there, or it ended before "
                "yesterday (UTC) and its tombstone expired. Fix: settle the ticket preflight "
                "returned, on the same ledger URL and namespace"
            )
        return SettleResult(_STATES[reply[0]], int(reply[1]) == 1, int(reply[2]))

    def settle(self, reservation_id: str, cost_nano: int, usage: Usage) -> SettleResult:
        check_nano("a settled cost", cost_nano)
        u = check_usage(usage)
        fragment = (
            f'"input_tokens":{int(u.input_tokens)},'
            f'"cached_input_tokens":{int(u.cached_input_tokens)},'
            f'"cache_write_tokens":{int(u.cache_write_tokens)},'
            f'"output_tokens":{int(u.output_tokens)},"reasoning_tokens":{int(u.reasoning_tokens)}'
        )
        # Safe to repeat: settle is idempotent.
        reply = self._call("settle", [self._leases, self._stream,
                                      self.prefix + "r:" + reservation_id],
                           [reservation_id, str(int(cost_nano)), fragment, self._retention_str])
        return self._result(reservation_id, reply)

    def release(self, reservation_id: str) -> SettleResult:
        reply = self._call("release", [self._leases, self._stream,
                                       self.prefix + "r:" + reservation_id],
                           [reservation_id, self._retention_str, self._reap_str])
        return self._result(reservation_id, reply)

    def reap(self, limit: int = 1000) -> int:
        keys = [self._leases, self._stream]
        args = [self._retention_str, str(int(limit))]
        return int(self._call("reap", keys, args))

    def status(self, buckets: Sequence[Bucket]) -> list[BucketState]:
        keys = [self._leases, self._stream, *(self._bkey(b) for b in buckets)]
        args = [self._retention_str, self._reap_str]
        reply = self._call("status", keys, args)
        return [
            BucketState(b, int(reply[2 * i]), int(reply[2 * i + 1])) for i, b in enumerate(buckets)
        ]

    def reservation_state(self, reservation_id: str) -> Outcome | None:
        # Its key while it is held, then its TOMBSTONE (see lua/_common.lua).
        state = self._call("state", [self._leases, self.prefix + "r:" + reservation_id],
                           [reservation_id])
        return _STATES.get(state)

    def append_record(self, record: SpendRecord) -> None:
        keys = [self._stream, self._odd, self._oddseq]
        args = [repr(float(record.ts)), record.to_json(), self._retention_str, str(_ODD_MS)]
        # Not repeated after a dropped connection: the first try may have landed.
        self._call("append_record", keys, args, idempotent=False)

    def records(self, since: float | None = None, until: float | None = None) -> list[SpendRecord]:
        lo = "-" if since is None else str(max(0, math.floor((since - _SCAN_SLACK_S) * 1000)))
        hi = "+" if until is None else str(max(0, math.ceil((until + _SCAN_SLACK_S) * 1000)))
        found: list[SpendRecord] = []

        def read(c: Any) -> None:
            found.clear()
            start = lo
            compact: list[dict[str, str]] = []
            while True:
                page = c.xrange(self._stream, start, hi, count=_PAGE)
                for sid, fields in page:
                    if "r" in fields:
                        found.append(SpendRecord.from_json(fields["r"]))
                    else:
                        # ts: the latest microsecond <= the id's millisecond
                        # with the stored remainder (see COMPACT in _common.lua).
                        top = int(sid.split("-", 1)[0]) * 1000 + 999
                        fields["t"] = str(top - (top - int(fields["t"])) % _TS_MOD)
                        compact.append(fields)
                if len(page) < _PAGE:
                    break
                start = "(" + page[-1][0]
            if compact:
                # Read after the records: context ids are only ever added, so
                # every id those records name is there.
                days = sorted({int(f["t"]) // 86_400_000_000 for f in compact})
                pipe = c.pipeline(transaction=False)
                for day in days:
                    pipe.hgetall(f"{self.prefix}c:{day}")
                contexts = {day: {v: json.loads(k) for k, v in got.items()}
                            for day, got in zip(days, pipe.execute(), strict=True)}
                found.extend(
                    _compact_record(f, contexts[int(f["t"]) // 86_400_000_000]) for f in compact)
            odd = c.zrangebyscore(
                self._odd,
                "-inf" if since is None else repr(float(since)),
                "+inf" if until is None else "(" + repr(float(until)),
            )
            found.extend(SpendRecord.from_json(m.split(":", 1)[1]) for m in odd)

        self._run(read)
        out = [
            r for r in found
            if (since is None or r.ts >= since) and (until is None or r.ts < until)
        ]
        out.sort(key=lambda r: r.ts)  # stable: records of one instant keep their order
        return out

    def rollups(self, since: float | None = None, until: float | None = None) -> list[Rollup]:
        """Read the hour hashes of the span (see ROLLUPS in lua/_common.lua).

        One pipelined HGETALL per hour: ~720 for 30 days, whatever the
        number of calls. Without ``since``, the whole rollup retention.
        """
        hours = self._rollup_hours(since, until)
        acc: dict[RollupKey, list[int]] = {}
        # The same few groups recur every hour: each JSON is decoded once.
        groups: dict[str, RollupGroup] = {}
        for h, fields in zip(hours, self._run(lambda c: self._read_hours(c, hours)),
                             strict=True):
            hour = float(h)
            for group, value in fields.items():
                g = groups.get(group)
                if g is None:
                    g = groups[group] = _rollup_group(group)
                add_rollup(acc, (hour, *g), list(map(int, value.split())))
        return rollups_from(acc)

    def rollup_table(self, since: float | None = None, until: float | None = None, *,
                     per_hour: bool = True) -> RollupTable:
        """The span's hour hashes as a ``RollupTable``: one pipelined HGETALL per
        hour, as ``rollups``, each field (the group's JSON) its group id and
        decoded once; each value's counts parsed once, without a ``Rollup``."""
        hours = self._rollup_hours(since, until)
        size = len(ROLLUP_METRICS)
        rows: list[tuple[Any, ...]] = []
        sums: dict[str, list[int]] = {}
        append = rows.append
        for h, fields in zip(hours, self._run(lambda c: self._read_hours(c, hours)),
                             strict=True):
            for gid, value in fields.items():
                counts = value.split()
                if len(counts) < size:  # stored before the later metrics existed
                    counts += ["0"] * (size - len(counts))
                if per_hour:
                    append((h, gid, *map(int, counts)))
                    continue
                acc = sums.get(gid)
                if acc is None:
                    sums[gid] = list(map(int, counts))
                else:
                    for i, x in enumerate(map(int, counts)):
                        acc[i] += x
        if not per_hour:
            rows = [(None, gid, *acc) for gid, acc in sums.items()]
        groups = {gid: _rollup_group(gid) for gid in {row[1] for row in rows}}
        return RollupTable(groups, rows, per_hour)

    def _rollup_hours(self, since: float | None, until: float | None) -> list[int]:
        """The hour starts whose hashes hold ``[since, until)`` (see ``rollups``)."""
        now = self.now()
        first = rollup_hour(now - ROLLUP_RETENTION_DAYS * 86400.0 if since is None else since)
        last = rollup_hour(now + 3600 if until is None else until)
        if until is not None and last == until:
            last -= 3600  # until is exclusive
        return [int(first) + 3600 * i for i in range(int((last - first) // 3600) + 1)]

    def _read_hours(self, c: Any, hours: Sequence[int]) -> list[dict[str, str]]:
        pipe = c.pipeline(transaction=False)
        for h in hours:
            pipe.hgetall(f"{self.prefix}ru:{h}")
        return cast(list[dict[str, str]], pipe.execute())

    def resets(self, since: float | None = None, until: float | None = None) -> list[SpendRecord]:
        lo = "-inf" if since is None else repr(float(since))
        hi = "+inf" if until is None else "(" + repr(float(until))
        found = self._run(lambda c: c.zrangebyscore(self.prefix + "resets", lo, hi))
        out = [SpendRecord.from_json(m) for m in found]
        return [r for r in out
                if (since is None or r.ts >= since) and (until is None or r.ts < until)]

    @property
    def records_retention_days(self) -> float:
        return self.records_retention_ms / _DAY_MS

    def claim(self, marker: str, ttl_seconds: float) -> bool:
        key = self.prefix + "claim:" + marker
        ttl_ms = max(1, math.ceil(ttl_seconds * 1000))
        # SET NX is one atomic command: no script needed. Not repeated after a
        # dropped connection: a first try that landed would make it say False.
        ok = self._run(lambda c: c.set(key, "1", nx=True, px=ttl_ms), idempotent=False)
        return bool(ok)

    def reset(self, bucket: Bucket, *, reason: str = "") -> BucketState:
        role = bucket.scope.split(":", 1)[1] if bucket.scope.startswith("role:") else ""
        tail = _tail(role, "", None, 0, {"bucket": bucket.key, "reason": reason})
        keys = [self._bkey(bucket), self._stream]
        args = [str(self._expireat(bucket)), self._retention_str, json.dumps(bucket.scope), tail]
        # Not repeated: a second reset would append a second record.
        reply = self._call("reset", keys, args, idempotent=False)
        return BucketState(bucket, 0, int(reply[1]))

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
            # The pool's disconnect below closes them; a later client keeps its own.
            self._idle, self._idle_owner = [], (0, 0)
            self._functions = True
        if client is not None:
            with contextlib.suppress(*_UNAVAILABLE):  # closing a dead connection
                client.close()

    def __repr__(self) -> str:
        return f"RedisLedger({self.url!r}, namespace={self.namespace!r})"

    # -- the alert outbox (see Ledger.outbox_put and lua/outbox_*.lua) --------
    # Keys: P.."ob:e:"..key (HASH, one entry), P.."ob:g:"..group (LIST, a
    # group's unfinished entries in order), P.."ob:q:"..channel (ZSET, each
    # group's head -> due ms). The scripts are registered on first use, per
    # client, so budgets-only deployments never load them.

    def _outbox_script(self, name: str) -> Script:
        client = self._conn()
        made: tuple[Any, dict[str, Script]] | None = getattr(self, "_outbox_lua", None)
        if made is None or made[0] is not client:
            made = (client, {n: cast(Script, client.register_script(src))
                             for n, src in _outbox_sources().items()})
            self._outbox_lua = made
        return made[1][name]

    def _outbox_call(self, name: str, keys: list[str], args: list[str], *,
                     idempotent: bool = True) -> Any:
        script = self._outbox_script(name)
        return self._run(lambda c: script(keys=keys, args=args, client=c), idempotent=idempotent)

    def outbox_put(self, key: str, payload: str, *, channel: str, group: str,
                   ttl_seconds: float) -> bool:
        p = self.prefix
        keys = [p + "ob:e:" + key, p + "ob:g:" + group, p + "ob:q:" + channel]
        args = [p, key, group, channel, payload, str(max(1, math.ceil(ttl_seconds * 1000)))]
        # Safe to repeat: a second put of a key that landed changes nothing.
        return int(self._outbox_call("outbox_put", keys, args)) == 1

    def outbox_claim(self, channel: str, *, lease_seconds: float,
                     limit: int = 10) -> list[OutboxEntry]:
        keys = [self.prefix + "ob:q:" + channel]
        args = [self.prefix, str(max(1, math.ceil(lease_seconds * 1000))), str(int(limit)),
                os.urandom(16).hex()]
        # Not repeated: a claim that landed would hide its entries for a lease.
        reply = self._outbox_call("outbox_claim", keys, args, idempotent=False)
        return [_outbox_entry(dict(zip(flat[::2], flat[1::2], strict=True))) for flat in reply]

    def _outbox_finish(self, key: str, token: str, state: str, delay_ms: int,
                       error: str) -> bool:
        keys = [self.prefix + "ob:e:" + key]
        args = [self.prefix, key, token, state, str(delay_ms), error]
        return int(self._outbox_call("outbox_finish", keys, args)) == 1

    def outbox_ack(self, key: str, token: str) -> bool:
        return self._outbox_finish(key, token, "delivered", 0, "")

    def outbox_retry(self, key: str, token: str, *, delay_seconds: float, error: str) -> bool:
        return self._outbox_finish(key, token, "pending", max(0, math.ceil(delay_seconds * 1000)),
                                   error)

    def outbox_fail(self, key: str, token: str, *, error: str) -> bool:
        return self._outbox_finish(key, token, "failed", 0, error or "gave up")

    def outbox_get(self, key: str) -> OutboxEntry | None:
        name = self.prefix + "ob:e:" + key
        fields = self._run(lambda c: c.hgetall(name))
        return _outbox_entry(fields) if fields else None

    # -- live limits (see Ledger.write_overrides and lua/overrides_*.lua) -----
    # Keys: P.."ov" (HASH "role|kind" -> Override JSON), P.."ov:version"
    # (STRING, compared by every reserve). Registered on first use, per client.

    def _overrides_call(self, name: str, keys: list[str], args: list[str], *,
                        idempotent: bool = True) -> Any:
        client = self._conn()
        made: tuple[Any, dict[str, Script]] | None = getattr(self, "_ov_lua", None)
        if made is None or made[0] is not client:
            lua = resources.files("crew_budget.ledger") / "lua"
            common = (lua / "_common.lua").read_text(encoding="utf-8")
            made = (client, {n: cast(Script, client.register_script(
                (common + "\n" if n == "overrides_write" else "")
                + (lua / f"{n}.lua").read_text(encoding="utf-8")))
                for n in ("overrides_read", "overrides_write")})
            self._ov_lua = made
        script = made[1][name]
        return self._run(lambda c: script(keys=keys, args=args, client=c), idempotent=idempotent)

    def overrides_state(self) -> tuple[int, tuple[Override, ...]]:
        version, values = self._overrides_call(
            "overrides_read", [self.prefix + "ov", self.prefix + "ov:version"], [])
        return int(version), tuple(sorted((Override.from_json(v) for v in values),
                                          key=lambda o: o.key))

    def write_overrides(self, put: Sequence[Override], drop: Sequence[str],
                        record: SpendRecord) -> int:
        args = [self._retention_str, record.to_json(), str(len(put))]
        for o in put:
            args += [o.key, o.to_json()]
        args += list(drop)
        # Not repeated: a second run would append a second audit record.
        return int(self._overrides_call(
            "overrides_write", [self.prefix + "ov", self.prefix + "ov:version", self._stream],
            args, idempotent=False))

    # -- estimate margins (see Ledger.margin_merge and lua/margin.lua) ---------
    # Key: P.."margins" (HASH family -> "bin:count,..."). The script is
    # registered on first use, per client, like the live-limits scripts.

    def margin_merge(self, family: str, add: Mapping[int, int],
                     history: int) -> dict[int, int] | None:
        client = self._conn()
        made: tuple[Any, Script] | None = getattr(self, "_margin_lua", None)
        if made is None or made[0] is not client:
            lua = resources.files("crew_budget.ledger") / "lua"
            source = ((lua / "_common.lua").read_text(encoding="utf-8") + "\n"
                      + (lua / "margin.lua").read_text(encoding="utf-8"))
            made = (client, cast(Script, client.register_script(source)))
            self._margin_lua = made
        script = made[1]
        args = [str(int(history)), family, str(self.retention_ms)]
        for b, c in sorted(add.items()):
            args += [str(int(b)), str(int(c))]
        # Not repeated after a dropped connection: a second run would count twice.
        text = self._run(lambda c: script(keys=[self.prefix + "margins"], args=args, client=c),
                         idempotent=False)
        return decode_margin_bins(str(text))

    def margin_read(self, families: Sequence[str] | None) -> dict[str, dict[int, int]] | None:
        key = self.prefix + "margins"
        if families is None:
            stored: Mapping[str, str] = self._run(lambda c: c.hgetall(key))
            return {f: decode_margin_bins(v) for f, v in stored.items()}
        names = list(families)
        if not names:
            return {}
        values = self._run(lambda c: c.hmget(key, names))
        return {f: decode_margin_bins(v) for f, v in zip(names, values, strict=True) if v}


@lru_cache(maxsize=1)
def _outbox_sources() -> dict[str, str]:
    lua = resources.files("crew_budget.ledger") / "lua"
    return {n: (lua / f"{n}.lua").read_text(encoding="utf-8")
            for n in ("outbox_put", "outbox_claim", "outbox_finish")}


def _outbox_entry(f: Mapping[str, str]) -> OutboxEntry:
    claimed = f.get("claimed") or ""
    return OutboxEntry(
        key=f["key"], channel=f["channel"], group=f["group"], payload=f.get("payload", ""),
        state=cast(OutboxState, f["state"]), token=f.get("token", ""),
        attempts=int(f["attempts"]), created_at=int(f["created"]) / 1000,
        claimed_at=int(claimed) / 1000 if claimed else None, due_at=int(f["due"]) / 1000,
        last_error=f.get("error") or None,
    )
