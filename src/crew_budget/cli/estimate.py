"""``crew-budget estimate`` and ``crew-budget cost``: the guard's arithmetic, offline.

``estimate`` answers "what would the guard reserve for this request?" for a
provider request body (OpenAI chat completions, OpenAI Responses or Anthropic
messages), or JSON Lines of them, using the same ``Guard.estimate`` that
``preflight`` uses. ``cost`` answers "what does this ``usage`` cost?" the way
``Guard.settle`` charges it. Neither touches a ledger or the network.

Like the other commands: ``--config``, else ``$CREW_BUDGET_CONFIG``, else
``./budgets.yaml``; errors are one line on stderr; exit 2 (a usage error, as
for a bad option) when the input cannot be read (malformed JSON, no
messages, no usage) or for a configuration problem (bad YAML, a model
without a price).

JSON Lines are a batch: a line that fails (bad JSON, no messages, a model
without a price) prints ``{"error": ..., "line": n}`` in its place and the
rest are still estimated, so one bad line never loses the batch; the exit
status is then 1 and stderr says how many failed. Each result says which
source priced the model and under what name (``price_source``,
``priced_as``); ``--provider`` / ``--base-url`` say where the requests go,
so that provider's prices apply (OpenRouter's, Bedrock's, ...).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from crew_budget.config import BudgetConfig, find_config, load_config
from crew_budget.errors import CrewBudgetError, PricingError
from crew_budget.money import from_nano, to_nano_round

__all__ = ["register"]

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", dir_okay=False,
                 help="Budget YAML (prices, output caps). Default: $CREW_BUDGET_CONFIG, else "
                      "./budgets.yaml if present, else built-in defaults."),
]
EXIT_INPUT, EXIT_CONFIG = 2, 2
#: A JSON Lines batch in which some requests failed (each printed in place):
#: not a usage error, the rest of the batch was answered.
EXIT_PARTIAL = 1

_EXTRA_KEYS = ("tool_choice", "functions", "function_call", "response_format", "output_format",
               "output_config", "thinking", "service_tier")

ProviderOption = Annotated[
    str | None,
    typer.Option("--provider", "-p",
                 help="Where the requests go (anthropic, openai, bedrock, vertex_ai, openrouter, "
                      "groq, ...): that provider's prices apply."),
]
BaseUrlOption = Annotated[
    str | None,
    typer.Option("--base-url",
                 help="The API base URL the requests are sent to (e.g. "
                      "https://openrouter.ai/api/v1); picks the provider when --provider is not "
                      "given."),
]


def register(app: typer.Typer) -> None:
    """Add ``estimate`` and ``cost`` to the ``crew-budget`` app."""
    app.command("estimate")(estimate)
    app.command("cost")(cost)


def estimate(
    config: ConfigOption = None,
    role: Annotated[str, typer.Option("--role", "-r", help="Role whose output cap applies.")] = (
        "default"
    ),
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="Model, when the request names none.")
    ] = None,
    provider: ProviderOption = None,
    base_url: BaseUrlOption = None,
) -> None:
    """Estimate a request read from stdin: prompt tokens, reserved output, dollars.

    Reads one OpenAI chat-completions or Anthropic messages request body, or
    JSON Lines of them, and prints one JSON result per request, in order.
    Output is reserved at the request's max_tokens / max_completion_tokens,
    or else at the role's max_output_tokens from the config. In JSON Lines a
    failing request prints {"error": ..., "line": n} in its place, the rest
    go on, and the exit status is 1.
    """
    from crew_budget.guard import Guard

    text = _stdin("estimate")
    cfg = _config("estimate", config)
    hint = provider or base_url
    try:
        guard = Guard(cfg, "memory://", start_alerts=False)
    except CrewBudgetError as exc:
        _fail("estimate", str(exc), EXIT_CONFIG)
    try:
        single = json.loads(text)
    except json.JSONDecodeError:
        pass
    else:  # one request: its error is the command's error, as before
        try:
            line = _estimate_one(guard, role, model, hint, "the request", single)
        except _Bad as exc:
            _fail("estimate", str(exc), EXIT_INPUT)
        except CrewBudgetError as exc:
            _fail("estimate", str(exc), EXIT_CONFIG)
        typer.echo(json.dumps(line))
        return
    rows = [(n, raw) for n, raw in enumerate(text.splitlines(), 1) if raw.strip()]
    if len(rows) == 1:  # one request that is not JSON: the command's error
        number, raw = rows[0]
        try:
            json.loads(raw)
        except json.JSONDecodeError as exc:
            _fail("estimate", f"stdin line {number} is not valid JSON (column {exc.colno}: "
                              f"{exc.msg}); send one request body, or one per line (JSON Lines)",
                  EXIT_INPUT)
    failed: list[tuple[int, str]] = []
    total = 0
    for number, raw in rows:
        total += 1
        try:
            try:
                body = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise _Bad(f"stdin line {number} is not valid JSON (column {exc.colno}: "
                           f"{exc.msg}); send one request body, or one per line (JSON Lines)"
                           ) from None
            result = _estimate_one(guard, role, model, hint, f"request on line {number}", body)
        except CrewBudgetError as exc:
            message = " ".join(str(exc).split())
            failed.append((number, message))
            result = {"error": message, "line": number}
        typer.echo(json.dumps(result))
    if failed:
        first_line, first = failed[0]
        _fail("estimate", f"{len(failed)} of {total} requests failed (each printed "
                          f'{{"error": ...}} in its place); first, line {first_line}: {first}',
              EXIT_PARTIAL)


def _estimate_one(guard: Any, role: str, model: str | None, provider: str | None, where: str,
                  body: Any) -> dict[str, Any]:
    """One request's estimate as the JSON object printed for it."""
    request = _request(where, body, model)
    est = guard.estimate(role, request["model"], request["messages"], request["tools"],
                         request["max_tokens"], system=request["system"],
                         extra=request["extra"], provider=provider)
    return {
        "model": est.model,
        "prompt_tokens": est.prompt_tokens,
        "output_tokens_reserved": est.output_tokens_reserved,
        "estimated_usd": _usd(est.amount),
        "price_source": est.price.source,
        "priced_as": est.price.model,
    }


def cost(
    model: Annotated[
        str | None,
        typer.Option("--model", "-m", help="Model whose price applies (default: JSON's model)."),
    ] = None,
    config: ConfigOption = None,
    provider: ProviderOption = None,
    base_url: BaseUrlOption = None,
) -> None:
    """Settled cost of a provider usage object (or whole response) read from stdin.

    Accepts OpenAI chat or Responses usage, Anthropic usage (with cache reads
    and writes), LangChain usage_metadata or Gemini usageMetadata, and prints
    the cost exactly as Guard.settle charges it.
    """
    from crew_budget.pricing import PriceBook
    from crew_budget.usage import cost_of, parse_usage

    text = _stdin("cost")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        _fail("cost", f"stdin is not valid JSON (line {exc.lineno}, column {exc.colno}: "
                      f"{exc.msg}); pipe a usage object such as "
                      '{"prompt_tokens": 10, "completion_tokens": 5}', EXIT_INPUT)
    name = model or (data.get("model") if isinstance(data, Mapping) else None)
    if not isinstance(name, str) or not name:
        _fail("cost", "no model given; pass --model (e.g. --model gpt-4o-mini)", EXIT_INPUT)
    cfg = _config("cost", config)
    try:
        usage = parse_usage(data)
    except CrewBudgetError as exc:
        _fail("cost", str(exc).split(". The call is charged")[0], EXIT_INPUT)
    try:
        price = PriceBook(cfg.prices).get(name, provider or base_url)
    except PricingError as exc:
        _fail("cost", str(exc), EXIT_CONFIG)
    settled = from_nano(to_nano_round(cost_of(usage, price)))
    typer.echo(json.dumps({
        "model": name,
        "cost_usd": _usd(settled),
        "input_tokens": usage.input_tokens,
        "cached_input_tokens": usage.cached_input_tokens,
        "cache_write_tokens": usage.cache_write_tokens,
        "output_tokens": usage.output_tokens,
        "reasoning_tokens": usage.reasoning_tokens,
        "price_source": price.source,
        "priced_as": price.model,
    }))


# -- helpers ------------------------------------------------------------------


def _fail(command: str, message: str, code: int) -> NoReturn:
    from crew_budget.redact import redact_text  # a config error may quote a ledger URL

    typer.echo(f"crew-budget {command}: error: {redact_text(' '.join(message.split()))}",
               err=True)
    raise typer.Exit(code=code)


def _usd(amount: Decimal) -> str:
    return f"{amount:f}"


def _stdin(command: str) -> str:
    stream = sys.stdin
    if stream is None or stream.isatty():
        _fail(command, f"reads JSON on stdin; run e.g. `crew-budget {command} < request.json`",
              EXIT_INPUT)
    text = stream.read()
    if not text.strip():
        _fail(command, "stdin is empty; pipe a JSON document into it", EXIT_INPUT)
    return text


def _config(command: str, path: Path | None) -> BudgetConfig:
    path = find_config(path)
    if path is None:
        return BudgetConfig()
    try:
        return load_config(path)
    except CrewBudgetError as exc:
        _fail(command, str(exc), EXIT_CONFIG)


def _request(where: str, body: Any, model: str | None) -> dict[str, Any]:
    if not isinstance(body, Mapping):
        raise _Bad(f"{where} is a JSON {type(body).__name__}, not an object; send an OpenAI "
                   "chat-completions or Anthropic messages request body")
    name = body.get("model") or model
    if not isinstance(name, str) or not name:
        raise _Bad(f'{where} names no model; add "model" to it or pass --model')
    messages = body.get("messages")
    system = body.get("system")
    if messages is None and "input" in body:  # OpenAI Responses API
        raw = body["input"]
        messages = [{"role": "user", "content": raw}] if isinstance(raw, str) else raw
        system = system or body.get("instructions")
    if not isinstance(messages, list) or not messages:
        raise _Bad(f'{where} has no messages; it needs a non-empty "messages" list '
                   "(OpenAI chat completions or Anthropic messages format)")
    tools = body.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise _Bad(f'{where}: "tools" must be a list')
    max_tokens = None
    for key in ("max_completion_tokens", "max_tokens", "max_output_tokens"):
        value = body.get(key)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise _Bad(f'{where}: "{key}" is {value!r}; it must be a positive integer')
            max_tokens = value
            break
    extra = {key: body[key] for key in _EXTRA_KEYS if body.get(key) is not None}
    return {"model": name, "messages": messages, "tools": tools, "max_tokens": max_tokens,
            "system": system, "extra": extra}


class _Bad(CrewBudgetError):
    """A request body the estimator cannot read."""
