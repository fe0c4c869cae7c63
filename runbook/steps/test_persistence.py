"""Prove the data is on disk and comes back: online canaries, a real restart, and crash loss.

See https://redis.io/docs/latest/operate/oss_and_stack/management/persistence/
"""

from __future__ import annotations

import os
import shlex
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import redis

from runbook.errors import ParameterError, PreconditionFailed, RunbookError, WaitTimeout
from runbook.model import Check, ConnectionSpec, Outcome, Status, StepSummary, worst
from runbook.sandbox.binaries import for_server
from runbook.sandbox.throwaway import SEED_CONFIG, Sandbox, restart_sandbox
from runbook.server.lock import data_dbsize
from runbook.server.ops import bgsave_and_wait, misconf_reason, restart_trap, server_log_tail, validate_files
from runbook.server.poll import Deadline
from runbook.server.replicas import replica_quorum, wait_for_quorum
from runbook.server.slots import cluster_enabled, served_tag
from runbook.server.target import Identity, Target, check_target_parameter, connect, wait_loaded
from runbook.server.topology import is_sentinel_url, parse_sentinel_url, sentinel_monitored

STEP = "test-persistence"
MODES = ("online", "restart", "crash")
#: The online test's check that every replica of `read_back_from` holds every canary (`read_back`).
READ_BACK = "replicas-read-back"
#: The most canaries one test writes: 100 times the default, about 25 MB on the server and 2 s to write.
#: A persistence proof needs far fewer; more is a load test (3 000 000 took a server from 56 to 675 MiB).
MAX_CANARIES = 100_000
#: Server memory per canary, rounded up from used_memory per key measured for 100 000 to 300 000 canaries:
#: Redis 7.0.15 213-227 B, Redis 6.2.14 181-195 B, Valkey 9.1.2 132-146 B.
CANARY_BYTES = 256
#: The share of the server's free memory the canaries may take, so they never push it toward its limit
#: (where it evicts real keys or refuses the application's writes).
CANARY_SHARE = 0.1
#: Canaries per pipeline: one round trip each, and a bounded buffer on both sides.
CANARY_BATCH = 1000


def canary_prefix(client: redis.Redis | None = None) -> str:
    """A namespace unique to this run, so canaries never collide with real keys or other runs.

    Every canary carries one hash tag, so they all live in one slot: on a cluster node, a slot the
    node serves (batched MGET/UNLINK would otherwise fail with CROSSSLOT or MOVED).
    """
    run = uuid.uuid4().hex[:8]
    tag = served_tag(client, run) if client is not None and cluster_enabled(client) else run
    return f"runbook:canary:{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}:{{{tag}}}:"


def canary_room(memory: Mapping[str, Any], count: int) -> str:
    """Why `count` canaries do not fit a server whose INFO memory is `memory`; '' when they do.

    They may take CANARY_SHARE of the free memory: maxmemory - used_memory, or with maxmemory 0 (no
    limit) total_system_memory - used_memory where the server reports it; and never more than MAX_CANARIES.
    """
    if count > MAX_CANARIES:
        return f"{count} canaries are more than a persistence test writes: at most {MAX_CANARIES}"
    used = int(memory.get("used_memory", 0) or 0)
    name, limit = "maxmemory", int(memory.get("maxmemory", 0) or 0)
    if not limit:
        name, limit = "total_system_memory", int(memory.get("total_system_memory", 0) or 0)
    if not limit:
        return ""
    room = max(limit - used, 0)
    need = count * CANARY_BYTES
    if need <= room * CANARY_SHARE:
        return ""
    fits = int(room * CANARY_SHARE) // CANARY_BYTES
    return (f"{count} canaries need about {need // 1024} KiB, more than {CANARY_SHARE:.0%} of the server's free "
            f"memory ({name} {limit} - used_memory {used} = {room} bytes): "
            + (f"lower keys to at most {fits}" if fits else f"free memory or raise {name} first (then lower keys)"))


def require_canaries_fit(client: redis.Redis, count: int, ttl_s: int, *, name: str = "the server") -> None:
    """ParameterError when the count or TTL is not positive or `count` canaries would not fit the server's free
    memory (`canary_room`); reads INFO memory only."""
    if count < 1 or ttl_s < 1:
        raise ParameterError(f"{name}: canaries need keys >= 1 and ttl_s >= 1 (got keys {count}, ttl_s {ttl_s})")
    problem = canary_room(client.info("memory"), count)
    if problem:
        raise ParameterError(f"{name}: {problem}. No canary was written.")


def write_canaries(client: redis.Redis, prefix: str, count: int, ttl_s: int, *, name: str = "the server"
                   ) -> dict[str, str]:
    """SET `count` canary keys with a TTL (they expire by themselves if the run dies), CANARY_BATCH per pipeline.

    ParameterError before anything is written when the count or TTL is not positive or the canaries would not
    fit the server's free memory (`require_canaries_fit`).
    """
    require_canaries_fit(client, count, ttl_s, name=name)
    values = {f"{prefix}{i}": uuid.uuid4().hex for i in range(count)}
    items = list(values.items())
    try:
        for start in range(0, len(items), CANARY_BATCH):
            pipe = client.pipeline(transaction=False)
            for key, value in items[start : start + CANARY_BATCH]:
                pipe.set(key, value, ex=ttl_s)
            pipe.execute()
    except redis.RedisError:
        try:  # the batches already written; what cannot be removed expires by itself
            remove_canaries(client, values)
        except redis.RedisError:
            pass
        raise
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


@dataclass(frozen=True)
class TestResult:
    """What a persistence test saw: its checks and the figures the summary records."""

    mode: str
    checks: tuple[Check, ...]
    figures: dict[str, Any] = field(default_factory=dict)
    crash_table: tuple[dict[str, Any], ...] = ()
    would: str = ""  # plan only (`plan_test`): what the test would do; nothing was written

    @property
    def verdict(self) -> Status:
        return worst([c.status for c in self.checks])

    @property
    def result(self) -> Outcome:
        """`planned` for a plan; `done` for a test that wrote to its target (canaries, a BGSAVE or a restart), the
        `changed yes` of the run's table; `nothing` for one that did not (refused writes; the crash test, which
        runs on throwaway servers)."""
        if self.would:
            return Outcome.PLANNED
        return Outcome.DONE if int(self.figures.get("canaries_written") or 0) > 0 else Outcome.NOTHING

    def summary(self, ident: Identity) -> StepSummary:
        """The record of this notebook: mode, checks, canary counts, load time, the lost-write table, and its
        `result`; a plan is `planned`, with what it would do (`would`)."""
        planned = {"would": self.would} if self.would else {}
        return StepSummary(STEP, self.verdict, self.result, ident.server, ident.version,
                           self.checks, facts={"mode": self.mode, **self.figures, **planned,
                                               "crash": list(self.crash_table)})


def online_test(target: Target, *, keys: int = 1000, ttl_s: int = 3600, timeout_s: float = 120.0,
                read_back_from: Sequence[str] = (), spec: ConnectionSpec | None = None) -> TestResult:
    """Canaries, read back from every replica of `read_back_from` (`read_back`), a real BGSAVE, the AOF write,
    file validation; canaries removed. No restart."""
    client = target.client
    ident = target.identify()
    runtime = target.runtime_settings()
    prefix = canary_prefix(client)
    checks: list[Check] = []
    figures: dict[str, Any] = {"canary_prefix": prefix, "canaries_written": 0}
    info = client.info("persistence")
    aof_before = int(info.get("aof_current_size", 0))
    refused = _writes_refused(target)
    if refused:
        return TestResult("online", (refused,), figures)
    try:
        values = write_canaries(client, prefix, keys, ttl_s, name=target.name)
    except redis.ResponseError as err:
        if "MISCONF" in str(err):
            checks.append(Check("writes_accepted", Status.FAIL, misconf_reason(client), "fix the failing BGSAVE first"))
            return TestResult("online", tuple(checks), figures)
        if "NOREPLICAS" in str(err):  # the replicas went away after the check above
            checks.append(_writes_refused(target) or Check("writes_accepted", Status.FAIL, str(err)))
            return TestResult("online", tuple(checks), figures)
        raise
    figures["canaries_written"] = len(values)
    checks.append(Check("writes_accepted", Status.PASS,
                        f"{len(values)} canaries written under {prefix}* (TTL {ttl_s}s)"))
    try:
        if read_back_from:
            check, figures["read_back"] = read_back(target, values, read_back_from, spec, timeout_s)
            checks.append(check)
        seconds, after = bgsave_and_wait(client, timeout_s)
        checks.append(Check("bgsave", Status.PASS, f"BGSAVE completed in {seconds:.2f}s, rdb_last_bgsave_status:ok, "
                            f"rdb_changes_since_last_save:{after.get('rdb_changes_since_last_save')}"))
        figures["bgsave_s"] = round(seconds, 3)
        if int(client.info("persistence").get("aof_enabled", 0)):
            checks.append(_aof_write_check(client, aof_before))
        if target.local and os.access(runtime.get("dir", ""), os.R_OK | os.X_OK):
            checks.extend(validate_files(ident, runtime))
        else:
            checks.append(Check("files", Status.WARN, "data dir not readable from here: files not validated"))
        figures["canaries_found"] = count_canaries(client, values)
    except (PreconditionFailed, WaitTimeout) as err:
        checks.append(Check("bgsave", Status.FAIL, str(err), "read the server log"))
    finally:
        removal = _remove_canaries(target, values, ttl_s, timeout_s)
    left = count_canaries(client, values)
    figures["canaries_left"] = left
    checks.append(removal or Check("canaries_removed", Status.PASS if left == 0 else Status.FAIL,
                                   f"{left} canaries left"))
    return TestResult("online", tuple(checks), figures)


def wait_for_replicas(target: Target, replicas: Sequence[Target], timeout_s: float) -> tuple[str, int]:
    """Wait until every replica has the writes so far: `WAITAOF local n` when the server has it (7.2+, Valkey) and
    every replica runs with AOF (else it never acknowledges), `WAIT n` otherwise; returns the command sent and how
    many replicas acknowledged within `timeout_s`."""
    client, n, ms = target.client, len(replicas), max(1, int(timeout_s * 1000))
    if all(int(r.client.info("persistence").get("aof_enabled", 0)) for r in replicas):
        local = int(client.info("persistence").get("aof_enabled", 0))
        try:
            _, acked = client.execute_command("WAITAOF", local, n, ms)
            return f"WAITAOF {local} {n} {ms}", int(acked)
        except redis.ResponseError as err:
            if "unknown command" not in str(err).lower():
                raise
    return f"WAIT {n} {ms}", int(client.execute_command("WAIT", n, ms))


def read_back(target: Target, values: dict[str, str], urls: Sequence[str], spec: ConnectionSpec | None,
              timeout_s: float) -> tuple[Check, list[dict[str, Any]]]:
    """Every canary read back from every replica in `urls` (connected with the run's settings of `spec`; a cluster
    replica after READONLY) once the primary's WAIT/WAITAOF (`wait_for_replicas`) returned: the `replicas-read-back`
    check, failed naming each replica that lacked canaries or could not be read, and a row per replica."""
    spec = spec or ConnectionSpec(target.name)
    rows: list[dict[str, Any]] = []
    reached: list[Target] = []
    for url in urls:
        try:
            replica = connect(spec.replace(target=url, discover=False))
            if cluster_enabled(replica.client):
                replica.client.execute_command("READONLY")  # a cluster replica serves reads only then
            reached.append(replica)
        except (RunbookError, redis.RedisError) as err:
            rows.append({"replica": url, "found": 0, "of": len(values), "error": str(err)[:300]})
    try:
        sent, acked = wait_for_replicas(target, reached, timeout_s) if reached else ("", 0)
        for replica in reached:
            try:
                found, error = count_canaries(replica.client, values), ""
            except redis.RedisError as err:
                found, error = 0, str(err)[:300]
            rows.append({"replica": replica.name, "found": found, "of": len(values), "error": error})
    finally:
        for replica in reached:
            replica.client.close()
    rows.sort(key=lambda r: list(urls).index(r["replica"]))
    waited = f"{sent}: {acked} of {len(reached)} acknowledged; " if sent else ""
    lacking = [f"{r['replica']} ({_lacked(r)})" for r in rows if _lacked(r)]
    if lacking:
        return (Check(READ_BACK, Status.FAIL, f"{waited}lacking canaries: {', '.join(lacking)}",
                      "check each replica's link (INFO replication: master_link_status, master_host) and that it "
                      "replicates from this primary; then run the test again"), rows)
    return (Check(READ_BACK, Status.PASS, f"{waited}all {len(values)} canaries read back from each of {len(rows)} "
                  f"replicas: {', '.join(r['replica'] for r in rows)}"), rows)


def _lacked(row: Mapping[str, Any]) -> str:
    """What one replica of a read-back lacked: why it could not be read, or how many canaries; '' for none."""
    missing = row["of"] - row["found"]
    return row["error"] or (f"{missing} of {row['of']} canaries missing" if missing else "")


def _check_read_back_from(read_back_from: Sequence[str], mode: str) -> None:
    """ParameterError for read_back_from off mode online, or holding anything but data node URLs."""
    if not read_back_from:
        return
    if mode != "online":
        raise ParameterError(f"read_back_from reads the online test's canaries back from replicas: it needs mode "
                             f"online, not {mode}")
    if isinstance(read_back_from, str) or not all(isinstance(u, str) for u in read_back_from):
        raise ParameterError(f"read_back_from must be a list of replica URLs (redis://host:port), got "
                             f"{read_back_from!r}")
    for url in read_back_from:
        if url == "sandbox" or is_sentinel_url(url):
            raise ParameterError(f"read_back_from: {url!r} is not a replica's URL (redis://host:port)")
        check_target_parameter(url)


def _writes_refused(target: Target) -> Check | None:
    """A failed `writes_accepted` check when min-replicas-to-write makes the master refuse writes, else None."""
    quorum = replica_quorum(target)
    if not quorum.refuses_writes:
        return None
    return Check("writes_accepted", Status.FAIL, f"{quorum.refusal}; no canary was written",
                 f"{quorum.fix}; then run the test again")


def _remove_canaries(target: Target, values: dict[str, str], ttl_s: int, timeout_s: float) -> Check | None:
    """Remove the canaries, waiting (up to `timeout_s`) for replicas the master needs before it takes the
    deletes; a warning saying they expire by themselves when it still refuses them, else None."""
    try:
        remove_canaries(target.client, values)
        return None
    except redis.ResponseError as err:
        if "NOREPLICAS" not in str(err):
            raise
    quorum = wait_for_quorum(target, timeout_s)
    if not quorum.refuses_writes:
        remove_canaries(target.client, values)
        return None
    return Check("canaries_removed", Status.WARN, f"{len(values)} canaries not removed: {quorum.refusal}",
                 f"they expire by themselves within {ttl_s}s; {quorum.fix}")


def _aof_write_check(client: redis.Redis, aof_before: int) -> Check:
    try:
        local, _ = client.execute_command("WAITAOF", 1, 0, 5000)
        ok = int(local) >= 1
        return Check("aof_write", Status.PASS if ok else Status.FAIL, f"WAITAOF 1 0: fsynced locally: {bool(ok)}")
    except redis.ResponseError:
        pass  # before 7.2: no WAITAOF
    info = client.info("persistence")
    grew = int(info.get("aof_current_size", 0)) > aof_before
    ok = grew and info.get("aof_last_write_status") == "ok"
    return Check("aof_write", Status.PASS if ok else Status.FAIL,
                 f"aof_current_size {aof_before} -> {info.get('aof_current_size')}, "
                 f"aof_last_write_status:{info.get('aof_last_write_status')}")


# -- restart -------------------------------------------------------------------------------------


def restart_server(target: Target, restart_command: str = "", timeout_s: float = 120.0) -> float:
    """Restart the target (the sandbox itself, or `restart_command`) and wait out LOADING; returns seconds."""
    start = time.monotonic()
    if target.is_sandbox:
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


def replica_restart(target: Target, *, restart_command: str = "", keys: int = 1000, ttl_s: int = 3600,
                    timeout_s: float = 120.0) -> TestResult:
    """The restart test on a replica: how a Sentinel group is restart-tested (fail over first, then restart the old
    primary once it is a replica). A replica refuses writes, so the canaries go to its primary and arrive by
    replication; made durable in the replica's own AOF, then the replica restarts and must hold every one again.
    Its data also comes back by resync from the primary: `loaded_own_files` says what it loaded from its own disk."""
    writer, primary = _primary_of(target)
    seconds, found, source, values = 0.0, 0, "", {}
    try:
        values = write_canaries(writer, canary_prefix(writer), keys, ttl_s, name=primary)
        try:
            deadline = Deadline(timeout_s, f"{target.name}: the canaries to arrive from {primary}")
            while (arrived := count_canaries(target.client, values)) < len(values) and not deadline.expired:
                time.sleep(0.05)
            if arrived < len(values):
                return TestResult("restart", (Check("replicated", Status.FAIL, f"{arrived} of {len(values)} canaries "
                                                    f"written on {primary} reached {target.name} in {timeout_s:.0f}s",
                                                    "check the replica's link (INFO replication) and run again"),),
                                  {"restarted": False})
            durable = _aof_write_check(target.client, 0) if int(
                target.client.info("persistence").get("aof_enabled", 0)) else None
            run_id_before = target.client.info("server").get("run_id")
            seconds = restart_server(target, restart_command, timeout_s)
            if target.client.info("server").get("run_id") == run_id_before:
                raise PreconditionFailed(f"{target.name}: the server answering after the restart is the same process "
                                         f"(run_id {run_id_before}): the restart did not happen or has not finished. "
                                         "Check restart_command.")
            found, source = count_canaries(target.client, values), loaded_from(target)
        finally:
            remove_canaries(writer, values)
    finally:
        writer.close()
    checks = [
        Check("restart", Status.PASS, f"replica restarted and loaded in {seconds:.2f}s (from {source})"),
        *([durable] if durable else []),
        Check("canaries", Status.PASS if found == len(values) else Status.FAIL,
              f"{found} of {len(values)} canaries (written on its primary {primary}) came back"),
        Check("loaded_own_files", Status.PASS if source in ("AOF", "RDB") else Status.WARN,
              f"the replica loaded its own {source} before resyncing from {primary}" if source in ("AOF", "RDB") else
              f"what the replica loaded from its own disk is {source}: its canaries may have come by resync only",
              "" if source in ("AOF", "RDB") else "run the test where the server's log file is readable"),
    ]
    figures = {"canaries_written": len(values), "canaries_found": found, "load_s": round(seconds, 3),
               "loaded_from": source, "written_on": primary}
    return TestResult("restart", tuple(checks), figures)


def _primary_of(target: Target) -> tuple[redis.Redis, str]:
    """A client of the replica's primary (INFO replication master_host/port), with the target's own credentials and
    logged connection class; PreconditionFailed when its link is not up."""
    repl = target.client.info("replication")
    host, port, link = repl.get("master_host"), int(repl.get("master_port", 0)), repl.get("master_link_status")
    if link != "up":
        raise PreconditionFailed(f"{target.name}: a replica whose link to its primary {host}:{port} is {link}: the "
                                 "restart test writes its canaries on the primary. Bring the link up first. Nothing "
                                 "was written.")
    pool = target.client.connection_pool
    kwargs = {**pool.connection_kwargs, "host": host, "port": port}
    return redis.Redis(connection_pool=redis.ConnectionPool(connection_class=pool.connection_class, **kwargs)), \
        f"{host}:{port}"


def loaded_from(target: Target) -> str:
    """Which file the last start loaded, from the server's log when it is readable here."""
    tail = server_log_tail(target, lines=40)
    for line in reversed(tail.splitlines()):
        if "DB loaded from append only file" in line:
            return "AOF"
        if "DB loaded from disk" in line:
            return "RDB"
    return "unknown (log not readable here)"


def restart_test(target: Target, *, allow_restart: bool, restart_command: str = "", config_file: str = "",
                 keys: int = 1000, ttl_s: int = 3600, timeout_s: float = 120.0) -> TestResult:
    """Canaries, refuse the trap, a real restart, compare DBSIZE and every canary (replicas: `replica_restart`)."""
    _require_restartable(target, allow_restart=allow_restart, restart_command=restart_command,
                         config_file=config_file)
    if target.identify().role == "replica":
        return replica_restart(target, restart_command=restart_command, keys=keys, ttl_s=ttl_s, timeout_s=timeout_s)
    refused = _writes_refused(target)
    if refused:
        return TestResult("restart", (refused,), {"restarted": False})
    client = target.client
    values = write_canaries(client, canary_prefix(client), keys, ttl_s, name=target.name)
    if int(client.info("persistence").get("aof_enabled", 0)):
        _aof_write_check(client, 0)  # make the canaries durable in the AOF before the restart
    dbsize_before = data_dbsize(client)  # the lock key may not come back from an older RDB
    run_id_before = client.info("server").get("run_id")
    seconds = restart_server(target, restart_command, timeout_s)
    if client.info("server").get("run_id") == run_id_before:
        raise PreconditionFailed(f"{target.name}: the server answering after the restart is the same process "
                                 f"(run_id {run_id_before}): the restart did not happen or has not finished. "
                                 "Check restart_command.")
    dbsize_after = data_dbsize(client)
    found = count_canaries(client, values)
    source = loaded_from(target)
    removal = _remove_canaries(target, values, ttl_s, timeout_s)  # a master may wait for its replicas first
    checks = [
        Check("restart", Status.PASS, f"restarted and loaded in {seconds:.2f}s (from {source})"),
        Check("dbsize", Status.PASS if dbsize_after >= dbsize_before else Status.FAIL,
              f"DBSIZE {dbsize_before} before, {dbsize_after} after"),
        Check("canaries", Status.PASS if found == len(values) else Status.FAIL,
              f"{found} of {len(values)} canaries came back"),
        *([removal] if removal else []),
    ]
    figures = {"dbsize_before": dbsize_before, "dbsize_after": dbsize_after, "canaries_written": len(values),
               "canaries_found": found, "load_s": round(seconds, 3), "loaded_from": source}
    return TestResult("restart", tuple(checks), figures)


def _require_restartable(target: Target, *, allow_restart: bool, restart_command: str, config_file: str) -> None:
    """The restart test's refusals, before anything is written: no allow_restart, a host without restart_command
    (ParameterError), the restart trap (PreconditionFailed)."""
    if not allow_restart:
        raise ParameterError("mode restart restarts the server: pass allow_restart true to confirm")
    _refuse_under_sentinel(target, "restart")  # first: no restart_command makes it safe
    if not target.is_sandbox and not restart_command:
        raise ParameterError("mode restart needs restart_command for a target that is not the sandbox "
                             "(for example: sudo systemctl restart redis-server)")
    trap = restart_trap(target, config_file)
    if trap:
        raise PreconditionFailed(f"{target.name}: refusing to restart: {trap}")


def _refuse_under_sentinel(target: Target, what: str) -> None:
    """PreconditionFailed when `target` is a primary Sentinel monitors (`sentinel_monitored`): its Sentinels would
    fail over while it is down, and the restarted primary come back as a replica of a node that may lack its
    writes. The safe way: fail over first, then restart the old primary once it is a replica."""
    if target.identify().role != "master" or not sentinel_monitored(target.client):
        return
    name = _monitored_name(target)
    raise PreconditionFailed(
        f"{target.name}: refusing to {what} a primary that Sentinel monitors (PUBSUB NUMSUB __sentinel__:hello): "
        f"its Sentinels would fail over while it is down. SENTINEL FAILOVER {name} first, then run the restart "
        "test on the old primary once it is a replica. Nothing was written.")


def _monitored_name(target: Target, wait_s: float = 2.5) -> str:
    """The name the Sentinels monitor `target` under: from a redis+sentinel:// target, else from the first hello
    message they publish on it (every 2 s); `<name>` (as in sentinel.conf) when none came within `wait_s`."""
    if is_sentinel_url(target.name):
        return parse_sentinel_url(target.name)[1]
    pubsub = target.client.pubsub(ignore_subscribe_messages=True)
    try:
        pubsub.subscribe("__sentinel__:hello")
        deadline = time.monotonic() + wait_s
        while (left := deadline - time.monotonic()) > 0:
            message = pubsub.get_message(timeout=left)
            # sentinel_ip,sentinel_port,sentinel_runid,current_epoch,master_name,master_ip,master_port,master_epoch
            fields = str(message["data"]).split(",") if message else []
            if len(fields) >= 8:
                return fields[4]
    except redis.RedisError:
        pass
    finally:
        pubsub.close()
    return "<name>"


# -- crash ---------------------------------------------------------------------------------------

#: (name, config lines, expected loss on a process crash, expected loss on an OS crash / power loss)
CRASH_SETUPS: tuple[tuple[str, str, str, str], ...] = (
    ("rdb-only (default save policy)", "appendonly no\n", "every write since the last save",
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
    if target.name != "sandbox":
        raise ParameterError(f"mode crash kills the server: it runs only against target sandbox, not {target.name}")
    ident = target.identify()
    if binary is None:
        binary = for_server(ident, local=target.local).binary.path
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
            checks.append(Check("aof_always_loses_nothing", Status.PASS if lost == 0 else Status.FAIL,
                                f"{lost} of {acked} acknowledged writes lost with appendfsync always"))
    checks.append(Check("measured", Status.PASS,
                        f"{len(rows)} setups crashed with kill -9 after {crash_seconds:.1f}s of writes "
                        f"on {ident.server} {ident.version}"))
    return TestResult("crash", tuple(checks), {"crash_seconds": crash_seconds}, tuple(rows))


def intent(target: Target, *, mode: str = "online", allow_restart: bool = False, restart_command: str = "",
           keys: int = 1000, apply: bool = False) -> dict[str, Any] | None:
    """What the restart test is about to do, for `runbook.intend` (None for a plan, and for the other modes: the
    online test changes nothing that stays, the crash test only its own throwaway servers)."""
    if mode != "restart" or not allow_restart or not apply:
        return None
    how = restart_command or "the sandbox restarts itself"
    return {"summary": f"write {keys} canary keys, then restart {target.name} ({how})", "mode": mode,
            "restart_command": restart_command, "keys": keys}


def plan_test(target: Target, *, mode: str = "online", allow_restart: bool = False, restart_command: str = "",
              config_file: str = "", keys: int = 1000, ttl_s: int = 3600, crash_seconds: float = 2.0,
              timeout_s: float = 120.0, read_back_from: Sequence[str] = ()) -> TestResult:
    """What the test `mode` asks for would do, without doing it: no canary, no BGSAVE, no restart, no server of
    its own (only INFO, CONFIG GET, PUBSUB NUMSUB and the restart trap's file reads). It refuses what the test
    would refuse (restart without allow_restart or restart_command, the restart trap, a primary Sentinel monitors,
    crash off the sandbox, canaries that do not fit, read_back_from off mode online), and a master that would
    refuse the canaries (min-replicas-to-write) is its failed check."""
    if mode not in MODES:
        raise ParameterError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    _check_read_back_from(read_back_from, mode)
    if mode == "crash":
        if target.name != "sandbox":
            raise ParameterError(f"mode crash kills the server: it runs only against target sandbox, not "
                                 f"{target.name}")
        setups = ", ".join(name for name, *_ in CRASH_SETUPS)
        return TestResult("crash", (), {"crash_seconds": crash_seconds},
                          would=f"for each of {len(CRASH_SETUPS)} setups ({setups}): a fresh throwaway server, "
                                f"{crash_seconds:g} s of writes, kill -9, a restart and the acknowledged writes "
                                "lost counted; the target is not touched")
    if mode == "restart":
        _require_restartable(target, allow_restart=allow_restart, restart_command=restart_command,
                             config_file=config_file)
    refused = _writes_refused(target)
    if refused:
        return TestResult(mode, (refused,), {"canaries_written": 0},
                          would=f"write {keys} canary keys, which the server refuses now (writes_accepted)")
    require_canaries_fit(target.client, keys, ttl_s, name=target.name)
    canaries = f"write {keys} canary keys (TTL {ttl_s} s, about {keys * CANARY_BYTES // 1024} KiB)"
    if mode == "restart":
        how = restart_command or "the sandbox restarts itself"
        would = (f"{canaries}, restart {target.name} ({how}; deadline {timeout_s:g} s), compare DBSIZE and every "
                 "canary after it, then remove the canaries")
    else:
        aof = int(target.client.info("persistence").get("aof_enabled", 0)) == 1
        replicas = (f"read every canary back from {len(read_back_from)} replica(s) after WAIT/WAITAOF "
                    f"({', '.join(read_back_from)}), " if read_back_from else "")
        would = (f"{canaries}, {replicas}BGSAVE and wait for it (deadline {timeout_s:g} s), "
                 + ("check the AOF write, " if aof else "")
                 + "validate copies of the files with the server's own checkers, then remove the canaries")
    return TestResult(mode, (), {"canaries_written": 0}, would=would)


def run_test(target: Target, *, mode: str = "online", allow_restart: bool = False, restart_command: str = "",
             config_file: str = "", keys: int = 1000, ttl_s: int = 3600, crash_seconds: float = 2.0,
             timeout_s: float = 120.0, apply: bool = False, read_back_from: Sequence[str] = (),
             spec: ConnectionSpec | None = None) -> TestResult:
    """The test `mode` asks for (online, restart or crash) with `apply`; else only what it would do (`plan_test`).
    `read_back_from`: mode online reads its canaries back from these replicas, connected with `spec`'s settings."""
    if mode not in MODES:
        raise ParameterError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    _check_read_back_from(read_back_from, mode)
    if not apply:
        return plan_test(target, mode=mode, allow_restart=allow_restart, restart_command=restart_command,
                         config_file=config_file, keys=keys, ttl_s=ttl_s, crash_seconds=crash_seconds,
                         timeout_s=timeout_s, read_back_from=read_back_from)
    if mode == "online":
        return online_test(target, keys=keys, ttl_s=ttl_s, timeout_s=timeout_s, read_back_from=read_back_from,
                           spec=spec)
    if mode == "restart":
        return restart_test(target, allow_restart=allow_restart, restart_command=restart_command,
                            config_file=config_file, keys=keys, ttl_s=ttl_s, timeout_s=timeout_s)
    return crash_test(target, crash_seconds=crash_seconds)
