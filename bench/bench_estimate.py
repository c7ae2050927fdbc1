"""Estimator accuracy on real recorded traffic, and its speed in an agent loop.

    python bench/bench_estimate.py [reference-cassette-dir] [iterations]

1. Accuracy: for every call recorded in the VCR cassettes of the directory
   (default /work/shared/reference-cassettes; real OpenAI and Anthropic
   traffic, SSE streams included), the prompt tokens the provider billed
   (OpenAI ``prompt_tokens``; Anthropic ``input_tokens`` + cache reads +
   cache writes) next to crew-budget's estimate and ``litellm.token_counter``
   on the same request. Under-counting is what breaks a hard limit, so both
   directions are reported.
2. Speed: median time per estimate of a 20-turn, ~4k-token agent history
   with a warm per-message cache (the steady state of an agent loop), the
   same history plus one new message (one cache miss, what each loop step
   costs), and ``litellm.token_counter`` on the same history, interleaved in
   one run.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import agent_history, summary  # sets the offline env first
from crew_budget.errors import UnknownModelError
from crew_budget.estimate import Estimator
from crew_budget.pricing import Price, PriceBook

DEFAULT_DIR = Path("/work/shared/reference-cassettes")


def _billed(uri: str, text: str) -> int | None:
    """Prompt tokens the provider billed, from a JSON body or an SSE stream."""
    events: list[dict[str, Any]] = []
    if text.lstrip().startswith(("data:", "event:")):
        for line in text.splitlines():
            if line.startswith("data: {"):
                events.append(json.loads(line[6:]))
    else:
        events.append(json.loads(text))
    usage: dict[str, Any] = {}
    for event in events:
        found = event.get("usage") or (event.get("message") or {}).get("usage")
        if isinstance(found, dict):
            usage.update(found)
    if "openai.com" in uri:
        value = usage.get("prompt_tokens")
        return int(value) if value is not None else None
    if not usage:
        return None
    return sum(int(usage.get(k) or 0) for k in (
        "input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens"))


def _price(book: PriceBook, model: str, uri: str) -> Price:
    try:
        return book.get(model)
    except UnknownModelError:  # e.g. claude-3-5-haiku-latest left litellm's map
        provider = "anthropic" if "anthropic.com" in uri else "openai"
        return Price(model, provider, Decimal(0), Decimal(0))


def accuracy(directory: Path) -> None:
    import litellm

    book = PriceBook()
    rows: list[tuple[str, str, int, int, int]] = []
    for path in sorted(directory.glob("*.yaml")):
        import yaml

        data = yaml.safe_load(path.read_text())
        for interaction in data.get("interactions", []):
            uri = interaction["request"]["uri"]
            body = json.loads(interaction["request"]["body"])
            billed = _billed(uri, interaction["response"]["body"]["string"])
            if billed is None or "messages" not in body:
                continue
            model = body["model"]
            extra = {k: body[k] for k in ("tool_choice", "response_format", "functions",
                                          "function_call", "thinking") if k in body}
            ours = Estimator().count_prompt(model, _price(book, model, uri), body["messages"],
                                            body.get("tools"), system=body.get("system"),
                                            extra=extra)
            messages = list(body["messages"])
            if body.get("system"):
                system = body["system"]
                if isinstance(system, list):
                    system = "".join(b.get("text", "") for b in system)
                messages.insert(0, {"role": "system", "content": system})
            theirs = litellm.token_counter(model=model, messages=messages,
                                           tools=body.get("tools"))
            rows.append((path.name.replace("crewAI__", "")[:58], model, billed, ours, theirs))

    print(f"\n## Accuracy on {len(rows)} recorded calls ({directory})\n")
    print("| cassette | model | billed | crew-budget | error | litellm.token_counter | error |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, model, billed, ours, theirs in rows:
        print(f"| {name} | {model} | {billed} | {ours} | {_pct(ours, billed)} | {theirs} | "
              f"{_pct(theirs, billed)} |")
    for label, index in (("crew-budget", 3), ("litellm.token_counter", 4)):
        errors = [(r[index] - r[2]) / r[2] for r in rows]
        within = sum(abs(e) <= 0.01 for e in errors)
        under = sum(e < 0 for e in errors)
        print(f"\n{label}: within 1 % on {within}/{len(rows)}, under-counted {under}/{len(rows)}, "
              f"mean |error| {100 * statistics.fmean(abs(e) for e in errors):.1f} %, "
              f"worst under {100 * min(*errors, 0):.1f} %, "
              f"worst over {100 * max(*errors, 0):.1f} %")


def _pct(value: int, billed: int) -> str:
    return f"{100 * (value - billed) / billed:+.1f} %"


def speed(iterations: int) -> None:
    import litellm

    book = PriceBook()
    model = "gpt-4o"
    price = book.get(model)
    history = agent_history(20, tokens_per_message=250)  # ~4k prompt tokens
    est = Estimator()
    tokens = est.count_prompt(model, price, history)  # warms the cache and the tokenizer
    litellm.token_counter(model=model, messages=history)  # warm its encoding too

    warm: list[float] = []
    step: list[float] = []
    theirs: list[float] = []
    for i in range(iterations):  # interleaved, so machine noise hits all three alike
        t = time.perf_counter()
        est.count_prompt(model, price, history)
        warm.append(time.perf_counter() - t)

        new = {"role": "user", "content": f"Step {i}: check the latest figure and cite it."}
        t = time.perf_counter()
        est.count_prompt(model, price, [*history, new])
        step.append(time.perf_counter() - t)

        t = time.perf_counter()
        litellm.token_counter(model=model, messages=history)
        theirs.append(time.perf_counter() - t)

    print(f"\n## Speed: {len(history)}-message history, {tokens} prompt tokens, "
          f"{iterations} interleaved iterations\n")
    print("| per call | p50 us | p99 us | mean us |")
    print("|---|---:|---:|---:|")
    for label, samples in (("crew-budget, warm cache (history seen before)", warm),
                           ("crew-budget, history + 1 new message", step),
                           ("litellm.token_counter, same history", theirs)):
        s = summary(samples)
        print(f"| {label} | {s['p50']:.1f} | {s['p99']:.1f} | {s['mean']:.1f} |")
    ratio = statistics.median(theirs) / statistics.median(warm)
    print(f"\nlitellm.token_counter / crew-budget warm-cache median: {ratio:.0f}x")


def main() -> None:
    directory = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_DIR
    iterations = int(sys.argv[2]) if len(sys.argv) > 2 else 300
    if not directory.is_dir():
        print(f"reference cassettes not found at {directory}; pass their directory as the "
              "first argument: python bench/bench_estimate.py DIR [iterations]")
        raise SystemExit(0)
    accuracy(directory)
    speed(iterations)


if __name__ == "__main__":
    main()
