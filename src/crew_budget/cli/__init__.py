"""The ``crew-budget`` command line.

Each sub-command lives in its own module with a ``register(app)`` function;
typer and rich are imported here only, never by the library core.
"""

from __future__ import annotations

import importlib

import typer

__all__ = ["app", "main"]

app = typer.Typer(
    name="crew-budget",
    help="Hard per-role dollar budgets for CrewAI, LangChain and LiteLLM agents.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Order is the order of `crew-budget --help`.
_COMMAND_MODULES = ("demo", "status", "report", "estimate", "admin", "metrics", "export", "ops",
                    "serve")
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
