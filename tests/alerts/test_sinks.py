"""Sinks against real local servers: an HTTP webhook, an SMTP server
(aiosmtpd), and a dead webhook while a real OpenAI SDK call goes through.
"""

from __future__ import annotations

import asyncio
import email
import logging
import threading
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

import pytest
import vcr

from crew_budget import Guard
from crew_budget.alerts import Alert, AlertManager, AlertsConfig, EmailSink, WebhookSink
from crew_budget.alerts.sinks import LogSink
from tests.alerts.helpers import free_port, webhook
from tests.conftest import CASSETTES

ALERT = Alert(
    kind="threshold",
    key="threshold:role:researcher|day|2026-11-25:80",
    title="role 'researcher' reached 80% of its day budget",
    message="role 'researcher' has spent $4.00 of its day budget $5.00 (80.0%, threshold 80%)",
    severity="warning",
    ts=datetime(2026, 11, 25, 9, 46, 40, tzinfo=timezone.utc).timestamp(),
    scope="role:researcher",
    role="researcher",
    window="day",
    period="2026-11-25",
    values={"threshold_pct": 80, "spent_usd": Decimal("4.00"), "limit_usd": Decimal(5)},
)


def test_webhook_posts_the_alert_as_json_with_custom_headers() -> None:
    with webhook() as hook:
        WebhookSink(hook.url, headers={"X-Team": "ops"}).send(ALERT)
    (body,) = hook.bodies
    assert body["key"] == ALERT.key
    assert body["message"] == ALERT.message
    assert body["values"] == {"threshold_pct": 80, "spent_usd": "4.00", "limit_usd": "5"}
    assert body["time"] == "2026-11-25T09:46:40+00:00"
    assert hook.headers[0]["X-Team"] == "ops"
    assert hook.headers[0]["Content-Type"] == "application/json"
    assert hook.headers[0]["Idempotency-Key"] == ALERT.key


def test_webhook_slack_format_is_an_incoming_webhook_message() -> None:
    with webhook() as hook:
        WebhookSink(hook.url, format="slack").send(ALERT)
    (body,) = hook.bodies
    assert body["text"] == ":warning: role 'researcher' reached 80% of its day budget"
    header, section, context = body["blocks"]
    assert header == {"type": "header", "text": {"type": "plain_text", "text": ALERT.title}}
    assert section["text"] == {"type": "mrkdwn", "text": f":warning: {ALERT.message}"}
    assert ALERT.key in context["elements"][0]["text"]


def test_webhook_http_500_is_retried_until_it_succeeds() -> None:
    cfg = AlertsConfig.model_validate({"sinks": [], "delivery": {"attempts": 3,
                                                                 "backoff_seconds": 0.01}})
    guard = Guard({"roles": {"r": {"daily": 1}}}, "memory://")
    with webhook(fail_first=2) as hook:
        manager = AlertManager(guard, cfg, sinks=[WebhookSink(hook.url)])
        manager.dispatch(ALERT)
        assert manager.flush()
        (stats,) = manager.stats()
        manager.close()
    assert hook.requests == 3
    assert [b["key"] for b in hook.bodies] == [ALERT.key]
    assert (stats.delivered, stats.retries, stats.failed) == (1, 2, 0)


class _Inbox:
    def __init__(self) -> None:
        self.messages: list[email.message.Message] = []
        self.envelopes: list[tuple[str, list[str]]] = []
        self.arrived = threading.Event()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
        self.messages.append(email.message_from_bytes(envelope.content))
        self.arrived.set()
        return "250 Message accepted for delivery"


@pytest.fixture
def smtp_server() -> Any:
    from aiosmtpd.controller import Controller

    inbox = _Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    yield controller, inbox
    controller.stop()


def test_email_arrives_at_a_real_smtp_server(smtp_server: Any) -> None:
    controller, inbox = smtp_server
    cfg = AlertsConfig.model_validate({"sinks": [{
        "type": "email", "host": "127.0.0.1", "port": controller.port,
        "from": "budget@example.com", "to": ["ops@example.com", "cto@example.com"],
    }], "anomalies": {"enabled": False}})
    # A real budget crossing: $0.01 calls against a $0.02 daily budget.
    guard = Guard({"roles": {"researcher": {"daily": "0.02"}},
                   "prices": {"m": {"input_per_million": 0, "output_per_million": 10}}},
                  "memory://")
    with AlertManager(guard, cfg) as manager:
        ticket = guard.preflight("researcher", "m", [{"role": "user", "content": "x"}],
                                 max_tokens=1000)
        guard.settle(ticket, {"prompt_tokens": 3, "completion_tokens": 1000})
        assert manager.flush()
        assert inbox.arrived.wait(5)
    (msg,) = inbox.messages
    assert inbox.envelopes == [("budget@example.com", ["ops@example.com", "cto@example.com"])]
    assert msg["Subject"] == "[crew-budget] role 'researcher' reached 50% of its day budget"
    assert msg["To"] == "ops@example.com, cto@example.com"
    body = msg.get_payload(decode=True).decode()
    assert "role 'researcher' has spent $0.01 of its day budget $0.02 (50.0%" in body
    assert "spent_usd: 0.01" in body


def test_email_to_a_closed_port_fails_with_a_connection_error() -> None:
    sink = EmailSink("127.0.0.1", free_port(), "a@example.com", ["b@example.com"],
                     timeout_seconds=2)
    with pytest.raises(OSError):
        sink.send(ALERT)


def test_log_sink_logs_the_message_with_the_alert_attached(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger="crew_budget.alerts"):
        LogSink("error").send(ALERT)
    (rec,) = caplog.records
    assert rec.levelno == logging.ERROR
    assert rec.getMessage() == f"crew-budget alert [threshold]: {ALERT.message}"
    assert rec.alert["key"] == ALERT.key  # type: ignore[attr-defined]


def test_llm_call_succeeds_while_the_webhook_is_dead_and_the_failure_is_reported(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A real OpenAI SDK request (replayed) guarded by crew-budget, with the only
    alert sink pointing at a closed port."""
    import openai

    dead_url = f"http://127.0.0.1:{free_port()}/hook"
    # Prices set in the config (not litellm's map) so the arithmetic is ours:
    # 21 prompt tokens * $1/M + 7 completion tokens * $2/M = $0.000035, which
    # is 58.3 % of the $0.00006 daily budget: the 50 % threshold fires.
    guard = Guard({
        "roles": {"greeter": {"daily": "0.00006"}},
        "prices": {"gpt-4o-mini": {"input_per_million": 1, "output_per_million": 2,
                                   "provider": "openai"}},
        "alerts": {"sinks": [{"type": "webhook", "url": dead_url, "timeout_seconds": 1}],
                   "delivery": {"attempts": 2, "backoff_seconds": 0.01},
                   "anomalies": {"enabled": False}},
    }, "memory://")
    client = openai.OpenAI(api_key="sk-test-not-a-secret", max_retries=0)
    recorder = vcr.VCR(match_on=["method", "scheme", "host", "path"], record_mode="none",
                       ignore_localhost=True)  # the webhook is real, on loopback
    messages = [{"role": "user", "content": "Say hi to the team."}]
    with caplog.at_level(logging.ERROR, logger="crew_budget.alerts"), \
            AlertManager(guard) as manager, \
            recorder.use_cassette(str(CASSETTES / "alerts" / "openai_chat_completion_usage.yaml")
                                  ) as cassette:
        ticket = guard.preflight("greeter", "gpt-4o-mini", messages, max_tokens=10)
        response = client.chat.completions.create(model="gpt-4o-mini", messages=messages,
                                                  max_tokens=10)  # type: ignore[arg-type]
        settlement = guard.settle(ticket, response.usage)
        assert manager.flush(timeout=15)
        (stats,) = manager.stats()
    assert cassette.play_count == 1
    assert response.choices[0].message.content == "Hi team!"
    assert settlement.cost == Decimal("0.000035")
    assert guard.status("greeter")[0].spent == Decimal("0.000035")
    assert (stats.delivered, stats.failed) == (0, 1)
    assert stats.last_error is not None and "Connection refused" in stats.last_error
    # Given up after the configured 2 attempts: one ERROR naming alert and sink.
    (report,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "GAVE UP on alert threshold:role:greeter|day|" in report.getMessage()
    assert "failed 2 times" in report.getMessage()
    assert "webhook(http://127.0.0.1:" in report.getMessage()
    assert "reached 50% of its day budget" in report.getMessage()


def test_async_context_is_not_blocked_by_sink_delivery() -> None:
    """Settling from inside an event loop returns at once while a sink sleeps."""
    release = threading.Event()
    got: list[Alert] = []

    def slow(alert: Alert) -> None:
        release.wait(10)
        got.append(alert)

    # Anomalies off: a full daily budget spent early in the UTC day is also a
    # burn-rate alert, and what arrives must not depend on the hour the test runs.
    guard = Guard({"roles": {"r": {"daily": "0.01"}},
                   "prices": {"m": {"input_per_million": 0, "output_per_million": 10}},
                   "alerts": {"sinks": [], "anomalies": {"enabled": False}}},
                  "memory://", start_alerts=False)
    manager = AlertManager(guard, sinks=[slow], replace_sinks=True)

    async def call() -> str:
        ticket = guard.preflight("r", "m", [{"role": "user", "content": "x"}], max_tokens=1000)
        return guard.settle(ticket, {"prompt_tokens": 1, "completion_tokens": 1000}).state

    assert asyncio.run(asyncio.wait_for(call(), timeout=2)) == "settled"
    release.set()
    assert manager.flush()
    assert [a.values["threshold_pct"] for a in got] == [50, 80, 100]
    manager.close()

