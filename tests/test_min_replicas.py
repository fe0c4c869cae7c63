"""A master with min-replicas-to-write and too few replicas refuses writes (NOREPLICAS): inspect flags it,
test-persistence explains it instead of failing with the raw error, on real servers of every product."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from helpers import run_json

import runbook
from runbook.sandbox.seed import populate
from runbook.sandbox.throwaway import SEED_CONFIG
from runbook.server.replicas import quorum_from, replica_quorum
from runbook.steps import test_persistence as durability

#: One replica within 10 s wanted; a replica syncs at once (no diskless delay) so the tests need not wait 5 s.
WANTS_A_REPLICA = SEED_CONFIG + "min-replicas-to-write 1\nmin-replicas-max-lag 10\nrepl-diskless-sync-delay 0\n"


def _with_a_good_replica(make_sandbox, binary: Path):
    master = make_sandbox(binary, config=WANTS_A_REPLICA)
    make_sandbox(binary, config=SEED_CONFIG + f"replicaof 127.0.0.1 {master.port}\n")
    deadline = time.monotonic() + 30
    while replica_quorum(runbook.connect(master.url)).refuses_writes:
        assert time.monotonic() < deadline, "the replica never became good"
        time.sleep(0.1)
    return master


@pytest.mark.parametrize(("settings", "replication", "refuses"), [
    ({"min-replicas-to-write": "1", "min-replicas-max-lag": "10"}, {"role": "master", "connected_slaves": 0,
                                                                     "min_slaves_good_slaves": 0}, True),
    ({"min-replicas-to-write": "1", "min-replicas-max-lag": "10"}, {"role": "master", "connected_slaves": 1,
                                                                     "min_slaves_good_slaves": 1}, False),
    # Connected but still syncing: not counted.
    ({"min-replicas-to-write": "1", "min-replicas-max-lag": "10"},
     {"role": "master", "connected_slaves": 1, "slave0": {"state": "wait_bgsave", "lag": 0}}, True),
    ({"min-replicas-to-write": "2", "min-replicas-max-lag": "10"},
     {"role": "master", "connected_slaves": 2, "slave0": {"state": "online", "lag": 0},
      "slave1": {"state": "online", "lag": 11}}, True),
    ({"min-replicas-to-write": "1", "min-replicas-max-lag": "0"}, {"role": "master", "connected_slaves": 0}, False),
    ({"min-replicas-to-write": "0", "min-replicas-max-lag": "10"}, {"role": "master", "connected_slaves": 0}, False),
    ({"min-replicas-to-write": "1", "min-replicas-max-lag": "10"}, {"role": "slave", "connected_slaves": 0}, False),
])
def test_quorum_from_settings_and_info(settings: dict, replication: dict, refuses: bool) -> None:
    assert quorum_from(settings, replication).refuses_writes is refuses


def test_inspect_flags_a_master_that_refuses_writes(server_binary: Path, make_sandbox, clean_env) -> None:
    sb = make_sandbox(server_binary, config=WANTS_A_REPLICA)
    insp = runbook.inspect_target(runbook.connect(sb.url))
    check = {c.name: c for c in insp.checks}["min_replicas"]
    assert check.status == "fail", check
    assert "min-replicas-to-write 1 with 0 connected replica(s)" in check.observed
    assert "NOREPLICAS" in check.observed and "CONFIG SET min-replicas-to-write 0" in check.fix
    assert insp.verdict == "fail"


def test_inspect_passes_a_master_with_its_replica(server_binary: Path, make_sandbox, clean_env) -> None:
    master = _with_a_good_replica(make_sandbox, server_binary)
    check = {c.name: c for c in runbook.inspect_target(runbook.connect(master.url)).checks}["min_replicas"]
    assert check.status == "pass" and "1 connected replica(s), 1 of them within" in check.observed, check


def test_inspect_says_nothing_when_the_setting_is_off(default_binary: Path, make_sandbox, clean_env) -> None:
    sb = make_sandbox(default_binary)
    assert "min_replicas" not in {c.name for c in runbook.inspect_target(runbook.connect(sb.url)).checks}


@pytest.mark.notebook
def test_test_persistence_explains_noreplicas_online_and_restart(server_binary: Path, make_sandbox, clean_env,
                                                                 tmp_path: Path) -> None:
    sb = make_sandbox(server_binary, config=WANTS_A_REPLICA.replace("to-write 1", "to-write 0"))
    populate(sb.client(), 100)
    sb.client().config_set("min-replicas-to-write", 1)  # from now on every write is refused
    pid = sb.client().info("server")["process_id"]
    marker = tmp_path / "restarted"
    for mode in ("online", "restart"):
        rc, out, err = run_json(tmp_path / "archive", "test-persistence", "-p", "target", sb.url, "-p", "mode", mode,
                                "-p", "apply", "true", "-p", "allow_restart", "true",
                                "-p", "restart_command", f"touch {marker}")
        assert rc == 1, (mode, err)
        summary = out["steps"][0]["summary"]
        assert "error" not in summary, summary  # a failed check, not a raw NOREPLICAS error
        check = summary["checks"]["writes_accepted"]
        assert check["status"] == "fail"
        assert "min-replicas-to-write 1 with 0 connected replica(s)" in check["observed"], check
        assert "no canary was written" in check["observed"] and "min-replicas-to-write" in check["fix"]
        assert "Traceback" not in err and "Not enough good replicas" not in json.dumps(out) + err  # the raw error
    assert not marker.exists()  # the restart was never attempted
    assert sb.client().info("server")["process_id"] == pid
    assert sb.client().dbsize() == 100


def test_online_and_restart_pass_with_the_replica_there(server_binary: Path, make_sandbox, clean_env) -> None:
    master = _with_a_good_replica(make_sandbox, server_binary)
    online = durability.online_test(runbook.connect(master.url), keys=200, timeout_s=60)
    assert online.verdict == "pass", online.checks
    clean_env.setenv("RUNBOOK_SANDBOX_URL", master.url)
    clean_env.setenv("RUNBOOK_SANDBOX_DIR", str(master.root))
    # Right after its restart the master refuses writes until the replica is back: the canaries are removed
    # once it is (not a raw NOREPLICAS error).
    restart = durability.restart_test(runbook.connect("sandbox"), allow_restart=True, keys=200, timeout_s=60)
    assert restart.verdict == "pass", restart.checks
    assert restart.figures["canaries_found"] == 200
    assert not list(master.client().scan_iter(match="runbook:canary:*"))
