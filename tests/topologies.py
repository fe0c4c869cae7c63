"""Real replicated topologies for the tests: a primary with replicas, Sentinels over it, a Cluster.

Every node is a real server on a free loopback port, in its own directory with its own config file (AOF off at
runtime and in the file, as the runbook finds production). Each object is a context manager; `stop()` kills every
process it started, also when starting failed halfway.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Callable, Iterable, TypeVar

import redis

from runbook.sandbox.throwaway import SEED_CONFIG, Sandbox
from runbook.server.poll import Deadline

T = TypeVar("T")

#: Lines every data node's redis.conf gets after SEED_CONFIG: a replica's full sync starts at once (the default
#: waits 5 s for more replicas to join the same diskless transfer).
NODE_CONFIG = "repl-diskless-sync-delay 0\n"

#: Seconds a topology may take to come up (replication links, Sentinel gossip, cluster_state:ok).
READY_S = 30.0


@dataclass
class NodeProc:
    """One server process of a topology: its Sandbox (port, dir, config file, process)."""

    sandbox: Sandbox

    @property
    def port(self) -> int:
        return self.sandbox.port

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return self.sandbox.url

    @property
    def conf(self) -> Path:
        assert self.sandbox.config_path is not None
        return self.sandbox.config_path

    @property
    def dir(self) -> Path:
        assert self.sandbox.root is not None
        return self.sandbox.root

    @property
    def proc(self) -> subprocess.Popen[bytes] | None:
        return self.sandbox._proc

    def client(self, **kwargs: object) -> redis.Redis:
        return self.sandbox.client(socket_timeout=10, **kwargs)

    def kill(self) -> None:
        """kill -9 the process (the node's files stay; `start()` brings it back on the same port)."""
        self.sandbox.kill()

    def start(self) -> NodeProc:
        self.sandbox.start()
        return self


class _Processes:
    """Processes started together and killed together."""

    nodes: list[NodeProc]

    def stop(self) -> None:
        """Kill every process (SIGKILL: fast, and nothing here needs a clean shutdown)."""
        for node in self.nodes:
            node.sandbox.kill()

    def __enter__(self: T) -> T:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


@dataclass
class Group(_Processes):
    """A replication group (`primary` and its replicas) or a Cluster (`primary` is its first primary)."""

    nodes: list[NodeProc]
    primary: NodeProc
    cluster: bool = False

    @property
    def replicas(self) -> list[NodeProc]:
        """Replicas of `primary` (replication group) or every replica (cluster), as started."""
        return [n for n in self.nodes if n is not self.primary and n not in self.primaries]

    @property
    def primaries(self) -> list[NodeProc]:
        """The primaries: the one of a replication group, every slot owner of a cluster (as last read)."""
        if not self.cluster:
            return [self.primary]
        return [n for n in self.nodes if _role(n.client()) == "master"]

    def node(self, port: int) -> NodeProc:
        return next(n for n in self.nodes if n.port == port)


@dataclass
class Sentinels(_Processes):
    """Sentinels monitoring one group under `name`."""

    nodes: list[NodeProc]
    name: str
    group: Group = field(repr=False)

    @property
    def urls(self) -> list[str]:
        return [f"redis://127.0.0.1:{n.port}" for n in self.nodes]

    @property
    def target(self) -> str:
        """The group as a Sentinel target: redis+sentinel://127.0.0.1:p1,127.0.0.1:p2,.../name"""
        return f"redis+sentinel://{','.join(n.address for n in self.nodes)}/{self.name}"

    def master_address(self) -> str:
        """What the first Sentinel answers to SENTINEL GET-MASTER-ADDR-BY-NAME now."""
        host, port = self.nodes[0].client().sentinel_get_master_addr_by_name(self.name)
        return f"{host}:{port}"


def _conf_lines(conf: dict[str, object]) -> str:
    """`cluster_node_timeout=2000` as the config line `cluster-node-timeout 2000`."""
    return "".join(f"{k.replace('_', '-')} {v}\n" for k, v in conf.items())


def _node(binary: Path, root: Path, name: str, config: str, *, conf_name: str = "redis.conf",
          extra_args: tuple[str, ...] = ()) -> NodeProc:
    sandbox = Sandbox(config=config, binary=binary, root=root / name, extra_args=extra_args)
    if conf_name != "redis.conf":
        sandbox.config_path = sandbox.root / conf_name  # type: ignore[operator]
    return NodeProc(sandbox)


def _start_all(nodes: Iterable[NodeProc], owner: _Processes) -> None:
    """Start `nodes` one after the other from this thread; on any failure kill what `owner` holds and raise.

    Not from a thread pool: a sandbox gets SIGKILL when the thread that started it exits (PR_SET_PDEATHSIG is
    per thread), and a start is ~20 ms; the slow part, replication and gossip, runs in parallel in the servers.
    """
    try:
        for node in nodes:
            node.start()
    except BaseException:
        owner.stop()
        raise


def _wait(what: str, ready: Callable[[], tuple[bool, object]], owner: _Processes, timeout_s: float = READY_S) -> None:
    """Poll `ready()` (True, or False with what it saw) until True; kill `owner` and raise on the deadline."""
    deadline = Deadline(timeout_s, what)
    while True:
        try:
            ok, seen = ready()
        except redis.RedisError as err:
            ok, seen = False, err
        if ok:
            return
        deadline.saw(seen)
        if deadline.expired:
            owner.stop()
            raise deadline.missed(what)
        deadline.sleep(0.05)


def _role(client: redis.Redis) -> str:
    return str(client.info("replication")["role"])


def _replicas_up(client: redis.Redis) -> bool:
    info = client.info("replication")
    return info["role"] == "slave" and info.get("master_link_status") == "up"


def start_replication_group(binary: Path, root: Path, replicas: int = 2, **conf: object) -> Group:
    """A primary and `replicas` replicas (`replicaof`), each in its own dir under `root` with its own redis.conf
    (SEED_CONFIG plus `conf`, e.g. repl_diskless_sync="no"); returned once every replica's link is up."""
    extra = NODE_CONFIG + _conf_lines(conf)
    primary = _node(binary, root, "node-0", SEED_CONFIG + extra)
    group = Group([primary], primary)
    _start_all([primary], group)
    config = SEED_CONFIG + extra + f"replicaof 127.0.0.1 {primary.port}\n"
    group.nodes += [_node(binary, root, f"node-{i}", config) for i in range(1, replicas + 1)]
    _start_all(group.nodes[1:], group)

    def ready() -> tuple[bool, object]:
        info = primary.client().info("replication")
        online = [v for k, v in info.items() if k.startswith("slave") and k[5:].isdigit()
                  and isinstance(v, dict) and v.get("state") == "online"]
        up = all(_replicas_up(n.client()) for n in group.nodes[1:])
        return len(online) == replicas and up, f"{len(online)} replica(s) online, links up: {up}"

    _wait(f"{replicas} replicas of 127.0.0.1:{primary.port} in sync", ready, group)
    return group


def start_sentinels(binary: Path, root: Path, group: Group, count: int = 3, name: str = "mymaster",
                    down_after_ms: int = 1000, failover_timeout_ms: int = 3000) -> Sentinels:
    """`count` Sentinels (`binary sentinel.conf --sentinel`, each its own dir and sentinel.conf) monitoring
    `group.primary` as `name` with quorum count//2+1; returned once every Sentinel sees the others and the
    replicas."""
    quorum = count // 2 + 1
    config = (f"sentinel monitor {name} 127.0.0.1 {group.primary.port} {quorum}\n"
              f"sentinel down-after-milliseconds {name} {down_after_ms}\n"
              f"sentinel failover-timeout {name} {failover_timeout_ms}\n"
              f"sentinel parallel-syncs {name} 1\n")
    sentinels = Sentinels([_node(binary, root, f"sentinel-{i}", config, conf_name="sentinel.conf",
                                 extra_args=("--sentinel",)) for i in range(count)], name, group)
    _start_all(sentinels.nodes, sentinels)
    want = {n.address for n in group.nodes if n is not group.primary}

    def ready() -> tuple[bool, object]:
        seen = []
        for s in sentinels.nodes:
            c = s.client()
            others = {f"{x['ip']}:{x['port']}" for x in c.sentinel_sentinels(name)}
            reps = {f"{x['ip']}:{x['port']}" for x in c.sentinel_slaves(name)
                    if not x.get("is_sdown") and not x.get("is_disconnected")}
            seen.append((s.port, len(others), sorted(reps)))
        ok = all(n == count - 1 and set(r) == want for _, n, r in seen)
        return ok, f"(sentinel port, other sentinels, replicas): {seen}"

    _wait(f"{count} Sentinels seeing each other and {len(want)} replicas", ready, sentinels)
    return sentinels


def start_cluster(binary: Path, root: Path, primaries: int = 3, replicas_each: int = 1, *,
                  use_redis_cli: bool | None = None) -> Group:
    """A Cluster of `primaries` primaries with `replicas_each` replicas each, every node its own dir and redis.conf
    (`cluster-enabled yes`), joined by `redis-cli --cluster create` when redis-cli is on PATH (or `use_redis_cli`),
    else by CLUSTER ADDSLOTSRANGE / MEET / REPLICATE; returned once every node says cluster_state:ok and every
    replica's link is up. `.primary` is the node serving slot 0."""
    config = SEED_CONFIG + NODE_CONFIG + _conf_lines({"cluster_enabled": "yes", "cluster_config_file": "nodes.conf",
                                        "cluster_node_timeout": 2000})
    total = primaries * (1 + replicas_each)
    nodes = [_node(binary, root, f"node-{i}", config) for i in range(total)]
    group = Group(nodes, nodes[0], cluster=True)
    _start_all(nodes, group)
    cli = shutil.which("redis-cli") if use_redis_cli is None or use_redis_cli else None
    try:
        if cli:
            subprocess.run([cli, "--cluster", "create", *(n.address for n in nodes),
                            "--cluster-replicas", str(replicas_each), "--cluster-yes"],
                           check=True, capture_output=True, text=True, timeout=60)
        else:
            _join_by_commands(nodes, primaries, replicas_each, group)
    except subprocess.CalledProcessError as err:
        group.stop()
        raise RuntimeError(f"redis-cli --cluster create failed: {err.stdout}\n{err.stderr}") from err
    except BaseException:
        group.stop()
        raise

    def ready() -> tuple[bool, object]:
        states = [n.client().cluster("INFO").get("cluster_state") for n in nodes]
        roles = [_role(n.client()) for n in nodes]
        links = all(_replicas_up(n.client()) for n, r in zip(nodes, roles) if r == "slave")
        views = [_masters_seen(n.client()) for n in nodes]  # gossip: every node must know every role
        ok = (states == ["ok"] * total and roles.count("master") == primaries and links
              and views == [primaries] * total)
        return ok, f"cluster_state {states}, roles {roles}, replica links up: {links}, masters seen: {views}"

    _wait(f"cluster of {total} nodes ok", ready, group)
    slot_0 = next(r for r in nodes[0].client().execute_command("CLUSTER", "SLOTS") if int(r[0]) == 0)
    group.primary = group.node(int(slot_0[2][1]))
    return group


def _masters_seen(client: redis.Redis) -> int:
    """How many masters this node's CLUSTER NODES lists."""
    lines = str(client.execute_command("CLUSTER", "NODES")).strip().splitlines()
    return sum(1 for line in lines if "master" in line.split()[2].split(","))


def _join_by_commands(nodes: list[NodeProc], primaries: int, replicas_each: int, group: Group) -> None:
    """What `redis-cli --cluster create` does: slots split evenly over the first `primaries`, every node MEETs the
    first, then each replica REPLICATEs its primary once it knows it."""
    slots = 16384
    for i, node in enumerate(nodes[:primaries]):
        lo, hi = i * slots // primaries, (i + 1) * slots // primaries - 1
        try:
            node.client().execute_command("CLUSTER", "ADDSLOTSRANGE", lo, hi)
        except redis.ResponseError:  # before 7.0
            node.client().execute_command("CLUSTER", "ADDSLOTS", *range(lo, hi + 1))
    for node in nodes[1:]:
        node.client().execute_command("CLUSTER", "MEET", "127.0.0.1", nodes[0].port)
    ids = {n.port: str(n.client().execute_command("CLUSTER", "MYID")) for n in nodes}

    def known() -> tuple[bool, object]:
        counts = [len(str(n.client().execute_command("CLUSTER", "NODES")).strip().splitlines()) for n in nodes]
        return all(c == len(nodes) for c in counts), f"nodes known per node: {counts}"

    _wait(f"{len(nodes)} cluster nodes meeting", known, group)
    for j, replica in enumerate(nodes[primaries:]):
        primary = nodes[j % primaries]
        replica.client().execute_command("CLUSTER", "REPLICATE", ids[primary.port])
    del replicas_each  # the count follows from len(nodes) and primaries
