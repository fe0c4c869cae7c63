"""05-backup and 06-rollback against real servers."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest
from helpers import index, run_json, switch_aof_on

import runbook
from runbook.model import Outcome
from runbook.sandbox.seed import populate
from runbook.steps import backup, rollback


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_backup_with_aof_manifest_and_restore_drill(server_binary: Path, make_sandbox, clean_env,
                                                    tmp_path: Path) -> None:
    sb = make_sandbox(server_binary)
    populate(sb.client(), 4000)
    switch_aof_on(sb.client())
    result = backup.take_backup(runbook.connect(sb.url), str(tmp_path / "bk"), apply=True, verify_restore=True)
    assert result.result == "done" and result.verdict == "pass", result.checks
    copy = Path(result.location)
    manifest = json.loads((copy / "MANIFEST.json").read_text())
    assert manifest["dbsize"] == 4000 and manifest["aof"] is True
    assert "dump.rdb" in manifest["files"]
    aof_files = [f for f in manifest["files"] if f != "dump.rdb"]
    assert aof_files, "the AOF was not copied"
    for rel, meta in manifest["files"].items():
        assert sha(copy / rel) == meta["sha256"] and (copy / rel).stat().st_size == meta["size"]
    checks = {c.name: c for c in result.checks}
    assert checks["restore_drill"].status == "pass" and "4000" in checks["restore_drill"].observed
    # The whole dataset: readable by its owner only.
    assert oct(copy.stat().st_mode & 0o777) == oct(0o700)
    assert all(oct((copy / rel).stat().st_mode & 0o777) == oct(0o600) for rel in manifest["files"])
    assert not list(copy.parent.glob("*.partial"))
    assert checks["check_rdb"].status == "pass"
    assert sb.client().config_get("auto-aof-rewrite-percentage")["auto-aof-rewrite-percentage"] == "100"


def test_retention_prunes_but_keeps_the_newest(default_binary: Path, make_sandbox, clean_env, tmp_path: Path) -> None:
    sb = make_sandbox(default_binary)
    populate(sb.client(), 100)
    target = runbook.connect(sb.url)
    made = [backup.take_backup(target, str(tmp_path / "bk"), apply=True, retention=2).location for _ in range(3)]
    left = sorted(p.name for p in (tmp_path / "bk").iterdir())
    assert left == sorted(Path(m).name for m in made[1:])
    (tmp_path / "bk" / "other-target-20200101T000000.000Z").mkdir()  # another target's backups are not ours
    backup.take_backup(target, str(tmp_path / "bk"), apply=True, retention=1)
    assert (tmp_path / "bk" / "other-target-20200101T000000.000Z").exists()


def test_rewrites_setting_restored_when_the_copy_fails(default_binary: Path, make_sandbox, clean_env, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    sb = make_sandbox(default_binary)
    switch_aof_on(sb.client())
    sb.client().config_set("auto-aof-rewrite-percentage", 150)
    real_copy = backup.shutil.copy2

    def failing_copy(src, dst, *a, **k):
        if "appendonlydir" in str(src):
            raise OSError(28, "No space left on device")
        return real_copy(src, dst, *a, **k)

    monkeypatch.setattr(backup.shutil, "copy2", failing_copy)
    with pytest.raises(OSError, match="No space left"):
        backup.take_backup(runbook.connect(sb.url), str(tmp_path / "bk"), apply=True)
    assert sb.client().config_get("auto-aof-rewrite-percentage")["auto-aof-rewrite-percentage"] == "150"
    assert not (tmp_path / "bk").exists() or not any((tmp_path / "bk").iterdir())


def test_plan_only_and_blocked(default_binary: Path, make_sandbox, clean_env, tmp_path: Path) -> None:
    sb = make_sandbox(default_binary)
    target = runbook.connect(sb.url)
    planned = backup.take_backup(target, str(tmp_path / "bk"))
    assert planned.result == "planned" and not (tmp_path / "bk").exists()
    remote = dataclasses.replace(target, local=False)  # a server on another host: its files are out of reach
    blocked = backup.take_backup(remote, str(tmp_path / "bk"), apply=True)
    assert blocked.result == "blocked" and "redis-cli BGSAVE" in blocked.commands
    with pytest.raises(runbook.Blocked):
        backup.raise_if_blocked(remote, blocked)


@pytest.mark.notebook
def test_rollback_after_run_all(default_binary: Path, make_sandbox, clean_env, tmp_path: Path) -> None:
    sb = make_sandbox(default_binary)
    populate(sb.client(), 2500)
    sb.client().save()
    original = sb.config_path.read_bytes()
    archive = tmp_path / "archive"
    rc, change, err = run_json(archive, "all", "-p", "target", sb.url, "-p", "apply", "true",
                               "-p", "destination", str(tmp_path / "backups"))
    assert rc == 0, err
    assert sb.client().info("persistence")["aof_enabled"] == 1 and sb.config_path.read_bytes() != original
    persisted = next(s["summary"] for s in change["steps"] if s["notebook"] == "persist-config")
    # The config backup carries the change id, and the file's sha256 before the write is on record.
    assert Path(persisted["backup"]).name.startswith(f"redis.conf.runbook-{change['change_id']}-")
    assert persisted["config_sha256_before"] == hashlib.sha256(original).hexdigest()
    data = next(s["summary"] for s in change["steps"] if s["notebook"] == "backup")

    rc, out, err = run_json(archive, "rollback", "-p", "target", sb.url)  # plan only first
    assert rc == 0, err
    assert out["steps"][0]["summary"]["result"] == "planned"
    assert sb.client().info("persistence")["aof_enabled"] == 1

    rc, out, err = run_json(archive, "rollback", "-p", "target", sb.url, "-p", "apply", "true")
    assert rc == 0, err
    summary = out["steps"][0]["summary"]
    assert summary["result"] == "done" and summary["change_id"] == change["change_id"]
    assert {k: v["status"] for k, v in summary["checks"].items()} == {
        "runtime_restored": "pass", "file_restored": "pass", "no_restart_trap": "pass", "state_restored": "pass"}
    assert "byte for byte the file before the change" in summary["checks"]["file_restored"]["observed"]
    assert sb.config_path.read_bytes() == original  # the seed's file, byte for byte
    # The rollback names the data backup of the same change: where it is, and each file's sha256 (its manifest).
    manifest = json.loads((Path(data["location"]) / "MANIFEST.json").read_text())
    assert summary["data_backup"] == {"location": data["location"],
                                      "files": {n: m["sha256"] for n, m in manifest["files"].items()}}
    assert summary["data_backup"]["files"]["dump.rdb"] == sha(Path(data["location"]) / "dump.rdb")
    assert sb.client().config_get("appendonly")["appendonly"] == "no"
    sb.restart()
    assert sb.client().dbsize() == 2500


@pytest.mark.notebook
def test_rollback_blocked_after_a_hand_edit(default_binary: Path, make_sandbox, clean_env, tmp_path: Path) -> None:
    sb = make_sandbox(default_binary)
    populate(sb.client(), 100)
    archive = tmp_path / "archive"
    rc, _, err = run_json(archive, "enable-aof", "persist-config", "-p", "target", sb.url, "-p", "apply", "true")
    assert rc == 0, err
    with sb.config_path.open("a") as f:
        f.write("maxmemory-policy allkeys-lru\n")  # someone edits the file after the change
    edited = sha(sb.config_path)
    rc, out, _ = run_json(archive, "rollback", "-p", "target", sb.url, "-p", "apply", "true")
    assert rc == 3
    summary = out["steps"][0]["summary"]
    assert summary["verdict"] == "blocked" and "edited" in summary["blocked"]
    assert "maxmemory-policy" in summary["diff"]
    assert sha(sb.config_path) == edited and sb.client().info("persistence")["aof_enabled"] == 1


def test_backup_to_an_fsspec_url(default_binary: Path, make_sandbox, clean_env, tmp_path: Path) -> None:
    sb = make_sandbox(default_binary)
    populate(sb.client(), 50)
    result = backup.take_backup(runbook.connect(sb.url), f"file://{tmp_path}/remote", apply=True)
    assert result.location.startswith("file://")
    (copy,) = (tmp_path / "remote").iterdir()
    assert json.loads((copy / "MANIFEST.json").read_text())["dbsize"] == 50


@pytest.mark.notebook
def test_rollback_refuses_to_leave_the_trap(default_binary: Path, make_sandbox, clean_env, tmp_path: Path) -> None:
    """The file says appendonly yes (a person applied a patch): switching AOF off would set the trap."""
    sb = make_sandbox(default_binary)
    populate(sb.client(), 100)
    archive = tmp_path / "archive"
    rc, _, err = run_json(archive, "enable-aof", "-p", "target", sb.url, "-p", "apply", "true")
    assert rc == 0, err
    sb.config_path.write_text(sb.config_path.read_text().replace("appendonly no", "appendonly yes"))
    rc, out, _ = run_json(archive, "rollback", "-p", "target", sb.url, "-p", "apply", "true")
    assert rc == 3
    assert "would say appendonly yes while AOF is off" in out["steps"][0]["summary"]["blocked"]
    assert sb.client().info("persistence")["aof_enabled"] == 1


@pytest.mark.notebook
def test_rollback_puts_back_a_state_that_had_drift(default_binary: Path, make_sandbox, clean_env,
                                                    tmp_path: Path) -> None:
    """The seed: AOF on at runtime, appendonly no in the file. The change writes yes to the file; the rollback
    puts the file back, and with it the drift the change found: done, not failed."""
    sb = make_sandbox(default_binary)
    populate(sb.client(), 500)
    switch_aof_on(sb.client())
    original = sb.config_path.read_bytes()
    archive = tmp_path / "archive"
    rc, _, err = run_json(archive, "all", "-p", "target", sb.url, "-p", "apply", "true",
                          "-p", "destination", str(tmp_path / "backups"))
    assert rc == 0, err
    assert sb.config_path.read_bytes() != original

    rc, out, err = run_json(archive, "rollback", "-p", "target", sb.url, "-p", "apply", "true")
    assert rc == 0, (err, out.get("steps"))
    summary = out["steps"][0]["summary"]
    assert summary["result"] == "done" and summary["verdict"] == "warn"
    checks = summary["checks"]
    assert {k: v["status"] for k, v in checks.items()} == {
        "runtime_restored": "pass", "file_restored": "pass", "no_restart_trap": "pass", "state_restored": "warn"}
    assert checks["state_restored"]["observed"] == ("the state before the change is back: appendonly yes at "
                                                    "runtime, no in the file, as the change found it")
    assert summary["restored_drift"] == ["appendonly yes at runtime, no in the file"]
    assert sb.config_path.read_bytes() == original
    assert sb.client().config_get("appendonly")["appendonly"] == "yes"  # the change did not switch it on


def test_state_restored_fails_on_a_state_the_change_did_not_find(default_binary: Path, make_sandbox,
                                                                 clean_env) -> None:
    """Drift the change did not find, or runtime not put back, is a failed rollback, drift or not."""
    sb = make_sandbox(default_binary)
    switch_aof_on(sb.client())  # runtime yes, file no
    target = runbook.connect(sb.url)
    found_clean = rollback.RollbackPlan("c1", (), "", "", "", "", ())
    check = rollback.state_restored(target, found_clean)
    assert check.status == "fail" and "now appendonly yes at runtime, no in the file, before no drift" in check.observed
    found_drift = dataclasses.replace(found_clean, state_before=("appendonly yes at runtime, no in the file",))
    assert rollback.state_restored(target, found_drift).status == "warn"
    not_back = dataclasses.replace(found_drift, runtime=(("appendonly", "yes", "no"),))
    checks = {c.name: c for c in rollback.verify_rollback(target, not_back, Outcome.DONE)}
    assert checks["runtime_restored"].status == "fail" and checks["state_restored"].status == "warn"
    summary = rollback.rollback_summary(not_back, Outcome.DONE, tuple(checks.values()))
    assert summary.verdict == "fail"
    sb.client().config_set("appendonly", "no")
    assert rollback.state_restored(target, found_drift).status == "fail"


@pytest.mark.notebook
def test_rollback_refuses_a_backup_that_is_not_the_file_before_the_change(default_binary: Path, make_sandbox,
                                                                        clean_env, tmp_path: Path) -> None:
    """Issue 14: two changes once shared one backup name, the second copy (appendonly yes) replaced the original,
    and rollback then said `done` with the file still saying yes. The pre-change sha256 on record catches it."""
    sb = make_sandbox(default_binary)
    populate(sb.client(), 100)
    archive = tmp_path / "archive"
    rc, out, err = run_json(archive, "enable-aof", "persist-config", "-p", "target", sb.url, "-p", "apply", "true")
    assert rc == 0, err
    kept = Path(out["steps"][1]["summary"]["backup"])
    changed = sb.config_path.read_bytes()
    kept.write_bytes(changed)  # the backup now holds the changed file
    rc, out, _ = run_json(archive, "rollback", "-p", "target", sb.url, "-p", "apply", "true")
    assert rc == 3
    summary = out["steps"][0]["summary"]
    assert summary["verdict"] == "blocked" and "is not the file as it was before the change" in summary["blocked"]
    assert hashlib.sha256(changed).hexdigest() in summary["blocked"]
    assert sb.config_path.read_bytes() == changed and sb.client().info("persistence")["aof_enabled"] == 1


def test_file_restored_fails_when_the_bytes_are_not_the_recorded_ones(tmp_path: Path) -> None:
    conf, bak = tmp_path / "redis.conf", tmp_path / "redis.conf.runbook-c1-S.bak"
    conf.write_text("appendonly yes\n")
    bak.write_text("appendonly yes\n")
    plan = rollback.RollbackPlan("c1", (), str(conf), str(bak), "", "", (),
                                 sha256_before=hashlib.sha256(b"appendonly no\n").hexdigest())
    check = rollback.file_restored(plan)
    assert check.status == "fail" and "is NOT the file before the change" in check.observed
    conf.write_text("appendonly no\n")
    assert rollback.file_restored(plan).status == "pass"


@pytest.mark.notebook
def test_all_backs_up_first_plans_where_and_skips_only_with_a_reason(default_binary: Path, make_sandbox, clean_env,
                                                                     tmp_path: Path) -> None:
    sb = make_sandbox(default_binary)
    populate(sb.client(), 300)
    dest = tmp_path / "backups"
    # Plan only: the backup step says where the backup would go; nothing is copied.
    rc, out, err = run_json(tmp_path / "a", "all", "-p", "target", sb.url, "-p", "destination", str(dest))
    assert rc == 0, err
    planned = out["steps"][1]
    assert planned["notebook"] == "backup" and planned["summary"]["result"] == "planned"
    assert planned["summary"]["location"].startswith(f"{dest}/") and not dest.exists()
    # An empty reason, or a yes, is refused before anything is touched.
    for reason in ("", "  ", "true"):
        rc, _, err = run_json(tmp_path / "b", "all", "-p", "target", sb.url, "-p", "apply", "true",
                              "-p", "skip_backup", reason)
        assert rc == 2 and "skip_backup" in err and "must say why" in err, (reason, err)
        assert not (tmp_path / "b").exists()
    assert sb.client().config_get("appendonly")["appendonly"] == "no"
    # With a reason: recorded in the change, and named by its rollback.
    reason = "nightly backup at 02:00 to s3://backups/redis"
    rc, out, err = run_json(tmp_path / "c", "all", "-p", "target", sb.url, "-p", "apply", "true",
                            "-p", "skip_backup", reason, "-p", "destination", str(dest))
    assert rc == 0, err
    skipped = out["steps"][1]
    assert (skipped["notebook"], skipped["status"], skipped["changed"]) == ("backup", "skipped", "no")
    assert skipped["summary"]["skip_reason"] == reason and not dest.exists()
    record = next(r for r in index(tmp_path / "c") if r["notebook"] == "backup" and r.get("summary"))
    assert record["parameters"]["skip_backup"] == reason and record["change_id"] == out["change_id"]
    rc, out, err = run_json(tmp_path / "c", "rollback", "-p", "target", sb.url)
    assert rc == 0, err
    assert out["steps"][0]["summary"]["data_backup"] == {"skipped": reason}
