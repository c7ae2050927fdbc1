"""Shared test helpers: a loopback webhook receiver, an alert recorder, and
worker functions for multi-process tests (importable under ``spawn``)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from crew_budget.alerts.events import Alert

RECORDED: list[Alert] = []


def record_alert(alert: Alert) -> None:
    """A callable sink for YAML configs (``tests.alerts.helpers:record_alert``)."""
    RECORDED.append(alert)


class WebhookReceiver:
    """A stdlib HTTP server on 127.0.0.1 that keeps every JSON body it is sent.

    ``fail_first`` answers the first N requests with HTTP 500, to exercise retries.
    """

    def __init__(self, fail_first: int = 0) -> None:
        self.bodies: list[Any] = []
        self.headers: list[dict[str, str]] = []
        self.requests = 0
        self.fail_first = fail_first
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                with receiver._lock:
                    receiver.requests += 1
                    failing = receiver.requests <= receiver.fail_first
                    if not failing:
                        receiver.bodies.append(json.loads(body))
                        receiver.headers.append(dict(self.headers.items()))
                self.send_response(500 if failing else 200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook/T0/secret"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextmanager
def webhook(fail_first: int = 0) -> Iterator[WebhookReceiver]:
    with WebhookReceiver(fail_first) as receiver:
        yield receiver


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- multi-process exactly-once -------------------------------------------------

# Output-only pricing: each call reserves and settles exactly
# 1000 tokens x $10 / 1e6 = $0.01, so the $1.00 role budget ends at exactly
# $1.00 after 100 calls and every threshold, 100 % included, is crossed.
RACE_CONFIG: dict[str, Any] = {
    "roles": {"racer": {"daily": "1.00"}},
    "crew": {"name": "race", "daily": "2.00"},
    "prices": {"race-model": {"input_per_million": 0, "output_per_million": 10}},
    "alerts": {"thresholds": [50, 80, 100], "anomalies": {"enabled": False},
               "delivery": {"attempts": 3, "backoff_seconds": 0.05}},
}


def alert_race_worker(url: str, hook_url: str, threads: int, start: Any) -> tuple[int, int]:
    """Spend from the shared budget until blocked; alerts go to ``hook_url``.

    ``start`` is a shared barrier: processes start spending together, and
    after spending every process evaluates every budget again at the same
    moment (as a cron ``check()`` would), so each alert key is contended by
    all processes however the spending happened to be spread. Returns the
    calls this process made and the alerts it won.
    """
    from crew_budget import BudgetExceeded, Guard
    from crew_budget.alerts import AlertManager

    config = {**RACE_CONFIG, "alerts": {**RACE_CONFIG["alerts"],
                                        "sinks": [{"type": "webhook", "url": hook_url}]}}
    guard = Guard(config, url)
    manager = AlertManager(guard)
    calls = 0
    lock = threading.Lock()

    def loop() -> None:
        nonlocal calls
        while True:
            try:
                ticket = guard.preflight("racer", "race-model",
                                         [{"role": "user", "content": "go"}], max_tokens=1000)
            except BudgetExceeded:
                return
            guard.settle(ticket, {"prompt_tokens": 4, "completion_tokens": 1000})
            with lock:
                calls += 1

    workers = [threading.Thread(target=loop) for _ in range(threads)]
    start.wait(120)
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert manager.flush(30)
    start.wait(120)
    manager.check()
    assert manager.flush(30)
    won = len(manager.sent)
    manager.close()
    guard.close()
    return calls, won


# -- fault tests (tests/faults/test_alert_faults.py) ---------------------------


class FlakyWebhook:
    """A loopback webhook that answers 503 until ``up()`` (or for ever), then 200.

    ``log`` keeps ``(alert key, HTTP status)`` of every POST in arrival
    order, so a test can count deliveries (200s) per key and check order.
    """

    def __init__(self, down_for: float | None = 0.0) -> None:
        self.log: list[tuple[str, int]] = []
        self._lock = threading.Lock()
        self._down_until = (float("inf") if down_for is None
                            else time.monotonic() + down_for)
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                key = json.loads(self.rfile.read(length))["key"]
                with hook._lock:
                    status = 503 if time.monotonic() < hook._down_until else 200
                    hook.log.append((key, status))
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def up(self) -> None:
        with self._lock:
            self._down_until = 0.0

    def delivered(self) -> list[str]:
        """Keys answered with 200, in arrival order."""
        with self._lock:
            return [k for k, status in self.log if status == 200]

    def refused(self) -> int:
        with self._lock:
            return sum(1 for _, status in self.log if status != 200)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# $0.01 a call (1000 output tokens at $10/M), $1.00 a day for role "racer".
def fault_config(hook_url: str, **delivery: Any) -> dict[str, Any]:
    return {
        "roles": {"racer": {"daily": "1.00"}},
        "prices": {"race-model": {"input_per_million": 0, "output_per_million": 10}},
        "alerts": {"thresholds": [50, 80, 100], "anomalies": {"enabled": False},
                   "sinks": [{"type": "webhook", "url": hook_url, "timeout_seconds": 1}],
                   "delivery": {"backoff_seconds": 0.1, "max_backoff_seconds": 0.5,
                                "poll_seconds": 0.1, **delivery}},
    }


def spend_until_blocked(guard: Any, tokens: int = 1000) -> int:
    """Calls of ``tokens`` output tokens until the budget refuses one; returns how many passed."""
    from crew_budget import BudgetExceeded

    calls = 0
    while True:
        try:
            ticket = guard.preflight("racer", "race-model", [{"role": "user", "content": "go"}],
                                     max_tokens=tokens)
        except BudgetExceeded:
            return calls
        guard.settle(ticket, {"prompt_tokens": 4, "completion_tokens": tokens})
        calls += 1


def die_after_claim_worker(url: str, hook_url: str, lease: float) -> None:
    """Raise every alert, let the delivery thread claim the first batch, and
    SIGKILL this process right then, before anything is sent."""
    import os
    import signal

    from crew_budget import Guard

    guard = Guard(fault_config(hook_url, lease_seconds=lease), url, start_alerts=False)
    spent = threading.Event()
    original = guard.ledger.outbox_claim

    def claim_then_die(*args: Any, **kwargs: Any) -> Any:
        spent.wait()
        got = original(*args, **kwargs)
        if got:
            os.kill(os.getpid(), signal.SIGKILL)
        return got

    guard.ledger.outbox_claim = claim_then_die  # type: ignore[method-assign]
    from crew_budget.alerts import AlertManager

    manager = AlertManager(guard)
    spend_until_blocked(guard)
    deadline = time.monotonic() + 60
    while len(manager.sent) < 4 and time.monotonic() < deadline:  # 50, 80, 100, exhausted
        time.sleep(0.01)
    spent.set()
    time.sleep(60)  # killed long before
    raise SystemExit("the delivery thread never claimed")


def burst_worker(url: str, hook_url: str, threads: int, start: Any) -> int:
    """``threads`` threads spend one shared budget until refused, each process
    with its own AlertManager; returns the calls this process made."""
    from crew_budget import Guard

    guard = Guard(fault_config(hook_url), url)
    calls = 0
    lock = threading.Lock()

    def loop() -> None:
        nonlocal calls
        n = spend_until_blocked(guard)
        with lock:
            calls += n

    workers = [threading.Thread(target=loop) for _ in range(threads)]
    start.wait(120)
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert guard.alerts.flush(60)
    guard.close()
    return calls
