"""Both of redis-py's reply parsers, for tests that drive a real redis-server.

The Redis ledger talks to Redis only through redis-py's public client, which
parses replies with hiredis when it is installed (``crew-budget[redis]``
brings it) and with its pure-Python parser otherwise. Users run either, so
the Redis tests run on both: ``redis_ledger(url, parser)`` makes a ledger
whose client uses that parser. Picking the parser needs redis-py's parser
classes, which are private to redis-py; only the tests name them.
"""

from __future__ import annotations

from typing import Any

import redis.utils

from crew_budget.ledger.redis import RedisLedger

PARSERS = ["hiredis", "python"]


def parser_class(parser: str) -> Any:
    """redis-py's parser class for ``parser`` ("hiredis" or "python")."""
    from redis._parsers import _HiredisParser, _RESP2Parser

    if parser == "hiredis":
        # Fails, never skips: the hiredis run must really run.
        assert redis.utils.HIREDIS_AVAILABLE, (
            "hiredis is not installed, so the hiredis half of the Redis tests cannot run. "
            "Fix: pip install 'crew-budget[dev]' (it brings redis[hiredis])"
        )
        return _HiredisParser
    assert parser == "python", parser
    return _RESP2Parser


def redis_ledger(url: str, parser: str, **options: Any) -> RedisLedger:
    """A ``RedisLedger`` on ``url`` whose client parses replies with ``parser``.

    Set before the client is made (on first use): every connection of its
    pool gets the parser, which ``used_parser`` reads back.
    """
    ledger = RedisLedger(url, **options)
    ledger._options["parser_class"] = parser_class(parser)
    return ledger


def used_parser(ledger: RedisLedger) -> str:
    """Which parser the ledger's client was made with ("hiredis" or "python")."""
    client = ledger._client
    assert client is not None, "the ledger has not connected yet"
    kind = client.connection_pool.connection_kwargs["parser_class"]
    return "hiredis" if kind is parser_class("hiredis") else "python"
