"""--metrics-file: a node_exporter textfile that Prometheus' own parser reads, with the right values."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import runbook_cli
from prometheus_client.parser import text_string_to_metric_families

from runbook.evidence.metrics import render
from runbook.model import StepSummary


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


SUMMARY = StepSummary.from_json({
    "checks": {"config_drift": {"status": "fail"}, "aof_enabled": {"status": "pass"},
               "save_policy": {"status": "warn"}},
    "drift": ["appendonly"],
    "settings": ["appendonly", "appendfsync"],
    "metrics": {"aof_enabled": 1, "rdb_last_bgsave_status": "err", "aof_last_write_status": "ok",
                "rdb_last_save_time": 1795671402, "latest_fork_usec": 805},
    "advisories": [{"name": "vm_overcommit_memory", "host": "db-1", "status": "warn",
                    "observed": "vm.overcommit_memory = 0", "fix": "set vm.overcommit_memory = 1"}],
}, "inspect")


def test_render_names_and_values() -> None:
    got = samples(render([('redis://10.0.0.5:6379/0', SUMMARY)], exit_code=1, now=1795672000.5))
    t = (("target", "redis://10.0.0.5:6379/0"),)
    assert got[("redis_aof_enabled", t)] == 1
    assert got[("redis_rdb_last_bgsave_status", t)] == 0  # err
    assert got[("redis_aof_last_write_status", t)] == 1
    assert got[("redis_rdb_last_save_timestamp_seconds", t)] == 1795671402  # full precision
    assert got[("redis_latest_fork_seconds", t)] == pytest.approx(0.000805)
    assert got[("runbook_check_status", (("check", "config_drift"), *t))] == 2
    assert got[("runbook_check_status", (("check", "save_policy"), *t))] == 1
    assert got[("runbook_check_status", (("check", "aof_enabled"), *t))] == 0
    assert got[("runbook_drift", (("setting", "appendonly"), *t))] == 1
    assert got[("runbook_drift", (("setting", "appendfsync"), *t))] == 0
    # The host's setting is exported apart from the checks (issue 17: an advisory, not a check of the verdict).
    assert got[("runbook_host_advisory_status", (("advisory", "vm_overcommit_memory"), *t))] == 1
    assert ("runbook_check_status", (("check", "vm_overcommit_memory"), *t)) not in got
    assert got[("runbook_last_run_timestamp_seconds", ())] == 1795672000.5
    assert got[("runbook_last_run_exit_code", ())] == 1


@pytest.mark.notebook
def test_metrics_file_from_a_run(tmp_path: Path) -> None:
    prom = tmp_path / "textfile" / "redis_runbook.prom"
    proc = runbook_cli("run", "inspect", "-p", "sandbox_scenario", "runtime-aof", "--archive", str(tmp_path / "a"),
                       "--metrics-file", str(prom))
    assert proc.returncode == 1
    got = samples(prom.read_text())
    t = (("target", "sandbox"),)
    assert got[("redis_aof_enabled", t)] == 1
    assert got[("runbook_drift", (("setting", "appendonly"), *t))] == 1
    assert got[("runbook_check_status", (("check", "config_drift"), *t))] == 2
    assert got[("runbook_last_run_exit_code", ())] == 1
    assert [p.name for p in prom.parent.iterdir()] == ["redis_runbook.prom"]  # no temp file left behind
