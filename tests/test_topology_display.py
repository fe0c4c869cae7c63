"""The group in inspect (table, picture, the `topology` fact), test-persistence's read-back from replicas, the
Sentinel restart refusal, the group in the change report, and a Cluster changed node by node (issue 18).

Real topologies on loopback (tests/topologies.py): a primary with two replicas, one Sentinel over it, a Cluster of
three primaries with one replica each; Redis 7 and Valkey 9.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import binary_or_skip
from helpers import REPO, index, runbook_cli, switch_aof_on
from topologies import start_cluster, start_replication_group, start_sentinels

import runbook
from runbook.evidence import change_report, group_report, report
from runbook.model import ConnectionSpec, Status, StepSummary
from runbook.server.settings import config_get
from runbook.server.topology import Node, SentinelView, Topology
from runbook.steps import test_persistence
from runbook.steps.checks import group_checks

SERVERS = ["redis-7", "valkey-9"]


def _checks(checks) -> dict:
    return {c.name: c for c in checks}


def _address(url: str) -> str:
    return url.split("://", 1)[1].rsplit("/", 1)[0]


@pytest.fixture(params=SERVERS)
def group(request: pytest.FixtureRequest, tmp_path: Path, clean_env):
    with start_replication_group(binary_or_skip(request.param), tmp_path / "group") as g:
        yield g


# -- inspect shows the group -------------------------------------------------------------------------------------


def test_inspect_with_discover_shows_every_node_and_records_the_topology(group) -> None:
    primary, (r1, r2) = group.primary, group.replicas
    switch_aof_on(r1.client())  # AOF on at runtime, off in its file: drift on that replica only
    spec = ConnectionSpec(primary.url, discover=True)
    insp = runbook.inspect_target(runbook.connect(spec)).with_group(runbook.discover_group(spec))

    rows = {r["node"]: r for r in insp.topology.rows()}
    assert set(rows) == {primary.address, r1.address, r2.address}
    assert rows[primary.address]["role"] == "primary" and rows[r2.address]["primary"] == primary.address
    assert {rows[n.address]["link"] for n in (r1, r2)} == {"up"}
    assert (rows[r1.address]["aof_runtime"], rows[r1.address]["aof_file"], rows[r1.address]["drift"]) == \
        ("yes", "no", True)
    assert not rows[r2.address]["drift"]
    checks = _checks(insp.checks)
    assert checks["group_drift"].status == Status.WARN and r1.address in checks["group_drift"].observed
    assert r2.address not in checks["group_drift"].observed
    assert checks["group_aof"].status == Status.WARN
    assert primary.address in checks["group_aof"].observed and r1.address not in checks["group_aof"].observed
    fact = insp.summary().to_json()["topology"]
    assert fact == insp.topology.to_json() and len(fact["nodes"]) == 3
    assert Topology.from_json(fact) == insp.topology
    fig = report.plot_topology(insp.topology)
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert sum(primary.address in t for t in texts) == 1 and any(r2.address in t and "replica" in t for t in texts)
    assert report.topology_table(insp.topology).data.shape[0] == 3


def test_inspect_without_discover_records_no_topology(group) -> None:
    spec = ConnectionSpec(group.primary.url)
    assert runbook.discover_group(spec) is None
    insp = runbook.inspect_target(runbook.connect(spec)).with_group(None)
    assert "topology" not in insp.summary().facts and "group_aof" not in _checks(insp.checks)


# -- the group's checks and the change report's group part (pure) ---------------------------------------------------


def _node(address: str, role: str = "primary", primary: str = "", runtime: str = "yes", file: str = "yes",
          link: str = "up", error: str = "") -> Node:
    return Node(address, role, primary, primary or address, link, 100, 0, runtime, file, "/etc/redis.conf", True,
                error=error)


def test_group_checks_name_each_node_with_aof_off_drift_a_link_down_or_unread() -> None:
    p = "10.0.0.1:6379"
    topo = Topology("replication", f"redis://{p}", (
        _node(p, runtime="no", file="no"), _node("10.0.0.2:6379", "replica", p, runtime="yes", file="no"),
        _node("10.0.0.3:6379", "replica", p, link="down"),
        _node("10.0.0.4:6379", "replica", p, runtime="?", file="?", error="connection refused")))
    checks = _checks(group_checks(topo))
    assert checks["group_aof"].status == Status.WARN and "10.0.0.1:6379 (primary)" in checks["group_aof"].observed
    assert "10.0.0.2" not in checks["group_aof"].observed
    assert "unknown for 10.0.0.4:6379 (not read)" in checks["group_aof"].observed  # not counted as on, nor off
    assert checks["group_drift"].status == Status.WARN and "10.0.0.2:6379" in checks["group_drift"].observed
    assert "10.0.0.1" not in checks["group_drift"].observed
    assert checks["group_links"].status == Status.WARN and "10.0.0.3:6379" in checks["group_links"].observed
    assert checks["group_nodes"].status == Status.WARN and "connection refused" in checks["group_nodes"].observed
    healthy = Topology("replication", "x", (_node(p), _node("10.0.0.2:6379", "replica", p)))
    assert {c.status for c in group_checks(healthy)} == {Status.PASS}
    # A replica that could not be read (down): its link and AOF are unknown, never "every link up", "AOF on on all".
    one_unread = Topology("sentinel", "x", (*healthy.nodes, _node("10.0.0.3:6379", "replica", p, runtime="?",
                                                                   file="?", error="connection refused")))
    checks = _checks(group_checks(one_unread))
    assert checks["group_links"].status == checks["group_aof"].status == Status.WARN
    assert "unknown for 10.0.0.3:6379" in checks["group_links"].observed
    assert "on all" not in checks["group_aof"].observed and "unknown for 10.0.0.3:6379" in checks["group_aof"].observed


def _inspect_record(topo: Topology | None, started: str) -> dict:
    facts = {"topology": topo.to_json()} if topo is not None else {}
    return {"notebook": "inspect", "target": "redis://10.0.0.1:6379", "status": "pass", "change_id": "c1",
            "started": started, "ended": started, "summary": StepSummary("inspect", Status.PASS, facts=facts).to_json()}


def test_the_change_report_shows_the_group_before_and_after_and_a_changed_sentinel_view() -> None:
    p, r = "10.0.0.1:6379", "10.0.0.2:6379"
    view = SentinelView("mymaster", p, 3, "master", False, ("10.0.0.9:26379",), 1)
    before = Topology("sentinel", "redis+sentinel://10.0.0.9:26379/mymaster",
                      (_node(p, runtime="no", file="no"), _node(r, "replica", p, runtime="no", file="no")), view)
    after = Topology("sentinel", before.source, (_node(r), _node(p, "replica", r)),
                     SentinelView("mymaster", r, 4, "master", False, view.sentinels, 1))
    rep = change_report.build([_inspect_record(before, "2026-12-01T10:00:00+00:00"),
                               _inspect_record(after, "2026-12-01T10:05:00+00:00")])
    found = group_report.moments(rep.steps)
    assert [(m.label, m.step) for m in found] == [("before", 1), ("after", 2)]
    assert group_report.sentinel_lines(found)[-1].startswith(f"CHANGED: master {p} -> {r}, epoch 3 -> 4")
    from runbook.evidence.change_page import render

    html = render(rep)
    assert 'id="group-before"' in html and 'id="group-after"' in html and "CHANGED: master" in html
    same = change_report.build([_inspect_record(before, "2026-12-01T10:00:00+00:00"),
                                _inspect_record(before, "2026-12-01T10:05:00+00:00")])
    assert group_report.sentinel_lines(group_report.moments(same.steps))[-1] == "the master and epoch did not change"
    plain = render(change_report.build([_inspect_record(None, "2026-12-01T10:00:00+00:00")]))
    assert 'id="group"' not in plain


# -- test-persistence reads the canaries back from every replica ------------------------------------------------------


def test_read_back_from_both_replicas_passes_and_fails_for_a_detached_or_stopped_one(group) -> None:
    primary, (r1, r2) = group.primary, group.replicas
    spec = ConnectionSpec(primary.url)
    target = runbook.connect(spec)
    urls = [r1.url, r2.url]
    result = test_persistence.online_test(target, keys=300, read_back_from=urls, spec=spec, timeout_s=3)
    check = _checks(result.checks)["replicas-read-back"]
    assert check.status == Status.PASS, check
    assert check.observed.startswith("WAIT 2 3000: 2 of 2 acknowledged")  # replicas without AOF: WAIT, not WAITAOF
    assert [(r["replica"], r["found"]) for r in result.figures["read_back"]] == [(r1.url, 300), (r2.url, 300)]
    assert result.verdict == Status.PASS and _checks(result.checks)["canaries_removed"].status == Status.PASS

    r1.client().execute_command("REPLICAOF", "NO", "ONE")  # detached: it takes no more writes from the primary
    check = _checks(test_persistence.online_test(target, keys=300, read_back_from=urls, spec=spec,
                                                 timeout_s=1).checks)["replicas-read-back"]
    assert check.status == Status.FAIL and f"{r1.url} (300 of 300 canaries missing)" in check.observed, check
    assert r2.url not in check.observed.split("lacking canaries:")[1]

    r2.kill()
    result = test_persistence.online_test(target, keys=300, read_back_from=[r2.url], spec=spec, timeout_s=1)
    check = _checks(result.checks)["replicas-read-back"]
    assert check.status == Status.FAIL and r2.url in check.observed and "cannot connect" in check.observed, check
    assert result.figures["read_back"][0]["found"] == 0


def test_read_back_waits_for_the_replicas_aof_with_waitaof_where_there_is_one(tmp_path: Path, clean_env) -> None:
    with start_replication_group(binary_or_skip("valkey-9"), tmp_path / "g") as g:
        for node in g.nodes:
            switch_aof_on(node.client())
        spec = ConnectionSpec(g.primary.url)
        result = test_persistence.online_test(runbook.connect(spec), keys=100, spec=spec, timeout_s=5,
                                              read_back_from=[r.url for r in g.replicas])
    check = _checks(result.checks)["replicas-read-back"]
    assert check.status == Status.PASS and check.observed.startswith("WAITAOF 1 2 5000: 2 of 2 acknowledged"), check


def test_read_back_from_is_refused_off_mode_online_or_when_it_is_no_replica_url(group) -> None:
    target = runbook.connect(ConnectionSpec(group.primary.url))
    for mode, urls, said in (("restart", [group.replicas[0].url], "it needs mode online, not restart"),
                             ("online", group.replicas[0].url, "must be a list of replica URLs"),
                             ("online", ["redis+sentinel://127.0.0.1:26379/mymaster"], "is not a replica's URL"),
                             ("online", ["redis://:hunter2@127.0.0.1:6379"], "carries a password")):
        with pytest.raises(runbook.ParameterError, match=said):
            test_persistence.run_test(target, mode=mode, allow_restart=True, restart_command="true",
                                      read_back_from=urls)
    keys = group.primary.client().dbsize()
    plan = test_persistence.run_test(target, read_back_from=[r.url for r in group.replicas])
    assert "read every canary back from 2 replica(s)" in plan.would and group.primary.client().dbsize() == keys


def test_read_back_from_a_cluster_replica(tmp_path: Path, clean_env) -> None:
    with start_cluster(binary_or_skip("valkey-9"), tmp_path / "cluster", primaries=3, replicas_each=1) as c:
        primary = c.primary
        mine = [n for n in c.nodes if n.client().info("replication").get("master_port") == primary.port]
        spec = ConnectionSpec(primary.url)
        result = test_persistence.online_test(runbook.connect(spec), keys=100, spec=spec, timeout_s=3,
                                              read_back_from=[mine[0].url])
    check = _checks(result.checks)["replicas-read-back"]
    assert check.status == Status.PASS and "1 acknowledged" in check.observed, check


# -- a restart under Sentinel is refused ---------------------------------------------------------------------------


@pytest.mark.parametrize("label", SERVERS)
def test_restart_of_a_sentinel_monitored_primary_is_refused_before_anything_is_written(
        label: str, tmp_path: Path, clean_env) -> None:
    binary = binary_or_skip(label)
    with start_replication_group(binary, tmp_path / "g", replicas=1) as g, \
            start_sentinels(binary, tmp_path / "s", g, count=1, name="prod") as sentinels:
        topo = runbook.discover_group(ConnectionSpec(sentinels.target))  # a Sentinel URL implies discovery
        texts = [t.get_text() for t in report.plot_topology(topo).axes[0].texts]
        assert [t for t in texts if t.endswith("sentinel")] == [f"{sentinels.nodes[0].address}\nsentinel"]
        assert f"Sentinel view of prod: master {g.primary.address}" in report.topology_table(topo).caption
        keys = g.primary.client().dbsize()
        target = runbook.connect(ConnectionSpec(g.primary.url))
        for call in (test_persistence.plan_test, test_persistence.run_test):
            with pytest.raises(runbook.PreconditionFailed) as err:
                call(target, mode="restart", allow_restart=True, restart_command="true", keys=10,
                     **({"apply": True} if call is test_persistence.run_test else {}))
            assert "SENTINEL FAILOVER prod first, then run the restart test on the old primary once it is a " \
                   "replica" in str(err.value)
        assert g.primary.client().dbsize() == keys  # no canary was written
        replica = runbook.connect(ConnectionSpec(g.replicas[0].url))  # the replica may be restarted
        plan = test_persistence.plan_test(replica, mode="restart", allow_restart=True, restart_command="true")
        assert plan.would.startswith("write 1000 canary keys")


def test_restart_under_sentinel_exits_1_through_the_cli(tmp_path: Path, clean_env) -> None:
    binary = binary_or_skip("redis-7")
    with start_replication_group(binary, tmp_path / "g", replicas=1) as g, \
            start_sentinels(binary, tmp_path / "s", g, count=1):
        # No restart_command: the refusal is the Sentinel's, not "give restart_command" (which would not make it safe)
        proc = runbook_cli("run", "test-persistence", "-p", "target", g.primary.url, "-p", "mode", "restart",
                           "-p", "allow_restart", "true", "-p", "apply", "true",
                           "--archive", str(tmp_path / "archive"))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "SENTINEL FAILOVER mymaster first" in proc.stdout and "Traceback" not in proc.stdout + proc.stderr


# -- a Cluster ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("label", SERVERS)
def test_inspect_with_discover_shows_the_six_cluster_nodes_and_their_slots(label: str, tmp_path: Path,
                                                                           clean_env) -> None:
    with start_cluster(binary_or_skip(label), tmp_path / "cluster", primaries=3, replicas_each=1) as c:
        spec = ConnectionSpec(c.replicas[0].url, discover=True)  # from any node, a replica too
        topo = runbook.discover_group(spec)
    rows = topo.rows()
    assert topo.kind == "cluster" and len(rows) == 6
    primaries = [r for r in rows if r["role"] == "primary"]
    assert len(primaries) == 3 and all(r["slots"] for r in primaries)
    covered = set()
    for r in primaries:
        for part in str(r["slots"]).split(","):
            lo, _, hi = part.partition("-")
            covered |= set(range(int(lo), int(hi or lo) + 1))
    assert covered == set(range(16384))
    assert {r["primary"] for r in rows if r["role"] == "replica"} == {r["node"] for r in primaries}
    fig = report.plot_topology(topo)
    assert sum("slots" in t.get_text() for t in fig.axes[0].texts) == 3


@pytest.mark.parametrize("label", SERVERS)
def test_run_all_with_discover_on_a_cluster_leaves_aof_on_in_every_node(label: str, tmp_path: Path, clean_env) -> None:
    """The group run end to end (runbook.orchestration.group); its evidence shows the group as this file's parts
    made it: the inspect notebooks' table and picture, the read-back per primary, the report's before and after."""
    if not (REPO / "runbook" / "orchestration" / "group.py").is_file():
        pytest.skip("the group run (runbook/orchestration/group.py, issue 18 part 2) is not there yet")
    archive = tmp_path / "archive"
    with start_cluster(binary_or_skip(label), tmp_path / "cluster", primaries=3, replicas_each=1) as c:
        proc = runbook_cli("run", "all", "-p", "target", c.replicas[0].url, "-p", "discover", "true",
                           "-p", "apply", "true", "--archive", str(archive), timeout=300)
        state = {n.address: (config_get(n.client(), ["appendonly"])["appendonly"], n.conf.read_text())
                 for n in c.nodes}
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for address, (runtime, conf) in state.items():
        assert runtime == "yes", address
        assert [line for line in conf.splitlines() if line.startswith("appendonly ")] == ["appendonly yes"], address

    records = index(archive)
    inspects = [r for r in records if r["notebook"] == "inspect"]
    before, after = (Topology.from_json(r["summary"]["topology"]) for r in (inspects[0], inspects[-1]))
    assert len(before.nodes) == len(after.nodes) == 6
    assert {n.aof_runtime for n in before.nodes} == {"no"} and {(n.aof_runtime, n.aof_file) for n in after.nodes} \
        == {("yes", "yes")}
    nb = json.loads((archive / next(f for f in inspects[-1]["files"] if f.endswith(".ipynb"))).read_text())
    cells = {c.get("id"): c for c in nb["cells"]}
    table = "".join("".join(o.get("data", {}).get("text/html", "")) for o in cells["inspect-group"]["outputs"])
    assert all(address in table for address in state) and "slots" in table
    assert any("image/png" in o.get("data", {}) for o in cells["inspect-group-plot"]["outputs"])
    tests = [r["summary"] for r in records if r["notebook"] == "test-persistence"]
    assert len(tests) == 3 and all(t["checks"]["replicas-read-back"]["status"] == "pass" for t in tests)
    assert all(len(t["read_back"]) == 1 and t["read_back"][0]["found"] == 1000 for t in tests)
    html = next((archive / "reports").glob("*.html")).read_text()
    assert 'id="group-before"' in html and 'id="group-after"' in html
