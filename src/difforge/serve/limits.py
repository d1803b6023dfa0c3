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


class BodyLimit:
    """ASGI middleware: bodies over `max_bytes` get 413, whether announced by
    Content-Length or streamed in chunks, before they are read into memory."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    def _too_large(self) -> HTTPError:
        return HTTPError(413, f"request body over this server's limit of {self.max_bytes} bytes")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            e = self._too_large() if length.isdigit() else HTTPError(400, "bad Content-Length header")
            body = json.dumps({"detail": e.detail}).encode()
            await send({"type": "http.response.start", "status": e.status,
                        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                    (b"connection", b"close")]})
            await send({"type": "http.response.body", "body": body})
            return
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise self._too_large()  # turned into a 413 by the app's HTTPError handler
            return message

        await self.app(scope, limited, send)
