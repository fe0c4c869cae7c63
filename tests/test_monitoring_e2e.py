"""The shipped monitoring end to end, with real parts on loopback: two servers in the seed's state (AOF on at
runtime, `appendonly no` in redis.conf), the crontab command of docs/cron-ci.md writing one text file per job into
the directory of Debian's prometheus-node-exporter (textfile collector only), Debian's prometheus-redis-exporter,
and Debian's Prometheus scraping both with the shipped rules (monitoring/prometheus/runbook-rules.yml).

The drift alert fires for both; one server stops while still drifted: its unreachable alert fires and its drift
alert keeps firing (same activeAt); the other gets `run all -p apply true`: its drift alert resolves. Then every
query of the Grafana dashboard returns data from that Prometheus.
"""

from __future__ import annotations

import json
import logging
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import pytest
import yaml
from helpers import (
    DASHBOARD,
    REPO,
    dashboard_queries,
    runbook_cli,
    switch_aof_on,
    tool_or_skip,
    with_all_selected,
    with_selected,
)
from test_readme_examples import _crontab

from runbook.sandbox.seed import populate
from runbook.sandbox.throwaway import Sandbox, _die_with_parent, free_port

pytestmark = pytest.mark.e2e
log = logging.getLogger(__name__)
RULES = REPO / "monitoring" / "prometheus" / "runbook-rules.yml"
T = TypeVar("T")


@dataclass
class Daemon:
    """One exporter or Prometheus, started by this test on a free loopback port."""

    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def log_tail(self) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-15:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def _get(url: str, timeout: float = 5) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return resp.read()


def _answers(url: str) -> bool:
    try:
        _get(url, timeout=1)
        return True
    except OSError:
        return False


def _poll(what: str, probe: Callable[[], T], timeout: float = 20) -> T:
    """`probe()` again every 0.2 s until it returns something truthy; fails after `timeout` s with the last value."""
    deadline = time.monotonic() + timeout
    while True:
        seen = probe()
        if seen:
            return seen
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not seen within {timeout} s; last seen: {seen!r}")
        time.sleep(0.2)


def _start(name: str, argv: Callable[[int], list[str]], tmp: Path, ready: str) -> Daemon:
    """`argv(port)` on a free port, until `ready` (a path on it) answers; another port if that one was taken."""
    for attempt in range(3):
        port = free_port()
        log_path = tmp / f"{name}.{attempt}.log"
        with log_path.open("wb") as out:
            # Killed with the test run, like a sandbox, even when pytest itself is killed.
            proc = subprocess.Popen(argv(port), stdout=out, stderr=subprocess.STDOUT, cwd=tmp,
                                    start_new_session=True, preexec_fn=_die_with_parent)
        daemon = Daemon(name, proc, port, log_path)
        deadline = time.monotonic() + 20
        while proc.poll() is None and time.monotonic() < deadline and not _answers(daemon.url(ready)):
            time.sleep(0.1)
        if proc.poll() is None and _answers(daemon.url(ready)):
            return daemon
        daemon.stop()
        if "address already in use" not in log_path.read_text(errors="replace"):
            pytest.fail(f"{name} did not start on 127.0.0.1:{port}:\n{daemon.log_tail()}")
    pytest.fail(f"{name}: no free port after 3 tries")


class Prometheus:
    """The HTTP API of the Prometheus under test."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon

    def api(self, path: str, **params: str) -> dict:
        url = self.daemon.url(f"/api/v1/{path}") + ("?" + urllib.parse.urlencode(params) if params else "")
        try:
            body = json.loads(_get(url))
        except urllib.error.HTTPError as err:  # a query Prometheus refuses (400, 422) says why in its body
            body = json.loads(err.read() or b"{}")
        assert body.get("status") == "success", f"{path} {params}: {body}"
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        return self.api("query", query=expr)["result"]

    def alerts(self, name: str, state: str = "firing") -> dict[str, dict]:
        """The alerts `name` in `state`, by their `target` label."""
        return {a["labels"].get("target", ""): a for a in self.api("alerts")["alerts"]
                if a["labels"]["alertname"] == name and a["state"] == state}


@dataclass
class Job:
    """One cron job of docs/cron-ci.md: its params file (its stem names the `runbook_job`), text file, archive."""

    name: str
    server: Sandbox
    params: Path
    metrics: Path
    archive: Path

    @property
    def target(self) -> str:
        return self.server.url


def _cron(jobs: list[Job], tmp: Path) -> dict[str, subprocess.CompletedProcess[str]]:
    """The crontab command as written, once per job, side by side (as two cron.d entries would run)."""
    variables, _, command = _crontab()
    procs = {}
    for job in jobs:
        env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp), **variables,  # what cron gives the command
               "RUNBOOK_HOME": str(REPO), "RUNBOOK_PARAMS": str(job.params),
               "RUNBOOK_ARCHIVE": str(job.archive), "RUNBOOK_METRICS": str(job.metrics)}
        procs[job.name] = subprocess.Popen(["/bin/sh", "-c", command], env=env, stdout=subprocess.PIPE,
                                           stderr=subprocess.PIPE, text=True)
    done = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        done[name] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    return done


def _rules_without_for(tmp: Path) -> tuple[Path, int]:
    """A copy of the shipped rules with every `for:` at 0s, so an alert fires at the first evaluation that sees its
    condition instead of 10 or 30 minutes later (the conditions themselves are the shipped ones)."""
    assert RULES.is_file(), f"{RULES.relative_to(REPO)} is missing"
    rules = yaml.safe_load(RULES.read_text())
    count = 0
    for group in rules["groups"]:
        for rule in group["rules"]:
            count += 1
            if "for" in rule:
                rule["for"] = "0s"
    path = tmp / "runbook-rules.for0s.yml"
    path.write_text(yaml.safe_dump(rules, sort_keys=False))
    return path, count


def _still_drifted(prom: Prometheus, job: Job, drifted: dict[str, dict]) -> None:
    """The drift alert of `job` fires, without a break since it first fired (its activeAt is the same)."""
    now = prom.alerts("RedisAofNotInConfigFile")
    assert job.target in now, f"RedisAofNotInConfigFile resolved for {job.target}, which is down and still drifted"
    assert now[job.target]["activeAt"] == drifted[job.target]["activeAt"], "it resolved and fired again"


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    yield started
    for daemon in reversed(started):
        daemon.stop()


def _seed_state(sb: Sandbox) -> Sandbox:
    """The seed's state: keys saved in dump.rdb, then AOF switched on at runtime only (redis.conf says no)."""
    client = sb.client()
    populate(client, 200)
    client.save()
    switch_aof_on(client)
    assert client.config_get("appendonly")["appendonly"] == "yes"
    assert "appendonly no" in sb.config_path.read_text()  # type: ignore[union-attr]
    return sb


def test_alerts_follow_the_server_and_every_dashboard_query_has_data(
        tmp_path: Path, default_binary: Path, make_sandbox: Callable[..., Sandbox],
        daemons: list[Daemon]) -> None:
    started = time.monotonic()
    prometheus_bin = tool_or_skip("/usr/bin/prometheus", "prometheus")
    node_exporter_bin = tool_or_skip("/usr/bin/prometheus-node-exporter", "prometheus-node-exporter")
    redis_exporter_bin = tool_or_skip("/usr/bin/prometheus-redis-exporter", "prometheus-redis-exporter")
    textfiles = tmp_path / "textfile"
    textfiles.mkdir()

    # Two servers, two cron jobs: `cache` will get the change, `sessions` stops while drifted.
    jobs = []
    for name in ("cache", "sessions"):
        sb = _seed_state(make_sandbox(default_binary))
        params = tmp_path / f"{name}.yaml"
        params.write_text(yaml.safe_dump({"target": sb.url, "config_file": str(sb.config_path)}))
        jobs.append(Job(name, sb, params, textfiles / f"redis_runbook_{name}.prom", tmp_path / f"archive-{name}"))
    cache, sessions = jobs

    node = _start("node-exporter", lambda port: [
        str(node_exporter_bin), "--collector.disable-defaults", "--collector.textfile",
        f"--collector.textfile.directory={textfiles}", f"--web.listen-address=127.0.0.1:{port}"],
        tmp_path, "/metrics")
    daemons.append(node)
    exporter = _start("redis-exporter", lambda port: [
        str(redis_exporter_bin), f"--redis.addr=redis://127.0.0.1:{cache.server.port}",
        f"--web.listen-address=127.0.0.1:{port}"], tmp_path, "/metrics")
    daemons.append(exporter)
    rules, rule_count = _rules_without_for(tmp_path)  # the shipped rules, every `for:` at 0s
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules)],
        "scrape_configs": [
            {"job_name": "node", "static_configs": [{"targets": [f"127.0.0.1:{node.port}"]}]},
            {"job_name": "redis", "static_configs": [{"targets": [f"127.0.0.1:{exporter.port}"]}]},
        ]}))
    prom = Prometheus(_start("prometheus", lambda port: [
        str(prometheus_bin), f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}"], tmp_path, "/-/ready"))
    daemons.append(prom.daemon)
    (group,) = prom.api("rules")["groups"]
    assert (group["name"], len(group["rules"])) == ("redis-persistence", rule_count)

    # 1. The cron command on both: each run fails on the drift (cron mails it), each writes its own text file.
    runs = _cron(jobs, tmp_path)
    assert {n: r.returncode for n, r in runs.items()} == {"cache": 1, "sessions": 1}, runs
    assert all("config_drift=fail" in r.stdout for r in runs.values()), runs
    drifted = _poll("RedisAofNotInConfigFile firing for both targets",
                    lambda: (a := prom.alerts("RedisAofNotInConfigFile")).keys() >= {cache.target, sessions.target}
                    and a)
    assert drifted[cache.target]["labels"]["runbook_job"] == "cache"
    failing = prom.query('ALERTS{alertname="RunbookCheckFailing",check="config_drift",alertstate="firing"}')
    assert {a["metric"]["target"] for a in failing} == {cache.target, sessions.target}
    assert not prom.alerts("RunbookTargetUnreachable")

    # 2. `sessions` stops while drifted: unreachable fires, and its drift alert does not resolve (same activeAt).
    sessions.server.stop()
    (run,) = _cron([sessions], tmp_path).values()
    assert run.returncode != 0 and sessions.target in run.stdout + run.stderr, run
    _poll("RunbookTargetUnreachable firing for the stopped server",
          lambda: sessions.target in prom.alerts("RunbookTargetUnreachable"))
    assert prom.query(f'runbook_target_up{{target="{sessions.target}"}} == 0'), "Prometheus has the new file"
    assert prom.query(f'runbook_drift{{target="{sessions.target}",setting="appendonly"}} == 1'), "carried forward"
    _still_drifted(prom, sessions, drifted)
    assert cache.target not in prom.alerts("RunbookTargetUnreachable")

    # 3. `cache` gets the change, then the cron command again: its drift alert resolves, the stopped one's stays.
    applied = runbook_cli("run", "all", "-f", str(cache.params), "-p", "apply", "true",
                          "--archive", str(cache.archive))
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert "appendonly yes" in cache.server.config_path.read_text()  # type: ignore[union-attr]
    (run,) = _cron([cache], tmp_path).values()
    assert (run.returncode, run.stdout, run.stderr) == (0, "", ""), run  # healthy: silent, cron mails nothing
    verified = runbook_cli("archive", "verify", "--archive", str(cache.archive),
                           "--metrics-file", str(textfiles / "redis_runbook_archive.prom"), "--metrics-job", "cache")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    _poll("the change and the archive verify scraped",
          lambda: prom.query(f'runbook_change_last_info{{target="{cache.target}",result="ok"}}')
          and prom.query('runbook_archive_verify_ok{runbook_job="cache"} == 1'))
    _poll("RedisAofNotInConfigFile resolved for the changed server",
          lambda: cache.target not in prom.alerts("RedisAofNotInConfigFile"))
    _still_drifted(prom, sessions, drifted)
    assert not prom.alerts("RunbookArchiveVerifyFailing")
    # Three text files in one directory, every one read (no name clashes between the jobs' series).
    assert [s["value"][1] for s in prom.query("node_textfile_scrape_error")] == ["0"]
    assert len(prom.query("node_textfile_mtime_seconds")) == 3
    for rule in prom.api("rules")["groups"][0]["rules"]:
        assert rule["health"] == "ok", f"rule {rule['name']}: {rule.get('lastError')}"

    # 4. Every query of the dashboard (panels, annotation, variables; "All" chosen) returns data.
    # And with one job, its target and the exporter chosen (as Grafana escapes them: the URL's dots, for one).
    board = json.loads(DASHBOARD.read_text())
    empty = [where for where, expr in dashboard_queries(board) if not prom.query(with_all_selected(expr))]
    assert not empty, f"dashboard queries with no data from this Prometheus: {empty}"
    chosen = {"runbook_job": "cache", "target": cache.target, "instance": f"127.0.0.1:{exporter.port}"}
    empty = [where for where, expr in dashboard_queries(board) if not prom.query(with_selected(expr, chosen))]
    assert not empty, f"dashboard queries with no data for {chosen}: {empty}"
    log.info("monitoring end to end: %.1f s", time.monotonic() - started)
