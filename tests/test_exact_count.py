"""``exact_count``: Anthropic's count_tokens and Gemini's countTokens, replayed
from hand-written cassettes (cassettes/exact/), a prefix cache, and a fallback
to the estimate that never blocks a call."""

from __future__ import annotations

import http.server
import json
import logging
import os
import socket
import threading
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
import vcr

from crew_budget import Guard
from crew_budget.estimate import Estimator
from crew_budget.estimate.exact import ExactCounter
from tests.conftest import CASSETTES

ANTHROPIC_KEY = "sk-ant-test-0123456789abcdefSECRET"
GEMINI_KEY = "AIzaTestKey0123456789SECRET"
# $3 / $15 per million tokens (Claude), $0.30 / $2.50 (Gemini): nano-USD per token below.
PRICES = {
    "claude-sonnet-4-5": {"input_per_million": 3, "output_per_million": 15,
                          "provider": "anthropic"},
    "gemini-2.5-flash": {"input_per_million": "0.30", "output_per_million": "2.50"},
}
CONFIG = {"prices": PRICES, "roles": {"analyst": {"daily": 10, "exact_count": True},
                                      "writer": {"daily": 10}}}
OUT = 200


def usd(nano: int) -> Decimal:
    return Decimal(nano) / 10**9


@pytest.fixture(autouse=True)
def keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", ANTHROPIC_KEY)
    monkeypatch.setenv("GEMINI_API_KEY", GEMINI_KEY)
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)


def replay(name: str, sent: list[Any]) -> Any:
    def capture(request: Any) -> Any:
        sent.append(request)  # the live request, as VCR matches it
        return request

    mode = os.environ.get("CREW_BUDGET_RECORD_MODE", "none")  # --record-mode, conftest.py
    # Recording (real keys): the keys never reach the cassette. Replaying: the
    # capture sees the headers as sent, fake keys included.
    hidden = ["x-api-key", "x-goog-api-key"] if mode != "none" else []
    recorder = vcr.VCR(match_on=["method", "scheme", "host", "path"], record_mode=mode,
                       before_record_request=capture, filter_headers=hidden)
    return recorder.use_cassette(str(CASSETTES / "exact" / name))


def assert_no_key_logged(caplog: pytest.LogCaptureFixture) -> None:
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert ANTHROPIC_KEY not in text and GEMINI_KEY not in text
    assert "SECRET" not in text


def test_anthropic_count_is_reserved_exactly(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, "crew_budget")
    messages = [{"role": "user", "content": "Name the three largest moons of Jupiter."}]
    sent: list[Any] = []
    with Guard(CONFIG, "memory://") as guard, replay("anthropic_count_tokens.yaml",
                                                     sent) as cassette:
        ticket = guard.preflight("analyst", "claude-sonnet-4-5", messages, max_tokens=OUT)
        assert cassette.play_count == 1
    # 17 tokens as the endpoint counted them, x $3/M, + 200 output x $15/M.
    assert (ticket.prompt_tokens, ticket.exact_count, ticket.margin_tokens) == (17, True, 0)
    assert ticket.estimate == usd(17 * 3000 + OUT * 15000) == Decimal("0.003051")
    request = sent[-1]
    assert request.headers["x-api-key"] == ANTHROPIC_KEY
    assert request.headers["anthropic-version"] == "2023-06-01"
    assert json.loads(request.body) == {"model": "claude-sonnet-4-5", "messages": messages}
    assert guard.counters["exact_counts"] == 1
    assert "exact_count_fallbacks" not in guard.counters
    assert_no_key_logged(caplog)


def test_three_calls_sharing_a_prefix_cost_one_request() -> None:
    system = "You are a concise economic historian."
    history = [
        {"role": "user", "content": "Summarise the causes of the 1929 stock market crash in "
                                    "two sentences."},
        {"role": "assistant", "content": "Speculation on borrowed money inflated prices far "
                                         "beyond earnings. When confidence broke, margin calls "
                                         "forced selling that fed on itself."},
    ]
    questions = ["Which policy mistake made it worse?", "How long did the recovery take?",
                 "Name one regulation it led to."]
    sent: list[Any] = []
    tickets = []
    with Guard(CONFIG, "memory://") as guard, replay("anthropic_count_tokens_prefix.yaml",
                                                     sent) as cassette:
        for q in questions:
            messages = [*history, {"role": "user", "content": q}]
            tickets.append(guard.preflight("analyst", "claude-sonnet-4-5", messages,
                                           max_tokens=OUT, system=system))
        assert cassette.play_count == 1
        assert guard.exact_counter.requests == 1
        price = guard.price("claude-sonnet-4-5")
    assert json.loads(sent[0].body) == {"model": "claude-sonnet-4-5", "messages": history,
                                        "system": system}
    est = Estimator()
    prefix = est.count_prompt("claude-sonnet-4-5", price, history, system=system,
                              calibrated=False)
    for q, t in zip(questions, tickets, strict=True):
        full = est.count_prompt("claude-sonnet-4-5", price, [*history, {"role": "user",
                                                                        "content": q}],
                                system=system, calibrated=False)
        # 64 counted by the endpoint for the shared prefix + the new question, estimated.
        assert t.prompt_tokens == 64 + (full - prefix) and full > prefix
        assert t.estimate == usd(t.prompt_tokens * 3000 + OUT * 15000)
        assert t.exact_count


def test_gemini_count_tokens_sends_the_whole_request() -> None:
    messages = [{"role": "system", "content": "Answer in plain English."},
                {"role": "user", "content": "List two uses of a Kalman filter."}]
    cfg = {**CONFIG, "roles": {"analyst": {"daily": 10}},
           "models": {"gemini-2.5-flash": {"exact_count": True}}}
    sent: list[Any] = []
    with Guard(cfg, "memory://") as guard, replay("gemini_count_tokens.yaml", sent) as cassette:
        ticket = guard.preflight("analyst", "gemini-2.5-flash", messages[1:], max_tokens=OUT,
                                 system="Answer in plain English.")
        assert cassette.play_count == 1
    assert (ticket.prompt_tokens, ticket.exact_count) == (19, True)
    assert ticket.estimate == usd(19 * 300 + OUT * 2500) == Decimal("0.0005057")
    request = sent[-1]
    assert request.headers["x-goog-api-key"] == GEMINI_KEY
    assert request.uri.endswith("/v1beta/models/gemini-2.5-flash:countTokens")
    assert json.loads(request.body)["generateContentRequest"]["systemInstruction"] == {
        "parts": [{"text": "Answer in plain English."}]}


def test_roles_and_models_opt_in_and_a_role_can_opt_out() -> None:
    cfg = {"prices": {**PRICES, "claude-opus-4-1": {**PRICES["claude-sonnet-4-5"],
                                                    "exact_count": True}},
           "roles": {"analyst": {"daily": 1, "exact_count": True},
                     "writer": {"daily": 1},
                     "quick": {"daily": 1, "exact_count": False}},
           "models": {"gemini-2.5-flash": {"exact_count": True}}}
    guard = Guard(cfg, "memory://")
    wants = guard._wants_exact
    assert wants("analyst", "claude-sonnet-4-5") is True  # the role
    assert wants("writer", "claude-sonnet-4-5") is False  # nobody asked
    assert wants("writer", "gemini-2.5-flash") is True  # models: entry
    assert wants("writer", "anthropic/claude-opus-4-1") is True  # prices: entry, bare name
    assert wants("quick", "gemini-2.5-flash") is False  # the role says no
    assert Guard({"prices": PRICES, "roles": {"w": {}}}, "memory://")._exact_cache == {}


class _Slow(http.server.BaseHTTPRequestHandler):
    release = threading.Event()

    def do_POST(self) -> None:
        self.release.wait(10)  # answers only when the test is done with it
        try:
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"input_tokens": 1}')
        except OSError:
            pass  # the client gave up long ago: that is the point

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def slow_server() -> Iterator[str]:
    _Slow.release.clear()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Slow)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        _Slow.release.set()
        server.shutdown()
        server.server_close()
        thread.join(10)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_slow_or_dead_endpoint_falls_back_to_the_estimate(
        slow_server: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "crew_budget")
    messages = [{"role": "user", "content": "Name the three largest moons of Jupiter."}]
    guard = Guard(CONFIG, "memory://")
    plain = guard.preflight("writer", "claude-sonnet-4-5", messages, max_tokens=OUT)
    guard.exact_counter = ExactCounter(timeout=0.2, anthropic_url=slow_server)
    slow = guard.preflight("analyst", "claude-sonnet-4-5", messages, max_tokens=OUT)
    dead_url = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    guard.exact_counter = ExactCounter(timeout=0.2, anthropic_url=dead_url)
    dead = guard.preflight("analyst", "claude-sonnet-4-5", messages, max_tokens=OUT)
    # Both calls were granted, reserved at the estimate like a call without exact_count.
    for t in (slow, dead):
        assert (t.exact_count, t.prompt_tokens, t.estimate) == (
            False, plain.prompt_tokens, plain.estimate)
    assert guard.counters["exact_count_fallbacks"] == 2
    warnings = [r.getMessage() for r in caplog.records]
    assert warnings == [
        f"crew-budget: exact_count for claude-sonnet-4-5 fell back to the estimate: no answer "
        f"from {slow_server}/v1/messages/count_tokens within 0.2 s (exact_count_timeout)",
        f"crew-budget: exact_count for claude-sonnet-4-5 fell back to the estimate: "
        f"{dead_url}/v1/messages/count_tokens unreachable (ConnectError)",
    ]
    assert_no_key_logged(caplog)
    guard.close()


def test_no_key_falls_back_and_says_which_variable(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "crew_budget")
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    guard = Guard(CONFIG, "memory://")
    t = guard.preflight("analyst", "claude-sonnet-4-5", [{"role": "user", "content": "hi"}],
                        max_tokens=OUT)
    assert not t.exact_count and guard.counters["exact_count_fallbacks"] == 1
    assert caplog.records[-1].getMessage() == (
        "crew-budget: exact_count for claude-sonnet-4-5 fell back to the estimate: no API key "
        "for anthropic's token counting: set ANTHROPIC_API_KEY, or pass it to ExactCounter")
    assert guard.exact_counter.requests == 0


def test_exact_calls_teach_no_margin() -> None:
    messages = [{"role": "user", "content": "Name the three largest moons of Jupiter."}]
    with Guard(CONFIG, "memory://") as guard, replay("anthropic_count_tokens.yaml", []):
        t = guard.preflight("analyst", "claude-sonnet-4-5", messages, max_tokens=OUT)
        guard.settle(t, {"input_tokens": 17, "output_tokens": 9})
        assert t.counted_prompt_tokens == 0
        assert guard.margins.pending() == 0
        assert guard.estimator.calibration("claude-sonnet-4-5") == 1.0
