"""Operations on one live server and its files that several steps share: a BGSAVE and its wait, file
validation with the server's own checkers, the restart trap, the server log's tail, the host's
overcommit setting, and whether the server process may write a directory.

No step logic here: each function reads or does one thing and says what it saw.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

from runbook.errors import NoReply, PreconditionFailed, WaitTimeout
from runbook.model import Check, Status
from runbook.server.aof import aof_on_disk, aof_ready, fork_progress
from runbook.server.configfile import mask_secrets, read_config
from runbook.server.poll import Deadline
from runbook.server.settings import config_get
from runbook.server.target import Identity, Target


def misconf_reason(client: redis.Redis) -> str:
    """Why a server answers MISCONF: its last BGSAVE status and stop-writes-on-bgsave-error."""
    info = client.info("persistence")
    return (f"the server refuses writes (MISCONF): rdb_last_bgsave_status:{info.get('rdb_last_bgsave_status')} "
            "with stop-writes-on-bgsave-error yes. Fix the failing save (server log: disk space, permissions of "
            "dir, vm.overcommit_memory), then BGSAVE; writes resume once a save succeeds.")


def bgsave_and_wait(client: redis.Redis, timeout_s: float = 120.0) -> tuple[float, dict[str, Any]]:
    """BGSAVE SCHEDULE, then wait until a save that started after now has completed and succeeded.

    Uses `rdb_saves` where the server has it (7.0+); otherwise waits for LASTSAVE to move,
    first letting the clock reach a new second (LASTSAVE is in whole seconds). One deadline, `timeout_s`
    from the first call, bounds every call: WaitTimeout naming it and what was last seen.
    See https://redis.io/docs/latest/commands/bgsave/
    """
    deadline = Deadline(timeout_s, "BGSAVE")
    try:
        return _bgsave_and_wait(client, deadline)
    except NoReply as err:
        raise deadline.missed("no completed BGSAVE") from err


#: What a BGSAVE wait that times out says it last saw.
BGSAVE_FIELDS = ("rdb_bgsave_in_progress", "rdb_last_bgsave_status", "rdb_saves")


def _bgsave_and_wait(client: redis.Redis, deadline: Deadline) -> tuple[float, dict[str, Any]]:
    def persistence() -> dict[str, Any]:
        info = deadline.call(client, lambda c: c.info("persistence"), "INFO persistence")
        deadline.saw({**{k: info[k] for k in BGSAVE_FIELDS if k in info}, **fork_progress(info)})
        return dict(info)

    def lastsave() -> int:
        return int(deadline.call(client, lambda c: c.lastsave(), "LASTSAVE").timestamp())

    def bgsave() -> None:
        deadline.call(client, lambda c: c.bgsave(schedule=True), "BGSAVE SCHEDULE")
        deadline.saw("BGSAVE SCHEDULE accepted")

    saves_before = persistence().get("rdb_saves")
    last_before = lastsave()
    if saves_before is None:
        while int(time.time()) <= last_before:
            deadline.sleep(0.05)
    start = time.monotonic()
    try:
        bgsave()
    except redis.ResponseError as err:
        if "already in progress" not in str(err):
            raise PreconditionFailed(f"BGSAVE was refused: {err}") from err
        # Some versions refuse SCHEDULE while a save runs: wait for that one, then start ours.
        while int(persistence().get("rdb_bgsave_in_progress", 0)) and not deadline.expired:
            deadline.sleep(0.05)
        bgsave()
    while True:
        info = persistence()
        done = int(info["rdb_saves"]) > int(saves_before) if saves_before is not None else lastsave() > last_before
        if done and not int(info.get("rdb_bgsave_in_progress", 0)):
            if info.get("rdb_last_bgsave_status") != "ok":
                raise PreconditionFailed(f"BGSAVE failed: rdb_last_bgsave_status:{info.get('rdb_last_bgsave_status')}; "
                                         "see the server log")
            return time.monotonic() - start, info
        if deadline.expired:
            raise deadline.missed("no completed BGSAVE")
        deadline.sleep(0.02)


def check_tool(ident: Identity, kind: str, workdir: Path) -> Path | None:
    """`<server>-check-rdb` / `-aof` of the target's own build when local, else one on PATH.

    The checkers are the server binary itself, chosen by the name it runs under, so a link
    to the target's executable gives a checker of exactly its version.
    """
    exe = Path(ident.executable) if ident.executable else None
    if exe is not None and exe.is_file():
        link = workdir / f"{ident.server}-check-{kind}"
        if not link.exists():
            link.symlink_to(exe)
        return link
    for name in (f"{ident.server}-check-{kind}", f"redis-check-{kind}"):
        found = shutil.which(name)
        if found:
            return Path(found)
    return None


def _run_check(tool: Path, file: Path) -> tuple[bool, str]:
    # Never --fix: it is interactive and rewrites the file.
    proc = subprocess.run([str(tool), str(file)], capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    last = [ln for ln in proc.stdout.splitlines() if ln.strip()][-1:] or [proc.stderr.strip()]
    return proc.returncode == 0, last[0][:160]


def validate_files(ident: Identity, runtime: dict[str, str]) -> list[Check]:
    """Copy dump.rdb and the AOF to a temp dir and run the server's own checkers on the copies."""
    data_dir = Path(runtime.get("dir", ""))
    checks: list[Check] = []
    with tempfile.TemporaryDirectory(prefix="runbook-check-") as tmp:
        work = Path(tmp)
        rdb = data_dir / runtime.get("dbfilename", "dump.rdb")
        targets: list[tuple[str, Path, str]] = []
        if rdb.is_file():
            targets.append(("rdb", rdb, "rdb"))
        disk = aof_on_disk(data_dir, runtime.get("appendfilename", "appendonly.aof"),
                           runtime.get("appenddirname", "appendonlydir"))
        for f in disk.files:
            if f.role == "aof-manifest":
                continue
            # A base file with an RDB preamble is an RDB (valkey-check-aof 9.1 misreads VALKEY-magic bases).
            targets.append((f.role, f.path, "rdb" if f.path.suffix == ".rdb" else "aof"))
        for role, path, kind in targets:
            tool = check_tool(ident, kind, work)
            if tool is None:
                checks.append(Check(f"check_{role}", Status.WARN,
                                    f"no {ident.server}-check-{kind} here: {path.name} not validated"))
                continue
            copy = work / f"copy-{path.name}"
            shutil.copy2(path, copy)
            ok, last = _run_check(tool, copy)
            checks.append(Check(f"check_{role}", Status.PASS if ok else Status.FAIL, f"{tool.name} {path.name}: {last}",
                                "" if ok
                                else "the file on disk is damaged: take a fresh BGSAVE / BGREWRITEAOF and investigate"))
    return checks


def restart_trap(target: Target, config_file: str = "") -> str:
    """Why a restart now would lose data (the file says appendonly yes, no AOF on disk), or ""."""
    ident = target.identify()
    runtime = target.runtime_settings()
    path = config_file or ident.config_file
    if not path or not os.access(path, os.R_OK):
        return ""
    config = read_config(path)
    if (config.value("appendonly") or "no").lower() != "yes":
        return ""
    info = target.client.info("persistence")
    if runtime.get("appendonly") != "yes" or not aof_ready(info):
        # Stale or empty: an AOF left from an earlier run (or none) would be loaded instead of dump.rdb.
        return (f"{path} says appendonly yes but AOF is not running complete at runtime (appendonly "
                f"{runtime.get('appendonly')}, aof_enabled:{info.get('aof_enabled')}): a restart would load an "
                "old or empty AOF and ignore dump.rdb. Run 02-enable-aof first.")
    data_dir = Path(runtime.get("dir", ""))
    if not os.access(data_dir, os.R_OK | os.X_OK):
        return ""
    disk = aof_on_disk(data_dir, config.value("appendfilename") or runtime.get("appendfilename", "appendonly.aof"),
                       config.value("appenddirname") or runtime.get("appenddirname", "appendonlydir"))
    if disk.loadable:
        return ""
    return (f"{path} says appendonly yes but there is no loadable AOF in {data_dir} ({disk.layout}): a restart "
            "would start empty and the next save would overwrite dump.rdb. Run 02-enable-aof first.")


#: Seconds an error message waits for the server to name its log file.
LOG_NAME_S = 1.0


def server_log_tail(target: Target, lines: int = 4) -> str:
    """The last lines of the server's log when it is a file on this host, for an error message (asks for its
    name for a second at most: the error may be that the server stopped answering)."""
    if not target.local:
        return ""
    try:
        logfile = Deadline(LOG_NAME_S).call(
            target.client, lambda c: config_get(c, ["logfile"], target.config_command), "CONFIG GET logfile"
        ).get("logfile", "")
    except (PreconditionFailed, WaitTimeout, redis.RedisError):
        return ""
    path = Path(logfile)
    if not (target.local and logfile and path.is_file() and os.access(path, os.R_OK)):
        return ""
    tail = path.read_text(errors="replace").splitlines()[-lines:]
    return f" Server log ({logfile}):\n" + mask_secrets("\n".join(tail))


OVERCOMMIT_PATH = Path("/proc/sys/vm/overcommit_memory")


def read_overcommit(path: Path = OVERCOMMIT_PATH) -> int | None:
    """vm.overcommit_memory of this host, or None when it cannot be read."""
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def server_ids(pid: int) -> tuple[int, set[int]] | None:
    """The effective uid and groups of a local process, from /proc."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    uid = int(fields["Uid"].split()[1])
    gids = {int(fields["Gid"].split()[1]), *map(int, fields.get("Groups", "").split())}
    return uid, gids


def read_only_mount(path: Path) -> Path | None:
    """The mount point when `path` is on a read-only mount (nobody may create files there, not even root)."""
    try:
        if not os.statvfs(path).f_flag & os.ST_RDONLY:
            return None
    except OSError:
        return None
    mount = Path(os.path.realpath(path))
    while not os.path.ismount(mount) and mount != mount.parent:
        mount = mount.parent
    return mount


def may_write_dir(path: Path, uid: int, gids: set[int]) -> bool:
    """Whether a process with `uid` and `gids` may create files in `path` (its write and search bits, and
    a mount that is not read-only)."""
    if read_only_mount(path) is not None:
        return False
    if uid == 0:
        return True
    st = path.stat()
    if st.st_uid == uid:
        return bool(st.st_mode & 0o300 == 0o300)
    if st.st_gid in gids:
        return bool(st.st_mode & 0o030 == 0o030)
    return bool(st.st_mode & 0o003 == 0o003)


def acl_user(target: Target) -> str:
    """The ACL user this connection authenticated as (`default` when none was named)."""
    return str(target.client.connection_pool.connection_kwargs.get("username") or "default")


def may_run(target: Target, *command: str) -> bool | None:
    """Whether this connection's ACL user may run `command`, asked with ACL DRYRUN (Redis 7.0+, Valkey),
    which runs nothing; None when the server cannot say (6.2 has no DRYRUN, or the user may not run it).
    See https://redis.io/docs/latest/commands/acl-dryrun/
    """
    try:
        reply = target.client.execute_command("ACL", "DRYRUN", acl_user(target), *command)
    except redis.ResponseError:
        return None
    return reply is True or str(reply) == "OK"
