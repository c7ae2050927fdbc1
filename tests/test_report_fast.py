"""The report's integer fast paths give exactly what the Decimal code gave.

A 30-day role x model x hour report has ~23k rows; its money columns are
now written from integers (``_usd_text``, ``_avg_nano``, ``_share_text``)
and its total is the sum of its rows. These tests pin them to the Decimal
definitions (``from_nano``, ``Report.share``) on edge and random values,
and to nano-USD sums of the rollups. The CLI part checks that ``main``
imports only the module of the command it runs.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from decimal import Decimal

from crew_budget.ledger.base import Rollup
from crew_budget.money import MAX_NANO, from_nano
from crew_budget.report import _avg_nano, _share_text, _usd_text, build_report

_EDGES = [0, 1, -1, 7, 999, -999, 1000, -1000, 1001, 10_000, 999_999_999, 1_000_000_000,
          1_000_000_001, -1_000_000_001, 1_500_000_000, 2_000_000_000, 123_456_789_012,
          MAX_NANO - 1, -(MAX_NANO - 1), 10**20 + 7]


def _values() -> list[int]:
    rng = random.Random(11)
    out = list(_EDGES)
    for digits in range(1, 20):
        for _ in range(200):
            n = rng.randrange(10 ** (digits - 1), 10**digits)
            out += [n, -n]
    return out


def test_usd_text_is_str_of_from_nano_everywhere() -> None:
    for n in _values():
        assert _usd_text(n) == str(from_nano(n)), n


def test_average_rounds_half_to_even_like_decimal() -> None:
    rng = random.Random(5)
    cases = [(5, 2), (7, 2), (-5, 2), (-7, 2), (-7, 4), (1, 3), (2, 3), (10**18 + 1, 2)]
    cases += [(rng.randrange(-10**15, 10**15), rng.randrange(1, 10**6)) for _ in range(5000)]
    for cost, calls in cases:
        want = int((Decimal(cost) / calls).to_integral_value())
        assert _avg_nano(cost, calls) == want, (cost, calls)


def test_share_text_is_the_decimal_share() -> None:
    rng = random.Random(9)
    cases = [(1, 3), (2, 3), (1, 2000), (1, 1999), (3, 2000), (5, 10000), (15, 10000),
             (25, 10000), (10**9, 10**9), (0, 7), (-3, 7)]
    for _ in range(5000):
        total = rng.randrange(1, 10**16)
        cases.append((rng.randrange(0, total + 1), total))
    for cost, total in cases:
        want = str((Decimal(cost) * 100 / Decimal(total)).quantize(Decimal("0.1")))
        assert _share_text(cost, total) == want, (cost, total)


def _rollups() -> list[Rollup]:
    rng = random.Random(3)
    out = []
    for h in range(48):
        for role in ("a", "b", "c"):
            for model in ("m1", "m2"):
                calls = rng.randrange(0, 4)
                out.append(Rollup(
                    1_764_547_200.0 + 3600 * h, None, role, model, "team", calls=calls,
                    blocked=rng.randrange(0, 2), input_tokens=calls * 100, output_tokens=calls,
                    cost_nano=calls * rng.randrange(1, 10**10), estimate_nano=calls * 10**7))
    # A blocked-only group (no calls, no cost) and an hour of nothing but blocks.
    out.append(Rollup(1_764_547_200.0, "role:a|day", "a", "m3", None, blocked=2))
    return out


def test_rows_render_the_decimal_amounts_and_the_total_is_the_rollups_sum() -> None:
    rollups = _rollups()
    report = build_report(rollups, ("role", "model", "hour"))
    assert report.total.cost_nano == sum(r.cost_nano for r in rollups)
    assert report.total.calls == sum(r.calls for r in rollups)
    assert report.total.blocked == sum(r.blocked for r in rollups)
    assert report.total.estimate_nano == sum(r.estimate_nano for r in rollups)
    assert report.records == sum(r.calls + r.blocked + r.released for r in rollups)
    for row in [*report.rows, report.total]:
        d = report.row_dict(row)
        assert d["cost_usd"] == str(row.cost)
        assert d["estimate_usd"] == str(row.estimate)
        assert d["avg_cost_usd"] == str(row.avg_cost)
        assert d["share_pct"] == str(report.share(row))
    blocked = [r for r in report.rows if r.key[1] == "m3"]
    assert [report.row_dict(r)["avg_cost_usd"] for r in blocked] == ["0"]
    doc = json.loads(report.to_json())
    assert doc["total"]["cost_usd"] == str(from_nano(sum(r.cost_nano for r in rollups)))
    assert doc["total"]["share_pct"] == "100.0"
    # A report with no cost at all: every share is "0", as Report.share says.
    free = build_report([Rollup(1_764_547_200.0, None, "a", "m", None, blocked=1)], ("role",))
    assert free.row_dict(free.rows[0])["share_pct"] == str(free.share(free.rows[0])) == "0"


def test_a_command_imports_only_its_own_module() -> None:
    code = (
        "import sys; from crew_budget import cli; sys.argv = ['crew-budget', 'report', '--help'];"
        "\ntry:\n    cli.main()\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in sys.modules if m.startswith('crew_budget.cli.')), "
        "file=sys.stderr)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert "--since" in out.stdout
    assert out.stderr.strip() == "['crew_budget.cli.common', 'crew_budget.cli.report']"


def test_help_and_the_app_attribute_still_list_every_command() -> None:
    out = subprocess.run([sys.executable, "-c", "from crew_budget.cli import main; main()",
                          "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for name in ("demo", "status", "watch", "report", "estimate", "cost", "validate", "reset",
                 "metrics", "export", "recover", "doctor", "set", "pause", "resume", "serve"):
        assert f"  {name} " in out.stdout or f"  {name}\n" in out.stdout, name
    from crew_budget.cli import app

    names = {c.name for c in app.registered_commands}
    assert {"report", "status", "watch", "export", "doctor", "serve", "set"} <= names


def test_json_row_lines_are_the_encoder_s_bytes() -> None:
    odd = [Rollup(1_764_547_200.0, None, 'say "hi"\\', "модель", "crew\n1", calls=1,
                  cost_nano=1234, estimate_nano=5),
           Rollup(1_764_550_800.0, None, "a", "m", None, calls=3, cost_nano=10**9 + 1,
                  estimate_nano=7 * 10**9)]
    for by in (("role", "model", "hour"), ("crew",), ("day", "role"), ("model", "crew")):
        report = build_report(odd, by)
        text = report.to_json()
        lines = [json.dumps(report.row_dict(r)) for r in report.rows]
        assert "\n    " + ",\n    ".join(lines) + "\n  ]" in text
        assert json.loads(text)["rows"] == [report.row_dict(r) for r in report.rows]
        assert json.loads(text) == {**report.to_dict()}
