"""The change report (runbook.evidence.change_report, change_page) and the command log (runbook.server.commandlog).

Unit tables for the log's lines, an archive built here for the report's place in the index, and real runs: `run all
-p apply true` on the sandbox opened in Debian's Chromium at 1280x800, a change that fails after it changed the
server, and a plan.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers import REPO, run_json, runbook_cli

from runbook.evidence import change_report
from runbook.evidence.archive import Archive, check, read_entries, read_index
from runbook.evidence.index import REPORT
from runbook.evidence.journal import Journal
from runbook.evidence.prune import prune
from runbook.model import Check, Outcome, Status, StepSummary
from runbook.server.commandlog import (
    COMMAND_LOG_ENV,
    RUN_ID_ENV,
    by_server,
    describe,
    fold,
    key_pattern,
    sent_in_step,
    step_lines,
)
from runbook.server.configfile import MASK

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = REPO / "test-artifacts"
KIB = 1024


# -- the command log -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("command, line", [
    (("CONFIG", "SET", "appendonly", "yes"), "CONFIG SET appendonly yes"),
    (("CONFIG SET", "appendfsync", "everysec"), "CONFIG SET appendfsync everysec"),  # redis-py's one-word form
    (("CONFIG", "REWRITE"), "CONFIG REWRITE"),
    (("BGSAVE", "SCHEDULE"), "BGSAVE SCHEDULE"),
    (("SHUTDOWN",), "SHUTDOWN"),
    (("CONFIG", "SET", "save", "3600 1 300 100"), 'CONFIG SET save "3600 1 300 100"'),
    (("CONFIG", "SET", "save", ""), 'CONFIG SET save ""'),
    (("SET", b"runbook:canary:20261201T233326:{23d684fc}:17", b"v", "EX", 3600), "SET runbook:canary:*"),
    (("CONFIG", "SET", "requirepass", "hunter2"), f"CONFIG SET requirepass {MASK}"),
    (("CONFIG", "SET", "masterauth", "hunter2", "appendonly", "yes"), f"CONFIG SET masterauth {MASK} appendonly yes"),
    (("ACL", "SETUSER", "app", "on", ">hunter2", "#abc", "~*"), f"ACL SETUSER app on {MASK} {MASK} ~*"),
    (("MIGRATE", "h", "1", "k", "0", "5", "AUTH2", "u", "hunter2"), f"MIGRATE h 1 k 0 5 AUTH2 {MASK} {MASK}"),
    (("EVAL", "-- runbook: take the server lock\nreturn 1", 1, "runbook:lock:{runbook}", "t" * 32),
     'EVAL <lua: runbook: take the server lock> 1 runbook:lock:{runbook} "tttttttt...(32 bytes)"'),
    (("RB-CONFIG-7f", "SET", "appendonly", "yes"), "RB-CONFIG-7f SET appendonly yes"),
])
def test_a_write_command_is_one_line_with_its_secrets_masked(command, line) -> None:
    assert describe(command, config_command="RB-CONFIG-7f") == (line, 1)


@pytest.mark.parametrize("command", [
    ("INFO", "persistence"), ("CONFIG", "GET", "appendonly"), ("CONFIG GET", "*"), ("PING",), ("AUTH", "hunter2"),
    ("HELLO", "3", "AUTH", "default", "hunter2"), ("CLIENT", "SETINFO", "LIB-NAME", "redis-py"), ("SELECT", 0),
    ("MGET", "a", "b"), ("DBSIZE",), ("LASTSAVE",), ("ACL", "DRYRUN", "app", "CONFIG", "SET"),
    ("WAITAOF", 1, 0, 5000), ("RB-CONFIG-7f", "GET", "save"), ("CLUSTER", "SLOTS"),
])
def test_a_read_only_command_is_not_listed(command) -> None:
    assert describe(command, config_command="RB-CONFIG-7f") is None


def test_the_connections_own_password_is_masked_wherever_it_appears() -> None:
    assert describe(("SET", "k", "hunter2"), "hunter2") == ("SET k", 1)  # a data write never shows its value
    assert describe(("CONFIG", "SET", "dbfilename", "hunter2"), "hunter2") == (f"CONFIG SET dbfilename {MASK}", 1)


@pytest.mark.parametrize("key, pattern", [
    ("runbook:canary:20261201T233326:{23d684fc}:17", "runbook:canary:*"),
    ("user:1000:profile", "user:*:profile"),
    ("runbook:lock:{runbook}", "runbook:lock:{runbook}"),
    ("plain", "plain"),
])
def test_key_patterns(key: str, pattern: str) -> None:
    assert key_pattern(key) == pattern


def test_multi_key_writes_count_their_keys_and_consecutive_lines_fold() -> None:
    assert describe(("UNLINK", *[f"runbook:canary:x1:{i}" for i in range(1000)])) == ("UNLINK runbook:canary:*", 1000)
    assert fold([("SET a", 1), ("SET a", 2), ("BGSAVE", 1), ("SET a", 1)]) == [("SET a", 3), ("BGSAVE", 1),
                                                                              ("SET a", 1)]


def test_every_client_of_a_target_is_logged_and_no_password_is(default_binary: Path, make_sandbox, clean_env,
                                                                 tmp_path: Path) -> None:
    """The waits' bounded clients and pipelines go past the target's log; the file the runner reads gets the
    same lines under the step's run id; AUTH and the password never appear."""
    import runbook
    from runbook.server.poll import Deadline

    secret = "Zq9-change-report-7c1"
    sb = make_sandbox(default_binary, password=secret)
    sink = tmp_path / "commands.jsonl"
    clean_env.setenv("REDIS_PASSWORD", secret)
    clean_env.setenv(COMMAND_LOG_ENV, str(sink))
    clean_env.setenv(RUN_ID_ENV, "step-1")
    target = runbook.connect(sb.url)
    target.config_set("appendfsync", "always")
    Deadline(5).call(target.client, lambda c: c.config_set("appendfsync", "everysec"), "CONFIG SET")
    pipe = target.client.pipeline(transaction=False)
    for i in range(200):
        pipe.set(f"runbook:canary:t:{i}", "v", ex=60)
    pipe.execute()
    target.client.info("persistence")
    target.client.config_get("appendonly")
    clean_env.setenv(RUN_ID_ENV, "step-2")
    target.client.unlink(*[f"runbook:canary:t:{i}" for i in range(200)])
    target.client.execute_command("CONFIG", "SET", "requirepass", secret)  # the same password, set again

    first = ["CONFIG SET appendfsync always", "CONFIG SET appendfsync everysec", "SET runbook:canary:t:* x200"]
    assert target.commands.lines("step-1") == first
    assert step_lines(sink, "step-1") == first
    assert sent_in_step("step-2") == ["UNLINK runbook:canary:t:* x200", f"CONFIG SET requirepass {MASK}"]
    assert secret not in sink.read_text() and "AUTH" not in sink.read_text()
    assert by_server(sink, "step-2") == {sb.url: sent_in_step("step-2")}


# -- the report in the archive ----------------------------------------------------------------------------------

def _record(step: str, summary: StepSummary, code: int, **extra) -> dict:
    return {"change_id": "c0ffee000001", "run_id": f"run-{step}", "notebook": step, "target": "redis://db-1:6379/0",
            "status": str(summary.verdict), "exit_code": code, "summary": summary.to_json(), "files": {},
            "started": "2026-12-01T10:00:00+00:00", "ended": "2026-12-01T10:00:02+00:00",
            "git_commit": "abc123", "runbook_version": "0.1.0", **extra}


ENABLED = StepSummary("enable-aof", Status.PASS, Outcome.CHANGED, "redis", "7.2.4", facts={
    "changes": [{"setting": "appendonly", "from": "no", "to": "yes"}],
    "commands_sent": ["CONFIG SET appendonly yes"], "dbsize_before": 10, "dbsize": 10})
FAILED = StepSummary("persist-config", Status.ERROR, Outcome.PLANNED, error="ChangeFailed: the rewrite was refused",
                     facts={"changes": [{"setting": "appendonly", "from": "no", "to": "yes"}],
                            "commands_sent": ["CONFIG REWRITE"], "config_file": "/etc/redis/redis.conf"})


def test_the_report_is_listed_in_the_index_and_verified_but_is_no_record(tmp_path: Path) -> None:
    archive = Archive(tmp_path)
    journal = Journal(archive, "c0ffee000001", {"runbook_version": "0.1.0", "git_commit": "abc123"})
    records = [archive.add(_record("enable-aof", ENABLED, 0)), archive.add(_record("persist-config", FAILED, 1))]
    path = change_report.write(journal, records, change_report.RunFacts(1, operator="ops@bastion"))
    assert path == tmp_path / "reports" / "c0ffee000001.html"
    assert [r["notebook"] for r in read_index(tmp_path)] == ["enable-aof", "persist-config"]
    entry = read_entries(tmp_path)[-1]
    assert entry["kind"] == REPORT and list(entry["files"]) == ["reports/c0ffee000001.html"]
    assert entry["verdict"] == "FAILED" and entry["seq"] == 3
    found = check(tmp_path)
    assert found.problems == [] and found.records == 2 and found.reports == 1
    html = path.read_text()
    assert "ops@bastion" in html and "abc123" in html and "c0ffee000001" in html
    # A failed change says first what failed, what had been changed, and how to undo it.
    alert = html[html.index('id="failure"'):html.index("</div>", html.index('id="failure"'))]
    assert "persist-config on redis://db-1:6379/0" in alert and "the rewrite was refused" in alert
    assert "appendonly no -&gt; yes" in alert
    assert "runbook run rollback -p target redis://db-1:6379/0 -p change_id c0ffee000001 -p apply true" in alert
    # Each record's hash is the sha256 of its line: the prev_hash of the entry after it.
    lines = (tmp_path / "index" / "0000000001.jsonl").read_bytes().splitlines()
    assert json.loads(lines[1])["prev_hash"] in html and json.loads(lines[2])["prev_hash"] in html
    path.write_text(html.replace("FAILED", "PASSED"))  # same size: altered, not partial
    assert any("reports/c0ffee000001.html" in p and "altered" in p for p in check(tmp_path).problems)


def test_archive_show_reads_the_change_back_and_an_unknown_id_exits_2(tmp_path: Path) -> None:
    archive = Archive(tmp_path)
    journal = Journal(archive, "c0ffee000001", {})
    records = [archive.add(_record("enable-aof", ENABLED, 0)), archive.add(_record("persist-config", FAILED, 1))]
    change_report.write(journal, records, change_report.RunFacts(1, operator="ops@bastion",
                                                                 runner_commands={"redis://db-1:6379/0": ["EVAL x"]}))
    shown = runbook_cli("archive", "show", "c0ffee", "--archive", str(tmp_path))
    assert shown.returncode == 0, shown.stderr
    out = shown.stdout
    assert out.startswith("change    c0ffee000001: FAILED (exit 1)")
    assert "targets:  redis://db-1:6379/0" in out and "run by:   ops@bastion, commit abc123" in out
    assert re.search(r"1 enable-aof .* pass .* yes", out) and re.search(r"2 persist-config .* error", out)
    assert "changed:  appendonly no -> yes (runtime; enable-aof on redis://db-1:6379/0)" in out
    assert "  CONFIG SET appendonly yes" in out and "  EVAL x" in out and "  CONFIG REWRITE" in out
    assert "failed:   persist-config on redis://db-1:6379/0: ChangeFailed" in out
    assert out.rstrip().endswith(f"report:   {tmp_path / 'reports' / 'c0ffee000001.html'}")
    unknown = runbook_cli("archive", "show", "deadbeef", "--archive", str(tmp_path))
    assert unknown.returncode == 2 and unknown.stdout == ""
    [line] = unknown.stderr.splitlines()
    assert str(tmp_path) in line and "no change 'deadbeef'" in line and "runbook archive list" in line


def test_a_remote_archive_uploads_the_report_and_show_gives_its_url(tmp_path: Path) -> None:
    url = f"memory://reports-{tmp_path.name}/archive"
    archive = Archive(url)
    path = change_report.write(Journal(archive, "c0ffee000001", {}), [archive.add(_record("enable-aof", ENABLED, 0))],
                               change_report.RunFacts(0))
    assert archive.location(path) == f"{url}/reports/c0ffee000001.html"
    archive.close()  # the local staging dir goes: what is left is at the URL
    assert not path.exists() and check(url).problems == []
    found = change_report.load(url, "c0ffee000001")
    assert found.report.terminal(change_report.location(url, found.file))[-1] == \
        f"report:   {url}/reports/c0ffee000001.html"


def test_a_routine_inspection_gets_no_report_and_prune_takes_a_failed_ones_with_it(tmp_path: Path) -> None:
    inspect = StepSummary("inspect", Status.FAIL, checks=(Check("config_drift", Status.FAIL, "appendonly drifts"),))
    rec = _record("inspect", inspect, 1, started="2020-01-01T00:00:00+00:00")
    assert not change_report.wanted([{**rec, "exit_code": 0}], 0)
    assert change_report.wanted([rec], 1) and change_report.wanted([_record("enable-aof", ENABLED, 0)], 0)
    archive = Archive(tmp_path)
    change_report.write(Journal(archive, "c0ffee000001", {}), [archive.add(rec)], change_report.RunFacts(1))
    assert (tmp_path / "reports" / "c0ffee000001.html").is_file()
    done = prune(tmp_path, 30)
    assert done.changes == 1 and not (tmp_path / "reports" / "c0ffee000001.html").exists()
    assert check(tmp_path).problems == []


def test_plan_and_applied_diff_side_by_side_with_secrets_masked(tmp_path: Path) -> None:
    planned = "--- redis.conf (now)\n+++ redis.conf (after)\n-appendonly no\n+appendonly yes\n"
    applied = planned + "+user default on >hunter2 ~* &* +@all\n+requirepass hunter2\n"
    persisted = StepSummary("persist-config", Status.PASS, Outcome.CHANGED, facts={
        "changes": [{"setting": "appendonly", "from": "no", "to": "yes"}], "config_file": "/etc/redis/redis.conf",
        "edited_file": "/etc/redis/redis.conf", "backup": "/etc/redis/redis.conf.bak", "diff": applied,
        "planned_diff": planned, "planned_directives": ["appendonly"], "applied_directives": ["appendonly", "user"],
        "config_sha256_before": "ab" * 32, "commands_sent": ["CONFIG REWRITE"]})
    archive = Archive(tmp_path)
    path = change_report.write(Journal(archive, "c0ffee000001", {}), [archive.add(_record("persist-config",
                                                                                          persisted, 0))],
                               change_report.RunFacts(0))
    html = path.read_text()
    assert "<th>planned</th><th>applied</th>" in html and html.count("+appendonly yes") == 2
    assert "plan names: appendonly; applied: appendonly, user (they differ)" in html
    assert "hunter2" not in html and f"requirepass {MASK}" in html
    assert "/etc/redis/redis.conf.bak" in html and "ab" * 32 in html  # the config backup with its sha256
    assert '<span class="verdict pass">OK</span>' in html


def test_a_signed_archive_says_so_and_the_report_entry_is_signed_too(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    if shutil.which("ssh-keygen") is None:
        pytest.skip("ssh-keygen is not installed (apt-get install openssh-client)")
    from runbook.evidence.signing import ALLOWED_SIGNERS_ENV, NAMESPACE, SIGNING_KEY_ENV

    key = tmp_path / "keys" / "signer"
    key.parent.mkdir()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "ops", "-f", str(key)], check=True)
    allowed = key.parent / "allowed_signers"
    allowed.write_text(f'ops@example.com namespaces="{NAMESPACE}" {key.with_suffix(".pub").read_text()}')
    monkeypatch.setenv(SIGNING_KEY_ENV, str(key))
    monkeypatch.setenv(ALLOWED_SIGNERS_ENV, str(allowed))
    root = tmp_path / "archive"
    archive = Archive(root)
    records = [archive.add(_record("enable-aof", ENABLED, 0)), archive.add(_record("persist-config", FAILED, 1))]
    path = change_report.write(Journal(archive, "c0ffee000001", {}), records, change_report.RunFacts(1))
    assert "signed: all 2 records carry an OpenSSH signature" in path.read_text()
    assert read_entries(root)[-1]["signature"].startswith("-----BEGIN SSH SIGNATURE-----")
    assert check(root).problems == []
    monkeypatch.delenv(SIGNING_KEY_ENV)
    unsigned = tmp_path / "unsigned"
    plain = Archive(unsigned)
    path = change_report.write(Journal(plain, "c0ffee000002", {}), [plain.add(_record("enable-aof", ENABLED, 0))],
                               change_report.RunFacts(0))
    assert "not signed (no RUNBOOK_SIGNING_KEY)" in path.read_text()


def test_the_pdf_is_printed_beside_the_report_when_asked(tmp_path: Path) -> None:
    if CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium): no PDF to print")
    archive = Archive(tmp_path)
    change_report.write(Journal(archive, "c0ffee000001", {}), [archive.add(_record("enable-aof", ENABLED, 0))],
                        change_report.RunFacts(0), pdf=True)
    pdf = tmp_path / "reports" / "c0ffee000001.pdf"
    assert pdf.read_bytes()[:5] == b"%PDF-"
    assert set(read_entries(tmp_path)[-1]["files"]) == {"reports/c0ffee000001.html", "reports/c0ffee000001.pdf"}
    assert check(tmp_path).problems == []


# -- real runs --------------------------------------------------------------------------------------------------

@pytest.mark.notebook
def test_run_all_writes_a_report_a_person_reads_in_one_screen(tmp_path: Path) -> None:
    """`run all -p apply true` on the sandbox: the report in the archive, opened in Debian's Chromium at 1280x800,
    shows its header fields without scrolling and no code; the commands sent are the change's own."""
    archive = tmp_path / "archive"
    rc, out, err = run_json(archive, "all", "-p", "apply", "true", "-p", "sandbox_scenario", "rdb-only",
                            "-p", "destination", str(tmp_path / "backups"))
    assert rc == 0, err
    report = Path(out["report"])
    assert report == archive / "reports" / f"{out['change_id']}.html" and report.is_file()
    assert report.stat().st_size <= 300 * KIB
    html = report.read_text()
    sent = [line for s in out["steps"] for line in s["summary"]["commands_sent"]]
    assert "CONFIG SET appendonly yes" in sent and "CONFIG REWRITE" in sent and "SET runbook:canary:* x1000" in sent
    assert "CONFIG SET appendonly yes" in html and "CONFIG REWRITE" in html and "take the server lock" in html
    assert out["steps"][0]["summary"]["commands_sent"] == []  # inspect is read-only
    for step in out["steps"]:  # every step's evidence is linked, relative to reports/
        assert f'href="../{Path(step["html"]).relative_to(archive).as_posix()}"' in html
    assert check(archive).problems == []
    if CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium): the page was not looked at")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is a test extra: pip install -e '.[test]'")
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.goto(report.as_uri())
            fields = {"verdict": "#verdict", "change id": "#f-change", "targets": "#f-targets", "run by": "#f-run",
                      "commit": "#f-commit", "start": "#f-started", "end": "#f-ended", "what changed": "#changes"}
            for name, selector in fields.items():
                box = page.locator(selector).bounding_box()
                assert box is not None and box["height"] > 0, name
                assert box["y"] >= 0 and box["y"] + box["height"] <= 800, (name, box)
            assert page.locator("#verdict").inner_text().startswith("Change report OK")
            assert page.locator("#f-change").inner_text() == out["change_id"]
            assert page.locator("#f-targets").inner_text() == "sandbox"
            assert re.fullmatch(r"\S+@\S+", page.locator("#f-run").inner_text())
            assert page.locator("#f-commit").inner_text().split()[0] == read_index(archive)[0]["git_commit"]
            assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", page.locator("#f-started").inner_text())
            changes = page.locator("#changes").inner_text()
            assert "appendonly" in changes and "runtime" in changes and "no -> yes" in changes
            # No code: no notebook input area, no source of a cell.
            assert page.locator(".jp-InputArea, .input_area, .jp-CodeCell, textarea, input").count() == 0
            assert "import runbook" not in page.content()
            page.screenshot(path=str(ARTIFACTS / "change-report.png"), full_page=False)
        except Exception:
            page.screenshot(path=str(ARTIFACTS / "change-report-FAILED.png"))
            raise
        finally:
            browser.close()
    assert (ARTIFACTS / "change-report.png").stat().st_size > 10_000


@pytest.mark.notebook
def test_a_change_that_fails_after_changing_says_what_failed_and_what_had_changed(
        default_binary: Path, make_sandbox, tmp_path: Path) -> None:
    """enable-aof switches AOF on, the inspection after it fails (the file still says no): the report and the
    terminal say so, with the way back; the server's password reaches neither the report nor the index."""
    secret = "Zq9-report-secret-7c1"
    sb = make_sandbox(default_binary, password=secret)
    archive = tmp_path / "archive"
    proc = runbook_cli("run", "enable-aof", "inspect", "-p", "target", sb.url, "-p", "apply", "true",
                       "--archive", str(archive), env={"REDIS_PASSWORD": secret})
    assert proc.returncode == 1, proc.stdout + proc.stderr
    change_id = proc.stdout.split()[1]
    report = archive / "reports" / f"{change_id}.html"
    assert f"report:   {report}" in proc.stdout.splitlines()
    html = report.read_text()
    alert = html[html.index('id="failure"'):html.index("</div>", html.index('id="failure"'))]
    assert f"inspect on {sb.url} fail" in alert and "config_drift" in alert
    assert f"Already changed: enable-aof on {sb.url}: appendonly no -&gt; yes (runtime)" in alert
    assert f"runbook run rollback -p target {sb.url} -p change_id {change_id} -p apply true" in alert
    assert "CONFIG SET appendonly yes" in html and '<span class="verdict fail">FAILED</span>' in html
    assert all(secret not in p.read_text(errors="replace") for p in archive.rglob("*") if p.is_file())
    assert secret in sb.config_path.read_text()  # the server really has it: the check above could have failed
    assert sb.client().config_get("appendonly") == {"appendonly": "yes"}  # as the report says


@pytest.mark.notebook
def test_a_plan_says_nothing_was_changed_and_lists_what_would_be(tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    rc, out, err = run_json(archive, "enable-aof", "-p", "sandbox_scenario", "rdb-only")
    assert rc == 0, err
    html = Path(out["report"]).read_text()
    assert "Nothing was changed: plan only. What would change" in html
    changes = html[html.index('id="changes"'):html.index("</table>", html.index('id="changes"'))]
    assert "appendonly" in changes and "runtime" in changes and "no</code> -&gt; <code>yes" in changes
    assert "plan only: nothing was changed" in html and out["steps"][0]["summary"]["commands_sent"] == []


# -- a step that put its own change back; a test run is a proof, not a change ------------------------------------

PUT_BACK = StepSummary("enable-aof", Status.INTERRUPTED, error="stopped by SIGINT: ChangeInterrupted: enabling AOF "
                       "interrupted (1.2 s in). The server was left as found: appendonly no.",
                       facts={"put_back": "The server was left as found: appendonly no."})
TESTED = StepSummary("test-persistence", Status.PASS, Outcome.DONE, "redis", "7.2.4", facts={
    "mode": "online", "canaries_written": 1000, "canaries_found": 1000, "commands_sent": ["BGSAVE"]})


def test_a_step_that_put_its_change_back_leaves_nothing_to_undo_in_the_report() -> None:
    from runbook.evidence import change_page

    r = change_report.build([_record("enable-aof", PUT_BACK, 1, status="interrupted")],
                            change_report.RunFacts(130, stopped_by="SIGINT"))
    assert r.undo() == [] and r.changed_lines() == []
    html = change_page.render(r)
    alert = html[html.index('id="failure"'):html.index("</div>", html.index('id="failure"'))]
    assert ("Already changed: nothing left: enable-aof on redis://db-1:6379/0 put back what it had changed (The "
            "server was left as found: appendonly no.)") in alert
    assert "To undo" not in alert and "no step had changed anything" not in alert
    assert "put back: enable-aof on redis://db-1:6379/0 put back what it had changed" in "\n".join(r.terminal())


def test_an_applied_test_is_done_but_is_no_change_of_the_target() -> None:
    r = change_report.build([_record("enable-aof", ENABLED, 0), _record("test-persistence", TESTED, 0)])
    assert [s.changed for s in r.steps] == ["yes", "yes"]
    assert r.changed_lines() == ["enable-aof on redis://db-1:6379/0: appendonly no -> yes (runtime)"]
    assert change_report.describe(TESTED) == "online test: 1000 of 1000 canaries back"
    planned = StepSummary("test-persistence", Status.PASS, Outcome.PLANNED, facts={"mode": "online", "would": "x"})
    assert change_report.describe(planned) == "would run the online test"


def test_a_skipped_step_says_why_it_did_not_run() -> None:
    """The report's line for a step that did not run is its reason (a --max-fail bound, an earlier failure)."""
    from runbook.evidence.change_report import describe
    from runbook.model import Status, StepSummary

    reason = "not started: --max-fail 1 reached (1 of 4 targets failed: redis://10.0.0.2:6379/0)"
    assert describe(StepSummary("enable-aof", Status.SKIPPED, facts={"reason": reason})) == f"not run: {reason}"
    assert describe(StepSummary("enable-aof", Status.PASS, facts={"reason": "x"})) != "not run: x"
