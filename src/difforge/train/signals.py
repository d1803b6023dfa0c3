"""Graceful stop: SIGTERM (what schedulers and torchrun send before a kill) and Ctrl-C
set a flag; the loop finishes its step, checkpoints and exits. A second signal stops now."""

from __future__ import annotations

import signal


class StopFlag:
    """Context manager: `signum` is set by the first SIGTERM/SIGINT received inside it."""

    def __init__(self):
        self.signum: int | None = None
        self._old = {}

    def __enter__(self):
        for s in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum, frame):
        if self.signum is not None:  # second signal: stop now
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)
