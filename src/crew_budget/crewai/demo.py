"""The three-agent research crew behind ``crew-budget demo``.

A router picks the specialist, a researcher searches in a loop, a writer
drafts the brief. Offline, the OpenAI traffic is replayed from the VCR.py
cassette ``cassettes/crewai/research_crew.yaml``, in which the researcher
keeps asking for one more search (the classic stuck agent): its budget stops
it, no request is sent for the blocked call, and the spend table shows what
each role cost, priced from the cassette's ``usage``. A second run gives the
researcher ``on_exceed: end_task`` (``SOFT_POLICY``): its task ends with a
"budget exhausted" answer instead, and the writer still writes the brief
(``cassettes/crewai/research_crew_end_task.yaml``).

``examples/research_crew.py`` is the same crew written out as user code.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from crew_budget.crewai._callback import BudgetCallback
from crew_budget.crewai._llm import BudgetLLM

__all__ = [
    "BUDGETS_YAML",
    "CREW_NAME",
    "QUESTION",
    "SOFT_CASSETTE",
    "SOFT_POLICY",
    "build_crew",
    "find_cassette",
    "replay",
    "soft_budgets",
    "web_search_results",
]

CREW_NAME = "research-demo"
QUESTION = "What is holding back solid-state batteries in electric cars?"

# Kept equal to examples/budgets.yaml (a test compares them).
BUDGETS_YAML = f"""\
crew: {{name: {CREW_NAME}, daily: "0.10"}}
roles:
  router:     {{daily: "0.01", max_output_tokens: 64}}
  researcher: {{daily: "0.05", max_output_tokens: 512}}
  writer:     {{daily: "0.02", max_output_tokens: 1024}}
"""

# Inline limit on the researcher's BudgetLLM; stricter than the YAML's 0.05.
RESEARCHER_DAILY_USD = "0.018"

#: The softer way out the demo's second run shows beside the hard stop: the
#: researcher's task ends with a "budget exhausted" answer and the writer
#: still writes the brief (``roles.researcher.on_exceed: end_task``).
SOFT_POLICY = {"researcher": "end_task"}
#: The second run's traffic: the first run's router and researcher calls,
#: then the writer's (hand-written; usage counted with tiktoken o200k_base).
SOFT_CASSETTE = "research_crew_end_task.yaml"


def soft_budgets() -> dict[str, Any]:
    """``BUDGETS_YAML`` with ``SOFT_POLICY`` as each role's ``on_exceed``."""
    import yaml

    config: dict[str, Any] = yaml.safe_load(BUDGETS_YAML)
    for role, policy in SOFT_POLICY.items():
        config["roles"][role]["on_exceed"] = policy
    return config

_SNIPPETS = (
    "Sulfide electrolytes such as Li6PS5Cl reach ionic conductivities above 10 mS/cm at room "
    "temperature, comparable to liquid electrolytes, but they react with moisture and release "
    "hydrogen sulfide, so cells must be built in dry rooms with a dew point below -40 C.",
    "Lithium dendrites still grow through ceramic separators along grain boundaries when cells "
    "are charged faster than about 3 mA/cm2; stack pressure of several megapascals suppresses "
    "them in the lab but is hard to hold across a full vehicle pack.",
    "Pilot lines announced for 2025-2027 produce a few hundred megawatt-hours a year, against "
    "hundreds of gigawatt-hours for liquid lithium-ion; analysts expect cost parity not before "
    "the early 2030s because thin ceramic layers are slow to make without cracks.",
    "Oxide electrolytes (LLZO garnets) are stable in air but brittle and need sintering above "
    "1000 C; interfaces with the cathode lose contact as particles swell and shrink, raising "
    "resistance after a few hundred cycles.",
    "Toyota, Samsung SDI, QuantumScape and Solid Power report prototype cells with 400-500 "
    "Wh/kg and 10-80 percent charging in 10-15 minutes, but most results are from single "
    "layer or small multilayer cells, not automotive-format cells.",
    "Anode-free designs plate lithium directly on the copper collector during the first "
    "charge, which raises energy density by about 30 percent but makes coulombic efficiency "
    "above 99.9 percent a hard requirement for a 1000-cycle life.",
    "Polymer electrolytes are easier to manufacture with existing roll-to-roll equipment but "
    "only conduct well above 60 C, so they need pack heating; Blue Solutions uses them in "
    "buses rather than passenger cars.",
    "Supply chains for lithium metal foil, sulfide precursors and high-purity lithium sulfide "
    "are small today; lithium sulfide alone costs several hundred dollars per kilogram.",
)


def web_search_results(query: str) -> str:
    """Canned search results for ``query`` (offline and deterministic)."""
    start = int(hashlib.sha256(query.encode()).hexdigest(), 16) % len(_SNIPPETS)
    picks = [_SNIPPETS[(start + i) % len(_SNIPPETS)] for i in range(4)]
    lines = [f"Results for {query!r}:"]
    lines += [f"{i}. {text}" for i, text in enumerate(picks, 1)]
    return "\n".join(lines)


def build_crew(
    budget: BudgetCallback,
    *,
    researcher_daily_usd: object = RESEARCHER_DAILY_USD,
    verbose: bool = False,
) -> Any:
    """The router -> researcher -> writer crew, attached to ``budget``.

    The researcher's ``BudgetLLM`` carries an inline daily limit
    (``researcher_daily_usd``) stricter than the YAML's, to show that the
    stricter of the two wins.
    """
    from crewai import LLM, Agent, Crew, Process, Task
    from crewai.tools import tool

    @tool("web_search")
    def web_search(query: str) -> str:
        """Search the web and return the top result snippets for the query."""
        return web_search_results(query)

    router = Agent(
        role="router",
        goal="Send each question to the specialist who can answer it",
        backstory="You triage incoming questions for a small research team.",
        llm=LLM(model="gpt-4o-mini"),
        verbose=verbose,
    )
    researcher = Agent(
        role="researcher",
        goal="Collect sourced facts before anyone writes a word",
        backstory="You are a meticulous analyst who always searches one more time.",
        llm=BudgetLLM(role="researcher", daily_usd=researcher_daily_usd, model="gpt-4o"),
        tools=[web_search],
        verbose=verbose,
    )
    writer = Agent(
        role="writer",
        goal="Turn research notes into a short, clear brief",
        backstory="You write for busy engineering managers.",
        llm=LLM(model="gpt-4o-mini"),
        verbose=verbose,
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
    crew = Crew(
        agents=[router, researcher, writer],
        tasks=[route, research, write],
        process=Process.sequential,
        verbose=verbose,
    )
    budget.attach(crew)
    return crew


def find_cassette(name: str = "research_crew.yaml") -> Path:
    """The demo cassette: shipped in the package, or in a source checkout."""
    candidates = [
        Path(__file__).with_name("cassettes") / name,
        Path(__file__).resolve().parents[3] / "cassettes" / "crewai" / name,
    ]
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"demo cassette {name} not found (looked in {', '.join(map(str, candidates))}); "
        "reinstall crew-budget, or run from a source checkout"
    )


@contextmanager
def replay(cassette: Path | None = None) -> Iterator[Any]:
    """Replay the crew's OpenAI traffic from ``cassette``; nothing leaves the machine.

    Needs ``vcrpy``. Requests are matched by method and URL in order, so the
    replay follows whatever prompts the crew builds; unmatched requests fail
    instead of reaching the network. A dummy ``OPENAI_API_KEY`` is set if
    none is, because CrewAI's OpenAI class refuses to build without one.
    """
    try:
        import vcr
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise RuntimeError(
            "the offline demo replays recorded traffic with vcrpy; install it with "
            "`pip install 'crew-budget[demo]'` (or `pip install vcrpy`)"
        ) from exc
    path = cassette or find_cassette()
    added_key = "OPENAI_API_KEY" not in os.environ
    if added_key:
        os.environ["OPENAI_API_KEY"] = "sk-offline-replay"
    recorder = vcr.VCR(match_on=["method", "scheme", "host", "path"], record_mode="none")
    try:
        with recorder.use_cassette(str(path)) as cassette_obj:
            yield cassette_obj
    finally:
        if added_key:
            os.environ.pop("OPENAI_API_KEY", None)
