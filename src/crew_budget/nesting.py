"""Charge a call once when crew-budget adapters nest.

Adapters can stack on one request: a CrewAI ``BudgetLLM`` wrapping a CrewAI
``LLM`` that routes through litellm while ``crew_budget.litellm.BudgetLogger``
is registered, or a LangChain ``BudgetMiddleware`` over a chat model built on
litellm. Each adapter would reserve and settle the same HTTP call, charging
it twice (and blocking on twice its estimate). The outermost adapter owns the
call: it reserves, settles, and runs the inner provider call inside
``covering(ticket)``; an inner adapter that sees ``covering_ticket()`` set
neither reserves nor books that call.

Where the marker is visible (a ``ContextVar``):

* the same thread, and tasks/threads started with a copy of the context
  (``asyncio`` tasks, ``loop.run_in_executor`` via ``contextvars.copy_context``
  as litellm's ``acompletion`` does, LangChain's executors);
* NOT a plain ``ThreadPoolExecutor.submit`` or a thread started without the
  context. litellm runs success callbacks of sync calls that way, so an inner
  adapter must note the covered call in a hook that runs in the caller's
  context (before the request) and recognise it later by its own call id.

A cover that ended is inert even if its ``ContextVar`` value leaked (a
callback-style adapter whose start and end events run in different
contexts): ``covering_ticket()`` skips ended covers, so a stale marker can
never make a later call free.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass

from crew_budget.guard import Ticket

__all__ = ["Cover", "begin_covering", "covering", "covering_ticket", "end_covering"]


@dataclass(slots=True, eq=False)
class Cover:
    """One outer adapter's claim on the calls made inside it."""

    ticket: Ticket
    outer: Cover | None
    open: bool = True


_COVER: ContextVar[Cover | None] = ContextVar("crew_budget_cover", default=None)


def covering_ticket() -> Ticket | None:
    """The ticket of the outer adapter that already reserved the call in progress."""
    cover = _COVER.get()
    while cover is not None and not cover.open:
        cover = cover.outer
    return cover.ticket if cover is not None else None


def begin_covering(ticket: Ticket) -> Cover:
    """Mark the current context as covered by ``ticket``; pair with ``end_covering``.

    For adapters driven by start/end callbacks, where a ``with`` block cannot
    span the call.
    """
    cover = Cover(ticket, _COVER.get())
    _COVER.set(cover)
    return cover


def end_covering(cover: Cover) -> None:
    """End ``cover``: inert from now on, and unset here if it is still the current one."""
    cover.open = False
    if _COVER.get() is cover:
        outer = cover.outer
        while outer is not None and not outer.open:  # drop ended covers from the chain
            outer = outer.outer
        _COVER.set(outer)


@contextlib.contextmanager
def covering(ticket: Ticket) -> Iterator[Ticket]:
    """Calls made inside the block are charged to ``ticket`` only (the outer adapter)."""
    cover = Cover(ticket, _COVER.get())
    token = _COVER.set(cover)
    try:
        yield ticket
    finally:
        cover.open = False
        _COVER.reset(token)
