"""02-enable-aof against real servers: plan, apply, idempotence, refusals and failures that leave the server
as found."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import pytest

import runbook
from runbook.sandbox.seed import populate
from runbook.sandbox.throwaway import SEED_CONFIG
from runbook.steps import enable_aof as enable

KEYS = 200_000


def _status(checks, name: str) -> str:
    return next(c.status for c in checks if c.name == name)


def test_plan_apply_and_second_run_unchanged(server_binary: Path, make_sandbox, clean_env) -> None:
    sb = make_sandbox(server_binary)
    client = sb.client()
    populate(client, KEYS)
    client.save()
    target = runbook.connect(sb.url, command_timeout_s=60)

    pre = enable.preflight(target)
    plan = enable.plan_enable(pre)
    assert [(r.setting, r.current, r.desired) for r in plan.changes] == [("appendonly", "no", "yes")]
    planned = enable.apply_enable(target, pre, plan, apply=False)
    assert planned.result == "planned"
    assert client.config_get("appendonly")["appendonly"] == "no"
    assert _status(enable.verify_enable(target, pre, plan, planned).checks, "nothing_changed") == "pass"

    result = enable.apply_enable(target, pre, plan, apply=True, timeout_s=120)
    info = client.info("persistence")
    assert result.result == "changed" and info["aof_enabled"] == 1
    assert info["aof_rewrite_in_progress"] == 0 and info["aof_last_bgrewrite_status"] == "ok"
    verified = enable.verify_enable(target, pre, plan, result)
    assert {c.name: c.status for c in verified.checks} == {
        "aof_enabled": "pass", "aof_last_write_status": "pass", "aof_last_bgrewrite_status": "pass",
        "settings": "pass", "dbsize": "pass", "aof_on_disk": "pass"}
    assert verified.dbsize == KEYS == client.dbsize()
    # The probe's figures come from the server and the clock, not from constants.
    assert result.latency.count > 0 and result.latency.errors == 0
    assert result.latest_fork_usec == client.info("stats")["latest_fork_usec"] > 0
    assert result.rewrite_s == float(info["aof_last_rewrite_time_sec"])
    assert result.seconds > 0

    again_pre = enable.preflight(target)
    again = enable.plan_enable(again_pre)
    assert again.unchanged
    assert enable.apply_enable(target, again_pre, again, apply=True).result == "unchanged"


def test_fsync_change_on_running_aof_needs_no_rewrite(default_binary: Path, make_sandbox, clean_env) -> None:
    sb = make_sandbox(default_binary)
    switch_aof_on(sb.client())
    target = runbook.connect(sb.url)
    pre = enable.preflight(target)
    plan = enable.plan_enable(pre, appendfsync="always", aof_settings={"auto-aof-rewrite-percentage": 50})
    assert sorted(r.setting for r in plan.changes) == ["appendfsync", "auto-aof-rewrite-percentage"]
    assert enable.apply_enable(target, pre, plan, apply=True, timeout_s=30).result == "changed"
    assert sb.client().config_get("appendfsync")["appendfsync"] == "always"
    assert sb.client().config_get("auto-aof-rewrite-percentage")["auto-aof-rewrite-percentage"] == "50"


@pytest.mark.parametrize("kwargs, message", [
    ({"appendfsync": "sometimes"}, "appendfsync must be one of"),
    ({"aof_settings": {"appendonly": "no"}}, "unknown: appendonly"),
])
def test_bad_plan_parameters(default_binary: Path, make_sandbox, clean_env, kwargs, message) -> None:
    sb = make_sandbox(default_binary)
    pre = enable.preflight(runbook.connect(sb.url))
    with pytest.raises(runbook.ParameterError, match=message):
        enable.plan_enable(pre, **kwargs)


def test_replica_is_refused_and_untouched(server_binary: Path, make_sandbox, clean_env) -> None:
    master = make_sandbox(server_binary)
    replica = make_sandbox(server_binary, config=SEED_CONFIG + f"replicaof 127.0.0.1 {master.port}\n")
    target = runbook.connect(replica.url)
    pre = enable.preflight(target)
    assert _status(pre.checks, "role") == "fail"
    with pytest.raises(runbook.PreconditionFailed, match="replica.*allow_replica"):
        enable.apply_enable(target, pre, enable.plan_enable(pre), apply=True)
    assert replica.client().config_get("appendonly")["appendonly"] == "no"
    assert _status(enable.preflight(target, allow_replica=True).checks, "role") == "warn"


def test_busy_server_is_refused_after_a_short_wait(default_binary: Path, make_sandbox, clean_env) -> None:
    sb = make_sandbox(default_binary)
    populate(sb.client(), 50_000)
    sb.client().config_set("rdb-key-save-delay", 200)  # makes the BGSAVE below take a while
    sb.client().bgsave()
    pre = enable.preflight(runbook.connect(sb.url), busy_wait_s=0.3)
    assert _status(pre.checks, "no_save_or_rewrite_running") == "fail"
    with pytest.raises(runbook.PreconditionFailed, match="rdb_bgsave_in_progress"):
        enable.require(pre)
    sb.client().config_set("rdb-key-save-delay", 0)


def _unwritable_dir(sb, keep_aof_dir: bool) -> None:
    """Leave the data dir to root, so the server (user redis) cannot create files in it."""
    if keep_aof_dir:
        aof_dir = sb.data_dir / "appendonlydir"
        aof_dir.mkdir()
        pw = pwd.getpwnam("redis")
        os.chown(aof_dir, pw.pw_uid, pw.pw_gid)
    os.chown(sb.data_dir, 0, 0)
    sb.data_dir.chmod(0o755)


needs_redis_user = pytest.mark.skipif(
    os.geteuid() != 0 or not any(p.pw_name == "redis" for p in pwd.getpwall()),
    reason="needs root and a 'redis' user (apt-get install redis-server creates it) to run a server as another user",
)


@needs_redis_user
@pytest.mark.parametrize("keep_aof_dir", [False, True], ids=["refused-at-config-set", "rewrite-fails"])
def test_failed_rewrite_leaves_server_as_found(server_binary: Path, make_sandbox, clean_env, keep_aof_dir) -> None:
    sb = make_sandbox(server_binary, run_as="redis")
    populate(sb.client(), 2000)
    sb.client().save()
    _unwritable_dir(sb, keep_aof_dir)
    target = runbook.connect(sb.url)
    pre = enable.preflight(target)
    with pytest.raises(runbook.ChangeFailed) as err:
        enable.apply_enable(target, pre, enable.plan_enable(pre), apply=True, timeout_s=20)
    text = str(err.value)
    assert "Permission denied" in text and sb.url in text
    assert "left as found" in text or "Nothing had been changed" in text
    client = sb.client()
    assert client.config_get("appendonly")["appendonly"] == "no"
    assert client.info("persistence")["aof_enabled"] == 0
    assert client.dbsize() == 2000


def test_renamed_config_command_is_used_for_the_change(default_binary: Path, make_sandbox, clean_env) -> None:
    sb = make_sandbox(default_binary, config=SEED_CONFIG + "rename-command CONFIG RB-CONFIG-7f\n")
    target = runbook.connect(sb.url, config_command="RB-CONFIG-7f")
    pre = enable.preflight(target)
    result = enable.apply_enable(target, pre, enable.plan_enable(pre), apply=True, timeout_s=30)
    assert result.result == "changed"
    assert sb.client().info("persistence")["aof_enabled"] == 1


# -- through the runner, as cron or CI runs it ------------------------------------------------

from helpers import index, run_json, switch_aof_on  # noqa: E402


@pytest.mark.notebook
def test_notebook_apply_then_unchanged(default_binary: Path, make_sandbox, clean_env, tmp_path: Path) -> None:
    sb = make_sandbox(default_binary)
    populate(sb.client(), 20_000)
    sb.client().save()
    rc, out, err = run_json(tmp_path, "enable-aof", "-p", "target", sb.url)
    assert rc == 0, err
    assert out["steps"][0]["summary"]["result"] == "planned"
    assert sb.client().config_get("appendonly")["appendonly"] == "no"

    rc, out, err = run_json(tmp_path, "enable-aof", "-p", "target", sb.url, "-p", "apply", "true")
    assert rc == 0, err
    summary = out["steps"][0]["summary"]
    assert summary["result"] == "changed"
    assert summary["dbsize_before"] == summary["dbsize"] == 20_000 == sb.client().dbsize()
    assert summary["drift_after"] == ["appendonly"]  # not yet permanent: said plainly
    assert summary["latency"]["samples"] > 0
    assert sb.client().info("persistence")["aof_enabled"] == 1

    rc, out, err = run_json(tmp_path, "enable-aof", "-p", "target", sb.url, "-p", "apply", "true")
    assert rc == 0, err
    assert out["steps"][0]["summary"]["result"] == "unchanged"
    assert [r["summary"]["result"] for r in index(tmp_path)] == ["planned", "changed", "unchanged"]


@pytest.mark.notebook
@needs_redis_user
def test_notebook_failure_is_archived_and_server_left_as_found(default_binary: Path, make_sandbox, clean_env,
                                                              tmp_path: Path) -> None:
    sb = make_sandbox(default_binary, run_as="redis")
    populate(sb.client(), 500)
    sb.client().save()
    _unwritable_dir(sb, keep_aof_dir=True)
    rc, out, _ = run_json(tmp_path, "enable-aof", "-p", "target", sb.url, "-p", "apply", "true",
                          "-p", "timeout_s", "20")
    assert rc == 1
    step = out["steps"][0]
    assert step["status"] == "error" and "ChangeFailed" in step["summary"]["error"]
    assert "Permission denied" in step["summary"]["error"]
    assert index(tmp_path)[0]["status"] == "error" and Path(step["ipynb"]).exists()
    assert sb.client().info("persistence")["aof_enabled"] == 0


@pytest.mark.notebook
def test_notebook_refuses_a_replica(default_binary: Path, make_sandbox, clean_env, tmp_path: Path) -> None:
    master = make_sandbox(default_binary)
    replica = make_sandbox(default_binary, config=SEED_CONFIG + f"replicaof 127.0.0.1 {master.port}\n")
    rc, out, _ = run_json(tmp_path, "enable-aof", "-p", "target", replica.url, "-p", "apply", "true")
    assert rc == 1
    assert "PreconditionFailed" in out["steps"][0]["summary"]["error"]
    assert "allow_replica" in out["steps"][0]["summary"]["error"]
    assert replica.client().config_get("appendonly")["appendonly"] == "no"
