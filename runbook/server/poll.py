"""One deadline helper for every wait: a `time.monotonic()` deadline, elapsed and remaining time."""

from __future__ import annotations

import time


class Deadline:
    """A deadline `timeout_s` from now, on the monotonic clock."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.start = time.monotonic()
        self.at = self.start + timeout_s

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.start

    @property
    def remaining(self) -> float:
        return max(0.0, self.at - time.monotonic())

    @property
    def expired(self) -> bool:
        return time.monotonic() >= self.at

    def sleep(self, interval_s: float) -> None:
        """Sleep `interval_s`, never past the deadline."""
        time.sleep(max(0.0, min(interval_s, self.remaining)))
