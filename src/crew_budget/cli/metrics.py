"""``crew-budget metrics``: serve Prometheus metrics for a ledger.

Budget gauges are read from the ledger at each scrape; call counters and the
actual/estimate histogram count the spend records every process appends
(from the moment the server starts). ``--once`` prints one scrape, with
counters over every spend record the ledger still holds, and exits.
"""

from __future__ import annotations

import signal
import threading
from typing import Annotated, Any

import typer

from crew_budget.cli.common import (
    EXIT_CONFIG,
    ConfigOption,
    LedgerOption,
    fail,
    ledger_name,
    open_guard,
)

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    """Add ``metrics`` to the ``crew-budget`` app."""
    app.command("metrics")(metrics)


def metrics(
    config: ConfigOption = None,
    ledger: LedgerOption = None,
    port: Annotated[int, typer.Option("--port", "-p", min=0, max=65535,
                                      help="Port to serve /metrics on.")] = 9464,
    host: Annotated[str, typer.Option("--host", help="Address to bind (0.0.0.0 for all).")] = (
        "127.0.0.1"
    ),
    once: Annotated[bool, typer.Option(
        "--once", help="Print one scrape to stdout and exit (counters cover every retained "
        "spend record).")] = False,
) -> None:
    """Serve Prometheus metrics (budgets, calls, estimate accuracy) until stopped."""
    from crew_budget.errors import CrewBudgetError
    from crew_budget.metrics import register_metrics, serve_metrics

    guard, _source = open_guard("metrics", config, ledger)
    try:
        if once:
            from prometheus_client import CollectorRegistry, generate_latest

            registry = CollectorRegistry()
            register_metrics(guard, registry, source="ledger", since=0.0)
            typer.echo(generate_latest(registry).decode(), nl=False)
            return
        server, _collector = serve_metrics(guard, port, host)
    except ImportError:
        fail("metrics", "prometheus_client is not installed; pip install "
             "'crew-budget[metrics]'", EXIT_CONFIG)
    except OSError as exc:
        fail("metrics", f"cannot listen on {host}:{port} ({exc.strerror}); pick another "
             "--port", 1)
    except CrewBudgetError as exc:
        fail("metrics", str(exc), EXIT_CONFIG)
    bound = server.server_address[1]
    typer.echo(f"crew-budget metrics: serving {ledger_name(guard)} on "
               f"http://{host}:{bound}/metrics (Ctrl-C to stop)", err=True)
    stop = threading.Event()

    def _stop(*_: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    try:
        while not stop.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
        server.server_close()
        guard.close()
