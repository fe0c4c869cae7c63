"""A notebook run by hand: `use_params` (a params file checked as the CLI checks it), the not-archived banner,
one sandbox per kernel, the same default sandbox as the CLI, and `make lab`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from helpers import REPO

from runbook.errors import ParameterError
from runbook.evidence.journal import RUN_ID_ENV
from runbook.evidence.summary import CHANGE_ID_ENV
from runbook.model import ConnectionSpec
from runbook.orchestration.interactive import BANNER_CLASS, archive_command, by_hand, use_params
from runbook.orchestration.params import notebook_parameters
from runbook.orchestration.plan import FLEET_NOTEBOOK, NOTEBOOKS, effective, notebooks_dir, plan

INSPECT = "01-inspect.ipynb"


@pytest.fixture
def by_hand_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """A kernel opened by hand: none of the runner's variables, nor a shared sandbox."""
    for var in (RUN_ID_ENV, CHANGE_ID_ENV, "RUNBOOK_SANDBOX_URL", "RUNBOOK_SANDBOX_DIR", "RUNBOOK_SANDBOX_FILE",
                "RUNBOOK_NOTEBOOKS"):
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def parameters_cell(notebook: str) -> dict[str, Any]:
    """The globals a notebook has after its parameters cell ran (the cell's own source, executed)."""
    nb = json.loads((notebooks_dir() / notebook).read_text())
    cell = next(c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
    ns: dict[str, Any] = {}
    exec("".join(cell["source"]), ns)  # the committed cell: literals only
    del ns["__builtins__"]
    return ns


def params_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "local.yaml"
    path.write_text(text)
    return path


def test_the_files_values_are_set_and_every_other_parameter_is_the_notebooks_default(by_hand_env, tmp_path) -> None:
    ns = parameters_cell(INSPECT)
    ns["config_file"] = "/edited/by/hand.conf"  # a value left over from an edit: the file's run does not keep it
    path = params_file(tmp_path, "target: redis://10.0.0.5:6380/2\ncommand_timeout_s: 3\n")
    done = by_hand(path, notebook=INSPECT, namespace=ns)
    assert ns["target"] == "redis://10.0.0.5:6380/2"
    assert ns["command_timeout_s"] == 3.0 and isinstance(ns["command_timeout_s"], float)  # widened, as the CLI does
    assert ns["config_file"] == ""  # the notebook's default, as `runbook run inspect -f` would inject it
    assert ns["sandbox_scenario"] == "runtime-aof"
    assert done.loaded == {"target": "redis://10.0.0.5:6380/2", "command_timeout_s": 3.0}
    assert done.command == f"runbook run inspect -f {path}"
    assert "Not archived" in done.banner_text() and "redis://10.0.0.5:6380/2" in done.banner_text()
    assert f'class="{BANNER_CLASS}"' in done.banner_html()


@pytest.mark.parametrize("text, expected", [
    ("target: redis://10.0.0.5:6380/0\ncommand_timout_s: 3\n", "unknown parameter(s): command_timout_s"),
    ("target: redis://10.0.0.5:6380/0\ncommand_timeout_s: fast\n", "parameter command_timeout_s must be float"),
    ("target: redis://10.0.0.5:6380/0\nsandbox_scenario: prod\n", "sandbox_scenario must be one of"),
    ("target: redis://:hunter2@10.0.0.5:6380/0\n", "carries a password"),
    ("config_file: /etc/redis/redis.conf\n", "names no target"),
])
def test_a_bad_file_is_refused_as_the_cli_refuses_it_and_nothing_is_set(by_hand_env, tmp_path, text: str,
                                                                         expected: str) -> None:
    ns = parameters_cell(INSPECT)
    before = dict(ns)
    path = params_file(tmp_path, text)
    with pytest.raises(ParameterError) as err:
        use_params(path, notebook=INSPECT, namespace=ns)
    assert expected in str(err.value)
    assert str(path) in str(err.value)  # names the file
    assert "hunter2" not in str(err.value)
    assert ns == before
    with pytest.raises(ParameterError) as cli:  # the same file, the same refusal by `runbook run inspect -f`
        plan(["inspect"], [path])
    assert expected in str(cli.value)


def test_a_relative_path_is_found_from_the_project_and_shown_so(by_hand_env, tmp_path) -> None:
    by_hand_env.chdir(tmp_path)  # the kernel's directory: not where params/ is
    ns = parameters_cell(INSPECT)
    done = by_hand("params/sandbox.yaml", notebook=INSPECT, namespace=ns)
    assert done.params_file == "params/sandbox.yaml"
    assert done.command == "runbook run inspect -f params/sandbox.yaml"
    with pytest.raises(ParameterError, match="does not exist here"):
        by_hand("params/nowhere.yaml", notebook=INSPECT, namespace=ns)


def test_a_fleet_file_goes_to_the_fleet_notebook_only(by_hand_env, tmp_path) -> None:
    path = params_file(tmp_path, "targets:\n  - redis://10.0.0.5:6379/0\n  - target: redis://10.0.0.6:6379/0\n"
                                 "    username: ops\n")
    ns = parameters_cell(FLEET_NOTEBOOK)
    done = by_hand(path, notebook=FLEET_NOTEBOOK, namespace=ns)
    assert ns["targets"] == [{"target": "redis://10.0.0.5:6379/0"},
                             {"target": "redis://10.0.0.6:6379/0", "username": "ops"}]
    assert done.command == f"runbook run inspect -f {path}"
    opened = parameters_cell(FLEET_NOTEBOOK)  # opened without a fleet: it checks two demo sandboxes
    assert by_hand(notebook=FLEET_NOTEBOOK, namespace=opened).command.startswith("runbook run inspect -f FLEET_FILE")
    with pytest.raises(ParameterError, match="open 07-fleet.ipynb"):
        by_hand(path, notebook=INSPECT, namespace=parameters_cell(INSPECT))


def test_without_a_file_the_banner_gives_the_command_for_the_values_in_use(by_hand_env) -> None:
    ns = parameters_cell(NOTEBOOKS["enable-aof"])
    assert by_hand(notebook=NOTEBOOKS["enable-aof"], namespace=ns).command == "runbook run enable-aof"
    ns.update(target="redis://:hunter2@10.0.0.5:6379/0", apply=True, aof_settings={"aof-use-rdb-preamble": "yes"})
    command = archive_command(NOTEBOOKS["enable-aof"], "enable-aof", ns)
    assert command == ("runbook run enable-aof -p target 'redis://:********@10.0.0.5:6379/0' -p apply true "
                       "-p aof_settings '{\"aof-use-rdb-preamble\": \"yes\"}'")
    assert ns["target"] == "redis://:hunter2@10.0.0.5:6379/0"  # nothing set without a file


def test_the_banner_is_shown_by_hand(by_hand_env, capsys) -> None:
    use_params(notebook=INSPECT, namespace=parameters_cell(INSPECT))
    out = capsys.readouterr().out
    assert "Not archived" in out and "runbook run inspect" in out


@pytest.mark.parametrize("var", [RUN_ID_ENV, CHANGE_ID_ENV])
def test_under_the_runner_nothing_is_loaded_and_no_banner_shown(by_hand_env, tmp_path, capsys, var: str) -> None:
    by_hand_env.setenv(var, "run-1")
    ns = parameters_cell(INSPECT)
    before = dict(ns)
    use_params(params_file(tmp_path, "target: redis://10.0.0.5:6380/0\n"), notebook=INSPECT, namespace=ns)
    assert ns == before
    assert capsys.readouterr().out == ""


@pytest.mark.notebook
def test_a_notebook_run_by_the_runner_shows_no_banner(tmp_path) -> None:
    """`runbook run` archives the run: its executed notebook has the use_params cell, and nothing from it."""
    from helpers import runbook_cli

    proc = runbook_cli("run", "inspect", "--archive", str(tmp_path / "archive"))
    assert proc.returncode in (0, 1), proc.stderr  # 1: the default sandbox's drift fails the inspection
    (executed,) = (tmp_path / "archive").rglob("*-inspect-*.ipynb")
    cells = json.loads(executed.read_text())["cells"]
    cell = next(c for c in cells if "runbook.use_params(" in "".join(c["source"]))
    assert cell["outputs"] == []
    assert "Not archived" not in executed.read_text()


def test_parameters_injected_by_papermill_win_over_a_file(by_hand_env, tmp_path) -> None:
    ns = {**parameters_cell(INSPECT), "target": "redis://10.0.0.9:6379/0",
          "_ih": ["", "target: str = ...", '# Parameters\ntarget = "redis://10.0.0.9:6379/0"\n']}
    done = by_hand(params_file(tmp_path, "target: redis://10.0.0.5:6380/0\n"), notebook=INSPECT, namespace=ns)
    assert ns["target"] == "redis://10.0.0.9:6379/0"
    assert "papermill injected" in done.banner_text()


def test_the_notebook_is_found_from_jupyterlabs_session_or_named(by_hand_env) -> None:
    ns = {**parameters_cell(INSPECT), "__session__": str(REPO / "notebooks" / INSPECT)}
    assert by_hand(namespace=ns).step == "inspect"
    with pytest.raises(ParameterError, match="pass notebook="):
        by_hand(namespace=parameters_cell(INSPECT))
    with pytest.raises(ParameterError, match="'01-inspect-Copy1.ipynb'"):
        by_hand(notebook="01-inspect-Copy1.ipynb", namespace={})


def test_the_notebooks_default_sandbox_is_the_clis(by_hand_env) -> None:
    """What Lab opens with (each notebook's parameters cell) is what `runbook run NAME` with no -f starts."""
    for step, notebook in NOTEBOOKS.items():
        declared = notebook_parameters(notebooks_dir() / notebook)
        (cli,) = plan([step])
        assert declared["target"].default == effective(cli, "target") == "sandbox"
        assert declared["sandbox_scenario"].default == effective(cli, "sandbox_scenario") == "runtime-aof", step
    assert ConnectionSpec().sandbox_scenario == "runtime-aof"


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def test_connecting_to_the_sandbox_again_stops_the_one_started_before(by_hand_env) -> None:
    from runbook.sandbox import handoff

    try:
        first = handoff.connect(ConnectionSpec(sandbox_scenario="rdb-only"))
        pid, root = first.owner.pid, first.owner.root
        assert _alive(pid) and first.client.ping()
        second = handoff.connect(ConnectionSpec(sandbox_scenario="rdb-only"))
        assert second.owner.pid != pid
        assert not _alive(pid) and not root.exists()  # the first is gone: server and temp dir
        assert second.client.dbsize() == 3000
    finally:
        handoff.stop_own()
    assert not _alive(second.owner.pid)


def test_the_fleet_demo_run_again_stops_its_two_sandboxes(by_hand_env) -> None:
    from runbook.orchestration import fleet
    from runbook.sandbox import handoff

    try:
        fleet.demo_targets()
        first = list(handoff._OWN["fleet-demo"])
        assert all(_alive(sb.pid) for sb in first) and len(first) == 2
        fleet.demo_targets()
        assert not any(_alive(sb.pid) for sb in first)
        assert all(_alive(sb.pid) for sb in handoff._OWN["fleet-demo"])
    finally:
        handoff.stop_own()


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_lab_passes_lab_args_and_allow_root_as_root() -> None:
    out = subprocess.run(["make", "-n", "-o", ".venv/.installed", "lab", "LAB_ARGS=--port 8899 --no-mathjax"],
                         cwd=REPO, capture_output=True, text=True, check=True).stdout
    line = next(ln for ln in out.splitlines() if "jupyter lab" in ln)
    assert line.endswith("--port 8899 --no-mathjax")
    assert ("--allow-root" in line) == (os.geteuid() == 0)
