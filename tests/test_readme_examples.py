"""The crontab and CI job of docs/cron-ci.md (linked from the README), run as written against real servers."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from helpers import REPO, index, runbook_cli
from prometheus_client.parser import text_string_to_metric_families

from runbook.sandbox.seed import seed_sandbox

PAGE = REPO / "docs" / "cron-ci.md"
_CRON_FIELD = re.compile(r"^(\*|\d+(-\d+)?)(/\d+)?(,(\*|\d+(-\d+)?)(/\d+)?)*$")


def _block(lang: str) -> str:
    blocks = re.findall(rf"```{lang}\n(.*?)```", PAGE.read_text(), re.S)
    assert len(blocks) == 1, f"{PAGE.relative_to(REPO)} must hold exactly one ```{lang} block"
    return blocks[0]


def _crontab() -> tuple[dict[str, str], list[str], str]:
    """The crontab block as (variables, the schedule's five fields and user, command)."""
    variables: dict[str, str] = {}
    jobs = []
    for line in _block("crontab").splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        m = re.match(r"^([A-Z_]+)=(.*)$", line)
        if m:
            variables[m.group(1)] = m.group(2)
        else:
            jobs.append(line)
    assert len(jobs) == 1
    fields = jobs[0].split(None, 6)
    return variables, fields[:6], fields[6]


def _params(path: Path, target: str, config_file: Path | None) -> Path:
    path.write_text(yaml.safe_dump({"target": target, **({"config_file": str(config_file)} if config_file else {})}))
    return path


def test_crontab_line_is_a_valid_cron_d_entry() -> None:
    variables, schedule, command = _crontab()
    assert all(_CRON_FIELD.match(f) for f in schedule[:5]), schedule
    assert re.match(r"^[a-z_][a-z0-9_-]*$", schedule[5]), "cron.d lines name the user after the schedule"
    assert "%" not in command, "cron turns % into a newline"
    assert {"RUNBOOK_HOME", "RUNBOOK_PARAMS", "RUNBOOK_ARCHIVE", "RUNBOOK_METRICS"} <= set(variables)
    assert "PASSWORD" not in " ".join(variables)


@pytest.mark.parametrize("scenario", ["rdb-only", "runtime-aof"])
def test_crontab_command_runs_as_written(tmp_path: Path, scenario: str) -> None:
    variables, _, command = _crontab()
    sb = seed_sandbox(scenario, keys=100)
    try:
        env = {
            "PATH": "/usr/bin:/bin", "HOME": str(tmp_path), **variables,  # what cron gives the command
            "RUNBOOK_HOME": str(REPO), "RUNBOOK_PARAMS": str(_params(tmp_path / "p.yaml", sb.url, sb.config_path)),
            "RUNBOOK_ARCHIVE": str(tmp_path / "archive"), "RUNBOOK_METRICS": str(tmp_path / "m" / "runbook.prom"),
        }
        proc = subprocess.run(["/bin/sh", "-c", command], env=env, capture_output=True, text=True, timeout=300)
    finally:
        sb.cleanup()
    assert index(tmp_path / "archive")[-1]["target"] == sb.url
    families = {f.name: f for f in text_string_to_metric_families((tmp_path / "m" / "runbook.prom").read_text())}
    drift = {s.labels["setting"]: s.value for s in families["runbook_drift"].samples}
    if scenario == "rdb-only":  # healthy (warnings only): silent, so cron mails nothing
        assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")
        assert drift["appendonly"] == 0
    else:  # AOF on at runtime but off in redis.conf: the failure is printed, so cron mails it
        assert proc.returncode == 1
        assert "FAILED" in proc.stdout and "config_drift=fail" in proc.stdout and sb.url in proc.stdout
        assert drift["appendonly"] == 1


def _workspace(tmp_path: Path) -> Path:
    """A checkout as the CI runner would have it: the repository's files, with its installed .venv."""
    ws = tmp_path / "ws"
    ws.mkdir()
    for name in (".venv", "runbook", "notebooks", "README.md"):
        (ws / name).symlink_to(REPO / name)
    (ws / "params").mkdir()
    return ws


def test_ci_job_runs_as_written(tmp_path: Path) -> None:
    job = yaml.safe_load(_block("yaml"))
    (only,) = job["jobs"].values()
    steps = [s for s in only["steps"] if "run" in s]
    assert [s["run"] for s in steps][0] == "make setup"
    ws = _workspace(tmp_path)
    prod = seed_sandbox("runtime-aof", keys=500)  # AOF on at runtime, `no` in the file
    try:
        _params(ws / "params" / "gateway.yaml", prod.url, prod.config_path)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNBOOK_", "REDIS_"))}
        env.update({k: "" if "${{" in str(v) else str(v) for k, v in only.get("env", {}).items()})
        for step in steps:
            # `make setup` runs in the checkout itself: it is this test run's own .venv, already set up.
            cwd = REPO if step["run"] == "make setup" else ws
            proc = subprocess.run(["bash", "-e", "-c", step["run"]], cwd=cwd, env=env, capture_output=True,
                                  text=True, timeout=600)
            assert proc.returncode == 0, f"{step.get('name', step['run'])}:\n{proc.stdout}\n{proc.stderr}"
        client = prod.client()
        assert client.config_get("appendonly")["appendonly"] == "yes" and client.dbsize() == 500
        assert "appendonly yes" in prod.config_path.read_text()
    finally:
        prod.cleanup()
    records = index(ws / "evidence")
    assert any(r.get("rehearsal") for r in records), "the rehearsal is part of the evidence"
    real = [r for r in records if not r.get("rehearsal") and r["status"] not in ("started", "intent")]
    # (warn: this host's vm.overcommit_memory; the rest of each step's checks passed)
    assert [(r["notebook"], r["status"] in ("pass", "warn")) for r in real] == [
        ("inspect", False), ("backup", True), ("enable-aof", True), ("persist-config", True),
        ("test-persistence", True), ("inspect", True)]
    assert runbook_cli("archive", "verify", "--archive", str(ws / "evidence")).returncode == 0
