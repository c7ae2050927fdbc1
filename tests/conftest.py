"""Test-wide setup: offline, no telemetry, and no ledger outside tmp.

These variables must be set before litellm, tiktoken or crewai is imported,
which is why they live at the top of the root conftest.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("CREWAI_DISABLE_TELEMETRY", "true")
os.environ.setdefault("CREWAI_DISABLE_TRACKING", "true")
os.environ.setdefault("OTEL_SDK_DISABLED", "true")
os.environ.setdefault("CREWAI_TRACING_ENABLED", "false")
os.environ.setdefault("LITELLM_TELEMETRY", "False")

pytest_plugins = [
    "tests.fixtures.redis_server", "tests.fixtures.redis_cluster", "tests.fixtures.ledgers",
]

ROOT = Path(__file__).resolve().parent.parent
CASSETTES = ROOT / "cassettes"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--record-mode",
        default=None,
        choices=["none", "once", "new_episodes", "all"],
        help="VCR.py record mode for cassette tests (default none = replay only; the others "
        "need real API keys, see cassettes/README.md). Sets CREW_BUDGET_RECORD_MODE.",
    )


def pytest_configure(config: pytest.Config) -> None:
    mode = config.getoption("--record-mode")
    if mode:
        os.environ["CREW_BUDGET_RECORD_MODE"] = mode


@pytest.fixture(autouse=True)
def _isolated_default_ledger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No test may write the user's real default ledger (nor its name cache)."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("CREW_BUDGET_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("CREW_BUDGET_LEDGER", raising=False)
    yield
