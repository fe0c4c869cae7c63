"""Check mode changes nothing (issue 17, item 1): a plan-only run (no `-p apply true`) of every notebook, of `all`
and of a fleet sends no write command to the server, writes nothing outside the archive, takes no server lock and
exits 0; the `changed` column says yes / would / no / -; `--detailed-exitcode` and `--diff`.

Each run is compared on a real server before and after: INFO commandstats (every command whose calls grew must be a
read), rdb_changes_since_last_save, DBSIZE, LASTSAVE, and every file under the server's dir (its config file, data
dir, log), plus the backup destination.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from helpers import index, run_json, runbook_cli, switch_aof_on

import runbook
from runbook.cli import _figures, changed, diffs, exit_code
from runbook.errors import ExitCode, ParameterError
from runbook.evidence.archive import Archive
from runbook.evidence.metrics import last_changes
from runbook.model import Check, Outcome, Status, StepSummary
from runbook.orchestration.locking import may_change
from runbook.orchestration.plan import NOTEBOOKS, plan
from runbook.orchestration.runner import RunResult, StepResult, _after_plan
from runbook.sandbox.seed import populate
from runbook.sandbox.throwaway import SEED_CONFIG, Sandbox
from runbook.server.target import Identity
from runbook.steps import backup, test_persistence

#: The commands a plan may send: reads, and the connection's own handshake. Any other command whose calls grow
#: (SET, UNLINK, BGSAVE, CONFIG SET or REWRITE, EVAL/EVALSHA of the lock, ...) fails the test, named.
READS = frozenset({
    "ping", "hello", "auth", "select", "info", "dbsize", "exists", "mget", "get", "type", "ttl", "pttl", "lastsave",
    "role", "config|get", "acl|dryrun", "acl|whoami", "acl|list", "acl|users", "acl|getuser", "acl|cat",
    "client|setinfo", "client|setname", "client|info",
    "command", "command|docs", "command|info", "command|count", "cluster|info", "cluster|myid", "cluster|slots",
    "pubsub|numsub",  # is a Sentinel subscribed (the restart test refuses a Sentinel-monitored primary)
})


@dataclass(frozen=True)
class Seen:
    """What a server shows of the writes it took, and its files."""

    calls: dict[str, int]
    rdb_changes: int
    dbsize: int
    lastsave: int
    files: dict[str, tuple[int, int, str]]  # path under the server's dir: size, mtime_ns, sha256


def seen(sb: Sandbox) -> Seen:
    client = sb.client()
    try:
        calls = {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in client.info("commandstats").items()}
        persistence = client.info("persistence")
        dbsize, lastsave = int(client.dbsize()), int(client.lastsave().timestamp())
    finally:
        client.close()
    assert sb.root is not None
    files = {str(p.relative_to(sb.root)): (p.stat().st_size, p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes())
                                             .hexdigest()) for p in sorted(sb.root.rglob("*")) if p.is_file()}
    return Seen(calls, int(persistence["rdb_changes_since_last_save"]), dbsize, lastsave, files)


def assert_nothing_written(before: Seen, after: Seen, *, also_absent: tuple[Path, ...] = ()) -> None:
    grown = {k: n - before.calls.get(k, 0) for k, n in after.calls.items() if n != before.calls.get(k, 0)}
    writes = {k: n for k, n in grown.items() if k not in READS}
    assert writes == {}, f"a plan sent these (command: calls): {writes}"
    assert grown.get("info", 0) > 0  # the run did reach the server
    assert (after.rdb_changes, after.dbsize, after.lastsave) == (before.rdb_changes, before.dbsize, before.lastsave)
    assert after.files == before.files, sorted(set(after.files.items()) ^ set(before.files.items()))
    for path in also_absent:
        assert not path.exists(), f"{path} was written by a plan"


def _server(make_sandbox: Any, binary: Path, scenario: str) -> Sandbox:
    """rdb-only: AOF off at runtime and in redis.conf; runtime-aof: on at runtime, off in the file (the drift);
    converged: on in both. 300 keys, saved."""
    config = SEED_CONFIG.replace("appendonly no", "appendonly yes\nappendfsync everysec") \
        if scenario == "converged" else SEED_CONFIG
    sb = make_sandbox(binary, config=config)
    client = sb.client()
    populate(client, 300)
    client.save()
    if scenario == "runtime-aof":
        switch_aof_on(client)
    client.close()
    return sb


def _journal_is_plan_only(archive: Path) -> None:
    """No step of the run was journaled as changing (no `started`, no intent) and no lock is recorded."""
    records = index(archive, journal=True)
    assert records and all(r.get("status") not in ("started", "intent") for r in records), records
    assert not any("lock" in r for r in records)


# -- every notebook, plan only ------------------------------------------------------------------------------------

#: Each notebook's plan against the server that gives it something to do, its `changed` column and exit code (an
#: inspection is no plan: the drift it finds is its verdict, exit 1).
PLANS = {
    "inspect": ("runtime-aof", "-", 1),
    "backup": ("runtime-aof", "would", 0),
    "enable-aof": ("rdb-only", "would", 0),
    "persist-config": ("runtime-aof", "would", 0),
    "test-persistence": ("runtime-aof", "would", 0),
}


@pytest.mark.notebook
@pytest.mark.parametrize("name", sorted(PLANS))
def test_a_plan_of_each_notebook_writes_nothing(name: str, default_binary: Path, make_sandbox, clean_env,
                                                tmp_path: Path) -> None:
    scenario, column, code = PLANS[name]
    sb = _server(make_sandbox, default_binary, scenario)
    backups = tmp_path / "backups"
    before = seen(sb)
    to = ("-p", "destination", str(backups)) if name == "backup" else ()
    rc, out, err = run_json(tmp_path / "archive", name, "-p", "target", sb.url, *to)
    assert rc == code, err
    assert_nothing_written(before, seen(sb), also_absent=(backups,))
    (step,) = out["steps"]
    assert step["changed"] == column, step
    if column == "would":
        assert step["summary"]["result"] == "planned"
    if name in ("backup", "test-persistence"):  # they say what they would do instead of doing it
        would = step["summary"]["would"]
        assert ("BGSAVE" in would and str(backups) in would) if name == "backup" else "1000 canary keys" in would
    _journal_is_plan_only(tmp_path / "archive")
    assert set(PLANS) | {"rollback"} == set(NOTEBOOKS)


@pytest.mark.notebook
def test_a_plan_of_rollback_writes_nothing(default_binary: Path, make_sandbox, clean_env, tmp_path: Path) -> None:
    sb = _server(make_sandbox, default_binary, "rdb-only")
    archive = tmp_path / "archive"
    rc, _, err = run_json(archive, "enable-aof", "-p", "target", sb.url, "-p", "apply", "true")
    assert rc == 0, err
    before = seen(sb)
    rc, out, err = run_json(archive, "rollback", "-p", "target", sb.url)
    assert rc == 0, err
    assert_nothing_written(before, seen(sb))
    (step,) = out["steps"]
    assert (step["changed"], step["summary"]["result"]) == ("would", "planned")
    assert sb.client().config_get("appendonly")["appendonly"] == "yes"  # still as the change left it


# -- all, plan only -----------------------------------------------------------------------------------------------


def _table(stdout: str) -> list[list[str]]:
    """The step table's rows (step, target, status, changed) from the text output."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("step "))
    rows = []
    for line in lines[start + 1:]:
        if line.startswith(("diff:", "evidence:", "index:")):
            break
        rows.append(line.split()[:4])
    return rows


@pytest.mark.notebook
def test_a_plan_of_all_on_a_drifted_server_writes_nothing_exits_0_and_prints_the_diff(
        default_binary: Path, make_sandbox, clean_env, tmp_path: Path) -> None:
    sb = _server(make_sandbox, default_binary, "runtime-aof")
    backups = tmp_path / "backups"
    before = seen(sb)
    proc = runbook_cli("run", "all", "-p", "target", sb.url, "-p", "destination", str(backups),
                       "--archive", str(tmp_path / "archive"), "--diff")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert_nothing_written(before, seen(sb), also_absent=(backups,))
    _journal_is_plan_only(tmp_path / "archive")
    rows = [(r[0], r[2], r[3]) for r in _table(proc.stdout)]
    assert [(step, column) for step, _, column in rows] == [
        ("inspect", "-"), ("backup", "would"), ("enable-aof", "no"), ("persist-config", "would"),
        ("test-persistence", "would"), ("inspect", "-")]
    assert rows[-1][1] == "fail"  # the closing inspection still sees the drift, and says why that is expected
    closing = next(line for line in reversed(proc.stdout.splitlines()) if line.startswith("inspect "))
    assert "drift=appendonly" in closing and "nothing was applied" in closing and "config_drift" in closing
    # --diff: the planned config-file diff, in the terminal.
    out = proc.stdout
    assert f"diff:     persist-config on {sb.url}, planned" in out
    assert "\n-appendonly no\n" in out and "\n+appendonly yes\n" in out
    assert str(sb.config_path) in out.split("diff:", 1)[1]
    assert "plan only: 1 change(s) pending (persist-config on" in out and "(exit 0)" in out


@pytest.mark.notebook
def test_detailed_exitcode_is_4_with_changes_pending_and_0_without(default_binary: Path, make_sandbox, clean_env,
                                                                   tmp_path: Path) -> None:
    drifted = _server(make_sandbox, default_binary, "rdb-only")
    before = seen(drifted)
    rc, out, err = run_json(tmp_path / "a", "all", "-p", "target", drifted.url, "-p", "destination",
                            str(tmp_path / "bk"), "--detailed-exitcode")
    assert rc == ExitCode.CHANGES_PENDING == 4 == out["exit_code"], err
    assert_nothing_written(before, seen(drifted), also_absent=(tmp_path / "bk",))
    # persist-config's plan is made on top of what enable-aof plans (planned_runtime): its file change shows too.
    assert out["pending"] == [{"target": drifted.url, "notebook": "enable-aof"},
                              {"target": drifted.url, "notebook": "persist-config"}]
    assert out["failing"] == [] and all(s["exit_code"] == 0 for s in out["steps"][1:])
    assert out["steps"][-1]["expected_after_plan"] == ["aof_enabled"]
    # A server with nothing to change: 0, even with --detailed-exitcode.
    converged = _server(make_sandbox, default_binary, "converged")
    before = seen(converged)
    rc, out, err = run_json(tmp_path / "b", "enable-aof", "persist-config", "-p", "target", converged.url,
                            "--detailed-exitcode")
    assert rc == 0 == out["exit_code"], err
    assert [s["changed"] for s in out["steps"]] == ["no", "no"] and out["pending"] == []
    assert_nothing_written(before, seen(converged))


@pytest.mark.notebook
def test_a_plan_of_all_with_aof_off_everywhere_shows_the_file_change_the_apply_makes(
        default_binary: Path, make_sandbox, clean_env, tmp_path: Path) -> None:
    """AOF off at runtime and in redis.conf (how a server usually starts out): persist-config's plan is made as if
    enable-aof's planned settings were set, so it names the directives the apply's CONFIG REWRITE then changes."""
    sb = _server(make_sandbox, default_binary, "rdb-only")
    before = seen(sb)
    args = ("all", "-p", "target", sb.url, "-p", "destination", str(tmp_path / "bk"))
    rc, out, err = run_json(tmp_path / "archive", *args)
    assert rc == 0, err
    assert_nothing_written(before, seen(sb), also_absent=(tmp_path / "bk",))
    planned = next(s for s in out["steps"] if s["notebook"] == "persist-config")
    assert planned["changed"] == "would" and planned["summary"]["result"] == "planned"
    assert "appendonly" in planned["summary"]["planned_directives"]
    assert "+appendonly yes" in planned["summary"]["planned_diff"].splitlines()
    rc, done, err = run_json(tmp_path / "archive", *args, "-p", "apply", "true")
    assert rc == 0, err
    applied = next(s for s in done["steps"] if s["notebook"] == "persist-config")["summary"]
    assert applied["result"] == "changed" and applied["method"] == "rewrite"
    assert sorted(applied["applied_directives"]) == sorted(planned["summary"]["planned_directives"])


def test_a_plan_where_the_file_already_says_what_enable_aof_would_set_passes(
        default_binary: Path, make_sandbox, clean_env, tmp_path: Path) -> None:
    """AOF on in redis.conf, off at runtime (someone ran CONFIG SET appendonly no): enable-aof would switch it on,
    after which the file already matches. The plan says so, instead of failing persist-config on the drift the
    apply's first step removes (Ansible's --check of such a host once failed it)."""
    sb = _server(make_sandbox, default_binary, "rdb-only")
    sb.config_path.write_text(sb.config_path.read_text() + "appendonly yes\n")
    before = seen(sb)
    rc, out, err = run_json(tmp_path / "archive", "enable-aof", "persist-config", "-p", "target", sb.url)
    assert rc == 0, (err, [(s["notebook"], s["status"], s["summary"].get("error")) for s in out.get("steps", [])])
    assert_nothing_written(before, seen(sb))
    enable, persist = out["steps"]
    assert enable["changed"] == "would" and persist["status"] == "pass"
    assert persist["summary"]["checks"]["no_drift"]["status"] == "pass"


@pytest.mark.notebook
def test_a_fleet_plan_of_the_online_test_writes_nothing(default_binary: Path, make_sandbox, clean_env,
                                                        tmp_path: Path) -> None:
    servers = [_server(make_sandbox, default_binary, "runtime-aof") for _ in range(2)]
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text("targets:\n" + "".join(f"  - {sb.url}\n" for sb in servers))
    before = [seen(sb) for sb in servers]
    rc, out, err = run_json(tmp_path / "archive", "test-persistence", "-f", str(fleet), "-p", "keys", "50")
    assert rc == 0, err
    for sb, was in zip(servers, before):
        assert_nothing_written(was, seen(sb))
    assert [(s["target"], s["changed"]) for s in out["steps"]] == [(sb.url, "would") for sb in servers]
    assert all("50 canary keys" in s["summary"]["would"] for s in out["steps"])


# -- the steps' plans, in process -----------------------------------------------------------------------------------


def test_plan_test_refuses_what_the_test_would_and_apply_writes(default_binary: Path, make_sandbox, clean_env,
                                                                tmp_path: Path) -> None:
    sb = _server(make_sandbox, default_binary, "runtime-aof")
    target = runbook.connect(sb.url)
    before = seen(sb)
    planned = test_persistence.run_test(target, keys=20)
    restart = test_persistence.run_test(target, mode="restart", allow_restart=True, restart_command="false")
    for kwargs, message in [({"mode": "restart"}, "allow_restart true"),
                            ({"mode": "restart", "allow_restart": True}, "needs restart_command"),
                            ({"mode": "crash"}, "only against target sandbox")]:
        with pytest.raises(ParameterError, match=message):
            test_persistence.run_test(target, **kwargs)
    assert_nothing_written(before, seen(sb))
    assert planned.summary(target.identify()).result == Outcome.PLANNED and "20 canary keys" in planned.would
    assert "restart" in restart.would and "false" in restart.would and restart.figures["canaries_written"] == 0
    assert test_persistence.intent(target, mode="restart", allow_restart=True, restart_command="false") is None
    # With apply, the same call does write (so the comparison above can fail).
    done = test_persistence.run_test(target, keys=20, apply=True)
    assert done.verdict == Status.PASS and done.figures["canaries_written"] == 20 and not done.would
    calls = {k.removeprefix("cmdstat_"): v["calls"] for k, v in sb.client().info("commandstats").items()}
    assert calls["set"] - before.calls.get("set", 0) == 20 and calls["bgsave"] > before.calls.get("bgsave", 0)


def test_backup_plan_says_what_it_would_copy_and_prune(default_binary: Path, make_sandbox, clean_env,
                                                       tmp_path: Path) -> None:
    sb = _server(make_sandbox, default_binary, "runtime-aof")
    target = runbook.connect(sb.url)
    dest = tmp_path / "bk"
    dest.mkdir()
    prefix = "redis-127.0.0.1-" + str(sb.port) + "-0"
    for day in range(1, 4):  # three older backups of this target, one of another
        (dest / f"{prefix}-2020010{day}T000000.000Z-abc").mkdir()
    (dest / "other-20200101T000000.000Z").mkdir()
    before = seen(sb)
    result = backup.take_backup(target, str(dest), apply=False, retention=2, verify_restore=True)
    assert_nothing_written(before, seen(sb))
    assert result.result == Outcome.PLANNED and result.location.startswith(f"{dest}/{prefix}-")
    assert "dump.rdb (" in result.would and "the AOF (" in result.would and "restore drill" in result.would
    assert "keep this target's newest 2 (prune 2 of the 3 there)" in result.would
    assert len(list(dest.iterdir())) == 4
    assert backup.backup_summary(target.identify(), result).facts["would"] == result.would


# -- pure: the changed column, the exit code, the closing inspection of a plan, the diff -------------------------------


@pytest.mark.parametrize("result, word", [
    (None, "-"), (Outcome.PLANNED, "would"), (Outcome.CHANGED, "yes"), (Outcome.DONE, "yes"),
    (Outcome.UNCHANGED, "no"), (Outcome.BLOCKED, "no"), (Outcome.SKIPPED, "no"), (Outcome.NOTHING, "no"),
])
def test_changed_column(result: Outcome | None, word: str) -> None:
    assert changed(StepSummary("enable-aof", Status.PASS, result)) == word


def _res(name: str, status: Status, result: Outcome | None = None, checks: tuple[Check, ...] = (),
         target: str = "t", **facts: Any) -> StepResult:
    code = ExitCode.FAILED if status == Status.FAIL else ExitCode.OK
    return StepResult(name, target, status, code, StepSummary(name, status, result, checks=checks, facts=facts),
                      None, None, {})


DRIFT = Check("config_drift", Status.FAIL, "appendonly: runtime yes, file no")
BGSAVE = Check("rdb_last_bgsave", Status.FAIL, "rdb_last_bgsave_status:err")
HOST = Check("vm_overcommit_memory", Status.WARN, "vm.overcommit_memory = 0")


@pytest.mark.parametrize("earlier, checks, code, expected", [
    # Planned: the drift persist-config would fix is expected; a host warning does not fail the run.
    ([_res("persist-config", Status.PASS, Outcome.PLANNED)], (DRIFT, HOST), ExitCode.OK, ("config_drift",)),
    # Anything the plan does not fix still fails.
    ([_res("persist-config", Status.PASS, Outcome.PLANNED)], (DRIFT, BGSAVE), ExitCode.FAILED, ("config_drift",)),
    # Nothing planned for it: the drift counts.
    ([_res("persist-config", Status.PASS, Outcome.UNCHANGED)], (DRIFT,), ExitCode.FAILED, ()),
    # A step changed the server: the closing inspection is the proof, and counts.
    ([_res("persist-config", Status.PASS, Outcome.PLANNED), _res("backup", Status.PASS, Outcome.DONE)], (DRIFT,),
     ExitCode.FAILED, ()),
    # Another target's plan is not this one's.
    ([_res("persist-config", Status.PASS, Outcome.PLANNED, target="other")], (DRIFT,), ExitCode.FAILED, ()),
])
def test_the_closing_inspection_of_a_plan(earlier: list[StepResult], checks: tuple[Check, ...], code: ExitCode,
                                          expected: tuple[str, ...]) -> None:
    closing = _res("inspect", Status.FAIL, checks=checks)
    after = _after_plan(closing, earlier, fail_on_warn=False)
    assert (after.exit_code, after.expected, after.status) == (code, expected, Status.FAIL)


def test_detailed_exit_code_and_the_diff(tmp_path: Path) -> None:
    result = RunResult("c", Archive(tmp_path))
    result.steps += [_res(name, Status.PASS, Outcome.PLANNED) for name in ("backup", "test-persistence")]
    assert (exit_code(result, True), exit_code(result)) == (0, 0)  # a backup or a test alone is no change pending
    result.steps.append(_res("persist-config", Status.PASS, Outcome.PLANNED, diff="-appendonly no\n+appendonly yes\n",
                             planned_diff="-appendonly no\n+appendonly yes\n+appendfsync everysec\n"))
    assert (exit_code(result, True), exit_code(result)) == (ExitCode.CHANGES_PENDING, 0)
    assert diffs(result) == ["diff:     persist-config on t, planned (plan only: nothing written):",
                             "-appendonly no\n+appendonly yes\n+appendfsync everysec"]
    result.steps.append(_res("inspect", Status.FAIL))
    assert (exit_code(result, True), exit_code(result)) == (1, 1)
    written = RunResult("d", Archive(tmp_path))
    written.steps.append(_res("persist-config", Status.PASS, Outcome.CHANGED, diff="+appendonly yes\n",
                              planned_diff="+appendonly yes\n+appendfsync everysec\n"))
    assert diffs(written) == ["diff:     persist-config on t, written:", "+appendonly yes"]


def test_no_lock_for_a_plan(tmp_path: Path) -> None:
    for name, pairs, locked in [
        ("test-persistence", [("mode", "restart"), ("allow_restart", "true")], False),
        ("test-persistence", [("mode", "restart"), ("allow_restart", "true"), ("apply", "true")], True),
        ("test-persistence", [("apply", "true")], False),  # the online test leaves nothing: no lock
        ("enable-aof", [], False), ("enable-aof", [("apply", "true")], True),
    ]:
        (step,) = plan([name], pairs=[("target", "redis://127.0.0.1:6379/0"), *pairs])
        assert may_change(step) is locked, (name, pairs)


def test_the_notebooks_declare_apply_defaulting_to_a_plan() -> None:
    for name in ("test-persistence", "backup", "enable-aof", "persist-config", "rollback"):
        (step,) = plan([name], pairs=[("target", "redis://127.0.0.1:6379/0")])
        source = json.loads(step.path.read_text())["cells"][1]["source"]
        assert any(line.startswith("apply: bool = False  # ") for line in source), name


# -- an applied test-persistence records a result; a planned backup's figures -----------------------------------------

IDENT = Identity("redis", "7.2.4", "standalone", "master", "", "", 1, 1, 6379)


@pytest.mark.parametrize("result, outcome, word", [
    (test_persistence.TestResult("online", (), {"canaries_written": 1000}), Outcome.DONE, "yes"),
    (test_persistence.TestResult("restart", (), {"canaries_written": 1000, "load_s": 0.1}), Outcome.DONE, "yes"),
    (test_persistence.TestResult("online", (), {"canaries_written": 0}, would="write 1000 canary keys"),
     Outcome.PLANNED, "would"),
    # nothing written to the target: refused writes, the crash test (throwaway servers)
    (test_persistence.TestResult("online", (Check("writes_accepted", Status.FAIL, "min-replicas"),),
                                 {"canaries_written": 0}), Outcome.NOTHING, "no"),
    (test_persistence.TestResult("crash", (), {"crash_seconds": 2.0}), Outcome.NOTHING, "no"),
])
def test_an_applied_test_records_what_it_did(result: test_persistence.TestResult, outcome: Outcome,
                                            word: str) -> None:
    summary = result.summary(IDENT)
    assert summary.result == outcome and changed(summary) == word


def test_a_test_run_is_done_but_no_change_of_the_target(tmp_path: Path) -> None:
    """The run's `changes` (what a stopped or failed run had changed), `pending` and the change series of the
    metrics leave a test out: what it wrote was its own, and removed."""
    tested = test_persistence.TestResult("online", (), {"canaries_written": 1000, "canaries_found": 1000})
    result = RunResult("c", Archive(tmp_path))
    result.steps.append(StepResult("test-persistence", "t", Status.PASS, ExitCode.OK, tested.summary(IDENT), None,
                                   None, {}))
    assert result.changes() == [] and result.pending() == []
    record = {"run_id": "r1", "change_id": "c", "notebook": "test-persistence", "target": "t", "status": "pass",
              "exit_code": 0, "summary": tested.summary(IDENT).to_json(), "files": {},
              "started": "2026-01-02T03:04:05+00:00", "ended": "2026-01-02T03:04:06+00:00"}
    assert last_changes([record]) == {}
    assert set(last_changes([record, {**record, "run_id": "r2", "notebook": "enable-aof", "summary": {
        "verdict": "pass", "result": "changed"}}])) == {"t"}  # the check above could fail


def test_a_planned_backup_shows_no_unknown_key_count() -> None:
    planned = StepSummary("backup", Status.PASS, Outcome.PLANNED, "redis", "7.2.4",
                          facts={"location": "/b/x", "dbsize": None})
    assert "keys=" not in _figures(planned) and "to=/b/x" in _figures(planned)
    assert "keys=10" in _figures(replace(planned, result=Outcome.DONE, facts={"location": "/b/x", "dbsize": 10}))
