"""``crew-budget metrics``: a real HTTP server in a subprocess, scraped with urllib."""

from __future__ import annotations

import subprocess
import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from crew_budget.cli import app
from tests.alerts.helpers import free_port
from tests.cli.conftest import Setup, cli_executable, spend, subprocess_env


def parse(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_server_serves_budgets_and_counts_new_calls(spent: Setup) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [*cli_executable(), "metrics", "--port", str(port), "--ledger", spent.url],
        cwd=spent.dir, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(url, timeout=5) as resp:
                    first = parse(resp.read().decode())
                break
            except OSError:
                assert proc.poll() is None, proc.communicate()[1]
                assert time.monotonic() < deadline, "metrics server did not come up"
                time.sleep(0.2)
        spent_key = [k for k in first if k[0] == "crew_budget_spent_usd"
                     and ("scope", "crew:team") in k[1]]
        assert [first[k] for k in spent_key] == [0.21]
        assert first[("crew_budget_ledger_up", ())] == 1.0
        # Counters start when the server starts, at 0 for every configured role:
        # the fixture's 30 calls came before.
        assert {k: v for k, v in first.items() if k[0] == "crew_budget_calls_total"} == {
            ("crew_budget_calls_total", (("outcome", outcome), ("role", role))): 0.0
            for role in ("researcher", "writer") for outcome in ("allowed", "blocked", "expired")}
        assert not any("period" in dict(labels) for _, labels in first)
        spend(spent.guard(), "writer", 2)          # two more calls, $0.014
        with urllib.request.urlopen(url, timeout=5) as resp:
            second = parse(resp.read().decode())
        assert second[("crew_budget_calls_total", (("outcome", "allowed"),
                                                   ("role", "writer")))] == 2
        assert [second[k] for k in spent_key] == [0.224]
        assert second[("crew_budget_actual_to_estimate_ratio_count", ())] == 2
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert f"serving {spent.url} on http://127.0.0.1:{port}/metrics" in err


def test_metrics_once_prints_one_scrape_with_all_retained_records(
    runner: CliRunner, spent: Setup
) -> None:
    result = runner.invoke(app, ["metrics", "--once", "--ledger", spent.url])
    assert result.exit_code == 0, result.output
    got = parse(result.stdout)
    assert got[("crew_budget_calls_total", (("outcome", "allowed"), ("role", "researcher")))] == 20
    assert got[("crew_budget_cost_usd_total", (("model", "m"), ("role", "writer")))] == 0.07
    # 700 of 1000 reserved output tokens: actual/estimate = 0.7 for all 30 calls.
    assert got[("crew_budget_actual_to_estimate_ratio_bucket", (("le", "0.5"),))] == 0
    assert got[("crew_budget_actual_to_estimate_ratio_bucket", (("le", "0.75"),))] == 30


def test_metrics_port_in_use_is_a_clear_error(runner: CliRunner, spent: Setup) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = runner.invoke(app, ["metrics", "--port", str(port), "--ledger", spent.url])
    assert result.exit_code == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "pick another --port" in result.stderr
