"""Run notebooks through papermill into the evidence archive, and say how it went.

Exit codes come from `runbook.errors`: 0 every check passed (warnings allowed unless
fail_on="warn"); 1 a check failed or a notebook raised; 2 usage or parameter error; 3 blocked,
a person must act.
"""

from __future__ import annotations

import functools
import logging
import os
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Sequence

from runbook import __version__
from runbook.errors import ExitCode, exit_code_for, exit_code_for_status
from runbook.evidence.archive import ARCHIVE_ENV, Archive
from runbook.evidence.summary import read_summary
from runbook.model import Status, StepSummary
from runbook.orchestration.kernel import SharedKernel, shared_kernel
from runbook.orchestration.plan import Step, effective, plan
from runbook.sandbox.handoff import SANDBOX_FILE_ENV, SANDBOX_URL_ENV, share
from runbook.server.configfile import mask_secrets

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

    @property
    def counts(self) -> bool:
        """Whether this result decides the run's exit code."""
        return self.status != Status.SKIPPED and not (self.before_change and self.status in (Status.FAIL, Status.WARN))


@dataclass(frozen=True)
class RunResult:
    change_id: str
    archive: Archive
    steps: list[StepResult] = field(default_factory=list)

    def failing(self) -> list[StepResult]:
        """The results that made the run fail or block, in order."""
        return [s for s in self.steps if s.counts and s.exit_code != ExitCode.OK]

    @property
    def exit_code(self) -> ExitCode:
        """The worst step's code; blocked only when nothing failed."""
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

    sb = seed_sandbox(str(effective(steps[0], "sandbox_scenario") or "rdb-only"))
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
) -> RunResult:
    """Run the named notebooks in order under one change id; stop at the first that fails.

    The steps after a failure are recorded as skipped. One exception: when a change follows,
    failed checks of the first inspection do not stop the run (they are what the change fixes,
    like the seed's drift); it still stops when that inspection cannot run at all.
    """
    skip_slow_optional_imports()
    steps = plan(names, files, pairs)
    store = archive if isinstance(archive, Archive) else Archive(archive)
    store.require_writable()  # before a kernel starts or a server is touched
    result = RunResult(change_id=uuid.uuid4().hex[:12], archive=store)
    commit = git_commit()
    extra = dict(record_extra or {})
    # The rollback notebook reads the archive, and a sandbox target reads the handoff file:
    # the kernel finds both through its environment.
    os.environ[ARCHIVE_ENV] = store.env_value()
    try:
        with tempfile.TemporaryDirectory(prefix="runbook-run-") as tmp, shared_kernel() as kernel:
            handoff = Path(tmp) / "sandbox.json"
            os.environ[SANDBOX_FILE_ENV] = str(handoff)
            kernel.start()  # boots (and imports the runbook) while the sandbox is seeded
            ctx = RunContext(result.change_id, store, commit, fail_on, kernel, extra, keep_going)
            with shared_sandbox(steps, handoff):
                _run_steps(steps, result, ctx)
    except BaseException:  # Ctrl-C, a render failure: a step may have changed the target, keep its evidence
        store.abandon()
        raise
    os.environ.pop(SANDBOX_FILE_ENV, None)
    store.close()
    return result


@dataclass(frozen=True)
class RunContext:
    """What every step of one run shares."""

    change_id: str
    store: Archive
    commit: str
    fail_on: str
    kernel: SharedKernel | None
    extra: dict[str, Any]
    keep_going: bool = False

    def record(self, fields: dict[str, Any]) -> dict[str, Any]:
        """Append an index record with the run-wide fields; returns it as written."""
        return self.store.add({
            **self.extra, **fields, "change_id": self.change_id, "runbook_version": __version__,
            "git_commit": self.commit,
        })


def skip_slow_optional_imports() -> None:
    """Keep jsonschema from importing rfc3987_syntax (2.4 s building a grammar at import, measured
    here), which nbformat would otherwise pay for; only the `iri` format check needs it, and
    notebook validation does not use it."""
    if "rfc3987_syntax" not in sys.modules:
        sys.modules["rfc3987_syntax"] = None  # type: ignore[assignment]


def _run_steps(steps: Sequence[Step], result: RunResult, ctx: RunContext) -> None:
    """Run the steps in order. A failure stops the run (the rest recorded as skipped); with
    keep_going it stops only its own target, whose later steps are recorded as skipped."""
    last_stage = steps[-1].stage if steps else 0
    stopped_by: StepResult | None = None
    failed: dict[str, StepResult] = {}  # target -> the result that stopped it
    for step in steps:
        if stopped_by is not None:
            result.steps.extend(_skip(step, t, ctx, stopped_by) for t in step.targets)
            continue
        result.steps.extend(_skip(step, t, ctx, failed[t]) for t in step.targets if t in failed)
        todo = [t for t in step.targets if t not in failed]
        if not todo:
            continue
        if step.fleet and len(todo) < len(step.fleet):
            entries = [e for e in step.parameters["targets"] if e["target"] in todo]
            step = replace(step, fleet=tuple(todo), parameters={**step.parameters, "targets": entries})
        before_change = step.stage == 0 and step.name == "inspect" and last_stage > 0
        for res in _run_step(step, ctx, before_change):
            result.steps.append(res)
            if res.counts and res.exit_code != ExitCode.OK:
                failed[res.target] = res
                if not ctx.keep_going:
                    stopped_by = res


def _skip(step: Step, target: str, ctx: RunContext, cause: StepResult) -> StepResult:
    """Record a step that did not run for `target` because an earlier one failed."""
    now = datetime.now(timezone.utc).isoformat()
    reason = f"{cause.name} ended {cause.status}" + (f" on {cause.target}" if cause.target != target else "")
    summary = StepSummary(step.name, Status.SKIPPED, facts={"reason": reason})
    record = ctx.record({
        "run_id": uuid.uuid4().hex, "notebook": step.name,
        "target": target, "started": now, "ended": now, "status": str(Status.SKIPPED),
        "exit_code": None, "summary": summary.to_json(), "parameters": _target_parameters(step, target), "files": {},
    })
    return StepResult(step.name, target, Status.SKIPPED, ExitCode.OK, summary, None, None, record)


def _target_parameters(step: Step, target: str) -> dict[str, Any]:
    """What a record for one target shows as its parameters (a fleet step: the shared ones and its entry)."""
    if not step.fleet:
        return step.parameters
    entry = next(e for e in step.parameters["targets"] if e["target"] == target)
    return {**{k: v for k, v in step.parameters.items() if k != "targets"}, **entry}


def _run_step(step: Step, ctx: RunContext, before_change: bool = False) -> list[StepResult]:
    """Run one notebook into the archive: one result, or one per target for a fleet step."""
    import nbformat  # noqa: PLC0415  (heavy: only when running)
    import papermill as pm  # noqa: PLC0415  (heavy: only when running)
    from papermill.exceptions import PapermillExecutionError  # noqa: PLC0415  (with papermill)

    target = f"fleet-{len(step.fleet)}" if step.fleet else str(effective(step, "target"))
    started = datetime.now(timezone.utc)
    out = ctx.store.run_path(step.name, target, started)
    error: dict[str, str] | None = None
    t0 = time.perf_counter()
    try:
        extra = {"km": ctx.kernel.ready()} if ctx.kernel is not None else {}
        pm.execute_notebook(
            str(step.path), str(out), parameters=step.parameters, progress_bar=False, log_output=False,
            request_save_on_cell_execute=False, **extra,
        )
    except PapermillExecutionError as err:
        error = {"ename": err.ename, "evalue": err.evalue, "cell": str(err.cell_index)}
    except Exception as err:  # noqa: BLE001  (a dead kernel, a timeout: still archived as evidence)
        error = {"ename": type(err).__name__, "evalue": mask_secrets(str(err)), "cell": ""}
    ended = datetime.now(timezone.utc)
    t1 = time.perf_counter()

    try:
        nb = nbformat.read(str(out), as_version=4)
    except Exception:  # noqa: BLE001  (the kernel died before papermill wrote anything)
        nb = nbformat.read(str(step.path), as_version=4)
        nbformat.write(nb, str(out))
    summary = read_summary(nb, step.name)
    code: ExitCode | None = None  # an error decides the code; otherwise each target's verdict does
    if error:
        code = exit_code_for(error["ename"])
        status = Status.BLOCKED if code == ExitCode.BLOCKED else Status.ERROR
        summary = (summary or StepSummary(step.name, status)).with_error(status, f"{error['ename']}: {error['evalue']}")
    elif summary is None:
        summary = StepSummary(step.name, Status.ERROR, error="the notebook recorded no summary")

    html = out.with_suffix(".html")
    html.write_text(render_html(nb), encoding="utf-8")
    common = {
        "started": started.isoformat(),
        "ended": ended.isoformat(),
        "files": ctx.store.files([out, html]),
        "timings": {"execute_s": round(t1 - t0, 3), "render_s": round(time.perf_counter() - t1, 3)},
    }
    per_target = {target: summary} if not step.fleet else _per_member(step, summary)
    if error:  # a notebook that raised ended in error for every target it covers
        per_target = {t: s.with_error(summary.verdict, summary.error) for t, s in per_target.items()}
    results = []
    for name, target_summary in per_target.items():
        status = target_summary.verdict
        target_code = code if code is not None else exit_code_for_status(status, fail_on_warn=ctx.fail_on == "warn")
        record = ctx.record({
            "run_id": uuid.uuid4().hex, "notebook": step.name, "target": name, "status": str(status),
            "exit_code": int(target_code), "summary": target_summary.to_json(),
            "parameters": _target_parameters(step, name), **common,
        })
        results.append(StepResult(step.name, name, status, target_code, target_summary, out, html, record,
                                  before_change))
    return results


def _per_member(step: Step, summary: StepSummary) -> dict[str, StepSummary]:
    """A fleet step's one record per target, all pointing at the fleet document."""
    members = summary.members
    if not members:  # the notebook died before it recorded anything
        return {t: StepSummary(step.name, summary.verdict, facts={"fleet": True}, error=summary.error)
                for t in step.fleet}
    return {t: replace(members.get(t, summary), facts={**members.get(t, summary).facts, "fleet": True})
            for t in step.fleet}


@functools.lru_cache(maxsize=1)
def _exporter() -> Any:
    from nbconvert import HTMLExporter  # noqa: PLC0415  (heavy: only when rendering)

    return HTMLExporter()


def render_html(nb: Any) -> str:
    """The executed notebook as standalone HTML, rendered in this process (no second nbconvert process)."""
    body, _ = _exporter().from_notebook_node(nb)
    return str(body)
