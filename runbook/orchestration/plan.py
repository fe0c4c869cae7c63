"""What a run will do: notebook names and sequences resolved to steps, each with its checked parameters.

Everything here runs before any server is touched; every error is a ParameterError (exit 2).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

from runbook.errors import ParameterError
from runbook.orchestration.fleet import CHECKS as FLEET_CHECKS
from runbook.orchestration.fleet import normalize_targets
from runbook.orchestration.gateway import GATEWAY_CONFIG, gateway_parameters
from runbook.orchestration.group import GROUP_PARAMS, GroupRun, group_of, is_group, pop_options
from runbook.orchestration.params import (
    Param,
    check_reasons,
    coerce_pair,
    load_files,
    notebook_parameters,
    validate,
)
from runbook.orchestration.rolling import select
from runbook.server.tls import check_tls_parameters

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
#: `all` is the whole seed change: the picture before, a backup of the data (the first step of Redis's own
#: procedure for switching AOF on, before anything is changed), the change, its proof, the picture after.
SEQUENCES: dict[str, list[str]] = {
    "all": ["inspect", "backup", "enable-aof", "persist-config", "test-persistence", "inspect"],
}
#: One line per sequence for `runbook list` (a notebook's line is its title: see `title`).
SEQUENCE_HELP: dict[str, str] = {
    "all": "The whole change: look, back up, switch AOF on, write it to the config file, prove it, look again",
}


#: Parameters that say what the target is (a LiteLLM gateway's Redis: inspect shows its key classes), not what a
#: step does: a params file may hold them for every run, and a run whose notebooks do not use them drops them.
TARGET_PROPERTIES = ("gateway",)


#: The notebook that inspects or online-tests every target of a fleet at once.
FLEET_NOTEBOOK = "07-fleet.ipynb"


@dataclass(frozen=True)
class Step:
    """One notebook to run, with the parameters it declares and receives."""

    name: str
    path: Path
    parameters: dict[str, Any]
    stage: int = 0  # steps of one stage are the same runbook step for different targets
    fleet: tuple[str, ...] = ()  # a fleet step: the targets its one notebook covers
    group: GroupRun | None = None  # a step of a group run (`runbook.orchestration.group`)
    parallel: int = 0  # a fleet's per-target step: up to this many targets at once (`-p parallel`); 0: stage by stage

    @property
    def targets(self) -> tuple[str, ...]:
        return self.fleet or (str(effective(self, "target")),)


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


def sequence_size(steps: Sequence[str]) -> str:
    """How many notebooks `steps` (expanded names) run, in words: "6 steps (5 notebooks; inspect before and after)"
    when one repeats, else "5 notebooks" (`runbook list` and `--help-notebook` say it the same way)."""
    distinct = list(dict.fromkeys(steps))
    if len(distinct) == len(steps):
        return f"{len(steps)} notebook{'s' if len(steps) != 1 else ''}"
    again = "; ".join(f"{n} before and after" if steps.count(n) == 2 and steps[0] == steps[-1] == n
                      else f"{n} {steps.count(n)} times" for n in distinct if steps.count(n) > 1)
    return f"{len(steps)} steps ({len(distinct)} notebooks; {again})"


def plan(names: Sequence[str], files: Sequence[str | Path] = (), pairs: Sequence[tuple[str, str]] = (),
         limit: str = "") -> list[Step]:
    """Resolve names and check every parameter before anything runs (ParameterError otherwise).

    With a `targets` list (a fleet), inspection and the online test become one fleet step each,
    and every other step one step per target, in the targets' order. `limit` (`--limit`) selects targets
    (`runbook.orchestration.rolling.select`); `parallel` given, the per-target steps carry it (a rolling change).
    """
    steps_spec = [(n, notebooks_dir() / NOTEBOOKS[n]) for n in expand(names)]
    declared: dict[str, Param] = {}
    per_step: list[dict[str, Param]] = []
    for _, path in steps_spec:
        spec = notebook_parameters(path)
        per_step.append(spec)
        declared.update(spec)
    given = list(files)
    if not files and not any(key == GATEWAY_CONFIG for key, _ in pairs):  # the sandbox is no gateway's Redis
        default = default_params_file()
        files = [default] if default else []
    values = load_files(files)
    for key, raw in pairs:
        values[key] = coerce_pair(key, raw, declared.get(key))
    check_reasons(values)
    if GATEWAY_CONFIG in values:  # the targets of a LiteLLM proxy config, read on every run (it may have changed)
        values.update(gateway_parameters(values.pop(GATEWAY_CONFIG), values, declared))
    for name in TARGET_PROPERTIES:  # what the target is: a params file's line every run of that file takes
        if name in values and name not in declared:
            inspect_spec = notebook_parameters(notebooks_dir() / NOTEBOOKS["inspect"])
            validate({name: values.pop(name)}, {name: inspect_spec[name]})
    if given and "target" not in values and "targets" not in values:
        # Never the notebooks' default (a throwaway sandbox) for a run that brought its own file: under cron a
        # file whose target line is still commented out would read as a healthy server forever.
        names = ", ".join(map(str, given))
        raise ParameterError(f"{names} {'names' if len(given) == 1 else 'name'} no target: add `target: "
                             "redis://host:port/db` (or `targets:` for a fleet, `target: sandbox` for a throwaway "
                             "server), or pass -p target URL")
    raw_targets = values.pop("targets", None)
    lag_given, max_lag = any(k in values for k in GROUP_PARAMS), pop_options(values)
    if raw_targets is None:
        values = validate(values, declared)
        one = _plan_one(steps_spec, per_step, values, group_of([n for n, _ in steps_spec], values, max_lag,
                                                               lag_given=lag_given))
        if limit and one:
            select(one[0].targets, limit)  # one target: --limit must select it
        return one
    entries = normalize_targets(raw_targets)
    if limit:
        chosen = set(select([e["target"] for e in entries], limit))
        entries = [e for e in entries if e["target"] in chosen]
    if any(is_group({**values, **e}) for e in entries):  # groups (and plain entries) one after another
        if "target" in values:
            raise ParameterError("give either target (one server) or targets (a fleet), not both")
        parallel = _parallel(values)
        return [replace(step, parallel=parallel) for e in entries
                for values_e in [validate({**values, **e}, declared)]
                for step in _plan_one(steps_spec, per_step, values_e,
                                      group_of([n for n, _ in steps_spec], values_e, max_lag))]
    if lag_given:
        group_of([], {}, max_lag, lag_given=True)  # says what max_lag_bytes is for
    return _plan_fleet(steps_spec, per_step, declared, values, entries)


def _plan_one(steps_spec: list[tuple[str, Path]], per_step: list[dict[str, Param]], values: dict[str, Any],
              group: GroupRun | None) -> list[Step]:
    """One target's steps; a group run's are expanded over its nodes at the run's start (`group.expand`)."""
    return [Step(name, path, {k: v for k, v in values.items() if k in spec}, stage=i, group=group)
            for i, ((name, path), spec) in enumerate(zip(steps_spec, per_step))]


def _plan_fleet(steps_spec: list[tuple[str, Path]], per_step: list[dict[str, Param]], declared: dict[str, Param],
                values: dict[str, Any], entries: list[dict[str, str]]) -> list[Step]:
    fleet_path = notebooks_dir() / FLEET_NOTEBOOK
    fleet_spec = {k: v for k, v in notebook_parameters(fleet_path).items() if k not in ("targets", "check")}
    if "target" in values:
        raise ParameterError("give either target (one server) or targets (a fleet), not both")
    values = validate(values, {**declared, **fleet_spec})
    for entry in entries:
        validate({k: v for k, v in entry.items() if k in declared}, declared)
        check_tls_parameters(entry["target"], {**values, **entry})  # the fleet's TLS files with each entry's own
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
        steps += [Step(name, path, {**shared, **{k: v for k, v in e.items() if k in spec}}, stage=stage,
                       parallel=int(values.get("parallel", 0)))
                  for e in entries]
    return steps


def _parallel(values: dict[str, Any]) -> int:
    """`parallel` taken out of a fleet's parameters where no notebook of the run declares it (a fleet of groups:
    each entry runs its own notebooks), checked as the fleet notebook declares it; 0 when not given."""
    if "parallel" not in values:
        return 0
    spec = notebook_parameters(notebooks_dir() / FLEET_NOTEBOOK)["parallel"]
    return int(validate({"parallel": values.pop("parallel")}, {"parallel": spec})["parallel"])


def effective(step: Step, key: str) -> Any:
    """A parameter's value for `step`: given, else the notebook's default."""
    if key in step.parameters:
        return step.parameters[key]
    declared = notebook_parameters(step.path)
    return declared[key].default if key in declared else None


def title(path: Path) -> str:
    """A notebook's one line for `runbook list`: the `# ` title of its first markdown cell ("" when it has none)."""
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    first = next((c for c in cells if c["cell_type"] == "markdown"), None)
    source = "" if first is None else "".join(first["source"]) if isinstance(first["source"], list) else first["source"]
    return next((line[2:].strip() for line in source.splitlines() if line.startswith("# ")), "")


@dataclass(frozen=True)
class ParameterHelp:
    """One row of `runbook run NAMES --help-notebook`: a parameter line and the steps whose notebooks declare it."""

    param: Param
    steps: tuple[str, ...]


def parameter_help(names: Sequence[str]) -> tuple[list[str], list[ParameterHelp]]:
    """The steps `names` expand to (each once, in order) and the union of their notebooks' parameter lines.

    A name declared the same way by several notebooks is one row; declared differently (another default or
    help), one row per variant, next to each other. When the steps include one a fleet runs as one notebook
    (a `targets` list), the parameters only the fleet notebook declares follow, under the step name `fleet`;
    `check` is left out (the runner sets it).
    """
    steps = list(dict.fromkeys(expand(names)))
    declared = [(name, notebook_parameters(notebooks_dir() / NOTEBOOKS[name])) for name in steps]
    if any(name in FLEET_CHECKS for name in steps):
        fleet = notebook_parameters(notebooks_dir() / FLEET_NOTEBOOK)
        known = {key for path in NOTEBOOKS.values() for key in notebook_parameters(notebooks_dir() / path)}
        declared.append(("fleet", {k: v for k, v in fleet.items() if k not in known and k != "check"}))
    variants: dict[str, dict[tuple[str, str, str], list[Any]]] = {}
    for name, spec in declared:
        for param in spec.values():
            entry = variants.setdefault(param.name, {}).setdefault(
                (param.type, repr(param.default), param.help), [param, []])
            entry[1].append(name)
    rows = [ParameterHelp(param, tuple(used)) for by_line in variants.values() for param, used in by_line.values()]
    return steps, rows
