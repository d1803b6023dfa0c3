"""Limits of the HTTP service, and the rule that a non-loopback bind needs a token."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
WILDCARDS = ("0.0.0.0", "::", "")


@dataclass(frozen=True)
class ServeConfig:
    """What one server accepts and how it schedules work.

    max_n: images per request. max_steps: sampler steps per request (ddpm's default of
    every timestep counts as the schedule's length). max_body_bytes: request bodies larger
    than this get 413. timeout_s: a request not answered within this (queue wait included)
    gets 504 and its work is dropped. queue_size: jobs waiting for the device; one more
    gets 503 with Retry-After. max_batch: images sampled together in one batch (requests
    with the same sampler settings are merged up to it). batch_window_s: how long the
    worker waits for more requests to merge before it starts a batch. token: when set,
    /v1/* and /metrics need `Authorization: Bearer <token>` (surrounding whitespace, as a
    token file's newline, is dropped). allowed_hosts: the names a request's Host header may
    give (DNS-rebinding guard); None accepts any. max_connections: open connections at
    once; more get 503 and are closed. read_timeout_s: a request's headers and body must
    arrive within this. drain_s: at shutdown, running work may finish within this; then
    503. keepalive_s: an event stream sends a comment this often while it waits.
    max_prompt_chars: characters per prompt (and negative prompt) of a text-to-image
    model; the model's own token limit applies as well.
    """

    max_n: int = 16
    max_steps: int = 1000
    max_body_bytes: int = 4 * 1024 * 1024
    timeout_s: float = 120.0
    queue_size: int = 32
    max_batch: int = 32
    batch_window_s: float = 0.01
    retry_after_s: int = 2
    token: str | None = None
    preview_frames: int = 20
    allowed_hosts: tuple[str, ...] | None = LOOPBACK_NAMES
    max_connections: int = 64
    read_timeout_s: float = 30.0
    drain_s: float = 10.0
    keepalive_s: float = 15.0
    max_prompt_chars: int = 200

    def __post_init__(self) -> None:
        for name in ("max_n", "max_steps", "max_body_bytes", "queue_size", "max_batch", "retry_after_s",
                     "preview_frames", "max_connections", "max_prompt_chars"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("timeout_s", "read_timeout_s", "keepalive_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("batch_window_s", "drain_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.token is not None:
            token = self.token.strip()
            if len(token) < 8:
                raise ValueError("the token must be at least 8 characters long")
            if any(not (33 <= ord(ch) <= 126) for ch in token):
                raise ValueError("the token must be printable ASCII without spaces (it travels in a header)")
            object.__setattr__(self, "token", token)
        if self.allowed_hosts is not None:
            object.__setattr__(self, "allowed_hosts", tuple(host_name(h) for h in self.allowed_hosts))


def host_name(host: str) -> str:
    """A host as Host headers and binds spell it -> one form: lower case, no port, no
    brackets, no trailing dot ("[::1]:8000" -> "::1", "LocalHost.:80" -> "localhost")."""
    host = host.strip().lower()
    if host.startswith("["):  # [v6] or [v6]:port
        host = host[1:].split("]", 1)[0]
    elif host.count(":") == 1:  # name:port or v4:port
        host = host.split(":", 1)[0]
    return host.rstrip(".")


def hosts_for_bind(host: str, extra: tuple[str, ...] = ()) -> tuple[str, ...] | None:
    """The Host names a server bound to `host` answers to: the loopback names, the bound
    address and `extra`; None (any) for a wildcard bind without `extra`."""
    if host_name(host) in WILDCARDS and not extra:
        return None
    names = [*LOOPBACK_NAMES, *([] if host_name(host) in WILDCARDS else [host]), *extra]
    return tuple(dict.fromkeys(host_name(h) for h in names))


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1)."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """Refuse to listen beyond this machine without a token."""
    if not is_loopback(host) and not token:
        raise ValueError(f"binding to {host} exposes the model beyond this machine: give --token-file FILE "
                         f"(or DIFFORGE_TOKEN), or bind to 127.0.0.1")
