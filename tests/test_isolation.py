"""Throwaway servers never collide with real ones: ports, and the boot check's copy of a config file."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from helpers import run_json

from runbook.sandbox.throwaway import SEED_CONFIG, free_port
from runbook.server.target import identify


def test_free_ports_leave_room_for_a_cluster_bus_port() -> None:
    ports = [free_port() for _ in range(50)]
    assert all(p <= 55535 for p in ports)  # Redis refuses cluster mode on a higher port
    for port in ports[:5]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port + 10000))  # the bus port was free too


def test_free_port_skips_a_port_whose_bus_port_is_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        bus = taken.getsockname()[1]
        candidates = iter([bus - 10000, 21111])
        monkeypatch.setattr("runbook.sandbox.throwaway.random.randrange", lambda a, b: next(candidates))
        assert free_port() == 21111


@pytest.mark.notebook
def test_boot_check_of_a_cluster_node_does_not_fight_over_its_nodes_conf(default_binary: Path, make_sandbox,
                                                                         tmp_path: Path) -> None:
    nodes = tmp_path / "real-nodes.conf"  # absolute, as packaged configs often have it
    sb = make_sandbox(default_binary, config=SEED_CONFIG + f"\ncluster-enabled yes\ncluster-config-file {nodes}\n")
    before = nodes.read_text()
    rc, out, err = run_json(tmp_path / "a", "enable-aof", "persist-config", "-p", "target", sb.url,
                            "-p", "apply", "true")
    assert rc == 0, err
    boots = out["steps"][1]["summary"]["checks"]["file_boots"]
    assert boots["status"] == "pass", boots
    assert nodes.read_text() == before  # the copy wrote its own nodes file, not the node's
    assert identify(sb.client()).mode == "cluster"  # Valkey 8+ says server_mode, Redis redis_mode
