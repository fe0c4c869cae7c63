"""One deadline helper for every wait: a `time.monotonic()` deadline, elapsed and remaining time, calls
whose reply must come before it (a frozen server cannot hold a wait past its deadline), and the connection
kept for putting settings back."""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from runbook.errors import NoReply, WaitTimeout
from runbook.server.progress import INTERVAL_S, report

T = TypeVar("T")

#: The socket timeout of a call made at (or just past) the deadline: time for one last answer on loopback.
LAST_CALL_S = 0.05
#: Seconds a put-back waits for the server's answer; a frozen server gets it when it runs again.
PUT_BACK_S = 2.0
#: Silence worth reporting: a wait that ends without an answer this long says the server stopped answering.
SILENCE_S = 1.0


class Deadline:
    """A deadline `timeout_s` from now, on the monotonic clock, for a wait named `what` (shown on a watching
    terminal, `runbook.server.progress`)."""

    def __init__(self, timeout_s: float, what: str = "waiting") -> None:
        self.timeout_s = timeout_s
        self.what = what
        self.start = time.monotonic()
        self.reported_at = self.start  # when `saw` last reported progress
        self.at = self.start + timeout_s
        self.last_reply = self.start  # when the server last answered a call of this deadline
        self.unanswered = ""  # the call that got no reply, if the last one did not
        self.seen: object = None  # what the wait last saw (`saw`), and when
        self.seen_at = self.start

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

    def call(self, client: redis.Redis, fn: Callable[[redis.Redis], T], what: str) -> T:
        """`fn(c)` on a connection of its own to `client`'s server (same address, credentials and TLS, no
        retries) whose socket timeout is the time left: NoReply naming `what` when no reply came in time.

        `client` itself is not touched: its timeout and retries stay as they were for the steps after the wait.
        """
        timeout = max(self.remaining, LAST_CALL_S)
        bounded = _client(client, timeout)
        try:
            result = fn(bounded)
        except redis.TimeoutError as err:
            self.unanswered = what
            raise NoReply(f"no reply to {what} within {timeout:.1f} s (deadline {self.timeout_s:g} s): the server "
                          "is frozen, overloaded or cut off") from err
        except (redis.ResponseError, redis.BusyLoadingError, redis.AuthenticationError):
            self._answered()  # an error reply is an answer
            raise
        finally:
            bounded.close()
        self._answered()
        return result

    def _answered(self) -> None:
        self.last_reply = time.monotonic()
        self.unanswered = ""

    def saw(self, seen: object) -> None:
        """Note what the wait sees now, for `missed` to say; every `INTERVAL_S`, report it as progress."""
        self.seen, self.seen_at = seen, time.monotonic()
        if self.seen_at - self.reported_at >= INTERVAL_S:
            self.reported_at = self.seen_at
            report(self.what, self.seen_at - self.start, self.timeout_s, seen)

    def missed(self, what: str) -> WaitTimeout:
        """The WaitTimeout of a wait for which `what` did not happen by the deadline: the deadline, what it last
        saw and when, and whether the server had stopped answering."""
        before = max(0.0, self.at - self.seen_at)
        text = f"{what} within {self.timeout_s:g} s; " + (
            f"last seen {before:.1f} s before the deadline: {self.seen}" if self.seen else "nothing seen")
        silence = time.monotonic() - self.last_reply
        if self.unanswered and silence >= SILENCE_S:
            text += (f"; then no reply to {self.unanswered} for {silence:.1f} s (the server is frozen, overloaded "
                     "or cut off)")
        return WaitTimeout(text)


def stopped_answering(err: BaseException) -> bool:
    """Whether a NoReply is behind `err` (the server stopped answering): asking it more would only wait again."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, NoReply):
            return True
        seen = seen.__cause__
    return False


def _client(client: redis.Redis, timeout_s: float) -> redis.Redis:
    """A client to `client`'s server with its own connection, `timeout_s` as socket (and at most connect)
    timeout and no retries: a retried call would wait its timeout again."""
    pool = client.connection_pool
    kwargs = dict(pool.connection_kwargs)
    connect_s = kwargs.get("socket_connect_timeout") or timeout_s
    kwargs.update(socket_timeout=timeout_s, socket_connect_timeout=min(connect_s, timeout_s),
                  retry=Retry(NoBackoff(), 0), retry_on_timeout=False)
    return redis.Redis(connection_pool=redis.ConnectionPool(connection_class=pool.connection_class, **kwargs))


class WayBack:
    """A connection opened while the server answers, kept to put settings back: a put-back is then sent even to
    a server that has stopped answering (it runs the commands when it runs again), and waits `timeout_s` at most
    for their replies. Open it before the change; close it after."""

    def __init__(self, client: redis.Redis, timeout_s: float = PUT_BACK_S) -> None:
        self.timeout_s = timeout_s
        self._client = _client(client, timeout_s)
        try:
            self._client.ping()  # connects now, while the server answers; the pool keeps the connection
        except redis.TimeoutError as err:
            self._client.close()
            raise NoReply(f"no reply to PING within {timeout_s:g} s: the server is frozen, overloaded or "
                          "cut off") from err

    def send(self, commands: Sequence[tuple[str, ...]], what: str) -> list[Any]:
        """Send `commands` in one write and read each reply (an exception for a refused one); NoReply naming
        `what` when the server does not answer within `timeout_s`."""
        pipe = self._client.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        try:
            return list(pipe.execute(raise_on_error=False))
        except redis.TimeoutError as err:
            raise NoReply(f"no reply to {what} within {self.timeout_s:g} s: the server is frozen, overloaded "
                          "or cut off") from err

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> "WayBack":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
