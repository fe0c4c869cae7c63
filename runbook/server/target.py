"""Connect to a target and say what it is.

A target is a URL (`redis://host:port/db`, `rediss://...`, `unix:///path.sock`); the word
`sandbox` is resolved to one by the sandbox layer (`runbook.sandbox.handoff`). Passwords come from the environment
variable named by `password_env`, never from parameters: papermill copies parameters into the evidence.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, parse_qsl, urlparse

import redis

from runbook.errors import ParameterError, PreconditionFailed, TargetUnreachable, WaitTimeout
from runbook.model import ConnectionSpec
from runbook.server.settings import config_get, config_set, runtime_settings

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
    parsed = urlparse(target)
    query = {k.lower() for k in parse_qs(parsed.query)}
    if parsed.password or "password" in query or ("@" in target and parsed.scheme not in ("redis", "rediss", "unix")):
        raise ParameterError(
            f"target {redact_url(target)} carries a password; parameters are copied into the evidence. "
            "Remove it from the URL and put it in the environment variable named by password_env "
            "(default REDIS_PASSWORD)."
        )
    if parsed.scheme not in ("redis", "rediss", "unix"):
        raise ParameterError(
            f"target {target!r} is not a redis://, rediss:// or unix:// URL, nor the word sandbox"
        )
    if parsed.scheme != "unix" and not parsed.hostname:
        raise ParameterError(f"target {target!r} names no host")


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
    url = url or spec.target
    if url == "sandbox":
        raise ParameterError("target sandbox names a throwaway server: connect through runbook.connect, which starts "
                             "or finds it")
    password = os.environ.get(spec.password_env) if spec.password_env else None
    opts: dict[str, object] = {
        "decode_responses": True,
        "socket_connect_timeout": spec.connect_timeout_s,
        "socket_timeout": spec.command_timeout_s,
        "username": spec.username or None,
        "password": password or None,
    }
    if url.startswith("rediss://") and spec.tls_ca_file:
        opts["ssl_ca_certs"] = spec.tls_ca_file
    client = redis.Redis.from_url(url, **opts)  # type: ignore[arg-type]
    name = spec.target
    target = Target(name, client, is_local(url), spec.config_command, sandbox_dir, owner)
    try:
        client.ping()
    except redis.AuthenticationError as err:
        raise TargetUnreachable(
            f"{name}: authentication failed ({err}). Put the right password in ${spec.password_env}"
            + (f" for user {spec.username!r}" if spec.username else "")
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
        raise TargetUnreachable(
            f"{name}: cannot connect ({err}). Check that the server runs and that the target URL is right."
        ) from err
    return target


def identify(client: redis.Redis) -> Identity:
    """INFO server and replication, as an Identity; refuses a sentinel."""
    info = client.info("server")
    role = client.info("replication").get("role", "unknown")
    mode = str(info.get("redis_mode", "standalone"))
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
            "the target is a Sentinel, not a data server: point target at the master it monitors "
            "(SENTINEL get-master-addr-by-name NAME)."
        )
    return ident


def wait_loaded(client: redis.Redis, timeout_s: float, what: str, *, while_down: bool = False) -> float:
    """Seconds until `client`'s server answers without LOADING; WaitTimeout naming `what` after `timeout_s`.

    `while_down`: a refused connection counts as not yet up (the server is restarting).
    """
    start = time.monotonic()
    while True:
        try:
            if not int(client.info("persistence").get("loading", 0)):
                return time.monotonic() - start
        except redis.BusyLoadingError:
            pass
        except redis.ConnectionError:
            if not while_down:
                raise
        if time.monotonic() - start > timeout_s:
            raise WaitTimeout(f"{what} was still loading (or down) {timeout_s}s later")
        time.sleep(0.05)
