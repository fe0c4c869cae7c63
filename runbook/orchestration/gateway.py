"""The Redis servers a LiteLLM proxy uses, read from its config file: the targets of a run, and a params file.

Pure reading: the YAML file and an environment mapping, never a server, never LiteLLM itself. It follows what
LiteLLM 1.110 does when it loads the same file (litellm.proxy.proxy_server `load_config`,
litellm.router_python_host `redis_cache_for`, litellm._redis `merge_redis_kwargs` and `get_redis_client`):

- `general_settings.coordination_redis`: the proxy's coordination Redis (usage, rate limits, cross-pod state);
- `litellm_settings.cache: true` with `cache_params` (`type` defaults to redis): the response cache, which is
  also the coordination Redis when no coordination_redis block names one;
- `router_settings.redis_url`, or `redis_host` with `redis_port`: the router's own Redis (usage counters,
  cooldowns); without them the router uses the coordination Redis;
- with neither a coordination block nor a Redis cache, the REDIS_* environment variables alone (LiteLLM's
  coordination fallback).

Each source takes the deployment-wide REDIS_* variables (the process environment, overlaid by the config's
`environment_variables`, as the proxy sets them) below its own settings; a cluster's startup nodes win over a
URL, a URL over Sentinel nodes, Sentinel over a host. `os.environ/NAME` values are read from that environment;
a password is never read at all, only the name of the variable that holds it (`password_env`). A password
written in the file (or inside a URL there) is never copied: its file:line is named with what to do instead.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Container, Iterable, Mapping
from urllib.parse import unquote, urlsplit

import yaml

from runbook.errors import ParameterError
from runbook.server.target import check_target_parameter

ENV_PREFIX = "os.environ/"
#: The run-level parameter naming a LiteLLM proxy config to read the targets from (`gateway_parameters`).
GATEWAY_CONFIG = "gateway_config"
#: inspect's parameter for a gateway's Redis (the key classes it keeps: runbook.steps.gateway_view).
GATEWAY = "gateway"
#: The variable a password written in the config should move to (LiteLLM's own deployment-wide fallback).
PASSWORD_VAR = "REDIS_PASSWORD"
#: What LiteLLM reads from REDIS_<NAME> for every client it builds, by setting (a subset of its
#: `_get_redis_env_kwarg_mapping`: the ones that say which server, how to reach it and who logs in).
ENV_SETTINGS = ("host", "port", "password", "username", "url", "ssl", "db", "ssl_ca_certs", "ssl_certfile",
                "ssl_keyfile")
#: Settings LiteLLM fills from these variables when a source leaves them out (`merge_redis_kwargs`).
ENV_FALLBACKS = {"startup_nodes": "REDIS_CLUSTER_NODES", "sentinel_nodes": "REDIS_SENTINEL_NODES",
                 "sentinel_password": "REDIS_SENTINEL_PASSWORD", "service_name": "REDIS_SERVICE_NAME"}
#: cache_params and coordination_redis keys, by the setting they give (cache_params names the cluster's nodes
#: `redis_startup_nodes`).
SOURCE_KEYS = {**{k: k for k in (*ENV_SETTINGS, "sentinel_nodes", "sentinel_password", "service_name",
                                 "startup_nodes")}, "redis_startup_nodes": "startup_nodes"}
#: router_settings keys, by setting (`redis_cache_for`); `cache_kwargs` adds any of SOURCE_KEYS.
ROUTER_KEYS = {"redis_url": "url", "redis_host": "host", "redis_port": "port", "redis_password": "password",
               "redis_db": "db"}
#: What each source's Redis holds for the gateway, for the params file's comments.
ROLES = {"router": "the router's usage counters and cooldowns",
         "cache": "the response cache",
         "coordination": "the proxy's coordination state (usage, rate limits, cross-pod)"}
#: Connection settings a target entry of a fleet may carry (runbook.orchestration.fleet.PER_TARGET's).
ENTRY_KEYS = ("username", "password_env", "tls_ca_file", "tls_cert_file", "tls_key_file")
_SECRETS = ("password", "sentinel_password")
_TLS_FILES = {"ssl_ca_certs": "tls_ca_file", "ssl_certfile": "tls_cert_file", "ssl_keyfile": "tls_key_file"}


@dataclass(frozen=True)
class _Value:
    """One setting as LiteLLM would see it, and where it came from."""

    value: Any  # resolved; None when an os.environ/ reference is not set here
    where: str  # "router_settings.redis_host (line 12)", "environment REDIS_HOST"
    env: str = ""  # the variable it is read from (os.environ/NAME, or REDIS_X)
    ref: str = ""  # file:line, when it is written in the config file
    literal: bool = False  # the value itself is written in the config file


@dataclass(frozen=True)
class GatewayTarget:
    """One Redis the gateway uses, as runbook parameters (no password: only the variable that holds it)."""

    target: str
    roles: tuple[str, ...]
    sources: tuple[str, ...]
    username: str = ""
    password_env: str = ""
    sentinel_password_env: str = ""
    discover: bool = False  # a cluster (a Sentinel URL implies it)
    tls: Mapping[str, str] = field(default_factory=dict)
    namespace: str = ""  # the cache's key prefix

    def entry(self) -> dict[str, Any]:
        """The target's own parameters: `target` and the connection settings a fleet entry may set."""
        own = {"username": self.username, "password_env": self.password_env, **self.tls}
        return {"target": self.target, **{k: v for k, v in own.items() if v or k == "password_env"}}

    def run_level(self) -> dict[str, Any]:
        """Parameters of the whole run this target needs: `discover`, `sentinel_password_env`."""
        return {**({"discover": True} if self.discover else {}),
                **({"sentinel_password_env": self.sentinel_password_env} if self.sentinel_password_env else {})}

    def comment(self) -> str:
        uses = "; ".join(ROLES[r] for r in self.roles)
        return f"{uses}: {', '.join(self.sources)}" + (f"; keys under {self.namespace}:" if self.namespace else "")


@dataclass(frozen=True)
class GatewayTargets:
    """Every Redis a LiteLLM config uses, deduplicated, and what could not be taken over as it stands."""

    path: str
    targets: tuple[GatewayTarget, ...]
    problems: tuple[str, ...] = ()  # a password written in the file, a reference not set here
    notes: tuple[str, ...] = ()  # what was read and not used (a cache that is not Redis, an unused block)

    def params(self) -> dict[str, Any]:
        """The run's parameters: `target` and its settings for one server, a `targets` list for several."""
        level = self._run_level()
        if len(self.targets) == 1:
            return {**self.targets[0].entry(), **level}
        return {**level, "targets": [t.entry() for t in self.targets]}

    def _run_level(self) -> dict[str, Any]:
        level: dict[str, Any] = {GATEWAY: True}
        for t in self.targets:
            level.update(t.run_level())
        return level

    def render(self) -> str:
        """The params file: the parameters, each target with a comment naming where it came from."""
        lines = [f"# The Redis servers the LiteLLM proxy config {self.path} uses, read by `runbook params "
                 "from-litellm`.", "# Passwords stay in the environment variables password_env names; to follow "
                 f"the config as it changes, run with -p gateway_config {self.path} instead of this file."]
        lines += [f"# warning: {p}" for p in self.problems] + [f"# note: {n}" for n in self.notes]
        level = self._run_level()
        lines.append(f"# {GATEWAY}: inspect shows the key classes the gateway keeps there (docs/gateway-keys.md)")
        if "discover" in level:
            lines.append("# discover: a cluster's nodes are found from the one named"
                         + (" (it applies to every target of the list)" if len(self.targets) > 1 else ""))
        lines += [f"{k}: {_scalar(v)}" for k, v in level.items()]
        if len(self.targets) == 1:
            lines.append(f"# {self.targets[0].comment()}")
            lines += [f"{k}: {_scalar(v)}" for k, v in self.targets[0].entry().items()]
        else:
            lines.append("targets:")
            for t in self.targets:
                entry = list(t.entry().items())
                lines += [f"  # {t.comment()}", f"  - {entry[0][0]}: {_scalar(entry[0][1])}"]
                lines += [f"    {k}: {_scalar(v)}" for k, v in entry[1:]]
        return "\n".join(lines) + "\n"


def _scalar(value: Any) -> str:
    """A YAML scalar: JSON's double-quoted strings and literals are YAML too."""
    return json.dumps(value, ensure_ascii=False)


# -- the file --------------------------------------------------------------------------------------------------


class _Config:
    """The YAML document and the line of every key in it (a line-aware load: PyYAML's composed nodes)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError as err:
            raise ParameterError(f"LiteLLM config {path} does not exist") from err
        except (OSError, UnicodeDecodeError) as err:
            raise ParameterError(f"LiteLLM config {path} cannot be read: {err}") from err
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            self.data = loader.construct_document(node) if node is not None else None
        except yaml.YAMLError as err:
            raise ParameterError(f"LiteLLM config {path} is not valid YAML: {err}") from err
        finally:
            loader.dispose()
        if not isinstance(self.data, dict):
            raise ParameterError(f"LiteLLM config {path} is not a mapping of sections (model_list, router_settings, "
                                 "litellm_settings, ...)")
        self.lines: dict[tuple[Any, ...], int] = {}
        if node is not None:
            self._walk(node, ())

    def _walk(self, node: yaml.Node, at: tuple[Any, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode):
                    self.lines[(*at, key.value)] = key.start_mark.line + 1
                    self._walk(value, (*at, key.value))
        elif isinstance(node, yaml.SequenceNode):
            for i, value in enumerate(node.value):
                self.lines[(*at, i)] = value.start_mark.line + 1
                self._walk(value, (*at, i))

    def section(self, *at: str) -> Any:
        node: Any = self.data
        for key in at:
            node = node.get(key) if isinstance(node, dict) else None
        return node

    def where(self, *at: Any) -> tuple[str, str]:
        """`dotted.path (line N)` and `file:N` for a key."""
        line = self.lines.get(tuple(at), 0)
        dotted = ".".join(map(str, at))
        return f"{dotted} (line {line})", f"{self.path}:{line}"

    def value(self, env: Mapping[str, _Value], *at: Any) -> _Value:
        """A setting written in the file, with an `os.environ/NAME` value read from `env`."""
        raw = self.section(*at)
        where, ref = self.where(*at)
        if isinstance(raw, str) and raw.startswith(ENV_PREFIX):
            name = raw[len(ENV_PREFIX):]
            found = env.get(name)
            return _Value(None if found is None else found.value, f"{where} = {raw}", env=name, ref=ref)
        return _Value(raw, where, ref=ref, literal=True)


def _environment(config: _Config, environ: Mapping[str, str]) -> tuple[dict[str, _Value], list[str]]:
    """The environment the proxy runs with: the process's, overlaid by the config's `environment_variables`
    (LiteLLM sets each one, an `os.environ/NAME` one only when NAME is set)."""
    env = {k: _Value(v, f"environment {k}", env=k) for k, v in environ.items()}
    notes = []
    section = config.section("environment_variables")
    for key in section if isinstance(section, dict) else ():
        if not isinstance(key, str):
            continue
        value = config.value(env, "environment_variables", key)
        if value.literal and value.value is not None:
            env[key] = _Value(str(value.value), value.where, env=key, ref=value.ref, literal=True)
        elif value.value is not None:
            env[key] = _Value(str(value.value), value.where, env=value.env, ref=value.ref)
        elif key.endswith("PASSWORD"):  # set where the gateway runs, surely: the runbook reads it by that name
            env[key] = _Value(None, value.where, env=value.env, ref=value.ref)
        elif key.startswith("REDIS_"):
            notes.append(f"{value.ref} environment_variables.{key} is {ENV_PREFIX}{value.env}, which is not set "
                         "here: LiteLLM leaves it unset too")
    return env, notes


# -- one source --------------------------------------------------------------------------------------------------


@dataclass
class _Reading:
    """What one read found so far."""

    config: _Config
    env: dict[str, _Value]
    targets: list[GatewayTarget] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _truthy(value: Any) -> bool:
    return str(value).lower() in ("true", "1", "yes") if isinstance(value, str) else bool(value)


def _nodes(value: _Value, kind: str, reading: _Reading) -> list[tuple[str, int]] | None:
    """Cluster startup nodes ({host, port} mappings) or Sentinel nodes ([host, port] pairs), JSON text from an
    environment variable or a YAML list; None (and a problem) when malformed."""
    raw = value.value
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            reading.problems.append(f"{value.where} is not a JSON list of {kind} nodes")
            return None
    out: list[tuple[str, int]] = []
    for item in raw if isinstance(raw, list) else [None]:
        pair = (item.get("host"), item.get("port", 6379)) if isinstance(item, dict) else (
            tuple(item) if isinstance(item, (list, tuple)) and len(item) == 2 else (None, None))
        try:
            host, port = str(pair[0] or ""), int(pair[1])  # type: ignore[arg-type]
        except (TypeError, ValueError):
            host, port = "", 0
        if not host or not 1 <= port <= 65535:
            reading.problems.append(f"{value.where}: a {kind} node is not a host and a port: {item!r}")
            return None
        out.append((host, port))
    return out or None


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _password(setting: _Value | None, reading: _Reading, *, what: str = "password") -> str:
    """The variable a password is read from (never the password): an `os.environ/NAME` or REDIS_* one; a password
    written in the file is a problem, and its variable the one it should move to."""
    if setting is None:
        return ""
    if setting.literal:
        name = setting.env or (PASSWORD_VAR if what == "password" else ENV_FALLBACKS["sentinel_password"])
        reading.problems.append(
            f"{setting.ref} {setting.where.split(' (')[0]} holds the {what} itself: it was not copied. Move it to "
            f"an environment variable (`{ENV_PREFIX}{name}` in the config, `export {name}=...` for the runbook)")
        return name
    return setting.env


def _resolve(role: str, own: Mapping[str, _Value], reading: _Reading, namespace: str = "") -> None:
    """One source's Redis, as LiteLLM layers it: the REDIS_* environment below the source's own settings, the
    fallback variables for what is still missing, then cluster > URL > Sentinel > host (`get_redis_client`)."""
    env = reading.env
    unset = [k for k, v in own.items() if v.value is None and v.env]
    for k in unset:
        if k not in _SECRETS:  # a password is read at run time, by its name only
            v = own[k]
            reading.problems.append(f"{v.ref} {v.where.split(' (')[0]} is {ENV_PREFIX}{v.env}, which is not set "
                                    f"here: export {v.env} as the gateway has it, then read the config again")
    if any(k in ("host", "port", "url", "startup_nodes", "sentinel_nodes", "service_name") for k in unset):
        return
    names_target = any(k in own and own[k].value is not None for k in ("host", "startup_nodes", "sentinel_nodes"))
    layered: dict[str, _Value] = {s: env[f"REDIS_{s.upper()}"] for s in ENV_SETTINGS if f"REDIS_{s.upper()}" in env}
    if names_target and ("url" not in own or own["url"].value is None):
        layered.pop("url", None)  # a source naming its own server outranks REDIS_URL
    layered.update(own)
    for setting, var in ENV_FALLBACKS.items():
        if setting not in layered and var in env:
            layered[setting] = env[var]
    # A password is wanted by the name of its variable only: one not set here still names it.
    got = {k: v for k, v in layered.items() if v.value not in (None, "") or (k in _SECRETS and v.env)}
    tls = {_TLS_FILES[k]: str(got[k].value) for k in _TLS_FILES if k in got}
    used: list[_Value] = []
    username = str(got["username"].value) if "username" in got else ""
    if "startup_nodes" in got:
        nodes = _nodes(got["startup_nodes"], "cluster", reading)
        if nodes is None:
            return
        scheme = "rediss" if _truthy(got["ssl"].value if "ssl" in got else False) else "redis"
        used = [got[k] for k in ("startup_nodes", "password", "username", "ssl") if k in got]
        target = GatewayTarget(f"{scheme}://{_address(*nodes[0])}/0", (role,), (), username,
                               _password(got.get("password"), reading) or PASSWORD_VAR, discover=True, tls=tls,
                               namespace=namespace)
    elif "url" in got:
        target = _from_url(role, got, reading, tls, namespace)
        if target is None:
            return
        used = [got[k] for k in ("url", "username") if k in got]
    elif "sentinel_nodes" in got and "service_name" in got:
        nodes = _nodes(got["sentinel_nodes"], "Sentinel", reading)
        if nodes is None:
            return
        scheme = "rediss+sentinel" if _truthy(got["ssl"].value if "ssl" in got else False) else "redis+sentinel"
        db = f"/{got['db'].value}" if "db" in got and str(got["db"].value) != "0" else ""
        used = [got[k] for k in ("sentinel_nodes", "service_name", "sentinel_password", "password", "username")
                if k in got]
        target = GatewayTarget(f"{scheme}://{','.join(_address(*n) for n in nodes)}/{got['service_name'].value}{db}",
                               (role,), (), username, _password(got.get("password"), reading) or PASSWORD_VAR,
                               _password(got.get("sentinel_password"), reading, what="Sentinels' password"),
                               tls=tls, namespace=namespace)  # a Sentinel URL implies discover
    elif "host" in got:
        try:
            port = int(got["port"].value) if "port" in got else 6379
        except (TypeError, ValueError):
            reading.problems.append(f"{got['port'].where}: the port is not a number ({got['port'].value!r})")
            return
        scheme = "rediss" if _truthy(got["ssl"].value if "ssl" in got else False) else "redis"
        db = got["db"].value if "db" in got else 0
        used = [got[k] for k in ("host", "port", "db", "password", "username", "ssl") if k in got]
        target = GatewayTarget(f"{scheme}://{_address(str(got['host'].value), port)}/{db}", (role,), (), username,
                               _password(got.get("password"), reading) or PASSWORD_VAR, tls=tls, namespace=namespace)
    else:
        if not unset:
            reading.notes.append(f"{ROLES[role]}: no host, url, cluster or Sentinel nodes in the config or the "
                                 "REDIS_* environment, so LiteLLM has no Redis for it")
        return
    try:
        check_target_parameter(target.target)
    except ParameterError as err:
        reading.problems.append(f"{', '.join(v.where for v in used)}: {err}")
        return
    sources = [v.where for v in used]
    if "password" not in got and "url" not in got:
        sources.append(f"no password set: {PASSWORD_VAR} when set, as LiteLLM falls back to it")
    reading.targets.append(replace(target, sources=tuple(sources)))


def _from_url(role: str, got: Mapping[str, _Value], reading: _Reading, tls: dict[str, str],
              namespace: str) -> GatewayTarget | None:
    """A URL setting without its userinfo: a password in it is a problem (written in the file) or a note (in
    the environment), never copied."""
    url = got["url"]
    try:
        parts = urlsplit(str(url.value))
        parts.port  # noqa: B018  (raises on a bad port)
    except ValueError as err:
        reading.problems.append(f"{url.where}: not a valid URL ({err})")
        return None
    username = unquote(parts.username) if parts.username else str(got["username"].value) if "username" in got else ""
    password_env = ""
    if parts.password:
        if url.literal:
            reading.problems.append(
                f"{url.ref} {url.where.split(' (')[0]} carries the password inside the URL: it was not copied. Give "
                f"the host and port instead, and the password as `{ENV_PREFIX}{PASSWORD_VAR}` (LiteLLM drops a "
                f"separate password beside a URL); `export {PASSWORD_VAR}=...` for the runbook")
        else:
            reading.notes.append(f"{url.where.split(' = ')[0]} carries a password inside the URL ({url.env}): the "
                                 f"runbook reads a password alone: export {PASSWORD_VAR} with it (password_env)")
        password_env = PASSWORD_VAR
    netloc = parts.netloc.rsplit("@", 1)[-1]
    rest = parts.path if parts.path not in ("", "/") or parts.scheme == "unix" else "/0"
    target = f"{parts.scheme}://{netloc}{rest}" + (f"?{parts.query}" if parts.query else "")
    return GatewayTarget(target, (role,), (), username, password_env, tls=tls, namespace=namespace)


def _settings(reading: _Reading, at: tuple[str, ...], keys: Mapping[str, str]) -> dict[str, _Value]:
    section = reading.config.section(*at)
    found: dict[str, _Value] = {}
    for key, setting in keys.items():
        if isinstance(section, dict) and key in section:
            found[setting] = reading.config.value(reading.env, *at, key)
    return found


def _router(reading: _Reading) -> None:
    """router_settings: a Redis of the router's own only with redis_url, or redis_host and redis_port; its
    cache_kwargs add to them (`redis_cache_for`)."""
    top = _settings(reading, ("router_settings",), ROUTER_KEYS)
    if any(k in ("url", "host", "port") and v.env and v.value is None for k, v in top.items()):
        _resolve("router", top, reading)  # says which reference is not set here
        return
    if top.get("url", _Value(None, "")).value is None and (top.get("host", _Value(None, "")).value is None
                                                          or top.get("port", _Value(None, "")).value is None):
        if "host" in top or "port" in top:
            written = top.get("host") or top["port"]
            reading.notes.append(f"{written.ref} router_settings names neither redis_url nor both redis_host and "
                                 "redis_port, so LiteLLM's router keeps no Redis of its own")
        return
    _resolve("router", {**top, **_settings(reading, ("router_settings", "cache_kwargs"), SOURCE_KEYS)}, reading)


def _cache(reading: _Reading) -> bool:
    """litellm_settings.cache with its cache_params; True when the response cache is a Redis."""
    params = reading.config.section("litellm_settings", "cache_params")
    enabled = reading.config.section("litellm_settings", "cache") is True
    if not enabled:
        if params is not None:
            where, ref = reading.config.where("litellm_settings", "cache_params")
            reading.notes.append(f"{ref} litellm_settings.cache_params is not used: litellm_settings.cache is not "
                                 "true")
        return False
    params = params if isinstance(params, dict) else {}
    kind = str(params.get("type", "redis"))
    if kind != "redis":
        _, ref = reading.config.where("litellm_settings", "cache_params", "type")
        reading.notes.append(f"{ref} the response cache is type {kind}, not a Redis the runbook reads (only type "
                             "redis is)")
        return False
    if not params:  # LiteLLM: REDIS_HOST, REDIS_PORT and REDIS_PASSWORD, named as the source's own
        own = {s: reading.env.get(f"REDIS_{s.upper()}", _Value(None, f"environment REDIS_{s.upper()}"))
               for s in ("host", "port")}
        if PASSWORD_VAR in reading.env:
            own["password"] = reading.env[PASSWORD_VAR]
        _resolve("cache", own, reading)
        return True
    own = _settings(reading, ("litellm_settings", "cache_params"), SOURCE_KEYS)
    namespace = params.get("namespace")
    _resolve("cache", own, reading, namespace=str(namespace) if isinstance(namespace, str) else "")
    return True


def _coordination(reading: _Reading) -> bool:
    """general_settings.coordination_redis: True when the config has one."""
    if not isinstance(reading.config.section("general_settings", "coordination_redis"), dict):
        return False
    _resolve("coordination", _settings(reading, ("general_settings", "coordination_redis"), SOURCE_KEYS), reading)
    return True


def _merge(targets: Iterable[GatewayTarget], notes: list[str]) -> tuple[GatewayTarget, ...]:
    """One target per server: the same address (sentinels and service for a Sentinel URL) is one entry, with the
    roles and sources of all."""
    out: dict[str, GatewayTarget] = {}
    for t in targets:
        parts = urlsplit(t.target)
        key = f"{parts.scheme.replace('rediss', 'redis')}://{parts.netloc.lower()}" + (
            parts.path.split("/")[1] if "sentinel" in parts.scheme or parts.scheme == "unix" else "")
        first = out.get(key)
        if first is None:
            out[key] = t
            continue
        if (first.username, first.password_env) != (t.username, t.password_env):
            notes.append(f"{t.target} is used twice with other credentials ({t.sources[0]}): kept "
                         f"{first.username or 'the default user'} with {first.password_env or 'no password'}")
        roles = tuple(dict.fromkeys((*first.roles, *t.roles)))
        out[key] = replace(first, roles=roles, sources=(*first.sources, *t.sources),
                           namespace=first.namespace or t.namespace)
    return tuple(out.values())


def read_litellm_config(path: str | Path, environ: Mapping[str, str] | None = None) -> GatewayTargets:
    """Every Redis the LiteLLM proxy config at `path` uses, with `environ` (default: this process's) as the
    proxy's environment. ParameterError (exit 2) when the file cannot be read or names no usable Redis."""
    config = _Config(Path(path))
    env, notes = _environment(config, os.environ if environ is None else environ)
    reading = _Reading(config, env, notes=notes)
    _router(reading)
    redis_cache = _cache(reading)
    explicit = _coordination(reading)
    if not explicit and not redis_cache:  # LiteLLM's coordination fallback: the REDIS_* variables alone
        if any(v in env for v in ("REDIS_HOST", "REDIS_URL", "REDIS_CLUSTER_NODES", "REDIS_SENTINEL_NODES")):
            _resolve("coordination", {}, reading)
    found = GatewayTargets(str(path), _merge(reading.targets, reading.notes), tuple(dict.fromkeys(reading.problems)),
                           tuple(dict.fromkeys(reading.notes)))
    if not found.targets:
        said = "; ".join([*found.problems, *found.notes]) or (
            "no router_settings.redis_*, no litellm_settings.cache with type redis, no coordination_redis, and no "
            "REDIS_HOST or REDIS_URL in the environment")
        raise ParameterError(f"LiteLLM config {path}: no Redis the runbook can reach from it: {said}. Give the "
                             "server with -p target URL instead")
    return found


def gateway_parameters(path: str | Path, given: Mapping[str, Any], declared: Container[str],
                       environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The parameters `-p gateway_config PATH` stands for, read now (so a run follows the file as it changes):
    `target` or `targets` and their settings, and those of `declared` (the run's notebooks' names) the run-level
    ones are; the ones `given` sets explicitly win. ParameterError when the run also names a target, or the file
    holds a password (`read_litellm_config` problems)."""
    if not isinstance(path, (str, Path)) or not str(path):
        raise ParameterError(f"{GATEWAY_CONFIG} must be the path of a LiteLLM proxy config file, got {path!r}")
    clash = [k for k in ("target", "targets") if k in given]
    if clash:
        raise ParameterError(f"give either {GATEWAY_CONFIG} (the targets read from {path}) or {clash[0]}, not both")
    found = read_litellm_config(path, environ)
    if found.problems:
        raise ParameterError(f"gateway_config {path}: {'; '.join(found.problems)}")
    params = found.params()
    if "targets" in params:
        params["targets"] = [{k: v for k, v in e.items() if k == "target" or k not in given} for e in params["targets"]]
    return {k: v for k, v in params.items() if k not in given and (k in declared or k == "targets")}


def write_params(path: Path, text: str, *, force: bool = False) -> None:
    """Write a params file atomically (a temp file beside it, then a rename); ParameterError when it exists and
    `force` is not given."""
    if path.exists() and not force:
        raise ParameterError(f"{path} exists: give --force to replace it, or another --out")
    if not path.parent.is_dir():
        raise ParameterError(f"{path}: the directory {path.parent} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
