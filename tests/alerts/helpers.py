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
