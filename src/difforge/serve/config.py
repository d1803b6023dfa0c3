"""Limits of the HTTP service, and the rule that a non-loopback bind needs a token."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass


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
    /v1/* and /metrics need `Authorization: Bearer <token>`.
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

    def __post_init__(self) -> None:
        for name in ("max_n", "max_steps", "max_body_bytes", "queue_size", "max_batch", "retry_after_s", "preview_frames"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {self.timeout_s}")
        if self.batch_window_s < 0:
            raise ValueError(f"batch_window_s must be >= 0, got {self.batch_window_s}")
        if self.token is not None and len(self.token) < 8:
            raise ValueError("the token must be at least 8 characters long")


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
        raise ValueError(f"binding to {host} exposes the model beyond this machine: give --token "
                         f"(or DIFFORGE_TOKEN), or bind to 127.0.0.1")
