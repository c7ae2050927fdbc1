"""OpenTelemetry export: metrics through the real SDK, spans, and a real OTLP/HTTP receiver.

Prices are output-only ($10 per million output tokens, provider anthropic):
every call reserves max_tokens=1000, i.e. $0.01, and settles 500 completion
tokens, i.e. $0.005 (2 prompt tokens, free). The researcher's daily limit is
$0.03: five calls spend $0.025, the sixth ($0.025 + $0.01 > $0.03) is blocked.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import threading
import weakref
from collections.abc import Iterator
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from crew_budget import BudgetExceeded, ConfigError, Guard
from crew_budget.ledger.memory import MemoryLedger
from crew_budget.otel import (
    TOKEN_USAGE_BUCKETS,
    enable,
    instrument,
    instrument_from_env,
    provider_name,
)

CONFIG: dict[str, Any] = {
    "roles": {"researcher": {"daily": "0.03"}},
    "default_role": {"daily": "10"},
    "crew": {"name": "team", "daily": "5"},
    "prices": {"m": {"input_per_million": 0, "output_per_million": 10,
                     "provider": "anthropic"}},
    "lease_seconds": 60,
}
MSG = [{"role": "user", "content": "go"}]
T0 = datetime(2026, 11, 18, 8, 53, 20, tzinfo=timezone.utc).timestamp()
BASE = {
    "gen_ai.operation.name": "chat",
    "gen_ai.provider.name": "anthropic",
    "gen_ai.system": "anthropic",
    "gen_ai.request.model": "m",
    "crew_budget.role": "researcher",
    "crew_budget.crew": "team",
}
Points = dict[tuple[str, frozenset[tuple[str, Any]]], Any]


@pytest.fixture(autouse=True)
def _sdk_enabled(monkeypatch: pytest.MonkeyPatch) -> None:
    # The suite sets OTEL_SDK_DISABLED=true for CrewAI; the SDK providers
    # built here would then hand out no-op instruments.
    monkeypatch.delenv("OTEL_SDK_DISABLED", raising=False)


def call(guard: Guard, role: str = "researcher", completion: int = 500) -> None:
    ticket = guard.preflight(role, "m", MSG, max_tokens=1000)
    guard.settle(ticket, {"prompt_tokens": 2, "completion_tokens": completion})


def points(reader: InMemoryMetricReader) -> Points:
    data = reader.get_metrics_data()
    assert data is not None
    out: Points = {}
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            assert sm.scope.name == "crew_budget"
            for metric in sm.metrics:
                for p in metric.data.data_points:
                    out[(metric.name, frozenset(p.attributes.items()))] = p
    return out


def key(name: str, **attrs: str) -> tuple[str, frozenset[tuple[str, Any]]]:
    return name, frozenset({**BASE, **attrs}.items())


def nano(usd: float) -> int:
    """A float data point back in nano-USD (exact for these sums)."""
    return round(usd * 1e9)


@pytest.fixture
def reader() -> InMemoryMetricReader:
    return InMemoryMetricReader()


@pytest.fixture
def guard(reader: InMemoryMetricReader) -> Iterator[Guard]:
    g = Guard(CONFIG, MemoryLedger(clock=lambda: T0), clock=lambda: T0)
    instrument(g, MeterProvider(metric_readers=[reader]))
    yield g
    g.close()


def test_decisions_cost_and_token_usage_follow_the_genai_conventions(
    guard: Guard, reader: InMemoryMetricReader
) -> None:
    for _ in range(5):
        call(guard)
    with pytest.raises(BudgetExceeded):
        call(guard)
    got = points(reader)
    assert got[key("crew_budget.decisions", **{"crew_budget.decision": "allowed"})].value == 5
    blocked = key("crew_budget.decisions", **{"crew_budget.decision": "blocked",
                                              "crew_budget.scope": "role:researcher",
                                              "crew_budget.window": "day"})
    assert got[blocked].value == 1
    settled = key("crew_budget.settlements", **{"crew_budget.outcome": "settled"})
    assert got[settled].value == 5
    assert nano(got[key("crew_budget.cost", **{"crew_budget.outcome": "settled"})].value) == (
        25_000_000)                                   # 5 x $0.005
    tokens_in = got[key("gen_ai.client.token.usage", **{"gen_ai.token.type": "input"})]
    tokens_out = got[key("gen_ai.client.token.usage", **{"gen_ai.token.type": "output"})]
    assert (tokens_in.count, tokens_in.sum, tokens_in.min, tokens_in.max) == (5, 10, 2, 2)
    assert (tokens_out.count, tokens_out.sum) == (5, 2500)
    assert tuple(tokens_out.explicit_bounds) == TOKEN_USAGE_BUCKETS
    # 500 tokens fall in (256, 1024]: bucket 5 ((-inf, 1] is bucket 0).
    assert tokens_out.bucket_counts[5] == 5 and sum(tokens_out.bucket_counts) == 5
    names = {name for name, _attrs in got}
    assert names == {"crew_budget.decisions", "crew_budget.settlements", "crew_budget.cost",
                     "gen_ai.client.token.usage"}  # no overrun: every call cost < estimate


def test_release_expiry_repeats_and_overruns() -> None:
    now = [T0]
    reader = InMemoryMetricReader()
    guard = Guard(CONFIG, MemoryLedger(clock=lambda: now[0]), clock=lambda: now[0])
    instrument(guard, MeterProvider(metric_readers=[reader]))
    released = guard.preflight("researcher", "m", MSG, max_tokens=1000)
    guard.release(released)
    guard.release(released)                           # a repeat: changes nothing
    lapsed = guard.preflight("researcher", "m", MSG, max_tokens=1000)
    now[0] += 61                                      # the 60 s lease runs out
    assert guard.settle(lapsed, {"prompt_tokens": 2, "completion_tokens": 5}).state == "expired"
    guard.settle(lapsed, {"prompt_tokens": 2, "completion_tokens": 5})  # learnt again
    over = guard.preflight("researcher", "m", MSG, max_tokens=1000)
    guard.settle(over, {"prompt_tokens": 2, "completion_tokens": 1500})  # $0.015 > $0.01
    guard.settle(over, {"prompt_tokens": 2, "completion_tokens": 1500})  # a repeat
    got = points(reader)
    out = "crew_budget.outcome"
    assert got[key("crew_budget.settlements", **{out: "released"})].value == 1
    assert got[key("crew_budget.settlements", **{out: "expired"})].value == 1
    assert got[key("crew_budget.settlements", **{out: "settled"})].value == 1
    assert (key("crew_budget.cost", **{out: "released"})) not in got  # $0 adds nothing
    assert nano(got[key("crew_budget.cost", **{out: "expired"})].value) == 10_000_000
    assert nano(got[key("crew_budget.cost", **{out: "settled"})].value) == 15_000_000
    assert got[key("crew_budget.overruns", **{out: "settled"})].value == 1
    assert nano(got[key("crew_budget.overrun.cost", **{out: "settled"})].value) == 5_000_000
    tokens_out = got[key("gen_ai.client.token.usage", **{"gen_ai.token.type": "output"})]
    assert (tokens_out.count, tokens_out.sum) == (1, 1500)  # only the applied settle
    guard.close()


def test_role_cardinality_is_bounded_and_uninstall_stops_recording(
    reader: InMemoryMetricReader,
) -> None:
    roles = {name: {"daily": "1"} for name in ("researcher", "a", "b", "c")}
    guard = Guard({**CONFIG, "roles": roles}, MemoryLedger(clock=lambda: T0), clock=lambda: T0)
    uninstall = instrument(guard, MeterProvider(metric_readers=[reader]), max_values=2,
                           legacy_system_attribute=False)
    for role in ("researcher", "a", "b", "c"):       # more roles than max_values
        call(guard, role)
    got = points(reader)
    roles = {dict(attrs)["crew_budget.role"]: p.value for (name, attrs), p in got.items()
             if name == "crew_budget.decisions"}
    assert roles == {"researcher": 1, "a": 1, "_OTHER": 2}
    assert all("gen_ai.system" not in dict(attrs) for _name, attrs in got)
    uninstall()
    call(guard, "a")
    again = points(reader)
    assert sum(p.value for (name, _a), p in again.items()
               if name == "crew_budget.decisions") == 4  # unchanged
    guard.close()


def test_instrumenting_twice_replaces_instead_of_counting_twice(
    guard: Guard, reader: InMemoryMetricReader
) -> None:
    second = InMemoryMetricReader()
    instrument(guard, MeterProvider(metric_readers=[second]))
    call(guard)
    assert points(second)[key("crew_budget.decisions",
                              **{"crew_budget.decision": "allowed"})].value == 1
    assert reader.get_metrics_data() is None  # the first one was removed: no data at all


def test_guards_sharing_a_meter_provider_add_up(reader: InMemoryMetricReader) -> None:
    # The SDK keeps only the first registration of an observable instrument:
    # a second guard must feed the same instruments, not register its own.
    provider = MeterProvider(metric_readers=[reader])
    guards = [Guard(CONFIG, MemoryLedger(clock=lambda: T0), clock=lambda: T0) for _ in range(2)]
    for g in guards:
        instrument(g, provider)
    call(guards[0])
    call(guards[1])
    call(guards[1])
    got = points(reader)
    assert got[key("crew_budget.decisions", **{"crew_budget.decision": "allowed"})].value == 3
    assert got[key("crew_budget.cost", **{"crew_budget.outcome": "settled"})].value == 0.015
    tokens_out = got[key("gen_ai.client.token.usage", **{"gen_ai.token.type": "output"})]
    assert (tokens_out.count, tokens_out.sum) == (3, 1500)
    call(guards[0])                                   # cumulative across collections
    again = points(reader)
    assert again[key("crew_budget.decisions", **{"crew_budget.decision": "allowed"})].value == 4
    tokens_out = again[key("gen_ai.client.token.usage", **{"gen_ai.token.type": "output"})]
    assert (tokens_out.count, tokens_out.sum) == (4, 2000)


def test_token_counts_nobody_collects_are_bounded_and_warned_about_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from crew_budget import otel

    monkeypatch.setattr(otel, "_TOKEN_QUEUE", 4)
    guard = Guard(CONFIG, MemoryLedger(clock=lambda: T0), clock=lambda: T0)
    instrument(guard, MeterProvider())                # no metric reader: nothing collects
    with caplog.at_level("WARNING", logger="crew_budget.otel"):
        for _ in range(3):
            call(guard)                               # 6 token counts into a queue of 4
    warnings = [r.getMessage() for r in caplog.records]
    assert warnings == [
        "crew-budget otel: 4 token counts are waiting and nothing collects them; the oldest "
        "are dropped. Fix: give the meter provider a metric reader (e.g. a "
        "PeriodicExportingMetricReader), or stop instrumenting (unset CREW_BUDGET_OTEL)"]


def test_an_instrumented_guard_can_still_be_garbage_collected(
    reader: InMemoryMetricReader,
) -> None:
    guard = Guard(CONFIG, MemoryLedger(clock=lambda: T0), clock=lambda: T0)
    instrument(guard, MeterProvider(metric_readers=[reader]))
    call(guard)
    ref = weakref.ref(guard)
    guard.close()
    del guard
    gc.collect()
    assert ref() is None
    # Its totals stay: they are cumulative counters of calls that happened.
    assert points(reader)[key("crew_budget.decisions",
                              **{"crew_budget.decision": "allowed"})].value == 1


def test_fail_open_calls_are_counted_as_unguarded(
    reader: InMemoryMetricReader, tmp_path: Any
) -> None:
    from tests.fixtures.redis_server import RedisServer

    server = RedisServer(directory=tmp_path)
    server.start()
    url = server.url
    server.stop()                                     # the ledger is down for good
    guard = Guard({**CONFIG, "fail_open": True}, url)
    instrument(guard, MeterProvider(metric_readers=[reader]))
    call(guard)
    got = points(reader)
    assert got[key("crew_budget.decisions", **{"crew_budget.decision": "unguarded"})].value == 1
    assert got[key("crew_budget.settlements", **{"crew_budget.outcome": "unguarded"})].value == 1
    assert nano(got[key("crew_budget.cost", **{"crew_budget.outcome": "unguarded"})].value) == (
        5_000_000)


def test_span_gets_decision_cost_and_usage(guard: Guard) -> None:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = tracer_provider.get_tracer("test")
    with tracer.start_as_current_span("chat m"):
        ticket = guard.preflight("researcher", "m", MSG, max_tokens=1000)
        guard.settle(ticket, {"prompt_tokens": 2, "completion_tokens": 500})
    for _ in range(4):
        call(guard)                                   # outside any span: nothing to set
    with tracer.start_as_current_span("blocked call"), pytest.raises(BudgetExceeded):
        call(guard)
    ok, blocked = exporter.get_finished_spans()
    attrs = dict(ok.attributes or {})
    assert attrs["crew_budget.decision"] == "allowed"
    assert attrs["crew_budget.outcome"] == "settled"
    assert attrs["crew_budget.role"] == "researcher"
    assert attrs["crew_budget.crew"] == "team"
    assert attrs["crew_budget.reservation_id"] == ticket.reservation_id
    assert attrs["crew_budget.estimate_usd"] == 0.01
    assert attrs["crew_budget.cost_usd"] == 0.005
    assert attrs["gen_ai.usage.input_tokens"] == 2
    assert attrs["gen_ai.usage.output_tokens"] == 500
    assert attrs["gen_ai.provider.name"] == "anthropic"
    assert [e.name for e in ok.events] == ["crew_budget.decision", "crew_budget.settlement"]
    battrs = dict(blocked.attributes or {})
    assert (battrs["crew_budget.decision"], battrs["crew_budget.scope"],
            battrs["crew_budget.window"]) == ("blocked", "role:researcher", "day")
    assert "crew_budget.reservation_id" not in battrs
    assert [e.name for e in blocked.events] == ["crew_budget.decision"]


def test_enable_instruments_guards_built_afterwards_until_disabled(
    reader: InMemoryMetricReader,
) -> None:
    before = Guard(CONFIG, MemoryLedger(clock=lambda: T0), clock=lambda: T0)
    disable = enable(MeterProvider(metric_readers=[reader]))
    try:
        during = Guard(CONFIG, MemoryLedger(clock=lambda: T0), clock=lambda: T0)
    finally:
        disable()
    after = Guard(CONFIG, MemoryLedger(clock=lambda: T0), clock=lambda: T0)
    for g in (before, during, during, after):
        call(g)
    got = points(reader)
    assert got[key("crew_budget.decisions", **{"crew_budget.decision": "allowed"})].value == 2


def test_provider_names_map_to_semconv_values() -> None:
    assert [provider_name(p) for p in ("openai", "vertex_ai-language-models", "bedrock",
                                       "xai", "mistral", "gemini", "groq", "my-host")] == [
        "openai", "gcp.vertex_ai", "aws.bedrock", "x_ai", "mistral_ai", "gcp.gemini", "groq",
        "my-host"]


def test_a_bad_env_switch_fails_the_guard_with_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CREW_BUDGET_OTEL", "ture")
    with pytest.raises(ConfigError) as info:
        Guard(CONFIG, "memory://")
    assert "CREW_BUDGET_OTEL='ture' is not a switch; set it to 1 to export OpenTelemetry " \
        "metrics or 0 (or unset it) not to" in str(info.value)
    guard = Guard(CONFIG, "memory://", start_alerts=False)
    with pytest.raises(ConfigError):
        instrument_from_env(guard)                    # the hook itself, called directly


ENV_SCRIPT = """
import json, sys
from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
import crew_budget
assert "opentelemetry.sdk" in sys.modules
reader = InMemoryMetricReader()
metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
g = crew_budget.Guard(json.loads(sys.argv[1]), "memory://")
t = g.preflight("researcher", "m", [{"role": "user", "content": "go"}], max_tokens=1000)
g.settle(t, {"prompt_tokens": 2, "completion_tokens": 500})
out = {}
for rm in reader.get_metrics_data().resource_metrics:
    for sm in rm.scope_metrics:
        for m in sm.metrics:
            out[m.name] = sum(getattr(p, "value", 0) or getattr(p, "count", 0)
                              for p in m.data.data_points)
print(json.dumps(out, sort_keys=True))
"""

NO_OTEL_SCRIPT = """
import json, sys
import crew_budget
g = crew_budget.Guard(json.loads(sys.argv[1]), "memory://")
t = g.preflight("researcher", "m", [{"role": "user", "content": "go"}], max_tokens=1000)
g.settle(t, {"prompt_tokens": 2, "completion_tokens": 500})
print(sorted(m for m in sys.modules if m.startswith("opentelemetry")))
"""


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CREW_BUDGET_", "OTEL_"))}
    env.update(extra)
    return env


def test_env_var_instruments_every_guard_with_the_global_provider() -> None:
    done = subprocess.run([sys.executable, "-c", ENV_SCRIPT, json.dumps(CONFIG)],
                          env=_env(CREW_BUDGET_OTEL="1"), capture_output=True, text=True,
                          check=True)
    assert json.loads(done.stdout) == {
        "crew_budget.cost": 0.005, "crew_budget.decisions": 1, "crew_budget.settlements": 1,
        "gen_ai.client.token.usage": 2}              # two records: input and output


@pytest.mark.parametrize("switch", [{}, {"CREW_BUDGET_OTEL": "0"}, {"CREW_BUDGET_OTEL": ""}])
def test_without_the_switch_opentelemetry_is_never_imported(switch: dict[str, str]) -> None:
    done = subprocess.run([sys.executable, "-c", NO_OTEL_SCRIPT, json.dumps(CONFIG)],
                          env=_env(**switch), capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


# -- a real OTLP/HTTP receiver ------------------------------------------------------


class _Receiver(BaseHTTPRequestHandler):
    received: list[tuple[str, str, ExportMetricsServiceRequest]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        request = ExportMetricsServiceRequest()
        request.ParseFromString(body)
        self.received.append((self.path, self.headers["Content-Type"], request))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def otlp_receiver() -> Iterator[tuple[str, list[tuple[str, str, ExportMetricsServiceRequest]]]]:
    received: list[tuple[str, str, ExportMetricsServiceRequest]] = []
    handler = type("Handler", (_Receiver,), {"received": received})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1/metrics", received
    server.shutdown()
    server.server_close()
    thread.join()


def test_metrics_reach_a_real_otlp_http_endpoint(
    otlp_receiver: tuple[str, list[tuple[str, str, ExportMetricsServiceRequest]]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    endpoint, received = otlp_receiver
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    exporter = OTLPMetricExporter(endpoint=endpoint, timeout=10)
    periodic = PeriodicExportingMetricReader(exporter, export_interval_millis=3_600_000)
    provider = MeterProvider(metric_readers=[periodic])
    guard = Guard(CONFIG, MemoryLedger(clock=lambda: T0), clock=lambda: T0)
    instrument(guard, provider)
    for _ in range(5):
        call(guard)
    with pytest.raises(BudgetExceeded):
        call(guard)
    assert provider.force_flush(timeout_millis=10_000)
    provider.shutdown()
    assert received, "the exporter sent nothing"
    path, content_type, request = received[0]
    assert (path, content_type) == ("/v1/metrics", "application/x-protobuf")
    by_name: dict[str, list[Any]] = {}
    units: dict[str, str] = {}
    for rm in request.resource_metrics:
        for sm in rm.scope_metrics:
            assert sm.scope.name == "crew_budget"
            for m in sm.metrics:
                units[m.name] = m.unit
                pts = m.sum.data_points if m.HasField("sum") else m.histogram.data_points
                by_name.setdefault(m.name, []).extend(pts)

    def attrs(p: Any) -> dict[str, str]:
        return {kv.key: kv.value.string_value for kv in p.attributes}

    assert units == {"crew_budget.decisions": "{call}", "crew_budget.settlements": "{call}",
                     "crew_budget.cost": "USD", "gen_ai.client.token.usage": "{token}"}
    decisions = {attrs(p)["crew_budget.decision"]: p.as_int for p in by_name[
        "crew_budget.decisions"]}
    assert decisions == {"allowed": 5, "blocked": 1}
    (cost,) = by_name["crew_budget.cost"]
    assert nano(cost.as_double) == 25_000_000
    assert attrs(cost) == {**BASE, "crew_budget.outcome": "settled"}
    hist = {attrs(p)["gen_ai.token.type"]: (p.count, p.sum, list(p.explicit_bounds))
            for p in by_name["gen_ai.client.token.usage"]}
    assert hist == {"input": (5, 10.0, [float(b) for b in TOKEN_USAGE_BUCKETS]),
                    "output": (5, 2500.0, [float(b) for b in TOKEN_USAGE_BUCKETS])}
    guard.close()


# -- a real framework call, HTTP replayed -------------------------------------------


def test_a_langchain_call_reports_the_providers_usage_and_cost() -> None:
    from langchain_openai import ChatOpenAI

    from crew_budget.langchain import BudgetCallbackHandler
    from tests.fixtures.http_replay import CASSETTES, recorded_usage, replay

    chat_yaml = CASSETTES / "langchain" / "chat.yaml"
    usage = recorded_usage(chat_yaml)[0]
    assert usage is not None and (usage["prompt_tokens"], usage["completion_tokens"]) == (16, 2)
    reader = InMemoryMetricReader()
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    guard = Guard({"roles": {"researcher": {"daily": "1.00"}}}, "memory://")
    instrument(guard, MeterProvider(metric_readers=[reader]))
    handler = BudgetCallbackHandler(role="researcher", guard=guard)
    model = ChatOpenAI(model="gpt-4o-mini", api_key="sk-test", max_tokens=64, max_retries=0,
                       callbacks=[handler])
    with replay(chat_yaml) as cassette, \
            tracer_provider.get_tracer("app").start_as_current_span("chat gpt-4o-mini"):
        assert model.invoke("Name the capital of France in one word.").content == "Paris."
    assert cassette.play_count == 1
    base = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
            "gen_ai.system": "openai", "gen_ai.request.model": "gpt-4o-mini",
            "crew_budget.role": "researcher"}
    got = points(reader)

    def at(name: str, **attrs: str) -> Any:
        return got[(name, frozenset({**base, **attrs}.items()))]

    # gpt-4o-mini at $0.15 / $0.60 per million: 16 x 0.15 + 2 x 0.60 = $0.0000036
    assert nano(at("crew_budget.cost", **{"crew_budget.outcome": "settled"}).value) == 3600
    assert at("crew_budget.decisions", **{"crew_budget.decision": "allowed"}).value == 1
    assert at("gen_ai.client.token.usage", **{"gen_ai.token.type": "input"}).sum == 16
    assert at("gen_ai.client.token.usage", **{"gen_ai.token.type": "output"}).sum == 2
    (span,) = exporter.get_finished_spans()
    attrs = dict(span.attributes or {})
    assert (attrs["gen_ai.usage.input_tokens"], attrs["gen_ai.usage.output_tokens"]) == (16, 2)
    assert nano(attrs["crew_budget.cost_usd"]) == 3600  # type: ignore[arg-type]
    guard.close()
