"""Backups of dump.rdb and the AOF, with a manifest, validation, retention and a restore drill.

The destination is a local directory or any fsspec URL (papermill writes there too).
See https://redis.io/docs/latest/operate/oss_and_stack/management/persistence/#backing-up-redis-data
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import redis

from runbook.errors import Blocked, ChangeFailed, NoReply, WaitTimeout
from runbook.evidence.archive import sha256_file, slug
from runbook.evidence.summary import change_id as run_change_id
from runbook.model import Check, Outcome, Status, StepSummary, worst
from runbook.sandbox.binaries import for_server
from runbook.sandbox.throwaway import Sandbox
from runbook.server.aof import aof_on_disk
from runbook.server.lock import data_dbsize
from runbook.server.ops import bgsave_and_wait, validate_files
from runbook.server.poll import Deadline, WayBack
from runbook.server.target import Identity, Target

STEP = "backup"


@dataclass(frozen=True)
class BackupResult:
    result: Outcome  # planned, done, blocked
    location: str = ""
    manifest: dict[str, Any] = field(default_factory=dict)
    pruned: tuple[str, ...] = ()
    checks: tuple[Check, ...] = ()
    commands: str = ""
    skip_reason: str = ""  # skip_backup: why no backup was taken, as the operator said it
    would: str = ""  # plan only: what the backup would do; nothing was sent or written

    @property
    def verdict(self) -> Status:
        if self.result == Outcome.SKIPPED:
            return Status.SKIPPED
        return Status.BLOCKED if self.result == Outcome.BLOCKED else worst([c.status for c in self.checks])


@contextmanager
def rewrites_held(target: Target, timeout_s: float = 300.0) -> Iterator[None]:
    """Hold automatic AOF rewrites off (auto-aof-rewrite-percentage 0) and wait for a running one (each poll
    no longer than the time left); the setting is put back afterwards, whatever happens, over a connection
    opened before (`WayBack`): a server that stopped answering still gets it."""
    before = target.config_get(["auto-aof-rewrite-percentage"])["auto-aof-rewrite-percentage"]
    put_back = (target.config_command, "SET", "auto-aof-rewrite-percentage", before)
    with WayBack(target.client) as way_back:
        target.config_set("auto-aof-rewrite-percentage", "0")
        try:
            _wait_for_rewrite(target, Deadline(timeout_s, "running AOF rewrite (before the backup)"))
            yield
        except WaitTimeout as err:
            raise WaitTimeout(f"{str(err).rstrip('.')}. {_send_back(way_back, put_back)[1]}") from err
        except BaseException:
            _send_back(way_back, put_back)
            raise
        else:
            confirmed, text = _send_back(way_back, put_back)
            if not confirmed:
                raise ChangeFailed(f"{target.name}: {text}")


def _wait_for_rewrite(target: Target, deadline: Deadline) -> None:
    while True:
        try:
            info = deadline.call(target.client, lambda c: c.info("persistence"), "INFO persistence")
        except NoReply as err:
            raise deadline.missed("the running AOF rewrite did not finish (backup not taken)") from err
        if not int(info.get("aof_rewrite_in_progress", 0)):
            return
        deadline.saw({"aof_rewrite_in_progress": info.get("aof_rewrite_in_progress")})
        if deadline.expired:
            raise deadline.missed("the running AOF rewrite did not finish (backup not taken)")
        deadline.sleep(0.05)


def _send_back(way_back: WayBack, command: tuple[str, ...]) -> tuple[bool, str]:
    """Send `command` (a put-back) over `way_back`: whether the server confirmed it, and what to say."""
    text = " ".join(command)
    try:
        (reply,) = way_back.send([command], text)
    except (NoReply, redis.RedisError) as err:
        return False, (f"Sent {text} to put the server back, not confirmed ({err}): check it and run it by hand "
                       "if the value differs.")
    if isinstance(reply, Exception):
        return False, f"Could NOT put the server back: {text} was refused ({reply}); run it by hand."
    return True, f"Put back: {text}."


def _filesystem(destination: str) -> tuple[Any, str]:
    import fsspec  # noqa: PLC0415  (only when a backup is taken)

    fs, _, paths = fsspec.get_fs_token_paths(destination)
    return fs, paths[0]


def blocked_commands(data_dir: str, dest: str) -> str:
    return (f"# On the Redis host, as a user who can read {data_dir}:\n"
            "redis-cli BGSAVE   # then wait until: redis-cli INFO persistence | grep rdb_bgsave_in_progress:0\n"
            f"sudo cp -a {data_dir}/dump.rdb {data_dir}/appendonlydir {dest}/\n")


def resolve_destination(destination: str) -> str:
    """A local destination as an absolute path (relative ones are from the working directory); URLs as given."""
    if "://" in destination:
        return destination
    return str(Path(destination or "backups").expanduser().resolve())


def intent(destination: str, *, apply: bool = False, retention: int = 7,
           skip_reason: str = "") -> dict[str, Any] | None:
    """What `take_backup` is about to do, for `runbook.intend` (None when it writes nothing)."""
    if not apply or skip_reason.strip():
        return None
    where = resolve_destination(destination)
    return {"summary": f"BGSAVE, then copy dump.rdb (and the AOF, auto-aof-rewrite-percentage 0 while it is copied, "
                       f"put back after) to a new directory under {where}; keep this target's newest {retention}",
            "destination": where, "retention": retention}


def take_backup(target: Target, destination: str, *, include_aof: bool | None = None, retention: int = 7,
                apply: bool = False, verify_restore: bool = False, timeout_s: float = 300.0,
                skip_reason: str = "", change_id: str | None = None) -> BackupResult:
    """BGSAVE, copy dump.rdb (and the whole AOF), write a manifest, validate, prune, restore drill.

    `skip_reason`: no backup, and the reason recorded (skip_backup). The backup's name carries the target, the
    time and `change_id` (default: the run's); an existing backup is never replaced."""
    if skip_reason.strip():
        return BackupResult(Outcome.SKIPPED, skip_reason=skip_reason.strip())
    client = target.client
    ident = target.identify()
    runtime = target.runtime_settings()
    data_dir = Path(runtime.get("dir", ""))
    destination = resolve_destination(destination)
    if not (target.local and os.access(data_dir, os.R_OK | os.X_OK)):
        return BackupResult(Outcome.BLOCKED, commands=blocked_commands(str(data_dir), destination))
    aof_on = int(client.info("persistence").get("aof_enabled", 0)) == 1
    include_aof = aof_on if include_aof is None else include_aof and aof_on
    now = time.time()
    cid = run_change_id() if change_id is None else change_id
    name = (f"{slug(target.name)}-{time.strftime('%Y%m%dT%H%M%S', time.gmtime(now))}.{int(now * 1000) % 1000:03d}Z"
            + (f"-{cid}" if cid else ""))
    location = f"{destination.rstrip('/')}/{name}"
    if not apply:
        return BackupResult(Outcome.PLANNED, location, would=_would(target, data_dir, runtime, include_aof, location,
                                                                    retention, verify_restore))
    fs, root = _filesystem(destination)
    checks: list[Check] = []
    with tempfile.TemporaryDirectory(prefix="runbook-backup-") as tmp:
        stage = Path(tmp) / name
        stage.mkdir()
        seconds, _ = bgsave_and_wait(client, timeout_s)
        checks.append(Check("bgsave", Status.PASS, f"fresh BGSAVE completed in {seconds:.2f}s"))
        dbsize = data_dbsize(client)
        shutil.copy2(data_dir / runtime.get("dbfilename", "dump.rdb"), stage / runtime.get("dbfilename", "dump.rdb"))
        if include_aof:
            with rewrites_held(target, timeout_s):
                disk = aof_on_disk(data_dir, runtime.get("appendfilename", "appendonly.aof"),
                                   runtime.get("appenddirname", "appendonlydir"))
                for f in disk.files:
                    dest = stage / f.path.relative_to(data_dir)
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(f.path, dest)
        files = {str(p.relative_to(stage)): {"size": p.stat().st_size, "sha256": sha256_file(p)}
                 for p in sorted(stage.rglob("*")) if p.is_file()}
        manifest = {"server": ident.server, "version": ident.version, "target": target.name,
                    "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "dbsize": dbsize,
                    "aof": include_aof, "change_id": cid, "files": files}
        (stage / "MANIFEST.json").write_text(json.dumps(manifest, indent=2))
        copy_runtime = {**runtime, "dir": str(stage)}
        checks.extend(validate_files(ident, copy_runtime))
        if verify_restore:
            checks.append(restore_drill(ident, stage, runtime, manifest))
        # Backups hold the whole dataset: readable by their owner only. Uploaded under a .partial
        # name and renamed when complete, so an interrupted copy never looks like a backup.
        for p in [stage, *stage.rglob("*")]:
            p.chmod(0o700 if p.is_dir() else 0o600)
        fs.makedirs(root, exist_ok=True)
        final = f"{root.rstrip('/')}/{name}"
        if fs.exists(final) or fs.exists(final + ".partial"):
            raise ChangeFailed(f"{location} exists already: a backup never replaces another; nothing was copied")
        fs.put(str(stage), final + ".partial", recursive=True)
        fs.mv(final + ".partial", final, recursive=True)
        from fsspec.implementations.local import LocalFileSystem  # noqa: PLC0415  (with fsspec)

        if isinstance(fs, LocalFileSystem):  # fsspec's put does not keep modes
            for p in [Path(final), *Path(final).rglob("*")]:
                p.chmod(0o700 if p.is_dir() else 0o600)
    apart = _apart(data_dir, root if isinstance(fs, LocalFileSystem) else "")
    if all(c.status == Status.PASS for c in checks):
        pruned = prune(fs, root, slug(target.name), retention, keep=name)
        checks.append(Check("retention", Status.PASS, f"kept the newest {retention}; pruned {len(pruned)}"))
    else:
        pruned = []
        checks.append(Check("retention", Status.WARN, "nothing pruned: this backup did not pass every check",
                            "keep the older backups until a backup passes"))
    return BackupResult(Outcome.DONE, location, manifest, tuple(pruned), (*checks, apart))


def _would(target: Target, data_dir: Path, runtime: dict[str, str], include_aof: bool, location: str, retention: int,
           verify_restore: bool) -> str:
    """What `take_backup` would do with apply, from the data dir as it is now (plan only: nothing is sent or written;
    the backups this one would prune are counted where the destination is a local directory)."""
    rdb = data_dir / runtime.get("dbfilename", "dump.rdb")
    files = f"{rdb.name} ({rdb.stat().st_size} bytes now)" if rdb.is_file() else f"{rdb.name} (none yet)"
    if include_aof:
        disk = aof_on_disk(data_dir, runtime.get("appendfilename", "appendonly.aof"),
                           runtime.get("appenddirname", "appendonlydir"))
        files += (f" and the AOF ({len(disk.files)} file(s), {sum(f.size for f in disk.files)} bytes now; "
                  "auto-aof-rewrite-percentage 0 while it is copied, put back after)")
    root = location.rpartition("/")[0]
    pruned = ""
    if "://" not in root and Path(root).is_dir():
        pattern = _names_of(slug(target.name))
        ours = sum(1 for p in Path(root).iterdir() if pattern.fullmatch(p.name))
        pruned = f" (prune {max(ours + 1 - max(retention, 1), 0)} of the {ours} there)"
    return (f"BGSAVE, then copy {files} to {location}, with a manifest, validated"
            + (", and boot a throwaway server from the copy (restore drill)" if verify_restore else "")
            + f"; keep this target's newest {retention}{pruned}")


def _names_of(prefix: str) -> re.Pattern[str]:
    """The names of one target's backups (`<target slug>-<UTC time>[-<change id>]`)."""
    return re.compile(re.escape(prefix) + r"-\d{8}T\d{6}\.\d{3}Z(-[0-9a-z]+)?")


def prune(fs: Any, root: str, prefix: str, retention: int, keep: str) -> list[str]:
    """Remove this target's backups beyond the newest `retention` (never `keep`)."""
    names = sorted((p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(root, detail=False)), reverse=True)
    pattern = _names_of(prefix)
    ours = [n for n in names if pattern.fullmatch(n)]
    doomed = [n for n in ours[max(retention, 1):] if n != keep]
    for n in doomed:
        fs.rm(f"{root.rstrip('/')}/{n}", recursive=True)
    return doomed


def _apart(data_dir: Path, local_root: str) -> Check:
    """Whether the backup is out of the server's data dir (a backup inside it is lost with it, and a FLUSHALL
    or a wrong `dir` there does not spare it)."""
    if local_root and Path(local_root).resolve().is_relative_to(data_dir.resolve()):
        return Check("destination_apart", Status.WARN, f"the backup is inside the server's data dir {data_dir}",
                     "give destination a directory on another disk, or an s3:// URL")
    return Check("destination_apart", Status.PASS, f"out of the server's data dir {data_dir}")


def restore_drill(ident: Identity, stage: Path, runtime: dict[str, str], manifest: dict[str, Any]) -> Check:
    """Boot a throwaway server from a copy of the backup and compare DBSIZE with the manifest."""
    binary = for_server(ident, local=True).binary.path  # the backup is of a server on this host
    config = (f"dbfilename {runtime.get('dbfilename', 'dump.rdb')}\nappendonly {'yes' if manifest['aof'] else 'no'}\n"
              f"appendfilename {runtime.get('appendfilename', 'appendonly.aof')}\n"
              + (f"appenddirname {runtime['appenddirname']}\n" if runtime.get("appenddirname") else ""))
    sb = Sandbox(config=config, binary=binary)
    try:
        shutil.copytree(stage, sb.data_dir, dirs_exist_ok=True)
        sb.start(timeout_s=120, what="restore drill")
        got = data_dbsize(sb.client())
    except Exception as err:  # noqa: BLE001  (any failure is the finding of the drill)
        return Check("restore_drill", Status.FAIL, f"a server could not start from the backup: {err}")
    finally:
        sb.cleanup()
    # DBSIZE was read after the fork: a live server's writes and expiries in between move it a little.
    expected = manifest["dbsize"]
    status = Status.PASS if got == expected \
        else Status.FAIL if got == 0 < expected or abs(got - expected) > max(1, expected // 100) else Status.WARN
    return Check("restore_drill", status, f"restored {got} keys from the copy ({'AOF' if manifest['aof'] else 'RDB'}); "
                 f"the manifest says {manifest['dbsize']}")


def raise_if_blocked(target: Target, result: BackupResult) -> None:
    if result.result == Outcome.BLOCKED:
        raise Blocked(f"{target.name}: the data dir is not readable from here; nothing was copied. "
                      "Run the printed commands on the Redis host (or, with the backup taken another way, "
                      "pass -p skip_backup 'where it is' to record why the change goes ahead without one).")


def backup_summary(ident: Identity, result: BackupResult) -> StepSummary:
    """The record of this notebook: where the backup went, DBSIZE, and every file with its sha256."""
    return StepSummary(STEP, result.verdict, result.result, ident.server, ident.version, result.checks, facts={
        "location": result.location, "dbsize": result.manifest.get("dbsize"),
        "files": result.manifest.get("files", {}), "pruned": list(result.pruned), "commands": result.commands,
        "skip_reason": result.skip_reason, **({"would": result.would} if result.would else {}),
    })
