"""The connection layer under the app (uvicorn's h11 protocol, bounded):

- at most `max_connections` open connections; one more is answered 503 (JSON) and closed;
- a request's headers and body must arrive within `read_timeout_s` of its first byte, or
  the connection is closed (slow clients cannot hold connections);
- malformed HTTP gets a JSON 400;
- shutdown drains: no new work, running work may finish within `drain_s`, then what is
  left is answered 503, before uvicorn's own grace period would cut it off with a 500.
"""

from __future__ import annotations

import asyncio
import json

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

_READING = (h11.IDLE, h11.SEND_BODY)  # the client's side while a request is still arriving


def _raw_json(status: int, reason: str, detail: str, extra: str = "") -> bytes:
    body = json.dumps({"detail": detail}).encode()
    head = (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            f"{extra}connection: close\r\n\r\n")
    return head.encode() + body


class BoundedH11(H11Protocol):
    """uvicorn's h11 protocol with a connection cap and a read timeout (class attributes,
    set by `protocol_for`)."""

    max_connections = 64
    read_timeout_s = 30.0
    retry_after_s = 2

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._read_timer: asyncio.TimerHandle | None = None
        if len(self.connections) > self.max_connections:
            transport.write(_raw_json(503, "Service Unavailable",
                                      f"busy: over {self.max_connections} open connections; retry later",
                                      f"retry-after: {self.retry_after_s}\r\n"))
            transport.close()
            return
        self._start_timer()  # the first request must arrive in time too

    def _start_timer(self) -> None:
        if self._read_timer is None:
            self._read_timer = self.loop.call_later(self.read_timeout_s, self._too_slow)

    def data_received(self, data: bytes) -> None:
        if self.conn.their_state in _READING:  # a request (the next one, on a kept-alive connection) begins
            self._start_timer()
        super().data_received(data)
        if self.conn.their_state not in _READING:  # the whole request is in (or the connection ended)
            self._stop_timer()

    def on_response_complete(self) -> None:
        self._stop_timer()
        super().on_response_complete()

    def connection_lost(self, exc) -> None:
        self._stop_timer()
        super().connection_lost(exc)

    def _stop_timer(self) -> None:
        if getattr(self, "_read_timer", None) is not None:
            self._read_timer.cancel()
            self._read_timer = None

    def _too_slow(self) -> None:
        self._read_timer = None
        if self.conn.their_state in _READING and not self.transport.is_closing():
            if self.cycle is None or self.cycle.response_complete:  # no answer under way: say why
                self.transport.write(_raw_json(408, "Request Timeout",
                                               f"request not received within {self.read_timeout_s:g} s"))
            self.transport.close()

    def send_400_response(self, msg: str) -> None:
        self.transport.write(_raw_json(400, "Bad Request", f"malformed HTTP request: {msg}"))
        self.transport.close()


def protocol_for(config) -> type[BoundedH11]:
    """A `BoundedH11` class with this server's limits."""
    return type("BoundedH11", (BoundedH11,), {"max_connections": config.max_connections,
                                              "read_timeout_s": config.read_timeout_s,
                                              "retry_after_s": config.retry_after_s})


class DrainingServer(uvicorn.Server):
    """uvicorn's server that drains the engine before it closes connections."""

    def __init__(self, config: uvicorn.Config, engine, drain_s: float):
        super().__init__(config)
        self.engine, self.drain_s = engine, drain_s

    async def shutdown(self, sockets=None) -> None:
        # stop listening first, then let running work end (or be answered 503) before connections close
        for server in getattr(self, "servers", []):
            server.close()
        await asyncio.to_thread(self.engine.drain, self.drain_s)
        await super().shutdown(sockets)


def make_server(app, host: str, port: int, config, log_level: str = "warning") -> DrainingServer:
    """The uvicorn server for `app` (from `create_app`) with this server's connection limits."""
    cfg = uvicorn.Config(app, host=host, port=port, log_level=log_level, http=protocol_for(config),
                         timeout_graceful_shutdown=config.drain_s + 5, timeout_keep_alive=5)
    return DrainingServer(cfg, app.state.engine, config.drain_s)
