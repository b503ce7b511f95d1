"""A token bucket shared by the pod-creating threads: at most `qps` creates a second."""

from __future__ import annotations

import threading
import time


class RateLimiter:
    def __init__(self, qps: float, burst: int | None = None) -> None:
        self._interval = 1.0 / qps
        self._burst = burst if burst is not None else max(1, int(qps))
        self._tokens = float(self._burst)
        self._updated = time.monotonic()
        self._lock = threading.Lock()

    def acquire(self) -> None:
        """Block until a token is free."""
        while True:
            with self._lock:
                now = time.monotonic()
                self._tokens = min(self._burst,
                                   self._tokens + (now - self._updated) / self._interval)
                self._updated = now
                if self._tokens >= 1:
                    self._tokens -= 1
                    return
                wait = (1 - self._tokens) * self._interval
            time.sleep(wait)
