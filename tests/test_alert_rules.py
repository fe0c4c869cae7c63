"""The shipped alert rules (monitoring/prometheus/runbook-rules.yml): valid, unit-tested by promtool, and their unit
tests' input series taken from what `--metrics-file` really writes.

Real text files come from real runs: a sandbox with AOF on at runtime but off in redis.conf, an RDB-only one, a
server inspected once and then stopped (inspected again: unreachable, its series carried forward) and an
`archive verify`. Every series of runbook-rules.test.yml must name a metric, label names and label values (all but
`target` and `archive`, which are free) that the file of its `runbook_job` holds, so the tests cannot drift from
what the runbook writes.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml
from helpers import REPO, runbook_cli, tool_or_skip
from prometheus_client.parser import text_string_to_metric_families
from test_docs import anchors

from runbook.sandbox.seed import seed_sandbox

RULES_DIR = REPO / "monitoring" / "prometheus"
RULES = RULES_DIR / "runbook-rules.yml"
RULE_TESTS = RULES_DIR / "runbook-rules.test.yml"
MONITORING_PAGE = REPO / "docs" / "monitoring.md"
#: The alert names agreed with the dashboard and the end-to-end test (/work/coord/METRICS-CONTRACT.md).
ALERTS = {"RedisAofOffAtRuntime", "RedisAofNotInConfigFile", "RedisBgsaveFailed", "RedisAofRewriteFailed",
          "RedisAofWriteFailed", "RedisNoRecentSave", "RunbookInspectionStale", "RunbookCheckFailing",
          "RunbookTargetUnreachable", "RunbookArchiveVerifyFailing",
          "RunbookConfigNotCompared", "RunbookMetricsMissing", "RunbookTextfileScrapeError"}
#: Labels the scrape adds (node_exporter's address and job), and labels whose values the unit tests may choose.
SCRAPE_LABELS = {"instance", "job"}
FREE_LABELS = {"target", "archive"}
#: node_exporter's own series the rules use (scrape labels only): tests/test_monitoring_e2e.py reads them from a real
#: node_exporter (`node_textfile_scrape_error` 0 with three good files).
NODE_EXPORTER_SERIES = {"node_textfile_scrape_error"}
_SERIES = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)\{(.*)\}$")
_LABEL = re.compile(r'\s*([a-zA-Z_]\w*)="([^"]*)"\s*(?:,|$)')

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: str) -> Samples:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def value(got: Samples, name: str, **labels: str) -> float:
    """The one sample of `name` whose labels include `labels`."""
    (found,) = [v for (n, ls), v in got.items() if n == name and set(labels.items()) <= set(ls)]
    return found


@pytest.fixture(scope="module")
def real_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """runbook_job -> a text file that real runs wrote with that --metrics-job (see the module's docstring)."""
    tmp = tmp_path_factory.mktemp("alert-rules")
    archive, files = tmp / "archive", {job: tmp / "textfile" / f"{job}.prom"
                                       for job in ("runtime-aof", "rdb-only", "unreachable", "not-compared",
                                                   "archive")}

    def run(job: str, *args: str) -> subprocess.CompletedProcess[str]:
        return runbook_cli("run", "inspect", *args, "--archive", str(archive), "--metrics-job", job,
                           "--metrics-file", str(files[job]))

    for scenario in ("runtime-aof", "rdb-only"):
        proc = run(scenario, "-p", "sandbox_scenario", scenario)
        assert proc.returncode in (0, 1), proc.stderr
    sb = seed_sandbox("runtime-aof", keys=100)
    try:
        params = tmp / "server.yaml"
        params.write_text(yaml.safe_dump({"target": sb.url, "config_file": str(sb.config_path)}))
        proc = run("unreachable", "-f", str(params))
        assert proc.returncode == 1, proc.stderr  # the drift fails config_drift
        files["unreachable"].with_suffix(".before").write_text(files["unreachable"].read_text())
    finally:
        sb.cleanup()
    proc = run("unreachable", "-f", str(params))  # the same target, stopped: its port refuses the connection
    assert proc.returncode == 1 and "TargetUnreachable" in proc.stdout, proc.stdout + proc.stderr
    # A config file the cron user cannot read: as root every file is readable, so one that is not there (the
    # same path in read_config: PreconditionFailed, every setting unknown, config_drift warn).
    sb = seed_sandbox("runtime-aof", keys=10)
    try:
        params = tmp / "not-compared.yaml"
        params.write_text(yaml.safe_dump({"target": sb.url, "config_file": str(tmp / "no-such" / "redis.conf")}))
        proc = run("not-compared", "-f", str(params))
        assert proc.returncode == 0, proc.stdout + proc.stderr  # a warning: the run passes, nothing in cron's mail
    finally:
        sb.cleanup()
    proc = runbook_cli("archive", "verify", "--archive", str(archive), "--metrics-file", str(files["archive"]),
                       "--metrics-job", "archive")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return files


def test_real_files_hold_the_states_the_rules_alert_on(real_files: dict[str, Path]) -> None:
    aof = samples(real_files["runtime-aof"].read_text())
    assert value(aof, "runbook_target_up") == 1
    assert value(aof, "runbook_redis_aof_enabled") == 1
    assert value(aof, "runbook_drift", setting="appendonly") == 1
    assert value(aof, "runbook_check_status", check="config_drift") == 2
    rdb = samples(real_files["rdb-only"].read_text())
    assert value(rdb, "runbook_redis_aof_enabled") == 0
    assert value(rdb, "runbook_drift", setting="appendonly") == 0
    assert value(rdb, "runbook_redis_rdb_last_bgsave_status") == 1
    assert value(rdb, "runbook_save_policy_window_seconds") == 3600  # Redis's default save 3600 1 300 100 60 10000
    assert value(aof, "runbook_config_compared") == value(rdb, "runbook_config_compared") == 1


def test_a_config_file_not_read_is_a_series_not_a_silence(real_files: dict[str, Path]) -> None:
    """No runbook_drift at all when the file was not read: RunbookConfigNotCompared's series says so."""
    got = samples(real_files["not-compared"].read_text())
    assert value(got, "runbook_target_up") == 1
    assert value(got, "runbook_config_compared") == 0
    assert value(got, "runbook_check_status", check="config_drift") == 1
    assert not [name for name, _ in got if name == "runbook_drift"]


def test_an_unreachable_target_keeps_its_last_known_series(real_files: dict[str, Path]) -> None:
    before = samples(real_files["unreachable"].with_suffix(".before").read_text())
    after = samples(real_files["unreachable"].read_text())
    assert value(before, "runbook_target_up") == 1 and value(after, "runbook_target_up") == 0
    assert value(after, "runbook_drift", setting="appendonly") == 1  # the drift alert does not resolve
    assert value(after, "runbook_redis_aof_enabled") == 1
    assert value(after, "runbook_check_status", check="config_drift") == 2
    # The last successful inspection's time, not the failed run's; every carried series as it was.
    assert value(after, "runbook_inspection_timestamp_seconds") == value(before, "runbook_inspection_timestamp_seconds")
    run_own = ("runbook_target_up", "runbook_last_run_timestamp_seconds", "runbook_last_run_exit_code")
    carried = {k: v for k, v in before.items() if k[0] not in run_own}
    assert carried and {k: after.get(k) for k in carried} == carried
    assert value(after, "runbook_last_run_timestamp_seconds") > value(before, "runbook_last_run_timestamp_seconds")


def test_real_files_pass_promtool_check_metrics(real_files: dict[str, Path]) -> None:
    promtool = tool_or_skip("/usr/bin/promtool", "prometheus")
    for job, path in real_files.items():
        proc = subprocess.run([str(promtool), "check", "metrics"], input=path.read_text(), capture_output=True,
                              text=True, timeout=60)
        assert (proc.returncode, proc.stdout + proc.stderr) == (0, ""), job


def _series(selector: str) -> tuple[str, dict[str, str]]:
    m = _SERIES.match(selector)
    assert m, f"{RULE_TESTS.name}: {selector!r} is not name{{labels}}"
    labels = dict(_LABEL.findall(m.group(2)))
    assert ",".join(f'{k}="{v}"' for k, v in labels.items()) == re.sub(r",\s+", ",", m.group(2).strip())
    return m.group(1), labels


Real = dict[str, dict[str, set[tuple[tuple[str, str], ...]]]]


def _key(labels: dict[str, str]) -> tuple[tuple[str, str], ...]:
    """A series' labels as compared: without the scrape's, and any value of the free labels."""
    return tuple(sorted((k, "*" if k in FREE_LABELS else v) for k, v in labels.items() if k not in SCRAPE_LABELS))


def unknown_series(used: list[tuple[str, dict[str, str]]], real: Real) -> list[str]:
    """The series of `used` that no real file of their runbook_job holds (name, label names, label values)."""
    return [f"{name}{labels}" for name, labels in used
            if not (name in NODE_EXPORTER_SERIES and set(labels) == SCRAPE_LABELS)
            and _key(labels) not in real.get(labels.get("runbook_job", ""), {}).get(name, set())]


def test_the_unit_tests_use_series_the_runbook_writes(real_files: dict[str, Path]) -> None:
    real: Real = {}
    for job, path in real_files.items():
        for (name, labels), _ in samples(path.read_text()).items():
            assert dict(labels)["runbook_job"] == job
            real.setdefault(job, {}).setdefault(name, set()).add(_key(dict(labels)))
    used = [_series(s["series"]) for t in yaml.safe_load(RULE_TESTS.read_text())["tests"] for s in t["input_series"]]
    assert used and all(SCRAPE_LABELS <= set(labels) for _, labels in used), "series carry the scrape's labels"
    assert unknown_series(used, real) == [], f"series in {RULE_TESTS.name} that no real --metrics-file output holds"


def test_a_series_the_runbook_does_not_write_is_caught() -> None:
    """The check above trips on a renamed metric, a label it does not write, a label value it never has and a job
    with no real file; it takes any target."""
    real: Real = {"x": {"runbook_drift": {(("runbook_job", "x"), ("setting", "appendonly"), ("target", "*"))}}}
    wrong = ['redis_drift{instance="i",job="n",runbook_job="x",target="t",setting="appendonly"}',
             'runbook_drift{instance="i",job="n",runbook_job="x",target="t",setting="appendonly",db="0"}',
             'runbook_drift{instance="i",job="n",runbook_job="x",target="t",setting="append-only"}',
             'runbook_drift{instance="i",job="n",runbook_job="y",target="t",setting="appendonly"}']
    assert len(unknown_series([_series(w) for w in wrong], real)) == len(wrong)
    right = 'runbook_drift{instance="i",job="n",runbook_job="x",target="any",setting="appendonly"}'
    assert unknown_series([_series(right)], real) == []


def test_every_alert_is_tested_firing_and_silent_and_documented() -> None:
    rules = [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    assert {r["alert"] for r in rules} == ALERTS
    tests = [a for t in yaml.safe_load(RULE_TESTS.read_text())["tests"] for a in t["alert_rule_test"]]
    fires = {a["alertname"] for a in tests if a.get("exp_alerts")}
    silent = {a["alertname"] for a in tests if not a.get("exp_alerts")}
    assert (ALERTS - fires, ALERTS - silent) == (set(), set())
    headings = anchors(MONITORING_PAGE.read_text())
    for rule in rules:
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        page, _, anchor = rule["annotations"]["runbook"].partition("#")
        assert (REPO / page) == MONITORING_PAGE and anchor in headings, rule["alert"]


def test_promtool_checks_and_unit_tests_the_rules() -> None:
    promtool = tool_or_skip("/usr/bin/promtool", "prometheus")
    proc = subprocess.run([str(promtool), "check", "rules", RULES.name], cwd=RULES_DIR, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0 and f"SUCCESS: {len(ALERTS)} rules found" in proc.stdout, proc.stdout + proc.stderr
    proc = subprocess.run([str(promtool), "test", "rules", RULE_TESTS.name], cwd=RULES_DIR, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and "SUCCESS" in proc.stdout, proc.stdout + proc.stderr


def test_promtool_unit_tests_can_fail(tmp_path: Path) -> None:
    """A rule test that expects the drift alert before its `for:` is over fails: `promtool test rules` is a test."""
    promtool = tool_or_skip("/usr/bin/promtool", "prometheus")
    (tmp_path / RULES.name).write_text(RULES.read_text())
    text = RULE_TESTS.read_text().replace("- eval_time: 15m\n        alertname: RedisAofNotInConfigFile",
                                          "- eval_time: 5m\n        alertname: RedisAofNotInConfigFile", 1)
    assert text != RULE_TESTS.read_text()
    (tmp_path / RULE_TESTS.name).write_text(text)
    proc = subprocess.run([str(promtool), "test", "rules", RULE_TESTS.name], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode != 0 and "RedisAofNotInConfigFile" in proc.stdout + proc.stderr
