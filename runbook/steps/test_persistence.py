"""Prove the data is on disk and comes back: online canaries, a real restart, and crash loss.

See https://redis.io/docs/latest/operate/oss_and_stack/management/persistence/
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from redis.crc import key_slot

from runbook.server.aof import aof_on_disk, aof_ready
from runbook.steps.checks import FAIL, PASS, WARN, Check, worst
from runbook.server.configfile import read_config
from runbook.errors import ParameterError, PreconditionFailed, WaitTimeout
from runbook.server.settings import runtime_settings
from runbook.server.target import Identity, Target, identify, wait_loaded

MODES = ("online", "restart", "crash")


def canary_prefix(client: redis.Redis | None = None) -> str:
    """A namespace unique to this run, so canaries never collide with real keys or other runs.

    Every canary carries one hash tag, so they all live in one slot: on a cluster node, a slot the
    node serves (batched MGET/UNLINK would otherwise fail with CROSSSLOT or MOVED).
    """
    run = uuid.uuid4().hex[:8]
    tag = _served_tag(client, run) if client is not None and _cluster_enabled(client) else run
    return f"runbook:canary:{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}:{{{tag}}}:"


def _cluster_enabled(client: redis.Redis) -> bool:
    return bool(int(client.info("cluster").get("cluster_enabled", 0)))


def _served_tag(client: redis.Redis, run: str) -> str:
    """`run` with a suffix that hashes to a slot this cluster node serves as a master."""
    me = client.execute_command("CLUSTER", "MYID")
    me = me.decode() if isinstance(me, bytes) else str(me)
    served = [(int(r[0]), int(r[1])) for r in client.execute_command("CLUSTER", "SLOTS")
              if _node_id(r[2]) == me]
    if not served:
        raise PreconditionFailed("this cluster node serves no hash slot, so it takes no writes: "
                                 "point target at a master that serves slots (CLUSTER SLOTS)")
    for n in range(100_000):
        tag = f"{run}-{n}"
        if any(lo <= key_slot(tag.encode()) <= hi for lo, hi in served):
            return tag
    raise PreconditionFailed(f"no canary hash tag maps to this node's slots {served}")


def _node_id(node: Any) -> str:
    """The node id in one entry of CLUSTER SLOTS (a list [ip, port, id, ...])."""
    value = node[2] if isinstance(node, (list, tuple)) and len(node) > 2 else ""
    return value.decode() if isinstance(value, bytes) else str(value)


def write_canaries(client: redis.Redis, prefix: str, count: int, ttl_s: int) -> dict[str, str]:
    """SET `count` canary keys with a TTL (they expire by themselves if the run dies)."""
    values = {f"{prefix}{i}": uuid.uuid4().hex for i in range(count)}
    pipe = client.pipeline(transaction=False)
    for key, value in values.items():
        pipe.set(key, value, ex=ttl_s)
    pipe.execute()
    return values


def count_canaries(client: redis.Redis, values: dict[str, str]) -> int:
    """How many canaries still hold the value we wrote (MGET in batches; no SCAN)."""
    keys = list(values)
    found = 0
    for i in range(0, len(keys), 1000):
        batch = keys[i : i + 1000]
        found += sum(1 for k, v in zip(batch, client.mget(batch)) if v == values[k])
    return found


def remove_canaries(client: redis.Redis, values: dict[str, str]) -> None:
    keys = list(values)
    for i in range(0, len(keys), 1000):
        client.unlink(*keys[i : i + 1000])


def misconf_reason(client: redis.Redis) -> str:
    """Why a server answers MISCONF: its last BGSAVE status and stop-writes-on-bgsave-error."""
    info = client.info("persistence")
    return (f"the server refuses writes (MISCONF): rdb_last_bgsave_status:{info.get('rdb_last_bgsave_status')} "
            "with stop-writes-on-bgsave-error yes. Fix the failing save (server log: disk space, permissions of "
            "dir, vm.overcommit_memory), then BGSAVE; writes resume once a save succeeds.")


def bgsave_and_wait(client: redis.Redis, timeout_s: float = 120.0) -> tuple[float, dict[str, Any]]:
    """BGSAVE SCHEDULE, then wait until a save that started after now has completed and succeeded.

    Uses `rdb_saves` where the server has it (7.0+); otherwise waits for LASTSAVE to move,
    first letting the clock reach a new second (LASTSAVE is in whole seconds).
    See https://redis.io/docs/latest/commands/bgsave/
    """
    before = client.info("persistence")
    saves_before = before.get("rdb_saves")
    last_before = int(client.lastsave().timestamp())
    if saves_before is None:
        while int(time.time()) <= last_before:
            time.sleep(0.05)
    start = time.monotonic()
    try:
        client.bgsave(schedule=True)
    except redis.ResponseError as err:
        if "already in progress" not in str(err):
            raise PreconditionFailed(f"BGSAVE was refused: {err}") from err
        # Some versions refuse SCHEDULE while a save runs: wait for that one, then start ours.
        deadline = start + timeout_s
        while int(client.info("persistence").get("rdb_bgsave_in_progress", 0)) and time.monotonic() < deadline:
            time.sleep(0.05)
        client.bgsave(schedule=True)
    deadline = start + timeout_s
    while True:
        info = client.info("persistence")
        done = (int(info["rdb_saves"]) > int(saves_before)) if saves_before is not None else \
            int(client.lastsave().timestamp()) > last_before
        if done and not int(info.get("rdb_bgsave_in_progress", 0)):
            if info.get("rdb_last_bgsave_status") != "ok":
                raise PreconditionFailed(f"BGSAVE failed: rdb_last_bgsave_status:{info.get('rdb_last_bgsave_status')}; "
                                         "see the server log")
            return time.monotonic() - start, dict(info)
        if time.monotonic() > deadline:
            raise WaitTimeout(f"no completed BGSAVE within {timeout_s}s (rdb_bgsave_in_progress:"
                              f"{info.get('rdb_bgsave_in_progress')}, rdb_last_bgsave_status:{info.get('rdb_last_bgsave_status')})")
        time.sleep(0.02)


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
                checks.append(Check(f"check_{role}", WARN, f"no {ident.server}-check-{kind} here: {path.name} not validated"))
                continue
            copy = work / f"copy-{path.name}"
            shutil.copy2(path, copy)
            ok, last = _run_check(tool, copy)
            checks.append(Check(f"check_{role}", PASS if ok else FAIL, f"{tool.name} {path.name}: {last}",
                                "" if ok else "the file on disk is damaged: take a fresh BGSAVE / BGREWRITEAOF and investigate"))
    return checks


@dataclass(frozen=True)
class TestResult:
    """What a persistence test saw: its checks and the figures the summary records."""

    mode: str
    checks: tuple[Check, ...]
    figures: dict[str, Any] = field(default_factory=dict)
    crash_table: tuple[dict[str, Any], ...] = ()

    @property
    def verdict(self) -> str:
        return worst([c.status for c in self.checks])

    def summary(self, ident: Identity) -> dict[str, Any]:
        return {
            "verdict": self.verdict, "mode": self.mode, "server": ident.server, "version": ident.version,
            **self.figures,
            "crash": list(self.crash_table),
            "checks": {c.name: {"status": c.status, "observed": c.observed, "fix": c.fix} for c in self.checks},
        }


def online_test(target: Target, *, keys: int = 1000, ttl_s: int = 3600, timeout_s: float = 120.0) -> TestResult:
    """Canaries, a real BGSAVE, the AOF write, file validation; canaries removed. No restart."""
    client = target.client
    ident = identify(client)
    runtime = runtime_settings(client, target.config_command)
    prefix = canary_prefix(client)
    checks: list[Check] = []
    figures: dict[str, Any] = {"canary_prefix": prefix, "canaries_written": 0}
    info = client.info("persistence")
    aof_before = int(info.get("aof_current_size", 0))
    try:
        values = write_canaries(client, prefix, keys, ttl_s)
    except redis.ResponseError as err:
        if "MISCONF" in str(err):
            checks.append(Check("writes_accepted", FAIL, misconf_reason(client), "fix the failing BGSAVE first"))
            return TestResult("online", tuple(checks), figures)
        raise
    figures["canaries_written"] = len(values)
    checks.append(Check("writes_accepted", PASS, f"{len(values)} canaries written under {prefix}* (TTL {ttl_s}s)"))
    try:
        seconds, after = bgsave_and_wait(client, timeout_s)
        checks.append(Check("bgsave", PASS, f"BGSAVE completed in {seconds:.2f}s, rdb_last_bgsave_status:ok, "
                            f"rdb_changes_since_last_save:{after.get('rdb_changes_since_last_save')}"))
        figures["bgsave_s"] = round(seconds, 3)
        if int(client.info("persistence").get("aof_enabled", 0)):
            checks.append(_aof_write_check(client, aof_before))
        if target.local and os.access(runtime.get("dir", ""), os.R_OK | os.X_OK):
            checks.extend(validate_files(ident, runtime))
        else:
            checks.append(Check("files", WARN, "data dir not readable from here: files not validated"))
        figures["canaries_found"] = count_canaries(client, values)
    except (PreconditionFailed, WaitTimeout) as err:
        checks.append(Check("bgsave", FAIL, str(err), "read the server log"))
    finally:
        remove_canaries(client, values)
    left = count_canaries(client, values)
    figures["canaries_left"] = left
    checks.append(Check("canaries_removed", PASS if left == 0 else FAIL, f"{left} canaries left"))
    return TestResult("online", tuple(checks), figures)


def _aof_write_check(client: redis.Redis, aof_before: int) -> Check:
    try:
        local, _ = client.execute_command("WAITAOF", 1, 0, 5000)
        ok = int(local) >= 1
        return Check("aof_write", PASS if ok else FAIL, f"WAITAOF 1 0: fsynced locally: {bool(ok)}")
    except redis.ResponseError:
        pass  # before 7.2: no WAITAOF
    info = client.info("persistence")
    grew = int(info.get("aof_current_size", 0)) > aof_before
    ok = grew and info.get("aof_last_write_status") == "ok"
    return Check("aof_write", PASS if ok else FAIL,
                 f"aof_current_size {aof_before} -> {info.get('aof_current_size')}, "
                 f"aof_last_write_status:{info.get('aof_last_write_status')}")


# -- restart -------------------------------------------------------------------------------------

def restart_trap(target: Target, config_file: str = "") -> str:
    """Why a restart now would lose data (the file says appendonly yes, no AOF on disk), or ""."""
    ident = identify(target.client)
    runtime = runtime_settings(target.client, target.config_command)
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


def restart_server(target: Target, restart_command: str = "", timeout_s: float = 120.0) -> float:
    """Restart the target (the sandbox itself, or `restart_command`) and wait out LOADING; returns seconds."""
    start = time.monotonic()
    if target.is_sandbox:
        from runbook.sandbox.throwaway import restart_sandbox  # noqa: PLC0415

        restart_sandbox(target)
    elif restart_command:
        proc = subprocess.run(shlex.split(restart_command), capture_output=True, text=True, timeout=timeout_s)
        if proc.returncode != 0:
            raise PreconditionFailed(f"{restart_command!r} exited with {proc.returncode}: {proc.stderr.strip()[:300]}")
    else:
        raise ParameterError("mode restart needs restart_command for a target that is not the sandbox "
                             "(for example: sudo systemctl restart redis-server)")
    wait_loaded(target.client, timeout_s - (time.monotonic() - start), f"{target.name} after its restart",
                while_down=True)
    return time.monotonic() - start


def loaded_from(target: Target) -> str:
    """Which file the last start loaded, from the server's log when it is readable here."""
    from runbook.steps.enable_aof import server_log_tail  # noqa: PLC0415

    tail = server_log_tail(target, lines=40)
    for line in reversed(tail.splitlines()):
        if "DB loaded from append only file" in line:
            return "AOF"
        if "DB loaded from disk" in line:
            return "RDB"
    return "unknown (log not readable here)"


def restart_test(target: Target, *, allow_restart: bool, restart_command: str = "", config_file: str = "",
                 keys: int = 1000, ttl_s: int = 3600, timeout_s: float = 120.0) -> TestResult:
    """Canaries, refuse the trap, a real restart, then compare DBSIZE and every canary."""
    if not allow_restart:
        raise ParameterError("mode restart restarts the server: pass allow_restart true to confirm")
    trap = restart_trap(target, config_file)
    if trap:
        raise PreconditionFailed(f"{target.name}: refusing to restart: {trap}")
    client = target.client
    values = write_canaries(client, canary_prefix(client), keys, ttl_s)
    if int(client.info("persistence").get("aof_enabled", 0)):
        _aof_write_check(client, 0)  # make the canaries durable in the AOF before the restart
    dbsize_before = int(client.dbsize())
    run_id_before = client.info("server").get("run_id")
    seconds = restart_server(target, restart_command, timeout_s)
    if client.info("server").get("run_id") == run_id_before:
        raise PreconditionFailed(f"{target.name}: the server answering after the restart is the same process "
                                 f"(run_id {run_id_before}): the restart did not happen or has not finished. "
                                 "Check restart_command.")
    dbsize_after = int(client.dbsize())
    found = count_canaries(client, values)
    source = loaded_from(target)
    remove_canaries(client, values)
    checks = [
        Check("restart", PASS, f"restarted and loaded in {seconds:.2f}s (from {source})"),
        Check("dbsize", PASS if dbsize_after >= dbsize_before else FAIL, f"DBSIZE {dbsize_before} before, {dbsize_after} after"),
        Check("canaries", PASS if found == len(values) else FAIL, f"{found} of {len(values)} canaries came back"),
    ]
    figures = {"dbsize_before": dbsize_before, "dbsize_after": dbsize_after, "canaries_written": len(values),
               "canaries_found": found, "load_s": round(seconds, 3), "loaded_from": source}
    return TestResult("restart", tuple(checks), figures)


# -- crash ---------------------------------------------------------------------------------------

#: (name, config lines, expected loss on a process crash, expected loss on an OS crash / power loss)
CRASH_SETUPS: tuple[tuple[str, str, str, str], ...] = (
    ("rdb-only (seed save policy)", "appendonly no\n", "every write since the last save",
     "every write since the last save"),
    ("aof always", "appendonly yes\nappendfsync always\n", "none", "none"),
    ("aof everysec", "appendonly yes\nappendfsync everysec\n", "~none (up to ~2 s if fsync stalls)", "up to ~1 s"),
    ("aof no", "appendonly yes\nappendfsync no\n", "~none (already in the page cache)", "up to ~30 s (kernel flush)"),
)
CRASH_LOG_KEY = "runbook:crash:log"


def _write_load(client: redis.Redis, seconds: float) -> int:
    """RPUSH a sequence number per write, one round trip each, for `seconds`; returns the acknowledged count."""
    acked = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        client.rpush(CRASH_LOG_KEY, acked + 1)
        acked += 1
    return acked


def crash_test(target: Target, *, crash_seconds: float = 2.0, binary: Path | None = None) -> TestResult:
    """For each setup: a fresh sandbox, a write load, kill -9, restart, and the acknowledged writes lost.

    Refused for any target but `sandbox`: it kills the server.
    """
    from runbook.sandbox.throwaway import SEED_CONFIG, Sandbox  # noqa: PLC0415

    if target.name != "sandbox":
        raise ParameterError(f"mode crash kills the server: it runs only against target sandbox, not {target.name}")
    ident = identify(target.client)
    if binary is None and ident.executable and Path(ident.executable).is_file():
        binary = Path(ident.executable)
    rows: list[dict[str, Any]] = []
    checks: list[Check] = []
    for name, lines, expected_process, expected_os in CRASH_SETUPS:
        sb = Sandbox(config=SEED_CONFIG.replace("appendonly no\n", "") + lines, binary=binary)
        try:
            sb.start()
            acked = _write_load(sb.client(), crash_seconds)
            sb.kill()
            sb.start(timeout_s=60)
            recovered = int(sb.client().llen(CRASH_LOG_KEY))
        finally:
            sb.cleanup()
        lost = acked - recovered
        rows.append({"setup": name, "acknowledged": acked, "recovered": recovered, "lost": lost,
                     "lost_pct": round(100 * lost / acked, 2) if acked else 0.0,
                     "expected_process_crash": expected_process, "expected_os_crash": expected_os})
        if name == "aof always":
            checks.append(Check("aof_always_loses_nothing", PASS if lost == 0 else FAIL,
                                f"{lost} of {acked} acknowledged writes lost with appendfsync always"))
    checks.append(Check("measured", PASS, f"{len(rows)} setups crashed with kill -9 after {crash_seconds:.1f}s of writes "
                        f"on {ident.server} {ident.version}"))
    return TestResult("crash", tuple(checks), {"crash_seconds": crash_seconds}, tuple(rows))


def run_test(target: Target, *, mode: str = "online", allow_restart: bool = False, restart_command: str = "",
             config_file: str = "", keys: int = 1000, ttl_s: int = 3600, crash_seconds: float = 2.0,
             timeout_s: float = 120.0) -> TestResult:
    """The test `mode` asks for (online, restart or crash)."""
    if mode not in MODES:
        raise ParameterError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "online":
        return online_test(target, keys=keys, ttl_s=ttl_s, timeout_s=timeout_s)
    if mode == "restart":
        return restart_test(target, allow_restart=allow_restart, restart_command=restart_command,
                            config_file=config_file, keys=keys, ttl_s=ttl_s, timeout_s=timeout_s)
    return crash_test(target, crash_seconds=crash_seconds)
