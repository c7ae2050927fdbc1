"""A three-agent CrewAI crew with per-role dollar budgets.

    python examples/research_crew.py           # offline: replays a recorded run, no key needed
    python examples/research_crew.py --live    # real OpenAI calls (needs OPENAI_API_KEY)

The router triages, the researcher searches (and, in the recorded run, keeps
searching until its budget stops it), the writer drafts a brief. Budgets come
from budgets.yaml next to this file; the researcher's BudgetLLM adds an inline
limit, and the stricter of the two wins. `crew-budget demo` runs this crew.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import sys
from pathlib import Path

from crewai import LLM, Agent, Crew, Process, Task
from crewai.tools import tool

from crew_budget.crewai import BudgetCallback, BudgetLLM, CrewBudgetExceeded

HERE = Path(__file__).resolve().parent
CASSETTE = HERE.parent / "cassettes" / "crewai" / "research_crew.yaml"
QUESTION = "What is holding back solid-state batteries in electric cars?"


@tool("web_search")
def web_search(query: str) -> str:
    """Search the web and return the top result snippets for the query."""
    # Canned snippets, so the example never needs a search API.
    from crew_budget.crewai.demo import web_search_results

    return web_search_results(query)


def build_crew() -> Crew:
    router = Agent(
        role="router",
        goal="Send each question to the specialist who can answer it",
        backstory="You triage incoming questions for a small research team.",
        llm=LLM(model="gpt-4o-mini"),  # a plain LLM: budgeted by the callback
    )
    researcher = Agent(
        role="researcher",
        goal="Collect sourced facts before anyone writes a word",
        backstory="You are a meticulous analyst who always searches one more time.",
        llm=BudgetLLM(role="researcher", daily_usd="0.018", model="gpt-4o"),
        tools=[web_search],
    )
    writer = Agent(
        role="writer",
        goal="Turn research notes into a short, clear brief",
        backstory="You write for busy engineering managers.",
        llm=LLM(model="gpt-4o-mini"),
    )
    route = Task(
        description=(
            "Question: {question}\nWhich specialist should handle it? "
            "Answer with one word: research or writing."
        ),
        expected_output="One word: research or writing",
        agent=router,
    )
    research = Task(
        description="Research the question: {question}. Use web_search for every claim.",
        expected_output="Five facts, each with the search it came from",
        agent=researcher,
    )
    write = Task(
        description="Write a 120-word brief answering: {question}",
        expected_output="A 120-word brief",
        agent=writer,
    )
    return Crew(agents=[router, researcher, writer], tasks=[route, research, write],
                process=Process.sequential)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--live", action="store_true", help="call OpenAI for real")
    parser.add_argument("--ledger", help="ledger URL (offline default: memory://, so replayed "
                        "spend never lands in your real ledger; live default: the embedded "
                        "SQLite ledger or CREW_BUDGET_LEDGER)")
    parser.add_argument("--verbose", action="store_true",
                        help="also show CrewAI's own console output and logs")
    args = parser.parse_args()
    if args.live and not os.environ.get("OPENAI_API_KEY"):
        print("--live needs OPENAI_API_KEY", file=sys.stderr)
        return 2
    ledger = args.ledger or (None if args.live else "memory://")

    if not args.verbose:
        # CrewAI prints its progress to the console and logs the budget's
        # deliberate stop as a listener error; this example prints what the
        # budget did instead (--verbose shows both).
        logging.getLogger("crewai").setLevel(logging.CRITICAL)
    chatter = (contextlib.nullcontext() if args.verbose
               else contextlib.redirect_stdout(io.StringIO()))

    budget = BudgetCallback.from_yaml(HERE / "budgets.yaml", ledger=ledger)
    crew = budget.attach(build_crew())
    try:
        with chatter:
            if args.live:
                result = crew.kickoff(inputs={"question": QUESTION})
            else:
                from crew_budget.crewai.demo import replay  # vcrpy: replays the recorded run

                with replay(CASSETTE):
                    result = crew.kickoff(inputs={"question": QUESTION})
        print(result.raw)
    except CrewBudgetExceeded as exc:
        print(f"\nStopped by budget ({exc.role}, {exc.scope}): {exc}\n")
    print(budget.summary())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
