"""The whole group a target belongs to: its primary and replicas, its Sentinels, or every node of its Cluster.

Read-only: INFO, CONFIG GET, CLUSTER SHARDS/NODES and SENTINEL queries only. See
https://redis.io/docs/latest/operate/oss_and_stack/management/replication/,
https://redis.io/docs/latest/operate/oss_and_stack/management/sentinel/ and
https://redis.io/docs/latest/commands/cluster-shards/
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping
from urllib.parse import urlparse

import redis

from runbook.errors import PreconditionFailed, RunbookError
from runbook.model import Check, ConnectionSpec, Status
from runbook.server.configfile import read_config
from runbook.server.sentinel import (
    address,
    is_sentinel_url,
    parse_sentinel_url,
    sentinel_clients,
    unreachable,
)
from runbook.server.settings import compare
from runbook.server.slots import cluster_enabled
from runbook.server.target import Target, connect, identify, is_local, redact_url

__all__ = ["Node", "SentinelView", "Topology", "discover", "group_health", "is_sentinel_url", "parse_sentinel_url",
           "sentinel_monitored", "sentinel_view"]

log = logging.getLogger(__name__)

UNKNOWN = -1  # an offset or lag that could not be read


@dataclass(frozen=True)
class Node:
    """One data node of a group, as discovery read it."""

    address: str  # "host:port", as reachable from here
    role: str  # "primary" | "replica"
    primary: str  # the primary's address; "" for a primary
    shard: str  # the address of its shard's primary (its own for a primary)
    link: str  # replica: master_link_status ("up"/"down"); primary: "up"
    offset: int  # master_repl_offset (primary) / slave_repl_offset (replica); -1 when unknown
    lag_bytes: int  # its primary's offset minus this offset (0 for a primary); -1 when unknown
    aof_runtime: str  # CONFIG GET appendonly: "yes"/"no" ("?" when the node did not answer)
    aof_file: str  # appendonly in its config file ("no" when absent); "?" when not readable here
    config_file: str  # INFO server config_file ("" when started without one)
    local: bool  # the config file is readable here and the node runs on this host (persist-config can edit it)
    version: str = ""  # "redis 7.0.15" / "valkey 9.1.2"
    node_id: str = ""  # cluster node id
    slots: str = ""  # cluster: "0-5460" (ranges, comma-separated)
    error: str = ""  # why the node could not be read ("" when fine)

    @property
    def drift(self) -> bool:
        """AOF at runtime differs from the config file (both known)."""
        return "?" not in (self.aof_runtime, self.aof_file) and self.aof_runtime != self.aof_file

    def url(self, source_url: str) -> str:
        """This node as a target URL: the scheme of `source_url` (redis or rediss; rediss for rediss+sentinel) and
        its database; no password (each node is reached with the run's credentials)."""
        return _node_url(source_url, self.address)


@dataclass(frozen=True)
class SentinelView:
    """What the Sentinels say about one monitored group."""

    name: str  # the monitored name
    master: str  # "host:port" from SENTINEL GET-MASTER-ADDR-BY-NAME
    epoch: int  # SENTINEL MASTER name -> config-epoch
    flags: str  # SENTINEL MASTER name -> flags
    failover_in_progress: bool  # a Sentinel flags one, or the Sentinels disagree on the master
    sentinels: tuple[str, ...]  # every Sentinel: the ones asked, then the others they know (SENTINEL SENTINELS)
    quorum: int
    down: tuple[str, ...] = ()  # Sentinels that did not answer, or that the others flag s_down / disconnected


@dataclass(frozen=True)
class Topology:
    """A discovered group: its kind, the (redacted) target it was discovered from, its nodes, its Sentinel view."""

    kind: str  # "single" | "replication" | "sentinel" | "cluster"
    source: str
    nodes: tuple[Node, ...]
    sentinel: SentinelView | None = None

    def order(self) -> list[Node]:
        """The safe change order: shard by shard (by primary address), in each its replicas (by address), then its
        primary; so a failover mid-change promotes a node that already has AOF."""
        out: list[Node] = []
        for shard in sorted({n.shard for n in self.nodes}, key=_address_key):
            members = [n for n in self.nodes if n.shard == shard]
            out += sorted((n for n in members if n.role != "primary"), key=lambda n: _address_key(n.address))
            out += sorted((n for n in members if n.role == "primary"), key=lambda n: _address_key(n.address))
        return out

    def primaries(self) -> list[Node]:
        """The primaries, by address."""
        return sorted((n for n in self.nodes if n.role == "primary"), key=lambda n: _address_key(n.address))

    def replicas_of(self, primary: str) -> list[Node]:
        """The replicas whose primary is `primary` ("host:port"), by address."""
        return sorted((n for n in self.nodes if n.role == "replica" and n.primary == primary),
                      key=lambda n: _address_key(n.address))

    def node(self, address: str) -> Node:
        """The node at `address`; KeyError when the group has none there."""
        for n in self.nodes:
            if n.address == address:
                return n
        raise KeyError(address)

    def rows(self) -> list[dict[str, object]]:
        """One row per node, in change order: node, role, primary, link, lag_bytes, aof_runtime, aof_file, drift,
        config_file (and slots for a cluster; error when some node could not be read)."""
        errors = any(n.error for n in self.nodes)
        rows: list[dict[str, object]] = []
        for n in self.order():
            row: dict[str, object] = {"node": n.address, "role": n.role, "primary": n.primary, "link": n.link,
                                      "lag_bytes": n.lag_bytes, "aof_runtime": n.aof_runtime,
                                      "aof_file": n.aof_file, "drift": n.drift, "config_file": n.config_file}
            if self.kind == "cluster":
                row["slots"] = n.slots
            if errors:
                row["error"] = n.error
            rows.append(row)
        return rows

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "source": self.source, "nodes": [asdict(n) for n in self.nodes],
                "sentinel": asdict(self.sentinel) if self.sentinel else None}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Topology:
        view = data.get("sentinel")
        return cls(str(data["kind"]), str(data["source"]), tuple(Node(**n) for n in data["nodes"]),
                   SentinelView(**{**view, "sentinels": tuple(view["sentinels"]),
                                              "down": tuple(view.get("down", ()))}) if view else None)


# -- discovery -------------------------------------------------------------------------------------------------


def discover(spec: ConnectionSpec) -> Topology:
    """The group of `spec.target`: a data node (INFO replication: from a replica to its primary, then the
    primary's replicas; a cluster node: CLUSTER SHARDS, or CLUSTER NODES before 7.0) or a Sentinel URL (SENTINEL
    GET-MASTER-ADDR-BY-NAME, REPLICAS, SENTINELS). A node that cannot be read is on record with its `error`;
    TargetUnreachable (or PreconditionFailed) only when the source itself cannot be read."""
    source = redact_url(spec.target)
    if is_sentinel_url(spec.target):
        return _from_sentinels(spec, source)
    target = connect(spec)
    try:
        client = target.client
        identify(client)  # PreconditionFailed for a Sentinel given as redis://, naming what to target instead
        if cluster_enabled(client):
            return _from_cluster(spec, client, source)
        first = _probe_client(target, spec.target)
    finally:
        target.client.close()
    here = _source_address(spec.target)
    nodes = _replication_group(spec, here, first)
    kind = "replication" if len(nodes) > 1 else "single"
    return Topology(kind, source, tuple(nodes))


def sentinel_view(spec: ConnectionSpec) -> SentinelView:
    """What the Sentinels of `spec.target` (a Sentinel URL) say now: the master, its config epoch and flags,
    whether a failover runs, every Sentinel and the quorum. TargetUnreachable when none answers,
    PreconditionFailed when none monitors the name."""
    return _ask_sentinels(spec)[0]


def sentinel_monitored(client: redis.Redis) -> bool:
    """Whether a Sentinel watches this server: someone subscribes to `__sentinel__:hello` on it (PUBSUB NUMSUB;
    Sentinels subscribe on masters and replicas alike)."""
    reply = client.pubsub_numsub("__sentinel__:hello")
    return any(int(n) > 0 for _, n in reply)


@dataclass
class _Probe:
    """What one node says about itself (INFO server/replication, CONFIG GET appendonly, its config file)."""

    url: str
    replication: dict[str, Any] = field(default_factory=dict)
    aof_runtime: str = "?"
    aof_file: str = "?"
    config_file: str = ""
    local: bool = False
    version: str = ""
    error: str = ""

    @property
    def role(self) -> str:
        return "replica" if self.replication.get("role") == "slave" else "primary"

    @property
    def offset(self) -> int:
        key = "slave_repl_offset" if self.role == "replica" else "master_repl_offset"
        return int(self.replication.get(key, UNKNOWN))

    def replicas(self) -> list[tuple[str, dict[str, Any]]]:
        """The replicas its INFO replication lists: ("ip:port", {state, offset, lag, ...})."""
        return [(address(v["ip"], v["port"]), v) for k, v in self.replication.items()
                if k.startswith("slave") and k[5:].isdigit() and isinstance(v, dict) and "ip" in v]


def _probe(spec: ConnectionSpec, url: str) -> _Probe:
    """Read one node; its `error` says why when it cannot be read."""
    try:
        target = connect(spec.replace(target=url))
    except (RunbookError, redis.RedisError, OSError) as err:
        return _Probe(url, error=str(err))
    try:
        return _probe_client(target, url)
    finally:
        target.client.close()


def _probe_client(target: Target, url: str) -> _Probe:
    probe = _Probe(url)
    try:
        ident = identify(target.client)
        probe.version = f"{ident.server} {ident.version}"
        probe.config_file = ident.config_file
        probe.replication = dict(target.client.info("replication"))
    except (RunbookError, redis.RedisError, OSError) as err:
        probe.error = str(err)
        return probe
    try:
        probe.aof_runtime = str(target.config_get(["appendonly"]).get("appendonly", "?")).lower()
    except (RunbookError, redis.RedisError) as err:
        probe.error = f"CONFIG GET appendonly: {err}"
    host = urlparse(url).hostname or ""
    if probe.config_file and os.access(probe.config_file, os.R_OK) and (target.local or _runs_here(host)):
        try:
            config = read_config(probe.config_file)
        except PreconditionFailed as err:
            log.info("%s: config file not read: %s", url, err)
        else:
            runtime = {"appendonly": probe.aof_runtime if probe.aof_runtime != "?" else "no"}
            probe.aof_file = next((d.file for d in compare(runtime, config, ident.major)
                                   if d.setting == "appendonly" and d.file), "?")
            probe.local = True
    return probe


def _replication_group(spec: ConnectionSpec, here: str, first: _Probe) -> list[Node]:
    """The primary of `first` (itself, or the one it replicates from) and every replica below it."""
    probes: dict[str, _Probe] = {}
    masters: dict[str, str] = {}  # replica -> the node it replicates from
    if first.role == "replica":
        primary = address(first.replication.get("master_host", "?"), first.replication.get("master_port", "?"))
        probes[primary] = _probe(spec, _node_url(spec.target, primary))
        # The primary names the source by the address it sees (127.0.0.1 for a source given as localhost).
        here = next((a for a, _ in probes[primary].replicas() if _same_node(a, here)), here)
        masters[here] = primary
    else:
        primary = here
    probes[here] = first
    todo, seen = [primary], {primary}
    while todo:  # breadth first, so a replica of a replica is found too
        at = todo.pop(0)
        for addr, _ in probes[at].replicas():
            masters.setdefault(addr, at)
            if addr not in probes:
                probes[addr] = _probe(spec, _node_url(spec.target, addr))
            if addr not in seen:
                seen.add(addr)
                todo.append(addr)
    return [_node_of(addr, probes, masters, primary) for addr in probes]


def _node_of(addr: str, probes: Mapping[str, _Probe], masters: Mapping[str, str], shard: str,
             *, node_id: str = "", slots: str = "") -> Node:
    """A Node from its probe and the offset of the node it replicates from."""
    p = probes[addr]
    upstream = masters.get(addr, "")
    role = ("replica" if upstream else "primary") if p.error or not p.replication else p.role
    if role == "primary":
        link, lag = "up", 0
        if p.error:
            link = "?"
    else:
        link = str(p.replication.get("master_link_status", "?")) if not p.error else "?"
        above = probes.get(upstream)
        lag = UNKNOWN
        if above is not None and not above.error and not p.error and p.offset >= 0:
            lag = max(0, int(above.replication.get("master_repl_offset", 0)) - p.offset)
    offset = p.offset if not p.error else UNKNOWN
    return Node(address=addr, role=role, primary=upstream if role == "replica" else "", shard=shard, link=link,
                offset=offset, lag_bytes=lag, aof_runtime=p.aof_runtime, aof_file=p.aof_file,
                config_file=p.config_file, local=p.local, version=p.version, node_id=node_id, slots=slots,
                error=p.error)


def _from_sentinels(spec: ConnectionSpec, source: str) -> Topology:
    view, replicas = _ask_sentinels(spec)
    probes = {view.master: _probe(spec, _node_url(spec.target, view.master))}
    masters: dict[str, str] = {}
    # The replicas the Sentinels know (also those down) and those the master lists.
    for addr in replicas + [a for a, _ in probes[view.master].replicas()]:
        if addr not in probes:
            masters[addr] = view.master
            probes[addr] = _probe(spec, _node_url(spec.target, addr))
    nodes = [_node_of(addr, probes, masters, view.master) for addr in probes]
    return Topology("sentinel", source, tuple(nodes), view)


def _ask_sentinels(spec: ConnectionSpec) -> tuple[SentinelView, list[str]]:
    """The Sentinel view, and the replicas the first answering Sentinel knows (SENTINEL REPLICAS)."""
    url = spec.target
    _, name, _, _ = parse_sentinel_url(url)
    errors: list[str] = []
    answers: list[tuple[str, dict[str, Any], dict[str, Any]]] = []  # (where, GET-MASTER-ADDR, SENTINEL MASTER)
    replicas: list[str] = []
    known: list[str] = []
    asked: list[str] = []
    flagged: list[str] = []  # Sentinels the answering ones flag as down
    silent: list[str] = []  # Sentinels of the URL that did not answer
    for where, client in sentinel_clients(spec, url):
        asked.append(where)
        try:
            reply = client.sentinel_get_master_addr_by_name(name)
            if not reply:
                errors.append(f"{where}: monitors no {name!r}")
                continue
            state = client.sentinel_master(name)
            if not answers:
                replicas = [address(r["ip"], r["port"]) for r in client.sentinel_slaves(name)]
            others = client.sentinel_sentinels(name)
            known += [address(s["ip"], s["port"]) for s in others]
            flagged += [address(s["ip"], s["port"]) for s in others
                        if {"s_down", "o_down"} & set(str(s.get("flags", "")).split(","))]  # not "disconnected": a
            # Sentinel just (re)connecting reads so for a moment
            answers.append((where, {"master": address(str(reply[0]), int(reply[1]))}, state))
        except redis.RedisError as err:
            errors.append(f"{where}: {err}")
            silent.append(where)
        finally:
            client.close()
    if not answers:
        if any("monitors no" in e for e in errors):
            raise PreconditionFailed(f"{url}: no Sentinel monitors {name!r} ({'; '.join(errors)}). Use the name "
                                     "they monitor (SENTINEL MASTERS on a Sentinel lists them) as the URL's path.")
        raise unreachable(url, errors, spec)
    votes = Counter(a["master"] for _, a, _ in answers)
    master = votes.most_common(1)[0][0]
    _, _, state = next(x for x in answers if x[1]["master"] == master)
    flags = str(state.get("flags", ""))
    failing = len(votes) > 1 or any("failover_in_progress" in str(s.get("flags", "")) for _, _, s in answers)
    if len(votes) > 1:
        log.warning("%s: the Sentinels disagree on the master: %s", url, dict(votes))
    sentinels = tuple(dict.fromkeys(asked + sorted(known, key=_address_key)))
    view = SentinelView(name=name, master=master, epoch=int(state.get("config-epoch", 0)), flags=flags,
                        failover_in_progress=failing, sentinels=sentinels, quorum=int(state.get("quorum", 0)),
                        down=tuple(dict.fromkeys(silent + sorted(flagged, key=_address_key))))
    return view, replicas


def _from_cluster(spec: ConnectionSpec, client: redis.Redis, source: str) -> Topology:
    """Every node of the cluster `client` is part of, shard by shard (CLUSTER SHARDS, else CLUSTER NODES)."""
    tls = spec.target.startswith("rediss")
    try:
        shards = _shards(client.execute_command("CLUSTER", "SHARDS"), tls)
    except redis.ResponseError:  # before 7.0
        shards = _shards_from_nodes(str(client.execute_command("CLUSTER", "NODES")), urlparse(spec.target).hostname)
    members = [(addr, node_id, primary) for primary, _, nodes in shards for addr, node_id, _ in nodes]
    slots_of = {primary: slots for primary, slots, _ in shards}
    probes = {addr: _probe(spec, _node_url(spec.target, addr)) for addr, _, _ in members}
    masters: dict[str, str] = {}
    for addr, _, primary in members:
        p = probes[addr]
        if p.replication:  # the node's own word wins over the source's gossip, which may lag behind
            if p.role == "replica":
                masters[addr] = address(p.replication.get("master_host", "?"), p.replication.get("master_port", "?"))
        elif addr != primary:
            masters[addr] = primary
    nodes = [_node_of(addr, probes, masters, masters.get(addr, addr), node_id=node_id,
                      slots="" if addr in masters else slots_of.get(addr, ""))
             for addr, node_id, _ in members]
    return Topology("cluster", source, tuple(nodes))


_Shard = tuple[str, str, list[tuple[str, str, str]]]  # primary address, slots, [(address, node id, role)]


def _shards(reply: Any, tls: bool) -> list[_Shard]:
    """CLUSTER SHARDS (as redis-py parses it, or the raw flat lists) as shards."""
    out: list[_Shard] = []
    for shard in reply:
        shard = _as_dict(shard)
        members = []
        for n in shard.get("nodes", []):
            n = _as_dict(n)
            host = str(n.get("endpoint") or "")
            if host in ("", "?"):
                host = str(n.get("ip") or "")
            port = n.get("tls-port") if tls and n.get("tls-port") else n.get("port")
            members.append((address(host, int(port)), str(n.get("id", "")), str(n.get("role", ""))))
        bounds = [int(x) for x in shard.get("slots", [])]
        slots = _ranges(list(zip(bounds[::2], bounds[1::2])))
        primary = next((a for a, _, r in members if r == "master"), members[0][0] if members else "")
        if members:
            out.append((primary, slots, members))
    return out


def _shards_from_nodes(text: str, source_host: str | None) -> list[_Shard]:
    """CLUSTER NODES lines as shards: `id ip:port@cport[,hostname] flags master-id ... link-state slots...`."""
    by_id: dict[str, tuple[str, str, list[str]]] = {}
    for line in text.strip().splitlines():
        parts = line.split()
        if len(parts) < 8:
            continue
        host_port = parts[1].split("@", 1)[0]
        host, _, port = host_port.rpartition(":")
        addr = address(host or source_host or "127.0.0.1", port)
        role = "master" if "master" in parts[2].split(",") else "replica"
        by_id[parts[0]] = (addr, role if role == "master" else parts[3], parts[8:])
    out: list[_Shard] = []
    for node_id, (addr, role, slot_words) in by_id.items():
        if role != "master":
            continue
        bounds = []
        for w in slot_words:
            if w.startswith("["):
                continue  # a slot being imported or migrated
            lo, _, hi = w.partition("-")
            bounds.append((int(lo), int(hi or lo)))
        members = [(addr, node_id, "master")]
        members += [(a, i, "replica") for i, (a, r, _) in by_id.items() if r == node_id]
        out.append((addr, _ranges(bounds), members))
    return out


def _as_dict(value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        return {str(k): v for k, v in value.items()}
    items = list(value)
    return {str(k): v for k, v in zip(items[::2], items[1::2])}


def _ranges(bounds: list[tuple[int, int]]) -> str:
    """[(0, 5460), (7000, 7000)] as "0-5460,7000"."""
    return ",".join(f"{lo}-{hi}" if hi != lo else str(lo) for lo, hi in sorted(bounds))


# -- the group guard -------------------------------------------------------------------------------------------


def group_health(topology_now: Topology, *, max_lag_bytes: int, before: SentinelView | None,
                 expected: Topology | None = None) -> list[Check]:
    """The group guard before and after each node's change, as Checks:

    - "links": every replica's link up, every node readable (and, given `expected`, every node of it still there);
    - "lag": every replica within `max_lag_bytes` of its primary;
    - "failover": none in progress (Sentinel), and, given `expected`, the same primaries;
    - "sentinel-view": the Sentinels' master and config epoch as `before` (PASS when there is no `before`).
    """
    nodes = topology_now.nodes
    bad = [f"{n.address} not readable ({n.error})" for n in nodes if n.error]
    bad += [f"{n.address} link {n.link}" for n in nodes if n.role == "replica" and not n.error and n.link != "up"]
    if expected is not None:
        now = {n.address for n in nodes}
        bad += [f"{n.address} ({n.role} at the start) is gone from the group" for n in expected.nodes
                if n.address not in now]
    replicas = [n for n in nodes if n.role == "replica"]
    links = (Check("links", Status.FAIL, "; ".join(bad),
                   "bring each node back and its replication link up (INFO replication on the replica: "
                   "master_link_status:up) before the change goes on to the next node")
             if bad else Check("links", Status.PASS, f"{len(replicas)} replica link(s) up, {len(nodes)} node(s) "
                                                      "readable"))
    late = [f"{n.address} {'lag unknown' if n.lag_bytes < 0 else f'{n.lag_bytes} bytes behind'}"
            for n in replicas if n.lag_bytes < 0 or n.lag_bytes > max_lag_bytes]
    worst = max((n.lag_bytes for n in replicas), default=0)
    lag = (Check("lag", Status.FAIL, f"{'; '.join(late)} (limit {max_lag_bytes} bytes)",
                 "wait until the replicas catch up (INFO replication: slave_repl_offset close to the primary's "
                 "master_repl_offset), or lower the write load, then run again")
           if late else Check("lag", Status.PASS, f"largest replica lag {worst} bytes (limit {max_lag_bytes})"))
    checks = [links, lag, _failover_check(topology_now, expected), _view_check(topology_now.sentinel, before)]
    if topology_now.sentinel is not None:
        checks.append(_sentinels_check(topology_now.sentinel))
    return checks


def _sentinels_check(view: SentinelView) -> Check:
    """"sentinels": WARN when a Sentinel is down (it did not answer, or the others flag it): the group still fails
    over with `quorum` Sentinels up, with less margin; the change itself provokes no failover."""
    up = [s for s in view.sentinels if s not in view.down]
    if not view.down:
        return Check("sentinels", Status.PASS, f"{len(up)} Sentinel(s) up (quorum {view.quorum})")
    return Check("sentinels", Status.WARN, f"Sentinel(s) down: {', '.join(view.down)}; {len(up)} of "
                 f"{len(view.sentinels)} up (quorum {view.quorum})",
                 "bring the Sentinels back (their logs; SENTINEL SENTINELS name on one that answers): with fewer "
                 "than the quorum up, a failure of the primary is not failed over")


def _failover_check(now: Topology, expected: Topology | None) -> Check:
    fix = ("let the failover finish, check the new roles (SENTINEL GET-MASTER-ADDR-BY-NAME, INFO replication), "
           "then discover the group again and start over")
    if now.sentinel is not None and now.sentinel.failover_in_progress:
        return Check("failover", Status.FAIL, f"a failover of {now.sentinel.name} is in progress (flags "
                                              f"{now.sentinel.flags!r}, or the Sentinels disagree on the master)", fix)
    if expected is not None:
        was = [n.address for n in expected.primaries()]
        is_ = [n.address for n in now.primaries()]
        if was != is_:
            return Check("failover", Status.FAIL, f"the primaries changed: {', '.join(was)} at the start, now "
                                                  f"{', '.join(is_) or 'none'}", fix)
    return Check("failover", Status.PASS, "no failover in progress" if now.sentinel is not None else
                 "no failover seen (the group was not discovered through Sentinels)")


def _view_check(now: SentinelView | None, before: SentinelView | None) -> Check:
    if before is None:
        return Check("sentinel-view", Status.PASS, "no Sentinel view recorded before the change to compare with")
    if now is None:
        return Check("sentinel-view", Status.FAIL, f"the Sentinels' view of {before.name} could not be read now "
                                                   f"(before: master {before.master}, epoch {before.epoch})",
                     "check that the Sentinels answer (SENTINEL MASTER name), then run again")
    if (now.master, now.epoch) != (before.master, before.epoch):
        return Check("sentinel-view", Status.FAIL,
                     f"the Sentinels' view of {before.name} changed: master {before.master} epoch {before.epoch} "
                     f"before, master {now.master} epoch {now.epoch} now",
                     "a failover happened during the change: stop, find out why (the Sentinels' logs), "
                     "discover the group again and start over from its new primary")
    return Check("sentinel-view", Status.PASS, f"master {now.master}, epoch {now.epoch}, as before the change")


# -- addresses -------------------------------------------------------------------------------------------------


def _scheme_and_db(source_url: str) -> tuple[str, int]:
    """redis or rediss, and the database, of a target URL (a Sentinel URL's too)."""
    if is_sentinel_url(source_url):
        _, _, db, tls = parse_sentinel_url(source_url)
        return ("rediss" if tls else "redis"), db
    p = urlparse(source_url)
    path = p.path.strip("/")
    return ("rediss" if p.scheme == "rediss" else "redis"), int(path) if path.isdigit() else 0


def _node_url(source_url: str, addr: str) -> str:
    """The node at `addr` ("host:port", or a unix socket's path) as a URL with the source's scheme and database."""
    scheme, db = _scheme_and_db(source_url)
    return f"unix://{addr}?db={db}" if addr.startswith("/") else f"{scheme}://{addr}/{db}"


def _source_address(url: str) -> str:
    """The source's address: host:port from its URL (a unix socket: its path)."""
    p = urlparse(url)
    return p.path if p.scheme == "unix" else address(p.hostname or "127.0.0.1", p.port or 6379)


def _same_node(a: str, b: str) -> bool:
    """Two addresses of one node: equal, or the same port on two loopback names."""
    (ha, _, pa), (hb, _, pb) = a.rpartition(":"), b.rpartition(":")
    return pa == pb and (ha == hb or (_runs_here(ha.strip("[]")) and _runs_here(hb.strip("[]"))))


def _address_key(addr: str) -> tuple[int, str, int]:
    """Sort key of "host:port": IP addresses in numeric order (10.0.0.9 before 10.0.0.10), then names; then port."""
    host, _, port = addr.rpartition(":")
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
        rank, name = ip.version, f"{int(ip):040d}"
    except ValueError:
        rank, name = 9, host
    return rank, name, int(port) if port.isdigit() else 0


def _runs_here(host: str) -> bool:
    """Whether `host` is loopback or one of this machine's names or addresses."""
    if is_local(f"redis://{address(host, 1)}"):
        return True
    try:
        name = socket.gethostname()
        return host in {name, socket.getfqdn(), *socket.gethostbyname_ex(name)[2]}
    except OSError:
        return False
