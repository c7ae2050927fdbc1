"""``crew-budget serve`` end to end: the demo's books in a real headless Chromium.

The module runs ``crew-budget demo --ledger sqlite:///...`` once (the demo's
numbers, from its cassette, are derived in ``tests/crewai/test_demo.py``):

    router      gpt-4o-mini  1 call            $0.0000174
    researcher  gpt-4o       5 calls, 1 block  $0.010365  (blocked call estimated $0.0092375)
    crew research-demo                         $0.0103824

then starts ``crew-budget serve`` on that ledger (config: examples/budgets.yaml,
the demo's own budgets) as a subprocess and drives the page with Playwright
over the system's ``/usr/bin/chromium`` (no browser download). A settle made
by the test through a ``Guard`` on the same ledger must show on the open page
within 2 s: a writer call on gpt-4o-mini with 1,000 prompt and 500 completion
tokens reserved and 14 prompt + 300 completion tokens used costs
14 x $0.15/M + 300 x $0.60/M = $0.0000021 + $0.00018 = $0.0001821.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from crew_budget import Guard, load_config, open_ledger
from tests.fixtures.redis_server import free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
CLI = str(Path(sys.executable).with_name("crew-budget"))
CONFIG = ROOT / "examples" / "budgets.yaml"
SCREENSHOT = ROOT / "docs" / "img" / "dashboard.png"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
WRITER_COST = Decimal("0.0001821")


def offline_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("OPENAI_API_KEY", "CREW_BUDGET_LEDGER", "CREW_BUDGET_SERVE_TOKEN",
                        "CREW_BUDGET_CONFIG")}
    env.update(HTTPS_PROXY="http://127.0.0.1:9", HTTP_PROXY="http://127.0.0.1:9", NO_PROXY="*",
               PYTHONUNBUFFERED="1", **extra)
    return env


@dataclass
class Server:
    url: str
    proc: subprocess.Popen[str]


def start_server(ledger: str, *args: str, env: dict[str, str] | None = None) -> Server:
    port = free_port()
    proc = subprocess.Popen(
        [CLI, "serve", "--config", str(CONFIG), "--ledger", ledger, "--port", str(port), *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env or offline_env())
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return Server(f"http://127.0.0.1:{port}", proc)
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                out, err = proc.communicate()
                raise AssertionError(f"serve did not start: {out}\n{err}") from None
            time.sleep(0.1)


def stop_server(server: Server, sig: int = signal.SIGINT) -> str:
    server.proc.send_signal(sig)
    try:
        _out, err = server.proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        _out, err = server.proc.communicate()
        raise AssertionError(f"serve did not stop on SIGINT: {err}") from None
    return err


@pytest.fixture(scope="module")
def demo_ledger(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('dash') / 'ledger.db'}"
    done = subprocess.run([CLI, "demo", "--ledger", url], capture_output=True, text=True,
                          env=offline_env(), timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Stopped: crew.kickoff() raised CrewBudgetExceeded" in done.stdout
    return url


@pytest.fixture(scope="module")
def server(demo_ledger: str) -> Iterator[Server]:
    srv = start_server(demo_ledger)
    yield srv
    err = stop_server(srv)
    assert srv.proc.returncode == 0, err


def records_count(url: str) -> int:
    with open_ledger(url, create=False) as ledger:
        return len(ledger.records())


def test_snapshot_json_holds_the_demo_books(server: Server) -> None:
    snap = httpx.get(f"{server.url}/api/snapshot").json()
    gauges = {(g["scope"], g["window"]): g for g in snap["gauges"]}
    assert set(gauges) == {("role:router", "day"), ("role:researcher", "day"),
                           ("role:writer", "day"), ("crew:research-demo", "day")}
    researcher = gauges["role:researcher", "day"]
    assert (researcher["limit_usd"], researcher["spent_usd"], researcher["reserved_usd"],
            researcher["left_usd"]) == ("0.05", "0.010365", "0", "0.039635")
    assert gauges["crew:research-demo", "day"]["spent_usd"] == "0.0103824"
    assert snap["spend"]["total_nano"] == 10_382_400
    assert [(r["role"], r["spent_nano"], r["calls"], r["blocked"])
            for r in snap["spend"]["by_role"]] == [("researcher", 10_365_000, 5, 1),
                                                   ("router", 17_400, 1, 0)]
    assert [(r["model"], r["calls"]) for r in snap["spend"]["by_model"]] == [
        ("gpt-4o", 5), ("gpt-4o-mini", 1)]
    assert sum(sum(s) for s in snap["spend"]["by_hour"].values()) == 10_382_400
    assert [(b["role"], b["model"], b["scope"], b["estimate_usd"]) for b in snap["blocked"]] == [
        ("researcher", "gpt-4o", "role:researcher", "0.0092375")]
    assert snap["overruns"] == {"count": 0, "over_usd": "0", "calls": []}
    # No configured budget is at 50% (the refusal came from the BudgetLLM's inline
    # $0.018), so the feed holds exactly the one refusal.
    assert [(a["severity"], a["kind"], a["title"]) for a in snap["alerts"]] == [
        ("critical", "blocked", "role 'researcher' refused 1 call")]


def test_every_write_method_is_refused_and_the_ledger_is_unchanged(
    server: Server, demo_ledger: str
) -> None:
    before = records_count(demo_ledger)
    refused = []
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        for path in ("/", "/api/snapshot", "/api/events", "/static/app.js", "/api/reset"):
            r = httpx.request(method, server.url + path)
            refused.append((r.status_code, r.headers.get("allow"), r.text))
    assert set(refused) == {(405, "GET, HEAD",
                             "crew-budget serve is read-only: only GET is allowed\n")}
    assert len(refused) == 20
    assert records_count(demo_ledger) == before >= 7  # the demo: 6 settled + 1 blocked


def test_assets_are_served_from_the_package_and_nothing_else(server: Server) -> None:
    page = httpx.get(server.url + "/").text
    assert "http://" not in page and "https://" not in page  # no CDN: every asset is local
    lib = httpx.get(server.url + "/static/uPlot.iife.min.js")
    assert lib.status_code == 200 and lib.text.startswith("/*! https://github.com/leeoniya/uPlot")
    assert "MIT License" in httpx.get(server.url + "/static/uPlot.LICENSE").text
    assert httpx.get(server.url + "/static/..%2f..%2fserve%2fapp.py").status_code == 404
    assert httpx.get(server.url + "/static/data.py").status_code == 404


def test_websocket_upgrades_are_refused(server: Server) -> None:
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    with pytest.raises(InvalidStatus) as info:
        connect(server.url.replace("http://", "ws://") + "/api/events", open_timeout=10)
    assert info.value.response.status_code == 403


def test_a_foreign_host_header_is_refused_without_a_token(server: Server) -> None:
    r = httpx.get(server.url + "/api/snapshot", headers={"Host": "attacker.example"})
    assert r.status_code == 403
    assert "answers only to 127.0.0.1/localhost without a token" in r.text


def test_page_shows_the_demo_and_a_new_settle_within_2s(server: Server, demo_ledger: str) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1100})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.goto(server.url + "/")
            researcher = page.locator('.gauge[data-scope="role:researcher"]')
            researcher.locator(".spent-usd").filter(has_text="$0.010365").wait_for(timeout=10_000)
            assert researcher.locator(".left-usd").inner_text() == "$0.039635"
            assert page.locator('.gauge[data-scope="crew:research-demo"] .spent-usd'
                                ).inner_text() == "$0.0103824"
            assert page.locator("#total-spend").inner_text() == "$0.0103824"
            assert page.locator("#calls").inner_text() == "6"
            assert page.locator("#blocked-count").inner_text() == "1"
            assert "$0.0092375" in page.locator("#blocked").inner_text()
            assert page.locator("#live").inner_text() == "live"
            assert page.locator("#hourly canvas").count() == 1  # uPlot drew its chart
            writer = page.locator('.gauge[data-scope="role:writer"] .spent-usd')
            assert writer.inner_text() == "$0"

            guard = Guard(load_config(CONFIG), open_ledger(demo_ledger, create=False),
                          start_alerts=False)
            with guard:
                ticket = guard.preflight(role="writer", model="gpt-4o-mini", max_tokens=500,
                                         messages=[{"role": "user", "content": "Summarise."}])
                settled = guard.settle(ticket, {"prompt_tokens": 14, "completion_tokens": 300})
            assert settled.cost == WRITER_COST
            # The open page picks it up by itself, no reload, within 2 s.
            writer.filter(has_text="$0.0001821").wait_for(timeout=2_000)
            assert page.locator("#total-spend").inner_text() == "$0.0105645"
            assert page.locator("#calls").inner_text() == "7"
            assert page.locator("#overrun-count").inner_text() == "0"  # it cost < its reservation
            page.wait_for_timeout(300)  # let the chart settle before the picture
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOT), full_page=True)
            assert errors == []
        finally:
            browser.close()
    assert SCREENSHOT.stat().st_size > 20_000


def test_a_token_guards_every_request_and_the_browser_gets_in_with_it(demo_ledger: str) -> None:
    from playwright.sync_api import sync_playwright

    token = "s3cret token/with;odd=chars"
    srv = start_server(demo_ledger, env=offline_env(CREW_BUDGET_SERVE_TOKEN=token))
    try:
        for path in ("/", "/api/snapshot", "/api/events", "/static/app.js"):
            r = httpx.get(srv.url + path)
            assert (r.status_code, r.headers["www-authenticate"]) == (401, "Bearer"), path
            assert "needs its token" in r.text
        assert httpx.get(srv.url + "/api/snapshot",
                         headers={"Authorization": "Bearer wrong"}).status_code == 401
        ok = httpx.get(srv.url + "/api/snapshot", headers={"Authorization": f"Bearer {token}"})
        assert ok.status_code == 200 and ok.json()["spend"]["by_role"][0]["role"] == "researcher"
        # /?token= trades the token for a cookie (a digest of it) and drops it from the URL.
        first = httpx.get(srv.url + "/", params={"token": token})
        assert (first.status_code, first.headers["location"]) == (303, "/")
        cookie = first.cookies["crew_budget_token"]
        assert token not in cookie
        assert httpx.get(srv.url + "/api/snapshot",
                         cookies={"crew_budget_token": cookie}).status_code == 200
        assert httpx.get(srv.url + "/api/snapshot",
                         cookies={"crew_budget_token": "0" * 64}).status_code == 401

        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page()
                page.goto(srv.url + "/?" + str(httpx.QueryParams({"token": token})))
                assert page.url == srv.url + "/"
                page.locator('.gauge[data-scope="role:researcher"] .spent-usd').filter(
                    has_text="$0.010365").wait_for(timeout=10_000)
                assert page.locator("#live").inner_text() == "live"
            finally:
                browser.close()
    finally:
        err = stop_server(srv, signal.SIGTERM)
    assert srv.proc.returncode == 0, err  # SIGTERM is a normal stop too
    assert token not in err  # the startup line does not print the secret


def test_binding_beyond_loopback_without_a_token_is_a_usage_error(demo_ledger: str) -> None:
    for host in ("0.0.0.0", "::", "192.0.2.10"):
        done = subprocess.run([CLI, "serve", "--ledger", demo_ledger, "--host", host],
                              capture_output=True, text=True, env=offline_env(), timeout=60)
        assert done.returncode == 2, done.stderr
        assert done.stderr == (
            f"crew-budget serve: error: --host {host} would show the books to the network "
            "without a token; pass --token TOKEN (or set CREW_BUDGET_SERVE_TOKEN), or bind "
            "127.0.0.1\n")


def test_a_taken_port_is_one_clear_line_and_exit_1(server: Server, demo_ledger: str) -> None:
    port = server.url.rsplit(":", 1)[1]
    done = subprocess.run([CLI, "serve", "--ledger", demo_ledger, "--port", port],
                          capture_output=True, text=True, env=offline_env(), timeout=60)
    assert (done.returncode, done.stderr) == (1, (
        f"crew-budget serve: error: cannot listen on 127.0.0.1:{port} (Address already in "
        "use); pick another --port or --host\n"))


def test_a_missing_ledger_is_exit_3_and_creates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "typo.db"
    done = subprocess.run([CLI, "serve", "--ledger", f"sqlite:///{path}"], capture_output=True,
                          text=True, env=offline_env(), timeout=60)
    assert done.returncode == 3
    assert f"no ledger at {path}" in done.stderr
    assert not path.exists()


def test_import_crew_budget_does_not_import_the_server_stack() -> None:
    code = ("import sys, crew_budget, crew_budget.serve; "
            "print(json.dumps(sorted(m for m in ('starlette', 'uvicorn', 'crew_budget.serve.app') "
            "if m in sys.modules)))")
    done = subprocess.run([sys.executable, "-c", "import json; " + code], capture_output=True,
                          text=True, env=offline_env(), timeout=60)
    assert json.loads(done.stdout) == [], done.stderr
