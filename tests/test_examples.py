"""The adapter examples, run as a user runs them: subprocesses, offline, replayed HTTP.

Dollars are the cassettes' hand-picked usage (``cassettes/examples/author.py``)
times litellm's list prices, gpt-4o $2.50/M in and $10/M out, gpt-4o-mini
$0.15/M in and $0.60/M out:

examples/langchain_agent.py (role researcher, $0.009/day, 256-token cap):

    call 1  131 in, 18 out  0.0003275 + 0.00018 = 0.0005075
    call 2  264 in, 17 out  0.00066   + 0.00017 = 0.00083
    call 3  381 in, 19 out  0.0009525 + 0.00019 = 0.0011425
    call 4  499 in, 18 out  0.0012475 + 0.00018 = 0.0014275
    call 5  608 in, 20 out  0.00152   + 0.0002  = 0.00172
                                         total = 0.0056275, $0.0033725 left

Every call reserves its prompt plus 256 x $10/M = $0.00256. Call 6 is refused
unless its prompt (~825 tokens) were estimated below 325 tokens; call 5 fits
unless its prompt (608) were estimated above 1,013 tokens. So: 5 requests.

examples/litellm_sdk.py (roles support and triage, $0.00017/day, 200-token cap,
each reservation >= 200 x $0.60/M = $0.00012):

    support (sync)   22/54  0.0000033 + 0.0000324 = 0.0000357
                     23/41  0.00000345 + 0.0000246 = 0.00002805   -> $0.00010625 left
    triage (async)   23/36  0.00000345 + 0.0000216 = 0.00002505
                     22/41  0.0000033 + 0.0000246  = 0.0000279    -> $0.00011705 left

Both are below $0.00012 after two calls, so the third is refused whatever the
prompt estimate; the second fits unless its ~22-token prompt were estimated
above ~65 tokens. So: 4 requests.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def run_example(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("OPENAI_API_KEY", "CREW_BUDGET_LEDGER", "CREW_BUDGET_CONFIG")}
    # Any real connection attempt would go to a dead proxy and fail.
    env.update(HTTPS_PROXY="http://127.0.0.1:9", HTTP_PROXY="http://127.0.0.1:9", NO_PROXY="",
               PYTHONUNBUFFERED="1", LITELLM_LOCAL_MODEL_COST_MAP="True", HF_HUB_OFFLINE="1")
    done = subprocess.run([sys.executable, str(ROOT / "examples" / name), *args],
                          capture_output=True, text=True, env=env, timeout=240, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def charged(stdout: str) -> list[str]:
    return re.findall(r"charged \$([0-9.]+)\n", stdout)


AGENT_CALLS = ["0.0005075", "0.00083", "0.0011425", "0.0014275", "0.00172"]


def test_langchain_agent_example_is_stopped_by_its_budget_after_five_requests() -> None:
    out = run_example("langchain_agent.py").stdout
    assert charged(out) == AGENT_CALLS
    assert re.search(r"^  BLOCKED  gpt-4o  needs ~\$0\.00[0-9]+: no request sent$", out, re.M)
    assert ("Agent ended by its budget: Stopped by crew-budget: budget exceeded for role "
            "'researcher': role:researcher day budget $0.009") in out
    assert ("researcher: 5 calls, $0.0056275 charged; today $0.0056275 spent, $0.0033725 left "
            "of $0.009\n") in out
    assert out.endswith("HTTP requests sent: 5\n")
    assert "Answer:" not in out


def test_langchain_agent_example_exit_error_raises_budget_exceeded() -> None:
    out = run_example("langchain_agent.py", "--exit", "error").stdout
    assert charged(out) == AGENT_CALLS
    assert ("Agent stopped: BudgetExceeded (role:researcher): budget exceeded for role "
            "'researcher'") in out
    assert "researcher: 5 calls, $0.0056275 charged" in out
    assert out.endswith("HTTP requests sent: 5\n")


def test_litellm_sdk_example_blocks_the_third_call_sync_and_async() -> None:
    out = run_example("litellm_sdk.py").stdout
    sync, _, rest = out.partition("async, litellm.acompletion")
    assert charged(sync) == ["0.0000357", "0.00002805"]
    assert charged(rest) == ["0.00002505", "0.0000279"]
    assert ("  stopped: CrewBudgetExceededError (role:support, $0.00010625 left): no request "
            "sent\n") in sync
    assert ("  stopped: CrewBudgetExceededError (role:triage, $0.00011705 left): no request "
            "sent\n") in rest
    assert ("support: 2 calls, $0.00006375 charged; today $0.00006375 spent, $0.00010625 left "
            "of $0.00017\n") in out
    assert ("triage: 2 calls, $0.00005295 charged; today $0.00005295 spent, $0.00011705 left "
            "of $0.00017\n") in out
    assert out.endswith("HTTP requests sent: 4\n")


@pytest.mark.parametrize("name", ["langchain_agent.py", "litellm_sdk.py"])
def test_live_mode_without_a_key_says_so(name: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    env["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    done = subprocess.run([sys.executable, str(ROOT / "examples" / name), "--live"],
                          capture_output=True, text=True, env=env, timeout=240)
    assert (done.returncode, done.stderr) == (2, "--live needs OPENAI_API_KEY\n")
