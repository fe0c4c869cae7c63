"""Group runs: a replicated group (a primary and its replicas, a Sentinel group, a Cluster) changed node by node.

A run is a group run when its target is a Sentinel URL or it passes `discover true` (`is_group`). The plan marks its
steps with a `GroupRun` (`runbook.orchestration.plan`); at the run's start, before anything is changed, `expand`
discovers the group (read-only, `runbook.server.topology.discover`) and turns the steps into the group's own:

1. inspect of the whole group (`discover true`);
2. node by node in `Topology.order()` (each shard's replicas, then its primary): backup, enable-aof (a replica with
   `allow_replica`), persist-config (the node's own config file), with a `group-guard` before the first node,
   between two nodes and after the last;
3. the online test once per primary, its canaries read back from its replicas (`read_back_from`);
4. inspect of the whole group again, and a last guard: the Sentinels' view is still the one of the start.

A guard (`check`) discovers the group again and runs `group_health`: a FAIL stops the run before the next node
(the runner records the rest as skipped). Never two nodes at once; one change id for the whole group.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import redis

from runbook.errors import ParameterError, RunbookError
from runbook.model import Check, ConnectionSpec, Status, StepSummary, worst
from runbook.orchestration.params import Param, notebook_parameters
from runbook.server.target import redact_url
from runbook.server.topology import Node, Topology, discover, group_health, is_sentinel_url

if TYPE_CHECKING:
    from runbook.orchestration.plan import Step

#: The runner's own step of a group run: the group's health, between two nodes (no notebook).
GUARD = "group-guard"
#: The steps a group run repeats for every node, in the node's turn.
NODE_STEPS = ("backup", "enable-aof", "persist-config")
#: How far a replica may lag its primary (bytes of replication offset) before the next node is changed; at most
#: LAG_CAP (a bound above any replication backlog a server keeps could never fail).
MAX_LAG_BYTES = 1 << 20
LAG_CAP = 1 << 30
#: The run-level parameters of a group run (no notebook declares them): popped by the plan before validation.
GROUP_PARAMS: dict[str, Param] = {
    "max_lag_bytes": Param("max_lag_bytes", "int", MAX_LAG_BYTES,
                           "group runs: the most a replica may lag its primary, in bytes, for the next node to be "
                           "changed"),
    "expect_replicas": Param("expect_replicas", "int", -1,
                             "group runs: how many replicas each primary must have (a replica that is down is not "
                             "seen from its primary); -1: as many as are found"),
}


@dataclass(frozen=True)
class GroupOptions:
    """A group run's own parameters (`GROUP_PARAMS`), checked; `given` names those the run set."""

    max_lag_bytes: int = MAX_LAG_BYTES
    expect_replicas: int = -1
    given: tuple[str, ...] = ()


@dataclass(frozen=True)
class GroupRun:
    """The group a step belongs to: where it is discovered from and the guard's bound; after `expand`, the
    topology found at the run's start and the node URLs in change order."""

    source: str  # the target the group is discovered from: a data node's URL or a Sentinel URL
    max_lag_bytes: int = MAX_LAG_BYTES
    expect_replicas: int = -1  # replicas each primary must have; -1: not checked
    start: Topology | None = None
    nodes: tuple[str, ...] = ()
    error: str = ""  # why discovery at the start failed ("" when it did not)


def is_group(values: Mapping[str, Any]) -> bool:
    """Whether a run's (or a fleet entry's) parameters make it a group run."""
    return is_sentinel_url(str(values.get("target", ""))) or values.get("discover") is True


def pop_options(values: dict[str, Any]) -> GroupOptions:
    """`max_lag_bytes` and `expect_replicas` taken out of a run's parameters (checked); defaults when not given."""
    given = tuple(name for name in GROUP_PARAMS if name in values)
    lag = values.pop("max_lag_bytes", MAX_LAG_BYTES)
    if isinstance(lag, bool) or not isinstance(lag, int) or not 0 <= lag <= LAG_CAP:
        raise ParameterError(f"parameter max_lag_bytes must be an int from 0 to {LAG_CAP} (1 GiB: a larger bound "
                             f"could never stop the run), got {lag!r} ({GROUP_PARAMS['max_lag_bytes'].help})")
    expect = values.pop("expect_replicas", -1)
    if isinstance(expect, bool) or not isinstance(expect, int) or expect < -1:
        raise ParameterError(f"parameter expect_replicas must be an int of at least 0 (or -1), got {expect!r} "
                             f"({GROUP_PARAMS['expect_replicas'].help})")
    return GroupOptions(lag, expect, given)


def group_of(steps: Sequence[str], values: Mapping[str, Any], options: GroupOptions, *,
             lag_given: bool = False) -> GroupRun | None:
    """The GroupRun of a run (or fleet entry) with these parameters, None when it is not a group run; a
    ParameterError for what a group run cannot do, before anything is touched."""
    target = str(values.get("target", ""))
    if not is_group(values):
        if lag_given and options.given:
            raise ParameterError(f"{' and '.join(options.given)} {'bounds' if len(options.given) == 1 else 'bound'} "
                                 "the replicas of a group run: give it with -p discover true or a redis+sentinel:// "
                                 "target, or leave it out")
        return None
    if target == "sandbox":
        raise ParameterError("discover finds the replicated group of a server, and target sandbox is one throwaway "
                             "server: give a node's URL (redis://host:port/0) or a Sentinel URL "
                             "(redis+sentinel://host:26379/mymaster)")
    if "rollback" in steps:
        raise ParameterError(f"a group run does not roll back ({target}): run rollback for one node at a time, "
                             "-p target redis://host:port/0, without discover")
    if "config_file" in values:
        raise ParameterError(f"config_file names one server's file, and a group run ({target}) changes every node "
                             "in its own file (INFO server config_file of each): leave config_file out")
    mode = values.get("mode", "online")
    if "test-persistence" in steps and mode != "online":
        raise ParameterError(restart_refusal(target, str(mode)))
    return GroupRun(target, options.max_lag_bytes, options.expect_replicas)


def restart_refusal(target: str, mode: str) -> str:
    """Why a group run (or a Sentinel-monitored primary) is not restart- or crash-tested, and the safe way."""
    name = target.rstrip("/").split("/")[3] if is_sentinel_url(target) and target.count("/") >= 3 else "<name>"
    return (f"test-persistence -p mode {mode} would take down a node of the group of {target} while Sentinel or its "
            f"replicas depend on it (a failover, or a primary back without its writes); a group run tests online "
            f"only. The safe procedure: SENTINEL FAILOVER {name} first (redis-cli -p 26379 SENTINEL FAILOVER {name}), "
            "then run the restart test on the old primary once it is a replica: runbook run test-persistence "
            "-p target redis://OLD-PRIMARY:port/0 -p mode restart -p allow_restart true -p apply true")


# -- at the run's start ------------------------------------------------------------------------------------------


def expand(steps: Sequence[Step]) -> list[Step]:
    """The steps with every group run's steps expanded over its nodes (discovering each group: read-only).

    Steps of no group are kept as they are; the groups of a fleet follow one another."""
    out: list[Step] = []
    for group, run in itertools.groupby(steps, key=lambda s: s.group):
        same = list(run)
        out += _expand_one(group, same) if group is not None else same
    return out


def _connection(step: Step) -> dict[str, Any]:
    return {k: v for k, v in step.parameters.items() if k in ConnectionSpec.names()}


def _expand_one(group: GroupRun, steps: list[Step]) -> list[Step]:
    spec = ConnectionSpec.from_parameters({**_connection(steps[0]), "target": group.source})
    try:
        topology: Topology | None = discover(spec)
    except (RunbookError, redis.RedisError, OSError) as err:
        topology = None
        group = replace(group, error=str(err))
    if topology is None:
        # No nodes to change: a guard that says so stops the run before its first changing step (the rest is
        # recorded as skipped, for the group's target).
        first = next((i for i, s in enumerate(steps) if s.name != "inspect"), len(steps))
        marked = [replace(s, group=group) for s in steps]
        return marked[:first] + ([_guard(steps[first], group)] if first < len(steps) else []) + marked[first:]
    order = topology.order()
    group = replace(group, start=topology, nodes=tuple(n.url(group.source) for n in order))
    out: list[Step] = []
    block: list[Step] = []
    changed_any = False
    for step in [*steps, None]:
        if step is not None and step.name in NODE_STEPS:
            block.append(step)
            continue
        if block:
            out += _node_by_node(block, order, group)
            changed_any, block = True, []
        if step is None:
            break
        if step.name == "test-persistence":
            out += _per_primary(step, topology, group)
        else:  # inspect: the whole group, from where it was discovered
            out.append(replace(step, parameters={**step.parameters, "discover": True}, group=group))
    if changed_any and out[-1].name != GUARD:
        out.append(_guard(steps[-1], group, done=group.nodes))  # the end: the Sentinels' view as at the start
    return out


def _node_by_node(block: list[Step], order: list[Node], group: GroupRun) -> list[Step]:
    """The block's steps for every node in turn, a guard before the first node, between two and after the last."""
    out: list[Step] = []
    done: list[str] = []
    for node in order:
        url = node.url(group.source)
        out.append(_guard(block[0], group, done=done, upcoming=url))
        out += [_on_node(step, node, url, group) for step in block]
        done.append(url)
    out.append(_guard(block[-1], group, done=done))
    return out


def _on_node(step: Step, node: Node, url: str, group: GroupRun) -> Step:
    params = {**step.parameters, "target": url, "discover": False}
    if step.name == "enable-aof" and node.role == "replica":
        params["allow_replica"] = True  # its turn in the order: CONFIG changes do not replicate
    if step.name == "persist-config":
        params.pop("config_file", None)
        if node.local and node.config_file:
            params["config_file"] = node.config_file  # its own file; a remote node's step blocks with the commands
    return replace(step, parameters=params, group=group)


def _per_primary(step: Step, topology: Topology, group: GroupRun) -> list[Step]:
    """The online test once per primary, its canaries read back from that primary's replicas."""
    reads_back = "read_back_from" in notebook_parameters(step.path)
    out = []
    for primary in topology.primaries():
        params = {**step.parameters, "target": primary.url(group.source), "discover": False}
        if reads_back:
            params["read_back_from"] = [r.url(group.source) for r in topology.replicas_of(primary.address)]
        out.append(replace(step, parameters=params, group=group))
    return out


def _guard(like: Step, group: GroupRun, *, done: Sequence[str] = (), upcoming: str = "") -> Step:
    """A guard step in `like`'s place: the group's connection, what was changed so far and what comes next."""
    params = {**_connection(like), "target": group.source, "discover": True, "max_lag_bytes": group.max_lag_bytes,
              "done": list(done), "next": upcoming}
    return replace(like, name=GUARD, path=Path(GUARD), parameters=params, fleet=(), group=group)


# -- a guard -----------------------------------------------------------------------------------------------------


def check(step: Step) -> StepSummary:
    """Run one guard: discover the group again and check its health against the start (read-only).

    FAIL when a node of the start is gone or unreadable or a replica link is down, a replica lags more than
    `max_lag_bytes`, a failover is in progress or the primaries changed, or the Sentinels' view (master, epoch)
    moved since the start."""
    group = step.group
    assert group is not None
    upcoming, done = str(step.parameters.get("next", "")), list(step.parameters.get("done", []))
    facts: dict[str, Any] = {"group": redact_url(group.source), "next": upcoming, "done": done,
                             "max_lag_bytes": group.max_lag_bytes}
    checks: list[Check] = []
    now: Topology | None = None
    if group.start is None:
        checks.append(Check("discovery", Status.FAIL, f"the group of {group.source} was not found at the run's "
                            f"start: {group.error}", "make the target (and its Sentinels) reachable from here, "
                            "then run again: nothing was changed"))
    else:
        try:
            now = discover(ConnectionSpec.from_parameters(step.parameters))
        except (RunbookError, redis.RedisError, OSError) as err:
            checks.append(Check("discovery", Status.FAIL, f"the group of {group.source} cannot be read now: {err}",
                                "find out why (a node or Sentinel down, the network), then run again"))
        else:
            facts["topology"] = now.to_json()
            checks += group_health(now, max_lag_bytes=group.max_lag_bytes,
                                   before=group.start.sentinel, expected=group.start)
            checks.append(replicas_seen(now, group.expect_replicas))
    verdict = worst(c.status for c in checks)
    error = ""
    failed = [c for c in checks if c.status == Status.FAIL]
    if failed:
        where = f"before {upcoming}" if upcoming else "after the change of every node" if done else "at the start"
        changed = f"changed so far: {', '.join(done)}" if done else "no node was changed"
        error = (f"the group guard stopped the run {where}: {'; '.join(f'{c.name}: {c.observed}' for c in failed)}. "
                 f"{changed}. To do: {min(failed, key=_cause).fix}")
    server, _, version = next((n.version for n in (now or group.start or Topology("", "", ())).primaries()
                               if n.version), "").partition(" ")
    return StepSummary(GUARD, verdict, server=server, version=version, checks=tuple(checks), facts=facts,
                       error=error)


def replicas_seen(topology: Topology, expect: int) -> Check:
    """`replicas`: each primary has `expect` replicas (FAIL with fewer); not asked (-1), a WARN for a group found
    from a primary's INFO replication, which lists only the replicas connected now (Sentinel remembers every replica
    it has seen and CLUSTER NODES every node, so theirs are complete: PASS)."""
    counts = {p.address: len(topology.replicas_of(p.address)) for p in topology.primaries()}
    found = ", ".join(f"{a}: {n}" for a, n in sorted(counts.items()))
    if expect >= 0:
        short = {a: n for a, n in counts.items() if n < expect}
        if short:
            return Check("replicas", Status.FAIL, f"expected {expect} replica(s) per primary, found {found}",
                         "bring the missing replicas back (a replica that is down or disconnected is not seen from "
                         "its primary), or lower expect_replicas if the group is meant to be smaller")
        return Check("replicas", Status.PASS, f"every primary has at least the {expect} replica(s) expected ({found})")
    if topology.kind in ("sentinel", "cluster"):
        return Check("replicas", Status.PASS, f"replicas per primary as the {topology.kind} knows them: {found}")
    return Check("replicas", Status.WARN, f"replicas found from the primary's INFO replication: {found}; a replica "
                 "that is down or disconnected now is not listed there, so it would not be changed",
                 "pass -p expect_replicas N (replicas per primary) to have the run refuse a smaller group")


#: The guard's checks from the likeliest cause to its symptoms: the fix a failed guard names first is its cause's
#: (a failover also takes a node away and makes its lag unknown).
CAUSES = ("sentinel-view", "failover", "discovery", "links", "lag")


def _cause(c: Check) -> int:
    return CAUSES.index(c.name) if c.name in CAUSES else len(CAUSES)

