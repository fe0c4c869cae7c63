"""Group runs: `all -p discover true` (or a Sentinel target) changes a replicated group node by node.

Real groups from tests/topologies.py (a primary and two replicas, three Sentinels over them), each node with its
own config file, AOF off at runtime and in the file to start. Every `runbook` run is a subprocess, as cron runs it.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import pytest
import redis
from conftest import binary_or_skip
from helpers import REPO, index, run_json, runbook_cli
from topologies import Group, Sentinels, start_replication_group, start_sentinels

from runbook.errors import ParameterError
from runbook.orchestration.group import GUARD, NODE_STEPS, restart_refusal
from runbook.orchestration.plan import SEQUENCES, plan

NODE = set(NODE_STEPS)


# -- the plan: before any server is touched ------------------------------------------------------------------------


def test_a_discover_run_is_a_group_run_and_a_plain_one_is_not() -> None:
    steps = plan(["all"], pairs=[("target", "redis://10.0.0.1:6379/0"), ("discover", "true")])
    assert {s.group.source for s in steps if s.group} == {"redis://10.0.0.1:6379/0"} and len(steps) == 6
    assert steps[0].group.max_lag_bytes == 1 << 20
    assert all(s.group is None for s in plan(["all"], pairs=[("target", "redis://10.0.0.1:6379/0")]))


@pytest.mark.parametrize(("pairs", "message"), [
    ([("mode", "restart")], "SENTINEL FAILOVER mymaster first"),
    ([("mode", "crash")], "a group run tests online only"),
    ([("config_file", "/etc/redis/redis.conf")], "leave config_file out"),
    ([("max_lag_bytes", "-1")], "max_lag_bytes must be an int from 0 to 1073741824"),
    ([("max_lag_bytes", str(10**22))], "a larger bound could never stop the run"),  # a guard that cannot fail
    ([("expect_replicas", "-2")], "expect_replicas must be an int of at least 0"),
])
def test_what_a_group_run_cannot_do_is_refused_before_anything_runs(pairs: list, message: str) -> None:
    with pytest.raises(ParameterError) as err:
        plan(["all"], pairs=[("target", "redis+sentinel://127.0.0.1:26379/mymaster"), *pairs])
    assert message in str(err.value)


def test_a_fleet_with_a_sentinel_entry_runs_its_entries_one_after_another(tmp_path: Path) -> None:
    sentinel, plain = "redis+sentinel://10.0.0.7:26379,10.0.0.8:26379/cache", "redis://10.0.0.9:6379/0"
    params = tmp_path / "fleet.yaml"
    params.write_text(f"targets: [{sentinel!r}, {plain!r}]\nmax_lag_bytes: 4096\n")
    steps = plan(["all"], [params])
    assert [(s.name, s.targets[0], s.group is not None) for s in steps] == \
        [(n, sentinel, True) for n in SEQUENCES["all"]] + [(n, plain, False) for n in SEQUENCES["all"]]
    assert not any(s.fleet for s in steps) and steps[0].group.max_lag_bytes == 4096


def test_max_lag_bytes_without_a_group_says_what_it_is_for() -> None:
    with pytest.raises(ParameterError, match="bounds the replicas of a group run"):
        plan(["all"], pairs=[("target", "redis://10.0.0.1:6379/0"), ("max_lag_bytes", "10")])
    with pytest.raises(ParameterError, match="expect_replicas bounds the replicas of a group run"):
        plan(["all"], pairs=[("target", "redis://10.0.0.1:6379/0"), ("expect_replicas", "2")])


def test_the_restart_refusal_names_the_safe_procedure() -> None:
    text = restart_refusal("redis+sentinel://h:26379,h:26380/cache/0", "restart")
    assert "SENTINEL FAILOVER cache first" in text and "once it is a replica" in text and "-p mode restart" in text


# -- real groups ---------------------------------------------------------------------------------------------------


def _appendonly_in_file(conf: Path) -> str:
    found = re.findall(r"^\s*appendonly\s+\"?(\w+)", conf.read_text(), re.MULTILINE)
    return found[-1] if found else "no"


def _aof(group: Group) -> list[tuple[str, str]]:
    """(runtime, file) appendonly of every node."""
    return [(n.client().config_get("appendonly")["appendonly"], _appendonly_in_file(n.conf)) for n in group.nodes]


def _in_sync(group: Group, timeout_s: float = 10.0) -> None:
    """Every replica's link up and at the primary's offset (nothing writes to the group now)."""
    deadline = time.monotonic() + timeout_s
    while True:
        primary = group.primary.client().info("replication")
        replicas = [n.client().info("replication") for n in group.replicas]
        if all(r["master_link_status"] == "up" and r["slave_repl_offset"] == primary["master_repl_offset"]
               for r in replicas):
            return
        assert time.monotonic() < deadline, f"replicas not in sync: {primary}, {replicas}"
        time.sleep(0.05)


def _node_rows(archive: Path) -> list[tuple[str, str]]:
    return [(r["notebook"], r["target"]) for r in index(archive) if r["notebook"] in NODE]


def _order(rows: list[tuple[str, str]]) -> list[str]:
    return list(dict.fromkeys(t for _, t in rows))


def _node_by_node(rows: list[tuple[str, str]], group: Group) -> list[str]:
    """The node order of the run, checked: replicas first, then the primary, each node's steps together."""
    order = _order(rows)
    assert set(order[:-1]) == {n.url for n in group.replicas} and order[-1] == group.primary.url
    assert rows == [(step, url) for url in order for step in ("backup", "enable-aof", "persist-config")]
    return order


def test_a_plan_lists_every_node_in_order_and_changes_nothing(tmp_path: Path) -> None:
    with start_replication_group(binary_or_skip("redis-7"), tmp_path / "g") as group:
        rc, out, err = run_json(tmp_path / "a", "enable-aof", "-p", "target", group.primary.url,
                                "-p", "discover", "true")
        assert rc == 0, err
        order = [s["target"] for s in out["steps"] if s["notebook"] == "enable-aof"]
        assert set(order[:2]) == {n.url for n in group.replicas} and order[2] == group.primary.url
        assert [s["changed"] for s in out["steps"] if s["notebook"] == "enable-aof"] == ["would"] * 3
        assert [s["notebook"] for s in out["steps"]] == [GUARD, "enable-aof"] * 3 + [GUARD]
        assert _aof(group) == [("no", "no")] * 3


def _ran(out: dict) -> list[tuple]:
    return [(s["notebook"], s["target"], s["status"], s["summary"].get("error")) for s in out.get("steps", [])]


#: The whole change on a group of a primary and two replicas, both kinds on both servers: from a replica's URL with
#: discover, and under three Sentinels from the Sentinel URL.
@pytest.mark.parametrize("kind", ["replication", "sentinel"])
@pytest.mark.parametrize("label", ["redis-7", "valkey-9"])
def test_a_group_is_changed_node_by_node_replicas_first(label: str, kind: str, tmp_path: Path) -> None:
    binary = binary_or_skip(label)
    with start_replication_group(binary, tmp_path / "g") as group, \
            (start_sentinels(binary, tmp_path / "s", group) if kind == "sentinel" else nullcontext()) as sentinels:
        for i in range(200):
            group.primary.client().set(f"k{i}", i)
        before = _view(sentinels) if sentinels else None
        source = sentinels.target if sentinels else group.replicas[0].url
        archive = tmp_path / "a"
        # A plain group is found from its primary's INFO replication: expect_replicas makes the guard's count a
        # check (without it, a warn: a replica down would not be seen); a Sentinel group is complete as found.
        rc, out, err = run_json(archive, "all", "-p", "target", source, *(() if sentinels else (
                                "-p", "discover", "true", "-p", "expect_replicas", "2")),
                                "-p", "apply", "true", "-p", "destination", str(tmp_path / "bk"))
        assert rc == 0, (err, _ran(out))
        _node_by_node(_node_rows(archive), group)
        assert _aof(group) == [("yes", "yes")] * 3  # every node: on at runtime and in its own file
        _in_sync(group)
        records = index(archive)
        assert {r["change_id"] for r in records} == {out["change_id"]}
        guards = [r for r in records if r["notebook"] == GUARD]
        assert len(guards) == 5 and {g["status"] for g in guards} == {"pass"}  # before, between two, after, end
        assert {g["target"] for g in guards} == {source}
        tests = [r for r in records if r["notebook"] == "test-persistence"]
        assert [t["target"] for t in tests] == [group.primary.url] and tests[0]["status"] == "pass"
        read_back = tests[0]["summary"]["checks"]["replicas-read-back"]  # every canary on both replicas
        assert read_back["status"] == "pass" and all(n.url in read_back["observed"] for n in group.replicas)
        if sentinels:
            assert _view(sentinels) == before
            assert guards[-1]["summary"]["checks"]["sentinel-view"]["status"] == "pass"
            assert "as before the change" in guards[-1]["summary"]["checks"]["sentinel-view"]["observed"]


def _view(sentinels: Sentinels) -> tuple[str, int]:
    """The master address and config epoch, as the first Sentinel reports them."""
    master = sentinels.nodes[0].client().sentinel_master(sentinels.name)
    return f"{master['ip']}:{master['port']}", int(master["config-epoch"])


def test_a_replica_down_refuses_the_change_before_any_node_is_changed(tmp_path: Path) -> None:
    binary = binary_or_skip("redis-7")
    with start_replication_group(binary, tmp_path / "g") as group, \
            start_sentinels(binary, tmp_path / "s", group) as sentinels:
        down = group.replicas[1]
        down.kill()
        archive = tmp_path / "a"
        rc, out, _ = run_json(archive, "all", "-p", "target", sentinels.target, "-p", "apply", "true",
                              "-p", "destination", str(tmp_path / "bk"))
        assert rc == 1
        guard = next(s for s in out["steps"] if s["notebook"] == GUARD)
        assert guard["status"] == "fail" and down.address in guard["summary"]["error"]
        assert "no node was changed" in guard["summary"]["error"]
        assert {s["status"] for s in out["steps"] if s["notebook"] in NODE} == {"skipped"}
        assert [n.client().config_get("appendonly")["appendonly"] for n in group.nodes if n is not down] == ["no"] * 2
        assert out["failing"][0]["notebook"] == GUARD


def test_a_replica_down_before_a_plain_group_run_is_said_and_with_expect_replicas_refused(tmp_path: Path) -> None:
    """A primary's INFO replication lists only the replicas connected now: a dead one is not seen. The guard says so
    (warn, every run of a group found that way), and with expect_replicas the run refuses the smaller group."""
    with start_replication_group(binary_or_skip("redis-7"), tmp_path / "g") as group:
        down = group.replicas[1]
        down.kill()
        rc, out, _ = run_json(tmp_path / "b", "enable-aof", "-p", "target", group.primary.url, "-p", "discover",
                              "true", "-p", "expect_replicas", "2", "-p", "apply", "true")
        assert rc == 1
        guard = next(s for s in out["steps"] if s["notebook"] == GUARD)
        assert guard["status"] == "fail" and "expected 2 replica(s) per primary" in guard["summary"]["error"]
        assert "no node was changed" in guard["summary"]["error"]
        assert {s["status"] for s in out["steps"] if s["notebook"] == "enable-aof"} == {"skipped"}
        assert group.primary.client().config_get("appendonly")["appendonly"] == "no"

        rc, out, err = run_json(tmp_path / "a", "enable-aof", "-p", "target", group.primary.url, "-p", "discover",
                                "true", "-p", "apply", "true")
        assert rc == 0, err
        first = next(s for s in out["steps"] if s["notebook"] == GUARD)["summary"]["checks"]["replicas"]
        assert first["status"] == "warn" and f"{group.primary.address}: 1" in first["observed"]
        assert "expect_replicas" in first["fix"]


def test_the_primary_killed_mid_change_fails_over_stops_the_run_and_loses_no_acknowledged_key(tmp_path: Path) -> None:
    """Redis 7 only (time): the primary gets kill -9 while the second node is being changed."""
    binary = binary_or_skip("redis-7")
    with start_replication_group(binary, tmp_path / "g") as group, \
            start_sentinels(binary, tmp_path / "s", group) as sentinels:
        primary = group.primary.client()
        for i in range(500):
            primary.set(f"acked:{i}", i)
        assert primary.execute_command("WAIT", 2, 5000) == 2  # both replicas have every key
        archive = tmp_path / "a"
        proc = subprocess.Popen([sys.executable, "-m", "runbook", "run", "all", "-p", "target", sentinels.target,
                                 "-p", "apply", "true", "-p", "destination", str(tmp_path / "bk"),
                                 "--archive", str(archive), "--json"], cwd=REPO, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        try:
            second = _second_node_started(archive, proc)
            group.primary.kill()
            stdout, stderr = proc.communicate(timeout=120)
        finally:
            proc.kill()
        assert proc.returncode == 1, stderr
        new = _new_master(sentinels, group.primary.address)
        client = group.node(int(new.rsplit(":", 1)[1])).client()
        assert client.mget([f"acked:{i}" for i in range(500)]) == [str(i) for i in range(500)]
        records = index(archive)
        first = _order(_node_rows(archive))[0]
        assert {r["status"] for r in records if r["target"] == first and r["notebook"] in NODE} <= {"pass", "warn"}
        assert next(r for r in records if r["target"] == first and r["notebook"] == "enable-aof"
                    )["summary"]["result"] == "changed"
        assert {r["status"] for r in records if r["target"] == group.primary.url} == {"skipped"}
        stopped = next(r for r in records if r["status"] in ("fail", "error"))
        assert stopped["target"] in (second, sentinels.target), stopped
        out = json.loads(stdout)
        assert out["report"] is not None  # the change report says what was done before the stop
        shown = runbook_cli("archive", "show", out["change_id"], "--archive", str(archive)).stdout
        assert f"enable-aof on {first})" in shown and f"persist-config on {first})" in shown
        assert f"enable-aof on {group.primary.url}" not in shown


def _second_node_started(archive: Path, proc: subprocess.Popen, timeout_s: float = 90.0) -> str:
    """The URL of the second node the run changes, once its first step has started (the journal's `started`)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            started = [r["target"] for r in index(archive, journal=True)
                       if r.get("status") == "started" and r.get("notebook") in NODE]
        except (OSError, ValueError):
            started = []
        nodes = list(dict.fromkeys(started))
        if len(nodes) >= 2:
            return nodes[1]
        time.sleep(0.05)
    raise AssertionError(f"the second node's step never started (run exited {proc.poll()})")


def _new_master(sentinels: Sentinels, old: str, timeout_s: float = 30.0) -> str:
    """The master address once the Sentinels have promoted another node (and it takes writes)."""
    deadline = time.monotonic() + timeout_s
    seen = old
    while time.monotonic() < deadline:
        try:
            seen = sentinels.master_address()
            if seen != old:
                host, port = seen.rsplit(":", 1)
                if redis.Redis(host=host, port=int(port)).info("replication")["role"] == "master":
                    return seen
        except redis.RedisError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"no failover within {timeout_s}s: the Sentinels still say {seen}")
