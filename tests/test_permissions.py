"""Missing rights are blocked (exit 3, with the commands a person with the rights runs), never failed (issue 15,
item 6): an ACL user without config|rewrite or config|set, a config directory on a read-only mount, a config
directory the server user may not write."""

from __future__ import annotations

import dataclasses
import hashlib
import subprocess
from pathlib import Path

import pytest
from helpers import has_redis_user, needs_redis_user_reason, run_json, switch_aof_on, wait_for_port

import runbook
from runbook.sandbox.seed import populate
from runbook.sandbox.throwaway import SEED_CONFIG, free_port
from runbook.server.configfile import read_config
from runbook.steps import persist_config as persist

PASSWORD = "app-pw-3f9"
#: An application user: everything but CONFIG, except CONFIG GET and SET (works on 6.2, 7.0 and Valkey 9).
NO_REWRITE = "user app on >{pw} ~* &* +@all -config +config|get +config|set"
#: The same without CONFIG SET.
NO_SET = "user app on >{pw} ~* &* +@all -config +config|get"
USERS = "user default on nopass ~* &* +@all\n{app}\n"


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def app_env() -> dict[str, str]:
    return {"REDIS_PASSWORD": PASSWORD}


def with_users(app: str) -> str:
    """The seed's config with the default user and `app` defined in the file (so a copy of it boots with them)."""
    return SEED_CONFIG + USERS.format(app=app.format(pw=PASSWORD))


def seed_with_user(make_sandbox, binary: Path, app: str, *, aof: bool = True, **kwargs):
    sb = make_sandbox(binary, config=with_users(app), **kwargs)
    populate(sb.client(), 200)
    sb.client().save()
    if aof:
        switch_aof_on(sb.client())
    return sb


# --- ACL: no config|rewrite -----------------------------------------------------------------------

@pytest.mark.notebook
def test_auto_edits_when_the_acl_user_may_not_rewrite(server_binary: Path, make_sandbox, clean_env,
                                                       tmp_path: Path) -> None:
    """Redis 7 and Valkey 9 know it up front (ACL DRYRUN); Redis 6.2 learns it from CONFIG REWRITE's NOPERM."""
    sb = seed_with_user(make_sandbox, server_binary, NO_REWRITE)
    rc, out, err = run_json(tmp_path, "persist-config", "-p", "target", sb.url, "-p", "username", "app",
                            "-p", "apply", "true", env=app_env())
    assert rc == 0, err
    summary = out["steps"][0]["summary"]
    assert summary["result"] == "changed" and summary["method"] == "edit"
    assert "config|rewrite" in summary["reason"] or "CONFIG REWRITE" in summary["reason"]
    assert read_config(sb.config_path).value("appendonly") == "yes"
    assert summary["checks"]["file_boots"]["status"] == "pass"


@pytest.mark.notebook
def test_method_rewrite_without_the_acl_right_is_blocked_with_commands(server_binary: Path, make_sandbox, clean_env,
                                                                        tmp_path: Path) -> None:
    sb = seed_with_user(make_sandbox, server_binary, NO_REWRITE)
    before = sha(sb.config_path)
    rc, out, err = run_json(tmp_path, "persist-config", "-p", "target", sb.url, "-p", "username", "app",
                            "-p", "method", "rewrite", "-p", "apply", "true", env=app_env())
    assert rc == 3, err
    summary = out["steps"][0]["summary"]
    assert summary["verdict"] == "blocked" and summary["result"] == "blocked"
    assert "ACL SETUSER app '+config|rewrite'" in summary["commands"]
    assert "sudo patch" in summary["commands"] and "+appendonly yes" in summary["commands"]
    assert "write access" not in summary.get("error", "")
    assert sha(sb.config_path) == before
    assert list(sb.root.glob("*.bak")) == []


def test_acl_dryrun_decides_before_anything_is_sent(default_binary: Path, make_sandbox, clean_env) -> None:
    """On 7.0+ the plan already knows (nothing is tried); a user that may not run ACL DRYRUN leaves it open."""
    sb = seed_with_user(make_sandbox, default_binary, NO_REWRITE)
    clean_env.setenv("REDIS_PASSWORD", PASSWORD)
    target = runbook.connect(runbook.ConnectionSpec(target=sb.url, username="app"))
    plan = persist.plan_persist(target, method="rewrite")
    assert plan.method == "blocked" and "may not run CONFIG REWRITE" in plan.reason
    auto = persist.plan_persist(target)
    assert auto.method == "edit" and "may not run CONFIG REWRITE" in auto.reason


# --- the server may not write its config directory --------------------------------------------------

@pytest.mark.notebook
def test_config_dir_on_a_read_only_mount_is_blocked(default_binary: Path, clean_env, tmp_path: Path) -> None:
    conf_dir, data = tmp_path / "conf", tmp_path / "data"
    conf_dir.mkdir()
    data.mkdir()
    port = free_port()
    conf = conf_dir / "redis.conf"
    conf.write_text(SEED_CONFIG + f'port {port}\nbind 127.0.0.1\ndir "{data}"\nlogfile "{tmp_path}/redis.log"\n'
                    f'pidfile "{tmp_path}/redis.pid"\n')
    mounted = subprocess.run(["mount", "--bind", str(conf_dir), str(conf_dir)], capture_output=True).returncode == 0
    if not mounted:
        pytest.skip("cannot bind-mount here (needs root and CAP_SYS_ADMIN)")
    proc = None
    try:
        if subprocess.run(["mount", "-o", "remount,bind,ro", str(conf_dir)], capture_output=True).returncode:
            pytest.skip("cannot remount read-only here")
        proc = subprocess.Popen([str(default_binary), str(conf)], cwd=tmp_path, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        assert wait_for_port("127.0.0.1", port, 20, proc)
        url = f"redis://127.0.0.1:{port}/0"
        client = runbook.connect(url).client
        populate(client, 100)
        client.save()
        switch_aof_on(client)
        before = sha(conf)
        for method in ("auto", "rewrite"):
            rc, out, err = run_json(tmp_path / f"archive-{method}", "persist-config", "-p", "target", url,
                                    "-p", "method", method, "-p", "apply", "true")
            assert rc == 3, (method, err)
            summary = out["steps"][0]["summary"]
            assert summary["verdict"] == "blocked" and "read-only" in summary["reason"], summary["reason"]
            assert "remount" in summary["commands"] and "sudo patch" in summary["commands"]
            assert sha(conf) == before
    finally:
        if proc is not None:
            proc.kill()
            proc.wait(10)
        subprocess.run(["umount", str(conf_dir)], capture_output=True)


@pytest.mark.skipif(not has_redis_user, reason=needs_redis_user_reason)
@pytest.mark.notebook
def test_method_rewrite_when_the_server_user_may_not_write_the_dir_is_blocked(default_binary: Path, make_sandbox,
                                                                              clean_env, tmp_path: Path) -> None:
    sb = seed_with_user(make_sandbox, default_binary, NO_REWRITE, run_as="redis")
    before = sha(sb.config_path)
    rc, out, err = run_json(tmp_path, "persist-config", "-p", "target", sb.url, "-p", "method", "rewrite",
                            "-p", "apply", "true")
    assert rc == 3, err
    summary = out["steps"][0]["summary"]
    assert summary["verdict"] == "blocked" and "cannot write" in summary["reason"]
    assert "sudo patch" in summary["commands"]
    assert sha(sb.config_path) == before


@pytest.mark.skipif(not has_redis_user, reason=needs_redis_user_reason)
def test_a_rewrite_refused_for_rights_at_apply_time_is_blocked(default_binary: Path, make_sandbox, clean_env) -> None:
    """When only the server can tell (a remote target's own file): its Permission denied is blocked, exit 3."""
    sb = seed_with_user(make_sandbox, default_binary, NO_REWRITE, run_as="redis")
    remote = dataclasses.replace(runbook.connect(sb.url), local=False)
    plan = persist.plan_persist(remote, config_file=str(sb.config_path), method="rewrite")
    assert plan.method == "rewrite"
    before = sha(sb.config_path)
    result = persist.apply_persist(remote, plan, apply=True)
    assert result.result == "blocked" and "Permission denied" in result.reason
    assert "sudo patch" in result.commands
    with pytest.raises(runbook.Blocked, match="Permission denied"):
        persist.raise_if_blocked(remote, plan, result)
    assert sha(sb.config_path) == before and list(sb.root.glob("*.bak")) == []


# --- enable-aof: no config|set ------------------------------------------------------------------------

@pytest.mark.notebook
def test_enable_aof_without_config_set_is_blocked_with_the_command(server_binary: Path, make_sandbox, clean_env,
                                                                   tmp_path: Path) -> None:
    sb = seed_with_user(make_sandbox, server_binary, NO_SET, aof=False)
    rc, out, err = run_json(tmp_path, "enable-aof", "-p", "target", sb.url, "-p", "username", "app",
                            "-p", "apply", "true", env=app_env())
    assert rc == 3, err
    summary = out["steps"][0]["summary"]
    assert summary["verdict"] == "blocked"
    assert "ACL SETUSER app '+config|set'" in summary["error"]
    assert "Server log" not in summary["error"] and "Server log" not in err
    assert sb.client().info("persistence")["aof_enabled"] == 0
    assert sb.client().config_get("appendfsync")["appendfsync"] == "everysec"
