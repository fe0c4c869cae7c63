"""The runner end to end: real notebooks through papermill, real servers, the archive on disk.

Each run starts a kernel (several seconds), so the matrix here is what the issue asks for:
the seed's two states on every binary, the other scenarios on one binary.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import has_redis_user, index, needs_redis_user_reason, run_json, runbook_cli

from runbook.sandbox.throwaway import SEED_CONFIG, free_port

pytestmark = pytest.mark.notebook


def run_inspect(archive: Path, *extra: str, env: dict[str, str] | None = None) -> tuple[int, dict, str]:
    return run_json(archive, "inspect", *extra, env=env)


@pytest.mark.parametrize("scenario, code, verdict", [("rdb-only", 0, "warn"), ("runtime-aof", 1, "fail")])
def test_sandbox_scenarios_on_every_binary(server_binary: Path, tmp_path: Path, scenario: str, code: int,
                                           verdict: str) -> None:
    rc, out, err = run_inspect(tmp_path, "-p", "sandbox_scenario", scenario,
                               env={"RUNBOOK_REDIS_SERVER": str(server_binary)})
    assert rc == code, err
    step = out["steps"][0]
    summary = step["summary"]
    assert summary["verdict"] == verdict
    assert summary["dbsize"] == 3000
    if scenario == "runtime-aof":
        assert summary["drift"] == ["appendonly"]
        assert summary["checks"]["config_drift"]["status"] == "fail"
        assert "after the next restart" in summary["checks"]["config_drift"]["observed"]
    else:
        assert summary["drift"] == []
        assert summary["checks"]["aof_enabled"]["status"] == "warn"
    # The evidence: executed notebook, HTML, and an index line that matches them.
    ipynb, html = Path(step["ipynb"]), Path(step["html"])
    assert ipynb.exists() and html.exists()
    assert ipynb.relative_to(tmp_path).parts[:3] == tuple(ipynb.parent.relative_to(tmp_path).parts)
    assert ipynb.name.endswith("-inspect-sandbox.ipynb")
    assert "Checks" in html.read_text()
    (rec,) = index(tmp_path)
    assert rec["run_id"] == step["run_id"] and rec["status"] == verdict and rec["summary"] == summary
    assert set(rec["files"]) == {str(ipynb.relative_to(tmp_path)), str(html.relative_to(tmp_path))}
    # No -f: params/sandbox.yaml applies, and -p wins over it.
    assert rec["parameters"] == {"target": "sandbox", "sandbox_scenario": scenario}
    assert runbook_cli("archive", "verify", "--archive", str(tmp_path)).returncode == 0


def test_server_without_config_file(default_binary: Path, make_sandbox, tmp_path: Path) -> None:
    sb = make_sandbox(default_binary, config=None)
    rc, out, err = run_inspect(tmp_path / "a", "-p", "target", sb.url)
    assert rc == 0, err
    check = out["steps"][0]["summary"]["checks"]["config_drift"]
    assert check["status"] == "warn" and "without a config file" in check["observed"]


def test_password_protected_server_leaves_no_secret_in_evidence(default_binary: Path, make_sandbox,
                                                                tmp_path: Path) -> None:
    secret = "Zq9-very-secret-7c1"
    sb = make_sandbox(default_binary, password=secret)
    archive = tmp_path / "a"
    rc, out, err = run_inspect(archive, "-p", "target", sb.url, env={"REDIS_PASSWORD": secret})
    assert rc == 0, err
    assert out["steps"][0]["summary"]["checks"]["config_drift"]["status"] == "pass"
    files = [p for p in archive.rglob("*") if p.is_file()]
    # Evidence, the index segment, the head, and the index's lock file: every one of them is read below.
    assert {p.suffix for p in files} == {".ipynb", ".html", ".jsonl", ".json", ""}
    assert [p for p in files if secret in p.read_text(errors="replace")] == []
    # The config file really holds the password, so the check above could have failed.
    assert secret in sb.config_path.read_text()


def test_wrong_password_fails_clearly_and_is_archived(default_binary: Path, make_sandbox, tmp_path: Path) -> None:
    sb = make_sandbox(default_binary, password="right-one")
    rc, out, err = run_inspect(tmp_path, "-p", "target", sb.url, env={"REDIS_PASSWORD": "wrong-one"})
    assert rc == 1
    step = out["steps"][0]
    assert step["status"] == "error"
    assert "TargetUnreachable" in step["summary"]["error"] and "authentication failed" in step["summary"]["error"]
    assert sb.url in step["summary"]["error"]
    assert index(tmp_path)[0]["status"] == "error" and Path(step["ipynb"]).exists()


def test_renamed_config_command(default_binary: Path, make_sandbox, tmp_path: Path) -> None:
    sb = make_sandbox(default_binary, config=SEED_CONFIG + "rename-command CONFIG RB-CONFIG-7f\n")
    rc, out, _ = run_inspect(tmp_path / "a", "-p", "target", sb.url)
    assert rc == 1 and "config_command" in out["steps"][0]["summary"]["error"]
    rc, out, err = run_inspect(tmp_path / "b", "-p", "target", sb.url, "-p", "config_command", "RB-CONFIG-7f")
    assert rc == 0, err
    assert out["steps"][0]["summary"]["checks"]["config_drift"]["status"] == "pass"


def test_unreachable_port(tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    rc, out, _ = run_inspect(tmp_path, "-p", "target", url, "-p", "connect_timeout_s", "1")
    assert rc == 1
    assert "cannot connect" in out["steps"][0]["summary"]["error"] and url in out["steps"][0]["summary"]["error"]


@pytest.mark.parametrize("args, message", [
    (["-p", "no_such_param", "1"], "unknown parameter(s): no_such_param. Valid names:"),
    (["-p", "connect_timeout_s", "soon"], "connect_timeout_s must be float"),
    (["-p", "target", "redis://:hunter2@127.0.0.1:6379/0"], "password_env"),
    (["-p", "target", "localhost:6379"], "not a redis://"),
    (["-p", "password", "hunter2"], "unknown parameter(s): password"),
])
def test_bad_parameters_exit_2_before_touching_anything(tmp_path: Path, args: list[str], message: str) -> None:
    proc = runbook_cli("run", "inspect", "--archive", str(tmp_path / "a"), *args)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "hunter2" not in proc.stderr + proc.stdout
    assert not (tmp_path / "a").exists()


def test_bad_yaml_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("target: [unclosed\n")
    proc = runbook_cli("run", "inspect", "--archive", str(tmp_path / "a"), "-f", str(bad))
    assert proc.returncode == 2
    assert str(bad) in proc.stderr and "not valid YAML" in proc.stderr
    assert not (tmp_path / "a").exists()


def test_archive_verify_catches_tampering(tmp_path: Path) -> None:
    rc, out, err = run_inspect(tmp_path, "-p", "sandbox_scenario", "rdb-only")
    assert rc == 0, err
    html = Path(out["steps"][0]["html"])
    html.write_text(html.read_text().replace("Checks", "Chekcs"))
    proc = runbook_cli("archive", "verify", "--archive", str(tmp_path))
    assert proc.returncode == 1 and "altered" in proc.stderr
    listed = runbook_cli("archive", "list", "--archive", str(tmp_path))
    assert listed.returncode == 0 and "inspect" in listed.stdout and out["change_id"] in listed.stdout


def test_run_all_performs_the_seed_change(tmp_path: Path) -> None:
    """`make demo`'s command: the seed's sandbox (AOF on at runtime, off in the file) fixed end to end."""
    backups = tmp_path / "backups"
    # no -f: params/sandbox.yaml, the seed's state
    rc, out, err = run_json(tmp_path / "archive", "all", "-p", "apply", "true", "-p", "destination", str(backups))
    assert rc == 0, err
    steps = out["steps"]
    assert [s["notebook"] for s in steps] == ["inspect", "backup", "enable-aof", "persist-config", "test-persistence",
                                              "inspect"]
    # a backup taken, the file written, the online test's canaries and BGSAVE
    assert [s["changed"] for s in steps] == ["-", "yes", "no", "yes", "yes", "-"]
    before, backup, enable, persist, test, after = (s["summary"] for s in steps)
    assert before["verdict"] == "fail" and before["drift"] == ["appendonly"]  # the seed's problem, shown
    # The data is backed up first, as Redis's own procedure for switching AOF on begins, under the same change.
    assert backup["result"] == "done" and backup["dbsize"] == before["dbsize"] == 3000
    assert backup["checks"]["restore_drill"]["status"] == "pass"
    (taken,) = backups.iterdir()
    assert taken.name.endswith(out["change_id"]) and str(taken) == backup["location"]
    ended = {r["notebook"]: r["ended"] for r in index(tmp_path / "archive") if r.get("ended")}
    started = {r["run_id"]: r["started"] for r in index(tmp_path / "archive")}
    assert ended["backup"] <= started[steps[2]["run_id"]]  # done before enable-aof began
    assert enable["result"] == "unchanged"  # AOF already ran complete: nothing sent
    assert persist["result"] == "changed" and persist["checks"]["file_boots"]["status"] == "pass"
    assert test["mode"] == "online" and test["verdict"] == "pass"
    assert after["drift"] == [] and after["checks"]["config_drift"]["status"] == "pass" and after["aof_enabled"] == 1
    assert after["dbsize"] == 3000  # the run's own lock key, held during this inspection, is not counted
    assert persist["backup"].endswith(".bak") and f".runbook-{out['change_id']}-" in persist["backup"]
    records = [r for r in index(tmp_path / "archive") if r["status"] not in ("started", "intent")]
    assert len(records) == 6 and len({r["change_id"] for r in records}) == 1
    assert runbook_cli("archive", "verify", "--archive", str(tmp_path / "archive")).returncode == 0


@pytest.mark.skipif(not has_redis_user, reason=needs_redis_user_reason)
def test_a_failing_step_stops_the_chain(default_binary: Path, make_sandbox, tmp_path: Path) -> None:
    import os

    sb = make_sandbox(default_binary, run_as="redis")
    sb.client().set("k", "v")
    sb.client().save()
    os.chown(sb.data_dir, 0, 0)  # the server can no longer write its dir: the AOF cannot be created
    sb.data_dir.chmod(0o755)
    rc, out, _ = run_json(tmp_path, "all", "-p", "target", sb.url, "-p", "apply", "true",
                          "-p", "skip_backup", "this test: the server cannot write its dir")
    assert rc == 1
    assert [(s["notebook"], s["status"]) for s in out["steps"]] == [
        ("inspect", "warn"), ("backup", "skipped"), ("enable-aof", "error"), ("persist-config", "skipped"),
        ("test-persistence", "skipped"), ("inspect", "skipped")]
    assert out["steps"][1]["summary"]["skip_reason"] == "this test: the server cannot write its dir"
    assert [r["status"] for r in index(tmp_path)][-3:] == ["skipped"] * 3
    assert sb.client().config_get("appendonly")["appendonly"] == "no"
    assert runbook_cli("archive", "verify", "--archive", str(tmp_path)).returncode == 0
