"""Where alerts go: logging, a JSON/Slack webhook, SMTP mail, any callable.

A sink's ``send`` delivers one alert or raises; retries, backoff and
reporting a dead sink are the ``AlertManager``'s job, so sinks stay simple.
Network libraries (``urllib.request``, ``smtplib``) are imported on first
send, never at ``import crew_budget``.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

from crew_budget.alerts.config import (
    CallableSinkConfig,
    EmailSinkConfig,
    LogSinkConfig,
    SinkConfig,
    WebhookSinkConfig,
)
from crew_budget.alerts.events import Alert
from crew_budget.errors import ConfigError

__all__ = [
    "CallableSink",
    "EmailSink",
    "LogSink",
    "Sink",
    "WebhookSink",
    "build_sink",
    "build_sinks",
    "slack_payload",
]

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR, "critical": logging.CRITICAL}
_EMOJI = {"info": ":information_source:", "warning": ":warning:", "critical": ":rotating_light:"}


@runtime_checkable
class Sink(Protocol):
    """Delivers one alert; raises on failure (the manager retries)."""

    name: str

    def send(self, alert: Alert) -> None: ...


class LogSink:
    """Logs ``alert.message`` (with the alert as ``extra={"alert": ...}``)."""

    def __init__(self, level: str = "warning", logger: str = "crew_budget.alerts") -> None:
        self.name = f"log({logger})"
        self._level = _LEVELS[level]
        self._log = logging.getLogger(logger)

    def send(self, alert: Alert) -> None:
        self._log.log(self._level, "crew-budget alert [%s]: %s", alert.kind, alert.message,
                      extra={"alert": alert.to_dict()})


def slack_payload(alert: Alert) -> dict[str, Any]:
    """A Slack incoming-webhook body: ``text`` for notifications, ``blocks`` to show."""
    emoji = _EMOJI.get(alert.severity, "")
    return {
        "text": f"{emoji} {alert.title}".strip(),
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": alert.title[:150]}},
            {"type": "section", "text": {"type": "mrkdwn", "text": f"{emoji} {alert.message}"}},
            {"type": "context", "elements": [
                {"type": "mrkdwn", "text": f"crew-budget `{alert.kind}` · `{alert.key}`"},
            ]},
        ],
    }


class WebhookSink:
    """POSTs the alert as JSON (``format="json"``) or as a Slack message.

    Credentials in the URL (``https://user:TOKEN@host/hook``) are sent as
    HTTP Basic auth, unless ``headers`` set ``Authorization`` themselves
    (urllib would otherwise try to resolve ``user:TOKEN@host`` as a host
    name). The sink's ``name`` and ``repr`` never show a credential: they
    end up in log lines and ``AlertManager.stats()``.
    """

    def __init__(
        self,
        url: str,
        *,
        format: str = "json",
        headers: dict[str, str] | None = None,
        timeout_seconds: float = 5.0,
    ) -> None:
        self.name = f"webhook({_redact(url)})"
        self.url = url
        self.format = format
        self.headers = dict(headers or {})
        self.timeout = timeout_seconds
        self._target, basic = _split_userinfo(url)
        if basic and not any(k.lower() == "authorization" for k in self.headers):
            self.headers["Authorization"] = basic

    def __repr__(self) -> str:
        from crew_budget.redact import redact_headers, redact_url

        return (f"WebhookSink({redact_url(self.url)!r}, format={self.format!r}, "
                f"headers={redact_headers(self.headers)!r})")

    def payload(self, alert: Alert) -> dict[str, Any]:
        return slack_payload(alert) if self.format == "slack" else alert.to_dict()

    def send(self, alert: Alert) -> None:
        import urllib.request

        body = json.dumps(self.payload(alert)).encode()
        try:  # Request() quotes a URL it cannot use ("unknown url type: '...'")
            req = urllib.request.Request(self._target, data=body, method="POST")
            req.add_header("Content-Type", "application/json")
            req.add_header("User-Agent", "crew-budget-alerts")
            # A send whose ack was lost (the process died after the POST) is
            # repeated by another process: the key lets a receiver drop it.
            req.add_header("Idempotency-Key", alert.key)
            for key, value in self.headers.items():
                req.add_header(key, value)
            # urlopen raises HTTPError on 4xx/5xx, URLError when nobody listens.
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                resp.read()
        except Exception as exc:
            _reraise_redacted(exc)
            raise


class EmailSink:
    """Plain-text mail over SMTP (optionally STARTTLS / SSL and login)."""

    def __init__(
        self,
        host: str,
        port: int,
        sender: str,
        to: Sequence[str],
        *,
        starttls: bool = False,
        ssl: bool = False,
        username: str | None = None,
        password: str | None = None,
        subject_prefix: str = "[crew-budget]",
        timeout_seconds: float = 10.0,
    ) -> None:
        self.name = f"email({host}:{port})"
        self.host, self.port = host, port
        self.sender, self.to = sender, list(to)
        self.starttls, self.ssl = starttls, ssl
        self.username, self.password = username, password
        self.subject_prefix = subject_prefix
        self.timeout = timeout_seconds

    def message(self, alert: Alert) -> Any:
        from email.message import EmailMessage

        msg = EmailMessage()
        msg["Subject"] = f"{self.subject_prefix} {alert.title}".strip()
        msg["From"] = self.sender
        msg["To"] = ", ".join(self.to)
        details = "\n".join(f"  {k}: {v}" for k, v in alert.to_dict()["values"].items())
        msg.set_content(
            f"{alert.message}\n\nkind: {alert.kind}\nseverity: {alert.severity}\n"
            f"key: {alert.key}\n{details}\n"
        )
        return msg

    def send(self, alert: Alert) -> None:
        import smtplib

        cls = smtplib.SMTP_SSL if self.ssl else smtplib.SMTP
        with cls(self.host, self.port, timeout=self.timeout) as smtp:
            if self.starttls and not self.ssl:
                smtp.starttls()
            if self.username:
                smtp.login(self.username, self.password or "")
            smtp.send_message(self.message(alert))


class CallableSink:
    """Calls ``fn(alert)``; whatever it returns is ignored, what it raises is retried."""

    def __init__(self, fn: Callable[[Alert], Any], name: str | None = None) -> None:
        self.fn = fn
        self.name = name or f"callable({getattr(fn, '__qualname__', repr(fn))})"

    def send(self, alert: Alert) -> None:
        self.fn(alert)


def _redact(url: str) -> str:
    """Webhook URLs are secrets (Slack's path is the key): no credentials, one path part."""
    from urllib.parse import urlsplit

    from crew_budget.redact import redact_url

    parts = urlsplit(redact_url(url))
    path = parts.path.strip("/")
    first, _, rest = path.partition("/")
    return f"{parts.scheme}://{parts.netloc}/{first}{'/...' if rest else ''}"


def _split_userinfo(url: str) -> tuple[str, str | None]:
    """``http://u:p@host/x`` -> (``http://host/x``, ``Basic base64(u:p)``)."""
    import base64
    from urllib.parse import unquote, urlsplit, urlunsplit

    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url, None
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    token = base64.b64encode(f"{unquote(user)}:{unquote(password)}".encode()).decode()
    return urlunsplit(parts._replace(netloc=hostport)), f"Basic {token}"


def _reraise_redacted(exc: Exception) -> None:
    """Raise ``exc`` again without any URL credential in its text, if it had one.

    The manager logs ``type: message`` of a failed send; HTTP libraries may
    quote the URL they were given. Returns (so the caller re-raises ``exc``
    itself) when the message holds nothing to redact.
    """
    from crew_budget.redact import redact_text

    text = str(exc)
    clean = redact_text(text)
    if clean != text:
        raise ConnectionError(f"{type(exc).__name__}: {clean}") from None


def _resolve(path: str, where: str) -> Callable[[Alert], Any]:
    module_name, sep, attr = path.partition(":")
    if not sep:
        module_name, _, attr = path.rpartition(".")
    try:
        module = importlib.import_module(module_name)
        fn = getattr(module, attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(
            f"cannot import alert callable {path!r} ({exc}); write 'package.module:function' "
            "for a function importable in this environment",
            source="alerts", path=where,
        ) from None
    if not callable(fn):
        raise ConfigError(f"{path!r} is not callable; name a function taking one Alert",
                          source="alerts", path=where)
    return fn  # type: ignore[no-any-return]


def build_sink(config: SinkConfig, where: str = "alerts.sinks") -> Sink:
    """A sink from its YAML config. Raises ``ConfigError`` naming ``where``."""
    if isinstance(config, LogSinkConfig):
        return LogSink(config.level, config.logger)
    if isinstance(config, WebhookSinkConfig):
        return WebhookSink(config.url, format=config.format, headers=config.headers,
                           timeout_seconds=config.timeout_seconds)
    if isinstance(config, EmailSinkConfig):
        password = None
        if config.password_env:
            password = os.environ.get(config.password_env)
            if password is None:
                raise ConfigError(
                    f"environment variable {config.password_env} (the SMTP password) is not "
                    "set; export it, or remove password_env if the server needs no login",
                    source="alerts", path=f"{where}.password_env",
                )
        return EmailSink(config.host, config.port, config.from_, config.to,
                         starttls=config.starttls, ssl=config.ssl, username=config.username,
                         password=password, subject_prefix=config.subject_prefix,
                         timeout_seconds=config.timeout_seconds)
    if isinstance(config, CallableSinkConfig):
        return CallableSink(_resolve(config.path, f"{where}.path"), name=config.path)
    raise TypeError(f"unknown sink config {config!r}")


def build_sinks(configs: Sequence[SinkConfig]) -> list[Sink]:
    return [build_sink(c, f"alerts.sinks.{i}") for i, c in enumerate(configs)]
