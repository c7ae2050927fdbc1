"""BudgetCallbackHandler on real langchain-openai chat models, HTTP replayed by VCR.py.

Every expected dollar amount is the cassette's recorded ``usage`` times the
gpt-4o-mini list price (see conftest), so it is independent of crew-budget's
own usage parsing; every block is proven by the number of HTTP requests sent.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import socket
import threading
from decimal import Decimal
from typing import Any

import pytest
from langchain_core.callbacks import CallbackManager, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage
from langchain_core.outputs import ChatResult
from langchain_openai import ChatOpenAI

import crew_budget
from crew_budget import BudgetExceeded, ConfigError, Guard, UnknownModelError
from crew_budget.langchain import BudgetCallbackHandler
from tests.fixtures.http_replay import live_bodies, recorded_usage, replay
from tests.langchain.conftest import LC, cost, outcomes, reserved, spent

Q_FR = "Name the capital of France in one word."
Q_PT = "Name the capital of Portugal in one word."


def chat(handler: BudgetCallbackHandler | None = None, **kwargs: Any) -> ChatOpenAI:
    kwargs.setdefault("max_tokens", 64)
    kwargs.setdefault("max_retries", 0)
    return ChatOpenAI(model="gpt-4o-mini", api_key="sk-test",
                      callbacks=[handler] if handler else None, **kwargs)


def test_import_crew_budget_does_not_import_langchain() -> None:
    import subprocess
    import sys

    code = ("import sys, crew_budget; print(sorted(m for m in "
            "('langchain', 'langchain_core', 'litellm') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    assert crew_budget.__name__ == "crew_budget"


# -- settle from usage: sync, async, streaming --------------------------------


def test_invoke_settles_exact_cost_from_usage(guard: Guard) -> None:
    handler = BudgetCallbackHandler(role="researcher", guard=guard)
    with replay(LC / "chat.yaml") as cassette:
        answer = chat(handler).invoke(Q_FR)
    assert answer.content == "Paris."
    assert cassette.play_count == 1
    expected = cost(recorded_usage(LC / "chat.yaml")[0])  # 16 x 0.15/M + 2 x 0.60/M
    assert expected == Decimal("0.0000036")
    assert spent(guard, "role:researcher") == expected
    assert reserved(guard, "role:researcher") == 0
    assert outcomes(guard) == ["settled"]
    assert handler.in_flight == 0


async def test_ainvoke_settles_exact_cost_from_usage(guard: Guard) -> None:
    handler = BudgetCallbackHandler(role="researcher", guard=guard)
    with replay(LC / "chat.yaml") as cassette:
        first = await chat(handler).ainvoke(Q_FR)
        second = await chat(handler).ainvoke(Q_PT)
    assert (first.content, second.content) == ("Paris.", "Lisbon.")
    assert cassette.play_count == 2
    usages = recorded_usage(LC / "chat.yaml")
    assert spent(guard, "role:researcher") == cost(usages[0]) + cost(usages[1])
    assert outcomes(guard) == ["settled", "settled"]


def test_stream_settles_from_final_usage_chunk(guard: Guard) -> None:
    handler = BudgetCallbackHandler(role="researcher", guard=guard)
    with replay(LC / "stream.yaml") as cassette:
        pieces = [c.content for c in chat(handler, streaming=True, stream_usage=True).stream(Q_FR)]
    assert "".join(str(p) for p in pieces) == "Paris."
    assert cassette.play_count == 1
    assert live_bodies(cassette)[0]["stream_options"] == {"include_usage": True}
    assert spent(guard, "role:researcher") == cost(recorded_usage(LC / "stream.yaml")[0])
    assert outcomes(guard) == ["settled"]


async def test_astream_settles_from_final_usage_chunk(guard: Guard) -> None:
    handler = BudgetCallbackHandler(role="researcher", guard=guard)
    model = chat(handler, streaming=True, stream_usage=True)
    with replay(LC / "stream.yaml") as cassette:
        pieces = [c.content async for c in model.astream(Q_FR)]
    assert "".join(str(p) for p in pieces) == "Paris."
    assert cassette.play_count == 1
    assert spent(guard, "role:researcher") == cost(recorded_usage(LC / "stream.yaml")[0])


def test_stream_without_usage_is_charged_at_reservation_and_logged(
    guard: Guard, caplog: pytest.LogCaptureFixture
) -> None:
    handler = BudgetCallbackHandler(role="researcher", guard=guard)
    assert recorded_usage(LC / "stream_no_usage.yaml") == [None]
    with caplog.at_level(logging.ERROR, logger="crew_budget"), \
            replay(LC / "stream_no_usage.yaml") as cassette:
        answer = chat(handler, streaming=True, stream_usage=False).invoke(Q_FR)
    assert answer.content == "Paris."
    assert cassette.play_count == 1
    [record] = guard.ledger.records()
    assert record.outcome == "settled"
    assert record.cost_nano == record.estimate_nano > 0  # the whole reservation, not $0
    assert spent(guard, "role:researcher") == Decimal(record.estimate_nano) / 10**9
    assert "returned no token usage" in caplog.text and "stream_usage=True" in caplog.text


# -- blocking before HTTP ------------------------------------------------------------


def test_over_budget_call_raises_before_any_http_request(guard: Guard) -> None:
    handler = BudgetCallbackHandler(role="broke", guard=guard)
    with replay(LC / "chat.yaml") as cassette, pytest.raises(BudgetExceeded) as info:
        chat(handler).invoke(Q_FR)
    assert cassette.play_count == 0
    assert info.value.role == "broke" and info.value.scope == "role:broke"
    assert info.value.limit == Decimal("0.000001")
    assert outcomes(guard) == ["blocked"]
    assert spent(guard, "role:broke") == 0 and reserved(guard, "role:broke") == 0
    assert handler.in_flight == 0


async def test_over_budget_async_call_raises_before_any_http_request(guard: Guard) -> None:
    handler = BudgetCallbackHandler(role="broke", guard=guard)
    with replay(LC / "stream.yaml") as cassette, pytest.raises(BudgetExceeded):
        async for _ in chat(handler, streaming=True, stream_usage=True).astream(Q_FR):
            pass
    assert cassette.play_count == 0
    assert outcomes(guard) == ["blocked"]


def test_second_call_blocked_once_the_first_used_the_budget(guard: Guard) -> None:
    handler = BudgetCallbackHandler(role="researcher", guard=guard)
    model = chat(handler)
    first = cost(recorded_usage(LC / "chat.yaml")[0])
    with replay(LC / "chat.yaml") as cassette:
        model.invoke(Q_FR)
        # Tighten the role to what is spent plus one micro-dollar: the next call
        # reserves at least 64 output tokens x $0.60/M = $0.0000384, so it cannot fit.
        guard.limit_role("researcher", daily_usd=first + Decimal("0.000001"))
        with pytest.raises(BudgetExceeded) as info:
            model.invoke(Q_PT)
    assert cassette.play_count == 1  # the blocked call never reached the provider
    assert info.value.spent == first
    assert spent(guard, "role:researcher") == first
    assert outcomes(guard) == ["settled", "blocked"]


def test_call_without_a_role_is_refused_before_http(guard: Guard) -> None:
    handler = BudgetCallbackHandler(guard=guard)
    with replay(LC / "chat.yaml") as cassette, pytest.raises(ConfigError, match="names no role"):
        chat(handler).invoke(Q_FR)
    assert cassette.play_count == 0
    assert guard.ledger.records() == []


def test_unpriced_model_is_refused_before_http(guard: Guard) -> None:
    handler = BudgetCallbackHandler(role="researcher", guard=guard)
    model = ChatOpenAI(model="my-private-finetune", api_key="sk-test", max_tokens=10,
                       callbacks=[handler])
    with replay(LC / "chat.yaml") as cassette, pytest.raises(UnknownModelError):
        model.invoke(Q_FR)
    assert cassette.play_count == 0


# -- roles ---------------------------------------------------------------------------


def test_run_metadata_names_the_role_per_call(guard: Guard) -> None:
    handler = BudgetCallbackHandler(role="researcher", guard=guard)
    model = chat(handler)
    usages = recorded_usage(LC / "chat.yaml")
    with replay(LC / "chat.yaml"):
        model.invoke(Q_FR)
        model.invoke(Q_PT, config={"metadata": {"crew_budget_role": "writer"}})
    assert spent(guard, "role:researcher") == cost(usages[0])
    assert spent(guard, "role:writer") == cost(usages[1])


def test_handler_built_from_config_file(tmp_path: Any) -> None:
    cfg = tmp_path / "budgets.yaml"
    cfg.write_text('ledger: memory://\nroles:\n  researcher: {daily: "0.50"}\n')
    handler = BudgetCallbackHandler(role="researcher", config=cfg)
    with replay(LC / "chat.yaml"):
        chat(handler).invoke(Q_FR)
    assert spent(handler.guard, "role:researcher") == cost(recorded_usage(LC / "chat.yaml")[0])
    with pytest.raises(ConfigError, match="not both"):
        BudgetCallbackHandler(role="x", config=cfg, guard=handler.guard)
    with pytest.raises(ConfigError, match="no budget given"):
        BudgetCallbackHandler(role="x")


# -- errors: released when never billed, charged when unknown -------------------------


def test_http_500_releases_the_reservation(guard: Guard) -> None:
    handler = BudgetCallbackHandler(role="researcher", guard=guard)
    with replay(LC / "server_error.yaml") as cassette, pytest.raises(Exception) as info:
        chat(handler).invoke(Q_FR)
    assert getattr(info.value, "status_code", None) == 500
    assert cassette.play_count == 1
    assert outcomes(guard) == ["released"]
    assert spent(guard, "role:researcher") == 0 and reserved(guard, "role:researcher") == 0


def test_connection_refused_releases_the_reservation(guard: Guard) -> None:
    with socket.socket() as s:  # a loopback port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    handler = BudgetCallbackHandler(role="researcher", guard=guard)
    model = chat(handler, base_url=f"http://127.0.0.1:{port}/v1")
    with pytest.raises(Exception, match=r"[Cc]onnection"):
        model.invoke(Q_FR)
    assert outcomes(guard) == ["released"]
    assert spent(guard, "role:researcher") == 0


def test_timeout_is_charged_at_the_reservation(guard: Guard) -> None:
    # A loopback server that reads the request and never answers: the provider
    # may be generating, so the call is charged in full, never released.
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            held.append(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    handler = BudgetCallbackHandler(role="researcher", guard=guard)
    model = chat(handler, base_url=f"http://127.0.0.1:{server.getsockname()[1]}/v1",
                 timeout=0.5)
    try:
        with pytest.raises(Exception, match=r"[Tt]imed? ?out"):
            model.invoke(Q_FR)
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        server.close()
    [record] = guard.ledger.records()
    assert record.outcome == "settled" and record.cost_nano == record.estimate_nano > 0
    assert spent(guard, "role:researcher") == Decimal(record.estimate_nano) / 10**9


# -- one reservation per call: duplicates, copies, nesting, concurrency ---------------


def test_handler_registered_twice_and_copied_reserves_once(guard: Guard) -> None:
    handler = BudgetCallbackHandler(role="researcher", guard=guard)
    assert copy.copy(handler) is handler and copy.deepcopy(handler) is handler
    model = chat(handler)
    with replay(LC / "chat.yaml") as cassette:
        model.invoke(Q_FR, config={"callbacks": [handler, copy.deepcopy(handler)]})
    assert cassette.play_count == 1
    assert outcomes(guard) == ["settled"]
    assert spent(guard, "role:researcher") == cost(recorded_usage(LC / "chat.yaml")[0])


class Delegating(BaseChatModel):
    """A wrapper chat model that calls an inner one as a child run (a nested LLM run)."""

    inner: ChatOpenAI

    @property
    def _llm_type(self) -> str:
        return "delegating"

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None,
                  **kwargs: Any) -> ChatResult:
        # An LLM run manager has no get_child(); a wrapper forms the child run itself.
        callbacks = None
        if run_manager is not None:
            callbacks = CallbackManager(handlers=run_manager.inheritable_handlers,
                                        inheritable_handlers=run_manager.inheritable_handlers,
                                        parent_run_id=run_manager.run_id)
        result = self.inner.generate([messages], callbacks=callbacks)
        return ChatResult(generations=result.generations[0], llm_output=result.llm_output)

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": "gpt-4o-mini"}


def test_nested_llm_run_is_covered_by_the_outer_reservation(guard: Guard) -> None:
    handler = BudgetCallbackHandler(role="researcher", guard=guard)
    wrapper = Delegating(inner=chat())
    with replay(LC / "chat.yaml") as cassette:
        # Run-config callbacks are inherited, so the inner model's run reaches the
        # handler too, as a child of the wrapper's run.
        answer = wrapper.invoke(Q_FR, config={"callbacks": [handler]})
    assert answer.content == "Paris."
    assert cassette.play_count == 1
    # One reservation (the outer run), settled from the inner call's usage.
    assert outcomes(guard) == ["settled"]
    assert spent(guard, "role:researcher") == cost(recorded_usage(LC / "chat.yaml")[0])
    assert handler.in_flight == 0


def test_concurrent_runs_share_one_handler(guard: Guard) -> None:
    handler = BudgetCallbackHandler(role="researcher", guard=guard)
    model = chat(handler)
    prompts = [f"Name the capital of {c} in one word." for c in ("Spain", "Italy", "Japan",
                                                                 "Canada")]
    with replay(LC / "batch.yaml") as cassette:
        answers = model.batch(prompts, config={"max_concurrency": 4})
    assert sorted(str(a.content) for a in answers) == ["Madrid.", "Ottawa.", "Rome.", "Tokyo."]
    assert cassette.play_count == 4
    expected = sum((cost(u) for u in recorded_usage(LC / "batch.yaml") if u), Decimal(0))
    assert spent(guard, "role:researcher") == expected
    assert outcomes(guard) == ["settled"] * 4
    assert handler.in_flight == 0


async def test_concurrent_async_runs_share_one_handler(guard: Guard) -> None:
    handler = BudgetCallbackHandler(role="researcher", guard=guard)
    model = chat(handler)
    prompts = [f"Name the capital of {c} in one word." for c in ("Spain", "Italy", "Japan",
                                                                 "Canada")]
    with replay(LC / "batch.yaml") as cassette:
        answers = await asyncio.gather(*(model.ainvoke(p) for p in prompts))
    assert len(answers) == 4 and cassette.play_count == 4
    expected = sum((cost(u) for u in recorded_usage(LC / "batch.yaml") if u), Decimal(0))
    assert spent(guard, "role:researcher") == expected
    assert reserved(guard, "role:researcher") == 0
    assert handler.in_flight == 0
