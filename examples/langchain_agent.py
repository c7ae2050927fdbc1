"""A LangChain v1 agent (``create_agent``) whose research loop its dollar budget stops.

    python examples/langchain_agent.py                 # offline: replays recorded HTTP
    python examples/langchain_agent.py --exit error    # stop by raising BudgetExceeded
    python examples/langchain_agent.py --live          # real OpenAI calls (OPENAI_API_KEY)

The researcher (gpt-4o) asks ``web_search`` for one more source on every
step. ``BudgetMiddleware`` prices each model call before it is sent, reserves
it against the role's $0.009 daily budget, injects the role's output cap
(256 tokens) into the request, and settles the reservation from the
response's usage. When the next call would not fit, no request is sent and
the agent ends with the middleware's own message (``exit_behavior="end"``),
or raises ``BudgetExceeded`` (``"error"``).

Offline, the OpenAI traffic is replayed from
``cassettes/examples/langchain_agent.yaml`` (hand-written responses, see
``cassettes/README.md``) and spend goes to a ``memory://`` ledger.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from langchain.agents import create_agent
from langchain_core.messages import AIMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI

from crew_budget import BudgetExceeded
from crew_budget.guard import GuardEvent
from crew_budget.langchain import BudgetMiddleware

HERE = Path(__file__).resolve().parent
CASSETTE = HERE.parent / "cassettes" / "examples" / "langchain_agent.yaml"
QUESTION = "What is holding back solid-state batteries in electric cars?"
SYSTEM = ("You are a meticulous research analyst. Call web_search for every claim, and "
          "search once more before you answer.")
BUDGETS = {"roles": {"researcher": {"daily": "0.009", "max_output_tokens": 256}}}

SNIPPETS = (
    "Sulfide electrolytes such as Li6PS5Cl conduct lithium ions about as well as liquid "
    "electrolytes at room temperature, but they react with moisture in the air and release "
    "hydrogen sulfide, so cells must be assembled in dry rooms with a dew point below -40 C. "
    "That drives up factory cost: dry-room floor space costs several times more to run than "
    "a normal clean room, and every transfer between process steps has to stay sealed. "
    "Halide and oxysulfide variants are more tolerant but conduct less well.",
    "Lithium dendrites still grow through ceramic separators along grain boundaries and "
    "pores when cells are charged faster than about 3 mA/cm2. Stack pressure of several "
    "megapascals suppresses them in the lab, but holding that pressure evenly across a full "
    "vehicle pack adds heavy end plates and steel bands that eat into the energy density "
    "gain. Researchers are testing thin interlayers of silver-carbon or lithium alloys to "
    "spread the current more evenly at the anode.",
    "Pilot lines announced for 2025 to 2027 produce a few hundred megawatt-hours a year, "
    "against hundreds of gigawatt-hours for liquid lithium-ion. Analysts expect cost parity "
    "not before the early 2030s, because thin ceramic layers are slow to make without "
    "cracks, yields on large-format cells are still low, and lithium metal foil is expensive "
    "to handle. Automakers plan small first runs in premium models before any mass market car.",
    "Oxide electrolytes such as LLZO garnets are stable in air but brittle and need sintering "
    "above 1000 C. Interfaces with the cathode lose contact as the active particles swell and "
    "shrink during cycling, which raises resistance after a few hundred cycles. Polymer and "
    "hybrid designs trade some of that stiffness for easier processing but need to run warm, "
    "around 60 C, to conduct well enough for driving.",
    "Toyota, Samsung SDI, QuantumScape and Solid Power report prototype cells with 400 to 500 "
    "Wh/kg and 10 to 80 percent charging in 10 to 15 minutes, but most results come from "
    "single-layer or small multilayer cells tested under lab pressure and temperature. Car "
    "makers say they need validated cycle life above 1000 cycles in full-size cells before "
    "committing to a vehicle program.",
)
_searches = [0]


@tool
def web_search(query: str) -> str:
    """Search the web and return the top result snippet for the query."""
    # Canned snippets, so the example never needs a search API.
    text = SNIPPETS[_searches[0] % len(SNIPPETS)]
    _searches[0] += 1
    return text


def build_agent(middleware: BudgetMiddleware, *, live: bool) -> Any:
    key = {} if live else {"api_key": "sk-offline-replay"}
    # No max_tokens here: the middleware injects the role's cap into every request.
    llm = ChatOpenAI(model="gpt-4o", max_retries=0, **key)
    return create_agent(llm, [web_search], system_prompt=SYSTEM, middleware=[middleware])


@contextlib.contextmanager
def replay(path: Path) -> Iterator[Any]:
    """Answer every OpenAI request from the cassette; an unrecorded one fails, never sends."""
    import vcr

    recorder = vcr.VCR(match_on=["method", "scheme", "host", "path"], record_mode="none")
    with recorder.use_cassette(str(path)) as cassette:
        yield cassette


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--live", action="store_true", help="call OpenAI for real")
    parser.add_argument("--exit", choices=("end", "error"), default="end",
                        help="how the middleware stops the agent (default: end)")
    parser.add_argument("--ledger", help="ledger URL (default: memory:// offline, so replayed "
                        "spend never lands in a real ledger; the default ledger with --live)")
    args = parser.parse_args(argv)
    if args.live and not os.environ.get("OPENAI_API_KEY"):
        print("--live needs OPENAI_API_KEY", file=sys.stderr)
        return 2

    middleware = BudgetMiddleware(role="researcher", config=BUDGETS,
                                  ledger=args.ledger or (None if args.live else "memory://"),
                                  exit_behavior=args.exit)
    guard = middleware.guard
    calls: list[GuardEvent] = []

    def show(event: GuardEvent) -> None:
        if event.outcome == "settled":
            calls.append(event)
            print(f"  call {len(calls)}  {event.model}  reserved ${event.estimate}  "
                  f"charged ${event.cost}")
        elif event.outcome == "blocked":
            print(f"  BLOCKED  {event.model}  needs ~${event.estimate}: no request sent")

    guard.add_listener(show)
    print(f"researcher budget: ${BUDGETS['roles']['researcher']['daily']}/day, "
          f"exit_behavior={args.exit!r}")
    agent = build_agent(middleware, live=args.live)
    ask = {"messages": [{"role": "user", "content": QUESTION}]}
    sent: int | None = None
    try:
        with contextlib.nullcontext() if args.live else replay(CASSETTE) as cassette:
            try:
                result = agent.invoke(ask)
                last = result["messages"][-1]
                meta = last.response_metadata.get("crew_budget", {}) if isinstance(
                    last, AIMessage) else {}
                if meta.get("blocked"):
                    print(f"\nAgent ended by its budget: {last.content}")
                else:
                    print(f"\nAnswer: {last.content}")
            finally:
                sent = None if cassette is None else cassette.play_count
    except BudgetExceeded as exc:
        print(f"\nAgent stopped: BudgetExceeded ({exc.scope}): {exc}")
    status = {(row.scope, row.window): row for row in guard.status("researcher")}
    day = status["role:researcher", "day"]
    total = sum((e.cost for e in calls), start=type(day.spent)(0))
    print(f"\nresearcher: {len(calls)} calls, ${total} charged; today ${day.spent} spent, "
          f"${day.remaining} left of ${day.limit}")
    if sent is not None:
        print(f"HTTP requests sent: {sent}")
    guard.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
