"""The run's journal (issue 14, items 1 and 6): intent before action, interrupted runs, SIGTERM/SIGINT, kill -9,
and an archive that fails mid-run. Real processes: a `runbook run` in a subprocess against a real server holding
1M keys (the initial AOF rewrite then takes seconds), killed while the test watches INFO for the rewrite."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import nbformat
import pytest
import redis
from helpers import REPO, runbook_cli

from runbook.evidence.archive import Archive, read_index
from runbook.evidence.journal import (
    Journal,
    findings,
    intend,
    interrupted_runs,
    listing,
    notice,
    record_intent,
)
from runbook.model import Outcome, Status, StepSummary
from runbook.sandbox.seed import populate
from runbook.sandbox.throwaway import Sandbox

KEYS = 1_000_000
_SCRUB = ("REDIS_PASSWORD", "RUNBOOK_SANDBOX_URL", "RUNBOOK_SANDBOX_DIR", "RUNBOOK_ARCHIVE", "RUNBOOK_RUN_ID",
          "RUNBOOK_CHANGE_ID", "RUNBOOK_STEP", "RUNBOOK_STEP_TARGET")


# --- the records, read back (pure) --------------------------------------------------------------------------


def _rec(run: str, status: str, step: str = "enable-aof", target: str = "redis://h:1/0", change: str = "c1",
         **extra: object) -> dict:
    return {"run_id": run, "status": status, "notebook": step, "target": target, "change_id": change,
            "started": "2026-01-02T03:04:05+00:00", "files": {}, **extra}


INTENT = {"summary": "CONFIG SET at runtime (appendonly no -> yes)",
          "changes": [{"setting": "appendonly", "from": "no", "to": "yes"}]}


def test_a_run_without_a_verdict_or_with_an_interrupted_one_reads_as_interrupted() -> None:
    records = [
        _rec("killed", "started", doing="switch AOF on"), _rec("killed", "intent", intent=INTENT),
        _rec("done", "started", target="redis://other:1/0"),
        _rec("done", "pass", target="redis://other:1/0", summary={"verdict": "pass", "result": "changed"}),
        _rec("termed", "started", change="c2"),
        _rec("termed", "interrupted", change="c2", summary={"verdict": "interrupted", "error": "put back"}),
        _rec("inspect", "pass", step="inspect"),
    ]
    found = {i.run_id: i for i in interrupted_runs(records)}
    assert sorted(found) == ["killed", "termed"]
    assert found["killed"].killed and found["killed"].doing == INTENT["summary"] and found["killed"].intent == INTENT
    assert found["killed"].position == 0 and not found["killed"].closed_by
    assert not found["termed"].killed and found["termed"].ended == "put back"
    line = notice(records)
    assert "\n" not in line and "interrupted" in line and "1 more" in line
    problems, notes = findings(records)
    assert len(problems) == 2 and not notes and "rollback" in problems[0] and "change_id c1" in problems[0]


def test_a_rollback_of_the_change_or_the_step_run_again_closes_an_interrupted_run() -> None:
    killed = [_rec("k", "started"), _rec("k", "intent", intent=INTENT)]
    rolled = _rec("r", "pass", step="rollback", summary={"verdict": "pass", "result": "done", "change_id": "c1"})
    other = _rec("r2", "pass", step="rollback", summary={"verdict": "pass", "result": "done", "change_id": "zz"})
    again = _rec("e", "warn", summary={"verdict": "warn", "result": "unchanged"})
    planned = _rec("p", "pass", summary={"verdict": "pass", "result": "planned"})
    assert [i.closed_by for i in interrupted_runs([*killed, other, planned])] == [""]
    assert interrupted_runs([*killed, rolled])[0].closed_by.startswith("rollback run r")
    assert interrupted_runs([*killed, again])[0].closed_by.startswith("enable-aof run e")
    assert notice([*killed, rolled]) == ""
    problems, notes = findings([*killed, rolled])
    assert not problems and len(notes) == 1 and "closed by rollback" in notes[0]


def test_an_interrupted_run_whose_own_code_put_the_change_back_closed_itself() -> None:
    """Its verdict says it put back what it had changed (`put_back`): no notice at the next run, a note (not a
    problem) in `archive verify`; one that did not say so stays open."""
    cut = [_rec("t", "started"), _rec("t", "intent", intent=INTENT), _rec("t", "interrupted", summary={
        "verdict": "interrupted", "error": "stopped by SIGINT: ... The server was left as found: appendonly no.",
        "put_back": "The server was left as found: appendonly no."})]
    (item,) = interrupted_runs(cut)
    assert item.closed_by.startswith("itself") and "nothing is left to undo" in item.closed_by
    assert notice(cut) == ""
    problems, notes = findings(cut)
    assert not problems and len(notes) == 1 and "closed by itself" in notes[0] and "left as found" in notes[0]
    unsure = [*cut[:2], _rec("t", "interrupted", summary={"verdict": "interrupted", "error": "Could NOT restore"})]
    assert findings(unsure)[0] and notice(unsure)


def test_archive_list_shows_one_row_per_run_and_a_killed_one_as_interrupted() -> None:
    records = [
        _rec("done", "started"), _rec("done", "intent", intent=INTENT),
        _rec("done", "pass", files={"a.html": "x", "a.ipynb": "y"}),
        _rec("killed", "started", evidence="b.ipynb", doing="switch AOF on"), _rec("killed", "intent", intent=INTENT),
    ]
    rows = listing(records)
    assert [(r["run_id"], r["status"], r["file"]) for r in rows] == [("done", "pass", "a.html"),
                                                                       ("killed", "interrupted", "b.ipynb")]
    assert rows[1]["note"] == INTENT["summary"] and rows[0]["note"] == ""


def test_intend_outside_a_runner_records_nothing_and_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    for var in _SCRUB:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("RUNBOOK_ARCHIVE", str(tmp_path))
    intend(INTENT)
    intend(None)
    out = capsys.readouterr().out
    assert "intent not recorded (not run by `runbook run`" in out and "nothing will be written" in out
    assert read_index(tmp_path) == []


def test_the_intent_goes_to_the_runs_archive_under_its_run_id(tmp_path: Path) -> None:
    env = {"RUNBOOK_ARCHIVE": str(tmp_path), "RUNBOOK_RUN_ID": "r1", "RUNBOOK_CHANGE_ID": "c1",
           "RUNBOOK_STEP": "enable-aof", "RUNBOOK_STEP_TARGET": "redis://h:1/0"}
    record_intent(dict(INTENT), env)
    (rec,) = read_index(tmp_path)
    assert (rec["run_id"], rec["change_id"], rec["notebook"], rec["target"], rec["status"]) == \
        ("r1", "c1", "enable-aof", "redis://h:1/0", "intent")
    assert rec["intent"] == INTENT


class _Kernel:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def interrupt(self) -> None:
        self.calls.append("interrupt")

    def kill(self) -> None:
        self.calls.append("kill")


def test_a_signal_interrupts_the_running_notebook_and_kills_its_kernel_only_when_it_does_not_stop() -> None:
    from runbook.orchestration.signals import Stop

    idle, stubborn, twice = _Kernel(), _Kernel(), _Kernel()
    stop = Stop(grace_s=0.2)
    stop._handle(signal.SIGTERM, None)  # between notebooks: only noted
    assert (stop.signum, stop.name, stop.exit_code, idle.calls) == (signal.SIGTERM, "SIGTERM", 143, [])
    stop = Stop(grace_s=0.2)
    with stop.notebook(idle):
        stop._handle(signal.SIGINT, None)
    time.sleep(0.4)  # the notebook ended in time: no kill
    assert idle.calls == ["interrupt"] and not stop.killed and stop.exit_code == 130
    stop = Stop(grace_s=0.2)
    with stop.notebook(stubborn):
        stop._handle(signal.SIGTERM, None)
        time.sleep(0.4)
    assert stubborn.calls == ["interrupt", "kill"] and stop.killed
    stop = Stop(grace_s=60)
    with stop.notebook(twice):
        stop._handle(signal.SIGTERM, None)
        stop._handle(signal.SIGTERM, None)
    assert twice.calls == ["interrupt", "kill"]


# --- real runs, killed ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rdb_1m(tmp_path_factory: pytest.TempPathFactory, default_binary: Path) -> Path:
    """dump.rdb of a server holding 1M keys (populate, then SAVE): each test's server loads a copy."""
    root = tmp_path_factory.mktemp("seed-1m")
    sb = Sandbox(binary=default_binary, root=root / "sb").start()
    try:
        client = sb.client()
        assert populate(client, KEYS) == KEYS
        client.save()
        shutil.copy(sb.data_dir / "dump.rdb", root / "dump.rdb")
    finally:
        sb.cleanup()
    return root / "dump.rdb"


@pytest.fixture
def big_server(tmp_path: Path, default_binary: Path, rdb_1m: Path) -> Iterator[Sandbox]:
    """A server with 1M keys loaded from `rdb_1m`, AOF off."""
    sb = Sandbox(binary=default_binary, root=tmp_path / "big")
    shutil.copy(rdb_1m, sb.data_dir / "dump.rdb")
    sb.start(timeout_s=60)
    client = sb.client()
    deadline = time.monotonic() + 60
    while int(client.info("persistence")["loading"]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert client.dbsize() == KEYS
    yield sb
    sb.cleanup()


def _popen(*args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k not in _SCRUB}
    return subprocess.Popen([sys.executable, "-m", "runbook", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=REPO)


def _when_rewriting(client: redis.Redis, proc: subprocess.Popen[str], timeout_s: float = 90) -> None:
    """Return once the server runs the initial AOF rewrite (fail if the run ends or it never starts)."""
    deadline = time.monotonic() + timeout_s
    while not int(client.info("persistence")["aof_rewrite_in_progress"]):
        if proc.poll() is not None:
            pytest.fail(f"the run ended before the rewrite started: {proc.communicate()}")
        assert time.monotonic() < deadline, "no AOF rewrite started"
        time.sleep(0.02)


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _executed(archive: Path, run_id: str) -> nbformat.NotebookNode:
    """The run's executed notebook, as the kill left it: it must be a readable notebook."""
    started = next(r for r in read_index(archive) if r["run_id"] == run_id and r["status"] == "started")
    path = archive / started["evidence"]
    assert path.stat().st_size > 0
    return nbformat.read(str(path), as_version=4)


def _end_lease(client: redis.Redis) -> None:
    """Let a killed run's server lock lapse now instead of in 30 s: its lease end (the value's first word, in
    the server's ms, `runbook.server.lock`) set to 0, the key kept, as a lapsed lease looks."""
    from runbook.server.lock import lock_key

    key = lock_key(client)
    value = client.get(key)
    if value is not None:
        client.set(key, "0 " + str(value).split(" ", 1)[1], keepttl=True)


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_during_the_rewrite_puts_aof_back_and_exits_with_one_line(big_server: Sandbox, tmp_path: Path,
                                                                          signum: int, code: int) -> None:
    archive, client = tmp_path / "archive", big_server.client()
    proc = _popen("run", "enable-aof", "-p", "target", big_server.url, "-p", "apply", "true", "--archive", str(archive))
    _when_rewriting(client, proc)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert out == "" and "Traceback" not in err
    (line,) = err.strip().splitlines()
    assert line.startswith(f"runbook: stopped by {signal.Signals(signum).name} during enable-aof")
    assert "left as found: appendonly no" in line
    assert client.config_get("appendonly") == {"appendonly": "no"}
    assert not int(client.info("persistence")["aof_enabled"])

    records = read_index(archive)
    assert [r["status"] for r in records] == ["started", "intent", "interrupted"]
    assert len({r["run_id"] for r in records}) == 1
    assert records[1]["intent"]["changes"] == [{"setting": "appendonly", "from": "no", "to": "yes"}]
    assert "left as found: appendonly no" in records[2]["summary"]["error"]
    nb = _executed(archive, records[0]["run_id"])
    assert any(c.get("execution_count") and c.outputs for c in nb.cells if c.cell_type == "code")

    assert records[2]["summary"]["put_back"] == "The server was left as found: appendonly no."
    html = (archive / next(f for f in records[2]["files"] if f.endswith(".html"))).read_text()
    banner = html[html.index('<div class="banner error">'):html.index("</header>")]
    assert "left as found: appendonly no" in banner and "Nothing is left to undo" in banner
    assert "It may have changed" not in banner and "look at the target" not in banner
    assert re.search(r"waiting for the AOF rewrite: interrupted after \d+\.\d s of 300 s", html)  # its last word
    assert line.endswith(f"; report: {archive / 'reports' / (records[0]['change_id'] + '.html')}")

    listed = runbook_cli("archive", "list", "--archive", str(archive))
    assert listed.returncode == 0 and " interrupted " in listed.stdout
    # It closed itself: `archive verify` notes it, and no run is told to undo it.
    verified = runbook_cli("archive", "verify", "--archive", str(archive))
    assert verified.returncode == 0, verified.stderr
    assert "closed by itself" in verified.stdout and "left as found" in verified.stdout
    assert notice(read_index(archive)) == ""


def test_kill_9_during_the_rewrite_leaves_its_intent_and_rollback_undoes_it(big_server: Sandbox,
                                                                            tmp_path: Path) -> None:
    archive, client = tmp_path / "archive", big_server.client()
    proc = _popen("run", "enable-aof", "-p", "target", big_server.url, "-p", "apply", "true", "--archive", str(archive))
    _when_rewriting(client, proc)
    time.sleep(0.3)  # into the wait
    kernels = _children(proc.pid)
    assert kernels, "the runner has no kernel process"
    proc.kill()
    proc.wait(10)
    deadline = time.monotonic() + 10
    while any(map(_alive, kernels)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(map(_alive, kernels)), "the kernel outlived the runner"
    assert client.config_get("appendonly") == {"appendonly": "yes"}  # the kill left AOF on, with no verdict

    records = read_index(archive)
    assert [r["status"] for r in records] == ["started", "intent"]
    nb = _executed(archive, records[0]["run_id"])
    intent_cell = next(c for c in nb.cells if "runbook.intend(" in c.source)
    assert intent_cell.execution_count and intent_cell.outputs  # the cells up to the kill are kept
    listed = runbook_cli("archive", "list", "--archive", str(archive))
    assert " interrupted " in listed.stdout and "appendonly no -> yes" in listed.stdout
    verified = runbook_cli("archive", "verify", "--archive", str(archive))
    assert verified.returncode == 1 and "no record says how it ended" in verified.stderr

    _end_lease(client)
    back = runbook_cli("run", "rollback", "-p", "target", big_server.url, "-p", "apply", "true",
                       "--archive", str(archive), "--json")
    assert back.returncode == 0, back.stderr
    assert "this archive holds an interrupted run: enable-aof" in back.stderr  # said before the run starts
    summary = json.loads(back.stdout)["steps"][0]["summary"]
    assert summary["result"] == "done" and summary["change_id"] == records[0]["change_id"]
    assert summary["runtime"] == [{"setting": "appendonly", "from": "yes", "to": "no"}]
    assert client.config_get("appendonly") == {"appendonly": "no"}
    verified = runbook_cli("archive", "verify", "--archive", str(archive))
    assert verified.returncode == 0, verified.stderr
    assert "closed by rollback" in verified.stdout


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def test_the_kernel_and_the_sandbox_do_not_outlive_a_killed_runner(tmp_path: Path) -> None:
    proc = _popen("run", "inspect", "--archive", str(tmp_path / "archive"))
    deadline = time.monotonic() + 60
    while True:
        kids = {pid: _cmdline(pid) for pid in _children(proc.pid)}
        if any("ipykernel" in c for c in kids.values()) and any("redis-server" in c or "valkey-server" in c
                                                                for c in kids.values()):
            break
        assert proc.poll() is None and time.monotonic() < deadline, f"no kernel and sandbox seen: {kids}"
        time.sleep(0.05)
    proc.kill()
    proc.wait(10)
    deadline = time.monotonic() + 10
    while any(map(_alive, kids)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [c for pid, c in kids.items() if _alive(pid)]


# --- an interrupted persist-config, undone from its intent ----------------------------------------------------


def _killed_after_write(sb: Sandbox, archive: Path, *, write: bool) -> dict:
    """What a persist-config killed right after its write (or right before it) leaves: its started record, its
    intent, the backup and (with `write`) the file written; no verdict."""
    from helpers import switch_aof_on

    from runbook.model import ConnectionSpec
    from runbook.sandbox.handoff import connect
    from runbook.steps import persist_config

    switch_aof_on(sb.client())
    server = connect(ConnectionSpec(target=sb.url))
    journal = Journal(Archive(archive), "c-killed")
    plan = persist_config.plan_persist(server, method="edit")
    run_id = journal.started("persist-config", sb.url, {}, "write the config file", archive / "x.ipynb")
    intent = persist_config.intent(plan, apply=True, change_id="c-killed")
    assert intent is not None
    record_intent(intent, {"RUNBOOK_ARCHIVE": str(archive), "RUNBOOK_RUN_ID": run_id, "RUNBOOK_CHANGE_ID": "c-killed",
                           "RUNBOOK_STEP": "persist-config", "RUNBOOK_STEP_TARGET": sb.url})
    if write:
        done = persist_config.apply_persist(server, plan, apply=True, change_id="c-killed")
        assert done.result == Outcome.CHANGED and done.backup == intent["backup"]  # the intent named this backup
    return intent


@pytest.mark.parametrize("write", [True, False], ids=["written", "not-yet-written"])
def test_an_interrupted_persist_config_is_undone_from_its_intent(default_binary: Path, make_sandbox, tmp_path: Path,
                                                                 write: bool) -> None:
    sb = make_sandbox(default_binary)
    original = sb.config_path.read_bytes()
    archive = tmp_path / "archive"
    intent = _killed_after_write(sb, archive, write=write)
    assert (sb.config_path.read_bytes() != original) is write
    assert interrupted_runs(read_index(archive))[0].step == "persist-config"
    sb.client().config_set("appendonly", "no")  # AOF back off by hand: only the file is left to undo

    back = runbook_cli("run", "rollback", "-p", "target", sb.url, "-p", "apply", "true",
                       "--archive", str(archive), "--json")
    assert back.returncode == 0, back.stderr
    summary = StepSummary.from_json(json.loads(back.stdout)["steps"][0]["summary"])
    assert sb.config_path.read_bytes() == original
    if write:
        assert summary.result == Outcome.DONE and summary.facts["backup"] == intent["backup"]
        assert any(c.name == "file_restored" and c.status == Status.PASS for c in summary.checks)
    else:
        assert summary.result == Outcome.NOTHING
        assert any("did not write it, nothing to restore" in n for n in summary.facts["notes"])


# --- an archive that fills up mid-run ---------------------------------------------------------------------------


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs (mount needs root and the right to mount: else skipped with the reason)."""
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mnt)], capture_output=True,
                          text=True)
    if done.returncode:
        pytest.skip(f"mount -t tmpfs is not allowed here: {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(directory: Path) -> None:
    """Write zeros into `directory` until the file system is full."""
    with (directory / "filler").open("wb") as f:
        try:
            while True:
                f.write(b"\0" * (1 << 20))
                f.flush()
        except OSError:
            pass


def _wait_for(archive: Path, found: Callable[[list[dict]], bool], proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if found(read_index(archive)):
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    pytest.fail(f"never seen in the archive; the run: {proc.communicate() if proc.poll() is not None else 'runs'}")


def test_an_archive_that_fills_up_stops_the_run_with_the_table_and_what_changed(small_tmpfs: Path,
                                                                               tmp_path: Path) -> None:
    archive = small_tmpfs / "archive"
    proc = _popen("run", "all", "-p", "apply", "true", "-p", "sandbox_scenario", "rdb-only",
                  "-p", "destination", str(tmp_path / "backups"), "--archive", str(archive))
    _wait_for(archive, lambda recs: any(r["notebook"] == "enable-aof" and r["status"] not in ("started", "intent")
                                        for r in recs), proc)
    _fill(small_tmpfs)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, (out, err)
    assert "Traceback" not in out + err
    assert "step " in out and "enable-aof" in out and "persist-config" in out  # the step table
    verdict = out[out.index("verdict:"):]
    assert verdict.startswith("verdict:  FAILED: the evidence archive failed")
    assert "changed:  enable-aof on sandbox: appendonly no -> yes (runtime)" in verdict
    assert f"kept:     the archive {archive}" in verdict
