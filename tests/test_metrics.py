"""--metrics-file: a node_exporter textfile that Prometheus' own parser reads, with the right values and labels; an
unreachable target's last known series carried forward; the change series from the archive; archive verify's."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
from helpers import runbook_cli, tool_or_skip
from prometheus_client.parser import text_string_to_metric_families

from runbook.errors import ParameterError
from runbook.evidence.metrics import (
    Inspected,
    LastChange,
    archive_label,
    inspections,
    last_changes,
    metrics_job,
    parse,
    render,
    render_verify,
)
from runbook.model import Status, StepSummary

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: str) -> Samples:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def labels(target: str = "", job: str = "local", **more: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted({"runbook_job": job, **({"target": target} if target else {}), **more}.items()))


TARGET = "redis://10.0.0.5:6379/0"
SUMMARY = StepSummary.from_json({
    "checks": {"config_drift": {"status": "fail"}, "aof_enabled": {"status": "pass"},
               "save_policy": {"status": "warn"}},
    "drift": ["appendonly"],
    "settings": ["appendonly", "appendfsync"],
    "metrics": {"aof_enabled": 1, "rdb_last_bgsave_status": "err", "aof_last_write_status": "ok",
                "rdb_last_save_time": 1795671402, "latest_fork_usec": 805, "aof_current_size": 4096,
                "rdb_last_bgsave_time_sec": -1, "aof_last_rewrite_time_sec": 2, "rdb_file_size": 1234},
    "advisories": [{"name": "vm_overcommit_memory", "host": "db-1", "status": "warn",
                    "observed": "vm.overcommit_memory = 0", "fix": "set vm.overcommit_memory = 1"}],
    "save_policy_window_s": 3600,
    "inspected_at": 1795671999.25,
}, "inspect")
UNREACHABLE = StepSummary("inspect", Status.ERROR, error=f"TargetUnreachable: {TARGET}: cannot connect")


def test_render_names_and_values() -> None:
    got = samples(render([(TARGET, SUMMARY)], exit_code=1, now=1795672000.5, job="local"))
    t = labels(TARGET)
    assert got[("runbook_target_up", t)] == 1
    assert got[("runbook_inspection_timestamp_seconds", t)] == 1795671999.25
    assert got[("runbook_redis_aof_enabled", t)] == 1
    assert got[("runbook_redis_rdb_last_bgsave_status", t)] == 0  # err
    assert got[("runbook_redis_aof_last_write_status", t)] == 1
    assert got[("runbook_redis_rdb_last_save_timestamp_seconds", t)] == 1795671402  # full precision
    assert got[("runbook_redis_latest_fork_seconds", t)] == pytest.approx(0.000805)
    assert got[("runbook_redis_aof_current_size_bytes", t)] == 4096
    assert got[("runbook_redis_rdb_last_bgsave_duration_seconds", t)] == -1  # none yet, as redis_exporter says
    assert got[("runbook_redis_aof_last_rewrite_duration_seconds", t)] == 2
    assert got[("runbook_rdb_file_size_bytes", t)] == 1234
    assert got[("runbook_save_policy_window_seconds", t)] == 3600
    assert got[("runbook_check_status", labels(TARGET, check="config_drift"))] == 2
    assert got[("runbook_check_status", labels(TARGET, check="save_policy"))] == 1
    assert got[("runbook_check_status", labels(TARGET, check="aof_enabled"))] == 0
    assert got[("runbook_drift", labels(TARGET, setting="appendonly"))] == 1
    assert got[("runbook_drift", labels(TARGET, setting="appendfsync"))] == 0
    # The host's setting is exported apart from the checks (issue 17: an advisory, not a check of the verdict).
    assert got[("runbook_host_advisory_status", labels(TARGET, advisory="vm_overcommit_memory"))] == 1
    assert ("runbook_check_status", labels(TARGET, check="vm_overcommit_memory")) not in got
    assert got[("runbook_last_run_timestamp_seconds", labels())] == 1795672000.5
    assert got[("runbook_last_run_exit_code", labels())] == 1
    # No unprefixed redis_* name (those are redis_exporter's), and every series names its job.
    assert not [k for k in got if k[0].startswith("redis_") or ("runbook_job", "local") not in k[1]]


def test_an_unreachable_target_keeps_its_last_known_series() -> None:
    before = render([(TARGET, SUMMARY), ("redis://other:6379/0", SUMMARY)], exit_code=1, now=1795672000, job="local")
    elsewhere = render([(TARGET, SUMMARY)], exit_code=0, now=1795672000, job="other-job")
    previous = parse(before + elsewhere)
    text = render([Inspected(TARGET, None, up=False)], exit_code=1, now=1795673000, job="local", previous=previous)
    got, was = samples(text), samples(before)
    assert got[("runbook_target_up", labels(TARGET))] == 0
    assert got[("runbook_inspection_timestamp_seconds", labels(TARGET))] == 1795671999.25  # the last good one
    assert got[("runbook_drift", labels(TARGET, setting="appendonly"))] == 1  # the drift alert does not resolve
    kept = {k: v for k, v in was.items() if dict(k[1]).get("target") == TARGET and k[0] != "runbook_target_up"}
    assert {k: got.get(k) for k in kept} == kept
    # Only this job's series of this target: not the other target's, not another job's.
    assert {dict(k[1]).get("target") for k in got} == {TARGET, None}
    assert {dict(k[1])["runbook_job"] for k in got} == {"local"}
    assert got[("runbook_last_run_timestamp_seconds", labels())] == 1795673000
    # With no previous file: only the target's reachability, and the run's own two lines.
    alone = samples(render([Inspected(TARGET, None, up=False)], exit_code=1, job="local"))
    assert sorted(k[0] for k in alone) == ["runbook_last_run_exit_code", "runbook_last_run_timestamp_seconds",
                                           "runbook_target_up"]


def test_which_inspection_of_a_run_counts() -> None:
    ok = SUMMARY
    skipped = StepSummary("inspect", Status.SKIPPED, facts={"reason": "an earlier step failed"})
    found = inspections([("inspect", "a", ok), ("enable-aof", "a", StepSummary("enable-aof", Status.PASS)),
                         ("inspect", "a", UNREACHABLE),  # the server went away during the change
                         ("inspect", "b", UNREACHABLE), ("inspect", "c", ok), ("inspect", "c", skipped),
                         ("backup", "d", StepSummary("backup", Status.PASS))])
    assert found == [Inspected("a", ok, False), Inspected("b", None, False), Inspected("c", ok, True),
                     Inspected("d", None, None)]
    # A target no inspection of this run reached keeps everything the last file said, its reachability too.
    previous = parse(render([("d", SUMMARY)], exit_code=0, now=1, job="j"))
    got = samples(render([found[3]], exit_code=0, now=2, job="j", previous=previous))
    assert got[("runbook_target_up", labels("d", job="j"))] == 1
    assert got[("runbook_drift", labels("d", job="j", setting="appendonly"))] == 1
    # An earlier inspection of the same run wins over the previous file.
    got = samples(render([found[0]], exit_code=1, now=2, job="j", previous=parse("")))
    assert got[("runbook_target_up", labels("a", job="j"))] == 0
    assert got[("runbook_redis_aof_enabled", labels("a", job="j"))] == 1


def test_parse_reads_back_what_render_writes() -> None:
    odd = 'unix:///run/redis "a",b}\\c\nd.sock'
    text = render([(odd, SUMMARY)], exit_code=0, now=5, job='job "x"')
    families = parse(text)
    ours = {(s.name, tuple(sorted(s.labels))): float(s.value) for f in families.values() for s in f.samples}
    assert ours == samples(text)  # the same samples as Prometheus' own parser reads
    assert families["runbook_drift"].help == "Setting differs between runtime and config file (1) or not (0)"
    assert parse("garbage {{\nrunbook_x{a=b} 1\n# HELP\n") == {}  # lines it cannot read are left out


def _record(change: str, step: str, target: str, status: str, exit_code: int | None, result: str | None = None,
            at: str = "2026-12-01T10:00:00+00:00") -> dict:
    return {"run_id": f"{change}-{step}-{status}", "change_id": change, "notebook": step, "target": target,
            "status": status, "exit_code": exit_code, "started": at, "ended": at, "files": {},
            "summary": {"step": step, "verdict": status, **({"result": result} if result else {})}}


def test_last_changes_from_the_index() -> None:
    t1, t2, t3, t4 = "redis://a:6379/0", "redis://b:6379/0", "redis://c:6379/0", "redis://d:6379/0"
    records = [
        # t1: a change that fixed the drift (its first inspection fails: that is what it fixes)...
        _record("c1", "inspect", t1, "fail", 1),
        _record("c1", "enable-aof", t1, "pass", 0, "unchanged"),
        _record("c1", "persist-config", t1, "pass", 0, "changed"),
        _record("c1", "inspect", t1, "pass", 0, at="2026-12-01T10:05:00+00:00"),
        # ... then a plan and a routine inspection: no change.
        _record("c2", "persist-config", t1, "pass", 0, "planned"),
        _record("c3", "inspect", t1, "fail", 1),
        # t2: blocked (a person must act); t3: failed; t4: killed during its change (no verdict).
        _record("c4", "persist-config", t2, "blocked", 3, "blocked"),
        _record("c5", "enable-aof", t3, "error", 1),
        {"run_id": "k", "change_id": "c6", "notebook": "enable-aof", "target": t4, "status": "started",
         "started": "2026-12-01T11:00:00+00:00", "files": {}},
    ]
    got = last_changes(records)
    assert got == {
        t1: LastChange("c1", 1796119500.0, 0, "ok"),  # 10:05 UTC: the end of its last step on t1
        t2: LastChange("c4", 1796119200.0, 3, "blocked"),
        t3: LastChange("c5", 1796119200.0, 1, "failed"),
        t4: LastChange("c6", 1796122800.0, 1, "interrupted"),
    }
    text = render([(t1, SUMMARY)], exit_code=0, now=1, job="j", changes=got)
    assert samples(text)[("runbook_change_last_info", labels(t1, job="j", change_id="c1", result="ok"))] == 1
    assert ("runbook_change_last_exit_code", labels(t2, job="j")) not in samples(text)  # only the run's targets
    # When the index cannot be read (changes=None), the previous file's change series are kept.
    again = samples(render([(t1, SUMMARY)], exit_code=0, now=2, job="j", previous=parse(text)))
    assert again[("runbook_change_last_timestamp_seconds", labels(t1, job="j"))] == 1796119500


@pytest.mark.parametrize("name, files, want", [
    (None, ["params/gateway.yaml"], "gateway"), (None, ["/etc/x/prod.yml", "b.yaml"], "prod"),
    (None, [], "sandbox"), ("nightly", ["params/gateway.yaml"], "nightly"),
])
def test_metrics_job(name: str | None, files: list[str], want: str) -> None:
    assert metrics_job(name, files) == want


@pytest.mark.parametrize("name", ["", "two\nlines"])
def test_metrics_job_refused(name: str) -> None:
    with pytest.raises(ParameterError, match="--metrics-job"):
        metrics_job(name)


def test_archive_verify_text() -> None:
    assert archive_label("sftp://user:secret@host/evidence") == "sftp://host/evidence"
    got = samples(render_verify("/var/lib/redis-runbook/archive", False, None, job="gateway", now=7))
    base = (("archive", "/var/lib/redis-runbook/archive"), ("runbook_job", "gateway"))
    assert got == {("runbook_archive_verify_ok", base): 0, ("runbook_archive_verify_timestamp_seconds", base): 7}


def _promtool_clean(text: str) -> None:
    promtool = tool_or_skip("/usr/bin/promtool", "prometheus")
    proc = subprocess.run([str(promtool), "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stdout + proc.stderr) == (0, "")


@pytest.fixture(scope="module")
def changed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    """`runbook run all -p apply true` on a sandbox in the drifted state, with a params file named gateway.yaml:
    the archive, the metrics file and the run's JSON."""
    tmp = tmp_path_factory.mktemp("metrics")
    params = tmp / "gateway.yaml"
    params.write_text("target: sandbox\nsandbox_scenario: runtime-aof\n")
    prom = tmp / "textfile" / "redis_runbook.prom"
    proc = runbook_cli("run", "all", "-f", str(params), "-p", "apply", "true", "--archive", str(tmp / "a"),
                       "--metrics-file", str(prom), "--json")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return tmp / "a", prom, json.loads(proc.stdout)


@pytest.mark.notebook
def test_metrics_file_from_a_change(changed: tuple[Path, Path, dict], tmp_path: Path) -> None:
    archive, prom, out = changed
    text = prom.read_text()
    got = samples(text)
    t = labels("sandbox", job="gateway")  # the params file's name
    assert got[("runbook_target_up", t)] == 1
    assert got[("runbook_redis_aof_enabled", t)] == 1
    assert got[("runbook_drift", labels("sandbox", job="gateway", setting="appendonly"))] == 0  # the last inspection
    assert got[("runbook_change_last_info", labels("sandbox", job="gateway", change_id=out["change_id"],
                                                   result="ok"))] == 1
    assert got[("runbook_change_last_exit_code", t)] == 0
    assert got[("runbook_last_run_exit_code", labels(job="gateway"))] == 0
    assert [p.name for p in prom.parent.iterdir()] == ["redis_runbook.prom"]  # no temp file left behind
    _promtool_clean(text)
    # A later inspection (no change) into the same archive still names that change, read from the index.
    later = tmp_path / "later.prom"
    proc = runbook_cli("run", "inspect", "--archive", str(archive), "--metrics-job", "gateway",
                       "--metrics-file", str(later))
    assert proc.returncode == 1, proc.stderr  # the default sandbox drifts
    again = samples(later.read_text())
    assert again[("runbook_drift", labels("sandbox", job="gateway", setting="appendonly"))] == 1
    assert again[("runbook_change_last_info", labels("sandbox", job="gateway", change_id=out["change_id"],
                                                     result="ok"))] == 1


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.notebook
def test_a_target_that_refuses_the_connection_still_gets_its_file(tmp_path: Path) -> None:
    target = f"redis://127.0.0.1:{_closed_port()}/0"
    prom = tmp_path / "r.prom"
    proc = runbook_cli("run", "inspect", "-p", "target", target, "--archive", str(tmp_path / "a"),
                       "--metrics-file", str(prom))
    assert proc.returncode == 1 and "TargetUnreachable" in proc.stdout, proc.stdout + proc.stderr
    got = samples(prom.read_text())
    assert got == {("runbook_target_up", labels(target, job="sandbox")): 0,
                   ("runbook_last_run_exit_code", labels(job="sandbox")): 1,
                   ("runbook_last_run_timestamp_seconds", labels(job="sandbox")):
                       got[("runbook_last_run_timestamp_seconds", labels(job="sandbox"))]}
    _promtool_clean(prom.read_text())


@pytest.mark.notebook
def test_archive_verify_writes_its_verdict(changed: tuple[Path, Path, dict], tmp_path: Path) -> None:
    archive = tmp_path / "a"
    shutil.copytree(changed[0], archive)
    prom = tmp_path / "verify.prom"

    said = []

    def verify(where: Path) -> tuple[int, Samples]:
        proc = runbook_cli("archive", "verify", "--archive", str(where), "--metrics-file", str(prom),
                           "--metrics-job", "gateway")
        said.append(proc.stdout)
        return proc.returncode, samples(prom.read_text())

    base = (("archive", str(archive)), ("runbook_job", "gateway"))
    code, got = verify(archive)
    assert code == 0 and got[("runbook_archive_verify_ok", base)] == 1
    assert f": {int(got[('runbook_archive_records', base)])} record(s), chain and files intact" in said[0]
    _promtool_clean(prom.read_text())
    evidence = next(archive.rglob("*.ipynb"))
    evidence.write_text(evidence.read_text() + " ")  # a changed evidence file
    code, got = verify(archive)
    assert code == 1 and got[("runbook_archive_verify_ok", base)] == 0
    code, got = verify(tmp_path / "none")  # nothing archived there
    assert code == 1 and got[("runbook_archive_verify_ok", (("archive", str(tmp_path / "none")),
                                                            ("runbook_job", "gateway")))] == 0
    proc = runbook_cli("archive", "list", "--archive", str(archive), "--metrics-file", str(prom))
    assert proc.returncode == 2 and "--metrics-file goes with archive verify" in proc.stderr
