"""A short soak (bench/soak.py) on a real redis-server: the books balance.

Worker processes make mixed calls through the Redis ledger's real write path
with its default settings (roles x models x crews, calls blocked by small
limits, releases, abandoned leases reaped and charged at their amount,
retried settles answered from their tombstones); then every counter must hold
exactly what the workers were charged and what the rollups say, and the
rollups must equal the records, to the nano-dollar. No timing is asserted.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.fixtures.redis_server import RedisServer

ROOT = Path(__file__).resolve().parents[2]


def test_a_short_soak_balances_the_books(tmp_path: Path) -> None:
    server = RedisServer(directory=tmp_path)
    server.start()
    try:
        done = subprocess.run(
            [sys.executable, str(ROOT / "bench" / "soak.py"), "--seconds", "4", "--procs", "2",
             "--url", server.url],
            capture_output=True, text=True, timeout=300, check=False,
        )
    finally:
        server.stop()
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert out.rstrip().endswith("books balanced: True")
    counts = dict(re.findall(r"(\w+) ([\d,]+)", out.splitlines()[0].split(": ", 2)[2]))
    # Every fate happened: the checks below cover each kind of call.
    for fate in ("settled", "released", "abandoned", "blocked", "repeats"):
        assert int(counts[fate].replace(",", "")) > 0, (fate, out)
    rows = [line.split(" | ") for line in out.splitlines() if line.startswith("| counter ")
            or line.startswith("| rollups == records")]
    assert len(rows) == 11 + 5  # 8 roles, 2 crews, global; 5 rollup totals
    assert all(r[-1].strip(" |") == "ok" for r in rows), out
    # The global counter: what the workers were charged == the rollups == spent.
    (glob,) = [r for r in rows if r[0] == "| counter global: spent (reserved)"]
    charged = re.fullmatch(r"(\d+) \(0\) charged, (\d+) in rollups", glob[1])
    assert charged is not None and charged[1] == charged[2]
    assert glob[2] == f"{charged[1]} (0)" and int(charged[1]) > 0
    # Records kept (default 7 days): their expired calls are the abandoned ones.
    (expired,) = [r for r in rows if r[0] == "| rollups == records: expired"]
    assert expired[1] == expired[2] == counts["abandoned"].replace(",", "")
