"""Persistence settings at runtime and in the config file, and the drift between them.

See https://redis.io/docs/latest/commands/config-get/
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import redis

from runbook.errors import ChangeFailed, PreconditionFailed
from runbook.server.configfile import ConfigFile

#: Every persistence setting the runbook compares, with the server's default (None: no fixed default).
PERSISTENCE_SETTINGS: dict[str, str | None] = {
    "save": "3600 1 300 100 60 10000",
    "appendonly": "no",
    "appendfsync": "everysec",
    "aof-use-rdb-preamble": "yes",
    "auto-aof-rewrite-percentage": "100",
    "auto-aof-rewrite-min-size": "64mb",
    "no-appendfsync-on-rewrite": "no",
    "stop-writes-on-bgsave-error": "yes",
    "dir": None,
    "dbfilename": "dump.rdb",
    "appendfilename": "appendonly.aof",
    "appenddirname": "appendonlydir",
}

_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1024, "m": 1000**2, "mb": 1024**2, "g": 1000**3, "gb": 1024**3}


def memory_bytes(value: str) -> int:
    """A redis.conf memory value ("64mb", "1g", "100") in bytes."""
    m = re.fullmatch(r"\s*(-?\d+)\s*([a-zA-Z]*)\s*", value)
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(f"not a memory value: {value!r}")
    return int(m.group(1)) * _UNITS[m.group(2).lower()]


def normalize(name: str, value: str | None) -> str | None:
    """A value in the form the server reports it, so file and runtime compare equal when they mean the same."""
    if value is None:
        return None
    v = value.strip()
    if name == "auto-aof-rewrite-min-size":
        return str(memory_bytes(v))
    if name == "save":
        return " ".join(v.split())
    if name in ("appendonly", "appendfsync", "aof-use-rdb-preamble", "no-appendfsync-on-rewrite",
                "stop-writes-on-bgsave-error"):
        return v.lower()
    if name == "dir" and len(v) > 1:
        return v.rstrip("/")
    return v


def save_rules(value: str) -> list[tuple[int, int]]:
    """`save 3600 1 300 100` as [(3600, 1), (300, 100)]; an empty policy is []."""
    nums = [int(x) for x in value.split()]
    return list(zip(nums[::2], nums[1::2]))


def config_get(client: redis.Redis, names: list[str], config_command: str = "CONFIG") -> dict[str, str]:
    """CONFIG GET each name in one round trip (works on 6.2, which takes one pattern per call)."""
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.execute_command(config_command, "GET", name)
    try:
        replies = pipe.execute()
    except redis.ResponseError as err:
        if "unknown command" in str(err).lower():
            raise PreconditionFailed(
                f"the server does not know the command {config_command!r} ({err}). If CONFIG was renamed "
                "with rename-command, pass its new name as config_command."
            ) from err
        raise PreconditionFailed(f"{config_command} GET was refused: {err}") from err
    out: dict[str, str] = {}
    for reply in replies:
        if isinstance(reply, dict):
            out.update({str(k): str(v) for k, v in reply.items()})
        else:
            out.update({str(k): str(v) for k, v in zip(reply[::2], reply[1::2])})
    return out


def runtime_settings(client: redis.Redis, config_command: str = "CONFIG") -> dict[str, str]:
    """The persistence settings the server runs with now (settings it does not know are left out)."""
    return config_get(client, list(PERSISTENCE_SETTINGS), config_command)


@dataclass(frozen=True)
class Drift:
    """One setting side by side: runtime, file, and whether a restart would change it."""

    setting: str
    runtime: str | None
    file: str | None  # the effective value after a restart (the file's, or the default it falls back to)
    in_file: bool
    status: str  # "same", "drift", "unknown"
    note: str = ""


def compare(runtime: dict[str, str], config: ConfigFile | None, server_major: int = 7) -> list[Drift]:
    """Runtime vs file for every persistence setting the server reports.

    `server_major` matters for `save`: before 7.0 a line with several rules is ignored.
    """
    rows: list[Drift] = []
    for name, default in PERSISTENCE_SETTINGS.items():
        if name not in runtime:
            continue
        rt = normalize(name, runtime[name])
        if config is None:
            rows.append(Drift(name, rt, None, False, "unknown", "config file not read"))
            continue
        raw = config.value(name, single_save_rule=server_major < 7)
        in_file = raw is not None
        effective = raw if in_file else default
        note = "" if in_file else "not in the file: the default applies"
        if name == "dir" and effective is not None and not Path(effective).is_absolute():
            rows.append(Drift(name, rt, effective, in_file, "unknown",
                              "relative dir: depends on the server's working directory"))
            continue
        if effective is None:
            rows.append(Drift(name, rt, None, in_file, "unknown", note or "no fixed default"))
            continue
        try:
            fv = normalize(name, effective)
        except ValueError as err:
            rows.append(Drift(name, rt, effective, in_file, "unknown", str(err)))
            continue
        rows.append(Drift(name, rt, fv, in_file, "same" if fv == rt else "drift", note))
    return rows


def config_set(client: redis.Redis, name: str, value: str, config_command: str = "CONFIG") -> None:
    """CONFIG SET one setting through the (possibly renamed) CONFIG command.

    See https://redis.io/docs/latest/commands/config-set/
    """
    try:
        client.execute_command(config_command, "SET", name, value)
    except redis.ResponseError as err:
        raise ChangeFailed(f"{config_command} SET {name} {value} was refused: {err}") from err
