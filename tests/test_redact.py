"""``crew_budget.redact``: secrets replaced by ``***``, everything else kept byte for byte."""

from __future__ import annotations

import logging

import pytest

from crew_budget.errors import LedgerNotFound, LedgerUnavailable
from crew_budget.redact import (
    MASK,
    RedactingFilter,
    is_secret_name,
    redact_headers,
    redact_text,
    redact_url,
)


@pytest.mark.parametrize(("url", "shown"), [
    # Ledger URLs: the user stays, the password goes; a lone userinfo is redis-py's password.
    ("redis://default:S3cr3t@127.0.0.1:6379/0", "redis://default:***@127.0.0.1:6379/0"),
    ("rediss://:S3cr3t@h:6380/1", "rediss://:***@h:6380/1"),
    ("redis://S3cr3t@h:6379/0", "redis://***@h:6379/0"),
    ("redis+cluster://u:S3cr3t@h:7000/0", "redis+cluster://u:***@h:7000/0"),
    ("redis://h:6379/0?password=S3cr3t&db=2", "redis://h:6379/0?password=***&db=2"),
    ("redis://u:p%40ss@[::1]:6379/0", "redis://u:***@[::1]:6379/0"),
    # Nothing to hide: returned unchanged (the sqlite slashes included).
    ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
    ("sqlite:///relative/ledger.db", "sqlite:///relative/ledger.db"),
    ("sqlite:////abs/ledger-2026-11-30.db", "sqlite:////abs/ledger-2026-11-30.db"),
    ("memory://", "memory://"),
    # Webhooks: userinfo, token-like query and fragment values, token-like path parts.
    ("http://user:T0ken@127.0.0.1:8080/hook", "http://user:***@127.0.0.1:8080/hook"),
    ("https://T0ken@example.com/x", "https://***@example.com/x"),
    ("https://h/p?api_key=1&sig=abc&token=t&access_token=a&secret=s&x=y",
     "https://h/p?api_key=***&sig=***&token=***&access_token=***&secret=***&x=y"),
    ("https://h/p?API-KEY=1&Password=2&key=3", "https://h/p?API-KEY=***&Password=***&key=***"),
    ("https://app/cb#access_token=abc&state=1", "https://app/cb#access_token=***&state=1"),
    ("https://hooks.slack.com/services/T0001/B0001/abcDEF123456ghiJKL789",
     "https://hooks.slack.com/services/T0001/B0001/***"),
    ("https://api.telegram.org/bot123456:AAHdqTcvCH1vGWJxfSeofSAs0K5P/sendMessage",
     "https://api.telegram.org/***/sendMessage"),
    ("https://api.example.com/v1/chat/completions", "https://api.example.com/v1/chat/completions"),
])
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert redact_url(shown) == shown  # idempotent


def test_redact_url_of_an_unparseable_url_still_hides_the_password() -> None:
    assert redact_url("redis://u:S3cr3t@[::1:6379/0") == "redis://u:***@[::1:6379/0"
    assert redact_url("not a url, password=S3cr3t") == "not a url, password=***"


def test_redact_text_finds_urls_and_credentials_inside_messages() -> None:
    assert redact_text(
        "Error connecting to redis://default:S3cr3t@127.0.0.1:6379/0. Connection refused."
    ) == "Error connecting to redis://default:***@127.0.0.1:6379/0. Connection refused."
    assert redact_text("names no host (got 'redis://default:S3cr3t@/0')") == (
        "names no host (got 'redis://default:***@/0')")
    assert redact_text("(see http://h/x?token=abc).") == "(see http://h/x?token=***)."
    assert redact_text("{'Authorization': 'Bearer T0k3n', 'X-Team': 'ops'}") == (
        "{'Authorization': 'Bearer ***', 'X-Team': 'ops'}")
    assert redact_text("x-api-key: sk-abc123 sent") == "x-api-key: *** sent"
    assert redact_text("password=hunter2; token: abc") == "password=***; token: ***"
    assert redact_text("Authorization: Basic dXNlcjpwYXNz") == "Authorization: Basic ***"
    assert redact_text("sent Bearer eyJhbGciOi.J9x") == "sent Bearer ***"


@pytest.mark.parametrize("prose", [
    "use Basic authentication",
    "prompt tokens: 5, max_tokens=10, reserved_output_tokens=3",
    "alert key: threshold:role:researcher|day|2026-11-25:80",
    "ledger redis://127.0.0.1:6379/0 is unreachable",
    "mail ops@example.com",
    "",
])
def test_redact_text_leaves_prose_alone(prose: str) -> None:
    assert redact_text(prose) == prose


def test_redact_headers_masks_credentials_and_keeps_the_scheme() -> None:
    assert redact_headers({
        "Authorization": "Bearer T0k3n", "x-api-key": "k", "api-key": "k", "Cookie": "a=b",
        "Proxy-Authorization": "Basic dXNlcg==", "X-Slack-Token": "t", "X-Team": "ops",
        "Content-Type": "application/json",
    }) == {
        "Authorization": "Bearer ***", "x-api-key": MASK, "api-key": MASK, "Cookie": MASK,
        "Proxy-Authorization": "Basic ***", "X-Slack-Token": MASK, "X-Team": "ops",
        "Content-Type": "application/json",
    }
    assert is_secret_name("DB_PASSWORD") and is_secret_name("client-secret")
    assert not is_secret_name("x-team") and not is_secret_name("db")


def test_errors_carry_only_redacted_urls() -> None:
    exc = LedgerUnavailable("redis://d:S3cr3t@h:1/0", "refused by redis://d:S3cr3t@h:1/0")
    assert exc.url == "redis://d:***@h:1/0"
    assert exc.reason == "refused by redis://d:***@h:1/0"
    assert str(exc).startswith("budget ledger redis://d:***@h:1/0 is unreachable (refused by")
    missing = LedgerNotFound("sqlite:////x/typo.db", "/x/typo.db")
    assert isinstance(missing, LedgerUnavailable)
    assert str(missing) == (
        "no ledger at /x/typo.db: check the ledger URL (sqlite:////x/typo.db) in --ledger, "
        "CREW_BUDGET_LEDGER or `ledger:`, or run a guarded call first to create it")
    import pickle

    again = pickle.loads(pickle.dumps(missing))
    assert (type(again), str(again), again.path) == (LedgerNotFound, str(missing), "/x/typo.db")


def test_redacting_filter_cleans_messages_arguments_and_tracebacks() -> None:
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(self.format(record))

    handler = Keep()
    handler.addFilter(RedactingFilter())
    log = logging.getLogger("tests.redact.filter")
    log.addHandler(handler)
    log.propagate = False
    try:
        log.warning("connecting to %s", "redis://u:S3cr3t@h:1/0")
        try:
            raise ValueError("bad url http://user:T0ken@h/x")
        except ValueError:
            log.exception("failed")
    finally:
        log.removeHandler(handler)
    assert records[0] == "connecting to redis://u:***@h:1/0"
    assert records[1].startswith("failed\nTraceback")
    assert "ValueError: bad url http://user:***@h/x" in records[1]
    assert not any("S3cr3t" in r or "T0ken" in r for r in records)
