"""Per-run budgets: ``with crew_budget.run("nightly-report", usd=2): ...``.

A *run* is one execution of an agent workflow: a CrewAI ``kickoff()``, a
Flow run, a LangChain agent invocation, a cron job. Calendar windows cannot
say "this run may cost at most $2": a run that starts at 23:59 spans two
days, and two runs in the same hour share one hourly budget. A run budget
is one more bucket in the same atomic reservation as the calendar ones
(invariant 2), whose period is the run's id and which never rolls over.

CrewAI needs no ``run()``: each ``kickoff()`` of a crew attached to a
``BudgetCallback`` is a run of its own (named after the crew), and a Flow
run is one run that the crews it kicks off are charged to; a kickoff or
Flow already inside a run (yours, or a Flow's) is charged to that run.
The adapter starts and ends them with ``begin_run``/``end_run`` from
CrewAI's execution hooks.

Every guarded call made inside ``run(...)`` is charged to it: CrewAI,
LangChain and LiteLLM adapters all go through ``Guard.preflight``, which
reads the current run from a ``ContextVar``. Its spend record carries the
run's id in ``metadata["run"]`` (``crew-budget report --by run``).

What the run's limits are:

* ``usd=`` given here (code, like ``BudgetLLM(daily_usd=...)``), scope
  ``run``; with no ``usd`` the run is still counted there (no limit), so its
  spend can be read with ``Run.status(guard)``;
* ``per_run:`` in the YAML for the crew, ``global``, each role,
  ``default_role`` and each model scope, applied to the innermost run.

Where the run is visible (contextvars semantics):

* the code inside the ``with`` block, and ``asyncio`` tasks created inside
  it (each task copies the context when it is created);
* threads started with a copy of the context:
  ``contextvars.copy_context().run(fn)``, ``loop.run_in_executor`` inside
  a coroutine that copies it (as ``asyncio.to_thread`` does), and executors
  of frameworks that propagate contextvars (LangChain's do);
* NOT a plain ``threading.Thread`` or ``ThreadPoolExecutor.submit`` started
  inside the block: their calls are charged to no run (but still to every
  calendar budget). Wrap the target: ``pool.submit(copy_context().run, fn)``.

Concurrent runs of the same code are separate runs (each ``run()`` gets a
fresh id, ``name#<16 hex digits>``), so each has its own budget. Runs nest:
a call inside an inner run is charged to both, and each one's ``usd`` cap
applies; the YAML's ``per_run`` applies to the innermost.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING

from crew_budget.errors import ConfigError

if TYPE_CHECKING:
    from crew_budget.guard import BudgetStatus, Guard

__all__ = ["MAX_RUN_NAME", "Run", "begin_run", "current_run", "end_run", "run"]

#: Longest run name: it becomes part of ledger keys and spend records.
MAX_RUN_NAME = 200

_RUN: ContextVar[Run | None] = ContextVar("crew_budget_run", default=None)


@dataclass(frozen=True, slots=True, eq=False)
class Run:
    """One run: its name, unique id, code limit (if any) and enclosing run.

    ``limit_nano`` is the ``usd`` cap in nano-USD, or None for no cap of
    its own (the YAML's ``per_run`` limits still apply).
    """

    name: str
    run_id: str
    limit_nano: int | None
    parent: Run | None
    started_at: float

    @property
    def limit(self) -> Decimal | None:
        """The ``usd`` cap given to ``run()``, in dollars."""
        from crew_budget.money import from_nano

        return None if self.limit_nano is None else from_nano(self.limit_nano)

    def chain(self) -> tuple[Run, ...]:
        """This run and the runs enclosing it, innermost first."""
        out: list[Run] = []
        r: Run | None = self
        while r is not None:
            out.append(r)
            r = r.parent
        return tuple(out)

    def status(self, guard: Guard, role: str | None = None) -> list[BudgetStatus]:
        """Spent, reserved and remaining of this run's buckets on ``guard``'s ledger.

        The ``run`` scope (always there) plus every ``per_run`` scope of
        ``role`` (all roles if None) and of the crew, global and models.
        """
        return guard.run_status(self, role)

    def __repr__(self) -> str:
        return f"Run({self.run_id!r}, limit={self.limit})"


def current_run() -> Run | None:
    """The innermost run the calling code is inside, or None."""
    return _RUN.get()


def _check_name(name: object) -> str:
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"a run needs a name, got {name!r}; e.g. "
                          "crew_budget.run('nightly-report')", source="crew_budget.run()")
    if len(name) > MAX_RUN_NAME:
        raise ConfigError(f"run name of {len(name)} characters is longer than "
                          f"{MAX_RUN_NAME}; use a short label such as 'nightly-report'",
                          source="crew_budget.run()")
    if "|" in name or any(ord(c) < 32 for c in name):
        raise ConfigError(f"run name {name!r} contains '|' or a control character, which "
                          "ledger keys cannot hold; use letters, digits, '-', '_' or spaces",
                          source="crew_budget.run()")
    return name.strip()


def _check_usd(usd: object) -> int | None:
    if usd is None:
        return None
    from crew_budget.config import check_code_limits
    from crew_budget.money import to_nano

    try:
        amount = check_code_limits("run", daily=usd)["daily"]
    except ConfigError as exc:
        raise ConfigError(exc.detail.replace("daily_usd", "usd"),
                          source="crew_budget.run()") from None
    return to_nano(amount)


@contextlib.contextmanager
def run(name: str, usd: object = None) -> Iterator[Run]:
    """Charge every guarded call inside the block to one new run.

    ``usd`` caps the run (``2``, ``"2.50"``, a ``Decimal``; parsed exactly,
    at most $1,000,000); a call that would cross it raises
    ``BudgetExceeded`` with ``scope="run"`` and ``window="run"``, nothing
    charged anywhere. ``ConfigError`` for a blank or unusable name or a bad
    amount. Yields the ``Run`` (its ``run_id`` is in each spend record).

    Also a decorator for plain functions (``@crew_budget.run("nightly",
    usd=2)``): each call is a new run. Not for ``async def`` functions (the
    block would end before the coroutine runs): use ``with`` inside them.
    """
    label = _check_name(name)
    limit = _check_usd(usd)
    parent = _RUN.get()
    r = Run(label, f"{label}#{os.urandom(8).hex()}", limit, parent, time.time())
    token = _RUN.set(r)
    try:
        yield r
    finally:
        _RUN.reset(token)


def begin_run(name: str, usd: object = None) -> Run:
    """Start a run in the calling context without a ``with`` block; ``end_run`` ends it.

    For adapters whose framework announces a run's start and end as two
    callbacks on the same context (CrewAI's ``EXECUTION_START`` and
    ``EXECUTION_END`` hooks around a ``kickoff()`` or a Flow run), where a
    ``with`` block cannot span the two. Same checks and id as ``run()``; the
    run is visible to the code that follows in this context (and to tasks
    and threads that copy it) until ``end_run``.
    """
    label = _check_name(name)
    limit = _check_usd(usd)
    parent = _RUN.get()
    r = Run(label, f"{label}#{os.urandom(8).hex()}", limit, parent, time.time())
    _RUN.set(r)
    return r


def end_run(r: Run) -> None:
    """End ``r`` (started by ``begin_run``): its enclosing run is current again.

    A no-op unless ``r`` is the innermost run here, so an end announced
    twice, or in another context, never ends a run it did not start.
    """
    if _RUN.get() is r:
        _RUN.set(r.parent)


def run_name(text: object, fallback: str) -> str:
    """``text`` made fit to name a run (``_check_name``'s rules), else ``fallback``.

    Adapters name runs after a crew or flow, whose names users choose freely.
    """
    if not isinstance(text, str):
        return fallback
    clean = "".join(" " if c == "|" or ord(c) < 32 else c for c in text).strip()
    return clean[:MAX_RUN_NAME].strip() or fallback
