"""One change at a time per server: a lease held on the server itself.

The key `runbook:lock:{runbook}` in database 0 (on a cluster node, a hash tag in a slot the node serves) names
the change that holds the server: change id, host, user, pid and start. Every runner that can reach the server
sees it, whatever archive or host it runs from. The value starts with the end of the lease in the server's own
clock (`TIME`), so runners on hosts with different clocks agree; the holder renews the lease from a background
thread and deletes the key when it is done. Taking, renewing and releasing are Lua scripts: each reads and
writes the key in one atomic step on the server (https://redis.io/docs/latest/develop/interactive/programmability/eval-intro/).

The key outlives its lease by `MEMORY_MS`, so that the run after a killed one can say that it took over a
lease nobody released; after that the key expires by itself. It covers the runbook's own runners only: a
person typing `redis-cli CONFIG SET` meanwhile is not stopped.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import socket
import threading
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.exceptions import NoPermissionError
from redis.retry import Retry

from runbook.errors import Blocked, ChangeFailed, PreconditionFailed
from runbook.server.slots import cluster_enabled, served_tag

log = logging.getLogger(__name__)

#: How long a lease lasts without renewal: a killed run's lock frees the server this long after its last renewal.
LEASE_MS = 30_000
#: How long the key stays after its lease ended, so the next run can report the takeover of a lock nobody released.
MEMORY_MS = 24 * 3600 * 1000
#: The lock's connection waits at most this long for a reply (a renewal never hangs the runner).
LOCK_TIMEOUT_S = 5.0

# Every script: its name in its first line (the command log shows it); KEYS[1] the lock; the value is
# "<lease end, server ms> <token> <holder json>".
_NOW = "local t = redis.call('TIME') local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) "
#: ARGV: token, holder json, lease ms, memory ms. Returns {1, previous value or ''} when taken, {0, value, ms left}.
_TAKE = "-- runbook: take the server lock\n" + _NOW + """
local v = redis.call('GET', KEYS[1])
if v then
  local ends, token = string.match(v, '^(%d+) (%S+) ')
  if token ~= ARGV[1] and tonumber(ends or '0') > now then return {0, v, tonumber(ends) - now} end
end
local lease = tonumber(ARGV[3])
redis.call('SET', KEYS[1], (now + lease) .. ' ' .. ARGV[1] .. ' ' .. ARGV[2], 'PX', lease + tonumber(ARGV[4]))
return {1, v or '', 0}
"""
#: ARGV: token, holder json, lease ms, memory ms. 1 renewed, 2 taken again (the key was gone), 0 someone else's.
_RENEW = "-- runbook: renew the server lock\n" + _NOW + """
local v = redis.call('GET', KEYS[1])
local lease = tonumber(ARGV[3])
if v then
  local ends, token = string.match(v, '^(%d+) (%S+) ')
  if token ~= ARGV[1] then return 0 end
end
redis.call('SET', KEYS[1], (now + lease) .. ' ' .. ARGV[1] .. ' ' .. ARGV[2], 'PX', lease + tonumber(ARGV[4]))
if v then return 1 end
return 2
"""
#: ARGV: token. 1 deleted, 0 not ours (or gone).
_RELEASE = """-- runbook: release the server lock
local v = redis.call('GET', KEYS[1])
if not v then return 0 end
local ends, token = string.match(v, '^(%d+) (%S+) ')
if token == ARGV[1] then redis.call('DEL', KEYS[1]) return 1 end
return 0
"""


class NoLockHere(Exception):
    """Raised when the server takes no key at all (a read-only replica, a cluster node serving no slot): no change
    of the runbook's can be locked there, and the step's own guards decide."""


@dataclass(frozen=True)
class Holder:
    """Who holds (or held) a server's lock."""

    change_id: str
    host: str
    user: str
    pid: int
    started: str  # UTC, ISO 8601

    @classmethod
    def here(cls, change_id: str) -> Holder:
        """This process, for the change `change_id`, starting now."""
        try:
            user = getpass.getuser()
        except (KeyError, OSError):
            user = str(os.geteuid())
        return cls(change_id, socket.gethostname(), user, os.getpid(),
                   datetime.now(timezone.utc).isoformat(timespec="seconds"))

    def describe(self) -> str:
        return f"change {self.change_id} from {self.host} (user {self.user}, pid {self.pid}), started {self.started}"

    @classmethod
    def parse(cls, value: str) -> Holder | None:
        """The holder in a lock key's value, None when it is not one of ours."""
        try:
            data = json.loads(value.split(" ", 2)[2])
            return cls(str(data["change_id"]), str(data["host"]), str(data["user"]), int(data["pid"]),
                       str(data["started"]))
        except (IndexError, ValueError, KeyError, TypeError):
            return None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value or "")


def lock_key(client: redis.Redis) -> str:
    """The lock's key on `client`'s server: `runbook:lock:{runbook}`, or on a cluster node
    `runbook:lock:{runbook-N}` with the first N whose slot the node serves."""
    tag = served_tag(client, "runbook") if cluster_enabled(client) else "runbook"
    return f"runbook:lock:{{{tag}}}"


def lock_keys_counted(client: redis.Redis) -> int:
    """How many of the runbook's lock keys DBSIZE counts on `client` (0 or 1): the lock lives in database 0,
    and a step comparing key counts must not read it as data gained or lost."""
    if int(client.connection_pool.connection_kwargs.get("db") or 0) != 0:
        return 0
    try:
        return int(client.exists(lock_key(client)))
    except (redis.RedisError, PreconditionFailed):  # a cluster node that serves no slot holds no lock
        return 0


def data_dbsize(client: redis.Redis) -> int:
    """DBSIZE without the runbook's own lock key."""
    return int(client.dbsize()) - lock_keys_counted(client)


def lock_client(client: redis.Redis) -> redis.Redis:
    """A client of its own to `client`'s server (same address, credentials and TLS) on database 0, with a
    short timeout and no retries."""
    pool = client.connection_pool
    kwargs = dict(pool.connection_kwargs)
    timeout = min(float(kwargs.get("socket_timeout") or LOCK_TIMEOUT_S), LOCK_TIMEOUT_S)
    kwargs.update(db=0, decode_responses=True, socket_timeout=timeout, socket_connect_timeout=min(
        float(kwargs.get("socket_connect_timeout") or timeout), timeout), retry=Retry(NoBackoff(), 0),
        retry_on_timeout=False)
    return redis.Redis(connection_pool=redis.ConnectionPool(connection_class=pool.connection_class, **kwargs))


class ServerLock:
    """A held lock: renewed every third of its lease by a daemon thread (on a connection of its own, with a short
    timeout) until `release`, which goes over `client` (the one the lock was taken on, then closed)."""

    def __init__(self, client: redis.Redis, key: str, token: str, holder: Holder, name: str,
                 took_over: Holder | None, lease_ms: int, memory_ms: int) -> None:
        self.client, self.key, self.token, self.holder, self.name = client, key, token, holder, name
        self._renewer = lock_client(client)
        self.took_over = took_over  # a lease nobody released (a killed run), taken over after it ended
        self.lease_ms, self.memory_ms = lease_ms, memory_ms
        self.lost: str = ""  # why the lock is no longer ours, once it is not
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew_loop, name=f"lock-{key}", daemon=True)
        self._thread.start()

    def _args(self) -> list[Any]:
        return [self.token, json.dumps(asdict(self.holder)), self.lease_ms, self.memory_ms]

    def renew(self) -> None:
        """Extend the lease once (a key lost in a restart is taken again); `lost` says when it was taken."""
        got = int(self._renewer.eval(_RENEW, 1, self.key, *self._args()))
        if got == 0:
            value = _text(self._renewer.get(self.key))
            other = Holder.parse(value)
            self.lost = f"taken by {other.describe() if other else repr(value)} after this run's lease ended"
            log.warning("%s: the lock %s was lost: %s", self.name, self.key, self.lost)
            self._stop.set()
        elif got == 2:
            log.warning("%s: the lock %s had gone from the server (a restart, a flush): taken again", self.name,
                        self.key)

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.lease_ms / 3000):
            try:
                self.renew()
            except redis.RedisError as err:  # the server restarting, a network blip: the next try may reach it
                log.warning("%s: could not renew the lock %s: %s", self.name, self.key, err)

    def release(self) -> bool:
        """Stop renewing and delete the key if it is still ours; whether it was."""
        self._stop.set()
        self._thread.join(timeout=LOCK_TIMEOUT_S + 1)
        try:
            return bool(int(self.client.eval(_RELEASE, 1, self.key, self.token)))
        except redis.RedisError as err:
            log.warning("%s: could not release the lock %s (%s): it expires by itself within %d s", self.name,
                        self.key, err, self.lease_ms // 1000)
            return False
        finally:
            self._renewer.close()
            self.client.close()

    def fact(self) -> dict[str, Any]:
        """The lock as the evidence shows it."""
        return {"key": self.key, "holder": asdict(self.holder), "lease_s": self.lease_ms / 1000,
                "took_over": asdict(self.took_over) if self.took_over else None, "lost": self.lost}


def acquire(client: redis.Redis, holder: Holder, *, name: str = "the server", lease_ms: int = LEASE_MS,
            memory_ms: int = MEMORY_MS) -> ServerLock:
    """Take the server's lock for `holder`, or raise Blocked (exit 3) naming the change that holds it.

    A lease that ended without a release (a killed run) is taken over, and the lock says so (`took_over`).
    NoLockHere on a server that takes no key (a read-only replica, a cluster node serving no slot). The lock is
    taken over `client` itself when it is on database 0 (no second connection on the way of a change).
    """
    conn = client if int(client.connection_pool.connection_kwargs.get("db") or 0) == 0 else lock_client(client)
    token = uuid.uuid4().hex
    try:
        key = lock_key(conn)
    except PreconditionFailed as err:
        conn.close()
        raise NoLockHere(str(err)) from err
    try:
        taken, raw, left_ms = conn.eval(_TAKE, 1, key, token, json.dumps(asdict(holder)), lease_ms, memory_ms)
    except redis.ResponseError as err:  # on 6.2 a refusal inside the script comes as the script's error
        conn.close()
        if isinstance(err, NoPermissionError) or "NOPERM" in str(err):
            user = client.connection_pool.connection_kwargs.get("username") or "default"
            raise Blocked(f"{name}: the ACL user {user!r} may not take the runbook's lock ({err}); nothing was "
                          f"changed. An admin grants it: redis-cli ACL SETUSER {user} '+eval' '+get' '+set' '+del' "
                          "'+time' '%RW~runbook:lock:*'") from err
        if isinstance(err, redis.ReadOnlyError) or "READONLY" in str(err):
            raise NoLockHere("a read-only replica takes no writes: no lock was written") from err
        if "NOREPLICAS" in str(err) or "MISCONF" in str(err):  # the step itself says why writes are refused
            why = "min-replicas-to-write" if "NOREPLICAS" in str(err) else "a failing BGSAVE"
            raise NoLockHere(f"the server refuses every write ({why}): no lock was written") from err
        raise ChangeFailed(f"{name}: the runbook's lock could not be taken: {err}; nothing was changed") from err
    value = _text(raw)
    if not int(taken):
        conn.close()
        other = Holder.parse(value)
        who = other.describe() if other else f"a value that is not the runbook's ({value[:80]!r})"
        raise Blocked(f"{name}: another change holds this server: {who}; its lease ends in {int(left_ms) / 1000:.0f} s "
                      "unless it is renewed. Nothing was changed. Wait for that change to finish and run again; a "
                      f"run that was killed frees it within {lease_ms // 1000} s. See it with: redis-cli GET '{key}'")
    took_over = Holder.parse(value) if value else None
    if took_over is not None:
        log.warning("%s: took over the lock %s of %s: its lease had ended without a release (a killed run?)",
                    name, key, took_over.describe())
    return ServerLock(conn, key, token, holder, name, took_over, lease_ms, memory_ms)
