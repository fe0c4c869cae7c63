"""Progress you can see, and Ctrl-C (issue 17, items 3 and 4): step lines and a redrawn wait line on a terminal,
exactly the table and the recap under cron, host advisories once per host outside the step statuses, and a
Ctrl-C during `run all` that stops at a safe point with one line and exit 130.

Real processes: `runbook run all` in a subprocess, on a pseudo-terminal or on pipes, against a real server whose
saves are slowed down (rdb-key-save-delay) so the waits last seconds.
"""

from __future__ import annotations

import fcntl
import io
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest
from helpers import REPO

from runbook.cli import advisories, recap, stopped_line
from runbook.evidence.archive import Archive, read_index
from runbook.model import Outcome, Status, StepSummary
from runbook.orchestration.runner import RunResult, StepResult
from runbook.orchestration.watch import TerminalWatch
from runbook.sandbox.seed import seed_sandbox
from runbook.sandbox.throwaway import Sandbox
from runbook.server.ops import read_overcommit
from runbook.server.poll import Deadline
from runbook.server.progress import PROGRESS_ENV, WaitProgress, read_reports, report
from runbook.steps.checks import advisory_facts, host_advisories

_SCRUB = ("REDIS_PASSWORD", "RUNBOOK_SANDBOX_URL", "RUNBOOK_SANDBOX_DIR", "RUNBOOK_ARCHIVE", "RUNBOOK_RUN_ID",
          "RUNBOOK_CHANGE_ID", "RUNBOOK_STEP", "RUNBOOK_STEP_TARGET", PROGRESS_ENV)
#: Microseconds per key a save or rewrite waits (rdb-key-save-delay): with the seed's 3000 keys, about 3 s each.
KEY_DELAY_US = 1000


# --- the pieces, without a run ------------------------------------------------------------------------------


def test_a_wait_reports_to_the_file_the_runner_names_and_nowhere_without_one(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PROGRESS_ENV, raising=False)
    report("BGSAVE", 1.0, 120, {"rdb_bgsave_in_progress": 1})  # no file named: nothing written, no error
    assert list(tmp_path.iterdir()) == []

    path = tmp_path / "progress.jsonl"
    monkeypatch.setenv(PROGRESS_ENV, str(path))
    report("initial AOF rewrite", 2.345, 300, {"current_fork_perc": "45.10", "aof_rewrite_in_progress": 1,
                                               "absent": None})
    with path.open("a") as f:
        f.write('{"label": "half a line"')  # still being written: read next time
    reports, offset = read_reports(path, 0)
    seen = "current_fork_perc:45.10 aof_rewrite_in_progress:1"
    assert reports == [WaitProgress("initial AOF rewrite", 2.35, 300, seen)]
    assert reports[0].line(1.0) == ("initial AOF rewrite 3.4 s / 300 s: current_fork_perc:45.10 "
                                    "aof_rewrite_in_progress:1")
    assert read_reports(path, offset) == ([], offset)


def test_a_deadline_reports_what_it_saw_at_most_every_interval(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "progress.jsonl"
    monkeypatch.setenv(PROGRESS_ENV, str(path))
    deadline = Deadline(300, "initial AOF rewrite")
    deadline.saw({"aof_rewrite_in_progress": 1})  # a wait that just began: not reported (it may end at once)
    assert not path.exists()
    deadline.start -= 2.0  # two seconds into the wait, its last report 0.6 s ago
    deadline.reported_at = deadline.start + 1.4
    deadline.saw({"aof_rewrite_in_progress": 1})
    deadline.saw({"aof_rewrite_in_progress": 0})  # right after: throttled
    (seen,), _ = read_reports(path, 0)
    assert seen.label == "initial AOF rewrite" and seen.deadline_s == 300 and 2.0 <= seen.elapsed_s < 60
    assert seen.seen == "aof_rewrite_in_progress:1"
    assert deadline.seen == {"aof_rewrite_in_progress": 0}  # `missed` still says what was seen last


def _result(name: str, status: Status, result: Outcome | None = None, *, target: str = "redis://h:1/0",
            before_change: bool = False, facts: dict | None = None, code: int = 0) -> StepResult:
    summary = StepSummary(name, status, result, "redis", "7.0.15", facts=facts or {})
    return StepResult(name, target, status, code, summary, None, None, {}, before_change)  # type: ignore[arg-type]


def test_the_terminal_shows_each_step_as_it_starts_and_ends_and_the_wait_in_between() -> None:
    out = io.StringIO()
    watch = TerminalWatch(out, lambda r: f"{r.status}, changed yes")
    watch.started(3, 6, "enable-aof", "sandbox")
    watch.tick()
    watch.waiting(WaitProgress("initial AOF rewrite", 4.2, 300, "aof_rewrite_in_progress:1"))
    watch.tick()
    watch.finished(3, 6, _result("enable-aof", Status.PASS, Outcome.CHANGED, target="sandbox"))
    text = out.getvalue()
    assert text.startswith("\r\r[3/6] enable-aof on sandbox ...\n")
    assert re.search(r"\r      enable-aof on sandbox: 0\.\d s", text)  # the step, before any wait reports
    assert re.search(r"\r      enable-aof: initial AOF rewrite 4\.\d s / 300 s: aof_rewrite_in_progress:1", text)
    # The status line is blanked out, then the step's line written over it.
    assert re.search(r"in_progress:1\r +\r\[3/6\] enable-aof on sandbox: pass, changed yes \(\d+\.\d s\)\n\Z", text)


def test_the_stopped_line_points_at_the_change_report_else_at_the_index(tmp_path: Path) -> None:
    archive = Archive(tmp_path / "a")
    result = RunResult("c1", archive, [_result("backup", Status.PASS, Outcome.DONE),
                                       _result("enable-aof", Status.INTERRUPTED, code=1)], stopped_by="SIGINT")
    assert stopped_line(result).endswith(f"; evidence: {archive.location()}")
    result.report = archive.local / "reports" / "c1.html"
    line = stopped_line(result)
    assert line.endswith(f"; report: {result.report}") and "evidence:" not in line


def test_the_recap_counts_and_advisories_come_once_per_host(tmp_path: Path) -> None:
    advice = advisory_facts(host_advisories(overcommit_memory=0), "db-1")
    fine = advisory_facts(host_advisories(overcommit_memory=1), "db-2")
    result = RunResult("c1", Archive(tmp_path / "a"), steps=[
        _result("inspect", Status.FAIL, before_change=True, facts={"advisories": advice}),
        _result("backup", Status.PASS, Outcome.DONE),
        _result("enable-aof", Status.PASS, Outcome.CHANGED, facts={"advisories": advice}),
        _result("persist-config", Status.PASS, Outcome.PLANNED),
        _result("inspect", Status.PASS, target="redis://h:2/0", facts={"advisories": fine}),
        _result("test-persistence", Status.ERROR, code=1),
        _result("rollback", Status.BLOCKED, Outcome.BLOCKED, code=3),
        _result("inspect", Status.SKIPPED),
    ])
    assert recap(result) == "recap:    ok 5, changed 2, would change 1, failed 1, skipped 1, blocked 1"
    (line,) = advisories(result)  # recorded by two steps of one host; the other host's passes
    assert line.startswith("advisory: db-1: vm.overcommit_memory = 0: set vm.overcommit_memory = 1 (sysctl)")
    assert "not part of any step's status" in line


# --- real runs ----------------------------------------------------------------------------------------------


@pytest.fixture
def slow_server(default_binary: Path) -> Iterator[Sandbox]:
    """A server as the runbook was written for (3000 keys in dump.rdb, AOF off in both places), whose BGSAVE and
    AOF rewrite each take about 3 s."""
    sb = seed_sandbox("rdb-only", binary=default_binary)
    sb.client().config_set("rdb-key-save-delay", KEY_DELAY_US)
    yield sb
    sb.cleanup()


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in _SCRUB}


def _run_all(sb: Sandbox, tmp_path: Path) -> list[str]:
    """`run all -p apply true` on `sb`; persist-config edits the file (CONFIG REWRITE would also write the test's
    rdb-key-save-delay into it)."""
    return [sys.executable, "-m", "runbook", "run", "all", "-p", "target", sb.url, "-p", "config_file",
            str(sb.config_path), "-p", "apply", "true", "-p", "destination", str(tmp_path / "backups"),
            "-p", "method", "edit", "--archive", str(tmp_path / "archive")]


def _on_a_terminal(cmd: list[str], ctrl_c_when: Callable[[], bool] | None = None,
                   timeout_s: float = 240) -> tuple[int, str, float | None]:
    """`cmd` on a pseudo-terminal of 160 columns, as its controlling terminal (so ^C reaches its process group):
    exit code, everything it wrote, and the seconds from ^C (typed once `ctrl_c_when()`) to its exit."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 160, 0, 0))
    proc = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=slave, env=_env(), cwd=REPO,
                            start_new_session=True, preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0))
    os.close(slave)
    out, typed, deadline = b"", None, time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            if typed is None and ctrl_c_when is not None and ctrl_c_when():
                os.write(master, b"\x03")
                typed = time.monotonic()
            ready, _, _ = select.select([master], [], [], 0.05)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: every process holding the terminal has closed it
                    chunk = b""
                if not chunk and proc.poll() is not None:
                    break
                out += chunk
            elif proc.poll() is not None:
                break
        else:
            proc.kill()
            pytest.fail(f"the run did not end within {timeout_s} s: {out.decode(errors='replace')[-2000:]}")
        code = proc.wait(10)
        took = time.monotonic() - typed if typed is not None else None
    finally:
        os.close(master)
    return code, out.decode(errors="replace"), took


STEPS = ("inspect", "backup", "enable-aof", "persist-config", "test-persistence", "inspect")


@pytest.mark.notebook
def test_a_run_on_a_terminal_shows_its_steps_and_waits(slow_server: Sandbox, tmp_path: Path) -> None:
    code, text, _ = _on_a_terminal(_run_all(slow_server, tmp_path))
    assert code == 0, text[-3000:]
    assert "Traceback" not in text
    target = re.escape(slow_server.url)
    for n, name in enumerate(STEPS, 1):
        assert re.search(rf"\r\[{n}/6\] {name} on {target} \.\.\.\r?\n", text), name  # as it starts
    ended = re.findall(rf"\r\[(\d)/6\] (\S+) on {target}: (\w+)\S*(.*) \(\d+\.\d s\)\r?\n", text)  # as it ends
    assert [(int(n), name) for n, name, _, _ in ended] == list(enumerate(STEPS, 1))
    first, *rest = ended
    assert first[2] in ("fail", "warn") and "before the change: this is what it fixes" in first[3]
    assert [status for _, _, status, _ in rest] == ["pass"] * 5  # the host's overcommit is no step's status
    # The waits, redrawn in place: elapsed / deadline, and what the server reports.
    assert re.search(r"\r      enable-aof: initial AOF rewrite \d+\.\d s / 300 s: [^\r]*aof_rewrite_in_progress:1",
                     text)
    assert re.search(r"\r      backup: BGSAVE \d+\.\d s / \d+ s: [^\r]*rdb_bgsave_in_progress:1", text)
    lines = [line for line in text.replace("\r\n", "\n").split("\n") if line.strip()]
    assert lines[-1] == "recap:    ok 6, changed 4, would change 0, failed 0, skipped 0, blocked 0"
    assert slow_server.client().config_get("appendonly") == {"appendonly": "yes"}


@pytest.mark.notebook
def test_without_a_terminal_the_output_is_the_table_and_the_recap(tmp_path: Path) -> None:
    """Cron: the table, the verdict, the host's advisories once and the recap, nothing else; no step's status is
    the host's overcommit setting (issue 17), whatever this host's vm.overcommit_memory."""
    proc = subprocess.run([sys.executable, "-m", "runbook", "run", "all", "-p", "apply", "true", "-p", "destination",
                           str(tmp_path / "backups"), "--archive", str(tmp_path / "archive")],
                          capture_output=True, text=True, env=_env(), cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    lines = proc.stdout.splitlines()
    assert re.fullmatch(r"change [0-9a-f]{12}", lines[0]) and lines[1].startswith("step ")
    rows = [line.split() for line in lines[2:8]]
    assert [(r[0], r[2]) for r in rows] == [("inspect", "fail"), *((s, "pass") for s in STEPS[1:])]
    assert lines[2].endswith("(before the change: this is what it fixes)")
    evidence, tail = lines[8:20], lines[20:]
    assert all(line.startswith(("evidence: ", "          ")) for line in evidence)  # the ipynb and HTML of each step
    assert all(re.match(r"[a-z]+: +\S", line) for line in tail), tail  # index, report, verdict...: labelled lines
    assert tail[0].startswith("index:    ") and "verdict:  OK (exit 0)" in tail
    after = tail[tail.index("verdict:  OK (exit 0)") + 1:]
    overcommit = read_overcommit()
    advised = [line for line in after if line.startswith("advisory: ")]
    assert len(advised) == (1 if overcommit not in (None, 1) else 0)  # three steps recorded it: said once
    assert all(f"vm.overcommit_memory = {overcommit}: " in line for line in advised)
    assert after == [*advised, "recap:    ok 6, changed 3, would change 0, failed 0, skipped 0, blocked 0"]
    assert "\r" not in proc.stdout and "[1/6]" not in proc.stdout


def _when_rewriting(sb: Sandbox, proc_alive: Callable[[], bool]) -> Callable[[], bool]:
    """A condition true once the server has run the initial AOF rewrite for 0.3 s (fails when the run ends first)."""
    client, since = sb.client(), []

    def rewriting() -> bool:
        assert proc_alive(), "the run ended before the initial AOF rewrite"
        if not since and int(client.info("persistence")["aof_rewrite_in_progress"]):
            since.append(time.monotonic())
        return bool(since) and time.monotonic() - since[0] >= 0.3

    return rewriting


def _assert_put_back(sb: Sandbox, tmp_path: Path) -> None:
    """The server as found (AOF off), and the journal saying how enable-aof ended and what was not run."""
    client = sb.client()
    assert client.config_get("appendonly") == {"appendonly": "no"}
    assert not int(client.info("persistence")["aof_enabled"])
    ended = [(r["notebook"], r["status"]) for r in read_index(tmp_path / "archive")
             if r["status"] not in ("started", "intent")]
    assert ended == [("inspect", "warn"), ("backup", "pass"), ("enable-aof", "interrupted"),
                     ("persist-config", "skipped"), ("test-persistence", "skipped"), ("inspect", "skipped")]
    (cut,) = [r for r in read_index(tmp_path / "archive") if r["status"] == "interrupted"]
    assert "left as found: appendonly no" in cut["summary"]["error"]
    # Its page says it was put back, nothing left; the wait's line shows how long it ran (at least the 0.3 s of
    # rewrite the test waited for), not the "0 s" of its first update.
    html = (tmp_path / "archive" / next(f for f in cut["files"] if f.endswith(".html"))).read_text()
    banner = html[html.index('<div class="banner error">'):html.index("</header>")]
    assert "Nothing is left to undo" in banner and "It may have changed" not in banner
    waited = re.search(r"waiting for the AOF rewrite: interrupted after (\d+\.\d) s of 300 s", html)
    assert waited and float(waited.group(1)) >= 0.3, html[html.find("waiting for"):][:200]


@pytest.mark.notebook
@pytest.mark.parametrize("to", ["process", "group"])
def test_ctrl_c_during_the_rewrite_stops_with_one_line_and_exit_130(slow_server: Sandbox, tmp_path: Path,
                                                                    to: str) -> None:
    """SIGINT to the runbook process, or to its whole process group as a terminal sends it."""
    proc = subprocess.Popen(_run_all(slow_server, tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=_env(), cwd=REPO, start_new_session=True)
    rewriting = _when_rewriting(slow_server, lambda: proc.poll() is None)
    while not rewriting():
        time.sleep(0.02)
    sent = time.monotonic()
    if to == "group":
        os.killpg(proc.pid, signal.SIGINT)
    else:
        proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    print(f"SIGINT to the {to}: exit {proc.returncode} {time.monotonic() - sent:.2f} s after the signal")
    assert proc.returncode == 130, err
    assert out == "" and "Traceback" not in err
    (line,) = err.splitlines()
    assert line.startswith(f"runbook: stopped by SIGINT during enable-aof on {slow_server.url}: enabling AOF "
                           "interrupted before the initial AOF rewrite completed")
    assert "The server was left as found: appendonly no" in line and "evidence: " not in line
    assert re.search(r"; report: \S+/reports/[0-9a-f]{12}\.html$", line), line  # the change report, not the index
    _assert_put_back(slow_server, tmp_path)


@pytest.mark.notebook
def test_ctrl_c_typed_at_the_terminal_ends_the_progress_with_the_one_line(slow_server: Sandbox,
                                                                          tmp_path: Path) -> None:
    code, text, took = _on_a_terminal(_run_all(slow_server, tmp_path),
                                      ctrl_c_when=_when_rewriting(slow_server, lambda: True))
    print(f"^C at the terminal: exit {code} {took:.2f} s after it was typed")
    assert code == 130, text[-3000:]
    assert "Traceback" not in text
    lines = [line.rsplit("\r", 1)[-1] for line in text.replace("\r\n", "\n").split("\n") if line.strip()]
    assert re.fullmatch(r"\[3/6\] enable-aof on \S+: interrupted: stopped by SIGINT: .* \(\d+\.\d s\)", lines[-5])
    assert lines[-4:-1] == [f"[{n}/6] {name} on {slow_server.url}: skipped: not run: the run was stopped by SIGINT"
                            for n, name in ((4, "persist-config"), (5, "test-persistence"), (6, "inspect"))]
    assert lines[-1].startswith("runbook: stopped by SIGINT during enable-aof on ")
    assert "recap:" not in text  # a stopped run says its one line, not the table
    _assert_put_back(slow_server, tmp_path)


def test_host_advisories_are_recorded_apart_from_the_checks(slow_server: Sandbox, tmp_path: Path) -> None:
    """The inspection records the host's vm.overcommit_memory as an advisory (with the host's name), never as one
    of its checks, so it cannot move the step's status."""
    from runbook import connect
    from runbook.steps.inspect import inspect_target

    insp = inspect_target(connect(slow_server.url))
    value = read_overcommit()
    assert "vm_overcommit_memory" not in {c.name for c in insp.checks}
    facts = insp.summary().facts["advisories"]
    if value is None:
        assert facts == []
        return
    (fact,) = facts
    assert fact["name"] == "vm_overcommit_memory" and fact["observed"] == f"vm.overcommit_memory = {value}"
    assert fact["status"] == ("pass" if value == 1 else "warn") and fact["host"]
