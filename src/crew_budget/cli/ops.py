"""``crew-budget recover`` and ``crew-budget doctor``: keeping the books safe.

``recover --accept-loss`` re-arms a ledger that lost its state (see
``crew_budget.LedgerReset``): guards refuse every call until an operator has
looked, because budgets would otherwise restart from $0 unnoticed. Who ran
it, when and why are kept in the ledger as a ``reset`` spend record.

``doctor`` checks the settings under which a ledger can lose budgets
(Redis persistence, eviction policy, version, cluster state, replica role,
clock; SQLite's file and journal mode) and the ledger's epoch. Exit codes:
0 all good (warnings are printed), 2 configuration error, 3 ledger
unreachable, 4 a setting that can lose budgets (or a loss already detected).
"""

from __future__ import annotations

import getpass
import socket
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Annotated, Literal

import typer

from crew_budget.cli.common import (
    EXIT_CONFIG,
    EXIT_EMPTY,
    EXIT_LEDGER,
    ConfigOption,
    LedgerOption,
    fail,
    open_guard,
)

if TYPE_CHECKING:
    from crew_budget.ledger import Ledger

__all__ = ["EXIT_RISK", "Check", "judge_redis", "register"]

EXIT_RISK = 4
"""``doctor``: a setting can lose budgets, or the ledger already lost its state."""


def register(app: typer.Typer) -> None:
    """Add ``recover`` and ``doctor`` to the ``crew-budget`` app."""
    app.command("recover")(recover)
    app.command("doctor")(doctor)


def _who() -> str:
    try:
        user = getpass.getuser()
    except Exception:
        user = "unknown user"
    return f"{user}@{socket.gethostname()}"


def recover(
    config: ConfigOption = None,
    ledger: LedgerOption = None,
    accept_loss: Annotated[bool, typer.Option(
        "--accept-loss", help="Accept that the spend the ledger held is gone; budgets "
        "restart from $0.")] = False,
    reason: Annotated[str | None, typer.Option(
        "--reason", help="Why the loss is accepted (kept in the ledger's records).")] = None,
) -> None:
    """Re-arm a ledger that lost its state (guards refuse calls until then)."""
    from crew_budget.errors import LedgerUnavailable

    guard, _source = open_guard("recover", config, ledger)
    led = guard.ledger
    try:
        state = led.epoch_state()
    except LedgerUnavailable as exc:
        fail("recover", f"ledger {led.url} is unreachable ({exc.reason})", EXIT_LEDGER)
    lost = state is not None and state.startswith("lost:")
    if not lost and state is not None:
        typer.echo(f"ledger {led.url} has not lost its state (epoch {state}); nothing to "
                   "recover.")
        raise typer.Exit(EXIT_EMPTY)
    what = (_lost_detail(state) if state is not None and lost
            else "no epoch: emptied, or never used by a guard")
    if not accept_loss:
        fail("recover", f"ledger {led.url}: {what}. Budgets would restart from $0; if that "
             "is what you want, run again with --accept-loss --reason '...'", EXIT_CONFIG)
    if not (reason and reason.strip()):
        fail("recover", "say why the loss is accepted with --reason '...' (it is kept in "
             "the ledger)", EXIT_CONFIG)
    who = _who()
    try:
        led.recover(who=who, reason=reason.strip())
    except LedgerUnavailable as exc:
        fail("recover", f"ledger {led.url} is unreachable ({exc.reason})", EXIT_LEDGER)
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    typer.echo(f"re-armed ledger {led.url} ({what}); spend restarts from $0.00.")
    typer.echo(f"recorded: by {who} at {now}: {reason.strip()}")
    led.close()


def _lost_detail(state: str) -> str:
    _lost, _, rest = state.partition(":")
    ts, _, what = rest.partition(":")
    try:
        when = datetime.fromtimestamp(float(ts), timezone.utc).strftime(
            "%Y-%m-%d %H:%M:%S UTC")
    except ValueError:
        return rest
    return f"lost its state ({what}; detected {when})"


@dataclass(frozen=True, slots=True)
class Check:
    """One finding of ``doctor``: ``fail`` can lose budgets, ``warn`` may."""

    level: Literal["ok", "warn", "fail"]
    topic: str
    text: str


def judge_redis(facts: dict[str, str]) -> list[Check]:
    """What ``doctor`` concludes from ``RedisLedger.inspect()``'s facts."""
    out: list[Check] = []
    version = facts.get("redis_version", "")
    try:
        major_minor = tuple(int(p) for p in version.split(".")[:2])
    except ValueError:
        major_minor = (0, 0)
    if major_minor >= (6, 2):
        out.append(Check("ok", "version", f"Redis {version}"))
    else:
        out.append(Check("fail", "version", f"Redis {version or '?'}; crew-budget needs >= 6.2 "
                         "(XADD MINID). Fix: upgrade Redis"))
    aof = facts.get("config:appendonly", "yes" if facts.get("aof_enabled") == "1" else "no")
    fsync = facts.get("config:appendfsync", "?")
    save = facts.get("config:save")
    if aof == "yes":
        if fsync == "always":
            out.append(Check("ok", "persistence", "AOF, appendfsync always"))
        else:
            out.append(Check("warn", "persistence", f"AOF, appendfsync {fsync}: a crash of "
                             "Redis can lose up to about a second of spend. Fix (no loss at "
                             "all): appendfsync always"))
    elif save:
        out.append(Check("fail", "persistence", f"RDB snapshots only (save {save!r}): a "
                         "crash or restart loses the spend since the last snapshot. Fix: "
                         "appendonly yes (appendfsync always or everysec)"))
    elif save is None and "config:appendonly" not in facts:
        out.append(Check("warn", "persistence", "unknown (CONFIG is not allowed here): make "
                         "sure the service persists every write (AOF)"))
    else:
        out.append(Check("fail", "persistence", "none: a restart comes back empty and every "
                         "budget restarts from $0. Fix: appendonly yes (appendfsync always "
                         "or everysec)"))
    policy = facts.get("config:maxmemory-policy", facts.get("maxmemory_policy", ""))
    maxmemory = facts.get("config:maxmemory", facts.get("maxmemory", "0"))
    if not policy:
        out.append(Check("warn", "eviction", "maxmemory-policy unknown: it must be noeviction"))
    elif policy == "noeviction":
        out.append(Check("ok", "eviction", "maxmemory-policy noeviction"))
    elif maxmemory in ("0", ""):
        out.append(Check("warn", "eviction", f"maxmemory-policy {policy} with no maxmemory: "
                         "nothing is evicted until a limit is set, then budgets are. Fix: "
                         "maxmemory-policy noeviction"))
    else:
        why = ("crew-budget's counters and reservations carry expiries, so volatile-* "
               "policies evict them too" if policy.startswith("volatile")
               else "any key, budgets included, may be evicted")
        out.append(Check("fail", "eviction", f"maxmemory-policy {policy} (maxmemory "
                         f"{maxmemory}): under memory pressure Redis deletes keys silently; "
                         f"{why}. Fix: maxmemory-policy noeviction"))
    if facts.get("cluster_enabled") == "1":
        state = facts.get("cluster_state", "?")
        out.append(Check("ok" if state == "ok" else "fail", "cluster",
                         f"cluster_state {state}" + ("" if state == "ok" else
                                                     ": some slots are not served")))
        out.extend(_judge_failover(facts))
    if facts.get("role") == "slave":
        out.append(Check("fail", "replication", "this is a read-only replica: every reserve "
                         "fails. Fix: point the ledger URL at the primary"))
    try:
        skew = float(facts.get("clock_skew_s", "0"))
    except ValueError:
        skew = 0.0
    if abs(skew) > 5:
        out.append(Check("warn", "clock", f"Redis TIME is {skew:+.1f} s from this machine's "
                         "clock: windows follow Redis, but logs and reports will disagree. "
                         "Fix: run NTP on both"))
    else:
        out.append(Check("ok", "clock", f"within {abs(skew):.2f} s of this machine"))
    out.append(_epoch_check(facts.get("epoch") or None))
    return out


def _judge_failover(facts: dict[str, str]) -> list[Check]:
    """Redis Cluster: can a master die without failing calls?

    Each master needs a replica to take over, and a guard waits through the
    promotion only for ``cluster_retry_seconds`` (ledger URL, default 5):
    the promotion takes ``cluster-node-timeout`` plus an election (~1 s).
    """
    out: list[Check] = []
    lonely = facts.get("cluster_masters_without_replica")
    if lonely is not None:
        if lonely == "0":
            out.append(Check("ok", "replicas", "every master has a replica"))
        else:
            out.append(Check("warn", "replicas", f"{lonely} master(s) without a healthy "
                             "replica: if one dies, the budgets of its namespaces are "
                             "unreachable until it is back. Fix: one replica per master "
                             "(redis-cli --cluster add-node ... --cluster-slave)"))
    try:
        timeout_s = int(facts["config:cluster-node-timeout"]) / 1000
        window = float(facts["ledger:cluster_retry_seconds"])
    except (KeyError, ValueError):
        return out
    needed = timeout_s + 1.0
    if window >= needed:
        out.append(Check("ok", "failover", f"calls wait up to {window:g} s "
                         f"(cluster_retry_seconds) for a promotion taking ~{needed:g} s "
                         f"(cluster-node-timeout {timeout_s:g} s + election)"))
    else:
        out.append(Check("warn", "failover", f"a promotion takes ~{needed:g} s "
                         f"(cluster-node-timeout {timeout_s:g} s + election) but calls wait "
                         f"only {window:g} s: during a failover they fail with "
                         f"LedgerUnavailable. Fix: ?cluster_retry_seconds={needed + 1:g} in "
                         "the ledger URL, or a lower cluster-node-timeout"))
    return out


def _epoch_check(epoch: str | None) -> Check:
    if epoch is None:
        return Check("ok", "integrity", "no epoch yet (the first reserve writes one)")
    if epoch.startswith("lost:"):
        return Check("fail", "integrity", f"the ledger {_lost_detail(epoch)}; guards refuse "
                     "every call. Fix: crew-budget recover --accept-loss --reason '...'")
    return Check("ok", "integrity", f"epoch {epoch}")


def _judge(led: Ledger) -> list[Check]:
    scheme = led.url.split(":", 1)[0]
    if scheme.startswith("redis") or scheme.startswith("rediss"):
        from crew_budget.ledger.redis import RedisLedger

        assert isinstance(led, RedisLedger)
        return judge_redis(led.inspect())
    if scheme == "memory":
        return [Check("warn", "persistence", "memory:// lives and dies with one process; "
                      "use sqlite:// or redis:// to share and keep budgets")]
    from crew_budget.ledger.sqlite import SQLiteLedger

    assert isinstance(led, SQLiteLedger)
    out: list[Check] = []
    mode = led.journal_mode()
    out.append(Check("ok" if mode == "wal" else "warn", "journal mode", f"{mode}"))
    out.append(_epoch_check(led.epoch_state()))
    return out


def doctor(
    config: ConfigOption = None,
    ledger: LedgerOption = None,
) -> None:
    """Check the ledger's settings for ways to lose budgets; exit 4 if one can."""
    from crew_budget.errors import LedgerUnavailable

    guard, _source = open_guard("doctor", config, ledger)
    try:
        checks = _judge(guard.ledger)
    except LedgerUnavailable as exc:
        fail("doctor", f"ledger {guard.ledger.url} is unreachable ({exc.reason})", EXIT_LEDGER)
    typer.echo(f"ledger {guard.ledger.url}")
    for c in checks:
        typer.echo(f"  {c.level.upper():4} {c.topic}: {c.text}")
    guard.ledger.close()
    bad = sum(c.level == "fail" for c in checks)
    if bad:
        typer.echo(f"crew-budget doctor: {bad} setting(s) can lose budgets", err=True)
        raise typer.Exit(EXIT_RISK)
