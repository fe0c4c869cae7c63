"""Run notebooks through papermill into the evidence archive, and say how it went.

Exit codes come from `runbook.errors`: 0 every check passed (warnings allowed unless
fail_on="warn"); 1 a check failed or a notebook raised; 2 usage or parameter error; 3 blocked,
a person must act.
"""

from __future__ import annotations

import itertools
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Sequence

from runbook import __version__
from runbook.errors import (
    ArchiveError,
    ChangeInterrupted,
    ExitCode,
    RunbookError,
    exit_code_for,
    exit_code_for_status,
)
from runbook.evidence import change_report
from runbook.evidence.archive import ARCHIVE_ENV, Archive
from runbook.evidence.journal import AtomicSaves, Journal, notice, read_intent, recent_records
from runbook.evidence.step_page import StepHeader, operator
from runbook.evidence.step_page import render as render_step
from runbook.evidence.summary import CHANGE_ID_ENV, read_summary, with_commands
from runbook.model import ConnectionSpec, Outcome, Status, StepSummary, worst
from runbook.orchestration import group, rolling
from runbook.orchestration.kernel import SharedKernel, shared_kernel
from runbook.orchestration.locking import RunLocks, may_change
from runbook.orchestration.plan import Step, effective, plan
from runbook.orchestration.signals import GRACE_S, Stop, StoppedBetweenCells, engine
from runbook.orchestration.watch import Tail, Watch
from runbook.sandbox.handoff import SANDBOX_FILE_ENV, SANDBOX_URL_ENV, share
from runbook.server.commandlog import COMMAND_LOG_ENV, by_server, step_lines
from runbook.server.configfile import mask_secrets
from runbook.server.progress import PROGRESS_ENV

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StepResult:
    name: str
    target: str
    status: Status
    exit_code: ExitCode
    summary: StepSummary
    notebook: Path | None  # None for a skipped step
    html: Path | None
    record: dict[str, Any]
    before_change: bool = False  # the first inspection of a change: its findings are what the change fixes
    expected: tuple[str, ...] = ()  # the closing inspection of a plan: checks still failing as planned (_after_plan)

    @property
    def counts(self) -> bool:
        """Whether this result decides the run's exit code."""
        return self.status != Status.SKIPPED and not (self.before_change and self.status in (Status.FAIL, Status.WARN))


@dataclass
class RunResult:
    change_id: str
    archive: Archive
    steps: list[StepResult] = field(default_factory=list)
    stopped_by: str = ""  # SIGTERM or SIGINT: the run stopped at a safe point
    stop_code: int = 0  # 143 for SIGTERM, 130 for SIGINT
    archive_failure: str = ""  # the evidence archive failed: the run stopped at a safe point
    kept: str = ""  # where the evidence is after an archive failure
    report: Path | None = None  # the change report (`runbook.evidence.change_report`), when the run wrote one
    left_out: list[str] = field(default_factory=list)  # the fleet's targets --limit did not select

    def changes(self) -> list[str]:
        """What the run changed on its targets, step by step, and what a step cut short may have changed."""
        out = []
        for s in self.steps:
            if change_report.changed_target(s.summary):
                out.append(f"{s.name} on {s.target}: {change_report.describe(s.summary)}")
            elif s.summary.facts.get("unfinished"):
                out.append(f"{s.name} on {s.target} may have changed it ({s.summary.facts['unfinished']})")
        return out

    def pending(self) -> list[StepResult]:
        """The steps whose plan found settings or a config file to change (`PENDING`): what `--detailed-exitcode`
        reports as changes pending."""
        return [s for s in self.steps if s.name in PENDING and s.summary.result == Outcome.PLANNED]

    def failing(self) -> list[StepResult]:
        """The results that made the run fail or block, in order."""
        return [s for s in self.steps if s.counts and s.exit_code != ExitCode.OK]

    @property
    def exit_code(self) -> int:
        """The worst step's code; blocked only when nothing failed; 143/130 for a run a signal stopped, 1 for
        one the archive stopped."""
        if self.stop_code:
            return self.stop_code
        if self.archive_failure:
            return ExitCode.FAILED
        codes = [s.exit_code for s in self.steps if s.counts]
        if ExitCode.BLOCKED in codes and ExitCode.FAILED not in codes:
            return ExitCode.BLOCKED
        return max(codes, default=ExitCode.OK)


def git_commit() -> str:
    """The commit of the runbook checkout (with +dirty when it has local changes), or 'unknown'."""
    repo = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@contextmanager
def shared_sandbox(steps: Sequence[Step], handoff: Path) -> Iterator[None]:
    """When the run targets `sandbox`, start one and share it with every notebook of the run.

    Its address goes to `handoff` (named to the kernel by $RUNBOOK_SANDBOX_FILE), so the kernel
    can start while the sandbox is being seeded.
    """
    if not steps or effective(steps[0], "target") != "sandbox" or os.environ.get(SANDBOX_URL_ENV):
        yield
        return
    from runbook.sandbox.seed import seed_sandbox  # noqa: PLC0415  (only runs against the sandbox need it)

    sb = seed_sandbox(str(effective(steps[0], "sandbox_scenario") or ConnectionSpec().sandbox_scenario))
    assert sb.root is not None
    share(sb.url, sb.root, handoff)
    try:
        yield
    finally:
        sb.cleanup()


def run(
    names: Sequence[str],
    files: Sequence[str | Path] = (),
    pairs: Sequence[tuple[str, str]] = (),
    archive: str | Path | Archive = Path("archive"),
    fail_on: str = "fail",
    record_extra: dict[str, Any] | None = None,
    keep_going: bool = False,
    watch: Watch | None = None,
    pdf: bool = False,
    max_fail: str | None = None,
    limit: str = "",
) -> RunResult:
    """Run the named notebooks in order under one change id; stop at the first that fails.

    The steps after a failure are recorded as skipped. One exception: when a change follows,
    failed checks of the first inspection do not stop the run (they are what the change fixes,
    like the seed's drift); it still stops when that inspection cannot run at all.

    `watch` (a terminal) is told of each step as it starts and ends, and of the waits inside it.
    The run ends with its change report (`change_report`; with `pdf`, also printed to PDF by Chromium).
    A fleet: `limit` selects its targets, `-p parallel N` changes up to N at once, `max_fail` (K or P%, wins over
    `keep_going`) stops starting targets after K failed (`runbook.orchestration.rolling`).
    """
    skip_slow_optional_imports()
    failures = rolling.MaxFail.parse(max_fail, keep_going=keep_going)
    steps = plan(names, files, pairs, limit=limit)
    left_out = _left_out(names, files, pairs, steps) if limit else []
    store = archive if isinstance(archive, Archive) else Archive(archive)
    store.require_writable()  # before a kernel starts or a server is touched
    result = RunResult(change_id=uuid.uuid4().hex[:12], archive=store)
    commit = git_commit()
    extra = dict(record_extra or {})
    if limit:  # every record says which targets of the file --limit left out
        extra["limit"] = {"pattern": limit, "left_out": left_out}
    result.left_out = left_out
    # The rollback notebook reads the archive, and a sandbox target reads the handoff file:
    # the kernel finds both through its environment.
    os.environ[ARCHIVE_ENV] = store.env_value()
    os.environ[CHANGE_ID_ENV] = result.change_id  # config backups carry it (persist-config)
    warn_interrupted(store)
    stop = Stop()
    try:
        with stop.installed(), tempfile.TemporaryDirectory(prefix="runbook-run-") as tmp, \
                shared_kernel() as kernel, rolling.KernelPool(kernel, SharedKernel) as kernels:
            handoff = Path(tmp) / "sandbox.json"
            os.environ[SANDBOX_FILE_ENV] = str(handoff)
            os.environ[COMMAND_LOG_ENV] = str(Path(tmp) / "commands.jsonl")  # what the runner and kernel send
            kernel.start()  # boots (and imports the runbook) while the sandbox is seeded
            kernels.prestart(rolling.workers(steps))  # a rolling change's: they boot while the fleet is inspected
            locks = RunLocks(result.change_id)  # released before the sandbox goes, however the run ends
            journal = Journal(store, result.change_id, {**extra, "runbook_version": __version__, "git_commit": commit},
                              per_target=lambda t: {"lock": fact} if (fact := locks.fact(t)) else {})
            ctx = RunContext(journal, fail_on, kernel, keep_going, locks, stop, watch,
                             Path(tmp) / "progress.jsonl" if watch is not None else None, failures, kernels)
            with shared_sandbox(steps, handoff), locks, atomic_saves(journal):
                _run_steps(group.expand(steps), result, ctx)  # a group run: discovered now, read-only
            runner_commands = by_server(os.environ[COMMAND_LOG_ENV])  # the server lock: taken, renewed, released
    except BaseException:  # a render failure: a step may have changed the target, keep its evidence
        store.abandon()
        raise
    finally:
        os.environ.pop(SANDBOX_FILE_ENV, None)
        os.environ.pop(CHANGE_ID_ENV, None)
        os.environ.pop(COMMAND_LOG_ENV, None)
    if stop.signum:
        result.stopped_by, result.stop_code = stop.name, stop.exit_code
    result.report = write_change_report(result, journal, runner_commands, pdf=pdf)
    if journal.failure:
        result.archive_failure, result.kept = journal.failure, journal.kept()
        store.abandon()  # keeps a remote archive's staging dir when it holds what was not uploaded
    else:
        store.close()
    return result


def _left_out(names: Sequence[str], files: Sequence[str | Path], pairs: Sequence[tuple[str, str]],
              steps: Sequence[Step]) -> list[str]:
    """The targets of the run's files that `--limit` did not select (the plan again, without the limit)."""
    chosen = {t for s in steps for t in s.targets}
    return list(dict.fromkeys(t for s in plan(names, files, pairs) for t in s.targets if t not in chosen))


def write_change_report(result: RunResult, journal: Journal, runner_commands: dict[str, list[str]], *,
                        pdf: bool = False) -> Path | None:
    """The run's change report, written into the archive (`change_report.write`): for every run but a read-only
    inspection that passed. None when there is none, or the archive did not take it (then the run reports the
    archive failure)."""
    records = [s.record or {"notebook": s.name, "target": s.target, "status": str(s.status), "exit_code":
                            int(s.exit_code), "summary": s.summary.to_json(), "change_id": result.change_id}
               for s in result.steps]  # a result the archive did not take has no record: its summary, unhashed
    exit_code = ExitCode.FAILED if journal.failure else result.exit_code
    if not change_report.wanted(records, exit_code, bool(result.stopped_by)):
        return None
    facts = change_report.RunFacts(exit_code, result.stopped_by, journal.failure, operator(), runner_commands,
                                   [(None if s.status == Status.SKIPPED else int(s.exit_code), s.counts)
                                    for s in result.steps])
    try:
        return change_report.write(journal, records, facts, pdf=pdf)
    except ArchiveError as err:
        log.warning("the change report of %s was not archived: %s", result.change_id, err)
        return None


def warn_interrupted(store: Archive) -> None:
    """Say in one line (a warning) when the archive holds an interrupted run that nothing closed yet."""
    try:
        line = notice(recent_records(store.env_value()))
    except (RunbookError, OSError, ValueError) as err:  # reading is not this run's job: it still runs
        log.info("could not read %s for interrupted runs: %s", store.location(), err)
        return
    if line:
        log.warning("%s", line)


@contextmanager
def atomic_saves(journal: Journal) -> Iterator[None]:
    """Papermill saves the running notebooks under the archive whole (`AtomicSaves`), for this run."""
    from papermill.iorw import papermill_io  # noqa: PLC0415  (heavy: only when running)

    entry = (str(journal.archive.local), AtomicSaves(journal))
    papermill_io.register(*entry)
    try:
        yield
    finally:
        papermill_io._handlers.remove(entry)  # papermill has no unregister


@dataclass(frozen=True)
class RunContext:
    """What every step of one run shares: its journal (the one writer of its records), the kernel, the locks,
    and what a signal asked."""

    journal: Journal
    fail_on: str
    kernel: SharedKernel | None
    keep_going: bool = False
    locks: RunLocks | None = None
    stop: Stop = field(default_factory=Stop)
    watch: Watch | None = None  # a terminal following the run
    progress_file: Path | None = None  # where the kernel's waits report to the watch (`runbook.server.progress`)
    max_fail: rolling.MaxFail = field(default_factory=rolling.MaxFail)  # when the run stops starting targets
    kernels: rolling.KernelPool | None = None  # a rolling change's workers' kernels

    @property
    def change_id(self) -> str:
        return self.journal.change_id


def skip_slow_optional_imports() -> None:
    """Keep jsonschema from importing rfc3987_syntax (2.4 s building a grammar at import, measured
    here), which nbformat would otherwise pay for; only the `iri` format check needs it, and
    notebook validation does not use it."""
    if "rfc3987_syntax" not in sys.modules:
        sys.modules["rfc3987_syntax"] = None  # type: ignore[assignment]
    # papermill formats the parameters it injects with black when black can be imported (ansible-lint brings it):
    # 0.4 s to import, and 5 s for a fleet's 1,000 targets (measured); the injected cell reads the same without.
    if "black" not in sys.modules:
        sys.modules["black"] = None  # type: ignore[assignment]


def _run_steps(steps: Sequence[Step], result: RunResult, ctx: RunContext) -> None:
    """Run the steps in order. A failure stops the run (the rest recorded as skipped); with
    keep_going it stops only its own target, whose later steps are recorded as skipped; with max_fail, the run
    stops once that many targets failed. A signal or an archive failure stops the run after the step it came in
    (the rest skipped). A fleet's per-target steps with `parallel` run as a rolling change (`_run_rolling`)."""
    steps = list(steps)
    last_stage = steps[-1].stage if steps else 0
    size = len({t for s in steps for t in (s.fleet or (rolling.unit_key(s, {}),))})  # targets (or groups)
    run = _Progress(ctx.max_fail, size, last_stage, len(steps))
    number = 0
    while number < len(steps):
        step, number = steps[number], number + 1
        halt = _halted(ctx)
        if not halt and run.stopped_by is None and step.parallel and not step.fleet:
            block = list(itertools.takewhile(lambda s: s.parallel and not s.fleet, steps[number - 1:]))
            _run_rolling(block, number, result, ctx, run)
            number += len(block) - 1
            continue
        before = len(result.steps)
        if halt or run.stopped_by is not None:
            result.steps.extend(_skip(step, t, ctx, halt or run.why_stopped(t)) for t in step.targets)
        else:
            result.steps.extend(_skip(step, t, ctx, _ended(run.failed[t], t)) for t in step.targets
                                if t in run.failed)
            todo = [t for t in step.targets if t not in run.failed]
            if todo and step.fleet and len(todo) < len(step.fleet):
                entries = [e for e in step.parameters["targets"] if e["target"] in todo]
                step = replace(step, fleet=tuple(todo), parameters={**step.parameters, "targets": entries})
            for res in _execute(step, ctx, number, run, result.steps) if todo else []:
                result.steps.append(res)
                if res.counts and res.exit_code != ExitCode.OK:
                    run.fail(res.target, res, group_stops_run=step.group is not None)
        for res in result.steps[before:] if ctx.watch is not None else ():
            ctx.watch.finished(number, len(steps), res)


class _Progress:
    """What a run has seen fail so far, and whether it stops: by target (and, in a rolling change, by unit),
    against its --max-fail (`rolling.MaxFail`) over the fleet's `size`."""

    def __init__(self, max_fail: rolling.MaxFail, size: int, last_stage: int, total: int) -> None:
        self.max_fail, self.size, self.last_stage, self.total = max_fail, max(1, size), last_stage, total
        self.failed: dict[str, StepResult] = {}  # target (or unit) -> the result that stopped it
        self.units: list[str] = []  # the failed targets (units), in order: what --max-fail counts
        self.stopped_by: StepResult | None = None
        self._lock = threading.Lock()

    def fail(self, key: str, res: StepResult, *, group_stops_run: bool = False) -> None:
        with self._lock:
            self.failed.setdefault(key, res)
            self.failed.setdefault(res.target, res)
            if key not in self.units:
                self.units.append(key)
            if self.stopped_by is None and (group_stops_run or self.max_fail.reached(len(self.units), self.size)):
                self.stopped_by = res  # a node that fails stops its group (one after another: the run)

    def why_stopped(self, target: str) -> str:
        if self.max_fail.given:
            return self.max_fail.why(self.units, self.size)
        return _ended(self.stopped_by, target)


def _execute(step: Step, ctx: RunContext, number: int, run: _Progress, earlier: Sequence[StepResult]) -> \
        list[StepResult]:
    """Run one step (`number` of the run's) and return its results: a refusal by the server lock, a group's guard,
    or its notebook's verdict (the closing inspection of a plan: as planned, `_after_plan`)."""
    before_change = step.stage == 0 and step.name == "inspect" and run.last_stage > 0
    step = _planned_on_top(step, earlier)
    try:
        with _watched(step, ctx, number, run.total):
            results = _refused(step, ctx) or (_guarded(step, ctx) if step.name == group.GUARD
                                              else _run_step(step, ctx, before_change))
    except ArchiveError as err:  # the refusal could not be recorded
        target = str(effective(step, "target"))
        results = [_unrecorded(target, StepSummary(step.name, Status.ERROR, error=str(err)))]
    if step.name == "inspect" and 0 < step.stage == run.last_stage:
        results = [_after_plan(res, earlier, fail_on_warn=ctx.fail_on == "warn",
                               nodes=step.group.nodes if step.group else ()) for res in results]
    return results


def _run_rolling(block: list[Step], first: int, result: RunResult, ctx: RunContext, run: _Progress) -> None:
    """A fleet's per-target steps (`block`, numbered from `first`) as a rolling change: up to `parallel` units (a
    target's steps, or a group's: `rolling.units`) at once, each on a worker with a kernel of its own, its steps in
    order. A unit that fails skips its own later steps; once --max-fail is reached, a signal came or the archive
    failed, no new unit starts (the ones running finish their steps; a signal: their current step) and the ones not
    started are recorded as skipped. Results go to the run in the units' order."""
    numbers = {id(s): first + i for i, s in enumerate(block)}
    work = rolling.units(block, rolling.replication_links(block))  # a primary and its replica: one unit
    pool = ctx.kernels

    def run_unit(worker: int, unit: tuple[str, list[Step]]) -> list[StepResult]:
        key, unit_steps = unit
        wctx = replace(ctx, kernel=pool.kernel(worker) if pool is not None else ctx.kernel, progress_file=None)
        done: list[StepResult] = []
        for step in unit_steps:
            before, halt = len(done), _halted(ctx)
            stopped = run.failed.get(key) or next((run.failed[t] for t in step.targets if t in run.failed), None)
            if halt or stopped is not None:
                done += [_skip(step, t, ctx, halt or _ended(stopped, t)) for t in step.targets]
            else:
                for res in _execute(step, wctx, numbers[id(step)], run, [*result.steps, *done]):
                    done.append(res)
                    if res.counts and res.exit_code != ExitCode.OK:
                        run.fail(key, res)
            for res in done[before:] if ctx.watch is not None else ():
                ctx.watch.finished(numbers[id(step)], run.total, res)
        return done

    def may_start() -> bool:
        return not _halted(ctx) and run.stopped_by is None

    got = rolling.run_pool(work, block[0].parallel, run_unit, may_start)
    for (key, unit_steps), results in zip(work, got):
        if results is None:  # not started
            reason = _halted(ctx) or (run.max_fail.why(run.units, run.size) if run.max_fail.given else
                                      f"not started: {_ended(run.stopped_by, key)}")
            results = [_skip(s, t, ctx, reason) for s in unit_steps for t in s.targets]
        result.steps.extend(results)


def _planned_on_top(step: Step, earlier: Sequence[StepResult]) -> Step:
    """A plan-only persist-config after a planned enable-aof on its target: planned on top of the runtime settings
    enable-aof would set (`planned_runtime`), so the plan shows the file change the apply will make (on a server
    with AOF off in both places too). The apply plans from the real runtime again."""
    if step.name != "persist-config" or step.fleet or effective(step, "apply") or \
            step.parameters.get("planned_runtime"):
        return step
    target = str(effective(step, "target"))
    planned = {c.setting: c.after for s in earlier if s.name == "enable-aof" and s.target == target
               and s.summary.result == Outcome.PLANNED for c in s.summary.setting_changes if c.after is not None}
    return replace(step, parameters={**step.parameters, "planned_runtime": planned}) if planned else step


#: The steps whose plan changes the server's persistence settings or its config file: a plan of one that found
#: something to do is a change pending (`RunResult.pending`). A backup and the online test run on every applied
#: change, so their plans alone are none (`all` on a server with nothing to fix has none pending).
PENDING = ("enable-aof", "persist-config", "rollback")
#: The inspection checks each planned step would make pass: the closing inspection of a plan (nothing applied)
#: still sees them fail, as expected.
FIXED_BY = {"enable-aof": ("aof_enabled", "appendfsync", "group_aof"),
            "persist-config": ("config_drift", "group_drift")}


def _after_plan(res: StepResult, earlier: Sequence[StepResult], *, fail_on_warn: bool,
                nodes: Sequence[str] = ()) -> StepResult:
    """The closing inspection of a run that changed nothing on `res.target` (a group run: on any of its `nodes`):
    the checks a planned step would fix still fail or warn, as planned, and count no more than in the first
    inspection; its other checks decide its exit code as usual."""
    mine = [s for s in earlier if s.target == res.target or s.target in nodes]
    if res.summary.error or res.status not in (Status.FAIL, Status.WARN) \
            or any(s.summary.changed_something for s in mine):
        return res
    fixes = {c for s in mine if s.summary.result == Outcome.PLANNED for c in FIXED_BY.get(s.name, ())}
    expected = tuple(c.name for c in res.summary.not_passing if c.name in fixes)
    if not expected:
        return res
    rest = worst(c.status for c in res.summary.checks if c.name not in fixes)
    return replace(res, exit_code=exit_code_for_status(rest, fail_on_warn=fail_on_warn), expected=expected)


@contextmanager
def _watched(step: Step, ctx: RunContext, number: int, total: int) -> Iterator[None]:
    """While `step` runs: the watch is told it started, and reads the progress of its waits."""
    if ctx.watch is None:
        yield
        return
    ctx.watch.started(number, total, step.name, f"fleet-{len(step.fleet)}" if step.fleet else
                      str(effective(step, "target")))
    if ctx.progress_file is None:  # a worker of a rolling change: no one status line for several steps' waits
        yield
        return
    with Tail(ctx.progress_file, ctx.watch):
        yield


def _halted(ctx: RunContext) -> str:
    """Why the run stops before its next step, or "": a signal, or the evidence archive failing."""
    if ctx.journal.failure:
        return f"the evidence archive failed ({ctx.journal.failure})"
    if ctx.stop.signum:
        return f"the run was stopped by {ctx.stop.name}"
    return ""


def _ended(cause: StepResult | None, target: str) -> str:
    if cause is None:
        return ""
    return f"{cause.name} ended {cause.status}" + (f" on {cause.target}" if cause.target != target else "")


def _skip(step: Step, target: str, ctx: RunContext, reason: str) -> StepResult:
    """A step that did not run for `target` (`reason`), recorded as skipped while the archive takes records."""
    summary, record = StepSummary(step.name, Status.SKIPPED, facts={"reason": reason}), {}
    if not ctx.journal.failure:
        try:
            summary, record = ctx.journal.skipped(step.name, target, Journal.parameters_for(step.parameters, target),
                                                  reason)
        except ArchiveError:
            pass  # the run stops here; the table still shows the step
    return StepResult(step.name, target, Status.SKIPPED, ExitCode.OK, summary, None, None, record)


def _unrecorded(target: str, summary: StepSummary, notebook: Path | None = None) -> StepResult:
    """A step's result that the archive could not take (the run stops after it)."""
    kept = notebook if notebook is not None and notebook.exists() else None
    return StepResult(summary.step, target, summary.verdict, ExitCode.FAILED, summary, kept, None, {})


def _refused(step: Step, ctx: RunContext) -> list[StepResult]:
    """Take the server lock a changing step needs (`runbook.orchestration.locking`); when it cannot be had, the
    step's one result, recorded without running its notebook: nothing was sent to the server or written."""
    try:
        if ctx.locks is not None:
            ctx.locks.take(step)
        return []
    except RunbookError as err:
        target = str(effective(step, "target"))
        status = Status.BLOCKED if err.exit_code == ExitCode.BLOCKED else Status.ERROR
        summary = StepSummary(step.name, status, facts={"reason": "the server lock was not taken"},
                              error=f"{type(err).__name__}: {err}")
        now = datetime.now(timezone.utc).isoformat()
        record = ctx.journal.verdict(uuid.uuid4().hex, step.name, target, summary, int(err.exit_code),
                                     step.parameters, started=now, ended=now, files={})
        return [StepResult(step.name, target, status, err.exit_code, summary, None, None, record)]


def _guarded(step: Step, ctx: RunContext) -> list[StepResult]:
    """A group run's guard (`group.check`, read-only), recorded like a step; a FAIL stops the group."""
    started = datetime.now(timezone.utc).isoformat()
    summary = group.check(step)
    code = exit_code_for_status(summary.verdict, fail_on_warn=ctx.fail_on == "warn")
    target = str(step.parameters["target"])
    record = ctx.journal.verdict(uuid.uuid4().hex, step.name, target, summary, int(code), step.parameters,
                                 started=started, ended=datetime.now(timezone.utc).isoformat(), files={})
    return [StepResult(step.name, target, summary.verdict, code, summary, None, None, record)]


#: Seconds between saves of a running notebook while its cell shows output (papermill also saves at every cell's
#: start and end): a kill keeps the cells executed up to it.
AUTOSAVE_S = 1
#: What a changing step's `started` record says it is about to do (its intent, from the notebook, says exactly).
DOING = {
    "enable-aof": "switch AOF on at runtime (CONFIG SET appendfsync, appendonly yes) and wait for the initial rewrite",
    "persist-config": "write the persistence settings to the config file, after a backup beside it",
    "backup": "BGSAVE, then copy the persistence files to the backup destination",
    "rollback": "undo a recorded change: the config file from its backup, then CONFIG SET of the settings",
    "test-persistence": "restart the server (the restart test), with canary keys",
}


def _run_step(step: Step, ctx: RunContext, before_change: bool = False) -> list[StepResult]:
    """Run one notebook into the archive: one result, or one per target for a fleet step.

    A step that may change its target is journaled before it runs (`started`). A signal interrupts the notebook
    (its own code puts back an unfinished change) and the step ends `interrupted`. An archive failure ends the
    step at a safe point, the same way, and its result is shown but not recorded."""
    import papermill as pm  # noqa: PLC0415  (heavy: only when running)
    from papermill.exceptions import PapermillExecutionError  # noqa: PLC0415  (with papermill)

    journal = ctx.journal
    target = f"fleet-{len(step.fleet)}" if step.fleet else str(effective(step, "target"))
    started = datetime.now(timezone.utc)
    try:
        out = journal.reserve(step.name, target, started)
        run_id = journal.started(step.name, target, step.parameters, DOING.get(step.name, step.name), out) \
            if may_change(step) else uuid.uuid4().hex
    except ArchiveError as err:
        return [_unrecorded(target, StepSummary(step.name, Status.ERROR, error=f"not run: {err}"))]
    error: dict[str, str] | None = None
    t0 = time.perf_counter()
    try:
        env = {**journal.kernel_env(run_id, step.name, target),
               PROGRESS_ENV: str(ctx.progress_file or "")}  # empty: the waits report nothing
        with ctx.stop.notebook(ctx.kernel):  # a signal while the kernel is made ready interrupts that too
            extra = {"km": ctx.kernel.ready(env, lambda: bool(ctx.stop.signum))} if ctx.kernel else {}
            pm.execute_notebook(
                str(step.path), str(out), parameters=step.parameters, progress_bar=False, log_output=False,
                request_save_on_cell_execute=True, autosave_cell_every=AUTOSAVE_S, engine_name=engine(),
                stop=ctx.stop, **extra,
            )
    except PapermillExecutionError as err:
        error = {"ename": err.ename, "evalue": err.evalue, "cell": str(err.cell_index)}
    except Exception as err:  # noqa: BLE001  (a dead kernel, a timeout, the archive: still evidence)
        error = {"ename": type(err).__name__, "evalue": mask_secrets(str(err)), "cell": ""}
    ended = datetime.now(timezone.utc)
    t1 = time.perf_counter()

    nb = _saved(out, step)
    summary = read_summary(nb, step.name)
    intent = read_intent(nb)
    if error and error["ename"] == "ArchiveError" and not journal.failure:  # the notebook's intent was refused
        journal.failure = error["evalue"]
    if journal.failure:  # the archive failed while the notebook ran: stop it at a safe point, record nothing more
        _settle(ctx.kernel)
        summary = (summary or StepSummary(step.name, Status.ERROR)).with_error(Status.ERROR, journal.failure)
        return [_unrecorded(target, _unfinished(summary, intent), out)]
    code: ExitCode | None = None  # an error decides the code; otherwise each target's verdict does
    if error and ctx.stop.signum:
        code, status = ExitCode.FAILED, Status.INTERRUPTED
        how = ("the kernel did not stop, and was killed: nothing more was put back" if ctx.stop.killed
               else error["evalue"] if error["ename"] == StoppedBetweenCells.__name__
               else f"{error['ename']}: {error['evalue']}" if error["evalue"]
               else f"{error['ename']} in cell {error['cell']}")
        summary = (summary or StepSummary(step.name, status)).with_error(status, f"stopped by {ctx.stop.name}: {how}")
        put_back = ChangeInterrupted.put_back(error["evalue"]) if error["ename"] == ChangeInterrupted.__name__ \
            and not ctx.stop.killed else ""
        if put_back:  # its own code put the change back: nothing is left, and the run closed itself
            summary = replace(summary, facts={**summary.facts, "put_back": put_back})
        elif error["ename"] != ChangeInterrupted.__name__:
            summary = _unfinished(summary, intent)
    elif error:
        code = exit_code_for(error["ename"])
        status = Status.BLOCKED if code == ExitCode.BLOCKED else Status.ERROR
        summary = (summary or StepSummary(step.name, status)).with_error(status, f"{error['ename']}: {error['evalue']}")
    elif summary is None:
        summary = StepSummary(step.name, Status.ERROR, error="the notebook recorded no summary")
    if os.environ.get(COMMAND_LOG_ENV):  # a notebook that raised before its summary: what it sent, from the log
        summary = with_commands(summary, step_lines(os.environ[COMMAND_LOG_ENV], run_id))

    per_target = {target: summary} if not step.fleet else _per_member(step, summary)
    if error:  # a notebook that raised ended in error for every target it covers
        per_target = {t: s.with_error(summary.verdict, summary.error) for t, s in per_target.items()}
    html = out.with_suffix(".html")
    try:
        journal.write_text(html, render_html(nb, StepHeader(
            step.name, target, summary, journal.change_id, run_id, started, ended,
            commit=str(journal.fields.get("git_commit", "unknown")), error=error, intent=intent)))
        common = {
            "started": started.isoformat(),
            "ended": ended.isoformat(),
            "files": journal.files([out, html]),
            "timings": {"execute_s": round(t1 - t0, 3), "render_s": round(time.perf_counter() - t1, 3)},
        }
    except ArchiveError:
        return [_unrecorded(t, s, out) for t, s in per_target.items()]
    codes = {name: code if code is not None else exit_code_for_status(s.verdict, fail_on_warn=ctx.fail_on == "warn")
             for name, s in per_target.items()}
    try:
        if journal.failure:
            raise ArchiveError(journal.failure)
        if step.fleet:  # one record per target, written together (a few index writes for the whole fleet)
            shared = {k: v for k, v in step.parameters.items() if k != "targets"}
            entries = {e["target"]: e for e in step.parameters.get("targets", [])}
            records = journal.verdicts(step.name, [(name, s, int(codes[name]), {**shared, **entries.get(name, {})})
                                                   for name, s in per_target.items()], **common)
        else:
            records = [journal.verdict(run_id, step.name, name, s, int(codes[name]),
                                       journal.parameters_for(step.parameters, name), **common)
                       for name, s in per_target.items()]
    except ArchiveError:
        return [_unrecorded(name, s, out) for name, s in per_target.items()]
    return [StepResult(step.name, name, s.verdict, codes[name], s, out, html, record, before_change)
            for (name, s), record in zip(per_target.items(), records)]


def _saved(out: Path, step: Step) -> Any:
    """The executed notebook as papermill last saved it; the source notebook when nothing was saved (then also
    written to `out`, when the archive takes it)."""
    import nbformat  # noqa: PLC0415  (heavy: only when running)

    try:
        return nbformat.read(str(out), as_version=4)
    except Exception:  # noqa: BLE001  (the kernel died before papermill wrote anything)
        nb = nbformat.read(str(step.path), as_version=4)
        try:
            nbformat.write(nb, str(out))
        except OSError:
            pass  # the archive failed: the step's result says so
        return nb


def _unfinished(summary: StepSummary, intent: dict[str, Any] | None) -> StepSummary:
    """`summary` of a step cut short after its intent: what it may have changed (from the intent)."""
    if not intent or summary.changed_something:
        return summary
    return replace(summary, facts={**summary.facts, "unfinished": str(intent.get("summary", ""))})


def _settle(kernel: SharedKernel | None) -> None:
    """After papermill stopped mid-notebook: interrupt the cell still running, if any (its own code puts back what
    it had started), and wait until the kernel is idle; kill it when it does not get there."""
    if kernel is None:
        return
    kernel.interrupt()
    try:
        kernel.settle(GRACE_S)
    except (RuntimeError, TimeoutError):
        kernel.kill()


def _per_member(step: Step, summary: StepSummary) -> dict[str, StepSummary]:
    """A fleet step's one record per target, all pointing at the fleet document."""
    members = summary.members
    if not members:  # the notebook died before it recorded anything
        return {t: StepSummary(step.name, summary.verdict, facts={"fleet": True}, error=summary.error)
                for t in step.fleet}
    return {t: replace(members.get(t, summary), facts={**members.get(t, summary).facts, "fleet": True})
            for t in step.fleet}


def render_html(nb: Any, header: StepHeader | None = None) -> str:
    """The executed notebook as a standalone page read as a report (`runbook.evidence.step_page`: `header` on top,
    no code), rendered in this process (no second nbconvert process)."""
    return render_step(nb, header)
