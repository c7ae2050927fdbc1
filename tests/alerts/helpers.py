"""Shared test helpers: a loopback webhook receiver, an alert recorder, and
worker functions for multi-process tests (importable under ``spawn``)."""

from __future__ import annotations

import json
import threading
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
