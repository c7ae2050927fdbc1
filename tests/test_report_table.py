"""Reports from a ``RollupTable`` are the reports from ``Rollup``s, byte for byte.

``crew-budget report`` reads rollups as plain rows (``Ledger.rollup_table``:
a tuple per group-hour and a small map of groups) and writes its JSON row
lines straight from integers (``Report._row_lines``). These tests pin both
to the general code: the same rows, totals, record counts, order and JSON
as ``build_report`` over ``Ledger.rollups``, on random rollups with scopes,
missing crews, blocked-only groups and odd names, in time zones with DST
and half-hour offsets, for every grouping; and every backend's
``rollup_table`` holds what its ``rollups`` holds.
"""

from __future__ import annotations

import itertools
import json
import random
from zoneinfo import ZoneInfo

import pytest

from crew_budget.ledger import SpendRecord, open_ledger
from crew_budget.ledger.base import ROLLUP_METRICS, Rollup, RollupTable
from crew_budget.report import PriceSource, ReportRow, build_report, shadow_summary

H0 = 1_774_746_000.0  # 2026-03-29 01:00 UTC: Berlin's clocks go forward at this hour
ROLLUP_KEYS = ("role", "model", "crew", "scope", "hour", "day")
ZONES = [ZoneInfo("UTC"), ZoneInfo("Europe/Berlin"), ZoneInfo("Asia/Kolkata")]


def _rollups(seed: int) -> list[Rollup]:
    rng = random.Random(seed)
    out = []
    for h in range(60):
        for role, model, crew in (("a", "m1", "team"), ("b", "m1", None), ("a", 'm"2\\', "t"),
                                  ("ü", "m1", "team"), ("b", "m2", "team")):
            if rng.random() < 0.3:
                continue
            scope = rng.choice([None, None, f"role:{role}|day", "crew:team|hour"])
            calls = 0 if scope else rng.randrange(0, 5)
            counts = [calls, rng.randrange(0, 3) if scope else 0, rng.randrange(0, 2),
                      rng.randrange(0, calls + 1), calls * rng.randrange(0, 900),
                      calls * rng.randrange(0, 200), rng.randrange(0, 50), calls * 40,
                      rng.randrange(0, 9), calls * rng.randrange(1, 10**10),
                      calls * rng.randrange(1, 10**8)]
            shadow = rng.randrange(0, calls + 1)
            counts += [shadow, shadow * rng.randrange(0, 10**6)]
            assert len(counts) == len(ROLLUP_METRICS)
            out.append(Rollup(H0 + 3600 * h, scope, role, model, crew, *counts))
    out.append(Rollup(H0, "role:z|day", "z", "m9", None, blocked=2))  # blocks only
    return out


def _groupings() -> list[tuple[str, ...]]:
    out: list[tuple[str, ...]] = [()]
    for n in (1, 2, 3):
        out += list(itertools.permutations(ROLLUP_KEYS, n))
    return out


@pytest.mark.parametrize("seed", [1, 2])
def test_a_table_report_is_the_rollup_report(seed: int) -> None:
    rollups = _rollups(seed)
    table = RollupTable.of(rollups)
    assert table.rollups() == sorted(rollups, key=lambda r: (r.hour, r.scope or "", r.role,
                                                             r.model, r.crew or ""))
    summed = RollupTable.of(rollups, per_hour=False)
    spans = [(None, None), (H0 + 1800, H0 + 50 * 3600 + 1), (H0 - 7200, H0 + 3600)]
    checked = 0
    for by in _groupings():
        for tz, (since, until), sort in itertools.product(ZONES, spans, ("cost", "key")):
            want = build_report(rollups, by, since=since, until=until, tz=tz, sort=sort)
            got = build_report(table, by, since=since, until=until, tz=tz, sort=sort)
            assert got.rows == want.rows, (by, tz, since)
            assert got.to_json() == want.to_json(), (by, tz, since)
            assert (got.total, got.records, got.source) == (want.total, want.records,
                                                           want.source)
            checked += 1
            if "hour" not in by and "day" not in by and since is None:
                whole = build_report(summed, by, tz=tz, sort=sort)
                assert whole.to_json() == want.to_json(), by
        if not by:
            assert [r.key for r in want.rows] == [()]
    assert checked == len(_groupings()) * 18
    shadow = shadow_summary(rollups, since=H0 + 1800, until=H0 + 7200)
    assert shadow_summary(table, since=H0 + 1800, until=H0 + 7200) == shadow
    assert shadow_summary(summed) == shadow_summary(rollups)
    assert shadow_summary(rollups).calls > 0


def test_a_summed_table_refuses_time_keys_and_records_keys_are_refused() -> None:
    summed = RollupTable.of(_rollups(1), per_hour=False)
    with pytest.raises(ValueError, match="no hours to group by"):
        build_report(summed, ("role", "day"))
    with pytest.raises(ValueError, match="rollups cannot be grouped by 'run'"):
        build_report(RollupTable.of(_rollups(1)), ("role", "run"))
    with pytest.raises(ValueError, match="has no hourly rollups"):
        summed.rollups()


def test_json_row_lines_are_json_dumps_of_row_dicts() -> None:
    rng = random.Random(17)
    names = ["a", "", 'q"uote', "back\\slash", "new\nline", "ünï", "模型", "tab\t", "\x00",
             "emoji \U0001f4b8", "/", "<script>"]
    amounts = [0, 1, 7, 999, 1000, 10**9, 10**9 + 1, 123_456_789_012, -5, -10**9 - 3,
               2**63 + 11]
    rows = []
    for _ in range(3000):
        key = tuple(rng.choice(names) for _ in range(3))
        calls = rng.choice([0, 1, 3, rng.randrange(0, 10**7)])
        rows.append(ReportRow(key, calls, rng.randrange(0, 9), rng.randrange(0, 9),
                              rng.randrange(0, 9), rng.randrange(0, 10**12),
                              rng.randrange(0, 10**9),
                              rng.choice([*amounts, rng.randrange(0, 10**13)]),
                              rng.choice([*amounts, rng.randrange(0, 10**13)])))
    prices = {n: PriceSource(n, "genai-prices", f"{n}-priced \"as\"", "ä") for n in names[:6]}
    prices["模型"] = PriceSource("模型", "config", "模型", None)
    for by in (("role", "model", "hour"), ("model", "role", "crew"), ("hour", "crew", "day")):
        for total_nano in (0, sum(max(r.cost_nano, 0) for r in rows), 10**9):
            base = build_report([], by)
            base.rows = rows
            base.total = ReportRow((), cost_nano=total_nano)
            for with_prices in (False, True):
                base.prices = prices if with_prices else {}
                lines = base._row_lines()
                assert lines == [json.dumps(base.row_dict(r)) for r in rows], (by, total_nano)
    # No keys at all (--by ''): one row, no leading comma.
    empty = build_report([Rollup(H0, None, "a", "m", None, calls=2, cost_nano=3)], ())
    assert empty._row_lines() == [json.dumps(empty.row_dict(empty.rows[0]))]
    assert empty._row_lines()[0].startswith('{"calls": 2, ')


def _records() -> list[SpendRecord]:
    out = []
    rng = random.Random(4)
    for i in range(400):
        outcome = rng.choice(["settled", "settled", "expired", "released", "blocked",
                              "unguarded"])
        out.append(SpendRecord(
            ts=H0 + i * 97.5, reservation_id=f"r{i}", outcome=outcome,  # type: ignore[arg-type]
            role=rng.choice(["a", "b", "ü"]), model=rng.choice(["m1", "m2"]),
            crew=rng.choice(["team", None]),
            scope="role:a|day" if outcome == "blocked" else None,
            input_tokens=rng.randrange(0, 1000), cached_input_tokens=rng.randrange(0, 99),
            output_tokens=rng.randrange(0, 500), reasoning_tokens=rng.randrange(0, 9),
            cost_nano=0 if outcome in ("blocked", "released") else rng.randrange(1, 10**9),
            estimate_nano=rng.randrange(1, 10**9),
            metadata={"shadow_blocked": "role:a|day"} if i % 9 == 0 else {}))
    return out


def test_every_ledger_reads_its_rollups_as_a_table(ledger_url: str) -> None:
    ledger = open_ledger(ledger_url, clock=lambda: H0 + 40_000.0)
    for record in _records():
        ledger.append_record(record)
    for since, until in ((H0, H0 + 40_000.0), (H0 + 5000.0, H0 + 20_000.0), (None, None)):
        rollups = ledger.rollups(since, until)
        assert len(rollups) > 10
        table = ledger.rollup_table(since, until)
        assert table.rollups() == rollups, ledger_url
        summed = ledger.rollup_table(since, until, per_hour=False)
        assert summed.rows and all(r[0] is None for r in summed.rows)
        assert _same_sums(summed, rollups)
        for by in (("role", "model", "hour"), ("scope", "day"), ("crew", "role")):
            want = build_report(rollups, by, since=since, until=until)
            got = build_report(table, by, since=since, until=until)
            assert got.to_json() == want.to_json()
            if "hour" not in by and "day" not in by:
                assert build_report(summed, by, since=since, until=until).to_json() == \
                    want.to_json()
    ledger.close()


def _same_sums(table: RollupTable, rollups: list[Rollup]) -> bool:
    """Each group's counts, summed over the span, are the rollups' sums."""
    want: dict[tuple[object, ...], list[int]] = {}
    for r in rollups:
        acc = want.setdefault(r.group, [0] * len(ROLLUP_METRICS))
        for i, x in enumerate(r.counts()):
            acc[i] += x
    got = {table.groups[r[1]]: list(r[2:]) for r in table.rows}
    return got == want


def _csv_by_dicts(report: object) -> str:
    """What ``Report.to_csv`` wrote before: ``csv.DictWriter`` over ``row_dict``."""
    import csv
    import io

    from crew_budget.report import Report

    assert isinstance(report, Report)
    out = io.StringIO()
    columns = [*report.by, "calls", "blocked", "released", "expired", "input_tokens",
               "output_tokens", "cost_usd", "estimate_usd", "avg_cost_usd", "share_pct"]
    if report.prices and "model" in report.by:
        columns += ["price_source", "priced_as"]
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in report.rows:
        writer.writerow(report.row_dict(row))
    return out.getvalue()


def test_csv_lines_are_the_dict_writer_s() -> None:
    rng = random.Random(23)
    names = ["a", "", "com,ma", 'q"uote', "new\nline", "ünï", " lead", "x\r"]
    rows = [ReportRow(tuple(rng.choice(names) for _ in range(2)), rng.choice([0, 1, 9]),
                      rng.randrange(0, 5), 0, rng.randrange(0, 2), rng.randrange(0, 10**9),
                      rng.randrange(0, 10**6), rng.choice([0, 7, 10**9, rng.randrange(10**12)]),
                      rng.randrange(0, 10**10)) for _ in range(2000)]
    prices = {n: PriceSource(n, "litellm", f"{n},as", None) for n in names[:5]}
    for by in (("role", "model"), ("model", "hour"), ("crew", "scope")):
        for total_nano in (0, 10**12):
            report = build_report([], by)
            report.rows, report.total = rows, ReportRow((), cost_nano=total_nano)
            for with_prices in (False, True):
                report.prices = prices if with_prices else {}
                assert report.to_csv() == _csv_by_dicts(report), (by, total_nano)
    odd = build_report([], ("role", "model"))
    odd.rows = [ReportRow(("only-role",), calls=1, cost_nano=5)]  # a key shorter than by
    odd.total = ReportRow((), calls=1, cost_nano=5)
    assert odd.to_csv() == _csv_by_dicts(odd) == (
        "role,model,calls,blocked,released,expired,input_tokens,output_tokens,cost_usd,"
        "estimate_usd,avg_cost_usd,share_pct\nonly-role,,1,0,0,0,0,0,5E-9,0,5E-9,100.0\n")
