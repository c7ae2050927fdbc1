"""Spend reports: exact aggregation, CSV/JSON, and the HTML page in real Chromium.

The synthetic day (2026-11-24, UTC) and its known answers:

=========== ============ ======= ================================ ========
role        model        hour    calls                            cost
=========== ============ ======= ================================ ========
researcher  gpt-4o       14:00   $0.50 + $0.70 + $0.30            $1.50
researcher  gpt-4o       16:00   1 expired lease of $0.40         $0.40
researcher  gpt-4o-mini  09:00   10 x $0.01                       $0.10
writer      gpt-4o-mini  14:00   4 x $0.05                        $0.20
=========== ============ ======= ================================ ========

plus one blocked and one released call, and a reset (not spend). Total $2.20
in 18 calls; the costliest role/model/hour is researcher on gpt-4o at 14:00.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from crew_budget.ledger import SpendRecord
from crew_budget.report import build_report, parse_by, render_table, time_series
from crew_budget.report_html import MODEL_COLORS, ROLE_COLORS, render_html
from tests.cli.png import read_png

REPORT_SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "img" / "report.png"

NANO = 10**9
DAY = datetime(2026, 11, 24, tzinfo=timezone.utc).timestamp()


def at(hour: int, minute: int = 0) -> float:
    return DAY + hour * 3600 + minute * 60


def rec(ts: float, role: str, model: str, cost: str, outcome: str = "settled",
        tokens: tuple[int, int] = (0, 0)) -> SpendRecord:
    return SpendRecord(ts=ts, reservation_id="r", outcome=outcome,  # type: ignore[arg-type]
                       role=role, model=model, crew="team", input_tokens=tokens[0],
                       output_tokens=tokens[1], cost_nano=int(Decimal(cost) * NANO),
                       estimate_nano=int(Decimal(cost) * NANO) * 2)


def history() -> list[SpendRecord]:
    out = [rec(at(14, 5), "researcher", "gpt-4o", "0.50", tokens=(1000, 200)),
           rec(at(14, 20), "researcher", "gpt-4o", "0.70", tokens=(2000, 300)),
           rec(at(14, 40), "researcher", "gpt-4o", "0.30", tokens=(500, 100)),
           rec(at(16, 1), "researcher", "gpt-4o", "0.40", outcome="expired")]
    out += [rec(at(9, i), "researcher", "gpt-4o-mini", "0.01", tokens=(100, 10))
            for i in range(10)]
    out += [rec(at(14, 50 + i), "writer", "gpt-4o-mini", "0.05", tokens=(300, 50))
            for i in range(4)]
    out += [rec(at(15), "writer", "gpt-4o-mini", "0", outcome="blocked"),
            rec(at(15, 1), "researcher", "gpt-4o", "0", outcome="released"),
            SpendRecord(ts=at(18), reservation_id="", outcome="reset", role="writer", model="",
                        cost_nano=-200_000_000, scope="role:writer",
                        metadata={"reason": "incident 42"}),
            rec(DAY - 60, "writer", "gpt-4o", "9.99"),          # the day before: outside
            rec(DAY + 86400, "writer", "gpt-4o", "9.99")]       # the day after: outside
    return out


def test_by_role_model_hour_answers_who_cost_the_most_on_what_when() -> None:
    report = build_report(history(), "role,model,hour", since=DAY, until=DAY + 86400)
    assert [(r.key, r.cost, r.calls) for r in report.rows] == [
        (("researcher", "gpt-4o", "2026-11-24T14:00:00+00:00"), Decimal("1.50"), 3),
        (("researcher", "gpt-4o", "2026-11-24T16:00:00+00:00"), Decimal("0.40"), 1),
        (("writer", "gpt-4o-mini", "2026-11-24T14:00:00+00:00"), Decimal("0.20"), 4),
        (("researcher", "gpt-4o-mini", "2026-11-24T09:00:00+00:00"), Decimal("0.10"), 10),
        # no cost: ties sort by key
        (("researcher", "gpt-4o", "2026-11-24T15:00:00+00:00"), Decimal(0), 0),   # released
        (("writer", "gpt-4o-mini", "2026-11-24T15:00:00+00:00"), Decimal(0), 0),  # blocked
    ]
    t = report.total
    assert (t.cost, t.calls, t.blocked, t.released, t.expired) == (Decimal("2.20"), 18, 1, 1, 1)
    assert (t.input_tokens, t.output_tokens) == (3500 + 1000 + 1200, 600 + 100 + 200)
    assert report.share(report.rows[0]) == Decimal("68.2")  # 1.50 / 2.20
    assert report.rows[0].avg_cost == Decimal("0.5")        # 1.50 / 3
    assert [r.metadata["reason"] for r in report.resets] == ["incident 42"]
    assert report.records == 21  # 18 calls + blocked + released + reset; 2 outside the day


def test_group_by_role_and_by_day_in_a_local_time_zone() -> None:
    by_role = build_report(history(), ["role"], since=DAY, until=DAY + 86400)
    assert [(r.key, r.cost) for r in by_role.rows] == [
        (("researcher",), Decimal("2.00")), (("writer",), Decimal("0.20"))]
    # 14:05 UTC is 15:05 in Berlin (CET, UTC+1 in November).
    berlin = build_report(history(), "hour", since=DAY, until=DAY + 86400,
                          tz=ZoneInfo("Europe/Berlin"))
    assert berlin.rows[0].key == ("2026-11-24T15:00:00+01:00",)
    # Kathmandu is UTC+05:45: 00:10 UTC is 05:55 local, 00:20 UTC is 06:05 local.
    nepal = build_report([rec(at(0, 10), "r", "m", "1"), rec(at(0, 20), "r", "m", "2")],
                         "hour", tz=ZoneInfo("Asia/Kathmandu"), sort="key")
    assert [(r.key, r.cost) for r in nepal.rows] == [
        (("2026-11-24T05:00:00+05:45",), Decimal(1)),
        (("2026-11-24T06:00:00+05:45",), Decimal(2))]
    by_outcome = build_report(history(), "outcome", since=DAY, until=DAY + 86400, sort="key")
    assert [(r.key[0], r.calls, r.blocked, r.released) for r in by_outcome.rows] == [
        ("blocked", 0, 1, 0), ("expired", 1, 0, 0), ("released", 0, 0, 1),
        ("settled", 17, 0, 0)]


def test_csv_and_json_carry_exact_decimal_strings() -> None:
    report = build_report(history(), "role,model", since=DAY, until=DAY + 86400)
    rows = list(csv.DictReader(io.StringIO(report.to_csv())))
    assert rows[0] == {
        "role": "researcher", "model": "gpt-4o", "calls": "4", "blocked": "0",
        "released": "1", "expired": "1", "input_tokens": "3500", "output_tokens": "600",
        "cost_usd": "1.9", "estimate_usd": "3.8", "avg_cost_usd": "0.475", "share_pct": "86.4",
    }
    data = json.loads(report.to_json())
    assert data["by"] == ["role", "model"]
    assert data["total"]["cost_usd"] == "2.2"
    assert data["since"] == "2026-11-24T00:00:00+00:00"
    assert [r["cost_usd"] for r in data["rows"]] == ["1.9", "0.2", "0.1"]
    assert data["resets"] == [{"time": "2026-11-24T18:00:00+00:00", "scope": "role:writer",
                               "cleared_usd": "0.2", "reason": "incident 42"}]


def test_parse_by_rejects_unknown_keys_with_the_list_of_known_ones() -> None:
    assert parse_by("role, model ,hour") == ("role", "model", "hour")
    with pytest.raises(ValueError, match="cannot group by 'agent'; use a comma-separated list"):
        parse_by("role,agent")


def test_time_series_has_a_zero_for_every_quiet_hour() -> None:
    labels, series = time_series(history(), since=DAY, until=DAY + 86400, step="hour")
    assert len(labels) == 24 and labels[0] == "2026-11-24T00:00:00+00:00"
    assert series["researcher"][14] == 1_500_000_000
    assert series["researcher"][16] == 400_000_000
    assert series["researcher"][9] == 100_000_000
    assert sum(series["researcher"]) == 2_000_000_000
    assert series["writer"] == [0] * 14 + [200_000_000] + [0] * 9
    days, daily = time_series(history(), since=DAY - 86400, until=DAY + 2 * 86400, step="day")
    assert days == ["2026-11-23", "2026-11-24", "2026-11-25"]
    assert daily["writer"] == [9_990_000_000, 200_000_000, 9_990_000_000]


def test_rich_table_lists_rows_and_totals() -> None:
    from rich.console import Console

    report = build_report(history(), "role,model", since=DAY, until=DAY + 86400)
    console = Console(width=160, record=True)
    console.print(render_table(report, title="spend"))
    text = console.export_text()
    assert "researcher" in text and "$1.90" in text and "$2.20" in text and "86.4%" in text


def test_html_is_self_contained_with_one_chart_per_role() -> None:
    page = render_html(history(), since=DAY, until=DAY + 86400)
    assert page.startswith("<!DOCTYPE html>")
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in page and "<script" not in page
    assert page.count('<figure data-role="') == 2
    assert "costliest: role researcher on gpt-4o at 2026-11-24 14:00<b>$1.50</b>" in page
    assert page.count(f'fill="{ROLE_COLORS[0]}"') == 3   # researcher: 09h, 14h, 16h bars
    assert page.count(f'fill="{ROLE_COLORS[1]}"') == 1   # writer: 14h
    assert "<script" not in render_html([], since=DAY, until=DAY + 86400)
    assert "No spend records in this period." in render_html([], since=DAY, until=DAY + 86400)


def _hex(color: str) -> tuple[int, int, int]:
    return int(color[1:3], 16), int(color[3:5], 16), int(color[5:7], 16)


def _runs(columns: dict[int, int]) -> list[int]:
    """Contiguous x-runs of a colour -> the tallest column of each run (a bar's height)."""
    bars: list[int] = []
    last = -2
    for x in sorted(columns):
        if x != last + 1:
            bars.append(0)
        bars[-1] = max(bars[-1], columns[x])
        last = x
    return bars


def test_html_report_renders_its_charts_in_headless_chromium(tmp_path: Path) -> None:
    image = read_png(_screenshot(tmp_path, render_html(history(), since=DAY, until=DAY + 86400)))
    assert (image.width, image.height) == (1200, 1000)
    # Researcher's chart: three bars whose heights follow its spend per hour
    # ($0.10 at 09h, $1.50 at 14h, $0.40 at 16h), left to right.
    bars = _runs(image.columns(_hex(ROLE_COLORS[0])))
    assert len(bars) == 3, bars
    low, peak, mid = bars
    assert peak > 150  # the tallest bar spans the plot (172 px); edges may blend
    assert abs(mid - peak * 0.40 / 1.50) <= 2   # pixels
    assert abs(low - peak * 0.10 / 1.50) <= 2
    # Writer's chart: one bar.
    assert len(_runs(image.columns(_hex(ROLE_COLORS[1])))) == 1
    # Per-model breakdown: gpt-4o ($1.90) vs gpt-4o-mini ($0.30) bar widths.
    wide = max(image.rows_with(_hex(MODEL_COLORS[0])).values())
    narrow = max(image.rows_with(_hex(MODEL_COLORS[1])).values())
    assert wide > 250  # the widest bar spans the plot (280 px)
    assert abs(narrow - wide * 0.30 / 1.90) <= 2  # pixels


LIMITS = {"roles": {"researcher": {"hourly": "2", "daily": 5},
                    "writer": {"hourly": "0.25", "daily": 1}}}


def test_html_charts_share_round_money_ticks_a_budget_line_and_blocked_markers() -> None:
    from crew_budget.config import load_config
    from crew_budget.report_html import nice_scale

    # Ticks are round amounts; integer nano-USD all the way.
    assert nice_scale(960_300_000) == [0, 250_000_000, 500_000_000, 750_000_000, 1_000_000_000]
    assert nice_scale(1_500_000_000) == [0, 500_000_000, 1_000_000_000, 1_500_000_000]
    assert nice_scale(61_200) == [0, 20_000, 40_000, 60_000, 80_000]
    assert nice_scale(0) == [0, 10_000_000]
    page = render_html(history(), since=DAY, until=DAY + 86400, config=load_config(LIMITS))
    charts = page.split('<figure data-role="')[1:]
    assert len(charts) == 2
    ticks = ">$0.00<", ">$0.50<", ">$1.00<", ">$1.50<", ">$2.00<"
    for chart in charts:  # one shared scale: the researcher's $2.00/hour limit is its top
        assert all(t in chart for t in ticks), chart
        assert ">$0.9603<" not in chart
    assert 'data-limit="2000000000"' in charts[0] and 'data-limit="250000000"' in charts[1]
    assert "hourly limit $2.00 (dashed line)" in charts[0]
    assert "hourly limit $0.25 (dashed line); 1 blocked" in charts[1]
    assert charts[1].count('data-blocked="1"') == 1 and "data-blocked" not in charts[0]
    # A $1,000/hour limit would flatten every bar: named in the caption, not drawn.
    big = load_config({"roles": {"researcher": {"hourly": 1000}}})
    page = render_html(history(), since=DAY, until=DAY + 86400, config=big)
    assert "hourly limit $1,000.00 (above this scale)" in page and "data-limit" not in page


def test_html_hourly_bars_over_a_week_when_asked() -> None:
    week = render_html(history(), since=DAY - 6 * 86400, until=DAY + 86400, step="hour")
    assert "Spend over time per role (per hour)" in week
    researcher = week.split('<figure data-role="researcher"')[1].split("</figure>")[0]
    assert researcher.count("<rect") == 3  # 09h, 14h, 16h of the last day: hours, not days
    assert "2026-11-24 14:00: $1.50" in researcher
    daily = render_html(history(), since=DAY - 6 * 86400, until=DAY + 86400)
    assert "(per day)" in daily
    assert daily.split('<figure data-role="researcher"')[1].split("</figure>")[0].count(
        "<rect") == 1


def _screenshot(tmp_path: Path, page_html: str) -> Path:
    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is required (apt-get install chromium)"
    page = tmp_path / "report.html"
    page.write_text(page_html)
    shot = tmp_path / "shot.png"
    subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
         "--force-device-scale-factor=1", "--hide-scrollbars", f"--screenshot={shot}",
         "--window-size=1200,1000", f"file://{page}"],
        check=True, capture_output=True, timeout=120,
    )
    return shot


def _rows_in(image: object, rgb: tuple[int, int, int], x0: int, x1: int) -> dict[int, int]:
    """y -> pixels of exactly ``rgb`` with x0 <= x < x1."""
    out: dict[int, int] = {}
    for y in range(image.height):  # type: ignore[attr-defined]
        n = sum(1 for x in range(x0, x1) if image.pixel(x, y) == rgb)  # type: ignore[attr-defined]
        if n:
            out[y] = n
    return out


def test_html_shared_scale_budget_line_and_markers_in_headless_chromium(tmp_path: Path) -> None:
    from crew_budget.config import load_config
    from crew_budget.report_html import BLOCKED_COLOR, LIMIT_COLOR

    page = render_html(history(), since=DAY, until=DAY + 86400, config=load_config(LIMITS))
    shot = _screenshot(tmp_path, page)
    image = read_png(shot)
    blue, red = _hex(ROLE_COLORS[0]), _hex(ROLE_COLORS[1])
    researcher = _runs(image.columns(blue))
    assert len(researcher) == 3, researcher
    peak = researcher[1]                               # $1.50 at 14h
    # Shared scale: the writer's $0.20 bar is drawn against the same $2.00 top.
    (writer,) = _runs(image.columns(red))
    assert abs(writer - peak * 0.20 / 1.50) <= 2, (writer, peak)
    # The dashed limit lines sit at $2.00 and $0.25 above each chart's base.
    half = image.width // 2
    base_left = max(image.rows_with(blue))
    base_right = max(y for y, n in _rows_in(image, red, half, image.width).items() if n)
    left = [y for y, n in _rows_in(image, _hex(LIMIT_COLOR), 0, half).items() if n > 100]
    right = [y for y, n in _rows_in(image, _hex(LIMIT_COLOR), half, image.width).items()
             if n > 100]
    assert left and right, (left, right)
    assert abs((base_left - min(left)) - peak * 2.00 / 1.50) <= 3
    assert abs((base_right - min(right)) - peak * 0.25 / 1.50) <= 3
    # One black triangle under the writer's chart, below its base line.
    marker = _rows_in(image, _hex(BLOCKED_COLOR), half, image.width)
    assert marker and min(marker) >= base_right and max(marker) <= base_right + 12, marker
    assert not _rows_in(image, _hex(BLOCKED_COLOR), 0, half)
    # The README shows this very picture: regenerated by every run that passes.
    REPORT_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(shot, REPORT_SCREENSHOT)


# -- reports from hourly rollups --------------------------------------------------


def test_rollups_give_the_same_report_as_records() -> None:
    # Every key rollups hold, in UTC and Berlin: rows and totals identical to
    # the records' to the nano-dollar; run/task/outcome need records.
    from crew_budget.ledger import fold_rollups

    records = history()
    rollups = fold_rollups(records)
    resets = [r for r in records if r.outcome == "reset"]
    # 4 charged role/model/hours, the blocked, the released, the day before and after
    assert len(rollups) == 8
    for by in ("role,model,hour", "role", "model,crew", "day,role", "scope", "hour"):
        for tz in (timezone.utc, ZoneInfo("Europe/Berlin")):
            want = build_report(records, by, since=DAY, until=DAY + 86400, tz=tz)
            got = build_report(rollups, by, since=DAY, until=DAY + 86400, tz=tz, resets=resets)
            assert [(r.key, r.calls, r.blocked, r.released, r.expired, r.cost_nano,
                     r.estimate_nano, r.input_tokens, r.output_tokens) for r in got.rows] == [
                (r.key, r.calls, r.blocked, r.released, r.expired, r.cost_nano,
                 r.estimate_nano, r.input_tokens, r.output_tokens) for r in want.rows]
            assert got.total.cost_nano == want.total.cost_nano == 2_200_000_000
            assert got.records == want.records == 21
            assert got.resets == want.resets
            assert (got.source, want.source) == ("rollups", "records")
    with pytest.raises(ValueError, match="rollups cannot be grouped by 'run'"):
        build_report(rollups, "role,run")
    labels, series = time_series(records, since=DAY, until=DAY + 86400, step="hour")
    assert time_series(rollups, since=DAY, until=DAY + 86400, step="hour") == (labels, series)
    days = time_series(records, since=DAY - 86400, until=DAY + 2 * 86400, step="day")
    assert time_series(rollups, since=DAY - 86400, until=DAY + 2 * 86400, step="day") == days


def test_rollup_hours_are_labelled_by_their_local_start() -> None:
    # Kathmandu is UTC+05:45: the UTC hour 14:00 starts at 19:45 local.
    from crew_budget.ledger import fold_rollups

    nepal = build_report(fold_rollups([rec(at(14, 5), "r", "m", "1")]), "hour",
                         tz=ZoneInfo("Asia/Kathmandu"))
    assert [row.key for row in nepal.rows] == [("2026-11-24T19:45:00+05:45",)]
    assert nepal.to_dict()["source"] == "rollups"
