"""Replaying the CrewAI cassettes, and reading them independently of our code.

``replay(name)`` plays ``cassettes/crewai/<name>.yaml`` with VCR.py, matching
on method and URL only (the prompts CrewAI builds change between versions;
the order of calls is what a scenario scripts). The cassette object it yields
has ``live``: every request the code under test actually sent, in order, so a
test can assert on the body that went over the wire (``max_tokens`` injected,
``stop_sequences``, ``tools``).

``cassette_usage(name)`` reads each interaction's ``usage`` straight from the
recorded JSON or SSE stream, the way a provider's invoice would count it, so
the tests' expected dollars never come from crew-budget's own parsing.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import vcr
import yaml
from vcr.cassette import Cassette

from tests.fixtures.http_replay import SECRET_HEADERS, install_live_capture, record_mode

ROOT = Path(__file__).resolve().parents[2]
CASSETTE_DIR = ROOT / "cassettes" / "crewai"

def _scrub_response(response: dict[str, Any]) -> dict[str, Any]:
    """Drop account-identifying response headers when (re-)recording."""
    headers = response.get("headers") or {}
    for name in list(headers):
        if name.lower() in SECRET_HEADERS:
            del headers[name]
    return response


def recorder(mode: str | None = None) -> vcr.VCR:
    return vcr.VCR(
        cassette_library_dir=str(CASSETTE_DIR),
        match_on=["method", "scheme", "host", "path"],
        record_mode=mode or record_mode(),
        filter_headers=SECRET_HEADERS,
        before_record_response=_scrub_response,
        decode_compressed_response=True,
    )


@contextmanager
def replay(name: str, mode: str | None = None) -> Iterator[Cassette]:
    install_live_capture()
    with recorder(mode).use_cassette(f"{name}.yaml") as cassette:
        cassette.__dict__.setdefault("live", [])
        yield cassette


def live_bodies(cassette: Cassette) -> list[dict[str, Any]]:
    """JSON bodies of the requests the code actually sent, in order."""
    out = []
    for request in cassette.__dict__.get("live", []):
        body = request.body
        if isinstance(body, bytes):
            body = body.decode()
        out.append(json.loads(body))
    return out


def load(name: str) -> dict[str, Any]:
    with (CASSETTE_DIR / f"{name}.yaml").open(encoding="utf-8") as fh:
        data: dict[str, Any] = yaml.safe_load(fh)
    return data


def cassette_usage(name: str) -> list[dict[str, Any] | None]:
    """The ``usage`` object of each interaction, as the provider sent it.

    OpenAI JSON: ``usage``. OpenAI SSE: the usage of the final chunk (None
    if the stream has none). Anthropic JSON: ``usage``. Anthropic SSE: the
    ``message_start`` usage updated by the ``message_delta`` usage (which
    carries the final ``output_tokens``).
    """
    out: list[dict[str, Any] | None] = []
    for interaction in load(name)["interactions"]:
        text = interaction["response"]["body"]["string"]
        if isinstance(text, bytes):
            text = text.decode()
        stripped = text.lstrip()
        if stripped.startswith("{"):
            out.append(json.loads(text).get("usage"))
            continue
        usage: dict[str, Any] | None = None
        for line in text.splitlines():
            if not line.startswith("data:"):
                continue
            payload = line[5:].strip()
            if payload == "[DONE]":
                continue
            event = json.loads(payload)
            if event.get("type") == "message_start":
                usage = dict(event["message"]["usage"])
            elif event.get("type") == "message_delta":
                usage = {**(usage or {}), **event["usage"]}
            elif event.get("object") == "chat.completion.chunk" and event.get("usage"):
                usage = event["usage"]
        out.append(usage)
    return out
