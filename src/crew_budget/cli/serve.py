"""``crew-budget serve``: the live web dashboard over the configured ledger.

Binds 127.0.0.1 by default. Binding anything else exposes the books to the
network, so it needs a token (``--token`` or ``$CREW_BUDGET_SERVE_TOKEN``):
without one that is a usage error (exit 2), with one every request must
carry it. The dashboard only reads: see ``crew_budget.serve.app``.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import socket
from typing import Annotated

import typer

from crew_budget.cli.common import (
    EXIT_CONFIG,
    ConfigOption,
    LedgerOption,
    fail,
    ledger_name,
    open_guard,
)

__all__ = ["TOKEN_ENV", "is_loopback", "register"]

TOKEN_ENV = "CREW_BUDGET_SERVE_TOKEN"


def register(app: typer.Typer) -> None:
    """Add ``serve`` to the ``crew-budget`` app."""
    app.command("serve")(serve)


class _Stopped(Exception):
    """SIGTERM after uvicorn has shut down."""


def _stop_quietly(signum: int, frame: object) -> None:
    raise _Stopped


def is_loopback(host: str) -> bool:
    """``127.0.0.1``, ``::1``, any 127/8 address, or ``localhost``."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def serve(
    config: ConfigOption = None,
    ledger: LedgerOption = None,
    port: Annotated[int, typer.Option("--port", "-p", min=1, max=65535,
                                      help="Port to serve the dashboard on.")] = 8765,
    host: Annotated[str, typer.Option(
        "--host", help="Address to bind. Anything but the loopback needs --token.")] = (
        "127.0.0.1"
    ),
    token: Annotated[str | None, typer.Option(
        "--token", help=f"Require this token on every request (default: ${TOKEN_ENV}). "
        "Open /?token=TOKEN once in the browser, or send 'Authorization: Bearer TOKEN'.",
        show_default=False)] = None,
    interval: Annotated[float, typer.Option(
        "--interval", min=0.2, max=60.0, help="Seconds between live updates.")] = 1.0,
) -> None:
    """Serve a live, read-only web dashboard of every budget, spend and blocked call."""
    secret = token if token is not None else os.environ.get(TOKEN_ENV)
    if secret is not None and not secret.strip():
        secret = None
    if secret is None and not is_loopback(host):
        fail("serve", f"--host {host} would show the books to the network without a token; "
             f"pass --token TOKEN (or set {TOKEN_ENV}), or bind 127.0.0.1", EXIT_CONFIG)
    try:
        import uvicorn

        from crew_budget.serve.app import create_app
    except ImportError as exc:
        fail("serve", f"the dashboard needs {exc.name or 'starlette and uvicorn'}; "
             "pip install 'crew-budget[serve]'", EXIT_CONFIG)
    guard, _source = open_guard("serve", config, ledger)
    app = create_app(guard, token=secret, loopback_only=is_loopback(host), interval=interval)
    shown = f"[{host}]" if ":" in host else host
    # Bind here, not inside uvicorn: a taken port is then one clear line and exit 1,
    # before anything claims the dashboard is up.
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        guard.close()
        fail("serve", f"cannot listen on {shown}:{port} ({exc.strerror}); pick another "
             "--port or --host", 1)
    hint = " (open /?token=<token> once)" if secret else ""
    typer.echo(f"crew-budget serve: dashboard of {ledger_name(guard)} on "
               f"http://{shown}:{port}/{hint} (Ctrl-C to stop)", err=True)
    server = uvicorn.Server(uvicorn.Config(
        app, log_level="warning", access_log=False, timeout_graceful_shutdown=1,
        lifespan="off",
    ))
    # uvicorn handles SIGINT/SIGTERM itself, then re-raises the signal once it
    # has stopped: both are a normal stop here (exit 0, ledger closed).
    previous = signal.signal(signal.SIGTERM, _stop_quietly)
    try:
        server.run(sockets=[sock])
    except (KeyboardInterrupt, _Stopped):
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        guard.close()
