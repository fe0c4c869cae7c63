"""The CLI explains itself (issue 17, item 2), driven through the installed `runbook` console script.

`run NAME --help-notebook`, `list`, `--version`, `completion bash|zsh`, `archive list` (aligned, --json,
--change/--target/--since), and a reader that hangs up (`| head -1`) ending the command quietly (exit 141).
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from helpers import REPO

import runbook
from runbook.errors import ParameterError
from runbook.evidence.archive import append_record, read_index
from runbook.evidence.filters import parse_since
from runbook.orchestration.plan import NOTEBOOKS, SEQUENCES, sequence_size

#: The console script pip installed beside this interpreter (.venv/bin/runbook), as an operator runs it.
RUNBOOK = Path(sys.executable).with_name("runbook")
_SCRUB = ("REDIS_PASSWORD", "RUNBOOK_ARCHIVE", "RUNBOOK_SANDBOX_URL", "RUNBOOK_SANDBOX_DIR", "RUNBOOK_SIGNING_KEY",
          "RUNBOOK_ALLOWED_SIGNERS", "RUNBOOK_NOTEBOOKS")
ENV = {k: v for k, v in os.environ.items() if k not in _SCRUB}


def cli(*args: str, timeout: int = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(RUNBOOK), *args], capture_output=True, text=True, env=ENV, cwd=REPO, timeout=timeout)


def closed_pipe(*args: str, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    """`runbook ARGS` writing into a pipe whose reader has already gone (as `| head -1` leaves it, for certain)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run([str(RUNBOOK), *args], stdout=write_end, stderr=subprocess.PIPE, text=True, env=ENV,
                              cwd=REPO, timeout=timeout)
    finally:
        os.close(write_end)


def piped_to_head(command: str, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    """`COMMAND | head -1` in bash, with `runbook`'s own exit status (PIPESTATUS) on the last line of stderr."""
    script = f'{command} | head -1; echo "status=${{PIPESTATUS[0]}}" >&2'
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=ENV, cwd=REPO, timeout=timeout)


def test_the_console_script_is_installed() -> None:
    assert RUNBOOK.is_file() and os.access(RUNBOOK, os.X_OK), f"{RUNBOOK}: run `make setup` (pip install -e .)"


def test_version_is_the_packages() -> None:
    done = cli("--version")
    assert done.returncode == 0 and done.stdout == f"runbook {runbook.__version__}\n", done


# --- run NAME --help-notebook ------------------------------------------------------------------------------------

def declared_lines(notebook: str) -> dict[str, tuple[str, str, str]]:
    """name -> (type, default as written, help) from the notebook's parameters cell, read here on its own."""
    cells = json.loads((REPO / "notebooks" / notebook).read_text())["cells"]
    cell = next(c for c in cells if "parameters" in c["metadata"].get("tags", []))
    out = {}
    for line in "".join(cell["source"]).splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        assert "  # " in line, f"{notebook}: a parameter without help (`name: type = default  # help`): {line!r}"
        decl, help_text = line.split("  # ", 1)
        name_type, default = decl.split("=", 1)
        name, kind = name_type.split(":", 1)
        assert help_text.strip(), f"{notebook}: empty help for {name.strip()}"
        out[name.strip()] = (kind.strip(), default.strip(), help_text.strip())
    return out


def table(stdout: str, first: str) -> list[dict[str, str]]:
    """The rows of the aligned table whose header row starts with `first`, cut at the header's column starts."""
    lines = stdout.splitlines()
    at = next(i for i, ln in enumerate(lines) if ln.startswith(first + " "))
    header = lines[at]
    names = re.split(r"\s{2,}", header.strip())
    starts = [header.index(n) for n in names]
    rows = []
    for line in lines[at + 1:]:
        if not line.strip():
            break
        cells = [line[s:e].strip() for s, e in zip(starts, [*starts[1:], None])]
        rows.append(dict(zip(names, cells)))
    return rows


def same_literal(shown: str, written: str) -> bool:
    return repr(ast.literal_eval(shown)) == repr(ast.literal_eval(written))


@pytest.mark.parametrize("name", list(NOTEBOOKS))
def test_help_notebook_lists_every_parameter_with_type_default_and_help(name: str) -> None:
    done = cli("run", name, "--help-notebook")
    assert done.returncode == 0 and not done.stderr, done
    assert done.stdout.startswith(f"{name}: ") and NOTEBOOKS[name] in done.stdout.splitlines()[0]
    shown = {row["name"]: row for row in table(done.stdout, "name")}
    declared = declared_lines(NOTEBOOKS[name])
    assert list(shown) == list(declared), "the rows are not the notebook's parameter lines, in its order"
    for param, (kind, default, help_text) in declared.items():
        row = shown[param]
        assert row["type"] == kind and row["help"] == help_text, (param, row)
        assert same_literal(row["default"], default), f"{param}: shows default {row['default']}, notebook {default}"


def test_help_notebook_of_a_sequence_is_the_union_with_the_notebooks_of_each_line() -> None:
    done = cli("run", "all", "--help-notebook")
    assert done.returncode == 0 and not done.stderr, done
    steps = list(dict.fromkeys(SEQUENCES["all"]))
    rows = table(done.stdout, "name")
    for step in steps:
        assert NOTEBOOKS[step] in done.stdout
        for param, (kind, default, help_text) in declared_lines(NOTEBOOKS[step]).items():
            match = [r for r in rows if r["name"] == param and r["help"] == help_text and r["type"] == kind
                     and same_literal(r["default"], default)]
            assert len(match) == 1, f"{step}: {param} = {default} ({help_text}) is not one row: {match}"
            assert match[0]["steps"] == "every" or step in match[0]["steps"].split(","), (step, match[0])
    # Declared the same by every notebook: one row; declared differently (each `apply` has its own help): one each.
    assert [r["steps"] for r in rows if r["name"] == "target"] == ["every"]
    applies = {declared_lines(NOTEBOOKS[s])["apply"] for s in steps if "apply" in declared_lines(NOTEBOOKS[s])}
    assert len(applies) >= 3 and len([r for r in rows if r["name"] == "apply"]) == len(applies)
    # A fleet runs inspect and test-persistence through its own notebook: what only it takes follows.
    fleet = table(done.stdout.split("which also takes:\n", 1)[1], "name")
    assert {r["name"] for r in fleet} >= {"targets", "parallel"} and "check" not in {r["name"] for r in fleet}


def test_list_and_help_notebook_count_the_steps_of_all_the_same_way() -> None:
    """`all` is 6 steps of 5 notebooks (inspect runs twice): both commands say so, in the same words."""
    words = "6 steps (5 notebooks; inspect before and after)"
    assert sequence_size(SEQUENCES["all"]) == words and sequence_size(["inspect", "backup"]) == "2 notebooks"
    listed = next(r for r in table(cli("list").stdout, "name") if r["name"] == "all")
    assert listed["runs"] == words
    assert cli("run", "all", "--help-notebook").stdout.splitlines()[0].startswith(f"all runs {words}; ")


def test_help_notebook_json_has_one_entry_per_line() -> None:
    done = cli("run", "backup", "--help-notebook", "--json")
    assert done.returncode == 0, done
    entries = json.loads(done.stdout)
    assert [e["name"] for e in entries] == list(declared_lines(NOTEBOOKS["backup"]))
    retention = next(e for e in entries if e["name"] == "retention")
    assert retention["default"] == 7 and retention["type"] == "int" and retention["steps"] == ["backup"]


def test_help_notebook_runs_nothing_touches_no_server_and_no_archive(tmp_path: Path) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.setblocking(False)
    archive = tmp_path / "archive"
    try:
        done = cli("run", "all", "--help-notebook", "--archive", str(archive), "-p", "apply", "true",
                   "-p", "target", f"redis://127.0.0.1:{listener.getsockname()[1]}/0")
        assert done.returncode == 0 and "nothing was run" in done.stdout, done
        with pytest.raises(BlockingIOError):  # nobody connected to the target
            listener.accept()
    finally:
        listener.close()
    assert not archive.exists()


def test_help_notebook_of_an_unknown_name_is_a_usage_error() -> None:
    done = cli("run", "inspekt", "--help-notebook")
    assert done.returncode == 2 and "unknown notebook 'inspekt'" in done.stderr and "Traceback" not in done.stderr


# --- runbook list ------------------------------------------------------------------------------------------------

def test_list_shows_every_notebook_and_sequence_once_with_a_description() -> None:
    done = cli("list")
    assert done.returncode == 0 and not done.stderr, done
    rows = table(done.stdout, "name")
    assert [r["name"] for r in rows] == [*NOTEBOOKS, *SEQUENCES]
    for row in rows[:len(NOTEBOOKS)]:  # a notebook's line: its file and the `# ` title of its first cell
        cells = json.loads((REPO / "notebooks" / NOTEBOOKS[row["name"]]).read_text())["cells"]
        heading = next(ln for ln in "".join(cells[0]["source"]).splitlines() if ln.startswith("# "))
        assert row["runs"] == NOTEBOOKS[row["name"]] and row["what it does"] == heading[2:].strip(), row
    for row, (name, steps) in zip(rows[len(NOTEBOOKS):], SEQUENCES.items()):  # a sequence's: a sentence, its steps
        assert row["name"] == name and row["runs"] == sequence_size(steps), row
        assert row["what it does"].endswith(f"({', '.join(steps)})") and len(row["what it does"]) > 40, row


# --- completion --------------------------------------------------------------------------------------------------

def complete_in_bash(script: Path, *words: str) -> list[str]:
    """What bash offers for `runbook WORDS<TAB>` with the generated script loaded."""
    program = f"""
source {script}
fn=$(complete -p runbook | sed -E 's/.* -F ([^ ]+) .*/\\1/')
COMP_WORDS=(runbook {' '.join(f"'{w}'" for w in words)})
COMP_CWORD=$(( ${{#COMP_WORDS[@]}} - 1 ))
COMP_LINE="${{COMP_WORDS[*]}}"; COMP_POINT=${{#COMP_LINE}}
"$fn" runbook "${{COMP_WORDS[-1]}}" "${{COMP_WORDS[-2]}}"
printf '%s\\n' "${{COMPREPLY[@]}}"
"""
    done = subprocess.run(["bash", "-c", program], capture_output=True, text=True, cwd=REPO, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_bash_completion_offers_commands_notebook_names_and_options(tmp_path: Path) -> None:
    done = cli("completion", "bash")
    assert done.returncode == 0 and not done.stderr, done
    script = tmp_path / "runbook.bash"
    script.write_text(done.stdout)
    assert {"run", "list", "archive", "completion", "rehearse"} <= set(complete_in_bash(script, ""))
    assert complete_in_bash(script, "run", "") == [*NOTEBOOKS, *SEQUENCES]
    assert complete_in_bash(script, "run", "en") == ["enable-aof"]
    assert complete_in_bash(script, "run", "inspect", "te") == ["test-persistence"]  # NAME is repeatable
    assert complete_in_bash(script, "run", "inspect", "--help-n") == ["--help-notebook"]
    assert complete_in_bash(script, "run", "inspect", "-f", "params/sand") == ["params/sandbox.yaml"]
    assert complete_in_bash(script, "archive", "") == ["list", "verify", "prune", "show"]


def test_zsh_completion_is_a_compdef_with_the_notebook_names(tmp_path: Path) -> None:
    done = cli("completion", "zsh")
    assert done.returncode == 0 and done.stdout.startswith("#compdef runbook"), done
    assert f"({' '.join([*NOTEBOOKS, *SEQUENCES])})" in done.stdout
    if shutil.which("zsh"):
        script = tmp_path / "_runbook"
        script.write_text(done.stdout)
        checked = subprocess.run(["zsh", "-n", str(script)], capture_output=True, text=True, timeout=30)
        assert checked.returncode == 0, checked.stderr


# --- archive list ------------------------------------------------------------------------------------------------

NOW = datetime.now(timezone.utc)
RUNS = [  # change, target, notebook, started
    ("aaaa11112222", "redis://prod-1:6379/0", "inspect", NOW - timedelta(days=3)),
    ("aaaa11112222", "redis://prod-1:6379/0", "persist-config", NOW - timedelta(days=3) + timedelta(seconds=40)),
    ("bbbb33334444", "redis://prod-10.example.internal:6379/0", "enable-aof", NOW - timedelta(hours=1)),
    ("cccc55556666", "sandbox", "test-persistence", NOW - timedelta(minutes=10)),
]


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    root = tmp_path / "archive"
    for i, (change, target, notebook, started) in enumerate(RUNS):
        append_record(root, {"run_id": f"run{i}", "change_id": change, "notebook": notebook, "target": target,
                             "status": "pass", "started": started.isoformat(),
                             "files": {f"{started:%Y/%m/%d}/{notebook}-{i}.html": "0" * 64}})
    return root


def listed(archive: Path, *args: str) -> list[str]:
    done = cli("archive", "list", "--archive", str(archive), *args)
    assert done.returncode == 0 and not done.stderr, done
    return [ln.split()[2] for ln in done.stdout.splitlines()[1:]]  # the notebook column


def test_archive_list_has_a_header_and_aligned_columns(archive: Path) -> None:
    done = cli("archive", "list", "--archive", str(archive))
    assert done.returncode == 0, done
    header, *lines = done.stdout.splitlines()
    assert header.split()[:2] == ["started", "(UTC)"] and len(lines) == len(RUNS)
    for column, values in (("change", [r[0] for r in RUNS]), ("target", [r[1] for r in RUNS]),
                           ("status", ["pass"] * len(RUNS))):
        at = header.index(column)
        assert [ln[at:].split()[0] for ln in lines] == values, column
        assert all(ln[at - 2:at] == "  " for ln in lines), f"{column}: not two spaces after the previous column"
    assert lines[2].split()[0] == RUNS[2][3].isoformat()[:19]


def test_archive_list_json_is_the_listing(archive: Path) -> None:
    done = cli("archive", "list", "--archive", str(archive), "--json")
    assert done.returncode == 0, done
    rows = json.loads(done.stdout)
    assert [r["run_id"] for r in rows] == [r["run_id"] for r in read_index(archive)]
    assert rows[2]["change_id"] == "bbbb33334444" and rows[2]["target"] == RUNS[2][1]
    assert json.loads(cli("archive", "list", "--archive", str(archive), "--json", "--change", "cccc").stdout)[0][
        "notebook"] == "test-persistence"


def test_archive_list_filters(archive: Path) -> None:
    assert listed(archive, "--change", "aaaa11112222") == ["inspect", "persist-config"]
    assert listed(archive, "--change", "bbbb") == ["enable-aof"]  # the first characters of an id
    assert listed(archive, "--target", "prod-1") == ["inspect", "persist-config", "enable-aof"]  # a substring
    assert listed(archive, "--target", "prod-10") == ["enable-aof"]
    assert listed(archive, "--since", "2h") == ["enable-aof", "test-persistence"]
    assert listed(archive, "--since", "30m") == ["test-persistence"]
    assert listed(archive, "--since", "1w") == [r[2] for r in RUNS]
    naive = (NOW - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M")  # UTC when it carries no offset
    assert listed(archive, "--since", naive) == ["enable-aof", "test-persistence"]
    east = (NOW - timedelta(minutes=30)).astimezone(timezone(timedelta(hours=2))).isoformat(timespec="seconds")
    assert listed(archive, "--since", east) == ["test-persistence"]
    assert listed(archive, "--since", "2h", "--target", "prod") == ["enable-aof"]  # every filter given applies
    done = cli("archive", "list", "--archive", str(archive), "--change", "ffff")
    assert done.returncode == 0 and done.stdout.strip() == f"{archive}: no runs match --change ffff", done


def test_archive_list_refuses_a_since_it_cannot_read(archive: Path) -> None:
    done = cli("archive", "list", "--archive", str(archive), "--since", "yesterday")
    assert done.returncode == 2 and "Traceback" not in done.stderr, done
    assert "--since 'yesterday'" in done.stderr and "2h" in done.stderr and len(done.stderr.splitlines()) == 1


@pytest.mark.parametrize(("text", "expected"), [
    ("90m", datetime(2026, 12, 1, 10, 30, tzinfo=timezone.utc)),
    ("2h", datetime(2026, 12, 1, 10, 0, tzinfo=timezone.utc)),
    ("3d", datetime(2026, 11, 28, 12, 0, tzinfo=timezone.utc)),
    ("1w", datetime(2026, 11, 24, 12, 0, tzinfo=timezone.utc)),
    ("2026-11-30", datetime(2026, 11, 30, tzinfo=timezone.utc)),
    ("2026-11-30T08:15", datetime(2026, 11, 30, 8, 15, tzinfo=timezone.utc)),
    ("2026-11-30T08:15Z", datetime(2026, 11, 30, 8, 15, tzinfo=timezone.utc)),
    ("2026-11-30T10:15+02:00", datetime(2026, 11, 30, 8, 15, tzinfo=timezone.utc)),
])
def test_parse_since(text: str, expected: datetime) -> None:
    assert parse_since(text, now=datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)) == expected


@pytest.mark.parametrize("text", ["", "2x", "-3d", "soon", "2026-13-01"])
def test_parse_since_refuses(text: str) -> None:
    with pytest.raises(ParameterError, match="--since"):
        parse_since(text)


# --- a reader that hangs up ----------------------------------------------------------------------------------------

@pytest.fixture
def big_archive(tmp_path: Path) -> Path:
    """An archive whose listing (about 200 KB) is far more than a pipe holds, so `| head -1` hangs up mid-way."""
    root = tmp_path / "big"
    for i in range(1200):
        append_record(root, {"run_id": f"r{i}", "change_id": f"{i:012x}", "notebook": "inspect",
                             "target": f"redis://a-long-host-name-{i:04d}.example.internal:6379/0", "status": "pass",
                             "started": (NOW - timedelta(seconds=i)).isoformat(),
                             "files": {f"2026/12/01/{i:06d}-inspect-a-long-host-name-{i:04d}.html": "0" * 64}})
    return root


def test_archive_list_into_head_exits_quietly(big_archive: Path) -> None:
    done = piped_to_head(f"{RUNBOOK} archive list --archive {big_archive}")
    assert done.stdout.startswith("started (UTC)") and len(done.stdout.splitlines()) == 1, done.stdout[:300]
    assert done.stderr.splitlines() == ["status=141"], done.stderr[-2000:]


@pytest.mark.parametrize("args", [("list",), ("run", "all", "--help-notebook"), ("--help",)])
def test_short_output_into_head_exits_quietly(args: tuple[str, ...]) -> None:
    done = piped_to_head(" ".join([str(RUNBOOK), *args]))
    assert len(done.stdout.splitlines()) == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.splitlines()[-1] in ("status=0", "status=141"), done.stderr


@pytest.mark.parametrize("args", [("list",), ("run", "inspect", "--help-notebook"), ("completion", "bash")])
def test_a_reader_gone_before_any_output_is_exit_141_without_a_traceback(args: tuple[str, ...]) -> None:
    done = closed_pipe(*args)
    assert done.returncode == 141 and done.stderr == "", done.stderr


@pytest.mark.parametrize("args", [("--version",), ("--help",), ("run", "--help")])
def test_argparse_own_text_to_a_reader_gone_has_no_traceback(args: tuple[str, ...]) -> None:
    """argparse prints these and exits itself (it drops a failed write: exit 0), or the flush after it fails (141)."""
    done = closed_pipe(*args)
    assert done.returncode in (0, 141) and done.stderr == "", done.stderr


def test_archive_list_to_a_reader_gone_is_exit_141(archive: Path) -> None:
    done = closed_pipe("archive", "list", "--archive", str(archive))
    assert done.returncode == 141 and done.stderr == "", done.stderr


@pytest.mark.notebook
def test_run_inspect_into_head_exits_quietly_and_still_archives(tmp_path: Path) -> None:
    """The run is done and recorded before its table is printed: a reader that hangs up loses only the table."""
    archive = tmp_path / "archive"
    done = piped_to_head(f"{RUNBOOK} run inspect --archive {archive}")
    assert done.stdout.startswith("change ") and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.splitlines()[-1] in ("status=0", "status=1", "status=141"), done.stderr
    gone = closed_pipe("run", "inspect", "--archive", str(archive))
    assert gone.returncode == 141 and "Traceback" not in gone.stderr and "BrokenPipe" not in gone.stderr, gone.stderr
    assert [r["notebook"] for r in read_index(archive) if r.get("status") not in ("started", "intent")] == [
        "inspect", "inspect"]
