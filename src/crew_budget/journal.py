"""The fail_open journal: calls made while the ledger was down, kept on disk.

``fail_open: true`` lets calls through when the ledger cannot be reached.
Their money is spent all the same, so each one is written here (one JSON
line, ``fsync``'d before the call is sent) and booked into the ledger when it
is back, with its real cost, exactly once:

- ``{"k": "call", "id", "ts", "role", "model", "crew", "estimate_nano",
  "metadata"}`` when fail_open lets the call through;
- ``{"k": "cost", "id", "cost_nano", "usage"}`` when it is settled (or
  released: cost 0).

``replay`` books every call whose cost is known, and every call whose
process never settled it (crashed) once the lease has run out, at its
estimate (over-count, never under-count, as an expired reservation). It
books through ``Ledger.charge``, which is idempotent by the call's id: a
replay interrupted between the ledger write and the journal's rewrite books
nothing twice. Several processes may share one file: every append and every
replay holds an exclusive ``flock`` on it.

Limits: a journal is local to one machine (another machine's calls are in
its own journal); a call whose process crashed before the ``call`` line was
written was never sent.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from crew_budget.errors import LedgerUnavailable

__all__ = ["Journal"]


class Journal:
    """One append-only JSON-lines file; see the module docstring."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def exists(self) -> bool:
        try:
            return self.path.stat().st_size > 0
        except OSError:
            return False

    @contextlib.contextmanager
    def _locked(self) -> Iterator[IO[str]]:
        """The file, opened for append and exclusively locked.

        Checked after locking that it is still the file at ``path``: a
        replay may have replaced it while we waited for the lock.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            f = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 - closed below
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX)
                try:
                    same = os.fstat(f.fileno()).st_ino == self.path.stat().st_ino
                except FileNotFoundError:
                    same = False
                if same:
                    yield f
                    return
            finally:
                f.close()

    def append(self, entry: dict[str, Any]) -> None:
        """Write one entry and ``fsync`` it before returning."""
        line = json.dumps(entry, separators=(",", ":"), default=str) + "\n"
        with self._locked() as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def replay(self, book: Callable[[dict[str, Any], int, dict[str, Any] | None], None],
               now: float, lease_seconds: float) -> int:
        """Book what can be booked; keep the rest. Returns how many calls were booked.

        ``book(call, cost_nano, usage)`` writes one call to the ledger
        (idempotently); a ``LedgerUnavailable`` from it stops the replay and
        keeps every unbooked entry for the next one.
        """
        booked = 0
        with self._locked() as f:
            f.seek(0)
            calls: dict[str, dict[str, Any]] = {}
            costs: dict[str, dict[str, Any]] = {}
            torn = 0
            for line in f:
                try:
                    entry = json.loads(line)
                except ValueError:  # a line torn by a crash mid-write: never fsync'd, never sent
                    torn += 1
                    continue
                (calls if entry.get("k") == "call" else costs)[str(entry.get("id"))] = entry
            keep: list[dict[str, Any]] = []
            stopped = False
            for cid, call in calls.items():
                cost = costs.pop(cid, None)
                if stopped:
                    keep.append(call)
                    if cost is not None:
                        keep.append(cost)
                    continue
                if cost is not None:
                    amount, usage = int(cost["cost_nano"]), cost.get("usage")
                elif float(call["ts"]) + lease_seconds <= now:
                    amount, usage = int(call.get("estimate_nano", 0)), None  # never settled
                else:
                    keep.append(call)  # still in flight somewhere
                    continue
                try:
                    book(call, amount, usage)
                except LedgerUnavailable:
                    stopped = True
                    keep.append(call)
                    if cost is not None:
                        keep.append(cost)
                    continue
                booked += 1
            keep.extend(costs.values())  # a cost whose call line is in a newer file: keep it
            if not booked and not torn:
                return 0  # nothing changed: no rewrite (calls still in flight elsewhere)
            tmp = self.path.with_name(self.path.name + ".tmp")
            with open(tmp, "w", encoding="utf-8") as out:
                for entry in keep:
                    out.write(json.dumps(entry, separators=(",", ":"), default=str) + "\n")
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.path)
        return booked
