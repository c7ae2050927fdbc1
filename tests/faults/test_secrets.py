"""No secret is ever printed: every CLI command, the alert sinks and the guard.

Plants a Redis password, a webhook URL token and an ``Authorization`` header
token, then runs every ``crew-budget`` command against (a) a port where
nothing listens and (b) a real ``redis-server --requirepass``, each with
``--ledger`` and with ``CREW_BUDGET_LEDGER``, plus a guarded run whose
webhook answers 503 and a fail-open run on a dead ledger. Everything the
user could see is kept (stdout, stderr, every ``crew_budget`` log record
with its traceback, the exceptions' ``str``/``repr``) and grepped for the
secrets: zero hits, while the host and port are still there (redaction
hides the secret, not the address).
"""

from __future__ import annotations

import json
import logging
import subprocess
import threading
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from crew_budget import Guard, LedgerUnavailable
from crew_budget.cli import app
from tests.cli.conftest import cli_executable, subprocess_env
from tests.fixtures.redis_server import RedisServer, free_port

PASSWORD = "S3cr3tPa55"
WRONG_PASSWORD = "Wr0ngPa55w0rd"
URL_TOKEN = "T0kenXYZ"
HEADER_TOKEN = "T0kenXYZ2"
SECRETS = (PASSWORD, WRONG_PASSWORD, URL_TOKEN, HEADER_TOKEN)

ROLES = """\
roles:
  researcher: {daily: "0.10"}
prices:
  m: {input_per_million: 0, output_per_million: 10}
"""
REQUEST = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}],
                      "max_tokens": 10})
USAGE = json.dumps({"model": "m", "prompt_tokens": 3, "completion_tokens": 1000})


class Hook503:
    """A webhook on 127.0.0.1 that answers every POST with 503 and keeps its headers."""

    def __init__(self) -> None:
        self.authorizations: list[str | None] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                hook.authorizations.append(self.headers.get("Authorization"))
                self.send_response(503)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture(scope="module")
def locked_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(directory=tmp_path_factory.mktemp("redis-auth"),
                         extra_args=("--requirepass", PASSWORD))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def hook() -> Iterator[Hook503]:
    h = Hook503()
    yield h
    h.close()


def alerts_yaml(hook_port: int, *, headers: bool = True) -> str:
    lines = [
        "alerts:",
        "  thresholds: [50]",
        "  anomalies: {enabled: false}",
        "  delivery: {attempts: 2, backoff_seconds: 0}",
        "  sinks:",
        "    - type: webhook",
        f"      url: http://user:{URL_TOKEN}@127.0.0.1:{hook_port}/hook",
    ]
    if headers:
        lines.append(f'      headers: {{Authorization: "Bearer {HEADER_TOKEN}"}}')
    return "\n".join(lines) + "\n"


@dataclass
class Seen:
    """Everything a user could have seen, with where it came from."""

    texts: list[tuple[str, str]] = field(default_factory=list)

    def add(self, where: str, text: str) -> None:
        self.texts.append((where, text))

    def leaks(self) -> list[str]:
        return [f"{where}: ...{text[max(text.find(s) - 60, 0):text.find(s) + 30]}..."
                for where, text in self.texts for s in SECRETS if s in text]

    def joined(self) -> str:
        return "\n".join(text for _, text in self.texts)


def log_texts(caplog: pytest.LogCaptureFixture) -> list[str]:
    out = []
    for record in caplog.records:
        text = record.getMessage()
        if record.exc_info:
            text += "\n" + "".join(traceback.format_exception(*record.exc_info))
        out.append(text)
    return out


def run_cli(runner: CliRunner, seen: Seen, label: str, args: list[str],
            env: dict[str, str] | None = None, stdin: str | None = None) -> Any:
    result = runner.invoke(app, args, env=env, input=stdin)
    seen.add(f"{label} stdout", result.stdout)
    seen.add(f"{label} stderr", result.stderr)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        seen.add(f"{label} exception", "".join(traceback.format_exception(result.exception)))
    return result


# Per ledger: what each command exits with (the dead port and the wrong
# password are "unreachable", 3; a fresh live ledger has no spend records, 1).
DOWN = {"validate": 0, "status": 3, "status-json": 3, "report": 3, "watch": 3, "metrics": 3,
        "reset": 3, "estimate": 0, "cost": 0}
UP = {"validate": 0, "status": 0, "status-json": 0, "report": 1, "watch": 0, "metrics": 0,
      "reset": 0, "estimate": 0, "cost": 0}


def commands(config: Path) -> dict[str, tuple[list[str], str | None]]:
    c = ["--config", str(config)]
    return {
        "validate": (["validate", str(config)], None),
        "status": (["status", *c], None),
        "status-json": (["status", *c, "--format", "json"], None),
        "report": (["report", *c], None),
        "watch": (["watch", *c, "--iterations", "1", "--interval", "0.1"], None),
        "metrics": (["metrics", *c, "--once"], None),
        "reset": (["reset", *c, "--role", "researcher", "--yes"], None),
        "estimate": (["estimate", *c], REQUEST),
        "cost": (["cost", *c], USAGE),
    }


def test_every_cli_command_keeps_ledger_and_webhook_secrets(
    locked_redis: RedisServer, tmp_path: Path, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.DEBUG, logger="crew_budget")
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    seen = Seen()
    dead = free_port()
    live = locked_redis.port
    ledgers = {
        "dead": (f"redis://default:{PASSWORD}@127.0.0.1:{dead}/0", DOWN,
                 f"redis://default:***@127.0.0.1:{dead}/0"),
        "live": (f"redis://default:{PASSWORD}@127.0.0.1:{live}/0", UP,
                 f"redis://default:***@127.0.0.1:{live}/0"),
        "wrong-password": (f"redis://default:{WRONG_PASSWORD}@127.0.0.1:{live}/0", DOWN,
                           f"redis://default:***@127.0.0.1:{live}/0"),
        "query-password": (f"redis://127.0.0.1:{live}/0?password={PASSWORD}", UP,
                           f"redis://127.0.0.1:{live}/0?password=***"),
    }
    ran = 0
    for name, (url, expected, shown) in ledgers.items():
        # --ledger on the command line, and the same URL as the file's ledger:
        in_file = tmp_path / f"{name}.yaml"
        in_file.write_text(f"ledger: {url}\nnamespace: {name}-flag\n{ROLES}"
                           + alerts_yaml(free_port()))
        # CREW_BUDGET_LEDGER, with a file that names no ledger (each run its own
        # namespace, so every run starts from an empty ledger)
        plain = tmp_path / f"{name}-plain.yaml"
        plain.write_text(f"namespace: {name}-env\n{ROLES}" + alerts_yaml(free_port()))
        for mode, config, extra, env in (
            ("--ledger", in_file, ["--ledger", url], None),
            ("CREW_BUDGET_LEDGER", plain, [], {"CREW_BUDGET_LEDGER": url}),
        ):
            for command, (args, stdin) in commands(config).items():
                label = f"{name} {mode} {command}"
                takes_ledger = command not in ("validate", "estimate", "cost")
                result = run_cli(runner, seen, label, args + (extra if takes_ledger else []),
                                 env=env, stdin=stdin)
                ran += 1
                assert result.exit_code == expected[command], (label, result.output)
                if command == "validate":
                    assert f"  ledger: {shown}  timezone: UTC" in result.stdout, label
                elif command in ("status", "watch") and expected[command] == 0:
                    assert f"crew-budget {command} - {shown} - " in result.stdout, label
                elif command == "reset" and expected[command] == 0:
                    assert f"About to reset in {shown}:" in result.stdout, label
                elif command == "report" and expected[command] == 1:
                    assert f"in ledger {shown}; widen --since" in result.stderr, label
                elif expected[command] == 3:
                    assert result.stderr == (
                        f"crew-budget {command.split('-')[0]}: error: ledger {shown} is "
                        f"unreachable ({result.stderr.split(' is unreachable (')[1]}"), label
                    reason = "Connection refused" if name == "dead" else "invalid username"
                    assert reason in result.stderr, label
                    assert len(result.stderr.strip().splitlines()) == 1, label
    assert ran == 4 * 2 * 9

    # A ledger URL the config loader refuses, with the password in it.
    broken = f"redis://default:{PASSWORD}@/0"
    bad_file = tmp_path / "broken.yaml"
    bad_file.write_text(f"ledger: {broken}\n{ROLES}")
    bad_message = "ledger URL 'redis://default:***@/0' names no host; write redis://host:6379/0"
    for label, args, env in (
        ("validate broken file", ["validate", str(bad_file)], None),
        ("status broken file", ["status", "--config", str(bad_file)], None),
        ("estimate broken file", ["estimate", "--config", str(bad_file)], None),
        ("status broken --ledger", ["status", "--ledger", broken], None),
        ("report broken env", ["report"], {"CREW_BUDGET_LEDGER": broken}),
        ("validate broken env", ["validate", str(tmp_path / "live-plain.yaml")],
         {"CREW_BUDGET_LEDGER": broken}),
    ):
        result = run_cli(runner, seen, label, args, env=env,
                         stdin=REQUEST if "estimate" in label else None)
        assert result.exit_code == 2, (label, result.output)
        assert bad_message in result.stderr, (label, result.stderr)
        assert result.stderr.count("redis://default:***@/0") == 1, result.stderr  # not twice

    for text in log_texts(caplog):
        seen.add("log", text)
    assert seen.leaks() == []
    everything = seen.joined()
    assert f"127.0.0.1:{dead}" in everything and f"127.0.0.1:{live}" in everything


def test_demo_with_a_ledger_url_keeps_the_password(locked_redis: RedisServer) -> None:
    dead = free_port()
    for url, code, shown in (
        (f"redis://default:{PASSWORD}@127.0.0.1:{dead}/0", 3,
         f"redis://default:***@127.0.0.1:{dead}/0"),
        (f"redis://default:{PASSWORD}@127.0.0.1:{locked_redis.port}/0", 0,
         f"redis://default:***@127.0.0.1:{locked_redis.port}/0"),
    ):
        proc = subprocess.run([*cli_executable(), "demo", "--ledger", url], env=subprocess_env(),
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == code, proc.stderr[-3000:]
        for secret in SECRETS:
            assert secret not in proc.stdout and secret not in proc.stderr
        if code == 0:
            assert f"ledger: {shown}" in proc.stdout
            assert "Stopped: crew.kickoff() raised CrewBudgetExceeded" in proc.stdout
        else:
            assert proc.stderr == (
                f"crew-budget demo: error: ledger {shown} is unreachable (ConnectionError: "
                f"Error 111 connecting to 127.0.0.1:{dead}. Connection refused.); start it, or "
                "drop --ledger to use a fresh temporary ledger\n")


def test_guard_run_with_a_failing_webhook_logs_no_token(
    locked_redis: RedisServer, hook: Hook503, caplog: pytest.LogCaptureFixture
) -> None:
    """Five $0.01 calls reach 50 % of $0.10: one alert, two attempts, both 503."""
    caplog.set_level(logging.DEBUG, logger="crew_budget")
    url = f"redis://default:{PASSWORD}@127.0.0.1:{locked_redis.port}/0"
    config = {"namespace": "secrets-webhook", **_yaml(ROLES + alerts_yaml(hook.port))}
    guard = Guard(config, url)
    for _ in range(5):
        ticket = guard.preflight("researcher", "m", [{"role": "user", "content": "go"}],
                                 max_tokens=1000)
        guard.settle(ticket, {"prompt_tokens": 3, "completion_tokens": 1000})
    assert guard.alerts.flush()
    (stats,) = guard.alerts.stats()
    guard.close()
    # The secrets were really used: both attempts carried the configured header.
    assert hook.authorizations == [f"Bearer {HEADER_TOKEN}"] * 2
    assert (stats.delivered, stats.failed, stats.retries) == (0, 1, 1)
    assert stats.name == f"webhook(http://user:***@127.0.0.1:{hook.port}/hook)"
    assert stats.last_error == "HTTPError: HTTP Error 503: Service Unavailable"
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert (f"alert sink webhook(http://user:***@127.0.0.1:{hook.port}/hook) failed 2 times"
            in errors[0].getMessage())
    texts = [*log_texts(caplog), stats.name, stats.last_error or ""]
    assert [t for t in texts for s in SECRETS if s in t] == []


def test_webhook_credentials_in_the_url_become_basic_auth(hook: Hook503) -> None:
    """Without a configured header the URL's user:token is sent (and still never shown)."""
    import base64

    from crew_budget.alerts.sinks import WebhookSink
    from tests.alerts.test_sinks import ALERT

    sink = WebhookSink(f"http://user:{URL_TOKEN}@127.0.0.1:{hook.port}/hook")
    with pytest.raises(Exception) as info:
        sink.send(ALERT)
    assert str(info.value) == "HTTP Error 503: Service Unavailable"
    assert hook.authorizations == [
        "Basic " + base64.b64encode(f"user:{URL_TOKEN}".encode()).decode()]
    assert repr(sink) == (f"WebhookSink('http://user:***@127.0.0.1:{hook.port}/hook', "
                          "format='json', headers={'Authorization': 'Basic ***'})")
    assert URL_TOKEN not in sink.name and URL_TOKEN not in repr(sink)


def test_fail_open_on_a_dead_ledger_logs_and_raises_without_the_password(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="crew_budget")
    port = free_port()
    url = f"redis://default:{PASSWORD}@127.0.0.1:{port}/0"
    shown = f"redis://default:***@127.0.0.1:{port}/0"
    msg = [{"role": "user", "content": "go"}]
    closed = Guard(_yaml(ROLES), url)
    with pytest.raises(LedgerUnavailable) as info:
        closed.preflight("researcher", "m", msg, max_tokens=10)
    exc = info.value
    assert exc.url == shown
    assert str(exc).startswith(f"budget ledger {shown} is unreachable (ConnectionError: Error "
                               f"111 connecting to 127.0.0.1:{port}. Connection refused.)")
    shown_to_user = [str(exc), repr(exc), exc.reason,
                     "".join(traceback.format_exception(exc))]
    opened = Guard({**_yaml(ROLES), "fail_open": True}, url)
    ticket = opened.preflight("researcher", "m", msg, max_tokens=10)
    assert ticket.guarded is False
    opened.settle(ticket, {"prompt_tokens": 3, "completion_tokens": 10})
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(f"ledger {shown} unreachable; UNGUARDED call allowed" in w for w in warnings)
    texts = shown_to_user + log_texts(caplog)
    assert [t for t in texts for s in SECRETS if s in t] == []


def _yaml(text: str) -> dict[str, Any]:
    import yaml

    data = yaml.safe_load(text)
    assert isinstance(data, dict)
    return data


def test_a_webhook_error_that_quotes_its_url_is_redacted() -> None:
    """http.client's "URL can't contain control characters. '...'" quotes path and query."""
    from crew_budget.alerts.sinks import WebhookSink
    from tests.alerts.test_sinks import ALERT

    sink = WebhookSink(f"http://127.0.0.1:9/my hook?token={URL_TOKEN}")
    with pytest.raises(ConnectionError) as info:
        sink.send(ALERT)
    assert str(info.value) == ("InvalidURL: URL can't contain control characters. "
                               "'/my hook?token=***' (found at least ' ')")
    assert info.value.__suppress_context__  # the original, with the token, is not chained
