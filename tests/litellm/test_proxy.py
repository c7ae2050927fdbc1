"""End to end: a real LiteLLM proxy process enforcing crew-budget per agent role.

Stack (all on loopback): the official ``openai`` client -> ``litellm`` proxy
(its own process and environment, started with examples/litellm_proxy/
config.yaml plus a test-only custom auth) -> ``ReplayUpstream``, a stand-in
for api.openai.com that answers from cassettes/litellm/proxy_upstream.yaml
and counts what it receives. The proxy and this test share one SQLite
ledger, read here with a Guard on the same budgets file. Expected dollars are
the upstream's recorded usage x the gpt-4o-mini list price.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import litellm
import openai
import pytest
import yaml
from crewai import LLM, Agent, Crew, Task
from langchain.agents import create_agent
from langchain_openai import ChatOpenAI

from crew_budget import Guard
from crew_budget.crewai import BudgetCallback
from crew_budget.langchain import BudgetMiddleware
from crew_budget.ledger import SpendRecord
from crew_budget.litellm import BudgetLogger, budget_role, completion
from tests.fixtures.http_replay import ReplayUpstream, recorded_usage, replay
from tests.fixtures.litellm_proxy import ProxyProcess, start_proxy
from tests.litellm.conftest import LL, cost, spent, unregister

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "litellm_proxy"
SYSTEM = "You are the research agent of a travel crew."

# intern: one 16-token call (about 29 x $0.15/M + 16 x $0.60/M = $0.00001395)
# fits; after it settles (29 x 0.15 + 11 x 0.60 = $0.00001095 per the
# cassette) the next one cannot: the limit sits between the two.
BUDGETS = {
    "crew": {"name": "travel-crew", "daily": "5.00"},
    "roles": {
        "researcher": {"daily": "1.00", "max_output_tokens": 256},
        "writer": {"daily": "1.00", "max_output_tokens": 256},
        "broke": {"daily": "0.000001"},
        "intern": {"daily": "0.00001945"},
        # one role per framework for the one-ledger test
        "analyst": {"daily": "1.00", "max_output_tokens": 256},
        "planner": {"daily": "1.00", "max_output_tokens": 256},
        "editor": {"daily": "1.00", "max_output_tokens": 256},
        "scout": {"daily": "1.00", "max_output_tokens": 256},
        # the colliding-call-id clients, and the n=20 requests
        "crowd": {"daily": "1.00", "max_output_tokens": 256},
        "fanout": {"daily": "0.001"},
        # one n=20 request reserves 20 x 16 output tokens x $0.60/M = $0.000192
        # (plus its prompt) > $0.0001: it must be refused; one completion fits.
        "fanout-small": {"daily": "0.0001"},
    },
    # A budget for names the operator configures; names a request invents
    # must never get one (issue 9: 40 of 40 invented names were allowed).
    "default_role": {"daily": "0.50"},
}
# Roles a request with an unbound key may name by header (not "writer").
HEADER_ROLES = "researcher,broke,intern,analyst,planner,editor,scout,crowd,fanout,fanout-small"
MASTER_KEY = "sk-master-test"


@dataclass
class Stack:
    proxy: ProxyProcess
    upstream: ReplayUpstream
    guard: Guard
    budgets: Path
    ledger_url: str

    def client(self, key: str = "sk-agent-open") -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.proxy.url}/v1", api_key=key, max_retries=0,
                             timeout=60)

    def settled(self) -> list[SpendRecord]:
        return [r for r in self.guard.ledger.records() if r.outcome == "settled"]

    def wait_settled(self, n: int, timeout: float = 20.0) -> list[SpendRecord]:
        """The proxy settles after it has answered (litellm's success callback)."""
        deadline = time.monotonic() + timeout
        while len(self.settled()) < n:
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(self.settled())} settled, expected {n}:\n"
                                     f"{self.proxy.log_tail(3000)}")
            time.sleep(0.05)
        return self.settled()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    work = tmp_path_factory.mktemp("litellm-proxy")
    ledger_url = f"sqlite:///{work / 'ledger.db'}"
    budgets = work / "budgets.yaml"
    budgets.write_text(yaml.safe_dump(BUDGETS))
    config = yaml.safe_load((EXAMPLE / "config.yaml").read_text())
    # Test-only: keys with metadata but no database (see proxy_auth.py).
    config["general_settings"]["custom_auth"] = "proxy_auth.user_api_key_auth"
    (work / "config.yaml").write_text(yaml.safe_dump(config))
    shutil.copy(Path(__file__).with_name("proxy_auth.py"), work / "proxy_auth.py")
    with ReplayUpstream(LL / "proxy_upstream.yaml") as upstream:
        proxy = start_proxy(work / "config.yaml", {
            "CREW_BUDGET_CONFIG": str(budgets),
            "CREW_BUDGET_LEDGER": ledger_url,
            "LITELLM_MASTER_KEY": MASTER_KEY,
            "CREW_BUDGET_HEADER_ROLES": HEADER_ROLES,
            "OPENAI_API_KEY": "sk-upstream-test",
            "OPENAI_API_BASE": upstream.base_url,
        }, work)
        guard = Guard(budgets, ledger_url)
        try:
            yield Stack(proxy, upstream, guard, budgets, ledger_url)
        finally:
            proxy.stop()
            guard.close()


def ask(city: str, **kwargs: Any) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": f"List two sights in {city}."}], **kwargs}


ROLE = "x-crew-budget-role"


def test_allowed_call_reaches_upstream_and_settles_exact_dollars(stack: Stack) -> None:
    before, settled_before = stack.upstream.count, len(stack.settled())
    reply = stack.client().chat.completions.create(
        **ask("Porto"), extra_headers={ROLE: "researcher"})
    assert reply.choices[0].message.content == "The Ribeira district and the Livraria Lello."
    assert stack.upstream.count == before + 1
    # No max_tokens in the request: the proxy hook sent the role's cap upstream.
    assert stack.upstream.requests[-1]["max_tokens"] == 256
    records = stack.wait_settled(settled_before + 1)
    usage = stack.upstream.usage_served(-1)
    assert usage is not None
    assert records[-1].role == "researcher"
    assert records[-1].metadata["framework"] == "litellm-proxy"
    assert Decimal(records[-1].cost_nano) / 10**9 == cost(usage) == Decimal("0.00001095")
    assert spent(stack.guard, "role:researcher") == cost(usage)


async def test_streaming_call_settles_from_the_final_usage_chunk(stack: Stack) -> None:
    settled_before = len(stack.settled())
    before_spent = spent(stack.guard, "role:researcher")
    client = openai.AsyncOpenAI(base_url=f"{stack.proxy.url}/v1", api_key="sk-agent-open",
                                max_retries=0)
    stream = await client.chat.completions.create(
        **ask("Faro"), stream=True, extra_headers={ROLE: "researcher"})
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    await client.close()
    assert text == "The Old Town and the Ria Formosa."
    assert stack.upstream.requests[-1]["stream_options"] == {"include_usage": True}
    stack.wait_settled(settled_before + 1)
    usage = stack.upstream.usage_served(-1)
    assert usage is not None
    assert spent(stack.guard, "role:researcher") - before_spent == cost(usage)


def test_over_budget_call_is_refused_before_the_upstream(stack: Stack) -> None:
    before = stack.upstream.count
    with pytest.raises(openai.APIStatusError) as info:
        stack.client().chat.completions.create(**ask("Lagos"), extra_headers={ROLE: "broke"})
    assert info.value.status_code == 422  # litellm.budget_exceeded_status_code
    assert "budget exceeded for role 'broke'" in str(info.value)
    assert stack.upstream.count == before
    blocked = [r for r in stack.guard.ledger.records() if r.outcome == "blocked"]
    assert blocked and blocked[-1].role == "broke" and blocked[-1].scope == "role:broke"


def test_a_request_cannot_raise_its_own_budget(stack: Stack) -> None:
    before = stack.upstream.count
    with pytest.raises(openai.APIStatusError) as info:
        stack.client().chat.completions.create(
            **ask("Lagos"),
            extra_headers={ROLE: "broke", "x-crew-budget-daily": "1000",
                           "x-crew-budget-limit": "1000"},
            extra_body={"metadata": {"crew_budget_role": "broke",
                                     "crew_budget": {"daily": "1000"},
                                     "crew_budget_limit": "1000", "max_budget": 1000}},
        )
    assert info.value.status_code == 422
    assert stack.upstream.count == before
    # The limit the proxy applied is still the YAML's one micro-dollar.
    assert "$0.000001" in str(info.value)


def test_key_metadata_binds_the_role(stack: Stack) -> None:
    before, settled_before = stack.upstream.count, len(stack.settled())
    writer = stack.client("sk-agent-writer")
    reply = writer.chat.completions.create(**ask("Braga"))
    assert reply.choices[0].message.content == "Bom Jesus do Monte and Braga Cathedral."
    records = stack.wait_settled(settled_before + 1)
    assert records[-1].role == "writer"
    assert spent(stack.guard, "role:writer") == cost(stack.upstream.usage_served(-1) or {})
    # A key bound to "writer" cannot spend as another role via the header.
    with pytest.raises(openai.PermissionDeniedError, match="bound to role 'writer'"):
        writer.chat.completions.create(**ask("Braga"), extra_headers={ROLE: "researcher"})
    assert stack.upstream.count == before + 1


def test_unknown_or_missing_role_is_refused(stack: Stack) -> None:
    before = stack.upstream.count
    with pytest.raises(openai.BadRequestError, match="unknown role 'ceo'"):
        stack.client().chat.completions.create(**ask("Tavira"), extra_headers={ROLE: "ceo"})
    with pytest.raises(openai.BadRequestError, match="names no agent role"):
        stack.client().chat.completions.create(**ask("Tavira"))
    assert stack.upstream.count == before


def test_routes_that_cannot_be_priced_are_refused(stack: Stack) -> None:
    before = stack.upstream.count
    with pytest.raises(openai.BadRequestError, match="cannot be budgeted"):
        stack.client().completions.create(model="gpt-4o-mini", prompt="List two sights.",
                                          extra_headers={ROLE: "researcher"})
    with pytest.raises(openai.BadRequestError, match="cannot be budgeted"):
        stack.client().embeddings.create(model="gpt-4o-mini", input="Porto",
                                         extra_headers={ROLE: "researcher"})
    assert stack.upstream.count == before


def test_second_call_blocked_once_the_first_used_the_budget(stack: Stack) -> None:
    before, settled_before = stack.upstream.count, len(stack.settled())
    client = stack.client()
    client.chat.completions.create(**ask("Evora"), max_tokens=16,
                                   extra_headers={ROLE: "intern"})
    stack.wait_settled(settled_before + 1)
    first = cost(stack.upstream.usage_served(-1) or {})
    assert spent(stack.guard, "role:intern") == first
    with pytest.raises(openai.APIStatusError, match="budget exceeded for role 'intern'"):
        client.chat.completions.create(**ask("Sintra"), max_tokens=16,
                                       extra_headers={ROLE: "intern"})
    assert stack.upstream.count == before + 1
    assert spent(stack.guard, "role:intern") == first


def test_upstream_error_releases_the_reservation(stack: Stack) -> None:
    before = stack.upstream.count
    with pytest.raises(openai.InternalServerError):
        stack.client().chat.completions.create(**ask("Tomar"), extra_headers={ROLE: "scout"})
    assert stack.upstream.count == before + 1  # it did reach the upstream, which failed
    # The provider bills nothing for an error: released, not charged.
    deadline = time.monotonic() + 20
    while not any(r.outcome == "released" and r.role == "scout"
                  for r in stack.guard.ledger.records()):
        assert time.monotonic() < deadline, stack.proxy.log_tail(3000)
        time.sleep(0.05)
    assert spent(stack.guard, "role:scout") == 0
    rows = {(r.scope, r.window): r for r in stack.guard.status("scout")}
    assert rows[("role:scout", "day")].reserved == 0


# -- issue 9: no bypass through the proxy ---------------------------------------------

CROWD = ["Aveiro", "Viseu", "Leiria", "Setubal", "Guimaraes", "Obidos", "Nazare", "Lamego",
         "Chaves", "Elvas", "Beja", "Silves", "Viana do Castelo", "Braganca", "Cascais",
         "Peniche", "Amarante", "Monsaraz", "Marvao", "Batalha"]


def fan(place: str) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "n": 20, "max_tokens": 16, "messages": [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": f"List one sight in {place}."}]}


def records_of(stack: Stack, role: str) -> list[SpendRecord]:
    return [r for r in stack.guard.ledger.records() if r.role == role]


def test_clients_with_colliding_call_ids_are_each_billed(stack: Stack) -> None:
    """Ten pairs of concurrent requests, each pair sending one x-litellm-call-id.

    litellm copies that header into litellm_call_id; keyed by it, one request
    of each pair overwrote the other's reservation (issue 9: $2.03 served
    upstream, $0.033 charged). Every answer must be charged, to the nano.
    """
    before, settled_before = stack.upstream.count, len(stack.settled())
    barrier = threading.Barrier(len(CROWD))

    def call(i: int) -> str:
        client = stack.client()
        barrier.wait(timeout=60)
        reply = client.chat.completions.create(
            **ask(CROWD[i]), extra_headers={ROLE: "crowd", "x-litellm-call-id": f"dup-{i // 2}"})
        return reply.choices[0].message.content or ""

    with ThreadPoolExecutor(len(CROWD)) as pool:
        answers = list(pool.map(call, range(len(CROWD))))
    assert all(answers) and len(set(answers)) == 20
    assert stack.upstream.count == before + 20
    stack.wait_settled(settled_before + 20)
    served = [i for i in stack.upstream.served
              if '"chatcmpl-ll-crowd-' in str(i["response"]["body"]["string"])]
    assert len(served) == 20
    upstream_dollars = sum((cost(json.loads(i["response"]["body"]["string"])["usage"])
                            for i in served), Decimal(0))
    # 593 prompt tokens x $0.15/M + 234 completion tokens x $0.60/M (the cassette's usage)
    assert upstream_dollars == Decimal("0.00022935")
    records = records_of(stack, "crowd")
    assert [r.outcome for r in records] == ["settled"] * 20
    assert len({r.reservation_id for r in records}) == 20
    assert sorted(r.metadata["litellm_call_id"] for r in records) == sorted(
        f"dup-{i // 2}" for i in range(20))
    assert sum(r.cost_nano for r in records) == 229_350
    assert spent(stack.guard, "role:crowd") == upstream_dollars
    rows = {(r.scope, r.window): r for r in stack.guard.status("crowd")}
    assert rows[("role:crowd", "day")].reserved == 0


def test_master_key_cannot_name_a_role(stack: Stack) -> None:
    before, records_before = stack.upstream.count, len(stack.guard.ledger.records())
    researcher_before = spent(stack.guard, "role:researcher")
    master = stack.client(MASTER_KEY)
    message = "the master key (or a proxy-admin key) cannot name a role"
    with pytest.raises(openai.PermissionDeniedError, match=re.escape(message)) as info:
        master.chat.completions.create(**ask("Tavira"), extra_headers={ROLE: "researcher"})
    assert info.value.status_code == 403
    assert "CREW_BUDGET_MASTER_KEY_NAMES_ROLES=1" in str(info.value)
    with pytest.raises(openai.PermissionDeniedError, match=re.escape(message)):
        master.chat.completions.create(
            **ask("Tavira"), extra_body={"metadata": {"crew_budget_role": "researcher"}})
    # Naming nothing: no CREW_BUDGET_DEFAULT_ROLE on this proxy, so refused too.
    with pytest.raises(openai.BadRequestError, match="names no agent role"):
        master.chat.completions.create(**ask("Tavira"))
    assert stack.upstream.count == before
    assert len(stack.guard.ledger.records()) == records_before
    assert spent(stack.guard, "role:researcher") == researcher_before


def test_naming_a_role_by_header_is_only_for_listed_roles(stack: Stack) -> None:
    before, records_before = stack.upstream.count, len(stack.guard.ledger.records())
    # "writer" is in the budget YAML but not in CREW_BUDGET_HEADER_ROLES: only a
    # key bound to it (sk-agent-writer) may spend it.
    with pytest.raises(openai.PermissionDeniedError,
                       match="requests may not name role 'writer' themselves"):
        stack.client().chat.completions.create(**ask("Tavira"), extra_headers={ROLE: "writer"})
    assert stack.upstream.count == before
    assert len(stack.guard.ledger.records()) == records_before


def test_invented_role_names_never_get_a_default_budget(stack: Stack) -> None:
    """The YAML has default_role, yet forty invented names get nothing (issue 9: 40 of 40)."""
    before, records_before = stack.upstream.count, len(stack.guard.ledger.records())
    names = [f"agent-{i:02d}" for i in range(40)]
    refused = 0
    for i, name in enumerate(names):
        where: dict[str, Any] = ({"extra_headers": {ROLE: name}} if i % 2 == 0 else
                                 {"extra_body": {"metadata": {"crew_budget_role": name}}})
        with pytest.raises(openai.BadRequestError, match=f"unknown role '{name}'"):
            stack.client().chat.completions.create(**ask("Tavira"), **where)
        refused += 1
    assert refused == 40
    assert stack.upstream.count == before
    assert len(stack.guard.ledger.records()) == records_before
    assert not [r for r in stack.guard.ledger.records() if r.role.startswith("agent-")]
    assert not [row for row in stack.guard.status() if row.scope.startswith("role:agent-")]


def test_n_20_is_charged_for_every_choice(stack: Stack) -> None:
    before, settled_before = stack.upstream.count, len(stack.settled())
    reply = stack.client().chat.completions.create(**fan("Lisbon"),
                                                   extra_headers={ROLE: "fanout"})
    assert len(reply.choices) == 20
    assert stack.upstream.count == before + 1
    # max_tokens caps each choice; the proxy forwards both unchanged.
    assert (stack.upstream.requests[-1]["n"], stack.upstream.requests[-1]["max_tokens"]) == (20, 16)
    records = stack.wait_settled(settled_before + 1)
    usage = stack.upstream.usage_served(-1)
    assert usage is not None and (usage["prompt_tokens"], usage["completion_tokens"]) == (28, 97)
    # 28 x $0.15/M + 97 x $0.60/M: every choice's tokens, not one choice's.
    assert cost(usage) == Decimal("0.0000624")
    assert records[-1].role == "fanout" and records[-1].cost_nano == 62_400
    assert spent(stack.guard, "role:fanout") == Decimal("0.0000624") <= Decimal("0.001")


def test_n_20_reserves_twenty_completions_and_is_refused_when_they_do_not_fit(
    stack: Stack,
) -> None:
    before = stack.upstream.count
    with pytest.raises(openai.APIStatusError) as info:
        stack.client().chat.completions.create(**fan("Madeira"),
                                               extra_headers={ROLE: "fanout-small"})
    assert info.value.status_code == 422
    assert "budget exceeded for role 'fanout-small'" in str(info.value)
    assert stack.upstream.count == before
    [blocked] = records_of(stack, "fanout-small")
    assert blocked.outcome == "blocked"
    # 20 choices x 16 tokens x 600 nano-USD per output token, plus the prompt
    assert blocked.estimate_nano > 20 * 16 * 600


def test_nothing_is_left_reserved_and_every_upstream_answer_was_settled_once(
    stack: Stack,
) -> None:
    for row in stack.guard.status():
        assert row.reserved == 0, row
    answered = [i for i in stack.upstream.served if i["response"]["status"]["code"] == 200]
    proxy_settled = [r for r in stack.settled() if r.metadata.get("framework") == "litellm-proxy"]
    assert len(proxy_settled) == len(answered)


def test_one_ledger_for_a_crew_a_langchain_agent_litellm_and_the_proxy(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Four frameworks, two processes, one ledger, one `crew-budget status`."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    guard = stack.guard  # this process's guard on the proxy's SQLite ledger
    analyst = Agent(role="analyst", goal="Give one fact", backstory="You answer in one sentence.",
                    llm=LLM(model="gpt-4o-mini"))
    crew = Crew(agents=[analyst], tasks=[Task(description="State one fact about Lisbon trams.",
                                              expected_output="One sentence", agent=analyst)])
    planner = create_agent(ChatOpenAI(model="gpt-4o-mini", max_retries=0), [],
                           system_prompt="You plan one-day trips.",
                           middleware=[BudgetMiddleware(role="planner", guard=guard)])
    logger = BudgetLogger(guard)
    litellm.callbacks.append(logger)
    try:
        with replay(LL / "one_ledger.yaml") as cassette:
            BudgetCallback(guard=guard).attach(crew).kickoff()
            planner.invoke({"messages": [{"role": "user", "content": "Plan a morning in Sintra."}]})
            with budget_role("editor"):
                completion(model="gpt-4o-mini", api_key="sk-test", messages=[{
                    "role": "user", "content": "Shorten: Start at Pena Palace at opening time, "
                    "then walk to the Moorish Castle."}])
        assert cassette.play_count == 3
    finally:
        unregister(logger)
    settled_before = len(stack.settled())
    stack.client().chat.completions.create(**ask("Coimbra"), extra_headers={ROLE: "scout"})
    stack.wait_settled(settled_before + 1)

    crew_usage, lc_usage, ll_usage = recorded_usage(LL / "one_ledger.yaml")
    proxy_usage = stack.upstream.usage_served(-1)
    expected = {
        "role:analyst": cost(crew_usage or {}),    # 80 x 0.15 + 21 x 0.60 = $0.0000246
        "role:planner": cost(lc_usage or {}),      # 25 x 0.15 + 17 x 0.60 = $0.00001395
        "role:editor": cost(ll_usage or {}),       # 34 x 0.15 +  9 x 0.60 = $0.0000105
        "role:scout": cost(proxy_usage or {}),     # 30 x 0.15 + 11 x 0.60 = $0.0000111
    }
    assert expected["role:analyst"] == Decimal("0.0000246")

    # The real CLI, reading the ledger both processes wrote.
    cli = str(Path(sys.executable).with_name("crew-budget"))
    out = subprocess.run(
        [cli, "status", "--config", str(stack.budgets), "--ledger", stack.ledger_url,
         "--format", "json"],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    rows = {(r["scope"], r["window"]): r for r in json.loads(out.stdout)}
    for scope, dollars in expected.items():
        assert Decimal(rows[(scope, "day")]["spent_usd"]) == dollars, scope
        assert Decimal(rows[(scope, "day")]["reserved_usd"]) == 0, scope
    # The crew budget saw every call of every framework and process.
    roles_total = sum((Decimal(r["spent_usd"]) for (scope, window), r in rows.items()
                       if scope.startswith("role:") and window == "day"), Decimal(0))
    assert Decimal(rows[("crew:travel-crew", "day")]["spent_usd"]) == roles_total
    frameworks = {r.metadata.get("framework") for r in stack.settled()
                  if r.role in ("analyst", "planner", "editor", "scout")}
    assert frameworks == {"crewai", "langchain-agent", "litellm", "litellm-proxy"}
