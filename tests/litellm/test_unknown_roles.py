"""A LiteLLM call whose role matches no budget is refused before any HTTP request."""

from __future__ import annotations

import litellm
import pytest

from crew_budget import Guard, UnknownRoleError
from crew_budget.litellm import BudgetLogger, completion
from tests.fixtures.http_replay import recorded_usage, replay
from tests.litellm.conftest import LL, cost, outcomes, spent

FR = [{"role": "user", "content": "Name the capital of France in one word."}]
KEY = {"api_key": "sk-test", "num_retries": 0, "max_retries": 0}


async def test_acompletion_with_a_misspelt_role_is_refused_before_http(
    guard: Guard, logger: BudgetLogger
) -> None:
    with replay(LL / "completion.yaml") as cassette, pytest.raises(UnknownRoleError) as info:
        await litellm.acompletion(model="gpt-4o-mini", messages=FR, **KEY,
                                  metadata={"crew_budget_role": "wrtier"})
    assert cassette.play_count == 0
    assert (info.value.role, info.value.suggestion) == ("wrtier", "writer")
    assert outcomes(guard) == []
    assert logger.in_flight == 0


def test_sync_completion_with_an_unknown_role_is_refused_before_http(
    guard: Guard, logger: BudgetLogger
) -> None:
    with replay(LL / "completion.yaml") as cassette, pytest.raises(UnknownRoleError):
        completion(model="gpt-4o-mini", messages=FR, **KEY,
                   metadata={"crew_budget_role": "intern"})
    assert cassette.play_count == 0
    assert outcomes(guard) == []


def test_sync_completion_charges_a_case_variant_to_the_configured_role(
    guard: Guard, logger: BudgetLogger
) -> None:
    with replay(LL / "completion.yaml") as cassette:
        completion(model="gpt-4o-mini", messages=FR, **KEY,
                   metadata={"crew_budget_role": " WRITER"})
    assert cassette.play_count == 1
    assert spent(guard, "role:writer") == cost(recorded_usage(LL / "completion.yaml")[0])
