"""Run notebooks through papermill into the evidence archive, and say how it went.

Exit codes: 0 all checks pass (warnings allowed unless fail_on="warn"); 1 a check
failed or a notebook raised; 2 usage or parameter error; 3 blocked, a person must act.
"""

from __future__ import annotations

import functools
import logging
import os
import json
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
from runbook.evidence.archive import ARCHIVE_ENV, Archive
from runbook.errors import ParameterError
from runbook.evidence.summary import read_summary
from runbook.orchestration.fleet import CHECKS as FLEET_CHECKS
from runbook.orchestration.fleet import normalize_targets
from runbook.orchestration.params import Param, coerce_pair, load_files, notebook_parameters, validate
from runbook.server.target import SANDBOX_FILE_ENV, SANDBOX_URL_ENV

log = logging.getLogger(__name__)

#: Short names of the notebooks, in runbook order.
NOTEBOOKS: dict[str, str] = {
    "inspect": "01-inspect.ipynb",
    "enable-aof": "02-enable-aof.ipynb",
    "persist-config": "03-persist-config.ipynb",
    "test-persistence": "04-test-persistence.ipynb",
    "backup": "05-backup.ipynb",
    "rollback": "06-rollback.ipynb",
}
#: Names that expand to several notebooks.
#: `all` is the whole seed change: the picture before, the change, its proof, the picture after.
SEQUENCES: dict[str, list[str]] = {"all": ["inspect", "enable-aof", "persist-config", "test-persistence", "inspect"]}
#: The notebook that inspects or online-tests every target of a fleet at once.
FLEET_NOTEBOOK = "07-fleet.ipynb"

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_BLOCKED = 0, 1, 2, 3
_EXIT_BY_STATUS = {"pass": EXIT_OK, "warn": EXIT_OK, "fail": EXIT_FAIL, "error": EXIT_FAIL, "blocked": EXIT_BLOCKED}


@dataclass(frozen=True)
class Step:
    """One notebook to run, with the parameters it declares and receives."""

    name: str
    path: Path
    parameters: dict[str, Any]
    stage: int = 0  # steps of one stage are the same runbook step for different targets
    fleet: tuple[str, ...] = ()  # a fleet step: the targets its one notebook covers

    @property
    def targets(self) -> tuple[str, ...]:
        return self.fleet or (str(effective(self, "target")),)


@dataclass(frozen=True)
class StepResult:
    name: str
    target: str
    status: str  # pass, warn, fail, error, blocked, skipped
    exit_code: int
    summary: dict[str, Any]
    notebook: Path | None  # None for a skipped step
    html: Path | None
    record: dict[str, Any]
    before_change: bool = False  # the first inspection of a change: its findings are what the change fixes

    @property
    def counts(self) -> bool:
        """Whether this result decides the run's exit code."""
        return self.status != "skipped" and not (self.before_change and self.status in ("fail", "warn"))


@dataclass(frozen=True)
class RunResult:
    change_id: str
    archive: Archive
    steps: list[StepResult] = field(default_factory=list)

    def failing(self) -> list[StepResult]:
        """The results that made the run fail or block, in order."""
        return [s for s in self.steps if s.counts and s.exit_code != EXIT_OK]

    @property
    def exit_code(self) -> int:
        codes = [s.exit_code for s in self.steps if s.counts]
        if EXIT_BLOCKED in codes and EXIT_FAIL not in codes:
            return EXIT_BLOCKED
        return max(codes, default=EXIT_OK)


def notebooks_dir() -> Path:
    """$RUNBOOK_NOTEBOOKS, else the repository's notebooks/ next to this package."""
    return Path(os.environ.get("RUNBOOK_NOTEBOOKS") or Path(__file__).resolve().parents[2] / "notebooks")


def default_params_file() -> Path | None:
    """params/sandbox.yaml beside the notebooks: what a run uses when no -f is given."""
    path = notebooks_dir().parent / "params" / "sandbox.yaml"
    return path if path.is_file() else None


def expand(names: Sequence[str]) -> list[str]:
    out: list[str] = []
    for name in names:
        for n in SEQUENCES.get(name, [name]):
            if n not in NOTEBOOKS:
                valid = ", ".join([*NOTEBOOKS, *SEQUENCES])
                raise ParameterError(f"unknown notebook {n!r}; choose from: {valid}")
            out.append(n)
    return out


def plan(names: Sequence[str], files: Sequence[str | Path] = (), pairs: Sequence[tuple[str, str]] = ()) -> list[Step]:
    """Resolve names and check every parameter before anything runs (ParameterError otherwise).

    With a `targets` list (a fleet), inspection and the online test become one fleet step each,
    and every other step one step per target, in the targets' order.
    """
    steps_spec = [(n, notebooks_dir() / NOTEBOOKS[n]) for n in expand(names)]
    declared: dict[str, Param] = {}
    per_step: list[dict[str, Param]] = []
    for _, path in steps_spec:
        spec = notebook_parameters(path)
        per_step.append(spec)
        declared.update(spec)
    if not files:
        default = default_params_file()
        files = [default] if default else []
    values = load_files(files)
    for key, raw in pairs:
        values[key] = coerce_pair(key, raw, declared.get(key))
    raw_targets = values.pop("targets", None)
    if raw_targets is None:
        values = validate(values, declared)
        return [
            Step(name, path, {k: v for k, v in values.items() if k in spec}, stage=i)
            for i, ((name, path), spec) in enumerate(zip(steps_spec, per_step))
        ]
    return _plan_fleet(steps_spec, per_step, declared, values, normalize_targets(raw_targets))


def _plan_fleet(steps_spec: list[tuple[str, Path]], per_step: list[dict[str, Param]], declared: dict[str, Param],
                values: dict[str, Any], entries: list[dict[str, str]]) -> list[Step]:
    fleet_path = notebooks_dir() / FLEET_NOTEBOOK
    fleet_spec = {k: v for k, v in notebook_parameters(fleet_path).items() if k not in ("targets", "check")}
    if "target" in values:
        raise ParameterError("give either target (one server) or targets (a fleet), not both")
    values = validate(values, {**declared, **fleet_spec})
    for entry in entries:
        validate({k: v for k, v in entry.items() if k in declared}, declared)
    steps: list[Step] = []
    for stage, ((name, path), spec) in enumerate(zip(steps_spec, per_step)):
        if name in FLEET_CHECKS:
            if name == "test-persistence" and values.get("mode", "online") != "online":
                raise ParameterError(f"a fleet runs test-persistence online only (mode {values['mode']!r} given); "
                                     "run the restart or crash test with a params file for one target")
            shared = {k: v for k, v in values.items() if k in fleet_spec}
            steps.append(Step(name, fleet_path, {**shared, "targets": entries, "check": FLEET_CHECKS[name]},
                              stage=stage, fleet=tuple(e["target"] for e in entries)))
            continue
        shared = {k: v for k, v in values.items() if k in spec}
        steps += [Step(name, path, {**shared, **{k: v for k, v in e.items() if k in spec}}, stage=stage)
                  for e in entries]
    return steps


def effective(step: Step, key: str) -> Any:
    """A parameter's value for `step`: given, else the notebook's default."""
    if key in step.parameters:
        return step.parameters[key]
    declared = notebook_parameters(step.path)
    return declared[key].default if key in declared else None


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
    from runbook.sandbox.throwaway import seed_sandbox  # noqa: PLC0415

    sb = seed_sandbox(str(effective(steps[0], "sandbox_scenario") or "rdb-only"))
    handoff.write_text(json.dumps({"url": sb.url, "dir": str(sb.root)}))
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
    kernel: "SharedKernel | None"
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
            if res.counts and res.exit_code != EXIT_OK:
                failed[res.target] = res
                if not ctx.keep_going:
                    stopped_by = res


def _skip(step: Step, target: str, ctx: RunContext, cause: StepResult) -> StepResult:
    """Record a step that did not run for `target` because an earlier one failed."""
    now = datetime.now(timezone.utc).isoformat()
    reason = f"{cause.name} ended {cause.status}" + (f" on {cause.target}" if cause.target != target else "")
    summary = {"verdict": "skipped", "reason": reason}
    record = ctx.record({
        "run_id": uuid.uuid4().hex, "notebook": step.name,
        "target": target, "started": now, "ended": now, "status": "skipped",
        "exit_code": None, "summary": summary, "parameters": _target_parameters(step, target), "files": {},
    })
    return StepResult(step.name, target, "skipped", EXIT_OK, summary, None, None, record)


def _target_parameters(step: Step, target: str) -> dict[str, Any]:
    """What a record for one target shows as its parameters (a fleet step: the shared ones and its entry)."""
    if not step.fleet:
        return step.parameters
    entry = next(e for e in step.parameters["targets"] if e["target"] == target)
    return {**{k: v for k, v in step.parameters.items() if k != "targets"}, **entry}


class SharedKernel:
    """One kernel for every notebook of a run: started once, its namespace reset between notebooks.

    A kernel start and the imports (pandas, matplotlib, redis) cost more than most notebooks;
    paying them once keeps `run all` quick. Every notebook still starts from an empty namespace
    (`%reset -f`), and a kernel that died is replaced before the next notebook.
    """

    def __init__(self) -> None:
        from jupyter_client.manager import KernelManager  # noqa: PLC0415  (heavy: only when running)

        self.km = KernelManager(kernel_name="python3")
        self._used = False
        self._warm: threading.Thread | None = None

    def start(self) -> None:
        """Start the kernel and, in the background, import the runbook and its report module in it."""
        # The kernel's stderr is noise for cron (a TCP-without-encryption warning); outputs are in the notebooks.
        self.km.start_kernel(env=dict(os.environ), stderr=subprocess.DEVNULL)
        self._warm = threading.Thread(target=self._warm_up, name="kernel-warm-up", daemon=True)
        self._warm.start()

    def _execute(self, code: str) -> None:
        """Run `code` in the kernel on a client of our own, discarding its output."""
        kc = self.km.blocking_client()
        kc.start_channels()
        try:
            kc.wait_for_ready(timeout=60)
            kc.execute_interactive(code, store_history=False, timeout=60, output_hook=lambda msg: None)
        finally:
            kc.stop_channels()

    def _warm_up(self) -> None:
        try:
            self._execute("import runbook.evidence.report")
        except (RuntimeError, TimeoutError):
            pass  # a cold first notebook is slower, nothing worse

    def ready(self) -> Any:
        """The kernel manager, alive and with an empty namespace."""
        if not self.km.has_kernel or not self.km.is_alive():
            self.start()
            self._used = False
        if self._warm is not None:
            self._warm.join()
            self._warm = None
        if self._used:
            # An empty namespace, and cell numbers from 1 again, as in a fresh kernel.
            self._execute("%reset -f\nimport gc; gc.collect()\nget_ipython().execution_count = 1")
        self._used = True
        return self.km

    def shutdown(self) -> None:
        if self.km.has_kernel:
            self.km.shutdown_kernel(now=True)


@contextmanager
def shared_kernel() -> Iterator[SharedKernel]:
    kernel = SharedKernel()
    try:
        yield kernel
    finally:
        kernel.shutdown()


def _run_step(step: Step, ctx: RunContext, before_change: bool = False) -> list[StepResult]:
    """Run one notebook into the archive: one result, or one per target for a fleet step."""
    import nbformat  # noqa: PLC0415  (heavy: only when running)
    import papermill as pm  # noqa: PLC0415
    from papermill.exceptions import PapermillExecutionError  # noqa: PLC0415

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
        from runbook.server.configfile import mask_secrets  # noqa: PLC0415

        error = {"ename": type(err).__name__, "evalue": mask_secrets(str(err)), "cell": ""}
    ended = datetime.now(timezone.utc)
    t1 = time.perf_counter()

    try:
        nb = nbformat.read(str(out), as_version=4)
    except Exception:  # noqa: BLE001  (the kernel died before papermill wrote anything)
        nb = nbformat.read(str(step.path), as_version=4)
        nbformat.write(nb, str(out))
    summary = read_summary(nb) or {}
    if error:
        status = "blocked" if error["ename"] == "Blocked" else "error"
        summary = {**summary, "verdict": status, "error": f"{error['ename']}: {error['evalue']}"}
    elif not summary:
        summary = {"verdict": "error", "error": "the notebook recorded no summary"}

    html = out.with_suffix(".html")
    html.write_text(render_html(nb), encoding="utf-8")
    common = {
        "started": started.isoformat(),
        "ended": ended.isoformat(),
        "files": ctx.store.files([out, html]),
        "timings": {"execute_s": round(t1 - t0, 3), "render_s": round(time.perf_counter() - t1, 3)},
    }
    if not step.fleet:
        per_target = {target: summary}
    else:  # one record per target, all pointing at the fleet document
        per_target = {t: {**summary.get("targets", {}).get(t, summary), "fleet": True} for t in step.fleet}
        if "targets" not in summary:  # the notebook died before it recorded anything
            per_target = {t: {"verdict": summary["verdict"], "error": summary.get("error", ""), "fleet": True}
                          for t in step.fleet}
    results = []
    for name, target_summary in per_target.items():
        status = str(target_summary.get("verdict", "error"))
        code = _exit_code(status, error["ename"] if error else "", ctx.fail_on)
        record = ctx.record({
            "run_id": uuid.uuid4().hex, "notebook": step.name, "target": name, "status": status,
            "exit_code": code, "summary": target_summary, "parameters": _target_parameters(step, name), **common,
        })
        results.append(StepResult(step.name, name, status, code, target_summary, out, html, record, before_change))
    return results


def _exit_code(status: str, ename: str, fail_on: str) -> int:
    if ename == "ParameterError":
        return EXIT_USAGE
    if status == "warn" and fail_on == "warn":
        return EXIT_FAIL
    return _EXIT_BY_STATUS.get(status, EXIT_FAIL)


@functools.lru_cache(maxsize=1)
def _exporter() -> Any:
    from nbconvert import HTMLExporter  # noqa: PLC0415  (heavy: only when rendering)

    return HTMLExporter()


def render_html(nb: Any) -> str:
    """The executed notebook as standalone HTML, rendered in this process (no second nbconvert process)."""
    body, _ = _exporter().from_notebook_node(nb)
    return str(body)
