"""Sentinel targets: `redis+sentinel://h1:26379,h2:26380/mymaster[/db]`, its Sentinels and the master they name.

The Sentinels' own password comes from the environment variable named by `sentinel_password_env` (LiteLLM's
`sentinel_password`), never from the URL. Sentinels are asked in plain TCP; `rediss+sentinel` means TLS to the
data nodes. See https://redis.io/docs/latest/operate/oss_and_stack/management/sentinel/
"""

from __future__ import annotations

import os
import re
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel

from runbook.errors import ParameterError, PreconditionFailed, TargetUnreachable

SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
DEFAULT_PORT = 26379
_EXAMPLE = "redis+sentinel://host1:26379,host2:26379/mymaster"


def is_sentinel_url(url: str) -> bool:
    """Whether `url` names Sentinels (redis+sentinel:// or rediss+sentinel://)."""
    return url.split("://", 1)[0].lower() in SENTINEL_SCHEMES


def parse_sentinel_url(url: str) -> tuple[list[tuple[str, int]], str, int, bool]:
    """`redis+sentinel://h1:26379,h2:26380/mymaster/0` as ([("h1", 26379), ("h2", 26380)], "mymaster", 0, tls);
    ParameterError naming what is wrong (no service name, credentials in the URL, a bad port or database)."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in SENTINEL_SCHEMES:
        raise ParameterError(f"target {url!r} is not a Sentinel URL ({_EXAMPLE})")
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    if "@" in netloc or re.search(r"(^|&)password=", query, re.I):
        raise ParameterError(
            f"target {scheme}://********@... carries credentials; parameters are copied into the evidence. Remove "
            "them from the URL: the data nodes' password goes in the variable named by password_env, the "
            "Sentinels' own in the one named by sentinel_password_env.")
    if query:
        raise ParameterError(f"target {url!r}: a Sentinel URL takes no ?options ({_EXAMPLE}, database as /name/0)")
    if not netloc:
        raise ParameterError(f"target {url!r} names no Sentinel ({_EXAMPLE})")
    sentinels = [_host_port(url, part) for part in netloc.split(",")]
    parts = path.split("/") if path else []
    if not parts or not parts[0]:
        raise ParameterError(f"target {url!r} names no service: add the name the Sentinels monitor as the path "
                             f"({_EXAMPLE}; SENTINEL MASTERS on a Sentinel lists them)")
    if len(parts) > 2 or (len(parts) == 2 and not parts[1].isdigit()):
        raise ParameterError(f"target {url!r}: after the service name only a database number may follow "
                             f"(/mymaster/0), got {path!r}")
    db = int(parts[1]) if len(parts) == 2 else 0
    return sentinels, parts[0], db, scheme.lower().startswith("rediss")


def _host_port(url: str, part: str) -> tuple[str, int]:
    """One `host[:port]` (or `[v6]:port`) of a Sentinel URL."""
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\](?::(\w*))?|([^:\[\]]+)(?::(\w*))?", part)
    if not m:
        raise ParameterError(f"target {url!r}: {part!r} is not host:port ({_EXAMPLE})")
    host, port = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
    if port is None:
        return host, DEFAULT_PORT
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ParameterError(f"target {url!r}: the port of {part!r} must be a number from 1 to 65535 "
                             f"(default {DEFAULT_PORT})")
    return host, int(port)


def address(host: str, port: int | str) -> str:
    """"host:port", with an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def sentinel_clients(spec: Any, url: str) -> list[tuple[str, redis.Redis]]:
    """One client per Sentinel of `url` ("host:port", client), with the spec's timeouts and the Sentinels'
    password from $<sentinel_password_env> (none when that is empty)."""
    sentinels, _, _, _ = parse_sentinel_url(url)
    env = getattr(spec, "sentinel_password_env", "") or ""
    kwargs: dict[str, object] = {"decode_responses": True, "socket_connect_timeout": spec.connect_timeout_s,
                                 "socket_timeout": spec.command_timeout_s, "password": os.environ.get(env) or None,
                                 # A Sentinel that is down is asked once: the next one may answer.
                                 "retry": Retry(NoBackoff(), 0)}
    group = Sentinel(sentinels, sentinel_kwargs=kwargs)
    return [(address(h, p), c) for (h, p), c in zip(sentinels, group.sentinels)]


def unreachable(url: str, errors: list[str], spec: Any) -> TargetUnreachable:
    """TargetUnreachable for Sentinels of which none answered, with what each said and what to do."""
    env = getattr(spec, "sentinel_password_env", "") or ""
    auth = any("auth" in e.lower() or "wrongpass" in e.lower() for e in errors)
    hint = (f"Put the Sentinels' password in ${env}." if env else
            "The Sentinels want a password: name its environment variable with sentinel_password_env.") if auth else (
        "Check that the Sentinels run and that the host:port list in the target URL is right.")
    return TargetUnreachable(f"{url}: no Sentinel answered ({'; '.join(errors)}). {hint}")


def master_address(spec: Any, url: str) -> tuple[str, int]:
    """(host, port) of the master the Sentinels of `url` name (SENTINEL GET-MASTER-ADDR-BY-NAME, first that
    answers); TargetUnreachable when none answers, PreconditionFailed when none monitors the service."""
    _, service, _, _ = parse_sentinel_url(url)
    errors: list[str] = []
    unknown = 0
    for where, client in sentinel_clients(spec, url):
        try:
            reply = client.sentinel_get_master_addr_by_name(service)
        except redis.RedisError as err:
            errors.append(f"{where}: {err}")
            continue
        finally:
            client.close()
        if reply:
            return str(reply[0]), int(reply[1])
        unknown += 1
    if unknown:
        raise PreconditionFailed(f"{url}: {unknown} Sentinel(s) answered but monitor no service {service!r}. Use the "
                                 "name they monitor (SENTINEL MASTERS on a Sentinel lists them) as the URL's path.")
    raise unreachable(url, errors, spec)


def master_url(spec: Any, url: str) -> str:
    """The data node URL of the master the Sentinels of `url` name now: redis[s]://host:port/db."""
    _, _, db, tls = parse_sentinel_url(url)
    host, port = master_address(spec, url)
    return f"{'rediss' if tls else 'redis'}://{address(host, port)}/{db}"
