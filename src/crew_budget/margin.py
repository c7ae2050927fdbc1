"""The estimate margin: reservations absorb the estimator's own error.

Invariant 1 lets committed spend pass a limit by the prompt-token estimation
error of the calls in flight. Output cannot overshoot (it is reserved at
``max_tokens``), so the only way a settle lands above its reservation is a
prompt the estimator under-counted. Every family of models has its own error
profile (tokenizer, hidden prompt text, rendering of tools and history), so
crew-budget learns, per *model family*, how far under its estimates fall and
reserves that much more:

    reserved prompt tokens = max(calibrated estimate, raw count x (1 + margin))

**What is learned.** For every settled call, the under-estimation ratio
``u = actual / raw - 1`` of the estimator's raw count (before the in-process
calibration, see below); an over-estimate counts as ``u = 0``. The margin is
a high quantile of ``u`` over the family's recent settles (``quantile``,
default p95), capped at ``max`` (default 100 %), and used only once the family
has ``min_samples`` settles (default 20). Over-estimates count as zeros, not
as nothing: a family estimated right 95 % of the time needs no margin at
p95, whatever its worst calls look like.

**Why p95, 100 % and 20 by default.** p95: a reservation is an upper
bound on the whole call, and its output part (``max_tokens``) is usually
far above what the model writes, so most calls above the prompt quantile
are absorbed by that slack; p99 reserves for outliers (documents, images by
URL) and blocks calls that would have fit. 100 %: the cap bounds what one
badly estimated family can block, but a cap below that family's real error
lets its calls pass the limit; replaying 480 recorded calls through one
tight budget (bench/margin_replay.py, bench/README.md), caps of 25 % and
50 % left the worst-estimated families (OpenAI-compatible hosts, images)
able to push committed spend past the limit with 8 calls in flight, 100 %
did not, and blocked no more calls that would have fit. A family whose
margin is high is an estimator problem to fix: ``crew-budget status`` shows
it. 20: a 95th percentile of fewer samples is the largest of them, noise.

**Stored in the ledger.** Each family's samples are a histogram of ``u`` in
bins of 0.5 % (bin ``b`` holds ``(b-1)/200 < u <= b/200``, bin 0 is
``u = 0``, bin 200 holds every ``u >= 100 %``): at most 201 integers per
family, whatever the traffic. The quantile is read off the bins and rounded
*up* to the bin's upper edge, so it errs on the safe side by less than
0.5 %. When a family passes ``history`` samples its bins are halved, so the
margin follows the estimator as it improves and old traffic fades. The
ledger merges counts atomically (memory: a lock; SQLite: one transaction;
Redis: one Lua script, ``lua/margin.lua``), so every process and every
restart shares one margin per family.

**A rare family** (fewer than ``min_samples`` settles of its own) uses its
provider's margin: every sample also counts for ``provider/*``.

**Off the hot path.** A settle adds its sample to this process's pending
counts, which are merged into the ledger with one operation every
``FLUSH_EVERY`` samples or ``FLUSH_SECONDS`` (and when the guard closes):
one round trip per 16 settles, not one per settle. The margin used is the
ledger's histogram plus this process's pending counts, so a process's own
settles count at once. A family's stored histogram is read on its first
call in a process and again after ``REFRESH_SECONDS``. A ledger that cannot
store or read margins leaves the margin at what this process learned: the
margin is a statistic, never money, so its failures are logged, not raised.

**The in-process calibration** (``Estimator.calibrate``) is a point
correction per model: it moves the *estimate* toward recent actuals (60 % of
the way up at once, 5 % down). The margin is a safety buffer on the
*reservation*. Both are measured against the raw count and the larger one
wins (``max`` above, never their product), so an error is never counted
twice: a calibration that already lifted the estimate past ``raw x (1 +
margin)`` adds nothing more, and a margin above it replaces it. Until a
family has ``min_samples`` settles only the calibration applies, as before
this module existed.

Calls counted exactly (``exact_count``, ``estimate/exact.py``) take no
margin and teach none: their count is what the provider bills.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from crew_budget.ledger.base import MARGIN_BINS, MARGIN_RESOLUTION, Ledger

if TYPE_CHECKING:
    from crew_budget.config import EstimateMargin

__all__ = ["FamilyMargin", "Margins", "apply_margin", "margin_bin", "model_family",
           "provider_family", "quantile_bin"]

log = logging.getLogger("crew_budget")

FLUSH_EVERY = 16
"""Pending samples that trigger a merge into the ledger."""
FLUSH_SECONDS = 1.0
"""A settle merges pending samples older than this, however few."""
REFRESH_SECONDS = 30.0
"""A family's stored histogram is read again after this long."""
_MAX_FAMILIES = 1024
"""Families kept in memory (model names can come from outside, e.g. a proxy)."""


# -- model families -------------------------------------------------------------

# A model *line*: the name without what only dates or routes it. Each pattern
# is stripped from the end, repeatedly, so "claude-3-5-haiku-20241022-v1:0"
# loses its Bedrock version and then its date.
_SUFFIXES = (
    re.compile(r"-v\d+(?::\d+)?$"),  # Bedrock: "-v2:0", "-v1"
    re.compile(r"[:@][^:@/]*$"),  # Bedrock ":0", Vertex "@20240620", Ollama tags ":4b"
    re.compile(r"-(?:20\d{6}|20\d\d-\d\d-\d\d)$"),  # dated snapshots: -20250514, -2024-08-06
    re.compile(r"-(?:0[1-9]|1[0-2])(?:[0-2]\d|3[01])$"),  # OpenAI's -0613, -1106 (MMDD)
    re.compile(r"-(?:0[1-9]|1[0-2])-(?:[0-2]\d|3[01])$"),  # Gemini previews' -05-06
    re.compile(r"-(?:latest|preview|exp)$"),  # moving aliases of the same line
    re.compile(r"-0$"),  # Anthropic's "claude-sonnet-4-0" alias of claude-sonnet-4
)
_BEDROCK_REGION = re.compile(r"^(?:us|eu|apac|ap|global|us-gov|jp|au|ca)\.")
_BEDROCK_VENDOR = re.compile(
    r"^(?:anthropic|meta|amazon|mistral|cohere|ai21|deepseek|qwen|openai|writer)\.")
_SAFE = re.compile(r"[^a-z0-9._\-/]")


def model_family(model: str, provider: str | None = None,
                 price_provider: str | None = None) -> str:
    """``provider/line``: the unit a margin is learned for.

    The *provider* is who serves the call, since the same model behind
    another host can bill a different prompt: the adapter's ``provider``
    hint (an id, a litellm provider or a base URL, as ``PriceBook.get``
    takes it), else the name's ``provider/`` prefix, else the price's
    provider (``openai``, ``anthropic``, ``other``...). The *line* is the
    model name without provider prefixes, Bedrock region and vendor
    prefixes, versions, tags, dates and moving aliases, lower-cased:
    ``claude-sonnet-4-20250514`` and ``claude-sonnet-4-0`` are both
    ``anthropic/claude-sonnet-4``; ``gpt-4o-2024-08-06`` is
    ``openai/gpt-4o``; ``gpt-4o-mini`` is its own line. Minor versions stay
    (``claude-sonnet-4-5``, ``gpt-4.1``): a new version can change the
    tokenizer, and with it the error.
    """
    from crew_budget.pricing import _split_provider, normalize_provider

    name = unquote(model).strip().lower()
    # A known provider prefix ("openrouter/", "bedrock/") names who serves the
    # call; an organisation ("meta-llama/", "qwen/") is part of the model name.
    known, _ = _split_provider(name)
    prefix = normalize_provider(known) if known else None
    parts = [p for p in name.split("/") if p]
    who = (normalize_provider(provider) if provider else None) or prefix or (
        price_provider or "other").lower()
    line = parts[-1] if parts else name
    line = _BEDROCK_VENDOR.sub("", _BEDROCK_REGION.sub("", line))
    changed = True
    while changed and line:
        changed = False
        for pattern in _SUFFIXES:
            shorter = pattern.sub("", line)
            if shorter != line and shorter:
                line, changed = shorter, True
    family = _SAFE.sub("_", f"{who}/{line or name}")
    return family[:200]


# -- the histogram -----------------------------------------------------------------


def margin_bin(estimated: int, actual: int) -> int:
    """The histogram bin of one settle: 0 for no under-estimate, else
    ``ceil(200 * (actual / estimated - 1))``, at most 200. Integer
    arithmetic: the bin of a sample does not depend on float rounding."""
    if estimated <= 0 or actual <= estimated:
        return 0
    b = -((estimated - actual) * MARGIN_RESOLUTION // estimated)  # ceil division
    return min(b, MARGIN_BINS - 1)


def quantile_bin(bins: Mapping[int, int], quantile: Decimal) -> int:
    """The nearest-rank quantile of a histogram, as a bin (0 when it is empty).

    The smallest bin ``b`` such that at least ``ceil(quantile x n)`` of the
    ``n`` samples are in bins ``<= b``: the sample at that rank lies in
    ``b``, and ``b / 200`` is at or above it (safe side).
    """
    n = sum(c for c in bins.values() if c > 0)
    if n <= 0:
        return 0
    rank = max(1, math.ceil(Decimal(n) * quantile))
    seen = 0
    for b in sorted(bins):
        seen += max(bins[b], 0)
        if seen >= rank:
            return b
    return max(bins)


@dataclass(frozen=True, slots=True)
class FamilyMargin:
    """One family's margin as a process sees it (``crew-budget status`` shows it).

    ``margin`` is the fraction added to the raw prompt count (0 until
    ``active``); ``learned`` the quantile before the cap; ``samples`` the
    stored samples plus this process's pending ones (after halving, see the
    module doc).
    """

    family: str
    margin: Fraction
    learned: Fraction
    samples: int
    active: bool
    capped: bool


class _Family:
    __slots__ = ("loaded_at", "pending", "pending_n", "stored")

    def __init__(self) -> None:
        self.stored: dict[int, int] = {}
        self.pending: dict[int, int] = {}
        self.pending_n = 0
        self.loaded_at = -math.inf


def provider_family(family: str) -> str:
    """``provider/*``: every line of one provider, the fallback of a family
    with too few settles of its own (a rarely used model still gets the
    margin its provider's estimates need)."""
    return family.split("/", 1)[0] + "/*"


class Margins:
    """Per-family margins of one guard: the ledger's histograms plus pending samples.

    Thread-safe. ``settings`` is called for the settings in force (the
    guard's ``config.estimate_margin``), so a new config takes effect at once.
    Each sample counts for its family and for its provider (``provider/*``):
    a family with fewer than ``min_samples`` settles uses its provider's
    margin when that one has enough. The margin in use is worked out again
    when samples are merged into the ledger or read from it (every
    ``FLUSH_EVERY`` settles or ``FLUSH_SECONDS``), not on every preflight.
    """

    def __init__(self, ledger: Ledger, settings: Callable[[], EstimateMargin],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ledger = ledger
        self._settings = settings
        self._clock = clock
        self._lock = threading.Lock()
        self._families: dict[str, _Family] = {}
        self._used: dict[str, tuple[Any, Fraction]] = {}  # family -> (settings, margin in use)
        self._pending_total = 0
        self._last_flush = clock()
        self._warned = False

    # -- reading -------------------------------------------------------------

    def margin(self, family: str) -> Fraction:
        """The margin to reserve for ``family`` now (0 when off or not yet learned)."""
        settings = self._settings()
        if not settings.enabled or settings.max <= 0:
            return Fraction(0)
        used = self._used.get(family)  # preflight is a hot path: one dict lookup
        fam = self._families.get(family)
        if fam is None or self._clock() - fam.loaded_at > REFRESH_SECONDS:
            self._load(family)
            used = None
        if used is not None and used[0] is settings:
            return used[1]
        mine = self.view(family)
        margin = mine.margin
        if not mine.active:
            parent = self.view(provider_family(family))
            margin = parent.margin if parent.active else Fraction(0)
        with self._lock:
            if len(self._used) >= _MAX_FAMILIES * 2:
                self._used.clear()
            self._used[family] = (settings, margin)
        return margin

    def view(self, family: str) -> FamilyMargin:
        """``family``'s margin, samples and whether it is in use (its own, without
        the provider fallback ``margin`` applies)."""
        fam = self._families.get(family) or self._load(family)
        return self._view(family, fam, self._settings())

    def views(self) -> list[FamilyMargin]:
        """Every family the ledger holds (and this process has pending), by name."""
        try:
            stored = self.ledger.margin_read(None)
        except Exception as exc:  # a statistic: report what this process knows
            self._warn("read", exc)
            stored = None
        settings = self._settings()
        with self._lock:
            if stored is not None:
                now = self._clock()
                for name, bins in stored.items():
                    fam = self._families.get(name)
                    if fam is None:
                        fam = self._families[name] = _Family()
                    fam.stored, fam.loaded_at = dict(bins), now
                self._used.clear()
            names = sorted(self._families)
        return [self._view(n, self._families[n], settings) for n in names]

    def _view(self, family: str, fam: _Family, settings: EstimateMargin) -> FamilyMargin:
        with self._lock:
            merged = dict(fam.stored)
            for b, c in fam.pending.items():
                merged[b] = merged.get(b, 0) + c
        n = sum(merged.values())
        learned = Fraction(quantile_bin(merged, settings.quantile), MARGIN_RESOLUTION)
        cap = Fraction(settings.max)
        active = settings.enabled and n >= settings.min_samples
        used = min(learned, cap) if active else Fraction(0)
        return FamilyMargin(family, used, learned, n, active, active and learned > cap)

    def _load(self, family: str) -> _Family:
        """Read ``family`` and its provider's histograms from the ledger."""
        names = [family, provider_family(family)]
        try:
            stored = self.ledger.margin_read(names)
        except Exception as exc:
            self._warn("read", exc)
            stored = None
        with self._lock:
            for name in names:
                fam = self._families.get(name)
                if fam is None:
                    if len(self._families) >= _MAX_FAMILIES:
                        self._drop_idle()
                    fam = self._families[name] = _Family()
                fam.loaded_at = self._clock()  # a failed read is retried after REFRESH_SECONDS
                if stored is not None:
                    fam.stored = dict(stored.get(name, {}))
            self._used.pop(family, None)
            return self._families[family]

    def _drop_idle(self) -> None:
        """Forget families with nothing pending (they are read again when used)."""
        for name in [n for n, f in self._families.items() if not f.pending_n]:
            del self._families[name]
        self._used.clear()

    # -- learning ------------------------------------------------------------

    def observe(self, family: str, estimated: int, actual: int) -> None:
        """Count one settled call: the raw estimate and the billed prompt tokens."""
        settings = self._settings()
        if not settings.enabled or estimated <= 0 or actual <= 0:
            return
        b = margin_bin(estimated, actual)
        with self._lock:
            for name in (family, provider_family(family)):
                fam = self._families.get(name)
                if fam is None:
                    if len(self._families) >= _MAX_FAMILIES:
                        self._drop_idle()
                    fam = self._families[name] = _Family()
                fam.pending[b] = fam.pending.get(b, 0) + 1
                fam.pending_n += 1
            self._pending_total += 1
            due = (self._pending_total >= FLUSH_EVERY
                   or self._clock() - self._last_flush >= FLUSH_SECONDS)
        if due:
            self.flush()

    def flush(self) -> bool:
        """Merge every pending sample into the ledger now; False if it could not
        (they stay pending, and are tried again on the next flush)."""
        settings = self._settings()
        with self._lock:
            self._last_flush = self._clock()
            batch = {name: (fam.pending, fam.pending_n) for name, fam in self._families.items()
                     if fam.pending_n}
            for name in batch:
                fam = self._families[name]
                fam.pending, fam.pending_n = {}, 0
            self._pending_total = 0
        ok = True
        for name, (pending, count) in batch.items():
            try:
                merged = self.ledger.margin_merge(name, pending, settings.history)
            except Exception as exc:
                self._warn("store", exc)
                merged = None
            with self._lock:
                found = self._families.get(name)
                if found is None:
                    found = self._families[name] = _Family()
                fam = found
                if merged is None:  # put them back: learned here, stored later
                    for b, c in pending.items():
                        fam.pending[b] = fam.pending.get(b, 0) + c
                    fam.pending_n += count
                    if not name.endswith("/*"):
                        self._pending_total += count
                    ok = False
                else:
                    fam.stored, fam.loaded_at = dict(merged), self._clock()
        with self._lock:
            self._used.clear()
        return ok

    def _warn(self, what: str, exc: Exception) -> None:
        if not self._warned:  # once per guard: a ledger that is down says so elsewhere
            self._warned = True
            log.warning("crew-budget: could not %s estimate margins in the ledger %s (%s); "
                        "using what this process learned", what, self.ledger.url, exc)

    def pending(self) -> int:
        """Settles learned here and not yet merged into the ledger."""
        return self._pending_total


def apply_margin(raw: int, margin: Fraction) -> int:
    """``ceil(raw x (1 + margin))`` in integers."""
    # The numerator's sign is the Fraction's (its denominator is positive):
    # comparing a Fraction with 0 goes through its Python-level rich compare,
    # ~5x the cost of this test, on every preflight.
    if raw <= 0 or margin.numerator <= 0:
        return raw
    return raw + -(-raw * margin.numerator // margin.denominator)
