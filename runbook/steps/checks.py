"""Checks: each a pass/warn/fail verdict on one fact, with a one-line fix.

Pure functions over what inspection gathered, so they are tested without a server.
"""

from __future__ import annotations

from typing import Mapping, Sequence

from runbook.model import Check, Status
from runbook.server.replicas import ReplicaQuorum
from runbook.server.settings import Drift, save_rules
from runbook.server.topology import Topology


def _ok(value: object) -> bool:
    return value == "ok"


def persistence_checks(
    info: Mapping[str, object],
    runtime: Mapping[str, str],
    drift: Sequence[Drift],
    *,
    role: str,
    config_file: str,
    config_read_error: str = "",
    now: float,
    free_disk_bytes: int | None = None,
    used_memory_bytes: int | None = None,
    replicas: ReplicaQuorum | None = None,
) -> list[Check]:
    """Every check of the inspection, in the order an SRE reads them (the host's settings are advice, apart:
    `host_advisories`)."""
    checks: list[Check] = []
    add = checks.append

    # Loading and role first: they change how to read everything below.
    if int(info.get("loading", 0)):  # type: ignore[call-overload]
        add(Check("loading", Status.WARN, "the server is loading its dataset", "wait until loading:0, then run again"))
    else:
        add(Check("loading", Status.PASS, "loading:0"))
    if role == "master":
        add(Check("role", Status.PASS, "master"))
    else:
        add(Check("role", Status.WARN, f"role {role}: CONFIG changes do not replicate and a replica restarts its AOF "
                  "after every full sync", "inspect and change the master; apply the same settings to replicas"))
    if replicas is not None and replicas.enforced:
        add(min_replicas(replicas))

    bgsave = info.get("rdb_last_bgsave_status")
    add(Check("rdb_last_bgsave", Status.PASS if _ok(bgsave) else Status.FAIL, f"rdb_last_bgsave_status:{bgsave}",
              "" if _ok(bgsave) else "read the server log; check free disk and vm.overcommit_memory in the data dir"))

    aof_on = int(info.get("aof_enabled", 0)) == 1  # type: ignore[call-overload]
    if aof_on:
        add(Check("aof_enabled", Status.PASS, "aof_enabled:1"))
        w, r = info.get("aof_last_write_status"), info.get("aof_last_bgrewrite_status")
        add(Check("aof_write_status", Status.PASS if _ok(w) else Status.FAIL, f"aof_last_write_status:{w}",
                  "" if _ok(w) else "the AOF cannot be written: check disk space and the server log"))
        add(Check("aof_rewrite_status", Status.PASS if _ok(r) else Status.FAIL, f"aof_last_bgrewrite_status:{r}",
                  "" if _ok(r) else "the last AOF rewrite failed: check disk space and the server log"))
        delayed = int(info.get("aof_delayed_fsync", 0))  # type: ignore[call-overload]
        if delayed:
            add(Check("aof_delayed_fsync", Status.WARN, f"aof_delayed_fsync:{delayed}",
                      "fsync stalled: the disk is too slow for appendfsync everysec"))
        fsync = runtime.get("appendfsync", "?")
        if fsync in ("everysec", "always"):
            add(Check("appendfsync", Status.PASS, f"appendfsync {fsync}"))
        else:
            add(Check("appendfsync", Status.WARN, f"appendfsync {fsync}: an OS crash loses up to ~30 s of writes",
                      "run 02-enable-aof with appendfsync everysec"))
    else:
        add(Check("aof_enabled", Status.WARN, "aof_enabled:0: a crash loses every write since the last RDB save",
                  "run 02-enable-aof (runtime, safe), then 03-persist-config"))

    # Drift: what the next restart would change.
    add(config_drift(drift, config_file, config_read_error))

    # Time since the last successful save, against the save policy.
    rules = save_rules(runtime.get("save", ""))
    last = int(info.get("rdb_last_save_time", 0))  # type: ignore[call-overload]
    changes = int(info.get("rdb_changes_since_last_save", 0))  # type: ignore[call-overload]
    age = max(0, int(now) - last)
    if not rules and not aof_on:
        add(Check("save_policy", Status.FAIL, "no save rules and AOF off: nothing is persisted",
                  "set a save policy (Redis's default: save 3600 1 300 100 60 10000) or enable AOF"))
    elif not rules:
        add(Check("save_policy", Status.WARN, "no save rules: RDB snapshots only on demand", "set a save policy"))
    else:
        overdue = [(s, c) for s, c in rules if changes >= c and age > s * 1.1 + 10]
        if overdue:
            s, c = overdue[0]
            add(Check("save_policy", Status.WARN, f"{changes} changes and {age}s since the last save: the rule "
                      f"'save {s} {c}' should have fired", "check rdb_last_bgsave_status and the server log"))
        else:
            add(Check("save_policy", Status.PASS, f"last save {age}s ago, {changes} changes since"))

    stop = runtime.get("stop-writes-on-bgsave-error", "yes")
    add(Check("stop_writes_on_bgsave_error", Status.PASS if stop == "yes" else Status.WARN,
              f"stop-writes-on-bgsave-error {stop}",
              "" if stop == "yes" else "with no, failed saves go unnoticed by clients: set it to yes"))

    if free_disk_bytes is not None and used_memory_bytes is not None:
        need = used_memory_bytes
        status = Status.FAIL if free_disk_bytes < need else Status.WARN if free_disk_bytes < 2 * need else Status.PASS
        add(Check("free_disk", status, f"{_mb(free_disk_bytes)} free in dir, dataset {_mb(used_memory_bytes)}",
                  "" if status == Status.PASS
                  else "free disk in the data dir: a save or rewrite needs room for a full copy"))
    return checks


def host_advisories(*, overcommit_memory: int | None = None) -> list[Check]:
    """Advice on the host a server runs on (a sysctl, the same for every server there): reported once per host,
    outside every step's checks and status (a run cannot fix it, and it is not what the change is about)."""
    if overcommit_memory is None:
        return []
    return [Check("vm_overcommit_memory", Status.PASS if overcommit_memory == 1 else Status.WARN,
                  f"vm.overcommit_memory = {overcommit_memory}",
                  "" if overcommit_memory == 1
                  else "set vm.overcommit_memory = 1 (sysctl), or BGSAVE/rewrites may fail to fork")]


def advisory_facts(advisories: Sequence[Check], host: str) -> list[dict[str, str]]:
    """Advisories as a summary records them (`advisories` in its facts): name, host and the check's fields."""
    return [{"name": a.name, "host": host, **a.to_json()} for a in advisories]


def min_replicas(quorum: ReplicaQuorum) -> Check:
    """Whether the master takes writes under min-replicas-to-write (NOREPLICAS refuses them all otherwise)."""
    if quorum.refuses_writes:
        return Check("min_replicas", Status.FAIL, quorum.refusal, quorum.fix)
    return Check("min_replicas", Status.PASS, quorum.observed)


def _mb(n: int) -> str:
    return f"{n / 1024**2:,.1f} MiB"


def config_drift(drift: Sequence[Drift], config_file: str, config_read_error: str = "") -> Check:
    """The verdict on what the next restart would change (runtime vs config file)."""
    name = "config_drift"
    if not config_file:
        return Check(name, Status.WARN, "the server runs without a config file: runtime changes are lost on restart "
                     "and CONFIG REWRITE is impossible",
                     "put the settings in the service's command line or start it from a config file")
    if config_read_error:
        return Check(name, Status.WARN, f"config file not compared: {config_read_error}",
                     "run where the file is readable, or pass config_file")
    drifted = [d for d in drift if d.status == "drift"]
    aof = next((d for d in drifted if d.setting == "appendonly"), None)
    if aof and aof.runtime == "yes":
        return Check(name, Status.FAIL, "appendonly is yes at runtime but no in the config file: AOF will be off "
                     "after the next restart", "run 03-persist-config (never sed + restart: see the restart trap)")
    if aof:
        return Check(name, Status.FAIL, "appendonly is no at runtime but yes in the config file: a restart would "
                     "start from an empty or stale AOF and ignore dump.rdb",
                     "do not restart; run 02-enable-aof first, or set appendonly no in the file")
    if drifted:
        names = ", ".join(f"{d.setting} ({d.runtime} vs {d.file})" for d in drifted)
        return Check(name, Status.WARN, f"runtime differs from the file: {names}",
                     "run 03-persist-config to write the runtime values to the file")
    return Check(name, Status.PASS, "the config file matches the runtime persistence settings")


def group_checks(topology: Topology) -> list[Check]:
    """The inspection's checks on the target's group, each a warning naming the nodes concerned: a node that
    could not be read, a replica whose link is down, a node with AOF off at runtime, a node whose file says
    otherwise than its runtime (drift: the next restart, or Sentinel's CONFIG REWRITE, changes it)."""
    nodes = topology.nodes
    read = [n for n in nodes if not n.error]
    unread = [f"{n.address} ({n.error})" for n in nodes if n.error]
    down = [f"{n.address} (master_link_status:{n.link})" for n in read if n.role == "replica" and n.link != "up"]
    off = [f"{n.address} ({n.role})" for n in read if n.aof_runtime != "yes"]
    drift = [f"{n.address} ({n.role}: appendonly {n.aof_runtime} at runtime, {n.aof_file} in its file)"
             for n in read if n.drift]
    size = f"{len(nodes)} nodes ({topology.kind})"
    # A node not read is neither up nor on: what it is stays unknown, and says so in every check it would count in.
    unknown = [n.address for n in nodes if n.error]
    unknown_note = f"; unknown for {', '.join(unknown)} (not read)" if unknown else ""
    links = (f"replication link down: {', '.join(down)}" if down else
             f"every replica read has its link up{unknown_note}" if unknown else "every replica's link is up")
    aof = (f"AOF off at runtime: {', '.join(off)}{unknown_note}" if off else
           f"AOF on at runtime on the {len(read)} nodes read{unknown_note}" if unknown else
           f"AOF on at runtime on all {size}")
    return [
        Check("group_nodes", Status.WARN if unread else Status.PASS,
              f"not read: {', '.join(unread)}" if unread else f"{size} read",
              "check that every node answers with the run's credentials" if unread else ""),
        Check("group_links", Status.WARN if down or unknown else Status.PASS, links,
              "bring the links up before a change (INFO replication on the replica, its log)" if down or unknown
              else ""),
        Check("group_aof", Status.WARN if off or unknown else Status.PASS, aof,
              "run all -p discover true -p apply true: AOF on every node, replicas first" if off else
              "bring the nodes not read back, then inspect again" if unknown else ""),
        Check("group_drift", Status.WARN if drift else Status.PASS,
              f"runtime differs from the file: {', '.join(drift)}" if drift
              else "no node's file differs from its runtime on appendonly",
              "persist each node's runtime to its own file (persist-config per node)" if drift else ""),
    ]
