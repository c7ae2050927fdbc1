"""Redaction: no password, token or API key is ever printed by crew-budget.

Ledger URLs carry passwords (``redis://default:PASSWORD@host:6379/0``),
webhook URLs carry tokens (``https://user:TOKEN@host/hook``, ``?token=...``,
Slack's ``/services/T.../B.../SECRET``) and webhook headers carry API keys
(``Authorization: Bearer ...``). Every one of them ends up, sooner or later,
in a message: a CLI line, an exception a user's code prints, a log record a
log shipper keeps for a year. So every place that shows a URL or a header
passes it through this module first, at the source; a logging filter alone
would not do, because exceptions are printed by code that is not ours.

- :func:`redact_url` keeps what a person needs to recognise the target
  (scheme, user name, host, port, database, file path) and replaces the
  secret parts with ``***``.
- :func:`redact_text` does the same to every URL, ``password=...``-style
  pair and ``Authorization: ...``-style header found inside free text, for
  messages that come from other libraries (redis-py, urllib, httpx, ...).
- :func:`redact_headers` replaces the values of credential headers.
- :class:`RedactingFilter` is a logging filter for handlers, as defence in
  depth.

Pure standard library, imported by the ground floor (``errors``, ``config``):
it must stay cheap and import nothing of crew-budget.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from urllib.parse import unquote_plus, urlsplit

__all__ = [
    "MASK",
    "RedactingFilter",
    "is_secret_name",
    "redact_headers",
    "redact_text",
    "redact_url",
]

MASK = "***"

# Query/fragment parameters and header names whose value is a credential.
# Names are compared lower-cased with "-" read as "_".
_SECRET_NAMES = frozenset({
    "password", "passwd", "pass", "pwd", "secret", "client_secret", "token", "access_token",
    "refresh_token", "id_token", "auth", "auth_token", "authorization", "proxy_authorization",
    "key", "api_key", "apikey", "x_api_key", "access_key", "secret_key", "private_key",
    "sig", "signature", "x_amz_signature", "x_amz_credential", "x_amz_security_token",
    "credential", "credentials", "session", "session_token", "sessionid", "cookie",
    "set_cookie", "x_auth_token", "x_access_token", "code",
})
# Any name containing one of these is a secret too (``slack_token``, ``db_password``, ...).
_SECRET_PARTS = ("password", "passwd", "secret", "token", "api_key", "apikey", "credential",
                 "signature", "private_key", "access_key", "cookie", "authorization")

# A URL inside free text: a scheme, "://", then anything up to whitespace,
# quotes or brackets that usually close a quotation in a message.
_URL_IN_TEXT = re.compile(r"""[A-Za-z][A-Za-z0-9+.\-]*://[^\s'"<>(){}|\\^`]+""")
_TRAILING = ".,;:!?)]"

_USERINFO_IN_TEXT = re.compile(r"""(?<=://)[^/\s@'"?#]+@""")

# ``password=x``, ``'Authorization': 'Bearer x'``, ``x-api-key: x`` in free text.
# Bare "key"/"sig"/"code" are secret only inside URLs: in prose they are too common.
_TEXT_NAMES = (
    r"proxy[-_]authorization|authorization|x[-_]api[-_]key|api[-_]key|apikey|x[-_]auth[-_]token"
    r"|x[-_]access[-_]token|set[-_]cookie|cookie|client[-_]secret|secret[-_]key|access[-_]key"
    r"|private[-_]key|access[-_]token|refresh[-_]token|id[-_]token|auth[-_]token"
    r"|session[-_]token|password|passwd|pwd|secret|token"
)
_PAIR_IN_TEXT = re.compile(
    r"(?P<name>\b(?:" + _TEXT_NAMES + r"))(?P<sep>['\"]?\s*[:=]\s*['\"]?)"
    r"(?:(?P<scheme>Bearer|Basic|Token|Digest|Negotiate|Bot)\s+)?(?P<value>[^\s'\",;&)}\]]+)",
    re.IGNORECASE,
)
_BEARER_IN_TEXT = re.compile(
    r"\b(?P<scheme>Bearer|Basic)\s+(?P<value>[A-Za-z0-9\-._~+/]{6,}=*)", re.IGNORECASE)

# A path segment of an http(s) URL that looks like a token (Slack and Discord
# webhooks, Telegram bot tokens): long, letters and digits mixed.
_TOKEN_SEGMENT = re.compile(r"^(?=[^/]*[0-9])(?=[^/]*[A-Za-z])[A-Za-z0-9_\-.~:%]{16,}$")
_WEB_SCHEMES = frozenset({"http", "https", "ws", "wss"})


def is_secret_name(name: str) -> bool:
    """Whether a query parameter or header called ``name`` holds a credential."""
    key = name.strip().lower().replace("-", "_")
    return key in _SECRET_NAMES or any(part in key for part in _SECRET_PARTS)


def _redact_pairs(text: str) -> str:
    """``a=1&token=x`` -> ``a=1&token=***``, keeping every other byte as it was."""
    if "=" not in text:
        return text
    out = []
    for piece in re.split(r"([&;])", text):
        name, eq, value = piece.partition("=")
        secret = eq and value and is_secret_name(unquote_plus(name))
        out.append(f"{name}={MASK}" if secret else piece)
    return "".join(out)


def _redact_netloc(netloc: str) -> str:
    if "@" not in netloc:
        return netloc
    userinfo, _, hostport = netloc.rpartition("@")
    if ":" in userinfo:
        user = userinfo.split(":", 1)[0]
        return f"{user}:{MASK}@{hostport}"
    # A lone userinfo is the password to redis-py and a token to most HTTP
    # services (https://TOKEN@host): never shown.
    return f"{MASK}@{hostport}"


def redact_url(url: str) -> str:
    """``url`` with its secrets replaced by ``***``; everything else kept.

    ``redis://default:pw@host:6379/0`` -> ``redis://default:***@host:6379/0``;
    ``redis://pw@host`` -> ``redis://***@host``; ``?password=``, ``?token=``,
    ``?api_key=``, ``?sig=`` ... values (also in the fragment, where OAuth
    puts ``access_token``); and, for http(s) URLs, token-like path segments
    (``hooks.slack.com/services/T0/B0/***``). Idempotent. A string that does
    not parse as a URL is redacted as free text.
    """
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an unbalanced "[" in the host
        return _redact_free(url)
    if not parts.scheme:
        return _redact_free(url)
    path = parts.path
    if parts.scheme.lower() in _WEB_SCHEMES and path:
        path = "/".join(MASK if _TOKEN_SEGMENT.match(seg) else seg for seg in path.split("/"))
    new = (_redact_netloc(parts.netloc), path, _redact_pairs(parts.query),
           _redact_pairs(parts.fragment))
    if new == (parts.netloc, parts.path, parts.query, parts.fragment):
        return url
    # Rebuilt by hand: urlunsplit would turn sqlite:///rel.db into sqlite:/rel.db.
    netloc, path, query, fragment = new
    rest = url[len(parts.scheme) + 1:]
    head = f"{parts.scheme}://{netloc}" if rest.startswith("//") else f"{parts.scheme}:"
    return (head + path + (f"?{query}" if "?" in rest else "")
            + (f"#{fragment}" if "#" in rest else ""))


def _url_match(match: re.Match[str]) -> str:
    found = match.group(0)
    stripped = found.rstrip(_TRAILING)
    # A ")" or "]" that closes an IPv6 host or a balanced pair belongs to the URL.
    while stripped != found and found[len(stripped)] in ")]" and (
        stripped.count("[") > stripped.count("]") or stripped.count("(") > stripped.count(")")
    ):
        stripped = found[: len(stripped) + 1]
    return redact_url(stripped) + found[len(stripped):]


def _pair_match(match: re.Match[str]) -> str:
    scheme = match.group("scheme")
    return f"{match.group('name')}{match.group('sep')}{scheme + ' ' if scheme else ''}{MASK}"


def _redact_free(text: str) -> str:
    if "@" in text:  # userinfo of a URL too broken to parse ("redis://u:pw@[::1")
        text = _USERINFO_IN_TEXT.sub(lambda m: _redact_netloc(m.group(0)), text)
    text = _PAIR_IN_TEXT.sub(_pair_match, text)
    return _BEARER_IN_TEXT.sub(_bearer_match, text)


def _bearer_match(match: re.Match[str]) -> str:
    value = match.group("value")
    # A credential, not prose ("Basic authentication"): digits, symbols or mixed case.
    if value.islower() and value.isalpha():
        return match.group(0)
    return f"{match.group('scheme')} {MASK}"


def redact_text(text: str) -> str:
    """Every URL and credential-looking pair inside ``text``, redacted.

    For messages we did not write (exceptions from redis-py, urllib, httpx,
    pydantic's "got ..." echo of a bad value) and for our own messages as a
    last line of defence. Idempotent; text without secrets comes back as is.
    """
    if "://" in text:
        text = _URL_IN_TEXT.sub(_url_match, text)
    return _redact_free(text)


def redact_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """A copy of ``headers`` with credential values (``Authorization``, keys, cookies) masked.

    ``Authorization: Bearer x`` becomes ``Bearer ***`` so the scheme is
    still visible when debugging a 401.
    """
    out: dict[str, str] = {}
    for name, value in headers.items():
        if is_secret_name(name):
            scheme, space, _ = str(value).strip().partition(" ")
            out[name] = f"{scheme} {MASK}" if space and scheme.isalpha() else MASK
        else:
            out[name] = redact_text(str(value))
    return out


class RedactingFilter(logging.Filter):
    """A logging filter that redacts each record's message and traceback.

    Attach it to a *handler* (``handler.addFilter(RedactingFilter())``): a
    handler filter sees every record that handler writes, whichever logger
    made it, while a logger's filter sees only records of that exact logger.
    crew-budget already redacts at the source; this catches what other
    libraries log.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact_text(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_text(record.exc_text)
        return True
