"""The crews the CrewAI tests replay, one per cassette.

Shared by the tests and by ``cassettes/crewai/author.py``, which runs the
same scenario to write the exact request bodies the code sends into the
cassette (the responses and their ``usage`` are hand-written).
"""

from __future__ import annotations

from typing import Any

import yaml
from crewai import LLM, Agent, Crew, Process, Task
from crewai.tools import tool
from pydantic import BaseModel

from crew_budget.crewai import BudgetCallback, BudgetLLM
from crew_budget.crewai.demo import BUDGETS_YAML, QUESTION, build_crew, web_search_results


@tool("web_search")
def web_search(query: str) -> str:
    """Search the web and return the top result snippets for the query."""
    return web_search_results(query)


def loop_crew(llm: Any) -> Crew:
    """One researcher that keeps searching: the stuck agent of the stop test."""
    researcher = Agent(
        role="researcher",
        goal="Collect sourced facts before anyone writes a word",
        backstory="You are a meticulous analyst who always searches one more time.",
        llm=llm,
        tools=[web_search],
        max_iter=25,
    )
    task = Task(
        description="Research why solid-state batteries are not in cars yet. "
        "Use web_search for every claim.",
        expected_output="Five facts, each with the search it came from",
        agent=researcher,
    )
    return Crew(agents=[researcher], tasks=[task])


def pair_crew(researcher_llm: Any, writer_llm: Any) -> Crew:
    """Researcher then writer, both answering at once (two requests in total)."""
    researcher = Agent(
        role="researcher",
        goal="Give one sourced fact",
        backstory="You answer from memory in one sentence.",
        llm=researcher_llm,
    )
    writer = Agent(
        role="writer",
        goal="Turn a fact into one headline",
        backstory="You write short headlines.",
        llm=writer_llm,
    )
    research = Task(description="State one fact about sodium-ion batteries.",
                    expected_output="One sentence", agent=researcher)
    write = Task(description="Write a headline from the fact.",
                 expected_output="One headline", agent=writer)
    return Crew(agents=[researcher, writer], tasks=[research, write])


def hierarchical_crew(manager_llm: Any, researcher_llm: Any) -> Crew:
    """A manager (role "Crew Manager") delegating one task to a researcher."""
    researcher = Agent(
        role="researcher",
        goal="Give one sourced fact",
        backstory="You answer from memory in one sentence.",
        llm=researcher_llm,
    )
    task = Task(description="State one fact about sodium-ion batteries.",
                expected_output="One sentence")
    return Crew(agents=[researcher], tasks=[task], process=Process.hierarchical,
                manager_llm=manager_llm)


def research_crew(budget: BudgetCallback) -> Crew:
    crew: Crew = build_crew(budget)
    return crew


# name -> how author.py runs it (permissive budgets, memory ledger).
def _run_research() -> None:
    # The demo's YAML without its dollar limits: every scripted answer is played.
    config = yaml.safe_load(BUDGETS_YAML)
    config["crew"].pop("daily")
    for limits in config["roles"].values():
        limits.pop("daily")
    budget = BudgetCallback(config, "memory://")
    build_crew(budget, researcher_daily_usd=None).kickoff(inputs={"question": QUESTION})


def _run_loop() -> None:
    loop_crew(BudgetLLM(role="researcher", model="gpt-4o-mini",
                        config={"roles": {"researcher": {"max_output_tokens": 256}}},
                        ledger="memory://")).kickoff()


def _run_pair() -> None:
    budget = BudgetCallback({"roles": {}}, "memory://")
    budget.attach(pair_crew(LLM(model="gpt-4o-mini"), LLM(model="gpt-4o-mini"))).kickoff()


def _run_hierarchical() -> None:
    budget = BudgetCallback({"roles": {}}, "memory://")
    budget.attach(hierarchical_crew(LLM(model="gpt-4o-mini"), LLM(model="gpt-4o-mini"))).kickoff()


SCENARIOS = {
    "research_crew": _run_research,
    "researcher_loop": _run_loop,
    "pair_crew": _run_pair,
    "pair_crew_b": _run_pair,
    "hierarchical": _run_hierarchical,
}


# -- direct calls (no crew): the BudgetLLM provider tests ---------------------

ANALYST = {"roles": {"analyst": {"daily": 1, "max_output_tokens": 300}}}
MESSAGES = [
    {"role": "system", "content": "You are a battery analyst. Answer in one sentence."},
    {"role": "user", "content": "Name one advantage of sodium-ion batteries."},
]
SEARCH_MESSAGES = [
    {"role": "system", "content": "You are a battery analyst. Search before you answer."},
    {"role": "user", "content": "How dense are sodium-ion batteries in 2025?"},
]
REACT_MESSAGES = [
    {"role": "system", "content": "You are a battery analyst. Use the format Thought/Action/"
     "Action Input, then wait for the Observation."},
    {"role": "user", "content": "How dense are sodium-ion batteries?"},
]
SEARCH_TOOL = {
    "type": "function",
    "function": {
        "name": "web_search",
        "description": "Search the web and return the top result snippets for the query.",
        "parameters": {
            "type": "object",
            "properties": {"query": {"type": "string", "description": "What to search for"}},
            "required": ["query"],
        },
    },
}
# A stable ~2,200-token system prompt, marked as a cache breakpoint: Anthropic
# bills it as a cache read on the recorded call.
POLICY = " ".join(
    f"Rule {i}: cite the measured energy density, the cycle life and the test temperature of "
    f"every cell chemistry you mention, and say which lab or company published rule {i}'s figure."
    for i in range(1, 70)
)
OPENAI_MODEL = "gpt-4o-mini"
ANTHROPIC_MODEL = "anthropic/claude-haiku-4-5"
STOP = ["\nObservation:"]


class Advantage(BaseModel):
    """Structured output for the response_model test."""

    advantage: str
    confidence: float


def analyst_llm(model: str, **kwargs: Any) -> BudgetLLM:
    return BudgetLLM(role="analyst", model=model, config=ANALYST, ledger="memory://", **kwargs)


def cached_messages() -> list[dict[str, Any]]:
    from crewai.llms.cache import mark_cache_breakpoint

    return [
        mark_cache_breakpoint({"role": "system", "content": POLICY}),
        {"role": "user", "content": "Which chemistry suits a city car?"},
    ]


def _direct(name: str) -> Any:
    provider = name.split("_", 1)[0]
    model = OPENAI_MODEL if provider == "openai" else ANTHROPIC_MODEL

    def run() -> None:
        kind = name.split("_", 1)[1]
        if kind in ("call", "error"):
            analyst_llm(model).call(MESSAGES)
        elif kind == "structured":
            analyst_llm(model).call(MESSAGES, response_model=Advantage)
        elif kind == "tools":
            analyst_llm(model).call(SEARCH_MESSAGES, tools=[SEARCH_TOOL])
        elif kind == "stop":
            analyst_llm(model, stop=STOP).call(REACT_MESSAGES)
        elif kind in ("stream", "stream_no_usage"):
            msgs = cached_messages() if provider == "anthropic" else MESSAGES
            analyst_llm(model, stream=True).call(msgs)

    return run


for _name in ("openai_call", "openai_error", "openai_structured", "openai_tools",
              "openai_stop", "openai_stream", "openai_stream_no_usage", "anthropic_call",
              "anthropic_tools", "anthropic_stop", "anthropic_stream"):
    SCENARIOS[_name] = _direct(_name)


# -- invisibility: CrewAI behaviours run plain and budgeted (test_invisible.py) --------


class Fact(BaseModel):
    """``output_pydantic`` of the hierarchical crew's task."""

    fact: str
    source: str


def researcher_agent(llm: Any, **kwargs: Any) -> Agent:
    return Agent(role="researcher", goal="Give one sourced fact",
                 backstory="You answer from memory in one sentence.", llm=llm, **kwargs)


def fact_task(agent: Agent | None, **kwargs: Any) -> Task:
    return Task(description="State one fact about sodium-ion batteries.",
                expected_output="One sentence", agent=agent, **kwargs)


def stream_crew(llm: Any) -> Crew:
    """One agent, ``Crew(stream=True)``: the answer arrives as SSE chunks."""
    researcher = researcher_agent(llm)
    return Crew(agents=[researcher], tasks=[fact_task(researcher)], stream=True)


def hierarchical_pydantic_crew(manager_llm: Any, researcher_llm: Any) -> Crew:
    """``hierarchical_crew`` whose task asks for ``output_pydantic=Fact``."""
    researcher = researcher_agent(researcher_llm)
    return Crew(agents=[researcher], tasks=[fact_task(None, output_pydantic=Fact)],
                process=Process.hierarchical, manager_llm=manager_llm)


def guardrail_crew(llm: Any) -> Crew:
    """A text guardrail: CrewAI checks the answer with a "Guardrail Agent" of its own."""
    researcher = researcher_agent(llm)
    task = fact_task(researcher, guardrail="The answer must name a cost or a material.")
    return Crew(agents=[researcher], tasks=[task])


def planning_crew(llm: Any, planning_llm: Any) -> Crew:
    """``planning=True``: CrewAI's "Task Execution Planner" plans before the task runs."""
    researcher = researcher_agent(llm)
    return Crew(agents=[researcher], tasks=[fact_task(researcher)], planning=True,
                planning_llm=planning_llm)


def memory_crew(llm: Any, memory_llm: Any, path: str) -> Crew:
    """``memory=Memory(...)``: a local LanceDB at ``path`` and a callable embedder."""
    from crewai.memory.unified_memory import Memory

    memory = Memory(llm=memory_llm, embedder=fixed_embeddings, storage=path)
    researcher = researcher_agent(llm)
    return Crew(agents=[researcher], tasks=[fact_task(researcher)], memory=memory)


def fixed_embeddings(texts: list[str]) -> list[list[float]]:
    """A local stand-in for an embedding API: 4 fixed dimensions per text."""
    return [[0.1 * (i % 7), 0.2, 0.3, 0.4] for i, _ in enumerate(texts)]


def single_crew(llm: Any) -> Crew:
    """One agent, one task: for ``crew.test()`` and ``agent.kickoff()``."""
    researcher = researcher_agent(llm)
    return Crew(agents=[researcher], tasks=[fact_task(researcher)])


def _permissive() -> BudgetCallback:
    roles = ("researcher", "writer", "Crew Manager", "crew")
    return BudgetCallback({"roles": {name: {} for name in roles}}, "memory://")


def _invisible(name: str) -> Any:
    def run() -> None:
        budget = _permissive()
        if name == "invisible_stream":
            out = budget.attach(stream_crew(LLM(model="gpt-4o-mini"))).kickoff()
            for _chunk in out:
                pass
        elif name == "invisible_responses":
            llm = LLM(model="gpt-4o-mini", api="responses", auto_chain=True)
            budget.attach(pair_crew(llm, llm)).kickoff()
        elif name == "invisible_hierarchical":
            budget.attach(hierarchical_pydantic_crew(LLM(model="gpt-4o-mini"),
                                                     LLM(model="gpt-4o-mini"))).kickoff()
        elif name == "invisible_guardrail":
            budget.attach(guardrail_crew(LLM(model="gpt-4o-mini"))).kickoff()
        elif name == "invisible_planning":
            budget.attach(planning_crew(LLM(model="gpt-4o-mini"),
                                        LLM(model="gpt-4o-mini"))).kickoff()
        elif name == "invisible_test":
            budget.attach(single_crew(LLM(model="gpt-4o-mini"))).test(
                n_iterations=1, eval_llm=LLM(model="gpt-4o-mini"))
        elif name == "invisible_memory":
            import tempfile

            with tempfile.TemporaryDirectory() as tmp:
                budget.attach(memory_crew(LLM(model="gpt-4o-mini"), LLM(model="gpt-4o-mini"),
                                          tmp)).kickoff()
        elif name == "invisible_reasoning":
            budget.attach(single_crew(LLM(model="gpt-5-nano"))).kickoff()
        elif name == "invisible_agent_kickoff":
            agent = single_crew(LLM(model="gpt-4o-mini")).agents[0]
            budget.attach(agent).kickoff("State one fact about sodium-ion batteries.")

    return run


for _name in ("invisible_stream", "invisible_responses", "invisible_hierarchical",
              "invisible_guardrail", "invisible_planning", "invisible_test",
              "invisible_agent_kickoff", "invisible_memory", "invisible_reasoning"):
    SCENARIOS[_name] = _invisible(_name)
