"""What-if: the period's spend re-priced as if some model had been another.

``crew-budget report --what-if gpt-4o=gpt-4o-mini`` answers the classic
question "what would these calls have cost on the mini sibling?" from the
ledger's hourly rollups (``Ledger.rollups``), never from raw records: the
cost grows with roles x models x hours, not with calls, as for reports.

How a rollup is re-priced: its tokens (uncached input, cache reads, cache
writes, output with reasoning inside it) go through ``cost_nano_of``, the
very code a settle prices a call with, once at the model's own price
(``repriced``) and once at the substitute's (``what_if``); the saving is
the difference of the two, so both sides count the same tokens the same
way. A context-tier price picks its tier by the rollup's average prompt
per call (a rollup does not keep each call's prompt), and a per-request
fee is charged once per call. ``cost`` beside them is what the ledger
charged: it also holds what tokens do not show (expired reservations,
charged at their estimate; audio, images and searches, which rollups do
not count), so ``repriced`` may differ from it, and is the fair baseline.

No agent framework is imported here (the core's rule).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any

from crew_budget.config import model_matches
from crew_budget.errors import ConfigError
from crew_budget.ledger.base import Rollup, in_span
from crew_budget.money import from_nano, to_nano_round
from crew_budget.pricing import Price, PriceBook
from crew_budget.usage import Usage, cost_nano_of

__all__ = [
    "Substitution", "WhatIf", "WhatIfRow", "parse_substitutions", "render_table", "reprice",
    "to_html", "what_if",
]


@dataclass(frozen=True, slots=True)
class Substitution:
    """``original=substitute``: calls to ``original`` re-priced at ``substitute``.

    ``original`` matches a call's model as a ``models:`` key does: exactly,
    or the model without its provider prefix (``gpt-4o`` matches
    ``openai/gpt-4o``).
    """

    original: str
    substitute: str

    def matches(self, model: str) -> bool:
        return model_matches(self.original, model)

    def __str__(self) -> str:
        return f"{self.original}={self.substitute}"


def parse_substitutions(texts: Sequence[str]) -> tuple[Substitution, ...]:
    """``["gpt-4o=gpt-4o-mini", ...]`` -> substitutions; ``ConfigError`` says what is wrong."""
    out: list[Substitution] = []
    for text in texts:
        original, sep, substitute = text.partition("=")
        original, substitute = original.strip(), substitute.strip()
        if not sep or not original or not substitute:
            raise ConfigError(f"--what-if {text!r} is not MODEL=SUBSTITUTE; write e.g. "
                              "--what-if gpt-4o=gpt-4o-mini", source="--what-if")
        if original == substitute:
            raise ConfigError(f"--what-if {text!r} substitutes a model for itself; name a "
                              "different model after '='", source="--what-if")
        if any(s.original == original for s in out):
            raise ConfigError(f"--what-if names {original!r} twice; give one substitute per "
                              "model", source="--what-if")
        out.append(Substitution(original, substitute))
    if not out:
        raise ConfigError("--what-if needs at least one MODEL=SUBSTITUTE",
                          source="--what-if")
    return tuple(out)


def reprice(rollup: Rollup, price: Price) -> int:
    """The nano-USD ``rollup``'s tokens cost at ``price`` (``cost_nano_of``, as settles).

    A tiered price is billed at the tier of the rollup's average prompt per
    call; a per-request fee once per call.
    """
    usage = Usage(rollup.input_tokens, rollup.cached_input_tokens, rollup.cache_write_tokens,
                  rollup.output_tokens, rollup.reasoning_tokens)
    if price.variable and rollup.calls:
        price = price.for_usage(usage.prompt_tokens // rollup.calls)
    fee = price.per_request
    if fee:
        price = replace(price, per_request=None, tiers=(), service_tiers=())
        return cost_nano_of(usage, price) + to_nano_round(fee * rollup.calls)
    return cost_nano_of(usage, price)


@dataclass(slots=True)
class WhatIfRow:
    """One role's calls to one model, re-priced at its substitute (nano-USD)."""

    role: str
    model: str
    substitute: str
    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_nano: int = 0
    repriced_nano: int = 0
    what_if_nano: int = 0

    @property
    def saving_nano(self) -> int:
        return self.repriced_nano - self.what_if_nano

    def saving_pct(self) -> Decimal:
        """The saving as a share of ``repriced``, in percent (one decimal)."""
        if not self.repriced_nano:
            return Decimal(0)
        return (Decimal(self.saving_nano) * 100 / self.repriced_nano).quantize(Decimal("0.1"))

    def to_dict(self) -> dict[str, Any]:
        return {
            "role": self.role, "model": self.model, "substitute": self.substitute,
            "calls": self.calls, "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens, "cost_usd": str(from_nano(self.cost_nano)),
            "repriced_usd": str(from_nano(self.repriced_nano)),
            "what_if_usd": str(from_nano(self.what_if_nano)),
            "saving_usd": str(from_nano(self.saving_nano)),
            "saving_pct": str(self.saving_pct()),
        }


@dataclass(slots=True)
class WhatIf:
    """The re-priced rows (largest saving first) and their total."""

    substitutions: tuple[Substitution, ...]
    rows: list[WhatIfRow]
    total: WhatIfRow
    unmatched: tuple[Substitution, ...] = field(default_factory=tuple)
    """Substitutions whose model had no calls in the period."""

    def to_dict(self) -> dict[str, Any]:
        total = self.total.to_dict()
        for key in ("role", "model", "substitute"):
            del total[key]
        return {
            "substitutions": [str(s) for s in self.substitutions],
            "rows": [r.to_dict() for r in self.rows],
            "total": total,
            "unmatched": [str(s) for s in self.unmatched],
        }


def what_if(
    rollups: Iterable[Rollup],
    substitutions: Sequence[Substitution],
    prices: PriceBook,
    *,
    since: float | None = None,
    until: float | None = None,
) -> WhatIf:
    """Re-price the calls of ``rollups`` in ``[since, until)`` per substitution.

    Both prices come from ``prices`` (the guard's ``PriceBook``: the YAML's
    ``prices:`` overrides, genai-prices, litellm's map). A substitute no
    source prices raises ``UnknownModelError`` with close names, before
    any rollup is read; a model of the period without a price raises it
    too (it was priced when its calls settled, so that means the price
    overrides changed since).
    """
    subs = tuple(substitutions)
    targets = {s.substitute: prices.get(s.substitute) for s in subs}
    own: dict[str, Price] = {}
    rows: dict[tuple[str, str, str], WhatIfRow] = {}
    seen: set[Substitution] = set()
    for r in rollups:
        if not r.calls or not in_span(r.hour, since, until):
            continue
        sub = next((s for s in subs if s.matches(r.model)), None)
        if sub is None:
            continue
        seen.add(sub)
        price = own.get(r.model)
        if price is None:
            price = own[r.model] = prices.get(r.model)
        key = (r.role, r.model, sub.substitute)
        row = rows.get(key)
        if row is None:
            row = rows[key] = WhatIfRow(*key)
        row.calls += r.calls
        row.input_tokens += r.input_tokens + r.cached_input_tokens + r.cache_write_tokens
        row.output_tokens += r.output_tokens
        row.cost_nano += r.cost_nano
        row.repriced_nano += reprice(r, price)
        row.what_if_nano += reprice(r, targets[sub.substitute])
    out = sorted(rows.values(), key=lambda w: (-w.saving_nano, w.role, w.model))
    total = WhatIfRow("", "", "")
    for w in out:
        total.calls += w.calls
        total.input_tokens += w.input_tokens
        total.output_tokens += w.output_tokens
        total.cost_nano += w.cost_nano
        total.repriced_nano += w.repriced_nano
        total.what_if_nano += w.what_if_nano
    return WhatIf(subs, out, total, tuple(s for s in subs if s not in seen))


def render_table(result: WhatIf, *, title: str | None = None) -> Any:
    """A ``rich.table.Table`` of the re-priced rows (rich is imported here, lazily)."""
    from rich.table import Table

    from crew_budget.cli.common import fmt_usd, money_column

    t = result.total
    rows = [(r.role, r.model, r.substitute, r) for r in result.rows]
    table = Table(title=title, title_justify="left", show_footer=True)
    for name, footer in (("role", "total"), ("model", ""), ("as", "")):
        table.add_column(name, footer=footer, overflow="fold",
                         style="bold" if name == "role" else None)
    stats: dict[str, list[str]] = {
        "calls": [str(t.calls), *(str(r.calls) for *_, r in rows)],
        "cost": [fmt_usd(from_nano(t.cost_nano)),
                 *(fmt_usd(from_nano(r.cost_nano)) for *_, r in rows)],
        "re-priced": [fmt_usd(from_nano(t.repriced_nano)),
                      *(fmt_usd(from_nano(r.repriced_nano)) for *_, r in rows)],
        "what-if": [fmt_usd(from_nano(t.what_if_nano)),
                    *(fmt_usd(from_nano(r.what_if_nano)) for *_, r in rows)],
        "saving": [fmt_usd(from_nano(t.saving_nano)),
                   *(fmt_usd(from_nano(r.saving_nano)) for *_, r in rows)],
        "saving %": [f"{t.saving_pct()}%", *(f"{r.saving_pct()}%" for *_, r in rows)],
    }
    for name, values in stats.items():
        money_column(table, name, values, footer=values[0],
                     style="green" if name == "saving" else None)
    for i, (role, model, substitute, _row) in enumerate(rows):
        table.add_row(role, model, substitute, *(v[i + 1] for v in stats.values()))
    return table


def to_html(result: WhatIf) -> str:
    """The what-if section of the HTML report: a heading and one table.

    Plain markup styled by the report page's own CSS, appended to the page
    by ``crew-budget report --html ... --what-if ...``.
    """
    from html import escape

    from crew_budget.cli.common import fmt_usd

    def usd(nano: int) -> str:
        return escape(fmt_usd(from_nano(nano)))

    subs = escape(", ".join(str(s) for s in result.substitutions))
    out = [f'<h2 id="what-if">What if {subs}</h2>',
           "<p>The period's calls re-priced from their tokens at the substitute's prices "
           "(the settle's own pricing code); the saving compares both prices on the same "
           "tokens.</p>",
           '<table data-table="what-if"><tr><th>role</th><th class="k">model</th>'
           '<th class="k">as</th><th>calls</th><th>cost</th><th>re-priced</th>'
           "<th>what-if</th><th>saving</th><th>saving %</th></tr>"]
    for r in [*result.rows, result.total]:
        total = r is result.total
        out.append(f'<tr><td class="k">{"total" if total else escape(r.role)}</td>'
                   f'<td class="k">{escape(r.model)}</td><td class="k">'
                   f"{escape(r.substitute)}</td><td>{r.calls}</td><td>{usd(r.cost_nano)}</td>"
                   f"<td>{usd(r.repriced_nano)}</td><td>{usd(r.what_if_nano)}</td>"
                   f"<td>{usd(r.saving_nano)}</td><td>{r.saving_pct()}%</td></tr>")
    out.append("</table>")
    out += [f"<p>No calls to {escape(s.original)} in this period ({escape(str(s))}).</p>"
            for s in result.unmatched]
    return "".join(out)
