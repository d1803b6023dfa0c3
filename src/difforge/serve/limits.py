"""Errors as one clear line, and the request body size limit."""

from __future__ import annotations

import json


class HTTPError(Exception):
    """An answer with a status code and a one-line `detail` (JSON {"detail": ...})."""

    def __init__(self, status: int, detail: str, headers: dict | None = None):
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, headers


def one_line(errors) -> str:
    """pydantic's error list (or any exception) as one line: `field: problem` (+ how many more)."""
    if isinstance(errors, BaseException):
        text = str(errors).strip()
        return text.splitlines()[0] if text else type(errors).__name__
    if not errors:
        return "invalid request"
    first = errors[0]
    loc = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
    msg = f"{loc}: {first.get('msg', 'invalid')}"
    if first.get("type") == "extra_forbidden":
        msg = f"{loc}: unknown field"
    if first.get("type") == "missing" and loc == "body":
        msg = "body: missing; send a JSON object"
    return msg + (f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else "")


class BodyTooLarge(Exception):
    """Raised from the wrapped `receive` once a streamed body passes the limit."""


def _holds(e: BaseException, kind: type) -> bool:
    """True if `e` is `kind` or an exception group (anyio task groups) holding one."""
    return isinstance(e, kind) or any(_holds(x, kind) for x in getattr(e, "exceptions", ()))


class BodyLimit:
    """ASGI middleware: bodies over `max_bytes` get 413, whether announced by
    Content-Length or streamed in chunks, before they are read into memory."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def _reply(self, send, status: int, detail: str) -> None:
        body = json.dumps({"detail": detail}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_large = f"request body over this server's limit of {self.max_bytes} bytes"
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and not length.isdigit():
            return await self._reply(send, 400, "bad Content-Length header")
        if length is not None and int(length) > self.max_bytes:
            return await self._reply(send, 413, too_large)
        seen, started = 0, False

        async def limited():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge(too_large)
            return message

        async def watched(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited, watched)
        except Exception as e:  # noqa: BLE001 - only our own exception is answered here
            if not _holds(e, BodyTooLarge) or started:
                raise
            await self._reply(send, 413, too_large)
