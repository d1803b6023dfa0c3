"""What every request passes before a route sees it (pure ASGI middleware, no body read):
its Host, its Origin, its token, and the headers every answer carries; and the metrics
that count every answer, refusals included, with labels from fixed sets.

- Host: only the names the server was bound to (`ServeConfig.allowed_hosts`, `--allowed-host`)
  are answered, so a page whose own name resolves to this machine (DNS rebinding) gets 400.
- Origin: a request that changes anything (POST) sent by a browser from another origin
  gets 403: a page elsewhere cannot make this server work for it, even with a form.
- Token: checked from the headers, before any body is read.
"""

from __future__ import annotations

import hmac
import time
from urllib.parse import urlsplit

from difforge.serve.config import host_name
from difforge.serve.limits import reply

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})
PAGE_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; connect-src 'self'; "
            "frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
DOCS_CSP = ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
            "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
API_CSP = "default-src 'none'; frame-ancestors 'none'"


def _header(scope, name: bytes) -> str | None:
    for k, v in scope.get("headers") or ():
        if k == name:
            return v.decode("latin-1")
    return None


def token_ok(config, authorization: str | None) -> bool:
    """True when no token is configured, or `Authorization: Bearer <token>` matches it."""
    if config.token is None:
        return True
    scheme, _, given = (authorization or "").strip().partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), config.token.encode())


def needs_token(path: str) -> bool:
    return path.startswith("/v1/") or path == "/metrics"


def _csp(path: str) -> str:
    if path == "/" or path.startswith("/static/"):
        return PAGE_CSP
    if path == "/docs" or path.startswith("/docs/"):
        return DOCS_CSP
    return API_CSP


class Guard:
    """Host and Origin checks, the token, and security headers on every answer."""

    def __init__(self, app, config):
        self.app, self.config = app, config
        self.hosts = None if config.allowed_hosts is None else frozenset(config.allowed_hosts)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        security = [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
                    (b"referrer-policy", b"no-referrer"), (b"content-security-policy", _csp(path).encode())]

        async def secured(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *security]}
            await send(message)

        host = _header(scope, b"host")
        if host is None:
            return await reply(secured, 400, "no Host header: this server answers only requests that name it")
        if self.hosts is not None and host_name(host) not in self.hosts:
            shown = host_name(host)[:100]
            return await reply(secured, 400, f"Host {shown!r} is not a name of this server; "
                                             f"start it with --allowed-host {shown} to answer it")
        origin = _header(scope, b"origin")
        if scope.get("method") not in SAFE_METHODS and origin is not None:
            parts = urlsplit(origin) if origin != "null" else None
            if parts is None or parts.netloc.lower() != host.strip().lower():
                return await reply(secured, 403, f"cross-origin request refused: Origin {origin[:100]!r} "
                                                 f"is not this server's")
        if needs_token(path) and not token_ok(self.config, _header(scope, b"authorization")):
            return await reply(secured, 401, "missing or wrong token: send 'Authorization: Bearer <token>'",
                               {"WWW-Authenticate": "Bearer"})
        await self.app(scope, receive, secured)


class Observe:
    """Counts every answer by route, method and status, with bounded labels: methods
    outside a fixed set count as "other", paths that are not routes as "other"."""

    def __init__(self, app, metrics, routes: frozenset[str]):
        self.app, self.metrics, self.routes = app, metrics, routes

    def _route(self, path: str) -> str:
        if path in self.routes:
            return path
        for prefix in ("/static/", "/docs/"):
            if path.startswith(prefix):
                return prefix.rstrip("/")
        return "other"

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), None

        async def watched(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, watched)
        except BaseException:
            status = status or 500
            raise
        finally:
            route = self._route(scope.get("path", ""))
            method = scope.get("method", "") if scope.get("method") in METHODS else "other"
            self.metrics.requests.labels(route=route, method=method, status=str(status or 499)).inc()
            self.metrics.latency.labels(route=route).observe(time.perf_counter() - start)
