"""A latency probe: PING on a second connection while a change runs, to show its impact."""

from __future__ import annotations

import statistics
import threading
import time
from dataclasses import dataclass
from types import TracebackType

import redis


@dataclass(frozen=True)
class LatencyStats:
    """Latency samples (seconds since the probe started, milliseconds) and their summary."""

    samples: tuple[tuple[float, float], ...]
    errors: int

    @property
    def count(self) -> int:
        return len(self.samples)

    def percentile(self, q: float) -> float:
        values = sorted(ms for _, ms in self.samples)
        if not values:
            return float("nan")
        return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]

    def summary(self) -> dict[str, float | int]:
        values = [ms for _, ms in self.samples]
        return {
            "samples": len(values),
            "errors": self.errors,
            "p50_ms": round(statistics.median(values), 3) if values else float("nan"),
            "p99_ms": round(self.percentile(99), 3),
            "max_ms": round(max(values), 3) if values else float("nan"),
        }


class LatencyProbe:
    """PING every `interval_s` on its own connection until stopped (use as a context manager)."""

    def __init__(self, client: redis.Redis, interval_s: float = 0.005) -> None:
        kwargs = dict(client.connection_pool.connection_kwargs)
        self._client = redis.Redis(connection_pool=redis.ConnectionPool(
            connection_class=client.connection_pool.connection_class, **kwargs))
        self._interval = interval_s
        self._stop = threading.Event()
        self._samples: list[tuple[float, float]] = []
        self._errors = 0
        self._thread = threading.Thread(target=self._loop, name="latency-probe", daemon=True)
        self._t0 = 0.0

    def _loop(self) -> None:
        while not self._stop.is_set():
            start = time.perf_counter()
            try:
                self._client.ping()
                self._samples.append((start - self._t0, (time.perf_counter() - start) * 1000))
            except redis.RedisError:
                self._errors += 1
            self._stop.wait(self._interval)

    def __enter__(self) -> "LatencyProbe":
        self._t0 = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def stop(self) -> LatencyStats:
        """Stop probing; a PING still waiting on a server that stopped answering is abandoned, not waited for
        (it would hold a failed change past its deadline)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(0.2)
        self._client.close()
        return self.stats()

    def stats(self) -> LatencyStats:
        return LatencyStats(tuple(self._samples), self._errors)
