"""The ``crew-budget`` command line.

Each sub-command lives in its own module with a ``register(app)`` function;
typer and rich are imported here only, never by the library core.
"""

from __future__ import annotations

import importlib
from typing import Annotated

import typer

__all__ = ["app", "main"]

app = typer.Typer(
    name="crew-budget",
    help="Hard per-role dollar budgets for CrewAI, LangChain and LiteLLM agents.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain click help: flags read `--yes` (no `<bool>` placeholder), usage
    # errors are two plain lines with exit code 2, and nothing is boxed or cut
    # at 80 columns or in a pipe.
    rich_markup_mode=None,
)


def _print_version(value: bool) -> None:
    if value:
        from crew_budget import __version__

        typer.echo(f"crew-budget {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option(
        "--version", is_eager=True, callback=_print_version,
        help="Print the crew-budget version and exit.")] = False,
) -> None:
    """Hard per-role dollar budgets for CrewAI, LangChain and LiteLLM agents."""

# Order is the order of `crew-budget --help`.
_COMMAND_MODULES = ("demo", "status", "report", "estimate", "admin", "metrics", "export", "ops",
                    "limits", "serve", "suggest")
_registered = False


def _register_all() -> None:
    global _registered
    if _registered:
        return
    for name in _COMMAND_MODULES:
        module_name = f"crew_budget.cli.{name}"
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                continue
            raise
        module.register(app)
    _registered = True


def main() -> None:
    """Console-script entry point."""
    _register_all()
    app()


_register_all()
