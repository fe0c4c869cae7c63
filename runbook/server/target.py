"""Connect to a target and say what it is.

A target is a URL (`redis://host:port/db`, `rediss://...`, `unix:///path.sock`, or Sentinels naming the master:
`redis+sentinel://h1:26379,h2:26379/mymaster`, `runbook.server.sentinel`); the word
`sandbox` is resolved to one by the sandbox layer (`runbook.sandbox.handoff`). Passwords come from the environment
variable named by `password_env`, never from parameters: papermill copies parameters into the evidence.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import os
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import ParseResult, parse_qs, parse_qsl, urlparse

import redis

from runbook.errors import NoReply, ParameterError, PreconditionFailed, TargetUnreachable
from runbook.model import ConnectionSpec
from runbook.server.commandlog import CommandLog, attach
from runbook.server.poll import Deadline
from runbook.server.sentinel import is_sentinel_url, master_url, parse_sentinel_url
from runbook.server.settings import config_get, config_set, runtime_settings
from runbook.server.tls import TLS_FILES, check_tls_parameters, tls_failure, tls_options

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class Identity:
    """Who answers: product, real version, mode, role, config file, data dir, uptime."""

    server: str  # "redis" or "valkey"
    version: str
    mode: str
    role: str
    config_file: str
    executable: str
    process_id: int
    uptime_s: int
    tcp_port: int

    @property
    def label(self) -> str:
        return f"{self.server.capitalize()} {self.version}"

    @property
    def major(self) -> int:
        """The Redis major version whose config-file rules apply (Valkey reads files as Redis 7 does)."""
        if self.server == "redis" and self.version[:1].isdigit():
            return int(self.version.split(".")[0])
        return 7


@dataclass
class Target:
    """A connected target: the name to show, a client, whether its files are on this host, and the
    (possibly renamed) CONFIG command every CONFIG call goes through."""

    name: str
    client: redis.Redis
    local: bool
    config_command: str = "CONFIG"
    sandbox_dir: Path | None = None
    owner: object | None = field(default=None, repr=False)  # the sandbox this process started for it, if any
    #: The write commands sent to it, by this client and every client made from it (`runbook.server.commandlog`).
    commands: CommandLog = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.commands = attach(self.client, self.name, self.config_command)

    @property
    def is_sandbox(self) -> bool:
        return self.sandbox_dir is not None

    def config_get(self, names: list[str]) -> dict[str, str]:
        """CONFIG GET each of `names` (https://redis.io/docs/latest/commands/config-get/)."""
        return config_get(self.client, names, self.config_command)

    def config_set(self, name: str, value: str) -> None:
        """CONFIG SET one setting (https://redis.io/docs/latest/commands/config-set/)."""
        config_set(self.client, name, value, self.config_command)

    def config_rewrite(self) -> None:
        """CONFIG REWRITE: the server writes its own config file (https://redis.io/docs/latest/commands/config-rewrite/).
        Raises redis.ResponseError as the server refuses it."""
        self.client.execute_command(self.config_command, "REWRITE")

    def runtime_settings(self) -> dict[str, str]:
        """The persistence settings the server runs with now."""
        return runtime_settings(self.client, self.config_command)

    def identify(self) -> Identity:
        return identify(self.client)


def check_target_parameter(target: str) -> None:
    """Refuse a target that is malformed or carries a password (ParameterError)."""
    if target == "sandbox":
        return
    bad = next((ch for ch in target if unicodedata.category(ch).startswith("C")), None)
    if bad is not None:  # a newline would forge a line of `archive list`, an escape rewrite the terminal
        raise ParameterError(f"target {_masked(target)!r} contains the control character {bad!r}: give the URL "
                             "on one line, without control characters")
    try:
        parsed = urlparse(target)
    except ValueError as err:  # an unclosed [IPv6] host
        raise ParameterError(f"target {_masked(target)!r} is not a valid URL ({err})") from err
    if is_sentinel_url(target):
        parse_sentinel_url(target)  # ParameterError for what is wrong in it
        return
    query = {k.lower() for k in parse_qs(parsed.query)}
    if parsed.password or "password" in query or ("@" in target and parsed.scheme not in ("redis", "rediss", "unix")):
        raise ParameterError(
            f"target {redact_url(target)} carries a password; parameters are copied into the evidence. "
            "Remove it from the URL and put it in the environment variable named by password_env "
            "(default REDIS_PASSWORD)."
        )
    if parsed.scheme not in ("redis", "rediss", "unix"):
        raise ParameterError(
            f"target {target!r} is not a redis://, rediss://, unix:// or redis+sentinel:// URL, nor the word sandbox"
        )
    if parsed.scheme != "unix" and not parsed.hostname:
        raise ParameterError(f"target {target!r} names no host")
    _check_port_and_db(parsed, redact_url(target))


def _check_port_and_db(parsed: ParseResult, shown: str) -> None:
    """ParameterError for a port that is not 1-65535 or a database that is not a number (redis-py would
    silently use database 0 for `/abc`)."""
    if parsed.scheme == "unix":
        if not parsed.path:
            raise ParameterError(f"target {shown!r} names no socket path (unix:///path/to/redis.sock)")
    else:
        try:
            port = parsed.port
        except ValueError:  # not a number, or out of range
            port = -1
        if port is not None and not 1 <= port <= 65535:
            raise ParameterError(f"target {shown!r}: the port must be a number from 1 to 65535 "
                                 "(redis://host:6379/0)")
        db = parsed.path + (f";{parsed.params}" if parsed.params else "")
        if not re.fullmatch(r"(/\d*)?", db):
            raise ParameterError(f"target {shown!r}: the database must be a number (redis://host:port/0), got {db!r}")
    for db in parse_qs(parsed.query).get("db", []):
        if not db.isdigit():
            raise ParameterError(f"target {shown!r}: the database must be a number (?db=0), got {db!r}")


def _masked(target: str) -> str:
    """`target` for a message when it cannot be parsed: everything before an `@` masked."""
    return "********@" + target.rsplit("@", 1)[1] if "@" in target else target


def redact_url(url: str) -> str:
    """`url` with any password (in the user part or the query) replaced by a mask."""
    p = urlparse(url)
    if "@" in url and p.scheme not in ("redis", "rediss", "unix"):
        return "********@" + url.rsplit("@", 1)[1]
    if not p.password and "password" not in {k.lower() for k in parse_qs(p.query)}:
        return url
    if p.password:
        p = p._replace(netloc=f"{p.username or ''}:********@{p.netloc.rsplit('@', 1)[1]}")
    if p.query:
        pairs = [(k, "********" if k.lower() == "password" else v)
                 for k, v in parse_qsl(p.query, keep_blank_values=True)]
        p = p._replace(query="&".join(f"{k}={v}" for k, v in pairs))
    return p.geturl()


def is_local(url: str) -> bool:
    """True for unix sockets and loopback hosts: the server's files are then on this machine."""
    p = urlparse(url)
    if p.scheme == "unix":
        return True
    host = p.hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def connect(spec: ConnectionSpec, *, url: str = "", sandbox_dir: Path | None = None,
            owner: object | None = None) -> Target:
    """Connect to `url` (default: the spec's target), authenticate and PING; TargetUnreachable with what to do.

    `target: sandbox` is resolved to a URL by the sandbox layer (`runbook.connect`), which passes it here.
    """
    check_target_parameter(spec.target)
    url = _resolved(spec, url or spec.target)
    if url == "sandbox":
        raise ParameterError("target sandbox names a throwaway server: connect through runbook.connect, which starts "
                             "or finds it")
    tls = {name: getattr(spec, name) for name in TLS_FILES}
    check_tls_parameters("sandbox" if spec.target == "sandbox" else url, tls)
    password = os.environ.get(spec.password_env) if spec.password_env else None
    opts: dict[str, object] = {
        "decode_responses": True,
        "socket_connect_timeout": spec.connect_timeout_s,
        "socket_timeout": spec.command_timeout_s,
        "username": spec.username or None,
        "password": password or None,
    }
    opts.update(tls_options(url, tls))
    opts.update(_driver_info())
    client = redis.Redis.from_url(url, **opts)  # type: ignore[arg-type]
    name = spec.target
    target = Target(name, client, is_local(url), spec.config_command, sandbox_dir, owner)
    try:
        client.ping()
    except redis.AuthenticationError as err:
        unset = bool(spec.password_env) and spec.password_env not in os.environ
        raise TargetUnreachable(
            f"{name}: authentication failed ({err}). Put the right password in ${spec.password_env}"
            + (f" for user {spec.username!r}" if spec.username else "")
            + (f" (${spec.password_env} is not set in this environment)" if unset else "")
            + "."
        ) from err
    except redis.ResponseError as err:
        if str(err).startswith("MISCONF"):
            # Some versions refuse even PING while saves fail; the server is there and answered.
            log.warning("%s answers MISCONF: %s", name, err)
            return target
        if "NOAUTH" in str(err) or "WRONGPASS" in str(err):
            raise TargetUnreachable(
                f"{name}: the server wants a password ({err}). Export it in ${spec.password_env} "
                "(or name another variable with password_env)."
            ) from err
        raise
    except redis.ConnectionError as err:
        why = tls_failure(err, tls) if url.startswith("rediss://") else ""
        raise TargetUnreachable(
            f"{name}: {why} ({err})" if why else
            f"{name}: cannot connect ({err}). Check that the server runs and that the target URL is right."
        ) from err
    return target


@functools.lru_cache(maxsize=1)
def _driver_info() -> dict[str, object]:
    """Connection options that keep redis-py 7+ from sending what a server before 7.2 answers with an error: CLIENT
    SETINFO (the library's name and version; also looked up in the installed packages' metadata for every client,
    7 ms each here) and CLIENT MAINT_NOTIFICATIONS. Each connection then costs three round trips less, and leaves
    no error replies in the server's errorstats (measured on Redis 7.0: 3 per connection). Nothing for a redis-py
    without these options."""
    opts: dict[str, object] = {}
    try:
        import redis.driver_info  # noqa: F401, PLC0415  (redis-py 7+: `driver_info=None` sends no CLIENT SETINFO)
    except ImportError:
        return opts
    opts["driver_info"] = None
    try:
        from redis.maint_notifications import MaintNotificationsConfig  # noqa: PLC0415  (redis-py 7+)
    except ImportError:
        return opts
    opts["maint_notifications_config"] = MaintNotificationsConfig(enabled=False)
    return opts


def _resolved(spec: ConnectionSpec, url: str) -> str:
    """`url`, or for a Sentinel URL the master its Sentinels name now (the Target keeps the Sentinel URL as name)."""
    if not is_sentinel_url(url):
        return url
    master = master_url(spec, url)
    log.info("%s: the Sentinels name the master %s", url, master)
    return master


def identify(client: redis.Redis) -> Identity:
    """INFO server and replication, as an Identity; refuses a sentinel."""
    info = client.info("server")
    role = client.info("replication").get("role", "unknown")
    mode = server_mode(info)
    ident = Identity(
        server="valkey" if info.get("server_name") == "valkey" or "valkey_version" in info else "redis",
        version=str(info.get("valkey_version") or info.get("redis_version", "?")),
        mode=mode,
        role="replica" if role == "slave" else str(role),
        config_file=str(info.get("config_file") or ""),
        executable=str(info.get("executable") or ""),
        process_id=int(info.get("process_id", 0)),
        uptime_s=int(info.get("uptime_in_seconds", 0)),
        tcp_port=int(info.get("tcp_port", 0)),
    )
    if mode == "sentinel":
        raise PreconditionFailed(
            f"the target is a {ident.label} Sentinel, not a data server: it holds no data and no persistence "
            f"settings. Point target at the master it monitors: {_monitored_masters(client)}."
        )
    return ident


def server_mode(info: dict[str, object]) -> str:
    """standalone, cluster or sentinel, from INFO server: Valkey 8+ says `server_mode`, Redis `redis_mode`."""
    return str(info.get("server_mode") or info.get("redis_mode") or "standalone")


def _monitored_masters(client: redis.Redis) -> str:
    """The masters a Sentinel monitors, as target URLs to use instead (SENTINEL MASTERS)."""
    try:
        masters = client.sentinel_masters()
    except redis.RedisError:
        masters = {}
    if not masters:
        return "this Sentinel monitors none; ask one that does (SENTINEL get-master-addr-by-name NAME)"
    return ", ".join(f"{name} at redis://{m.get('ip')}:{m.get('port')}/0" for name, m in sorted(masters.items()))


def wait_loaded(client: redis.Redis, timeout_s: float, what: str, *, while_down: bool = False) -> float:
    """Seconds until `client`'s server answers without LOADING; WaitTimeout naming `what`, the deadline and what
    was last seen after `timeout_s` (each poll waits no longer than the time left).

    `while_down`: a refused connection counts as not yet up (the server is restarting).
    """
    deadline = Deadline(timeout_s, what)
    while True:
        try:
            info = deadline.call(client, lambda c: c.info("persistence"), "INFO persistence")
            if not int(info.get("loading", 0)):
                return deadline.elapsed
            deadline.saw(f"loading:1, loading_loaded_perc:{info.get('loading_loaded_perc')}")
        except NoReply:
            pass  # its socket timeout was the time left: the deadline has come
        except redis.BusyLoadingError:
            deadline.saw("LOADING")
        except redis.ConnectionError as err:
            if not while_down:
                raise
            deadline.saw(f"down ({err})")
        if deadline.expired:
            raise deadline.missed(f"{what} did not finish loading")
        deadline.sleep(0.05)
