"""``bench/chaos.py`` in its short mode: 8 processes on a Redis with AOF while
workers are SIGKILLed and Redis is SIGKILLed and restarted twice."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_chaos_keeps_every_limit_and_every_nano_dollar() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "chaos.py"), "--seconds", "8", "--json"],
        capture_output=True, text=True, timeout=180, check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout)
    assert result["max_over_limit_nano"] == 0  # no limit ever exceeded, to the nano-dollar
    assert result["reserved_left_nano"] == 0  # every reservation ended
    assert result["counters_equal_records"] is True and result["mismatches"] == {}
    assert result["resets"] == 0  # a restart of a persistent Redis is not a loss
    assert result["redis_restarts"] == 2
    assert result["worker_kills"] >= 2
    assert result["calls"] > 100
    assert result["settled"] > 0 and result["released"] > 0 and result["blocked"] > 0
    # every abandoned reservation was reaped (and those of killed workers too)
    assert result["reaped"] >= result["abandoned"] > 0
    assert sum(result["spent_nano"].values()) > 0
