"""The estimator's memo of recently counted message dicts (by identity).

An agent loop passes the same message dicts again, so the estimator keeps
their cache keys by id. These tests prove it never returns a stale count:
every expectation is what a fresh estimator (no memo, no cache) counts for
the same request at that moment.
"""

from __future__ import annotations

from typing import Any

from crew_budget.estimate import _MEMO_CHARS, _MEMO_SIZE, Estimator
from crew_budget.pricing import PriceBook

MODEL = "gpt-4o-mini"
PRICE = PriceBook().get(MODEL)


def fresh(messages: list[Any]) -> int:
    return Estimator().count_prompt(MODEL, PRICE, messages)


def test_a_message_changed_in_place_is_counted_again() -> None:
    est = Estimator()
    msg: dict[str, Any] = {"role": "user", "content": "Summarise the quarterly revenue."}
    history = [{"role": "system", "content": "You are terse."}, msg]
    first = est.count_prompt(MODEL, PRICE, history)
    assert first == fresh(history)
    assert est.count_prompt(MODEL, PRICE, history) == first  # memo hit, same count
    assert est.cache_info()["hits"] == 2

    msg["content"] = "Summarise the quarterly revenue figures for every region, in detail."
    changed = est.count_prompt(MODEL, PRICE, history)
    assert changed == fresh(history) and changed > first

    msg["name"] = "analyst_with_a_long_name"  # a key added in place
    assert est.count_prompt(MODEL, PRICE, history) == fresh(history)
    del msg["name"]
    assert est.count_prompt(MODEL, PRICE, history) == changed


def test_list_content_mutated_in_place_is_never_taken_from_the_memo() -> None:
    est = Estimator()
    parts: list[dict[str, Any]] = [{"type": "text", "text": "Look at this."}]
    msg = {"role": "user", "content": parts}
    first = est.count_prompt(MODEL, PRICE, [msg])
    assert first == fresh([msg])
    parts.append({"type": "text", "text": "And at this much longer second part, please."})
    assert est.count_prompt(MODEL, PRICE, [msg]) == fresh([msg]) > first


def test_memo_is_bounded_and_skips_large_messages() -> None:
    est = Estimator()
    big = {"role": "user", "content": "word " * (_MEMO_CHARS // 4)}
    est.count_prompt(MODEL, PRICE, [big])
    assert id(big) not in est._recent  # large text is not kept alive by the memo
    many = [{"role": "user", "content": f"message {i}"} for i in range(_MEMO_SIZE * 2 + 3)]
    est.count_prompt(MODEL, PRICE, many)
    assert 0 < len(est._recent) <= _MEMO_SIZE


def test_agent_loop_fast_path_counts_exactly_what_a_cold_estimator_counts() -> None:
    """Warm (remembered dicts summed, only the rest counted) == cold, for a
    history mixing plain, named, system and tool-call messages."""
    from crew_budget.estimate import Estimator
    from crew_budget.pricing import PriceBook

    price = PriceBook().get("gpt-4o-mini")
    history: list[dict[str, object]] = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "name": "ana", "content": "Find the 2024 revenue of ACME."},
        {"role": "assistant", "content": None, "tool_calls": [{
            "id": "call_1", "type": "function",
            "function": {"name": "search", "arguments": "{\"q\": \"ACME revenue 2024\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "ACME reported $1.2bn."},
        {"role": "assistant", "content": "ACME made $1.2bn in 2024."},
    ]
    warm = Estimator()
    for step in range(4):
        history.append({"role": "user", "content": f"step {step}: and in {2020 + step}?"})
        cold = Estimator().count_prompt("gpt-4o-mini", price, list(history))
        assert warm.count_prompt("gpt-4o-mini", price, list(history)) == cold
    assert warm.hits > 0


def _turns(n: int) -> list[dict[str, Any]]:
    return [{"role": "user" if i % 2 else "assistant",
             "content": f"turn {i}: " + "the quarterly figures by region " * (i % 5 + 1)}
            for i in range(n)]


def test_a_growing_conversation_reuses_its_total_and_counts_like_a_cold_estimator() -> None:
    est = Estimator()
    history = [{"role": "system", "content": "You are terse."}]
    for turn in _turns(12):
        history = [*history, turn]  # a new list each call, as frameworks pass it
        assert est.count_prompt(MODEL, PRICE, history) == fresh(history)
    # The conversation is remembered under its first message, whole.
    (head, copies, sums), = est._convos.values()
    assert head == history and len(copies) == len(history) and len(sums) == len(history) + 1


def test_a_remembered_conversation_changed_in_place_is_counted_again() -> None:
    """Reusing the remembered total needs every message unchanged, not just
    the same objects: an edit deep in the history must change the count."""
    est = Estimator()
    history = [{"role": "system", "content": "You are terse."}, *_turns(8)]
    est.count_prompt(MODEL, PRICE, history[:-1])
    est.count_prompt(MODEL, PRICE, history)
    before = est.count_prompt(MODEL, PRICE, history)
    assert est._convos  # the history is remembered as a conversation

    history[3]["content"] = "a much longer rewritten turn " * 20
    assert est.count_prompt(MODEL, PRICE, history) == fresh(history) > before
    history[5]["name"] = "analyst"
    assert est.count_prompt(MODEL, PRICE, history) == fresh(history)


def test_a_conversation_that_diverges_or_shrinks_counts_like_a_cold_estimator() -> None:
    est = Estimator()
    base = [{"role": "system", "content": "You are terse."}, *_turns(10)]
    est.count_prompt(MODEL, PRICE, base)
    est.count_prompt(MODEL, PRICE, base)
    replaced = [*base[:4], {"role": "user", "content": "a different fourth turn"}, *base[5:]]
    assert est.count_prompt(MODEL, PRICE, replaced) == fresh(replaced)
    shorter = base[:3]
    assert est.count_prompt(MODEL, PRICE, shorter) == fresh(shorter)
    # The agent-loop pattern: the same history, a new last message each call.
    for step in range(5):
        call = [*base, {"role": "user", "content": f"step {step}"}]
        assert est.count_prompt(MODEL, PRICE, call) == fresh(call)


def test_conversations_are_bounded() -> None:
    from crew_budget.estimate import _CONVO_SIZE

    est = Estimator()
    for i in range(_CONVO_SIZE * 2 + 1):
        msgs = [{"role": "user", "content": f"conversation {i}"}, {"role": "user", "content": "go"}]
        est.count_prompt(MODEL, PRICE, msgs)
        est.count_prompt(MODEL, PRICE, msgs)
    assert 0 < len(est._convos) <= _CONVO_SIZE


def test_warm_counts_equal_cold_for_message_objects_and_claude_with_thinking() -> None:
    """The fast path's new messages may be LangChain-style objects, and the
    request may carry Claude's ``thinking``: the count is still the cold one."""
    from dataclasses import dataclass

    @dataclass
    class Msg:  # what LangChain's messages look like to the estimator
        type: str
        content: str

    for model, extra in (("gpt-4o-mini", None), ("claude-sonnet-4-5", {"thinking": {
            "type": "enabled", "budget_tokens": 2048}})):
        price = PriceBook().get(model)
        warm = Estimator()
        history: list[Any] = [{"role": "user", "content": "Plan the market report."}]
        for step in range(4):
            history = [*history, Msg("ai" if step % 2 else "human", f"step {step} " * (step + 1))]
            got = warm.count_prompt(model, price, history, extra=extra)
            cold = Estimator().count_prompt(model, price, history, extra=extra)
            assert got == cold, (model, step)
        assert warm.cache_info()["hits"] > 0
