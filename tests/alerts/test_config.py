"""The ``alerts:`` YAML section: defaults, every sink type, and errors with path + fix."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from crew_budget import ConfigError, load_config
from crew_budget.alerts.config import (
    AlertsConfig,
    CallableSinkConfig,
    EmailSinkConfig,
    LogSinkConfig,
    WebhookSinkConfig,
)
from crew_budget.alerts.sinks import EmailSink, WebhookSink, build_sinks


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "budgets.yaml"
    path.write_text(text)
    return path


def test_defaults_are_50_80_100_all_rules_and_a_log_sink() -> None:
    cfg = AlertsConfig()
    assert cfg.thresholds == [50, 80, 100]
    assert cfg.anomalies.baseline_days == 7
    assert cfg.anomalies.spend_spike.sigma == 3.0
    assert cfg.anomalies.cost_per_call.factor == 2.0
    assert cfg.sinks == [LogSinkConfig()]
    assert load_config({"alerts": {}}).alerts == cfg
    assert load_config({}).alerts is None


def test_full_alerts_section_loads_with_every_sink(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, """
roles: {researcher: {daily: 5}}
alerts:
  thresholds: [90, 25, 90]
  scope_thresholds: {"role:researcher": [10, 100]}
  anomalies:
    baseline_days: 14
    burn_rate: {factor: 3, min_fraction: 0.3}
    spend_spike: {sigma: 4, min_usd: "0.50"}
    new_model: {enabled: false}
    cost_per_call: {factor: 2.5, window_minutes: 30}
  sinks:
    - {type: log, level: error}
    - {type: webhook, url: "https://hooks.slack.com/services/T0/B0/XYZ", format: slack,
       headers: {X-Team: ops}}
    - type: email
      host: smtp.example.com
      port: 587
      from: budget@example.com
      to: ops@example.com
      starttls: true
      username: budget
      password_env: CREW_TEST_SMTP_PASSWORD
    - {type: callable, path: "tests.alerts.helpers:record_alert"}
  delivery: {attempts: 2, backoff_seconds: 0.1}
"""))
    alerts = cfg.alerts
    assert alerts is not None
    assert alerts.thresholds == [25, 90]  # sorted, de-duplicated
    assert alerts.thresholds_for("role:researcher") == [10, 100]
    assert alerts.thresholds_for("crew:x") == [25, 90]
    assert alerts.anomalies.baseline_days == 14
    assert alerts.anomalies.spend_spike.min_usd == Decimal("0.50")
    assert alerts.anomalies.new_model.enabled is False
    log, hook, mail, func = alerts.sinks
    assert isinstance(log, LogSinkConfig) and log.level == "error"
    assert isinstance(hook, WebhookSinkConfig) and hook.format == "slack"
    assert hook.headers == {"X-Team": "ops"}
    assert isinstance(mail, EmailSinkConfig)
    assert (mail.from_, mail.to, mail.port, mail.starttls) == (
        "budget@example.com", ["ops@example.com"], 587, True)
    assert isinstance(func, CallableSinkConfig)
    assert alerts.delivery.attempts == 2


@pytest.mark.parametrize(
    ("yaml_text", "path", "fix"),
    [
        ("alerts: {thresholds: [50, 180, 0]}", "alerts.thresholds",
         "threshold 0 is not a percentage"),
        ("alerts: {treshold: [50]}", "alerts.treshold", "alerts takes enabled, thresholds"),
        ("alerts: {scope_thresholds: {researcher: [50]}}", "alerts.scope_thresholds",
         "'researcher' is not a budget scope; write \"role:NAME\""),
        ("alerts: {anomalies: {spike: {}}}", "alerts.anomalies.spike",
         "anomalies takes enabled, baseline_days"),
        ("alerts: {anomalies: {burn_rate: {factor: 2, window: 1}}}",
         "alerts.anomalies.burn_rate.window", "burn_rate takes enabled, factor, min_fraction"),
        ("alerts: {sinks: [{type: webhook, url: 'http://x', formt: slack}]}",
         "alerts.sinks.0.webhook.formt",
         "a webhook sink takes type, url, format, headers"),
        ("alerts: {sinks: [{type: webhook, url: 'ftp://x'}]}", "alerts.sinks.0.webhook.url",
         "must start with http:// or https://"),
        ("alerts: {sinks: [{type: email, host: h, to: [a@b]}]}", "alerts.sinks.0.email.from",
         "required key is missing"),
        ("alerts: {sinks: [{type: pager}]}", "alerts.sinks.0",
         "'log', 'webhook', 'email', 'callable'"),
        ("alerts: {sinks: [{type: callable, path: 'not a path'}]}",
         "alerts.sinks.0.callable.path", "should match pattern"),
    ],
)
def test_mistakes_name_the_key_path_and_the_fix(
    tmp_path: Path, yaml_text: str, path: str, fix: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, yaml_text))
    assert info.value.path == path
    assert fix in str(info.value)
    assert str(info.value).startswith(f"{tmp_path / 'budgets.yaml'}: {path}: ")


def test_sinks_are_built_and_a_missing_password_env_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cfg = AlertsConfig.model_validate({"sinks": [
        {"type": "webhook", "url": "http://127.0.0.1:9/hook/secret-token"},
        {"type": "email", "host": "localhost", "from": "a@b", "to": ["c@d"],
         "username": "u", "password_env": "CREW_TEST_SMTP_PASSWORD"},
    ]})
    monkeypatch.delenv("CREW_TEST_SMTP_PASSWORD", raising=False)
    with pytest.raises(ConfigError) as info:
        build_sinks(cfg.sinks)
    assert info.value.path == "alerts.sinks.1.password_env"
    assert "CREW_TEST_SMTP_PASSWORD" in str(info.value)
    monkeypatch.setenv("CREW_TEST_SMTP_PASSWORD", "s3cret")
    hook, mail = build_sinks(cfg.sinks)
    assert isinstance(hook, WebhookSink) and isinstance(mail, EmailSink)
    assert mail.password == "s3cret"
    assert hook.name == "webhook(http://127.0.0.1:9/hook/...)"  # the token is not logged


def test_unimportable_callable_is_a_config_error() -> None:
    cfg = AlertsConfig.model_validate(
        {"sinks": [{"type": "callable", "path": "tests.alerts.nowhere:fn"}]})
    with pytest.raises(ConfigError, match="cannot import alert callable") as info:
        build_sinks(cfg.sinks)
    assert info.value.path == "alerts.sinks.0.path"
