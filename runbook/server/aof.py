"""The append-only file: its layout on disk and the wait for the initial rewrite.

See https://redis.io/docs/latest/operate/oss_and_stack/management/persistence/
"""

from __future__ import annotations

import logging
import shlex
import time
from dataclasses import dataclass
from pathlib import Path

import redis

from runbook.errors import ChangeFailed, WaitTimeout

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ManifestEntry:
    """One `file NAME seq N type b|i|h` line of a 7.x+ AOF manifest."""

    file: str
    seq: int
    type: str  # b: base, i: incremental, h: history (about to be deleted)


def parse_manifest(text: str) -> list[ManifestEntry]:
    """Parse the text of `appendonly.aof.manifest`; raises ValueError on a malformed line."""
    entries: list[ManifestEntry] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        words = shlex.split(line)
        if len(words) % 2:
            raise ValueError(f"manifest line {lineno}: odd number of words: {line!r}")
        fields = dict(zip(words[::2], words[1::2]))
        try:
            entries.append(ManifestEntry(fields["file"], int(fields["seq"]), fields["type"]))
        except (KeyError, ValueError) as err:
            raise ValueError(f"manifest line {lineno}: {line!r}: {err}") from err
    return entries


@dataclass(frozen=True)
class DiskFile:
    """A persistence file on disk: role (rdb, aof-manifest, aof-base, aof-incr, aof), size, mtime."""

    role: str
    path: Path
    size: int
    mtime: float


@dataclass(frozen=True)
class AofOnDisk:
    """What the AOF looks like in the data dir: layout, files, and whether a restart could load it."""

    layout: str  # "multi-part" (7.x+), "single-file" (6.x) or "absent"
    files: tuple[DiskFile, ...]
    has_base: bool
    problem: str = ""

    @property
    def loadable(self) -> bool:
        """True when a server started with `appendonly yes` would load data from it."""
        if self.layout == "multi-part":
            return self.has_base and not self.problem
        if self.layout == "single-file":
            return any(f.size > 0 for f in self.files)
        return False


def _disk_file(role: str, path: Path) -> DiskFile:
    st = path.stat()
    return DiskFile(role, path, st.st_size, st.st_mtime)


def aof_on_disk(data_dir: Path, appendfilename: str = "appendonly.aof", appenddirname: str = "appendonlydir") -> AofOnDisk:
    """Look for the AOF in `data_dir`: the 7.x manifest and its files, or 6.x's single file."""
    manifest = data_dir / appenddirname / f"{appendfilename}.manifest"
    if manifest.is_file():
        files = [_disk_file("aof-manifest", manifest)]
        try:
            entries = parse_manifest(manifest.read_text())
        except ValueError as err:
            return AofOnDisk("multi-part", tuple(files), False, f"unreadable manifest: {err}")
        missing = []
        for e in entries:
            p = manifest.parent / e.file
            if e.type == "h":
                continue
            if p.is_file():
                files.append(_disk_file({"b": "aof-base", "i": "aof-incr"}.get(e.type, "aof-" + e.type), p))
            else:
                missing.append(e.file)
        problem = f"manifest lists missing files: {', '.join(missing)}" if missing else ""
        return AofOnDisk("multi-part", tuple(files), any(e.type == "b" for e in entries), problem)
    single = data_dir / appendfilename
    if single.is_file():
        return AofOnDisk("single-file", (_disk_file("aof", single),), False)
    return AofOnDisk("absent", (), False)


#: INFO persistence fields that must all hold for the AOF to be complete (REDIS-FACTS.md).
READY_CONDITION = {
    "aof_enabled": 1,
    "aof_rewrite_in_progress": 0,
    "aof_rewrite_scheduled": 0,
    "aof_last_bgrewrite_status": "ok",
    "aof_last_write_status": "ok",
}


def aof_ready(info: dict[str, object], rewrites_before: int | None = None) -> bool:
    """True when INFO persistence shows AOF on with its initial rewrite completed."""
    if any(info.get(k) != v for k, v in READY_CONDITION.items()):
        return False
    if rewrites_before is not None and "aof_rewrites" in info:
        return int(info["aof_rewrites"]) > rewrites_before  # type: ignore[arg-type]
    return True


def wait_aof_ready(
    client: redis.Redis, timeout_s: float = 300.0, rewrites_before: int | None = None, poll_s: float = 0.05
) -> dict[str, object]:
    """Poll INFO persistence until the AOF is complete; WaitTimeout or ChangeFailed otherwise."""
    deadline = time.monotonic() + timeout_s
    info: dict[str, object] = {}
    while True:
        info = client.info("persistence")
        if aof_ready(info, rewrites_before):
            return info
        if info.get("aof_last_bgrewrite_status") == "err" and not info.get("aof_rewrite_in_progress"):
            failures = info.get("aof_rewrites_consecutive_failures", "?")
            raise ChangeFailed(
                f"the AOF rewrite failed (aof_last_bgrewrite_status:err, consecutive failures {failures}); "
                "check the server log and free disk in its dir"
            )
        if time.monotonic() >= deadline:
            seen = {k: info.get(k) for k in (*READY_CONDITION, "aof_rewrites")}
            raise WaitTimeout(f"AOF not complete after {timeout_s}s; last seen {seen}")
        time.sleep(poll_s)


def enable_aof_runtime(client: redis.Redis, appendfsync: str = "everysec", timeout_s: float = 300.0) -> dict[str, object]:
    """CONFIG SET appendfsync, then appendonly yes, and wait for the initial rewrite to complete."""
    before = client.info("persistence")
    rewrites_before = int(before["aof_rewrites"]) if "aof_rewrites" in before else None
    client.config_set("appendfsync", appendfsync)
    client.config_set("appendonly", "yes")
    return wait_aof_ready(client, timeout_s, rewrites_before)
