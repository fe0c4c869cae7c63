"""Topology discovery (runbook.server.topology) on real groups: a primary with two replicas, the same under three
Sentinels, a Cluster of three primaries with a replica each; for Redis 7 and Valkey 9. Plus the Sentinel URL
and the group guard without a server."""

from __future__ import annotations

import json
import logging
from typing import Iterator

import pytest
from conftest import binary_or_skip
from topologies import Group, Sentinels, start_cluster, start_replication_group, start_sentinels

from runbook.errors import ParameterError, PreconditionFailed, TargetUnreachable
from runbook.model import ConnectionSpec, Status
from runbook.sandbox.throwaway import free_port
from runbook.server.poll import Deadline
from runbook.server.target import check_target_parameter, connect
from runbook.server.topology import (
    Node,
    SentinelView,
    Topology,
    _shards,
    _shards_from_nodes,
    discover,
    group_health,
    parse_sentinel_url,
    sentinel_monitored,
    sentinel_view,
)

SERVERS = ("redis-7", "valkey-9")


def spec(target: str, **kw: object) -> ConnectionSpec:
    return ConnectionSpec(target=target, password_env="", **kw)  # type: ignore[arg-type]


def by_address(topology: Topology) -> dict[str, Node]:
    return {n.address: n for n in topology.nodes}


def wait_until(what: str, ready, timeout_s: float = 20.0) -> None:
    deadline = Deadline(timeout_s, what)
    while not ready():
        if deadline.expired:
            raise deadline.missed(what)
        deadline.sleep(0.05)


# -- without a server ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("url", "sentinels", "service", "db", "tls"), [
    ("redis+sentinel://h1:26379/mymaster", [("h1", 26379)], "mymaster", 0, False),
    ("redis+sentinel://h1:26379,h2:26380,10.0.0.3:26381/cache", [("h1", 26379), ("h2", 26380), ("10.0.0.3", 26381)],
     "cache", 0, False),
    ("redis+sentinel://h1/mymaster/3", [("h1", 26379)], "mymaster", 3, False),
    ("rediss+sentinel://[::1]:26379,h2/mymaster", [("::1", 26379), ("h2", 26379)], "mymaster", 0, True),
    ("REDIS+SENTINEL://h1:1/m", [("h1", 1)], "m", 0, False),
])
def test_parse_sentinel_url(url, sentinels, service, db, tls):
    assert parse_sentinel_url(url) == (sentinels, service, db, tls)
    assert check_target_parameter(url) is None


@pytest.mark.parametrize(("url", "match"), [
    ("redis+sentinel://h1:26379", "names no service"),
    ("redis+sentinel://h1:26379,h2:26379/", "names no service"),
    ("redis+sentinel:///mymaster", "names no Sentinel"),
    ("redis+sentinel://:hunter2@h1:26379/mymaster", "credentials"),
    ("redis+sentinel://alice:hunter2@h1:26379,h2/mymaster", "credentials"),
    ("redis+sentinel://h1:26379/mymaster?password=hunter2", "credentials"),
    ("redis+sentinel://h1:0/mymaster", "from 1 to 65535"),
    ("redis+sentinel://h1:26379,h2:70000/mymaster", "from 1 to 65535"),
    ("redis+sentinel://h1:abc/mymaster", "from 1 to 65535"),
    ("redis+sentinel://h1:26379,,h2/mymaster", "is not host:port"),
    ("redis+sentinel://h1/mymaster/x", "database number"),
    ("redis+sentinel://h1/mymaster/0/1", "database number"),
    ("redis+sentinel://h1/mymaster?db=1", "no \\?options"),
])
def test_sentinel_url_refused(url, match):
    for check in (parse_sentinel_url, check_target_parameter):
        with pytest.raises(ParameterError, match=match) as exc:
            check(url)
        assert "hunter2" not in str(exc.value)


def test_other_schemes_still_refused():
    with pytest.raises(ParameterError, match="not a redis://, rediss://, unix:// or redis\\+sentinel://"):
        check_target_parameter("redis+cluster://h1:6379")


def _node(address: str, role: str, primary: str = "", **kw: object) -> Node:
    fields = {"link": "up", "offset": 100, "lag_bytes": 0, "aof_runtime": "no", "aof_file": "no",
              "config_file": f"/etc/{address}.conf", "local": True}
    fields.update(kw)
    return Node(address, role, primary, primary or address, **fields)  # type: ignore[arg-type]


VIEW = SentinelView("mymaster", "10.0.0.1:6379", 3, "master", False, ("10.0.0.9:26379",), 2)
GROUP = Topology("sentinel", "redis+sentinel://10.0.0.9:26379/mymaster", (
    _node("10.0.0.1:6379", "primary"),
    _node("10.0.0.3:6379", "replica", "10.0.0.1:6379"),
    _node("10.0.0.2:6379", "replica", "10.0.0.1:6379", aof_runtime="yes"),
), VIEW)


def test_order_rows_and_json_without_a_server():
    cluster = Topology("cluster", "redis://10.0.0.5:7000/0", (
        _node("10.0.0.5:7000", "primary", slots="5461-10922"),
        _node("10.0.0.4:7001", "replica", "10.0.0.5:7000"),
        _node("10.0.0.10:7000", "primary", slots="10923-16383"),
        _node("10.0.0.4:7000", "primary", slots="0-5460"),
        _node("10.0.0.5:7001", "replica", "10.0.0.4:7000"),
    ))
    assert [n.address for n in cluster.order()] == [
        "10.0.0.5:7001", "10.0.0.4:7000",  # shard of 10.0.0.4:7000
        "10.0.0.4:7001", "10.0.0.5:7000",  # shard of 10.0.0.5:7000
        "10.0.0.10:7000",  # addresses in numeric order, not as text
    ]
    assert [n.address for n in cluster.primaries()] == ["10.0.0.4:7000", "10.0.0.5:7000", "10.0.0.10:7000"]
    assert [n.address for n in GROUP.replicas_of("10.0.0.1:6379")] == ["10.0.0.2:6379", "10.0.0.3:6379"]
    assert [r["slots"] for r in cluster.rows()][-1] == "10923-16383"
    rows = GROUP.rows()
    assert [r["node"] for r in rows] == ["10.0.0.2:6379", "10.0.0.3:6379", "10.0.0.1:6379"]
    assert [r["drift"] for r in rows] == [True, False, False]
    assert "slots" not in rows[0] and "error" not in rows[0]
    assert set(rows[0]) == {"node", "role", "primary", "link", "lag_bytes", "aof_runtime", "aof_file", "drift",
                            "config_file"}
    for topology in (GROUP, cluster):
        assert Topology.from_json(json.loads(json.dumps(topology.to_json()))) == topology
    assert GROUP.nodes[1].url("rediss+sentinel://10.0.0.9:26379/mymaster/2") == "rediss://10.0.0.3:6379/2"
    assert GROUP.nodes[1].url("redis://10.0.0.1:6379/5") == "redis://10.0.0.3:6379/5"
    assert not _node("h:1", "primary", aof_runtime="yes", aof_file="?").drift


def _statuses(checks) -> dict[str, Status]:
    return {c.name: c.status for c in checks}


def test_group_health_without_a_server():
    ok = group_health(GROUP, max_lag_bytes=1000, before=VIEW, expected=GROUP)
    assert _statuses(ok) == {"links": Status.PASS, "lag": Status.PASS, "failover": Status.PASS,
                             "sentinel-view": Status.PASS, "sentinels": Status.PASS}
    nodes = list(GROUP.nodes)

    def health(**changes: object) -> dict[str, Status]:
        return _statuses(group_health(GROUP.__class__(**{"kind": GROUP.kind, "source": GROUP.source, "nodes":
                                      tuple(nodes), "sentinel": VIEW, **changes}), max_lag_bytes=1000,
                                      before=VIEW, expected=GROUP))

    down = [nodes[0], _node("10.0.0.3:6379", "replica", "10.0.0.1:6379", link="down"), nodes[2]]
    checks = group_health(Topology("sentinel", "s", tuple(down), VIEW), max_lag_bytes=1000, before=VIEW)
    assert checks[0].status == Status.FAIL and "10.0.0.3:6379 link down" in checks[0].observed and checks[0].fix
    assert health(nodes=tuple(nodes[:2]))["links"] == Status.FAIL  # a replica gone since the start
    late = [nodes[0], nodes[1], _node("10.0.0.2:6379", "replica", "10.0.0.1:6379", lag_bytes=1001)]
    assert health(nodes=tuple(late)) == {"links": Status.PASS, "lag": Status.FAIL, "failover": Status.PASS,
                                         "sentinel-view": Status.PASS, "sentinels": Status.PASS}
    assert health(nodes=tuple(late[:2] + [_node("10.0.0.2:6379", "replica", "10.0.0.1:6379", lag_bytes=1000)])
                  )["lag"] == Status.PASS
    failing = SentinelView(**{**VIEW.__dict__, "failover_in_progress": True})
    assert health(sentinel=failing)["failover"] == Status.FAIL
    moved = SentinelView(**{**VIEW.__dict__, "master": "10.0.0.2:6379", "epoch": 4})
    result = group_health(Topology("sentinel", "s", GROUP.nodes, moved), max_lag_bytes=1000, before=VIEW)
    view = next(c for c in result if c.name == "sentinel-view")
    assert view.status == Status.FAIL and "10.0.0.1:6379 epoch 3" in view.observed and "epoch 4" in view.observed
    gone = group_health(Topology("replication", "r", GROUP.nodes), max_lag_bytes=1000, before=VIEW)
    assert _statuses(gone)["sentinel-view"] == Status.FAIL
    unread = [_node("10.0.0.1:6379", "primary", error="cannot connect"), *nodes[1:]]
    assert health(nodes=tuple(unread))["links"] == Status.FAIL


# -- real groups -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=SERVERS)
def label(request: pytest.FixtureRequest) -> str:
    binary_or_skip(request.param)
    return request.param


@pytest.fixture(scope="module")
def group(label: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Group]:
    """A primary and two replicas, no Sentinel (the primary pings its replicas once a minute: offsets stay put)."""
    with start_replication_group(binary_or_skip(label), tmp_path_factory.mktemp(f"group-{label}"),
                                 repl_ping_replica_period=60) as g:
        yield g


@pytest.fixture(scope="module")
def sentinels(label: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sentinels]:
    """Another primary with two replicas, under three Sentinels."""
    binary = binary_or_skip(label)
    root = tmp_path_factory.mktemp(f"sentinel-{label}")
    with start_replication_group(binary, root) as g, start_sentinels(binary, root, g) as s:
        yield s


@pytest.fixture(scope="module")
def cluster(label: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Group]:
    with start_cluster(binary_or_skip(label), tmp_path_factory.mktemp(f"cluster-{label}")) as c:
        yield c


def _expect_group(topology: Topology, group: Group, label: str) -> None:
    """The replication group as started: roles, primary, links, AOF, config files, locality, version, order."""
    primary = group.primary.address
    replicas = sorted(n.address for n in group.nodes if n is not group.primary)
    nodes = by_address(topology)
    assert set(nodes) == {n.address for n in group.nodes}
    assert nodes[primary].role == "primary" and nodes[primary].primary == ""
    for proc in group.nodes:
        n = nodes[proc.address]
        assert n.shard == primary and not n.error
        assert (n.aof_runtime, n.aof_file, n.drift, n.local) == ("no", "no", False, True)
        assert n.config_file == str(proc.conf)
        assert n.version.startswith({"redis-7": "redis 7.", "valkey-9": "valkey 9."}[label])
        assert n.link == "up"
    for address in replicas:
        assert (nodes[address].role, nodes[address].primary) == ("replica", primary)
    assert [n.address for n in topology.order()] == replicas + [primary]


def test_discover_from_primary_and_from_replica(group, label):
    primary = group.primary.client()
    primary.set("k", "v" * 500)
    assert primary.wait(2, 5000) == 2
    offset = primary.info("replication")["master_repl_offset"]
    for source in (group.primary, group.nodes[2]):
        topology = discover(spec(source.url))
        assert topology.kind == "replication" and topology.source == source.url and topology.sentinel is None
        _expect_group(topology, group, label)
        nodes = by_address(topology)
        assert nodes[group.primary.address].offset == offset > 500
        for proc in group.nodes[1:]:
            assert nodes[proc.address].offset == proc.client().info("replication")["slave_repl_offset"] == offset
            assert nodes[proc.address].lag_bytes == 0
    # Given as localhost, the replica is still one node (the primary lists it as 127.0.0.1).
    local = discover(spec(group.nodes[1].url.replace("127.0.0.1", "localhost")))
    assert sorted(by_address(local)) == sorted(n.address for n in group.nodes)


def test_lag_and_drift(group):
    late, edited = group.nodes[1], group.nodes[2]
    original = edited.conf.read_text()
    late.client().execute_command("CLIENT", "PAUSE", 5000, "WRITE")  # holds the replication stream, INFO answers
    try:
        edited.conf.write_text(original + "appendonly yes\n")  # in the file only: drift
        group.primary.client().set("lag", "x" * 2000)
        topology = discover(spec(group.primary.url))
        nodes = by_address(topology)
        primary_offset = nodes[group.primary.address].offset
        assert nodes[late.address].lag_bytes == primary_offset - nodes[late.address].offset > 2000
        assert nodes[late.address].offset == late.client().info("replication")["slave_repl_offset"]
        assert (nodes[edited.address].aof_runtime, nodes[edited.address].aof_file) == ("no", "yes")
        assert nodes[edited.address].drift and not nodes[late.address].drift
        checks = _statuses(group_health(topology, max_lag_bytes=1000, before=None))
        assert checks == {"links": Status.PASS, "lag": Status.FAIL, "failover": Status.PASS,
                          "sentinel-view": Status.PASS}
        assert _statuses(group_health(topology, max_lag_bytes=10**6, before=None))["lag"] == Status.PASS
    finally:
        edited.conf.write_text(original)
        late.client().execute_command("CLIENT", "UNPAUSE")
    assert group.primary.client().wait(2, 5000) == 2


def test_replica_whose_primary_cannot_be_read(group):
    replica = group.nodes[1]
    dead = f"127.0.0.1:{free_port()}"
    replica.client().replicaof("127.0.0.1", dead.split(":")[1])
    try:
        topology = discover(spec(replica.url))
        nodes = by_address(topology)
        assert set(nodes) == {replica.address, dead}
        assert nodes[dead].error and "cannot connect" in nodes[dead].error and nodes[dead].aof_runtime == "?"
        assert (nodes[replica.address].link, nodes[replica.address].lag_bytes) == ("down", -1)
        links = group_health(topology, max_lag_bytes=1000, before=None)[0]
        assert links.status == Status.FAIL
        assert f"{replica.address} link down" in links.observed and f"{dead} not readable" in links.observed
    finally:
        replica.client().replicaof("127.0.0.1", group.primary.port)
    wait_until("replica back", lambda: replica.client().info("replication").get("master_link_status") == "up")


def test_killed_replica_fails_the_guard(group):
    before = discover(spec(group.primary.url))
    assert all(c.status == Status.PASS for c in group_health(before, max_lag_bytes=1000, before=None,
                                                             expected=before))
    victim = group.nodes[2]
    victim.kill()
    try:
        wait_until("primary drops the replica", lambda: group.primary.client().info("replication")
                   ["connected_slaves"] == 1)
        now = discover(spec(group.primary.url))
        assert victim.address not in by_address(now)
        links = group_health(now, max_lag_bytes=1000, before=None, expected=before)[0]
        assert links.status == Status.FAIL and f"{victim.address} (replica at the start) is gone" in links.observed
        with pytest.raises(TargetUnreachable, match=f"{victim.url}: cannot connect"):
            discover(spec(victim.url))
    finally:
        victim.start()


def test_discover_through_sentinels(sentinels, label, caplog):
    group = sentinels.group
    topology = discover(spec(sentinels.target))
    assert topology.kind == "sentinel" and topology.source == sentinels.target
    _expect_group(topology, group, label)
    view = topology.sentinel
    assert view is not None
    assert (view.name, view.master, view.quorum, view.failover_in_progress) == (
        "mymaster", group.primary.address, 2, False)
    assert set(view.sentinels) == {s.address for s in sentinels.nodes} and len(view.sentinels) == 3
    assert view.epoch == int(sentinels.nodes[0].client().sentinel_master("mymaster")["config-epoch"])
    assert "master" in view.flags.split(",")
    assert sentinel_view(spec(sentinels.target)) == view
    assert all(c.status == Status.PASS for c in group_health(topology, max_lag_bytes=10**6, before=view))
    # A Sentinel URL as the target: connect() reaches the master and keeps the URL as the name.
    with caplog.at_level(logging.INFO, logger="runbook.server.target"):
        target = connect(spec(sentinels.target))
    assert target.name == sentinels.target
    assert target.client.info("server")["tcp_port"] == group.primary.port
    assert f"the Sentinels name the master redis://{group.primary.address}/0" in caplog.text
    # Only the last Sentinel answers: still found.
    dead = f"127.0.0.1:{free_port()}"
    one = f"redis+sentinel://{dead},{sentinels.nodes[-1].address}/mymaster"
    degraded = discover(spec(one))
    assert degraded.sentinel.master == group.primary.address  # type: ignore[union-attr]
    assert degraded.sentinel.down == (dead,)  # type: ignore[union-attr]
    said = next(c for c in group_health(degraded, max_lag_bytes=10**6, before=view) if c.name == "sentinels")
    assert said.status == Status.WARN and f"Sentinel(s) down: {dead}" in said.observed
    assert next(c for c in group_health(topology, max_lag_bytes=10**6, before=view)
                if c.name == "sentinels").status == Status.PASS


def test_sentinel_errors(sentinels):
    with pytest.raises(PreconditionFailed, match="monitors no 'nosuch'|no Sentinel monitors 'nosuch'"):
        discover(spec(sentinels.target.replace("/mymaster", "/nosuch")))
    with pytest.raises(PreconditionFailed, match="monitor no service 'nosuch'"):
        connect(spec(sentinels.target.replace("/mymaster", "/nosuch")))
    with pytest.raises(PreconditionFailed, match=f"Sentinel, not a data server.*mymaster at "
                                                 f"redis://{sentinels.group.primary.address}/0"):
        discover(spec(sentinels.urls[0]))  # a Sentinel given as a data node
    nobody = f"redis+sentinel://127.0.0.1:{free_port()},127.0.0.1:{free_port()}/mymaster"
    for call in (discover, sentinel_view, connect):
        with pytest.raises(TargetUnreachable, match="no Sentinel answered .*Check that the Sentinels run"):
            call(spec(nobody))


def test_sentinel_monitored(sentinels, group, cluster):
    assert sentinel_monitored(sentinels.group.primary.client())
    assert sentinel_monitored(sentinels.group.nodes[1].client())
    assert not sentinel_monitored(group.primary.client())
    assert not sentinel_monitored(cluster.nodes[0].client())


def _slots(text: str) -> set[int]:
    out: set[int] = set()
    for part in filter(None, text.split(",")):
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out


def test_discover_cluster(cluster):
    ids = {n.address: str(n.client().execute_command("CLUSTER", "MYID")) for n in cluster.nodes}
    roles = {n.address: n.client().info("replication") for n in cluster.nodes}
    replica = next(n for n in cluster.nodes if roles[n.address]["role"] == "slave")
    for source in (cluster.primary, replica):
        topology = discover(spec(source.url))
        assert topology.kind == "cluster" and len(topology.nodes) == 6
        nodes = by_address(topology)
        assert {a: n.node_id for a, n in nodes.items()} == ids
        primaries = topology.primaries()
        assert len(primaries) == 3
        assert set().union(*(_slots(p.slots) for p in primaries)) == set(range(16384))
        assert sum(len(_slots(p.slots)) for p in primaries) == 16384
        for address, info in roles.items():
            if info["role"] == "slave":
                mine = f"{info['master_host']}:{info['master_port']}"
                assert (nodes[address].role, nodes[address].primary, nodes[address].shard) == ("replica", mine, mine)
                assert nodes[address].slots == "" and nodes[address].link == "up"
        order = [n.address for n in topology.order()]
        expected = []
        for p in sorted(primaries, key=lambda n: n.address):
            expected += [r.address for r in topology.replicas_of(p.address)] + [p.address]
        assert order == expected and len(order) == 6
        assert all(len(topology.replicas_of(p.address)) == 1 for p in primaries)
        assert all(n.config_file == str(cluster.node(int(a.split(":")[1])).conf) for a, n in nodes.items())
    assert "slots" in topology.rows()[0]


def test_cluster_nodes_reads_as_cluster_shards(cluster):
    """CLUSTER NODES (the reply before 7.0) gives the same shards as CLUSTER SHARDS."""
    client = cluster.primary.client()
    shards = sorted((p, s, sorted(m)) for p, s, m in _shards(client.execute_command("CLUSTER", "SHARDS"), False))
    old = sorted((p, s, sorted(m)) for p, s, m in
                 _shards_from_nodes(str(client.execute_command("CLUSTER", "NODES")), "127.0.0.1"))
    assert [(p, s, [(a, i) for a, i, _ in m]) for p, s, m in shards] == \
           [(p, s, [(a, i) for a, i, _ in m]) for p, s, m in old]
    assert len(shards) == 3 and all(len(m) == 2 for _, _, m in shards)


def test_failover_changes_the_sentinel_view(sentinels):
    """Last (it moves the master): SENTINEL FAILOVER, and the guard sees the view change."""
    before = sentinel_view(spec(sentinels.target))
    sentinels.nodes[0].client().execute_command("SENTINEL", "FAILOVER", "mymaster")
    wait_until("failover", lambda: sentinel_view(spec(sentinels.target)).master != before.master)
    now = discover(spec(sentinels.target))
    assert now.sentinel is not None and now.sentinel.master != before.master
    assert now.sentinel.epoch > before.epoch
    view = next(c for c in group_health(now, max_lag_bytes=10**9, before=before) if c.name == "sentinel-view")
    assert view.status == Status.FAIL
    assert f"master {before.master} epoch {before.epoch} before" in view.observed
    assert f"master {now.sentinel.master} epoch {now.sentinel.epoch} now" in view.observed

