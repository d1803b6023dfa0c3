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


async def reply(send, status: int, detail: str, headers: dict | None = None) -> None:
    """A JSON error answer straight from ASGI middleware."""
    body = json.dumps({"detail": detail}).encode()
    extra = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *extra]})
    await send({"type": "http.response.body", "body": body})


class BodyTooLarge(Exception):
    """Raised from the wrapped `receive` once a streamed body passes the limit."""


class BodyLimit:
    """ASGI middleware: bodies over `max_bytes` get 413, whether announced by
    Content-Length or streamed in chunks, before they are read into memory. Once a chunked
    body passes the limit, whatever the route answers instead (a parse error, say) is
    replaced by the 413."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_large = f"request body over this server's limit of {self.max_bytes} bytes"
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and not length.isdigit():
            return await reply(send, 400, "bad Content-Length header", {"Connection": "close"})
        if length is not None and int(length) > self.max_bytes:
            return await reply(send, 413, too_large, {"Connection": "close"})
        seen, started, over = 0, False, False

        async def limited():
            nonlocal seen, over
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    over = True
                    raise BodyTooLarge(too_large)
            return message

        async def watched(message):
            nonlocal started
            if over and not started:  # the route's answer to a cut-off body: replaced by the 413
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited, watched)
        except Exception:  # noqa: BLE001 - answered below when it came from the cut-off body
            if not over or started:
                raise
        if over and not started:
            await reply(send, 413, too_large, {"Connection": "close"})
