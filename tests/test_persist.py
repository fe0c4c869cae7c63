"""03-persist-config against real servers and real files: the seed's fix, the trap, blocked cases."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers import index, run_json, switch_aof_on

import runbook
from runbook.sandbox.seed import populate
from runbook.sandbox.throwaway import SEED_CONFIG
from runbook.server.configfile import read_config
from runbook.steps import persist_config as persist

DEBIAN_CONF = Path("/etc/redis/redis.conf")


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def seed_state(make_sandbox, binary: Path, keys: int = 1000, **kwargs):
    """The seed's server: RDB saved, AOF switched on with CONFIG SET, `appendonly no` in the file."""
    sb = make_sandbox(binary, **kwargs)
    populate(sb.client(), keys)
    sb.client().save()
    switch_aof_on(sb.client())
    return sb


def status(checks, name: str) -> str:
    return next(c.status for c in checks if c.name == name)


@pytest.mark.parametrize("method", ["rewrite", "edit"])
def test_seed_state_made_permanent_survives_restart(server_binary: Path, make_sandbox, clean_env, method) -> None:
    sb = seed_state(make_sandbox, server_binary)
    target = runbook.connect(sb.url)
    plan = persist.plan_persist(target, method=method)
    assert plan.method == method
    assert {c.setting for c in plan.changes} == {"appendonly", "appendfsync"}
    result = persist.apply_persist(target, plan, apply=True)
    assert result.result == "changed" and Path(result.backup).exists()
    assert "appendonly no" in Path(result.backup).read_text()
    config = read_config(sb.config_path)
    assert config.value("appendonly") == "yes"
    assert config.value("appendfsync") in ("everysec", None)  # CONFIG REWRITE leaves defaults out
    if method == "edit":
        assert config.value("appendfsync") == "everysec"
        assert "+appendonly yes" in result.diff and "-appendonly no" in result.diff
    checks = persist.verify_persist(target, plan, result)
    assert {c.name: c.status for c in checks} == {"no_drift": "pass", "file_boots": "pass"}
    # Idempotent: nothing left to do.
    assert persist.plan_persist(runbook.connect(sb.url), method=method).unchanged
    sb.restart()
    assert sb.client().dbsize() == 1000
    assert sb.client().info("persistence")["aof_enabled"] == 1


def test_the_trap_is_refused_and_nothing_is_touched(server_binary: Path, make_sandbox, clean_env) -> None:
    sb = make_sandbox(server_binary)
    populate(sb.client(), 300)
    sb.client().save()
    before = sha(sb.config_path)
    target = runbook.connect(sb.url)
    with pytest.raises(runbook.PreconditionFailed, match="AOF is off at runtime.*02-enable-aof") as err:
        persist.plan_persist(target, method="edit", settings={"appendonly": "yes"})
    assert "not touched" in str(err.value)
    assert sha(sb.config_path) == before
    assert sb.client().config_get("appendonly")["appendonly"] == "no"
    assert list(sb.config_path.parent.glob("*.bak")) == []
    # And the restart it protects against really would lose everything (the fact behind the guard).
    text = sb.config_path.read_text().replace("appendonly no", "appendonly yes")
    sb.config_path.write_text(text)
    sb.restart()
    assert sb.client().dbsize() == 0


def test_unfinished_rewrite_is_refused(default_binary: Path, make_sandbox, clean_env) -> None:
    sb = make_sandbox(default_binary)
    populate(sb.client(), 20_000)
    sb.client().config_set("rdb-key-save-delay", 500)  # the initial rewrite now takes seconds
    sb.client().config_set("appendonly", "yes")
    before = sha(sb.config_path)
    try:
        with pytest.raises(runbook.PreconditionFailed, match="initial AOF rewrite has not completed"):
            persist.plan_persist(runbook.connect(sb.url))
        assert sha(sb.config_path) == before
    finally:
        sb.client().config_set("rdb-key-save-delay", 0)


def test_plan_only_changes_nothing(default_binary: Path, make_sandbox, clean_env) -> None:
    sb = seed_state(make_sandbox, default_binary)
    before, runtime = sha(sb.config_path), sb.client().config_get("*")
    target = runbook.connect(sb.url)
    plan = persist.plan_persist(target)
    result = persist.apply_persist(target, plan, apply=False)
    assert result.result == "planned"
    assert status(persist.verify_persist(target, plan, result), "file_untouched") == "pass"
    assert "+appendonly yes" in plan.diff
    assert sha(sb.config_path) == before and sb.client().config_get("*") == runtime
    assert list(sb.config_path.parent.glob("*.bak")) == []


def test_no_config_file_is_blocked_with_commands(default_binary: Path, make_sandbox, clean_env) -> None:
    sb = make_sandbox(default_binary, config=None)
    switch_aof_on(sb.client())
    target = runbook.connect(sb.url)
    plan = persist.plan_persist(target)
    assert plan.method == "blocked" and "without a config file" in plan.reason
    assert "appendonly yes" in plan.commands
    result = persist.apply_persist(target, plan, apply=True)
    assert result.result == "blocked"
    with pytest.raises(runbook.Blocked, match="Nothing was changed"):
        persist.raise_if_blocked(target, plan, result)


needs_root_and_redis_user = pytest.mark.skipif(
    shutil.which("setpriv") is None or not Path("/etc/passwd").read_text().count("\nredis:"),
    reason="needs setpriv and a 'redis' user (apt-get install redis-server creates it)",
)


@needs_root_and_redis_user
def test_server_cannot_write_config_dir(default_binary: Path, make_sandbox, clean_env) -> None:
    """Running as `redis`, the server cannot create its temp file in a root-owned config dir."""
    sb = seed_state(make_sandbox, default_binary, run_as="redis")
    target = runbook.connect(sb.url)
    rewrite = persist.plan_persist(target, method="rewrite")
    assert rewrite.method == "blocked" and "cannot write" in rewrite.reason  # known before trying: exit 3
    before = sha(sb.config_path)
    assert persist.apply_persist(target, rewrite, apply=True).result == "blocked"
    assert sha(sb.config_path) == before
    auto = persist.plan_persist(target, method="auto")
    assert auto.method == "edit" and "cannot write" in auto.reason
    result = persist.apply_persist(target, auto, apply=True)
    assert result.result == "changed"
    assert read_config(sb.config_path).value("appendonly") == "yes"
    assert sb.config_path.stat().st_uid == 0 and oct(sb.config_path.stat().st_mode & 0o777) == oct(0o644)


def _immutable(path: Path, on: bool) -> bool:
    return subprocess.run(["chattr", "+i" if on else "-i", str(path)], capture_output=True).returncode == 0


@needs_root_and_redis_user
@pytest.mark.notebook
def test_nobody_may_write_is_blocked_exit_3(default_binary: Path, make_sandbox, clean_env, tmp_path: Path) -> None:
    sb = seed_state(make_sandbox, default_binary, run_as="redis")
    if shutil.which("chattr") is None or not _immutable(sb.root, True):
        pytest.skip("chattr +i is not available on this filesystem")
    try:
        before = sha(sb.config_path)
        rc, out, err = run_json(tmp_path, "persist-config", "-p", "target", sb.url, "-p", "apply", "true")
        assert rc == 3, err
        summary = out["steps"][0]["summary"]
        assert summary["verdict"] == "blocked" and summary["method"] == "blocked"
        assert "sudo patch" in summary["commands"] and "+appendonly yes" in summary["commands"]
        assert index(tmp_path)[0]["status"] == "blocked"
        assert sha(sb.config_path) == before
    finally:
        _immutable(sb.root, False)


@pytest.mark.skipif(not DEBIAN_CONF.exists(), reason="Debian's stock /etc/redis/redis.conf is not installed")
def test_debian_stock_config_edit_changes_only_intended_lines(default_binary: Path, make_sandbox, clean_env) -> None:
    stock = DEBIAN_CONF.read_text()
    sb = seed_state(make_sandbox, default_binary, config=stock)
    target = runbook.connect(sb.url)
    plan = persist.plan_persist(target, method="edit")
    changed = [ln for ln in plan.diff.splitlines() if ln[:1] in "+-" and not ln.startswith(("+++", "---"))]
    assert changed == ["-appendonly no", "+appendonly yes"]  # appendfsync everysec is already explicit there
    result = persist.apply_persist(target, plan, apply=True)
    after = sb.config_path.read_text()
    assert len(after.splitlines()) == len(sb.config_path.with_name(Path(result.backup).name).read_text().splitlines())
    assert status(persist.verify_persist(target, plan, result), "file_boots") == "pass"


def test_setting_in_an_include_is_edited_where_it_lives(default_binary: Path, make_sandbox, clean_env,
                                                        tmp_path: Path) -> None:
    inc = tmp_path / "persistence.conf"
    inc.write_text("# persistence\r\nappendonly no\r\nappendfsync everysec\r\n")
    main = SEED_CONFIG.replace("appendonly no\n", "") + f'include "{inc}"\n'
    sb = seed_state(make_sandbox, default_binary, config=main)
    main_before = sha(sb.config_path)
    target = runbook.connect(sb.url)
    plan = persist.plan_persist(target)
    assert plan.method == "edit" and "include" in plan.reason
    persist.apply_persist(target, plan, apply=True)
    assert sha(sb.config_path) == main_before
    assert inc.read_bytes() == b"# persistence\r\nappendonly yes\r\nappendfsync everysec\r\n"
    assert status(persist.verify_persist(target, plan, persist.PersistResult("changed", "edit")), "no_drift") == "pass"


@pytest.mark.notebook
def test_enable_then_persist_in_one_run(default_binary: Path, make_sandbox, clean_env, tmp_path: Path) -> None:
    sb = make_sandbox(default_binary)
    populate(sb.client(), 5000)
    sb.client().save()
    rc, out, err = run_json(tmp_path, "enable-aof", "persist-config", "-p", "target", sb.url, "-p", "apply", "true")
    assert rc == 0, err
    enable_step, persist_step = out["steps"]
    assert enable_step["summary"]["result"] == "changed" and persist_step["summary"]["result"] == "changed"
    assert persist_step["summary"]["checks"]["file_boots"]["status"] == "pass"
    assert Path(persist_step["summary"]["backup"]).exists()
    assert len({r["change_id"] for r in index(tmp_path)}) == 1
    sb.restart()
    assert sb.client().dbsize() == 5000 and sb.client().info("persistence")["aof_enabled"] == 1


def test_rewrite_guards_the_runtime_appendonly_it_writes(default_binary: Path, make_sandbox, clean_env) -> None:
    """CONFIG REWRITE writes every runtime setting: asking for another setting must not slip appendonly yes in."""
    sb = make_sandbox(default_binary)
    populate(sb.client(), 20_000)
    sb.client().config_set("rdb-key-save-delay", 500)
    sb.client().config_set("appendonly", "yes")  # initial rewrite still running
    before = sha(sb.config_path)
    try:
        with pytest.raises(runbook.PreconditionFailed, match="CONFIG REWRITE would write the runtime appendonly"):
            persist.plan_persist(runbook.connect(sb.url), method="rewrite", settings={"appendfsync": "always"})
        assert sha(sb.config_path) == before
    finally:
        sb.client().config_set("rdb-key-save-delay", 0)


def test_rewrite_keeps_the_file_mode(default_binary: Path, make_sandbox, clean_env) -> None:
    sb = seed_state(make_sandbox, default_binary, password="pw-in-file")
    sb.config_path.chmod(0o640)
    clean_env.setenv("REDIS_PASSWORD", "pw-in-file")
    target = runbook.connect(sb.url)
    plan = persist.plan_persist(target, method="rewrite")
    result = persist.apply_persist(target, plan, apply=True)
    assert result.result == "changed"
    assert oct(sb.config_path.stat().st_mode & 0o777) == oct(0o640)  # CONFIG REWRITE had made it 0644
    assert "pw-in-file" not in result.diff and "pw-in-file" not in plan.diff
