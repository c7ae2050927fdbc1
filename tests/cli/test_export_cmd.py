"""``crew-budget export``: raw spend records as JSONL or CSV, streamed from the ledger.

Spend in the fixture ledger (see conftest): researcher 20 x $0.007 = $0.14,
writer 10 x $0.007 = $0.07, each reserving $0.01 (1000 tokens x $10/M).
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
import time
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from crew_budget import BudgetExceeded, Guard
from crew_budget.cli import app
from crew_budget.cli.export import RECORD_COLUMNS, iter_records
from crew_budget.ledger import SpendRecord
from crew_budget.ledger.memory import MemoryLedger
from tests.cli.conftest import Setup, cli_executable, spend, subprocess_env

COLUMNS = ("ts", "outcome", "role", "model", "crew", "scope", "reservation_id",
           "input_tokens", "cached_input_tokens", "cache_write_tokens", "output_tokens",
           "reasoning_tokens", "estimate_usd", "estimate_nano", "cost_usd", "cost_nano",
           "metadata")
T0 = datetime(2026, 11, 18, 9, 0, tzinfo=timezone.utc).timestamp()
MSG = [{"role": "user", "content": "x"}]


def test_the_column_set_is_pinned() -> None:
    assert RECORD_COLUMNS == COLUMNS  # loaders depend on it: append only


def test_jsonl_has_one_object_per_record_with_exact_money(
    runner: CliRunner, spent: Setup
) -> None:
    result = runner.invoke(app, ["export", "--since", "1h", "--ledger", spent.url])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rows) == 30
    assert all(tuple(row) == COLUMNS for row in rows)
    assert [r["role"] for r in rows] == ["researcher"] * 20 + ["writer"] * 10  # oldest first
    first = rows[0]
    assert (first["outcome"], first["model"], first["crew"], first["scope"]) == (
        "settled", "m", "team", None)
    assert (first["input_tokens"], first["output_tokens"]) == (3, 700)
    assert (first["cost_usd"], first["cost_nano"]) == ("0.007000000", 7_000_000)
    assert (first["estimate_usd"], first["estimate_nano"]) == ("0.010000000", 10_000_000)
    assert first["metadata"] == {}
    assert len(first["reservation_id"]) == 22
    stamp = datetime.fromisoformat(first["ts"])
    assert first["ts"].endswith("+00:00") and stamp.utcoffset() is not None
    assert abs(stamp.timestamp() - datetime.now(timezone.utc).timestamp()) < 3600
    assert sum(r["cost_nano"] for r in rows) == 210_000_000
    assert sum(Decimal(r["cost_usd"]) for r in rows) == Decimal("0.21")
    assert "crew-budget export: wrote 30 spend records (the last 1h)" in result.stderr


def test_csv_to_a_file_with_header_blocked_and_reset_rows(
    runner: CliRunner, spent: Setup
) -> None:
    guard = spent.guard()
    t = guard.preflight("writer", "m", MSG, max_tokens=1000, metadata={"task": "a,\"b\""})
    guard.settle(t, {"prompt_tokens": 3, "completion_tokens": 700})
    guard.limit_role("researcher", hourly_usd="0.145", daily_usd="0.145")
    with pytest.raises(BudgetExceeded):              # $0.14 + $0.01 > $0.145
        guard.preflight("researcher", "m", MSG, max_tokens=1000)
    guard.close()
    done = runner.invoke(app, ["reset", "--role", "researcher", "--window", "day", "--yes",
                               "--reason", "audit", "--ledger", spent.url,
                               "--config", str(spent.config)])
    assert done.exit_code == 0, done.output
    target = spent.dir / "out" / "spend.csv"
    target.parent.mkdir()
    result = runner.invoke(app, ["export", "--since", "1h", "--format", "csv", "--output",
                                 str(target), "--ledger", spent.url])
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert f"wrote 33 spend records (the last 1h) from {spent.url} to {target}" in (
        result.stderr)
    assert [p.name for p in target.parent.iterdir()] == ["spend.csv"]  # no .part left
    text = target.read_text(encoding="utf-8")
    reader = csv.reader(io.StringIO(text, newline=""))
    assert tuple(next(reader)) == COLUMNS
    rows = [dict(zip(COLUMNS, row, strict=True)) for row in reader]
    assert [r["outcome"] for r in rows] == ["settled"] * 31 + ["blocked", "reset"]
    tagged, blocked, reset = rows[30:]
    assert json.loads(tagged["metadata"]) == {"task": 'a,"b"'}
    assert (tagged["cost_usd"], tagged["cost_nano"]) == ("0.007000000", "7000000")
    assert (blocked["role"], blocked["scope"], blocked["cost_nano"], blocked["estimate_usd"]) == (
        "researcher", "role:researcher", "0", "0.010000000")
    assert (reset["scope"], reset["cost_usd"], reset["cost_nano"]) == (
        "role:researcher", "-0.140000000", "-140000000")
    assert json.loads(reset["metadata"])["reason"].startswith("audit (by ")
    assert all(r["crew"] == "team" for r in rows[:32])


def test_since_is_inclusive_and_until_exclusive(runner: CliRunner, setup: Setup) -> None:
    now = [T0]
    guard = Guard(str(setup.config), setup.url, clock=lambda: now[0])
    for minutes in (0, 30, 60, 90, 120):             # 09:00 ... 11:00 UTC
        now[0] = T0 + minutes * 60
        t = guard.preflight("writer", "m", MSG, max_tokens=1000)
        guard.settle(t, {"prompt_tokens": 3, "completion_tokens": minutes + 1})
    guard.close()
    result = runner.invoke(app, ["export", "--since", "2026-11-18T09:30:00+00:00", "--until",
                                 "2026-11-18T11:00:00+00:00", "--ledger", setup.url])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["ts"] for r in rows] == ["2026-11-18T09:30:00.000000+00:00",
                                       "2026-11-18T10:00:00.000000+00:00",
                                       "2026-11-18T10:30:00.000000+00:00"]
    assert [r["cost_nano"] for r in rows] == [310_000, 610_000, 910_000]  # (m+1) x $10/M


def test_an_empty_window_is_exit_0_with_a_header(runner: CliRunner, spent: Setup) -> None:
    result = runner.invoke(app, ["export", "--since", "2020-01-01T00:00+00:00", "--until",
                                 "2020-01-02T00:00+00:00", "-f", "csv", "--ledger", spent.url])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [",".join(COLUMNS)]
    assert "wrote 0 spend records" in result.stderr


class CountingLedger(MemoryLedger):
    """A memory ledger that notes how many records each ``records`` call returned."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.calls: list[int] = []

    def records(self, since: float | None = None, until: float | None = None) -> list[SpendRecord]:
        out = super().records(since, until)
        self.calls.append(len(out))
        return out


def test_records_are_streamed_in_slices_never_all_at_once() -> None:
    now = [T0]
    ledger = CountingLedger(clock=lambda: now[0])
    guard = Guard({"roles": {"w": {"daily": 100}},
                   "prices": {"m": {"input_per_million": 0, "output_per_million": 10}}},
                  ledger, clock=lambda: now[0])
    for i in range(600):                              # 600 calls, one every 6 s: one hour
        now[0] = T0 + i * 6
        guard.settle(guard.preflight("w", "m", MSG, max_tokens=10),
                     {"prompt_tokens": 1, "completion_tokens": 1})
    stream = iter_records(ledger, T0, T0 + 3600, target=40, first_step=600.0)
    first = next(stream)
    assert ledger.calls == [100]                      # one 10-minute slice read, not the hour
    rest = list(stream)
    got = [first, *rest]
    assert len(got) == 600 and len({r.reservation_id for r in got}) == 600
    assert [r.ts for r in got] == sorted(r.ts for r in got)
    assert sum(ledger.calls) == 600                   # nothing read twice
    assert max(ledger.calls) <= 100                   # slices shrank towards the target
    assert len(ledger.calls) > 6


@pytest.mark.redis
def test_redis_ledger_thin_slices_lose_and_repeat_nothing(
    runner: CliRunner, setup: Setup, redis_url: str
) -> None:
    # Redis keeps records in a stream keyed by milliseconds and reads each
    # slice with some slack around it: slices of 5 ms must still give every
    # record exactly once, in order.
    from crew_budget.ledger import open_ledger

    guard = Guard(str(setup.config), redis_url)
    for role in ["researcher"] * 20 + ["writer"] * 10:
        spend(guard, role, 1)
        time.sleep(0.003)                             # spread them over ~100 ms
    guard.close()
    ledger = open_ledger(redis_url)
    everything = ledger.records()
    calls: list[int] = []

    class Counting:
        def records(self, since: float, until: float) -> list[SpendRecord]:
            out = ledger.records(since, until)
            calls.append(len(out))
            return out

    start, end = everything[0].ts, everything[-1].ts + 0.001
    got = list(iter_records(Counting(), start, end, target=4,  # type: ignore[arg-type]
                            first_step=0.005))
    ledger.close()
    assert len(everything) == 30
    assert len(calls) > 3 and max(calls) < 30       # really read in several slices
    assert len(got) == 30 and len({r.reservation_id for r in got}) == 30
    assert [r.ts for r in got] == sorted(r.ts for r in got)
    assert sum(r.cost_nano for r in got) == 210_000_000
    result = runner.invoke(app, ["export", "--since", "1h", "-f", "csv", "-l", redis_url])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout, newline="")))
    assert [(r["role"], r["cost_usd"]) for r in rows] == (
        [("researcher", "0.007000000")] * 20 + [("writer", "0.007000000")] * 10)


@pytest.mark.redis
def test_a_ledger_lost_mid_export_leaves_no_file(tmp_path: Path) -> None:
    from crew_budget.cli.export import _write_file
    from crew_budget.errors import LedgerUnavailable
    from crew_budget.ledger import open_ledger
    from tests.fixtures.redis_server import RedisServer

    (tmp_path / "redis").mkdir()
    server = RedisServer(directory=tmp_path / "redis")
    server.start()
    try:
        guard = Guard({"roles": {"w": {"daily": 1}},
                       "prices": {"m": {"input_per_million": 0, "output_per_million": 10}}},
                      server.url)
        for _ in range(6):
            spend(guard, "w", 1)
            time.sleep(0.003)
        guard.close()
        ledger = open_ledger(server.url)
        everything = ledger.records()
        stream = iter_records(ledger, everything[0].ts, everything[-1].ts + 0.001,
                              first_step=0.002)
        first = next(stream)                          # one slice read, then the ledger dies
        server.stop()
        target = tmp_path / "out" / "spend.csv"
        target.parent.mkdir()
        with pytest.raises(LedgerUnavailable):
            _write_file(target, iter([first, *stream]), "csv")
        assert list(target.parent.iterdir()) == []    # neither the file nor its .part
        ledger.close()
    finally:
        server.stop()


def test_bad_options_name_the_fix(runner: CliRunner, spent: Setup) -> None:
    bad_format = runner.invoke(app, ["export", "--since", "1h", "-f", "xml", "-l", spent.url])
    assert bad_format.exit_code == 2
    assert "'xml' is not a format; use jsonl or csv" in bad_format.output
    kind = runner.invoke(app, ["export", "--since", "1h", "--kind", "hours", "-l", spent.url])
    assert kind.exit_code == 2
    assert "'hours' cannot be exported; use records or rollups" in " ".join(
        kind.output.replace("│", " ").split())
    missing = runner.invoke(app, ["export", "--since", "1h", "-l",
                                  f"sqlite:///{spent.dir / 'nope.db'}"])
    assert missing.exit_code == 3
    assert f"no ledger at {spent.dir / 'nope.db'}" in missing.stderr
    no_dir = runner.invoke(app, ["export", "--since", "1h", "-l", spent.url, "-o",
                                 str(spent.dir / "absent" / "x.jsonl")])
    assert no_dir.exit_code == 2
    assert (f"crew-budget export: error: cannot write {spent.dir / 'absent' / 'x.jsonl'}: "
            f"No such file or directory (in {spent.dir / 'absent'}); pick another --output"
            ) in no_dir.stderr
    backwards = runner.invoke(app, ["export", "--since", "2026-11-18T10:00+00:00", "--until",
                                    "2026-11-18T09:00+00:00", "-l", spent.url])
    assert backwards.exit_code == 2
    assert "is empty (--until is not after --since)" in backwards.stderr


def test_the_installed_command_pipes_csv(spent: Setup, tmp_path: Path) -> None:
    done = subprocess.run([*cli_executable(), "export", "--since", "1h", "--format", "csv",
                           "--ledger", spent.url], capture_output=True, text=True,
                          env=subprocess_env(), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(io.StringIO(done.stdout, newline="")))
    assert len(rows) == 30
    assert sum(int(r["cost_nano"]) for r in rows) == 210_000_000
    assert {r["role"] for r in rows} == {"researcher", "writer"}


def test_rollups_export_one_row_per_hour_and_group(runner: CliRunner, spent: Setup) -> None:
    # 20 researcher and 10 writer calls of $0.007 in this hour: two rows,
    # exact money, the hour's start in UTC; CSV has the pinned header.
    from crew_budget.cli.export import ROLLUP_COLUMNS

    result = runner.invoke(app, ["export", "--since", "2h", "--kind", "rollups",
                                 "-l", spent.url])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    if len(rows) == 2:  # (the fixture did not straddle an hour boundary)
        assert [(r["role"], r["calls"], r["cost_usd"], r["cost_nano"], r["output_tokens"])
                for r in sorted(rows, key=lambda r: r["role"])] == [
            ("researcher", 20, "0.140000000", 140_000_000, 14_000),
            ("writer", 10, "0.070000000", 70_000_000, 7_000)]
    totals = {role: sum(r["cost_nano"] for r in rows if r["role"] == role)
              for role in ("researcher", "writer")}
    assert totals == {"researcher": 140_000_000, "writer": 70_000_000}
    assert {r["hour"][13:] for r in rows} == {":00:00.000000+00:00"}
    assert list(rows[0]) == list(ROLLUP_COLUMNS)
    assert f"crew-budget export: wrote {len(rows)} hourly rollups" in result.stderr
    as_csv = runner.invoke(app, ["export", "--since", "2h", "--kind", "rollups", "-f", "csv",
                                 "-l", spent.url])
    assert as_csv.exit_code == 0, as_csv.output
    lines = as_csv.stdout.splitlines()
    assert lines[0] == ",".join(ROLLUP_COLUMNS) and len(lines) == 1 + len(rows)
