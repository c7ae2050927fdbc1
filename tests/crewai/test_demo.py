"""``crew-budget demo`` and ``examples/research_crew.py``, run as a user would.

Both replay ``cassettes/crewai/research_crew.yaml``: one router call
(gpt-4o-mini) and a researcher (gpt-4o) that asks for one more search every
step. Expected dollars, from the cassette's usage and litellm's prices
(gpt-4o $2.50/M in, $10/M out; gpt-4o-mini $0.15/M in, $0.60/M out):

    router      112 in,  1 out  0.0000168 + 0.0000006          = 0.0000174
    researcher  207 in, 19 out  0.0005175 + 0.00019            = 0.0007075
                478 in, 21 out  0.001195  + 0.00021            = 0.001405
                757 in, 22 out  0.0018925 + 0.00022            = 0.0021125
               1016 in, 20 out  0.00254   + 0.0002             = 0.00274
               1268 in, 23 out  0.00317   + 0.00023            = 0.0034
                                                        total  = 0.010365

The researcher's inline limit is $0.018 (YAML says $0.05; stricter wins) and
each of its calls reserves 512 output tokens ($0.00512) plus its prompt. Call
5 fits ($0.006965 spent, prompt $0.00317) unless its prompt is overestimated
by more than 84%; call 6 ($0.010365 spent, prompt $0.0038725) is refused
unless underestimated by more than 36%. So the demo shows 5 calls, then the
block.

The demo then runs the same crew again with ``roles.researcher.on_exceed:
end_task`` on a fresh ledger (``research_crew_end_task.yaml``: the same
router and five researcher answers, then the writer's, hand-written with its
usage counted by tiktoken o200k_base): the sixth researcher call ends the
researcher's task instead of the crew, and the writer runs:

    writer      201 in, 145 out 0.00003015 + 0.000087          = 0.00011715
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from crew_budget.config import load_config
from crew_budget.crewai import BudgetCallback
from crew_budget.crewai.demo import BUDGETS_YAML, build_crew, find_cassette
from tests.crewai.conftest import GPT_4O, GPT_4O_MINI, openai_cost
from tests.crewai.replay import CASSETTE_DIR, ROOT, cassette_usage

pytestmark = pytest.mark.slow

ROUTER = Decimal("0.0000174")
RESEARCHER = Decimal("0.010365")
WRITER = Decimal("0.00011715")


def offline_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "CREW_BUDGET_LEDGER")}
    # Any real connection attempt would go to a dead proxy and fail.
    env.update(HTTPS_PROXY="http://127.0.0.1:9", HTTP_PROXY="http://127.0.0.1:9",
               NO_PROXY="", PYTHONUNBUFFERED="1")
    return env


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, env=offline_env(), timeout=240,
                          cwd=ROOT, check=False)


def test_expected_dollars_come_from_the_cassette() -> None:
    usage = cassette_usage("research_crew")
    assert openai_cost(usage[0], GPT_4O_MINI) == ROUTER  # type: ignore[arg-type]
    assert sum((openai_cost(u, GPT_4O) for u in usage[1:6] if u), Decimal(0)) == RESEARCHER
    assert len(usage) == 9  # 8 scripted researcher answers: the block, not the script, ends it


def test_soft_run_dollars_come_from_its_cassette() -> None:
    usage = cassette_usage("research_crew_end_task")
    assert len(usage) == 7  # router, 5 researcher calls, writer: nothing after the writer
    assert usage[:6] == cassette_usage("research_crew")[:6]
    assert openai_cost(usage[6], GPT_4O_MINI) == WRITER  # type: ignore[arg-type]


def test_demo_command_offline() -> None:
    # The installed console script, exactly what the README tells users to run.
    script = Path(sys.executable).with_name("crew-budget")
    assert script.exists(), "crew-budget console script not installed next to python"
    proc = run(str(script), "demo")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out, soft = proc.stdout.split("Softer:")
    assert "offline replay, no API key needed" in out
    assert "ledger: sqlite:///" in out  # the embedded SQLite ledger, no Redis
    # The researcher loops, then is stopped before the call that does not fit.
    assert len(re.findall(r"researcher +gpt-4o +call", out)) == 5
    assert re.search(r"researcher +gpt-4o +BLOCKED .*no request", out)
    assert "Stopped: crew.kickoff() raised CrewBudgetExceeded" in out
    assert "role=researcher scope=role:researcher window=day limit=$0.018" in out
    rows = {m[0]: m[1:] for m in re.findall(
        r"│ (\w+) +│ ([\w.-]+) +│ +(\d+) │ +(\d+) │ +(\d+) │ +(\d+) │ +([\d.]+) │", out)}
    assert rows["researcher"] == ("gpt-4o", "5", "1", "3726", "105", str(RESEARCHER))
    assert rows["router"] == ("gpt-4o-mini", "1", "0", "112", "1", str(ROUTER))
    assert rows["writer"][1:] == ("0", "0", "0", "0", "0")
    assert re.search(rf"│ total +│.*│ +{ROUTER + RESEARCHER} │", out)
    assert re.search(rf"│ crew:research-demo +│ +0.1 │ +{ROUTER + RESEARCHER} │", out)

    # The softer run: the same five researcher calls, its task ended instead of
    # the crew, and the writer's one call.
    assert "roles.researcher.on_exceed: end_task" in soft
    assert len(re.findall(r"researcher +gpt-4o +call", soft)) == 5
    assert re.search(r"researcher +gpt-4o +TASK ENDED +needs ~\$[\d.]+, role:researcher has "
                     r"\$0.007635 left", soft)
    assert "BLOCKED" not in soft and "Stopped" not in soft
    assert len(re.findall(r"writer +gpt-4o-mini +call", soft)) == 1
    assert "The crew finished: the writer's brief (117 words) begins: 'Solid-state" in soft
    rows = {m[0]: m[1:] for m in re.findall(
        r"│ (\w+) +│ ([\w.-]+) +│ +(\d+) │ +(\d+) │ +(\d+) │ +(\d+) │ +([\d.]+) │", soft)}
    assert rows["researcher"] == ("gpt-4o", "5", "1", "3726", "105", str(RESEARCHER))
    assert rows["router"] == ("gpt-4o-mini", "1", "0", "112", "1", str(ROUTER))
    assert rows["writer"] == ("gpt-4o-mini", "1", "0", "201", "145", str(WRITER))
    total = ROUTER + RESEARCHER + WRITER
    assert re.search(rf"│ total +│.*│ +{total} │", soft)
    assert re.search(rf"│ crew:research-demo +│ +0.1 │ +{total} │", soft)


def test_example_script_offline() -> None:
    proc = run(sys.executable, "examples/research_crew.py")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "Stopped by budget (researcher, role:researcher)" in out
    assert re.search(rf"researcher +gpt-4o +5 +1 +3726 +105 +{RESEARCHER}\n", out)
    assert re.search(rf"router +gpt-4o-mini +1 +0 +112 +1 +{ROUTER}\n", out)
    # Only the example's own output: the stop line, then the two spend tables
    # and the limits. CrewAI's console chatter, its ERROR log of the stop and
    # its event-bus warnings stay out (they show with --verbose).
    assert out.startswith("\nStopped by budget (researcher, role:researcher)"), out[:300]
    assert proc.stderr == "", proc.stderr[-2000:]
    for noise in ("ERROR", "[CrewAIEventsBus]", "approximate input token count", "Crew: "):
        assert noise not in out


def _load_example() -> Any:
    spec = importlib.util.spec_from_file_location("research_crew_example",
                                                  ROOT / "examples" / "research_crew.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _shape(crew: Any) -> list[Any]:
    agents = [(a.role, a.goal, a.backstory, a.llm.model, getattr(a.llm, "limits", None),
               [t.name for t in a.tools or []]) for a in crew.agents]
    tasks = [(t.description, t.expected_output, t.agent.role) for t in crew.tasks]
    return [agents, tasks, crew.process]


def test_example_is_the_demo_crew() -> None:
    example = _load_example()
    demo_crew = build_crew(BudgetCallback(BUDGETS_YAML and yaml.safe_load(BUDGETS_YAML),
                                          "memory://"))
    example_crew = BudgetCallback(ROOT / "examples" / "budgets.yaml",
                                  "memory://").attach(example.build_crew())
    assert _shape(example_crew) == _shape(demo_crew)
    assert load_config(ROOT / "examples" / "budgets.yaml") == load_config(
        yaml.safe_load(BUDGETS_YAML))
    assert find_cassette() == CASSETTE_DIR / "research_crew.yaml"
    assert Path(example.CASSETTE) == CASSETTE_DIR / "research_crew.yaml"
