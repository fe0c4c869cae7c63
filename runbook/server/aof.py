"""The append-only file: its layout on disk, switching it on at runtime, and the one wait for it.

See https://redis.io/docs/latest/operate/oss_and_stack/management/persistence/
"""

from __future__ import annotations

import logging
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import redis

from runbook.errors import ChangeFailed, ChangeInterrupted, NoReply, WaitTimeout
from runbook.model import SettingChange
from runbook.server.poll import Deadline, WayBack
from runbook.server.settings import config_set, normalize

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


def aof_on_disk(data_dir: Path, appendfilename: str = "appendonly.aof",
                appenddirname: str = "appendonlydir") -> AofOnDisk:
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


#: INFO persistence fields that must all hold for the AOF to be complete (no single field says so).
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


#: Called while waiting with (seconds waited, INFO persistence): a progress bar, a log line. Called once more when
#: an interrupt ends the wait, with INTERRUPTED set in place of INFO persistence.
Progress = Callable[[float, Mapping[str, Any]], None]
INTERRUPTED = {"runbook_interrupted": 1}
#: INFO persistence counters a wait says it saw, besides READY_CONDITION.
COUNTERS = ("aof_rewrites", "aof_rewrites_consecutive_failures")
#: INFO persistence fields (7.0+) saying how far the fork child has got, shown while waiting.
FORK_PROGRESS = ("current_fork_perc", "current_save_keys_processed", "current_save_keys_total")


def fork_progress(info: Mapping[str, Any]) -> dict[str, Any]:
    """How far a running save or rewrite has got, as the server reports it (empty before 7.0 or when none runs)."""
    busy = int(info.get("aof_rewrite_in_progress", 0)) or int(info.get("rdb_bgsave_in_progress", 0))
    return {k: info[k] for k in FORK_PROGRESS if k in info} if busy else {}


def wait_aof_complete(client: redis.Redis, before: Mapping[str, Any], *, turning_on: bool, timeout_s: float = 300.0,
                      progress: Progress | None = None, deadline: Deadline | None = None) -> dict[str, Any]:
    """Poll INFO persistence until the full READY_CONDITION holds and, when AOF was just turned on, a
    rewrite newer than `before` (INFO persistence read before the change) has completed.

    `deadline`: one already running (apply_runtime's starts before its first CONFIG SET); else `timeout_s`
    from now. Each poll waits no longer than the time left, so a server that stops answering cannot hold the
    wait past it. ChangeFailed as soon as a rewrite fails; WaitTimeout naming the deadline and what was last
    seen, and when, once it has passed.
    """
    deadline = deadline or Deadline(timeout_s, "AOF rewrite")
    rewrites_before = int(before["aof_rewrites"]) if turning_on and before.get("aof_rewrites") is not None else None
    failures_before = before.get("aof_rewrites_consecutive_failures")
    while True:
        try:
            info = deadline.call(client, lambda c: c.info("persistence"), "INFO persistence")
        except NoReply as err:
            raise deadline.missed("the initial AOF rewrite did not complete") from err
        deadline.saw({"aof_rewrite_in_progress": info.get("aof_rewrite_in_progress"), **fork_progress(info),
                      **{k: info.get(k) for k in (*READY_CONDITION, *COUNTERS)}})
        if progress:
            progress(deadline.elapsed, info)
        if aof_ready(info, rewrites_before):
            return dict(info)
        if failures_before is not None and int(info.get("aof_rewrites_consecutive_failures", 0)) > int(failures_before):
            raise ChangeFailed(f"the AOF rewrite failed (aof_rewrites_consecutive_failures "
                               f"{info.get('aof_rewrites_consecutive_failures')}): check the server log, "
                               "permissions and free disk in its dir")
        if (failures_before is None and before.get("aof_last_bgrewrite_status") == "ok"
                and info.get("aof_last_bgrewrite_status") == "err" and not int(info.get("aof_rewrite_in_progress", 0))):
            raise ChangeFailed("the AOF rewrite failed (aof_last_bgrewrite_status:err): check the server log, "
                               "permissions and free disk in its dir")
        if deadline.expired:
            raise deadline.missed("the initial AOF rewrite did not complete")
        deadline.sleep(0.02 if deadline.elapsed < 1 else 0.05)


def apply_runtime(client: redis.Redis, changes: Sequence[SettingChange], config_command: str = "CONFIG", *,
                  timeout_s: float = 300.0, progress: Progress | None = None) -> dict[str, Any]:
    """CONFIG SET each change (appendonly last, so the initial rewrite runs with the final settings);
    when the AOF is on afterwards, wait until it is complete on disk (`wait_aof_complete`).

    The one way the runbook switches AOF on at runtime. One deadline, `timeout_s` from the first call, bounds
    every call and the wait. On any failure every setting sent is put back (appendonly first), over a connection
    opened before the change (`WayBack`: bounded too), and ChangeFailed says what was put back; an interrupt
    (KeyboardInterrupt) ends the wait the same way, as ChangeInterrupted. Returns INFO persistence.
    """
    deadline = Deadline(timeout_s, "initial AOF rewrite")
    turning_on = any(c.setting == "appendonly" and normalize("appendonly", c.after) == "yes" for c in changes)
    sent: list[SettingChange] = []
    way_back: WayBack | None = None
    try:
        before = deadline.call(client, lambda c: c.info("persistence"), "INFO persistence")
        way_back = WayBack(client)
        for change in sorted(changes, key=lambda c: c.setting == "appendonly"):
            sent.append(change)  # before the call: a change without a reply may still be applied
            try:
                deadline.call(client, lambda c, ch=change: config_set(c, ch.setting, str(ch.after), config_command),
                              f"{config_command} SET {change.setting} {change.after}")
            except ChangeFailed:
                sent.pop()  # refused: not applied
                raise
            deadline.saw(f"{config_command} SET {change.setting} {change.after}: OK")
        if not turning_on:
            info = deadline.call(client, lambda c: c.info("persistence"), "INFO persistence")
            if not int(info.get("aof_enabled", 0)):
                return dict(info)
        return wait_aof_complete(client, before, turning_on=turning_on, progress=progress, deadline=deadline)
    except (ChangeFailed, WaitTimeout, redis.RedisError) as err:
        raise ChangeFailed(f"{str(err).rstrip('.')}. {_put_back(way_back, config_command, sent)}") from err
    except KeyboardInterrupt:  # SIGINT, or the runner passing on SIGTERM: end the wait, put back
        waited = "before the initial AOF rewrite completed" if turning_on else "midway"
        if progress is not None and turning_on:
            progress(deadline.elapsed, INTERRUPTED)  # the wait's last word: how long it had waited
        raise ChangeInterrupted(f"interrupted {waited} ({deadline.elapsed:.1f} s in). "
                                f"{_put_back(way_back, config_command, sent)}") from None  # the message says it all
    finally:
        if way_back is not None:
            way_back.close()


def _put_back(way_back: WayBack | None, config_command: str, sent: Sequence[SettingChange]) -> str:
    """Put back every setting that was sent (appendonly first) in one write; say what was restored, or what was
    sent and not confirmed."""
    if not sent:
        return ChangeInterrupted.NOTHING_SENT
    order = sorted(sent, key=lambda c: c.setting != "appendonly")
    commands = [(config_command, "SET", c.setting, str(c.before)) for c in order]
    by_hand = "; ".join(" ".join(command) for command in commands)
    if way_back is None:
        return f"Could NOT restore the server: no connection for the put-back. Run {by_hand} by hand now."
    try:
        replies = way_back.send(commands, f"{config_command} SET (putting the server back)")
    except NoReply:
        return (f"Sent {by_hand} to put the server back, but it did not answer within {way_back.timeout_s:g} s either "
                f"(it runs what it was sent when it answers again): check with {config_command} GET "
                f"{' '.join(c.setting for c in order)}, and set by hand any value that differs.")
    except redis.RedisError as err:
        return f"Could NOT restore the server ({err}). Run {by_hand} by hand now."
    problems = [f"{c.setting} not restored to {c.before!r}: {reply}"
                for c, reply in zip(order, replies) if isinstance(reply, Exception)]
    if problems:
        return "Could NOT restore the server: " + "; ".join(problems) + ". Check it by hand now."
    return ChangeInterrupted.LEFT_AS_FOUND + ", ".join(f"{c.setting} {c.before}" for c in order) + "."
