"""Switch AOF on at runtime, the way the persistence docs prescribe, and prove it worked.

CONFIG SET appendfsync, then CONFIG SET appendonly yes; then wait until INFO shows the
initial rewrite complete (`runbook.server.aof.apply_runtime`). On failure the
settings are put back, so the server is left as found.
See https://redis.io/docs/latest/operate/oss_and_stack/management/persistence/#how-i-can-switch-to-aof-if-im-currently-using-dumprdb-snapshots
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from redis.exceptions import NoPermissionError

from runbook.errors import (
    Blocked,
    ChangeFailed,
    ChangeInterrupted,
    NoReply,
    ParameterError,
    PreconditionFailed,
    VerificationFailed,
)
from runbook.model import Check, Outcome, SettingChange, Status, StepSummary, worst
from runbook.server.aof import Progress, aof_on_disk, aof_ready, apply_runtime
from runbook.server.lock import data_dbsize
from runbook.server.ops import acl_user, may_run, read_overcommit, server_log_tail
from runbook.server.poll import Deadline, stopped_answering
from runbook.server.probe import LatencyProbe, LatencyStats
from runbook.server.settings import normalize
from runbook.server.target import Identity, Target
from runbook.steps.checks import advisory_facts, host_advisories

log = logging.getLogger(__name__)

STEP = "enable-aof"
FSYNC_POLICIES = ("always", "everysec", "no")
AOF_SETTINGS = ("aof-use-rdb-preamble", "auto-aof-rewrite-percentage", "auto-aof-rewrite-min-size")


@dataclass(frozen=True)
class Preflight:
    """The server before the change: identity, settings, counters, and a check per precondition."""

    identity: Identity
    runtime: dict[str, str]
    info: dict[str, Any]
    dbsize: int
    checks: tuple[Check, ...]
    advisories: tuple[Check, ...] = ()  # the host's settings (`host_advisories`): not part of the verdict

    @property
    def ok(self) -> bool:
        return all(c.status != Status.FAIL for c in self.checks)


def _busy(info: Mapping[str, Any]) -> list[str]:
    return [k for k in ("rdb_bgsave_in_progress", "aof_rewrite_in_progress") if int(info.get(k, 0))]


def preflight(target: Target, *, allow_replica: bool = False, busy_wait_s: float = 30.0) -> Preflight:
    """Check every precondition of the change; waits up to `busy_wait_s` for a running save or rewrite."""
    client = target.client
    ident = target.identify()
    runtime = target.runtime_settings()
    checks = [Check("reachable", Status.PASS, f"{ident.label} answered PING and {target.config_command} GET")]
    if ident.role == "master":
        checks.append(Check("role", Status.PASS, "master"))
    elif allow_replica:
        checks.append(Check("role", Status.WARN, f"{ident.role}, allowed by allow_replica: CONFIG changes do not "
                            "replicate and a replica restarts its AOF after every full sync"))
    else:
        checks.append(Check("role", Status.FAIL, f"the target is a {ident.role}",
                            "run against the master, or pass allow_replica true if you mean it"))
    info = client.info("persistence")
    deadline = Deadline(busy_wait_s, "running save or rewrite")
    while _busy(info) and not deadline.expired:
        deadline.saw({k: info.get(k) for k in ("rdb_bgsave_in_progress", "aof_rewrite_in_progress")})
        deadline.sleep(0.1)
        try:
            info = deadline.call(client, lambda c: c.info("persistence"), "INFO persistence")
        except NoReply as err:
            raise deadline.missed("the running save or rewrite did not finish") from err
    loading = int(info.get("loading", 0))
    checks.append(Check("loading", Status.FAIL if loading else Status.PASS, f"loading:{loading}",
                        "wait until the dataset is loaded" if loading else ""))
    busy = _busy(info)
    checks.append(Check("no_save_or_rewrite_running", Status.FAIL if busy else Status.PASS,
                        ", ".join(f"{b}:1" for b in busy) + f" after {busy_wait_s:.0f}s" if busy else "none running",
                        "wait for the running save or rewrite to finish, then run again" if busy else ""))
    bg = info.get("rdb_last_bgsave_status")
    checks.append(Check("rdb_last_bgsave", Status.PASS if bg == "ok" else Status.FAIL, f"rdb_last_bgsave_status:{bg}",
                        "" if bg == "ok" else "a fork-and-write already fails: fix that first (server log, disk)"))
    used = int(client.info("memory").get("used_memory", 0))
    data_dir = runtime.get("dir", "")
    if target.local and data_dir and os.path.isdir(data_dir):
        free = shutil.disk_usage(data_dir).free
        checks.append(Check("free_disk", Status.PASS if free >= used else Status.FAIL,
                            f"{free / 1024**2:,.0f} MiB free in {data_dir}, dataset {used / 1024**2:,.1f} MiB",
                            "" if free >= used else "free disk in the data dir: the rewrite writes a full copy"))
    if may_run(target, target.config_command, "SET", "appendonly", "yes") is False:
        checks.append(Check("acl_config_set", Status.WARN, f"the ACL user {acl_user(target)!r} may not run "
                            f"{target.config_command} SET (ACL DRYRUN): applying will be blocked",
                            f"ACL SETUSER {acl_user(target)} '+{target.config_command.lower()}|set' (as an admin), "
                            "or run as an ACL user that may"))
    advisories = host_advisories(overcommit_memory=read_overcommit() if target.local else None)
    return Preflight(ident, runtime, dict(info), data_dbsize(client), tuple(checks),  # without the runbook's lock
                     tuple(advisories))


def require(pre: Preflight) -> None:
    """Raise PreconditionFailed naming every failed precondition and its fix."""
    failed = [c for c in pre.checks if c.status == Status.FAIL]
    if failed:
        raise PreconditionFailed("refusing to change the server: " + "; ".join(
            f"{c.name}: {c.observed} ({c.fix})" if c.fix else f"{c.name}: {c.observed}" for c in failed))


@dataclass(frozen=True)
class PlanRow:
    setting: str
    current: str
    desired: str
    change: bool


@dataclass(frozen=True)
class EnablePlan:
    """What the change would set; `unchanged` when AOF already runs complete with the desired settings."""

    rows: tuple[PlanRow, ...]
    aof_complete: bool

    @property
    def changes(self) -> list[PlanRow]:
        return [r for r in self.rows if r.change]

    @property
    def unchanged(self) -> bool:
        return self.aof_complete and not self.changes


def plan_enable(pre: Preflight, appendfsync: str = "everysec",
                aof_settings: Mapping[str, object] | None = None) -> EnablePlan:
    """Compare the runtime settings with the desired ones (nothing is sent)."""
    if appendfsync not in FSYNC_POLICIES:
        raise ParameterError(f"appendfsync must be one of {', '.join(FSYNC_POLICIES)}, got {appendfsync!r}")
    extra = dict(aof_settings or {})
    unknown = sorted(set(extra) - set(AOF_SETTINGS))
    if unknown:
        raise ParameterError(f"aof_settings accepts {', '.join(AOF_SETTINGS)}; unknown: {', '.join(unknown)}")
    desired = {**{k: _config_value(v) for k, v in extra.items()}, "appendfsync": appendfsync, "appendonly": "yes"}
    rows = []
    for name, want in desired.items():
        current = pre.runtime.get(name, "")
        try:
            same = normalize(name, current) == normalize(name, want)
        except ValueError as err:
            raise ParameterError(f"aof_settings {name}: {err}") from err
        rows.append(PlanRow(name, current, want, not same))
    return EnablePlan(tuple(rows), aof_ready(pre.info))


def _config_value(value: object) -> str:
    """A parameter value as CONFIG SET takes it (booleans as yes/no)."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def intent(plan: EnablePlan, *, apply: bool = False) -> dict[str, Any] | None:
    """What `apply_enable` is about to send, for `runbook.intend` (None when it sends nothing): every setting
    from -> to, so a rollback can undo an interrupted change from it."""
    if plan.unchanged or not apply:
        return None
    changes = [SettingChange(r.setting, r.current, r.desired) for r in plan.changes]
    sets = ", ".join(f"{c.setting} {c.before} -> {c.after}" for c in changes) or "nothing to set"
    return {"summary": f"CONFIG SET at runtime ({sets}), then wait for the initial AOF rewrite",
            "changes": [c.to_json() for c in changes]}


@dataclass(frozen=True)
class EnableResult:
    """How the change went: planned, unchanged or changed, with the figures to show."""

    result: Outcome
    seconds: float = 0.0  # from the first CONFIG SET to noticing the rewrite complete
    rewrite_s: float | None = None  # the server's own aof_last_rewrite_time_sec
    latency: LatencyStats = field(default_factory=lambda: LatencyStats((), 0))
    info_after: dict[str, Any] = field(default_factory=dict)
    latest_fork_usec: int = 0


def apply_enable(target: Target, pre: Preflight, plan: EnablePlan, *, apply: bool = False,
                 timeout_s: float = 300.0, progress: Progress | None = None) -> EnableResult:
    """Make the planned change when `apply` (else return `planned`); put settings back on failure."""
    if plan.unchanged:
        return EnableResult(Outcome.UNCHANGED, info_after=pre.info)
    if not apply:
        return EnableResult(Outcome.PLANNED, info_after=pre.info)
    require(pre)
    client = target.client
    changes = [SettingChange(r.setting, r.current, r.desired) for r in plan.changes]
    if any(c.name == "acl_config_set" for c in pre.checks):
        raise Blocked(_no_config_set(target, "ACL DRYRUN says so; nothing was sent"))
    start = time.monotonic()
    with LatencyProbe(client) as probe:
        try:
            info = apply_runtime(client, changes, target.config_command, timeout_s=timeout_s, progress=progress)
        except ChangeInterrupted as err:
            raise ChangeInterrupted(f"{target.name}: enabling AOF {err}") from None  # a short traceback, quickly
        except ChangeFailed as err:
            if _refused_by_acl(err):  # 6.2 has no ACL DRYRUN: the server's NOPERM tells
                raise Blocked(_no_config_set(target, str(err))) from err
            raise ChangeFailed(f"{target.name}: enabling AOF failed after {time.monotonic() - start:.1f}s: {err}"
                               f"{'' if stopped_answering(err) else server_log_tail(target)}") from err
        seconds = time.monotonic() - start
        latency = probe.stop()
    stats = client.info("stats")
    rewrite_s = float(info["aof_last_rewrite_time_sec"]) \
        if int(info.get("aof_last_rewrite_time_sec", -1)) >= 0 else None
    return EnableResult(Outcome.CHANGED, seconds, rewrite_s, latency, dict(info), int(stats.get("latest_fork_usec", 0)))


def _refused_by_acl(err: BaseException) -> bool:
    """Whether the server's NOPERM is behind `err` (wrapped by the CONFIG SET helpers)."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, NoPermissionError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _no_config_set(target: Target, detail: str) -> str:
    """Blocked: this ACL user may not run CONFIG SET; what a person with the rights runs."""
    user, cmd = acl_user(target), target.config_command
    return (f"{target.name}: the ACL user {user!r} may not run {cmd} SET ({detail.rstrip('.')}). "
            "A person with the rights either grants it, then runs enable-aof again:\n"
            f"  redis-cli -u {target.name} --user ADMIN --askpass ACL SETUSER {user} '+{cmd.lower()}|set'\n"
            "or runs the change as an ACL user that may:\n"
            f"  runbook run enable-aof -p target {target.name} -p username ADMIN -p apply true")


@dataclass(frozen=True)
class Verification:
    checks: tuple[Check, ...]
    dbsize: int


def verify_enable(target: Target, pre: Preflight, plan: EnablePlan, result: EnableResult) -> Verification:
    """After the change: AOF on and healthy, no key lost, AOF files on disk. Planned: nothing changed."""
    client = target.client
    info = client.info("persistence")
    runtime = target.runtime_settings()
    dbsize = data_dbsize(client)
    checks: list[Check] = []
    if result.result == Outcome.PLANNED:
        same = all(runtime.get(r.setting) == r.current for r in plan.rows)
        checks.append(Check("nothing_changed", Status.PASS if same else Status.FAIL,
                            "plan only: every setting as before" if same
                            else "settings changed during a plan-only run"))
        return Verification(tuple(checks), dbsize)
    on = int(info.get("aof_enabled", 0)) == 1
    checks.append(Check("aof_enabled", Status.PASS if on else Status.FAIL, f"aof_enabled:{info.get('aof_enabled')}"))
    for key in ("aof_last_write_status", "aof_last_bgrewrite_status"):
        checks.append(Check(key, Status.PASS if info.get(key) == "ok" else Status.FAIL, f"{key}:{info.get(key)}"))
    wanted = {r.setting: r.desired for r in plan.rows}
    off = [f"{k} {runtime.get(k)} (wanted {v})" for k, v in wanted.items()
           if normalize(k, runtime.get(k)) != normalize(k, v)]
    checks.append(Check("settings", Status.FAIL if off else Status.PASS,
                        "; ".join(off) or "every planned setting is in effect"))
    if dbsize == pre.dbsize:
        checks.append(Check("dbsize", Status.PASS, f"DBSIZE {dbsize} before and after"))
    else:
        lost = pre.dbsize - dbsize
        status = Status.FAIL if lost > max(1, pre.dbsize // 100) else Status.WARN
        checks.append(Check("dbsize", status, f"DBSIZE {pre.dbsize} before, {dbsize} after: the server took "
                            "writes or expired keys meanwhile" if status == Status.WARN else
                            f"DBSIZE {pre.dbsize} before, {dbsize} after: {lost} keys gone"))
    data_dir = runtime.get("dir", "")
    if target.local and data_dir and os.access(data_dir, os.R_OK | os.X_OK):
        disk = aof_on_disk(Path(data_dir), runtime.get("appendfilename", "appendonly.aof"),
                           runtime.get("appenddirname", "appendonlydir"))
        names = ", ".join(f.path.name for f in disk.files) or "none"
        checks.append(Check("aof_on_disk", Status.PASS if disk.loadable else Status.FAIL, f"{disk.layout}: {names}",
                            "" if disk.loadable else disk.problem or "no loadable AOF in the data dir"))
    return Verification(tuple(checks), dbsize)


def enable_summary(pre: Preflight, plan: EnablePlan, result: EnableResult, verified: Verification,
                   drift_after: list[str]) -> StepSummary:
    """The record of this notebook."""
    all_checks = (*pre.checks, *verified.checks)
    return StepSummary(STEP, worst([c.status for c in all_checks]), result.result, pre.identity.server,
                       pre.identity.version, all_checks, facts={
                           "dbsize_before": pre.dbsize,
                           "dbsize": verified.dbsize,
                           "changes": [SettingChange(r.setting, r.current, r.desired).to_json() for r in plan.changes],
                           "seconds": round(result.seconds, 3),
                           "rewrite_s": result.rewrite_s,
                           "latency": result.latency.summary() if result.latency.count else {},
                           "latest_fork_usec": result.latest_fork_usec,
                           "drift_after": drift_after,
                           "advisories": advisory_facts(pre.advisories, socket.gethostname()),
                       })


def raise_on_failure(verified: Verification) -> None:
    """Raise VerificationFailed when any verification check failed (after the summary is recorded)."""
    failed = [c for c in verified.checks if c.status == Status.FAIL]
    if failed:
        raise VerificationFailed("; ".join(f"{c.name}: {c.observed}" for c in failed))
