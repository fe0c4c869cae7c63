"""A notebook run by hand (JupyterLab, nbval): parameters from a params file, a banner saying it is not archived.

`runbook run` injects a notebook's parameters with papermill and archives the executed copy. Opened in
JupyterLab, a notebook runs with its own parameters cell and leaves no record. `use_params` lets it take
the parameters of a params file instead (checked as `runbook run -f` checks them, so nobody edits the
committed cell) and shows a banner with the `runbook run ...` command that would archive the same run.

Under `runbook run` (the runner sets its run id in the kernel's environment) `use_params` does nothing: the
parameters are the run's. Under papermill alone, parameters it injected win over a file.
"""

from __future__ import annotations

import html
import json
import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, MutableMapping

from runbook.errors import ParameterError
from runbook.evidence.journal import RUN_ID_ENV
from runbook.evidence.summary import CHANGE_ID_ENV
from runbook.orchestration.fleet import CHECKS as FLEET_CHECKS
from runbook.orchestration.params import notebook_parameters
from runbook.orchestration.plan import FLEET_NOTEBOOK, NOTEBOOKS, Step, notebooks_dir, plan
from runbook.server.target import redact_url

#: The class of the banner's HTML element (the browser test finds it by it).
BANNER_CLASS = "runbook-not-archived"
_STYLE = "border-left:4px solid #b58900;background:#fff3cd;color:#332701;padding:6px 10px;margin:4px 0"
#: How papermill's injected-parameters cell begins (papermill.translators: the `Parameters` comment).
_INJECTED = "# Parameters\n"


@dataclass(frozen=True)
class ByHand:
    """What `use_params` did: the notebook, the runbook step it stands for, the params file it loaded (if any),
    the values it set, and the command that would archive the same run."""

    notebook: str
    step: str
    params_file: str
    loaded: dict[str, Any]
    command: str
    note: str = ""

    def banner_html(self) -> str:
        lines = [f"<b>Not archived.</b> Run by hand, this notebook leaves no record in the evidence archive. "
                 f"The archived run of the same: <code>{html.escape(self.command)}</code>"]
        lines += [html.escape(line) for line in self._parameter_lines()]
        body = "<br>".join(lines)
        return f'<div class="{BANNER_CLASS}" role="note" style="{_STYLE}">{body}</div>'

    def banner_text(self) -> str:
        return "\n".join([f"Not archived (run by hand). The archived run of the same: {self.command}",
                          *self._parameter_lines()])

    def _parameter_lines(self) -> list[str]:
        if self.note:
            return [self.note]
        if not self.params_file:
            return ['Parameters: this notebook\'s own cell. Another server without editing it: '
                    'runbook.use_params("params/local.yaml") in a cell (see 00-start-here).']
        shown = ", ".join(f"{k} {_cli_text(k, v)}" for k, v in self.loaded.items())
        return [f"Parameters from {self.params_file}: {shown or '(none given: the defaults)'}."]


def use_params(path: str | Path | None = None, *, notebook: str | None = None,
               namespace: MutableMapping[str, Any] | None = None) -> None:
    """In a notebook run by hand: set its parameters from the params file at `path` (when given) and show the
    not-archived banner. The file is checked as `runbook run NAME -f PATH` checks it (unknown names, types,
    choices, bounds, no secrets, a target named): ParameterError otherwise, and nothing is set. Every parameter
    the notebook declares is set, to the file's value or the notebook's default, as the runner would inject them.

    `notebook`: the notebook's file name (default: the one JupyterLab says is open, `__session__`).
    `namespace`: the notebook's globals (default: the kernel's). A relative `path` is looked up from the
    kernel's directory, then from the project's (where `params/` is). Under `runbook run`: nothing.
    """
    if os.environ.get(RUN_ID_ENV) or os.environ.get(CHANGE_ID_ENV):
        return
    _display(by_hand(path, notebook=notebook, namespace=namespace))


def by_hand(path: str | Path | None = None, *, notebook: str | None = None,
            namespace: MutableMapping[str, Any] | None = None) -> ByHand:
    """`use_params` without the banner: sets the parameters and says what it did."""
    ns = _user_namespace() if namespace is None else namespace
    name = _notebook_name(notebook, ns)
    resolved: Path | None = None
    given: dict[str, Any] = {}
    note = ""
    if path is not None and _papermill_injected(ns):
        note = f"papermill injected this notebook's parameters: they apply, {path} was not loaded."
    elif path is not None:
        resolved = _resolve(Path(path))
        try:
            given = dict(_cli_step(name, _step_name(name, ns), resolved).parameters)
        except ParameterError as err:
            if str(resolved) in str(err):
                raise
            raise ParameterError(f"parameter file {resolved}: {err}") from err
        ns.update({**_defaults(name), **given})
    step = _step_name(name, ns)
    return ByHand(notebook=name, step=step, params_file=_relative(resolved) if resolved else "", loaded=given,
                  command=archive_command(name, step, ns, resolved), note=note)


def archive_command(notebook: str, step: str, values: Mapping[str, Any], params_file: Path | None = None) -> str:
    """The `runbook run` command that runs `notebook` (as runbook step `step`) with `values` and archives it:
    `-f params_file` when given, and `-p NAME VALUE` for each declared value that differs from what the CLI
    would use. Target URLs are shown without passwords."""
    if notebook == FLEET_NOTEBOOK and not values.get("targets"):
        return f"runbook run {step} -f FLEET_FILE  (your copy of params/fleet.example.yaml, listing your targets)"
    base = {**_defaults(notebook), **_cli_step(notebook, step, params_file).parameters}
    words = ["runbook", "run", step] + (["-f", _relative(params_file)] if params_file else [])
    for key in notebook_parameters(notebooks_dir() / notebook):
        if key == "check" or key not in values or _same(values[key], base.get(key)):
            continue
        words += ["-p", key, _cli_text(key, values[key])]
    return shlex.join(words)


# -- where the notebook is ------------------------------------------------------------------------------------


def _user_namespace() -> MutableMapping[str, Any]:
    from IPython import get_ipython  # noqa: PLC0415  (only inside a kernel)

    shell = get_ipython()
    if shell is None:
        raise ParameterError("use_params sets a notebook's parameters: call it in a notebook cell, or pass "
                             "namespace= (the globals to set)")
    return shell.user_ns


def _notebook_name(notebook: str | None, ns: MutableMapping[str, Any]) -> str:
    known = [*NOTEBOOKS.values(), FLEET_NOTEBOOK]
    session = ns.get("__session__") or ns.get("__vsc_ipynb_file__") or ""
    name = Path(notebook or session).name
    if name not in known:
        seen = f"this notebook is {name!r}" if name else "which notebook this is is not known here"
        raise ParameterError(f"use_params knows the runbook's notebooks ({', '.join(known)}); {seen}: "
                             "pass notebook='01-inspect.ipynb' (the one whose parameters to check against)")
    return name


def _step_name(notebook: str, ns: MutableMapping[str, Any]) -> str:
    """The runbook step a notebook runs as: its short name; the fleet notebook's, by its `check`."""
    if notebook == FLEET_NOTEBOOK:
        by_check = {check: step for step, check in FLEET_CHECKS.items()}
        return by_check.get(str(ns.get("check", "inspect")), "inspect")
    return next(step for step, file in NOTEBOOKS.items() if file == notebook)


def _papermill_injected(ns: MutableMapping[str, Any]) -> bool:
    """True when papermill injected parameters into this kernel (its cell ran: IPython's input history)."""
    return any(str(source).startswith(_INJECTED) for source in ns.get("_ih") or ns.get("In") or [])


def _project() -> Path:
    return notebooks_dir().parent


def _resolve(path: Path) -> Path:
    path = path.expanduser()
    if path.is_absolute():
        return path
    for base in (Path.cwd(), _project()):
        if (base / path).exists():
            return base / path
    raise ParameterError(f"parameter file {path} does not exist here ({Path.cwd()}) nor in the project "
                         f"({_project()}): give its path")


def _relative(path: Path) -> str:
    """`path` as given to `runbook run` from the project's directory."""
    try:
        return str(path.resolve().relative_to(_project().resolve()))
    except ValueError:
        return str(path.resolve())


# -- what the CLI would do ---------------------------------------------------------------------------------


def _defaults(notebook: str) -> dict[str, Any]:
    return {name: p.default for name, p in notebook_parameters(notebooks_dir() / notebook).items()}


def _cli_step(notebook: str, step: str, params_file: Path | None) -> Step:
    """The step `runbook run STEP [-f FILE]` would run for `notebook`, with its checked parameters."""
    if params_file is None and notebook == FLEET_NOTEBOOK:
        return Step(step, notebooks_dir() / notebook, {})
    steps = plan([step], [params_file] if params_file else [])
    fleet = [s for s in steps if s.fleet]
    if notebook == FLEET_NOTEBOOK:
        if not fleet:
            raise ParameterError(f"{params_file} names one target, not a fleet: open {NOTEBOOKS[step]} for it, "
                                 f"or list the servers under `targets:` for {FLEET_NOTEBOOK}")
        return fleet[0]
    if fleet or len(steps) != 1:
        raise ParameterError(f"{params_file} lists a fleet (`targets`): open {FLEET_NOTEBOOK} for it "
                             f"(inspect, online test), or run `runbook run {step} -f {params_file}`")
    return steps[0]


def _same(a: Any, b: Any) -> bool:
    return a == b and isinstance(a, bool) == isinstance(b, bool)


def _cli_text(key: str, value: Any) -> str:
    """A value as `-p` takes it (YAML for all but text; text as typed); URLs without passwords."""
    if key == "target" and isinstance(value, str):
        return redact_url(value)
    if key == "targets" and isinstance(value, list):
        value = [{**e, "target": redact_url(e["target"])} if isinstance(e, dict) and "target" in e
                 else redact_url(e) if isinstance(e, str) else e for e in value]
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    return json.dumps(value) if isinstance(value, (dict, list)) else repr(value)


def _display(result: ByHand) -> None:
    from IPython.display import display  # noqa: PLC0415  (only inside a kernel)

    display({"text/html": result.banner_html(), "text/plain": result.banner_text()}, raw=True)
