"""The ``crew-budget`` command line.

Each sub-command lives in its own module with a ``register(app)`` function;
typer and rich are imported here only, never by the library core.

Start-up is part of every command's wall time (``crew-budget report`` is
often run from scripts and dashboards), so ``main`` imports only the module
of the command on its command line (``_COMMANDS``); ``--help``, a typo or a
command of a module not listed there registers them all. Reading
``crew_budget.cli.app`` (tests, embedding) also registers them all.
"""

from __future__ import annotations

import importlib
import sys
from typing import Annotated

import typer

__all__ = ["app", "main"]

_app = typer.Typer(
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


@_app.callback()
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
        _register(name)
    _registered = True


# The command names each module registers, for ``main``'s one-module start.
# A module missing here (or a command missing from its entry) still works:
# its command line falls back to registering every module.
_COMMANDS = {
    "demo": "demo", "status": "status", "watch": "status", "report": "report",
    "estimate": "estimate", "cost": "estimate", "validate": "admin", "reset": "admin",
    "metrics": "metrics", "export": "export", "recover": "ops", "doctor": "ops",
    "set": "limits", "pause": "limits", "resume": "limits", "serve": "serve",
    "suggest": "suggest",
}
_loaded: set[str] = set()


def _register(name: str) -> None:
    """Import one command module and add its commands (once)."""
    if name in _loaded:
        return
    _loaded.add(name)
    module_name = f"crew_budget.cli.{name}"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            return
        raise
    module.register(_app)


def __getattr__(name: str) -> typer.Typer:
    """``crew_budget.cli.app``: the app with every command (made on first use)."""
    if name == "app":
        _register_all()
        return _app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _command(argv: list[str]) -> str | None:
    """The sub-command named on ``argv`` (options before it are all flags)."""
    for arg in argv:
        if not arg.startswith("-"):
            return arg
    return None


def main() -> None:
    """Console-script entry point: registers only the command it runs."""
    module = _COMMANDS.get(_command(sys.argv[1:]) or "")
    if module in _COMMAND_MODULES:
        _register(module)
    else:
        _register_all()
    _app()
