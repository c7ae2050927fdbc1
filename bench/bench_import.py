"""Import cost of crew_budget, side by side with the frameworks it avoids importing.

    python bench/bench_import.py [runs]

Each figure is the median wall time of a fresh interpreter doing only that
import, minus the median of a bare interpreter start measured in the same run.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time

CASES = {
    "python -c pass (baseline)": "pass",
    "import crew_budget": "import crew_budget",
    "from crew_budget import Guard": "from crew_budget import Guard",
    "Guard(...) + first preflight": (
        "from crew_budget import Guard; g = Guard({'roles': {'r': {'daily': 1}}}, 'memory://');"
        "g.preflight('r', 'gpt-4o-mini', [{'role': 'user', 'content': 'hi'}], max_tokens=5)"
    ),
    "import litellm": "import litellm",
}


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 15
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "HF_HUB_OFFLINE": "1"}
    results: dict[str, list[float]] = {k: [] for k in CASES}
    for _ in range(runs):  # interleaved, so drift hits every case alike
        for name, code in CASES.items():
            t = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], env=env, check=True)
            results[name].append(time.perf_counter() - t)
    base = statistics.median(results["python -c pass (baseline)"])
    print(f"| case ({runs} runs, interleaved) | median ms | minus interpreter start |")
    print("|---|---:|---:|")
    for name, samples in results.items():
        med = statistics.median(samples)
        print(f"| {name} | {med * 1000:.0f} | {(med - base) * 1000:.0f} |")


if __name__ == "__main__":
    main()
