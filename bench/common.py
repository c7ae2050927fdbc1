"""Shared benchmark helpers: a realistic agent history, a throwaway Redis, stats.

Benchmarks report medians and tails measured side by side in one run, since
these machines are noisy; they are never assertions in the test suite.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

_WORDS = (  # noqa: SIM905 (reads as a sentence)
    "agent budget ledger token research market analysis revenue quarter growth customer "
    "pipeline forecast retention churn segment pricing competitor summary source citation "
    "report draft review evidence claim figure table chart trend signal noise outlier"
).split()


def agent_history(
    turns: int = 20, tokens_per_message: int = 200, seed: int = 7
) -> list[dict[str, Any]]:
    """A system prompt plus ``turns`` user/assistant messages, ~4k tokens in all."""
    rng = random.Random(seed)

    def text(n_words: int) -> str:
        return " ".join(rng.choice(_WORDS) for _ in range(n_words)) + "."

    msgs: list[dict[str, Any]] = [
        {"role": "system", "content": "You are a meticulous researcher. " + text(60)}
    ]
    for i in range(turns):
        role = "user" if i % 2 == 0 else "assistant"
        msgs.append({"role": role, "content": text(int(tokens_per_message * 0.75))})
    return msgs


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary(samples_s: list[float]) -> dict[str, float]:
    """p50 / p99 / mean in microseconds."""
    us = [s * 1e6 for s in samples_s]
    return {"p50": statistics.median(us), "p99": pct(us, 0.99), "mean": statistics.fmean(us)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def redis_server() -> Iterator[str]:
    """A real redis-server on a free loopback port, removed afterwards."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server not found: apt-get install redis-server")
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="cb-bench-redis-")
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", workdir],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)
