"""The dashboard's ASGI app: one page, its static assets, and two read-only feeds.

=====================  =====================================================
``GET /``              the page (``static/index.html``)
``GET /static/NAME``   its script, styles and the vendored uPlot chart library
``GET /api/snapshot``  everything the page shows, as JSON (``data.snapshot``)
``GET /api/events``    the same snapshot as Server-Sent Events, every second
=====================  =====================================================

Read-only by construction: every route is GET (HEAD), the middleware answers
any other method with 405 before a route is reached, and the only ledger
calls are ``guard.status()``, ``ledger.status()``, ``ledger.records()`` and
``ledger.now()``. Every asset is served from the package: the page works
with no network at all.

Access: with a token, every request must carry it (``Authorization: Bearer``,
or the ``crew_budget_token`` cookie that ``/?token=...`` sets once and then
redirects away from, so the token does not stay in the address bar or in
the history). Without one (only allowed on a loopback address, the CLI
enforces that) the ``Host`` header must name the loopback too, so a web page
elsewhere cannot read the books through DNS rebinding.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Awaitable, Callable, MutableMapping
from http.cookies import SimpleCookie
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlencode

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from crew_budget.serve.data import RecordWindow, snapshot

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from crew_budget.guard import Guard

__all__ = ["COOKIE", "create_app"]

COOKIE = "crew_budget_token"
_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})

# name -> media type; nothing outside this list is served from static/.
_ASSETS = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
    "uPlot.iife.min.js": "text/javascript; charset=utf-8",
    "uPlot.min.css": "text/css; charset=utf-8",
    "uPlot.LICENSE": "text/plain; charset=utf-8",
}
_SECURITY_HEADERS = [
    (b"content-security-policy",
     b"default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
     b"connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def _asset(name: str) -> bytes:
    return resources.files("crew_budget.serve").joinpath("static").joinpath(name).read_bytes()


class _Books:
    """One snapshot at a time, shared by every open page for ``max_age`` seconds.

    Ten open tabs polling every second must not mean ten ledger reads a
    second; the read itself runs in a worker thread (the ledgers are sync).
    """

    def __init__(self, guard: Guard, max_age: float) -> None:
        self.guard = guard
        self.max_age = max_age
        self._lock = anyio.Lock()
        self._at = -1e18
        self._body = b""
        self._ok = True
        self._window = RecordWindow()

    async def read(self) -> tuple[bool, bytes]:
        async with self._lock:
            if time.monotonic() - self._at >= self.max_age:
                self._ok, self._body = await anyio.to_thread.run_sync(self._read_now)
                self._at = time.monotonic()
            return self._ok, self._body

    def _read_now(self) -> tuple[bool, bytes]:
        from crew_budget.errors import CrewBudgetError
        from crew_budget.redact import redact_text

        try:
            data = snapshot(self.guard, self._window).to_dict()
        except CrewBudgetError as exc:  # ledger down: say so, keep serving
            return False, json.dumps({"error": redact_text(str(exc))}).encode()
        return True, json.dumps(data, separators=(",", ":")).encode()


class _Gate:
    """Read-only and access control, in front of every route (pure ASGI)."""

    def __init__(self, app: ASGIApp, token: str | None, check_host: bool) -> None:
        self.app = app
        self.token = token
        self.check_host = check_host
        # The cookie holds a digest of the token, not the token: any token text
        # is a valid cookie value, and the cookie jar never holds the secret.
        self.cookie = (hashlib.sha256(b"crew-budget serve\0" + token.encode()).hexdigest()
                       if token is not None else "")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":  # no route speaks it: refuse before any check
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope["type"] != "http":  # lifespan
            await self.app(scope, receive, send)
            return
        if scope["method"] not in ("GET", "HEAD"):
            await _plain(send, 405, "crew-budget serve is read-only: only GET is allowed",
                         [(b"allow", b"GET, HEAD")])
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        if self.check_host and _hostname(headers.get("host", "")) not in _LOOPBACK_HOSTS:
            await _plain(send, 403, "crew-budget serve answers only to 127.0.0.1/localhost "
                         "without a token; start it with --token to use another name")
            return
        if self.token is not None:
            query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
            offered = query.get("token", [None])[0]
            if offered is not None and _same(offered, self.token):
                # Trade the token in the URL for a cookie, then drop it from the URL.
                rest = {k: v for k, v in query.items() if k != "token"}
                location = scope["path"] + (f"?{urlencode(rest, doseq=True)}" if rest else "")
                cookie = f"{COOKIE}={self.cookie}; HttpOnly; SameSite=Strict; Path=/"
                await _plain(send, 303, "token accepted",
                             [(b"location", location.encode("latin-1")),
                              (b"set-cookie", cookie.encode("latin-1"))])
                return
            if not self._authorized(headers):
                await _plain(send, 401, "crew-budget serve: this dashboard needs its token: "
                             "open /?token=<token> once, or send 'Authorization: Bearer "
                             "<token>'", [(b"www-authenticate", b"Bearer")])
                return

        async def send_secure(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + _SECURITY_HEADERS
            await send(message)

        await self.app(scope, receive, send_secure)

    def _authorized(self, headers: dict[str, str]) -> bool:
        assert self.token is not None
        auth = headers.get("authorization", "")
        if auth[:7].lower() == "bearer " and _same(auth[7:].strip(), self.token):
            return True
        jar: SimpleCookie = SimpleCookie()
        try:
            jar.load(headers.get("cookie", ""))
        except Exception:  # a malformed Cookie header is just "no token"
            return False
        morsel = jar.get(COOKIE)
        return morsel is not None and _same(morsel.value, self.cookie)


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def _hostname(host: str) -> str:
    if host.startswith("["):
        return host[: host.find("]") + 1]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


async def _plain(send: Send, status: int, text: str,
                 headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = (text + "\n").encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                            (b"content-length", str(len(body)).encode()),
                            *_SECURITY_HEADERS, *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


def create_app(guard: Guard, *, token: str | None = None, loopback_only: bool = True,
               interval: float = 1.0) -> ASGIApp:
    """The dashboard over ``guard``'s ledger and budgets (never written to).

    ``token``: required on every request when given. ``loopback_only``: refuse
    requests whose ``Host`` is not 127.0.0.1/localhost/::1 (only checked
    without a token). ``interval``: seconds between live updates.
    """
    books = _Books(guard, max_age=interval / 2)

    async def page(request: Request) -> Response:
        return Response(_asset("index.html"), media_type=_ASSETS["index.html"])

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in _ASSETS:
            return Response("no such asset\n", status_code=404, media_type="text/plain")
        return Response(_asset(name), media_type=_ASSETS[name])

    async def api_snapshot(request: Request) -> Response:
        ok, body = await books.read()
        return Response(body, status_code=200 if ok else 503, media_type="application/json")

    async def api_events(request: Request) -> Response:
        async def stream() -> AsyncIterator[bytes]:
            while not await request.is_disconnected():
                ok, body = await books.read()
                yield (b"" if ok else b"event: ledger-error\n") + b"data: " + body + b"\n\n"
                await anyio.sleep(interval)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"x-accel-buffering": "no"})

    async def not_found(request: Request, exc: Exception) -> Response:
        return JSONResponse({"error": f"no such page: {request.url.path}"}, status_code=404)

    app = Starlette(routes=[
        Route("/", page, methods=["GET"]),
        Route("/static/{name}", static, methods=["GET"]),
        Route("/api/snapshot", api_snapshot, methods=["GET"]),
        Route("/api/events", api_events, methods=["GET"]),
    ], exception_handlers={404: not_found})
    return _Gate(app, token, check_host=loopback_only and token is None)
