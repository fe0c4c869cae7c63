"""The shape of the package: one connection spec, one summary type, exit codes on the exceptions, layers."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO

from runbook import errors
from runbook.errors import Blocked, ExitCode, ParameterError, PreconditionFailed, exit_code_for, exit_code_for_status
from runbook.model import Check, ConnectionSpec, Outcome, Status, StepSummary
from runbook.orchestration.fleet import PER_TARGET
from runbook.orchestration.params import notebook_parameters
from runbook.orchestration.plan import FLEET_NOTEBOOK, NOTEBOOKS

NOTEBOOK_DIR = REPO / "notebooks"


def _parameters_lines(path: Path) -> list[str]:
    nb = json.loads(path.read_text())
    cell = next(c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
    return [ln for ln in "".join(cell["source"]).splitlines() if ln.strip()]


@pytest.mark.parametrize("name", sorted(NOTEBOOKS.values()))
def test_every_notebook_declares_the_connection_spec_exactly(name: str) -> None:
    lines = _parameters_lines(NOTEBOOK_DIR / name)
    expected = ConnectionSpec.parameter_lines()
    start = lines.index(expected[0])
    assert lines[start:start + len(expected)] == expected  # in the spec's order, with its types, defaults, help


def test_the_fleet_notebook_declares_the_spec_minus_target_and_sandbox() -> None:
    lines = _parameters_lines(NOTEBOOK_DIR / FLEET_NOTEBOOK)
    expected = ConnectionSpec.parameter_lines(n for n in ConnectionSpec.names()
                                              if n not in ("target", "sandbox_scenario"))
    start = lines.index(expected[0])
    assert lines[start:start + len(expected)] == expected
    declared = notebook_parameters(NOTEBOOK_DIR / FLEET_NOTEBOOK)
    assert "target" not in declared and "sandbox_scenario" not in declared
    # What an entry may set, as the targets help tells it, is what the fleet accepts.
    listed = re.search(r"\{([^}]*)\}", declared["targets"].help).group(1)  # type: ignore[union-attr]
    assert sorted(k.strip() for k in listed.split(",")) == sorted(PER_TARGET)


def test_a_drifted_parameters_block_is_caught(tmp_path: Path) -> None:
    """The comparison above fails when a notebook's line disagrees with the spec (a help text edited by hand)."""
    nb = json.loads((NOTEBOOK_DIR / NOTEBOOKS["inspect"]).read_text())
    cell = next(c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
    cell["source"] = "".join(cell["source"]).replace("seconds to wait for each reply", "reply timeout")
    (tmp_path / "nb.ipynb").write_text(json.dumps(nb))
    expected = ConnectionSpec.parameter_lines()
    lines = _parameters_lines(tmp_path / "nb.ipynb")
    assert lines[lines.index(expected[0]):][:len(expected)] != expected


def test_the_parameters_page_table_is_the_spec() -> None:
    page = (REPO / "docs" / "parameters.md").read_text().splitlines()
    rows = ConnectionSpec.markdown_rows()
    start = page.index(rows[0])
    assert page[start:start + len(rows)] == rows


def test_connection_spec_from_notebook_parameters() -> None:
    spec = ConnectionSpec.from_parameters({"target": "redis://10.0.0.5:6379/0", "command_timeout_s": 3,
                                           "apply": True, "username": None})
    assert spec == ConnectionSpec("redis://10.0.0.5:6379/0", command_timeout_s=3.0)
    assert isinstance(spec.command_timeout_s, float)
    assert ConnectionSpec.from_parameters({}) == ConnectionSpec()


def test_fleet_entries_may_set_the_per_target_connection_and_their_config_file() -> None:
    assert PER_TARGET == ("target", "username", "password_env", "tls_ca_file", "tls_cert_file", "tls_key_file",
                          "config_command", "config_file")


# -- the summary ---------------------------------------------------------------------------------------


def test_summary_json_round_trip() -> None:
    s = StepSummary("persist-config", Status.PASS, Outcome.CHANGED, "redis", "7.0.15",
                    (Check("no_drift", Status.PASS, "every setting matches"),),
                    facts={"backup": "/etc/redis/redis.conf.bak", "edited_file": "/etc/redis/redis.conf",
                           "config_file": "/etc/redis/redis.conf", "config_sha256_after": "ab" * 32,
                           "changes": [{"setting": "appendonly", "from": "no", "to": "yes"}]})
    data = json.loads(json.dumps(s.to_json()))
    assert data["schema"] == 1 and data["verdict"] == "pass" and data["result"] == "changed"
    assert data["checks"] == {"no_drift": {"status": "pass", "observed": "every setting matches", "fix": ""}}
    back = StepSummary.from_json(data)
    assert back == s
    assert back.file_change is not None and back.file_change.backup == "/etc/redis/redis.conf.bak"
    assert back.setting_changes[0].after == "yes" and back.changed_something


def test_summary_reads_records_written_before_the_schema() -> None:
    old = {"verdict": "warn", "result": "done", "server": "valkey", "version": "9.1.2", "location": "/b/x",
           "checks": {"bgsave": {"status": "warn", "observed": "slow", "fix": "look"}}}
    s = StepSummary.from_json(old, "backup")
    assert (s.schema, s.step, s.verdict, s.result, s.facts) == (0, "backup", Status.WARN, Outcome.DONE,
                                                                 {"location": "/b/x"})
    assert s.not_passing[0].fix == "look"


def test_summary_facts_cannot_shadow_its_own_fields() -> None:
    with pytest.raises(ValueError, match="verdict"):
        StepSummary("inspect", Status.PASS, facts={"verdict": "fail"})


def test_status_words_read_as_their_value() -> None:
    assert f"{Status.BLOCKED:<8}|" == "blocked |" and str(Outcome.PLANNED) == "planned"
    assert json.dumps([Status.FAIL, Outcome.DONE]) == '["fail", "done"]'
    assert not Outcome.UNCHANGED.changed_something and Outcome.DONE.changed_something


# -- exit codes ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("ename, code", [
    ("ParameterError", ExitCode.USAGE), ("Blocked", ExitCode.BLOCKED), ("PreconditionFailed", ExitCode.FAILED),
    ("TargetUnreachable", ExitCode.FAILED), ("KeyError", ExitCode.FAILED), ("exit_code_for", ExitCode.FAILED),
])
def test_exit_code_of_a_notebook_error_is_its_class_attribute(ename: str, code: ExitCode) -> None:
    assert exit_code_for(ename) == code


def test_exit_codes_live_on_the_classes() -> None:
    assert (ParameterError.exit_code, Blocked.exit_code, PreconditionFailed.exit_code) == (2, 3, 1)
    ours = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, errors.RunbookError)]
    assert all(isinstance(c.exit_code, ExitCode) for c in ours)


@pytest.mark.parametrize("status, fail_on_warn, code", [
    (Status.PASS, False, 0), (Status.WARN, False, 0), (Status.WARN, True, 1), (Status.FAIL, False, 1),
    (Status.ERROR, False, 1), (Status.BLOCKED, False, 3), (Status.SKIPPED, True, 0),
])
def test_exit_code_of_a_status(status: Status, fail_on_warn: bool, code: int) -> None:
    assert exit_code_for_status(status, fail_on_warn=fail_on_warn) == code


def test_cli_exits_with_the_exceptions_code(tmp_path: Path) -> None:
    from runbook.cli import main

    assert main(["run", "inspect", "-p", "no_such_parameter", "1", "--archive", str(tmp_path)]) == 2


# -- layers --------------------------------------------------------------------------------------------

LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


@pytest.mark.skipif(not LINT_IMPORTS.exists(), reason="import-linter is not installed (the test extra has it)")
def test_the_layers_contract_catches_an_upward_import(tmp_path: Path) -> None:
    """`make test` runs lint-imports on the tree; here a copy with one upward import must break it."""
    shutil.copytree(REPO / "runbook", tmp_path / "runbook", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    clean = subprocess.run([str(LINT_IMPORTS)], cwd=tmp_path, capture_output=True, text=True,
                           env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert clean.returncode == 0, clean.stdout
    target = tmp_path / "runbook" / "server" / "target.py"
    target.write_text(target.read_text() + "\nfrom runbook.steps import backup  # an upward import\n")
    broken = subprocess.run([str(LINT_IMPORTS)], cwd=tmp_path, capture_output=True, text=True,
                            env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert broken.returncode != 0 and "runbook.server.target -> runbook.steps.backup" in broken.stdout


_CITED = re.compile(r"[\w./-]+\.(?:py|md|ya?ml|ipynb|toml)\b")


def test_no_docstring_or_comment_cites_a_file_that_is_not_in_the_repository() -> None:
    """Docstrings and comments of the package, the Makefile, pyproject.toml and CI name only files that are here."""
    names = {p.name for p in REPO.rglob("*") if ".git" not in p.parts and ".venv" not in p.parts}
    missing = []
    sources = [*sorted((REPO / "runbook").rglob("*.py")), REPO / "Makefile", REPO / "pyproject.toml",
               REPO / ".ci" / "run"]
    for path in sources:
        for lineno, line in enumerate(path.read_text().splitlines(), start=1):
            for cited in _CITED.findall(line):
                if cited.startswith(("runbook.", "redis.", "http")) or "/etc/" in cited or cited == "redis.conf":
                    continue
                if Path(cited).name not in names:
                    missing.append(f"{path.relative_to(REPO)}:{lineno}: {cited}")
    assert not missing
