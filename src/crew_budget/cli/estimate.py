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

_EXTRA_KEYS = ("tool_choice", "functions", "function_call", "response_format", "output_format",
               "thinking")


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
) -> None:
    """Estimate a request read from stdin: prompt tokens, reserved output, dollars.

    Reads one OpenAI chat-completions or Anthropic messages request body, or
    JSON Lines of them, and prints one JSON result per request, in order.
    Output is reserved at the request's max_tokens / max_completion_tokens,
    or else at the role's max_output_tokens from the config.
    """
    from crew_budget.guard import Guard

    bodies = _read_requests("estimate")
    cfg = _config("estimate", config)
    lines: list[str] = []
    try:
        guard = Guard(cfg, "memory://")
        for number, body in enumerate(bodies, 1):
            where = f"request {number}" if len(bodies) > 1 else "the request"
            request = _request(where, body, model)
            est = guard.estimate(role, request["model"], request["messages"], request["tools"],
                                 request["max_tokens"], system=request["system"],
                                 extra=request["extra"])
            lines.append(json.dumps({
                "model": est.model,
                "prompt_tokens": est.prompt_tokens,
                "output_tokens_reserved": est.output_tokens_reserved,
                "estimated_usd": _usd(est.amount),
            }))
    except _Bad as exc:
        _fail("estimate", str(exc), EXIT_INPUT)
    except CrewBudgetError as exc:
        _fail("estimate", str(exc), EXIT_CONFIG)
    for line in lines:
        typer.echo(line)


def cost(
    model: Annotated[
        str | None,
        typer.Option("--model", "-m", help="Model whose price applies (default: JSON's model)."),
    ] = None,
    config: ConfigOption = None,
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
        price = PriceBook(cfg.prices).get(name)
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


def _read_requests(command: str) -> list[Any]:
    """One JSON document, or JSON Lines (one request per non-empty line)."""
    text = _stdin(command)
    try:
        return [json.loads(text)]
    except json.JSONDecodeError:
        pass
    bodies: list[Any] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            bodies.append(json.loads(line))
        except json.JSONDecodeError as exc:
            _fail(command, f"stdin line {number} is not valid JSON (column {exc.colno}: "
                           f"{exc.msg}); send one request body, or one per line (JSON Lines)",
                  EXIT_INPUT)
    return bodies


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
