"""A server binary's settings at their defaults: CONFIG GET * of a throwaway started from it with no config file.

CONFIG REWRITE appends a setting absent from the file only when its value differs from the default, and the
defaults differ between products and versions (Valkey 9 frees lazily by default, Redis 7.0 does not): the one
source that cannot drift is the binary itself. `runbook.server.rewrite` uses them to predict a rewrite.
"""

from __future__ import annotations

import functools
from pathlib import Path

from runbook.sandbox.throwaway import Sandbox
from runbook.server.settings import config_get

#: What the throwaway sets itself (and the server may lower for its open-file limit): not its default.
SET_BY_SANDBOX = ("port", "bind", "daemonize", "dir", "pidfile", "logfile", "maxclients")


def server_defaults(binary: Path, timeout_s: float = 20.0) -> dict[str, str]:
    """CONFIG GET * of `binary` started with no config file on a loopback port, without SET_BY_SANDBOX (measured
    once per binary file in a process). PreconditionFailed when it does not start."""
    path = Path(binary)
    return dict(_measure(str(path), path.stat().st_mtime_ns, timeout_s))


@functools.lru_cache(maxsize=8)
def _measure(path: str, mtime_ns: int, timeout_s: float) -> tuple[tuple[str, str], ...]:
    sb = Sandbox(config=None, binary=Path(path))
    try:
        sb.start(timeout_s, what="measuring the server's defaults")
        values = config_get(sb.client(), ["*"])
    finally:
        sb.cleanup()
    return tuple((k, v) for k, v in values.items() if k not in SET_BY_SANDBOX)
