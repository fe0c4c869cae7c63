"""Whether a master takes writes under `min-replicas-to-write`: the setting against the replicas it counts.

A master with `min-replicas-to-write N` and `min-replicas-max-lag M` (both above 0) refuses every write with
`NOREPLICAS` while fewer than N replicas are online and acknowledged within M seconds. See
https://redis.io/docs/latest/operate/oss_and_stack/management/replication/#allow-writes-only-with-n-attached-replicas
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from runbook.server.poll import Deadline
from runbook.server.target import Target

SETTINGS = ("min-replicas-to-write", "min-replicas-max-lag")


@dataclass(frozen=True)
class ReplicaQuorum:
    """min-replicas-to-write and min-replicas-max-lag, and the replicas the master has and counts."""

    to_write: int
    max_lag: int
    connected: int  # INFO replication connected_slaves
    good: int  # online and acknowledged within max_lag: the replicas the master counts
    role: str

    @property
    def enforced(self) -> bool:
        """Both settings above 0 on a master: the server checks the quorum before every write."""
        return self.role == "master" and self.to_write > 0 and self.max_lag > 0

    @property
    def refuses_writes(self) -> bool:
        return self.enforced and self.good < self.to_write

    @property
    def observed(self) -> str:
        return (f"min-replicas-to-write {self.to_write} with {self.connected} connected replica(s), {self.good} "
                f"of them within min-replicas-max-lag {self.max_lag}s")

    @property
    def refusal(self) -> str:
        """What a client sees, in one sentence."""
        return f"{self.observed}: the master refuses every write (NOREPLICAS)"

    @property
    def fix(self) -> str:
        return (f"bring back the replicas it expects (on each: INFO replication shows master_link_status:up), or, "
                f"if this master is meant to run with fewer, lower the setting at runtime (CONFIG SET "
                f"min-replicas-to-write {self.good}) and in its config file")


def replica_quorum(target: Target) -> ReplicaQuorum:
    """CONFIG GET min-replicas-to-write / min-replicas-max-lag and INFO replication, as a ReplicaQuorum."""
    settings = target.config_get(list(SETTINGS))
    return quorum_from(settings, target.client.info("replication"))


def quorum_from(settings: Mapping[str, str], replication: Mapping[str, Any]) -> ReplicaQuorum:
    """The quorum from CONFIG GET replies and INFO replication (`min_slaves_good_slaves` when the server
    reports it, else the replicas online with a lag within the limit)."""
    to_write, max_lag = (int(settings.get(name) or 0) for name in SETTINGS)
    role = str(replication.get("role", "unknown"))
    replicas = [v for k, v in replication.items() if k.startswith("slave") and k[5:].isdigit() and isinstance(v, dict)]
    if "min_slaves_good_slaves" in replication:
        good = int(replication["min_slaves_good_slaves"])
    else:
        good = sum(1 for r in replicas if r.get("state") == "online" and int(r.get("lag", max_lag + 1)) <= max_lag)
    return ReplicaQuorum(to_write, max_lag, int(replication.get("connected_slaves", len(replicas))), good,
                         "replica" if role == "slave" else role)


def wait_for_quorum(target: Target, timeout_s: float) -> ReplicaQuorum:
    """The quorum once the master takes writes again (replicas reconnect after its restart), or as it last
    was when `timeout_s` ran out."""
    deadline = Deadline(timeout_s)
    quorum = replica_quorum(target)
    while quorum.refuses_writes and not deadline.expired:
        deadline.sleep(0.1)
        quorum = replica_quorum(target)
    return quorum
