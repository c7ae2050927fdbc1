"""Per-message cache keys for the estimator (the memo).

An agent loop resends its whole history each call, so each message's count
is cached under a key built from its contents. Keys are tuples of the
message's strings (Python caches each ``str``'s hash); strings longer than
``_INLINE`` characters are keyed by (length, hash, first and last 32
characters) so the cache holds no large copies. ``_memoizable`` says which
message dicts are small and scalar enough to be remembered by identity too
(``Estimator._recent``), and ``_CONVO_SIZE`` bounds the whole-conversation
memo (``Estimator._convos``).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

# -- cache keys -------------------------------------------------------------

_INLINE = 256
_DICT = object()  # marks a frozen mapping, so {"a": 1} != [("a", 1)]


class _Uncacheable(Exception):
    pass


_MEMO_SIZE = 512
_NO_EXTRA: Mapping[str, Any] = MappingProxyType({})
_CONVO_SIZE = 64
_MEMO_CHARS = 16384


def _memoizable(msg: dict[Any, Any]) -> bool:
    """Only scalar values (a copy compares equal only while they are unchanged), small."""
    size = 0
    for v in msg.values():
        kind = type(v)
        if kind is str:
            size += len(v)
        elif v is not None and kind not in (int, float, bool):
            return False
    return size <= _MEMO_CHARS



def _freeze(value: Any) -> Any:
    kind = type(value)
    if kind is str:
        if len(value) <= _INLINE:
            return value
        return ("#", len(value), hash(value), value[:32], value[-32:])
    # Fast paths for plain JSON-like data (ABC isinstance checks are slow).
    if kind is dict:
        return (_DICT, *[(k, v if type(v) is str and len(v) <= _INLINE else _freeze(v))
                         for k, v in value.items()])
    if kind is list:
        return tuple([_freeze(v) for v in value])
    if value is None or kind in (int, float, bool):
        return value
    if isinstance(value, Mapping):
        return (_DICT, *[(k, _freeze(v)) for k, v in value.items()])
    if isinstance(value, (list, tuple)):
        return tuple([_freeze(v) for v in value])
    raise _Uncacheable

