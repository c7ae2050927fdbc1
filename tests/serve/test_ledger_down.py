"""The dashboard over Redis when Redis dies and comes back (a real redis-server, SIGKILLed).

While the ledger is down the page says so (badge and banner, from the SSE
stream's ``ledger-error`` events) and ``/api/snapshot`` answers 503 with the
reason; the server keeps running. When Redis is back (append-only file, so
nothing was lost) the page goes live again by itself with the same numbers:
one settled gpt-4o-mini call of 1,000 prompt + 100 completion tokens =
1000 x $0.15/M + 100 x $0.60/M = $0.00015 + $0.00006 = $0.00021.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from crew_budget import Guard
from tests.fixtures.redis_server import RedisServer
from tests.serve.test_dashboard import CHROMIUM, CHROMIUM_ARGS, start_server, stop_server

pytestmark = [pytest.mark.redis, pytest.mark.slow]

MSG = [{"role": "user", "content": "Summarise the quarterly report."}]


def test_the_page_shows_a_dead_ledger_and_recovers_by_itself(tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    redis = RedisServer(directory=tmp_path / "redis", appendonly=True)
    (tmp_path / "redis").mkdir()
    redis.start()
    config = tmp_path / "budgets.yaml"
    config.write_text('roles:\n  analyst: {daily: "1.00"}\n')
    try:
        with Guard(config, redis.url, start_alerts=False) as guard:
            ticket = guard.preflight(role="analyst", model="gpt-4o-mini", messages=MSG,
                                     max_tokens=100)
            assert guard.settle(ticket, {"prompt_tokens": 1000,
                                         "completion_tokens": 100}).cost == Decimal("0.00021")
        srv = start_server(redis.url, "--config", str(config))
        try:
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                try:
                    page = browser.new_page()
                    page.goto(srv.url + "/")
                    spent = page.locator('.gauge[data-scope="role:analyst"] .spent-usd')
                    spent.filter(has_text="$0.00021").wait_for(timeout=10_000)

                    redis.stop()  # SIGKILL
                    page.locator("#live").filter(has_text="ledger unreachable").wait_for(
                        timeout=15_000)
                    assert "unreachable" in page.locator("#banner").inner_text()
                    down = httpx.get(srv.url + "/api/snapshot", timeout=30)
                    assert down.status_code == 503
                    assert "unreachable" in down.json()["error"]
                    assert srv.proc.poll() is None  # still serving

                    redis.start()
                    page.locator("#live").filter(has_text="live").wait_for(timeout=15_000)
                    assert page.locator("#banner").is_hidden()
                    assert spent.inner_text() == "$0.00021"
                finally:
                    browser.close()
        finally:
            err = stop_server(srv)
        assert srv.proc.returncode == 0, err
    finally:
        redis.stop()
