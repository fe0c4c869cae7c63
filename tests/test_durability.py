"""04-test-persistence against real servers: online canaries, a real restart, crash loss, MISCONF."""

from __future__ import annotations

import os
import pwd
import time
from pathlib import Path

import pytest
from helpers import index, run_json, switch_aof_on

import runbook
from runbook.sandbox.seed import populate
from runbook.sandbox.throwaway import SEED_CONFIG
from runbook.steps import test_persistence as durability


def checks_of(result) -> dict[str, str]:
    return {c.name: c.status for c in result.checks}


def canaries_on_server(client, prefix: str) -> int:
    return sum(1 for _ in client.scan_iter(match=f"{prefix}*", count=1000))


@pytest.mark.parametrize("aof", [False, True], ids=["rdb-only", "aof-on"])
def test_online_passes_and_cleans_up(server_binary: Path, make_sandbox, clean_env, aof: bool) -> None:
    sb = make_sandbox(server_binary)
    populate(sb.client(), 2000)
    if aof:
        switch_aof_on(sb.client())
    saves_before = sb.client().info("persistence").get("rdb_saves"), sb.client().lastsave()
    result = durability.online_test(runbook.connect(sb.url), keys=500, timeout_s=60)
    checks = checks_of(result)
    assert result.verdict == "pass", result.checks
    assert checks["writes_accepted"] == checks["bgsave"] == checks["check_rdb"] == "pass"
    assert ("aof_write" in checks) == aof
    if aof:
        assert checks["aof_write"] == "pass"
        assert any(name.startswith("check_aof") for name in checks)
    assert result.figures["canaries_written"] == result.figures["canaries_found"] == 500
    assert result.figures["canaries_left"] == 0
    assert canaries_on_server(sb.client(), result.figures["canary_prefix"]) == 0
    # A real save happened after the canaries: counted on 7.0+, else LASTSAVE moved.
    if saves_before[0] is not None:
        assert sb.client().info("persistence")["rdb_saves"] > saves_before[0]
    else:
        assert sb.client().lastsave() > saves_before[1]
    assert sb.client().dbsize() == 2000


def _as_runner_sandbox(monkeypatch: pytest.MonkeyPatch, sb) -> runbook.Target:
    """Connect to `sb` the way a notebook of a runner's run does (target sandbox, shared by env)."""
    monkeypatch.setenv("RUNBOOK_SANDBOX_URL", sb.url)
    monkeypatch.setenv("RUNBOOK_SANDBOX_DIR", str(sb.root))
    return runbook.connect("sandbox")


def test_restart_keeps_every_canary_after_the_change(server_binary: Path, make_sandbox, clean_env) -> None:
    from runbook.steps import enable_aof as enable
    from runbook.steps import persist_config as persist

    sb = make_sandbox(server_binary)
    populate(sb.client(), 3000)
    target = _as_runner_sandbox(clean_env, sb)
    pre = enable.preflight(target)
    enable.apply_enable(target, pre, enable.plan_enable(pre), apply=True, timeout_s=60)
    plan = persist.plan_persist(target)
    persist.apply_persist(target, plan, apply=True)
    pid_before = sb.client().info("server")["process_id"]
    result = durability.restart_test(target, allow_restart=True, keys=300)
    assert result.verdict == "pass", result.checks
    assert result.figures["canaries_found"] == 300
    assert result.figures["dbsize_after"] == result.figures["dbsize_before"]
    assert result.figures["loaded_from"] == "AOF"
    assert sb.client().info("server")["process_id"] != pid_before  # really restarted
    assert sb.client().dbsize() == 3000


def test_restart_refused_in_the_trap_state(default_binary: Path, make_sandbox, clean_env) -> None:
    sb = make_sandbox(default_binary)
    populate(sb.client(), 1000)
    sb.client().save()
    sb.config_path.write_text(sb.config_path.read_text().replace("appendonly no", "appendonly yes"))
    target = _as_runner_sandbox(clean_env, sb)
    pid = sb.client().info("server")["process_id"]
    with pytest.raises(runbook.PreconditionFailed, match="refusing to restart.*old or empty AOF"):
        durability.restart_test(target, allow_restart=True)
    assert sb.client().info("server")["process_id"] == pid
    assert sb.client().dbsize() == 1000


def test_restart_needs_confirmation(default_binary: Path, make_sandbox, clean_env) -> None:
    sb = make_sandbox(default_binary)
    with pytest.raises(runbook.ParameterError, match="allow_restart"):
        durability.restart_test(_as_runner_sandbox(clean_env, sb), allow_restart=False)


def test_crash_measures_real_losses(server_binary: Path, make_sandbox, clean_env) -> None:
    sb = make_sandbox(server_binary)
    result = durability.crash_test(_as_runner_sandbox(clean_env, sb), crash_seconds=1.0)
    rows = {r["setup"]: r for r in result.crash_table}
    assert set(rows) == {s[0] for s in durability.CRASH_SETUPS}
    rdb, always = rows["rdb-only (default save policy)"], rows["aof always"]
    # RDB only, no save rule fires within a second: nothing written since the start comes back.
    assert rdb["acknowledged"] > 0 and rdb["recovered"] == 0
    # appendfsync always: every acknowledged write comes back.
    assert always["acknowledged"] > 0 and always["recovered"] == always["acknowledged"]
    assert checks_of(result)["aof_always_loses_nothing"] == "pass"


def test_crash_refused_for_a_real_target(default_binary: Path, make_sandbox, clean_env) -> None:
    sb = make_sandbox(default_binary)
    with pytest.raises(runbook.ParameterError, match="only against target sandbox"):
        durability.crash_test(runbook.connect(sb.url))
    assert sb.running


@pytest.mark.skipif(os.geteuid() != 0 or "redis" not in {p.pw_name for p in pwd.getpwall()},
                    reason="needs root and a 'redis' user to make the server's BGSAVE fail")
def test_misconf_is_reported_with_its_reason(default_binary: Path, make_sandbox, clean_env) -> None:
    sb = make_sandbox(default_binary, run_as="redis")
    populate(sb.client(), 100)
    os.chown(sb.data_dir, 0, 0)
    sb.data_dir.chmod(0o755)
    sb.client().bgsave()
    deadline = time.monotonic() + 10
    while sb.client().info("persistence")["rdb_last_bgsave_status"] != "err" and time.monotonic() < deadline:
        time.sleep(0.05)
    result = durability.online_test(runbook.connect(sb.url), keys=10)
    check = next(c for c in result.checks if c.name == "writes_accepted")
    assert check.status == "fail" and "MISCONF" in check.observed and "rdb_last_bgsave_status:err" in check.observed
    assert result.verdict == "fail"


@pytest.mark.notebook
def test_notebook_modes_through_the_runner(default_binary: Path, make_sandbox, clean_env, tmp_path: Path) -> None:
    env = {"RUNBOOK_REDIS_SERVER": str(default_binary)}
    rc, out, err = run_json(tmp_path, "enable-aof", "persist-config", "test-persistence", "-p", "apply", "true",
                            "-p", "mode", "restart", "-p", "allow_restart", "true", env=env)
    assert rc == 0, err
    summary = out["steps"][2]["summary"]
    assert summary["mode"] == "restart" and summary["loaded_from"] == "AOF"
    assert summary["canaries_found"] == summary["canaries_written"] == 1000
    assert summary["dbsize_after"] == summary["dbsize_before"]

    rc, out, err = run_json(tmp_path, "test-persistence", "-p", "mode", "crash", "-p", "crash_seconds", "0.5",
                            "-p", "apply", "true", env=env)
    assert rc == 0, err
    crash = {r["setup"]: r for r in out["steps"][0]["summary"]["crash"]}
    assert crash["aof always"]["lost"] == 0 and crash["rdb-only (default save policy)"]["lost"] > 0

    real = make_sandbox(default_binary)  # a live server that is not the runbook's sandbox
    rc, out, _ = run_json(tmp_path, "test-persistence", "-p", "target", real.url, "-p", "mode", "crash")
    assert rc == 2
    assert "ParameterError" in out["steps"][0]["summary"]["error"] and "only against target sandbox" in \
        out["steps"][0]["summary"]["error"]
    assert real.running and real.client().ping()
    assert [r["status"] for r in index(tmp_path)][-1] == "error"


def test_restart_refused_with_a_stale_aof(default_binary: Path, make_sandbox, clean_env) -> None:
    """AOF turned off at runtime after it ran: the old AOF would be loaded and newer writes lost."""
    from runbook.sandbox.throwaway import SEED_CONFIG

    sb = make_sandbox(default_binary, config=SEED_CONFIG.replace("appendonly no", "appendonly yes"))
    client = sb.client()
    client.set("old", "1")
    client.config_set("appendonly", "no")
    client.set("new", "1")
    client.save()
    target = _as_runner_sandbox(clean_env, sb)
    pid = client.info("server")["process_id"]
    with pytest.raises(runbook.PreconditionFailed, match="old or empty AOF"):
        durability.restart_test(target, allow_restart=True, keys=10)
    assert client.info("server")["process_id"] == pid and client.get("new") == "1"


@pytest.mark.parametrize("slots", [(0, 16383), (8192, 16383)], ids=["all-slots", "half-the-slots"])
def test_online_test_on_a_cluster_node_keeps_canaries_in_its_own_slot(default_binary: Path, make_sandbox,
                                                                      slots: tuple[int, int]) -> None:
    config = SEED_CONFIG + "\ncluster-enabled yes\ncluster-require-full-coverage no\n"
    sb = make_sandbox(default_binary, config=config)
    sb.client().execute_command("CLUSTER", "ADDSLOTSRANGE", *slots)
    deadline = time.monotonic() + 10
    while "cluster_state:ok" not in sb.client().execute_command("CLUSTER", "INFO") and time.monotonic() < deadline:
        time.sleep(0.05)
    result = durability.online_test(runbook.connect(sb.url), keys=300)
    assert result.verdict != "fail", [c for c in result.checks if c.status == "fail"]
    assert result.figures["canaries_found"] == result.figures["canaries_written"] == 300
    assert result.figures["canaries_left"] == 0
    tag = result.figures["canary_prefix"].split("{")[1].split("}")[0]
    assert slots[0] <= sb.client().execute_command("CLUSTER", "KEYSLOT", tag) <= slots[1]
