"""Read-only inspection of one target: identity, settings, drift, files on disk, checks."""

from __future__ import annotations

import os
import shutil
import socket
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from runbook.errors import PreconditionFailed
from runbook.model import Check, ConnectionSpec, Status, StepSummary, worst
from runbook.server.aof import AofOnDisk, DiskFile, aof_on_disk
from runbook.server.configfile import read_config
from runbook.server.lock import data_dbsize
from runbook.server.ops import read_overcommit
from runbook.server.replicas import replica_quorum
from runbook.server.settings import Drift, compare, save_rules
from runbook.server.target import Identity, Target
from runbook.server.topology import Topology, discover, is_sentinel_url
from runbook.steps.checks import advisory_facts, group_checks, host_advisories, persistence_checks
from runbook.steps.gateway_view import GatewayView

STEP = "inspect"

#: INFO persistence fields recorded in the summary for monitoring (see runbook.evidence.metrics).
METRIC_FIELDS = ("aof_enabled", "aof_rewrite_in_progress", "aof_last_bgrewrite_status", "aof_last_write_status",
                 "aof_delayed_fsync", "rdb_bgsave_in_progress", "rdb_last_bgsave_status", "rdb_last_save_time",
                 "rdb_changes_since_last_save", "loading", "aof_current_size", "aof_base_size",
                 "rdb_last_bgsave_time_sec", "aof_last_rewrite_time_sec")


@dataclass(frozen=True)
class Inspection:
    """Everything one inspection saw, and its checks."""

    target: str
    identity: Identity
    runtime: dict[str, str]
    info: dict[str, Any]
    dbsize: int
    used_memory: int
    latest_fork_usec: int
    config_file: str
    config_error: str
    drift: tuple[Drift, ...]
    data_dir: str
    data_dir_readable: bool
    files: tuple[DiskFile, ...]
    aof: AofOnDisk | None
    checks: tuple[Check, ...]
    at: float = field(default_factory=time.time)
    advisories: tuple[Check, ...] = ()  # the host's settings (`host_advisories`): not part of the verdict
    topology: Topology | None = None  # the target's whole group, when the run discovers it (`with_group`)
    gateway: GatewayView | None = None  # the key classes of a gateway's Redis (`with_gateway`); not in the verdict

    @property
    def verdict(self) -> Status:
        return worst([c.status for c in self.checks])

    @property
    def drifted(self) -> list[str]:
        """The settings a restart would change."""
        return [d.setting for d in self.drift if d.status == "drift"]

    def summary(self) -> StepSummary:
        """The record the runner reads back from the executed notebook."""
        rules = save_rules(self.runtime.get("save", ""))
        rdb = next((f.size for f in self.files if f.role == "rdb"), None)  # the dump file, when dir is readable
        return StepSummary(STEP, self.verdict, server=self.identity.server, version=self.identity.version,
                           checks=self.checks, facts={
                               "target": self.target,
                               "role": self.identity.role,
                               "config_file": self.config_file,
                               "dbsize": self.dbsize,
                               "aof_enabled": int(self.info.get("aof_enabled", 0)),
                               "drift": self.drifted,
                               "settings": [d.setting for d in self.drift if d.status != "unknown"],
                           "advisories": advisory_facts(self.advisories, socket.gethostname()),
                               "metrics": {**{k: self.info[k] for k in METRIC_FIELDS if k in self.info},
                                           "latest_fork_usec": self.latest_fork_usec,
                                           **({"rdb_file_size": rdb} if rdb is not None else {})},
                               # The longest window of the runtime save policy (none for `save ""`).
                               **({"save_policy_window_s": max(s for s, _ in rules)} if rules else {}),
                               "inspected_at": self.at,
                               **({"topology": self.topology.to_json()} if self.topology is not None else {}),
                               **({"gateway_keys": self.gateway.facts()} if self.gateway is not None else {}),
                           })

    def with_group(self, topology: Topology | None) -> Inspection:
        """This inspection with the target's group beside it: the `topology` fact and the group's checks (a node
        with AOF off or drift is a warning naming it); unchanged for None (the run does not discover)."""
        if topology is None:
            return self
        return replace(self, topology=topology, checks=self.checks + tuple(group_checks(topology)))

    def with_gateway(self, view: GatewayView | None) -> Inspection:
        """This inspection with what a gateway keeps in the target (`gateway_view.view_gateway`): the `gateway_keys`
        fact; its advice stays out of the verdict. Unchanged for None (the target is not a gateway's)."""
        return self if view is None else replace(self, gateway=view)


def wants_group(spec: ConnectionSpec) -> bool:
    """Whether the run discovers the target's group: `discover`, or a Sentinel URL (which implies it)."""
    return bool(spec.discover) or is_sentinel_url(spec.target)


def discover_group(spec: ConnectionSpec) -> Topology | None:
    """The target's whole group (`runbook.server.topology.discover`: read-only) when the run asks for it
    (`wants_group`); None otherwise."""
    return discover(spec) if wants_group(spec) else None


def inspect_target(target: Target, config_file: str = "") -> Inspection:
    """Inspect `target` without changing anything on it."""
    client = target.client
    ident = target.identify()
    runtime = target.runtime_settings()
    info = client.info("persistence")
    memory = client.info("memory")
    stats = client.info("stats")
    dbsize = data_dbsize(client)  # without the runbook's own lock key

    path = config_file or ident.config_file
    config, config_error = None, ""
    if path and not target.local and not config_file:
        config_error = f"the target is not on this host, so {path} cannot be read here"
    elif path:
        try:
            config = read_config(path)
        except PreconditionFailed as err:
            config_error = str(err)
    drift = compare(runtime, config if path and not config_error else None, ident.major)

    data_dir = runtime.get("dir", "")
    readable = bool(target.local and data_dir and os.access(data_dir, os.R_OK | os.X_OK))
    files: list[DiskFile] = []
    aof: AofOnDisk | None = None
    if readable:
        rdb = Path(data_dir) / runtime.get("dbfilename", "dump.rdb")
        if rdb.is_file():
            st = rdb.stat()
            files.append(DiskFile("rdb", rdb, st.st_size, st.st_mtime))
        aof = aof_on_disk(Path(data_dir), runtime.get("appendfilename", "appendonly.aof"),
                          runtime.get("appenddirname", "appendonlydir"))
        files.extend(aof.files)

    checks = persistence_checks(
        info, runtime, drift,
        role=ident.role,
        config_file=path,
        config_read_error=config_error,
        now=time.time(),
        free_disk_bytes=shutil.disk_usage(data_dir).free if readable else None,
        used_memory_bytes=int(memory.get("used_memory", 0)) if readable else None,
        replicas=replica_quorum(target),
    )
    return Inspection(
        target=target.name, identity=ident, runtime=runtime, info=dict(info), dbsize=dbsize,
        used_memory=int(memory.get("used_memory", 0)), latest_fork_usec=int(stats.get("latest_fork_usec", 0)),
        config_file=path, config_error=config_error, drift=tuple(drift), data_dir=data_dir,
        data_dir_readable=readable, files=tuple(files), aof=aof, checks=tuple(checks),
        advisories=tuple(host_advisories(overcommit_memory=read_overcommit() if target.local else None)),
    )
