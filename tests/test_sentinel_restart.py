"""The restart test of a Sentinel group, the documented way (docs/topology.md): fail over first, then restart the
old primary once it is a replica. Its canaries go through its new primary and must come back after its restart."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from conftest import binary_or_skip
from topologies import start_replication_group, start_sentinels

from runbook.errors import PreconditionFailed
from runbook.model import ConnectionSpec
from runbook.server.target import connect
from runbook.steps import test_persistence


def _wait(what: str, predicate, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _target(node):
    """The node as a Target the restart test can restart (its own Sandbox is the owner)."""
    return connect(ConnectionSpec(node.url), sandbox_dir=node.sandbox.root, owner=node.sandbox)


@pytest.mark.parametrize("label", ["redis-7", "valkey-9"])
def test_the_old_primary_restart_tests_as_a_replica_after_a_failover(label: str, tmp_path: Path, clean_env) -> None:
    binary = binary_or_skip(label)
    with start_replication_group(binary, tmp_path / "group") as group, \
            start_sentinels(binary, tmp_path / "sentinels", group) as sentinels:
        old = group.primary
        refused = _target(old)
        with pytest.raises(PreconditionFailed, match="SENTINEL FAILOVER mymaster first"):
            test_persistence.restart_test(refused, allow_restart=True, keys=10)
        assert not [k for k in old.client().keys("*") if "canary" in k]  # refused before anything was written

        sentinels.nodes[0].client().execute_command("SENTINEL", "FAILOVER", "mymaster")
        _wait("the failover", lambda: sentinels.master_address() != old.address)
        _wait("the old primary to replicate from the new one", lambda: (
            (r := old.client().info("replication"))["role"] == "slave" and r.get("master_link_status") == "up"))
        new_primary = sentinels.master_address()
        target = _target(old)
        result = test_persistence.restart_test(target, allow_restart=True, keys=200)

        checks = {c.name: c for c in result.checks}
        assert result.figures["written_on"] == new_primary
        assert checks["canaries"].status == "pass", checks["canaries"].observed
        assert result.figures["canaries_found"] == result.figures["canaries_written"] == 200
        assert checks["loaded_own_files"].status == "pass", checks["loaded_own_files"].observed
        assert result.figures["loaded_from"] in ("AOF", "RDB")
        assert sentinels.master_address() == new_primary  # restarting a replica provoked no failover
        host, port = new_primary.split(":")
        assert not [k for k in connect(ConnectionSpec(f"redis://{host}:{port}/0")).client.keys("*")
                    if "canary" in k]  # removed afterwards


def test_a_replica_with_its_link_down_is_refused_before_anything_is_written(tmp_path: Path, clean_env) -> None:
    with start_replication_group(binary_or_skip("redis-7"), tmp_path / "group", replicas=1) as group:
        (replica,) = group.replicas
        replica.client().execute_command("REPLICAOF", "127.0.0.1", str(group.primary.port + 1 if
                                                                          group.primary.port < 65535 else 1))
        with pytest.raises(PreconditionFailed, match="link to its primary .* is down.*Nothing was written"):
            test_persistence.restart_test(_target(replica), allow_restart=True, keys=10)
        assert not [k for k in group.primary.client().keys("*") if "canary" in k]
