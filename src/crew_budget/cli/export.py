"""``crew-budget export``: spend records or hourly rollups for warehouses, as JSONL or CSV.

One row per spend record (settled, released, expired, blocked, unguarded,
reset), with a column set that is part of the contract (``RECORD_COLUMNS``:
new columns may be appended at the end, none is renamed or dropped):

- ``ts``: ISO 8601 with microseconds and an explicit UTC offset
  (``2026-11-18T08:53:20.000000+00:00``), always UTC, so a loader never
  guesses a zone;
- money twice: ``cost_usd``/``estimate_usd`` as exact decimal strings with
  nine places (``"0.007000000"``; a float column would round) and
  ``cost_nano``/``estimate_nano`` as integer nano-USD;
- ``metadata``: the call's metadata, a JSON object (a nested object in
  JSONL, its JSON text in CSV).

Streaming: records are read from the ledger in time slices through the
public ``Ledger.records(since, until)`` and written as they come, so memory
holds one slice (about ``target`` records; the slice length adapts to the
density of the data), never the whole export. ``--output FILE`` is written
to a temporary file beside it and renamed at the end: a loader watching the
directory never picks up half an export. An empty window is not an error
(exit 0, a header-only CSV or an empty JSONL file): scheduled exports of a
quiet hour must not fail.

``--kind`` names what is exported: ``records`` (above; kept by the ledger
for ``records_retention_days``) or ``rollups``, one row per UTC hour and
(scope, role, model, crew), with their own pinned column set
(``ROLLUP_COLUMNS``: ``hour`` is the hour's start, ISO UTC, then the counts
and money as for records). Rollups are kept 400 days and read in one call
(their number grows with hours x groups, not calls); a window selects the
hours it overlaps.
"""

from __future__ import annotations

import csv
import json
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TextIO

import typer

from crew_budget.cli.common import (
    EXIT_CONFIG,
    EXIT_LEDGER,
    ConfigOption,
    LedgerOption,
    fail,
    ledger_name,
    open_guard,
    parse_span,
)

if TYPE_CHECKING:
    from crew_budget.ledger import Ledger, Rollup, SpendRecord

__all__ = ["FORMATS", "KINDS", "RECORD_COLUMNS", "ROLLUP_COLUMNS", "iter_records", "record_row",
           "register", "rollup_row", "write_records", "write_rollups"]

#: The columns of ``--kind records``, in order. Append only: loaders depend on them.
RECORD_COLUMNS: tuple[str, ...] = (
    "ts",
    "outcome",
    "role",
    "model",
    "crew",
    "scope",
    "reservation_id",
    "input_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "output_tokens",
    "reasoning_tokens",
    "estimate_usd",
    "estimate_nano",
    "cost_usd",
    "cost_nano",
    "metadata",
)
FORMATS = ("jsonl", "csv")
KINDS = ("records", "rollups")

#: The columns of ``--kind rollups``, in order. Append only, as RECORD_COLUMNS.
ROLLUP_COLUMNS: tuple[str, ...] = (
    "hour",
    "scope",
    "role",
    "model",
    "crew",
    "calls",
    "blocked",
    "released",
    "expired",
    "input_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "output_tokens",
    "reasoning_tokens",
    "estimate_usd",
    "estimate_nano",
    "cost_usd",
    "cost_nano",
    "shadow_blocked",
    "shadow_blocked_usd",
    "shadow_blocked_nano",
)

_FIRST_STEP = 3600.0       # seconds per slice to start with
_MIN_STEP = 0.001          # Redis keys its record stream by the millisecond
_MAX_STEP = 7 * 86400.0
_TARGET = 5000             # records per slice the step adapts towards


def register(app: typer.Typer) -> None:
    """Add ``export`` to the ``crew-budget`` app."""
    app.command("export")(export)


def _usd(nano: int) -> str:
    """Exact dollars, nine places: ``7000000`` -> ``"0.007000000"``."""
    return f"{Decimal(nano).scaleb(-9):.9f}"


def record_row(r: SpendRecord) -> dict[str, Any]:
    """One record as ``RECORD_COLUMNS`` -> value (``metadata`` still a mapping)."""
    return {
        "ts": datetime.fromtimestamp(r.ts, timezone.utc).isoformat(timespec="microseconds"),
        "outcome": r.outcome,
        "role": r.role,
        "model": r.model,
        "crew": r.crew,
        "scope": r.scope,
        "reservation_id": r.reservation_id,
        "input_tokens": r.input_tokens,
        "cached_input_tokens": r.cached_input_tokens,
        "cache_write_tokens": r.cache_write_tokens,
        "output_tokens": r.output_tokens,
        "reasoning_tokens": r.reasoning_tokens,
        "estimate_usd": _usd(r.estimate_nano),
        "estimate_nano": r.estimate_nano,
        "cost_usd": _usd(r.cost_nano),
        "cost_nano": r.cost_nano,
        "metadata": dict(r.metadata),
    }


def rollup_row(r: Rollup) -> dict[str, Any]:
    """One hourly rollup as ``ROLLUP_COLUMNS`` -> value."""
    return {
        "hour": datetime.fromtimestamp(r.hour, timezone.utc).isoformat(timespec="microseconds"),
        "scope": r.scope, "role": r.role, "model": r.model, "crew": r.crew,
        "calls": r.calls, "blocked": r.blocked, "released": r.released, "expired": r.expired,
        "input_tokens": r.input_tokens, "cached_input_tokens": r.cached_input_tokens,
        "cache_write_tokens": r.cache_write_tokens, "output_tokens": r.output_tokens,
        "reasoning_tokens": r.reasoning_tokens,
        "estimate_usd": _usd(r.estimate_nano), "estimate_nano": r.estimate_nano,
        "cost_usd": _usd(r.cost_nano), "cost_nano": r.cost_nano,
        # Calls shadow mode sent that the limits would have blocked, and their cost.
        "shadow_blocked": r.shadow_blocked,
        "shadow_blocked_usd": _usd(r.shadow_blocked_nano),
        "shadow_blocked_nano": r.shadow_blocked_nano,
    }


def iter_records(
    ledger: Ledger,
    since: float,
    until: float,
    *,
    target: int = _TARGET,
    first_step: float = _FIRST_STEP,
) -> Iterator[SpendRecord]:
    """Every record with ``since <= ts < until``, oldest first, one time slice at a time.

    ``Ledger.records`` returns a list, so asking for a month at once would
    hold a month in memory. Slices are half-open and share their bounds
    exactly, so no record is read twice or skipped. The slice length halves
    after a slice of more than ``2 * target`` records and doubles after one
    of fewer than ``target / 4``: a busy hour is read in minutes, a quiet
    week in one call.
    """
    step = first_step
    start = since
    while start < until:
        end = min(start + step, until)
        batch = ledger.records(since=start, until=end)
        yield from batch
        start = end
        if len(batch) > 2 * target:
            step = max(step / 2, _MIN_STEP)
        elif len(batch) < target // 4:
            step = min(step * 2, _MAX_STEP)


def _jsonl(out: TextIO) -> Callable[[Mapping[str, Any]], None]:
    def write(row: Mapping[str, Any]) -> None:
        out.write(json.dumps(row, ensure_ascii=False, separators=(",", ":"), default=str))
        out.write("\n")

    return write


def _csv(out: TextIO, columns: tuple[str, ...] = RECORD_COLUMNS
         ) -> Callable[[Mapping[str, Any]], None]:
    writer = csv.writer(out)
    writer.writerow(columns)

    def write(row: Mapping[str, Any]) -> None:
        values = dict(row)
        if "metadata" in values:
            values["metadata"] = json.dumps(row["metadata"], ensure_ascii=False,
                                            sort_keys=True, separators=(",", ":"), default=str)
        writer.writerow(["" if values[c] is None else values[c] for c in columns])

    return write


def write_records(records: Iterator[SpendRecord], out: TextIO, fmt: str) -> int:
    """Write ``records`` to ``out`` as ``jsonl`` or ``csv``; returns how many."""
    write = _csv(out) if fmt == "csv" else _jsonl(out)
    n = 0
    for r in records:
        write(record_row(r))
        n += 1
    return n


def write_rollups(rollups: Iterator[Rollup], out: TextIO, fmt: str) -> int:
    """Write ``rollups`` to ``out`` as ``jsonl`` or ``csv``; returns how many."""
    write = _csv(out, ROLLUP_COLUMNS) if fmt == "csv" else _jsonl(out)
    n = 0
    for r in rollups:
        write(rollup_row(r))
        n += 1
    return n


def export(
    since: Annotated[str, typer.Option(
        "--since", "-s", help="Start (inclusive): 30m, 24h, 7d, 2w, today, yesterday or an ISO "
        "date/time (naive times are in the config's timezone).")],
    until: Annotated[str | None, typer.Option(
        "--until", help="End (exclusive), ISO date/time. Default: now.")] = None,
    format: Annotated[str, typer.Option(
        "--format", "-f", help="jsonl (one JSON object per line) or csv (with a header).")] = (
        "jsonl"),
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", dir_okay=False,
        help="Write here (replaced atomically when done). Default: stdout.")] = None,
    kind: Annotated[str, typer.Option(
        "--kind", help="What to export: records (one row per spend record) or rollups (one "
        "row per UTC hour and scope, role, model, crew).")] = "records",
    config: ConfigOption = None,
    ledger: LedgerOption = None,
) -> None:
    """Spend records or hourly rollups for a warehouse: JSONL or CSV, exact dollars, UTC."""
    from crew_budget.errors import LedgerUnavailable
    from crew_budget.windows import get_tz

    fmt = format.strip().lower()
    if fmt not in FORMATS:
        raise typer.BadParameter(f"{format!r} is not a format; use jsonl or csv",
                                 param_hint="--format")
    what = kind.strip().lower()
    if what not in KINDS:
        raise typer.BadParameter(f"{kind!r} cannot be exported; use records or rollups",
                                 param_hint="--kind")
    guard, _source = open_guard("export", config, ledger)
    try:
        span = parse_span(since, until, guard.ledger.now(), get_tz(guard.config.timezone))
        if span.until <= span.since:
            fail("export", f"the window {span.label} is empty (--until is not after --since)",
                 EXIT_CONFIG)
        write: Callable[[Iterator[Any], TextIO, str], int] = write_records
        rows: Iterator[Any]
        if what == "rollups":
            write = write_rollups
            try:
                rows = iter(guard.ledger.rollups(since=span.since, until=span.until))
            except LedgerUnavailable as exc:
                fail("export", f"ledger {ledger_name(guard)} is unreachable ({exc.reason})",
                     EXIT_LEDGER)
        else:
            rows = iter_records(guard.ledger, span.since, span.until)
        try:
            n = (_write_stdout(rows, fmt, write) if output is None
                 else _write_file(output, rows, fmt, write))
        except LedgerUnavailable as exc:
            what = ("the output above is incomplete" if output is None
                    else f"{output} was not written")
            fail("export", f"ledger {ledger_name(guard)} became unreachable during the export "
                 f"({exc.reason}); {what}; run the export again", EXIT_LEDGER)
        where = "stdout" if output is None else str(output)
        noun = ("hourly rollup" if what == "rollups" else "spend record") + ("" if n == 1 else "s")
        typer.echo(f"crew-budget export: wrote {n} {noun} ({span.label}) from "
                   f"{ledger_name(guard)} to {where}", err=True)
    finally:
        guard.close()


def _write_stdout(records: Iterator[Any], fmt: str,
                  write: Callable[[Iterator[Any], TextIO, str], int] = write_records) -> int:
    import sys

    try:
        n = write(records, sys.stdout, fmt)
        sys.stdout.flush()
    except BrokenPipeError:
        # `crew-budget export ... | head`: the reader has all it wants.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        raise typer.Exit(0) from None
    return n


def _write_file(path: Path, records: Iterator[Any], fmt: str,
                write: Callable[[Iterator[Any], TextIO, str], int] = write_records) -> int:
    """Write to a temporary file beside ``path``, then rename it over ``path``."""
    directory = path.parent if str(path.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=directory)
    except OSError as exc:
        fail("export", f"cannot write {path}: {exc.strerror} (in {directory}); pick another "
             "--output", EXIT_CONFIG)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as out:
            n = write(records, out, fmt)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would hide it from the loader's user
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return n
