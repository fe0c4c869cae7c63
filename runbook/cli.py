"""The `runbook` command: run notebooks into the evidence archive, list and verify it."""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import select
import sys
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import shtab

from runbook import __version__
from runbook.errors import ExitCode, ParameterError, RunbookError
from runbook.evidence import change_report
from runbook.evidence.archive import archive_root, check, read_index
from runbook.evidence.filters import RowFilter, parse_since
from runbook.evidence.journal import findings, listing
from runbook.evidence.metrics import (
    archive_changes,
    inspections,
    metrics_job,
    read_previous,
    render,
    render_verify,
    require_writable,
    write_atomically,
)
from runbook.evidence.prune import prune
from runbook.model import Outcome, Status, StepSummary
from runbook.orchestration.gateway import read_litellm_config, write_params
from runbook.orchestration.params import load_files
from runbook.orchestration.plan import (
    NOTEBOOKS,
    SEQUENCE_HELP,
    SEQUENCES,
    default_params_file,
    expand,
    notebooks_dir,
    parameter_help,
    sequence_size,
    title,
)
from runbook.orchestration.rehearse import rehearse
from runbook.orchestration.runner import RunResult, StepResult, run
from runbook.orchestration.watch import TerminalWatch

ARCHIVE_HELP = ("evidence archive: a directory or an fsspec URL such as s3://bucket/prefix, credentials from "
                "the environment (default $RUNBOOK_ARCHIVE or ./archive)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="runbook", description="Redis persistence runbook: notebooks with evidence.")
    p.add_argument("--version", action="version", version=f"runbook {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run notebooks through papermill into the evidence archive")
    r.add_argument("names", nargs="+", metavar="NAME", help=f"one of: {', '.join([*NOTEBOOKS, *SEQUENCES])}")
    r.add_argument("--help-notebook", action="store_true",
                   help="list the parameters of the notebooks NAME runs (type, default, help) and exit; runs nothing")
    r.add_argument("-f", "--file", dest="files", action="append", default=[], metavar="FILE",
                   help="YAML parameter file (repeatable; later files win)")
    r.add_argument("-p", "--parameter", dest="pairs", action="append", nargs=2, default=[],
                   metavar=("KEY", "VALUE"), help="one parameter (repeatable; wins over files)")
    r.add_argument("--archive", help=ARCHIVE_HELP)
    r.add_argument("--json", action="store_true", help="print the result as JSON")
    r.add_argument("--fail-on", choices=("fail", "warn"), default="fail",
                   help="exit 1 on failed checks only (default) or on warnings too")
    r.add_argument("--metrics-file", metavar="PATH",
                   help="write a Prometheus text file (node_exporter textfile collector) from the last inspection")
    r.add_argument("--metrics-job", metavar="NAME",
                   help="the runbook_job label of the --metrics-file series (default: the first -f file's name "
                        "without .yaml, or sandbox)")
    r.add_argument("--keep-going", action="store_true",
                   help="fleets: a target that fails stops only its own later steps, not the other targets'")
    r.add_argument("--max-fail", metavar="K|P%",
                   help="fleets: once K targets (or P%% of the fleet) failed, start no new target (the rest are "
                        "recorded skipped); default 1 (the first failure stops the run), unbounded with "
                        "--keep-going; --max-fail wins over --keep-going (Ansible's max_fail_percentage)")
    r.add_argument("--limit", metavar="PATTERN", default="",
                   help="fleets: run only the targets whose URL matches (comma-separated fnmatch patterns, "
                        "!PATTERN excludes), as Ansible's --limit; none matching is a parameter error")
    r.add_argument("--detailed-exitcode", action="store_true",
                   help=f"exit {int(ExitCode.CHANGES_PENDING)} instead of 0 when the run completed and a plan found "
                        "settings or a config file to change (as terraform plan -detailed-exitcode)")
    r.add_argument("--diff", action="store_true",
                   help="print the config-file diff (planned, or written with apply) after the table")
    r.add_argument("--pdf", action="store_true",
                   help="also print the change report to PDF (reports/<change id>.pdf) with Chromium, where installed")

    a = sub.add_parser("archive", help="list, verify, prune the evidence archive, or show one change")
    a.add_argument("action", choices=("list", "verify", "prune", "show"))
    a.add_argument("change_id", nargs="?", default="", metavar="CHANGE_ID",
                   help="show: the change (its id or first characters; before the options, or as --change ID) "
                        "whose summary and report to show")
    a.add_argument("--archive", help=ARCHIVE_HELP)
    a.add_argument("--keep-days", type=int, metavar="N",
                   help="prune: remove routine inspections (changes that only ran inspect) older than N days; "
                        "every other change's records stay")
    a.add_argument("--json", action="store_true", help="list: print the runs as a JSON array of their records")
    a.add_argument("--change", default="", metavar="ID", help="list: only this change (its id or first characters)")
    a.add_argument("--target", default="", metavar="T",
                   help="list: only targets that contain T (prod-1 matches redis://prod-1:6379/0)")
    a.add_argument("--metrics-file", metavar="PATH",
                   help="verify: also write the verdict as a Prometheus text file (node_exporter textfile collector)")
    a.add_argument("--metrics-job", metavar="NAME", default="sandbox",
                   help="verify: the runbook_job label of the --metrics-file series (default: sandbox; give the "
                        "one your runs use, the params file's name)")
    a.add_argument("--since", metavar="WHEN",
                   help="list: only runs started since WHEN: an age (30m, 2h, 3d, 1w) or an ISO date or time "
                        "(2026-12-01, 2026-12-01T14:00; UTC unless it carries an offset such as +02:00)")

    h = sub.add_parser("rehearse", help="run the whole change (all, apply) on a sandbox built from a target's "
                       "own config file, and say whether the target would pass")
    h.add_argument("-f", "--file", dest="files", action="append", required=True, metavar="FILE",
                   help="the target's YAML parameter file (repeatable; later files win)")
    h.add_argument("-p", "--parameter", dest="pairs", action="append", nargs=2, default=[],
                   metavar=("KEY", "VALUE"), help="one parameter (repeatable; wins over files)")
    h.add_argument("--with-data", action="store_true",
                   help="load a copy of the target's RDB (and AOF, when its file says appendonly yes)")
    h.add_argument("--archive", help=ARCHIVE_HELP)
    h.add_argument("--json", action="store_true", help="print the result as JSON")
    h.add_argument("--keep", action="store_true", help="keep the sandbox's dir (server stopped) to look at after")

    sub.add_parser("list", help="the notebooks and sequences `runbook run` takes, one line each")
    q = sub.add_parser("params", help="write a params file from another tool's config (reads files only)")
    lite = q.add_subparsers(dest="source", required=True).add_parser(
        "from-litellm", help="the Redis servers a LiteLLM proxy config uses (router, cache; passwords only by the "
        "name of their variable), as a params file: printed, or written with --out")
    lite.add_argument("litellm_config", metavar="PATH", help="the LiteLLM proxy config file (its --config YAML)")
    lite.add_argument("--out", metavar="FILE", help="write the params file there (atomically) instead of printing it")
    lite.add_argument("--force", action="store_true", help="with --out: replace a file that exists")
    c = sub.add_parser("completion", help="print a shell completion script (bash: eval \"$(runbook completion bash)\" "
                       "in ~/.bashrc; zsh: runbook completion zsh > a directory of $fpath, as _runbook)")
    c.add_argument("shell", choices=("bash", "zsh"))
    _add_completions(p)
    return p


#: What the shell completes an argument to (shtab's `.complete`), by the argument's dest: notebook and sequence
#: names from a list written into the script (no runtime hook: nothing runs Python on a TAB), files and directories.
_NAME_WORDS = " ".join([*NOTEBOOKS, *SEQUENCES])
_COMPLETE: dict[str, Any] = {
    "names": {"bash": "_runbook_names", "zsh": f"({_NAME_WORDS})"},
    "files": shtab.FILE, "metrics_file": shtab.FILE, "archive": shtab.DIRECTORY,
    "litellm_config": shtab.FILE, "out": shtab.FILE,
}
_COMPLETION_PREAMBLE = {"bash": f'_runbook_names() {{\n  compgen -W "{_NAME_WORDS}" -- "$1"\n}}\n'}


def _add_completions(parser: argparse.ArgumentParser) -> None:
    """Mark the arguments of `parser` and its subcommands with what they complete to (see `_COMPLETE`)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for subparser in action.choices.values():
                _add_completions(subparser)
        elif action.dest in _COMPLETE:
            action.complete = _COMPLETE[action.dest]  # type: ignore[attr-defined]


def _completion(shell: str) -> int:
    """`runbook completion bash|zsh`: the static completion script shtab writes from the parser."""
    print(shtab.complete(build_parser(), shell, preamble=_COMPLETION_PREAMBLE))
    return ExitCode.OK


def _table(rows: Sequence[Sequence[str]]) -> list[str]:
    """Aligned columns (the first row is the header, if any): each as wide as its widest cell, two spaces apart,
    the last one unpadded."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)] if rows else []
    return ["  ".join([*(f"{cell:<{w}}" for cell, w in zip(r, widths)), r[-1]]).rstrip() for r in rows]


def _from_litellm(config: str, out: str | None, force: bool) -> int:
    """`runbook params from-litellm PATH`: the params file on stdout (or in --out); on stderr, what could not be
    taken over as it stands (a password written in the file, a variable not set here)."""
    if out is not None and Path(out).resolve() == Path(config).resolve():
        raise ParameterError(f"--out {out} is the LiteLLM config being read: write the params file elsewhere "
                             "(a new file under params/); this command only reads the gateway's config")
    found = read_litellm_config(config)
    for line in [*(f"warning: {p}" for p in found.problems), *(f"note: {n}" for n in found.notes)]:
        print(f"runbook: {line}", file=sys.stderr)
    if out is None:
        print(found.render(), end="")
    else:
        write_params(Path(out), found.render(), force=force)
        print(f"runbook: wrote {out}: {len(found.targets)} target(s) from {config}", file=sys.stderr)
    return ExitCode.OK


def _list_names() -> int:
    """`runbook list`: every notebook and sequence `runbook run` takes, one line each."""
    rows = [(name, file, title(notebooks_dir() / file)) for name, file in NOTEBOOKS.items()]
    rows += [(name, sequence_size(steps), f"{SEQUENCE_HELP.get(name, '')} ({', '.join(steps)})".lstrip())
             for name, steps in SEQUENCES.items()]
    for line in _table([("name", "runs", "what it does"), *rows]):
        print(line)
    return ExitCode.OK


def _literal(value: Any) -> str:
    """A default as a parameters cell writes it: strings in double quotes, the rest as Python literals."""
    return json.dumps(value, ensure_ascii=False) if isinstance(value, str) else repr(value)


def _help_notebook(names: Sequence[str], as_json: bool) -> int:
    """`runbook run NAMES --help-notebook`: the parameters of the notebooks NAMES run, read from their parameters
    cells; runs nothing, touches no server and no archive."""
    steps, rows = parameter_help(names)
    if as_json:
        print(json.dumps([{"name": r.param.name, "type": r.param.type, "default": r.param.default,
                           "help": r.param.help, "steps": list(r.steps)} for r in rows], indent=2))
        return ExitCode.OK
    label = ", ".join(names)
    if len(steps) == 1:
        print(f"{label}: {title(notebooks_dir() / NOTEBOOKS[steps[0]])} ({NOTEBOOKS[steps[0]]})")
    else:
        print(f"{label} runs {sequence_size(expand(names))}; a parameter given once goes to every notebook that "
              "declares it:")
        for line in _table([(f"  {s}", NOTEBOOKS[s], title(notebooks_dir() / NOTEBOOKS[s])) for s in steps]):
            print(line)
    print("set with -p NAME VALUE, or NAME: VALUE in a -f params file (YAML); nothing was run\n")
    every, many = set(steps), len(steps) > 1
    table = [(r.param.name, r.param.type, _literal(r.param.default),
              *(("every" if set(r.steps) == every else ",".join(r.steps),) if many else ()), r.param.help)
             for r in rows if r.steps != ("fleet",)]
    for line in _table([("name", "type", "default", *(("steps",) if many else ()), "help"), *table]):
        print(line)
    fleet = [(r.param.name, r.param.type, _literal(r.param.default), r.param.help) for r in rows
             if r.steps == ("fleet",)]
    if fleet:
        print("\nwith `targets:` (a fleet), inspect and test-persistence run as one notebook over every target, "
              "which also takes:")
        for line in _table([("name", "type", "default", "help"), *fleet]):
            print(line)
    default = default_params_file()
    if default is not None:
        given = ", ".join(f"{k}={_literal(v)}" for k, v in load_files([default]).items())
        print(f"\nwith no -f, a run reads {default} first: {given or 'nothing set'}")
    return ExitCode.OK


def _archive_list(root: Path | str, args: argparse.Namespace) -> int:
    """`runbook archive list`: one line per run under a header (or --json), filtered by --change/--target/--since."""
    wanted = RowFilter(args.change, args.target, parse_since(args.since) if args.since else None)
    rows: list[Mapping[str, Any]] = wanted.apply(listing(read_index(root)))
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return ExitCode.OK
    if not rows:
        print(f"{root}: no runs" + (f" match {wanted.describe()}" if wanted.describe() else " archived"))
        return ExitCode.OK
    table = [(str(row.get("started", ""))[:19], str(row.get("change_id", "")), str(row.get("notebook", "")),
              str(row.get("target", "")), str(row.get("status", "")),
              str(row["file"]) + (f"  (was: {row['note']})" if row.get("note") else "")) for row in rows]
    for line in _table([("started (UTC)", "change", "notebook", "target", "status", "file"), *table]):
        print(line)
    return ExitCode.OK


def _pipe_closed(stream: Any) -> bool:
    """True when `stream` writes to a pipe whose reader has gone (`| head` exited): poll() reports POLLERR or
    POLLHUP on it (Linux and the BSDs alike)."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):  # not a file (a test's capture): no pipe to close
        return False
    if not hasattr(select, "poll"):  # Windows: a BrokenPipeError here is the closed pipe
        return True
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))


def _quiet_on_closed_pipe(command: Callable[..., int]) -> Callable[..., int]:
    """A reader that hangs up (`runbook archive list | head -1`) ends the command with exit 141 (128 + SIGPIPE,
    what the shell reports for `yes | head -1`) and no traceback. A BrokenPipeError from anything else is raised."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> int:
        try:
            try:
                code = command(*args, **kwargs)
            except SystemExit:  # argparse, after --help, --version or a usage line: its text is still buffered
                sys.stdout.flush()
                raise
            sys.stdout.flush()  # here, not at interpreter exit, where a closed pipe is a traceback nobody catches
            return code
        except BrokenPipeError:
            closed = [stream for stream in (sys.stdout, sys.stderr) if _pipe_closed(stream)]
            if not closed:
                raise
            devnull = os.open(os.devnull, os.O_WRONLY)
            for stream in closed:  # the interpreter flushes them on exit: let that go nowhere
                os.dup2(devnull, stream.fileno())
            return 141

    return wrapper


def _print_run(result: RunResult, *, diff: bool = False, detailed: bool = False) -> None:
    """The step table, evidence, failing lines and verdict; with `diff`, the config-file diffs after the table; with
    `detailed` (--detailed-exitcode), the verdict's code is the one the command exits with (`exit_code`)."""
    print(f"change {result.change_id}")
    print(f"{'step':<16} {'target':<28} {'status':<8} {'changed':<8} key figures")
    for s in result.steps:
        figures = s.summary.error or _figures(s.summary)
        if s.status == Status.SKIPPED and s.summary.facts.get("reason"):
            figures = f"not run: {s.summary.facts['reason']}"
        if s.expected:
            names = ", ".join(s.expected)
            figures += f" (after a plan: nothing was applied, so {names} is still what the change fixes)"
        if _fixes(s):
            figures += f" ({BEFORE_CHANGE})"
        print(f"{s.name:<16} {s.target[:28]:<28} {s.status:<8} {changed(s.summary):<8} {figures}")
    for line in diffs(result) if diff else []:
        print(line)
    for nb, html in dict.fromkeys((s.notebook, s.html) for s in result.steps if s.notebook is not None):
        print(f"evidence: {result.archive.location(nb)}")
        if html is not None:
            print(f"          {result.archive.location(html)}")
    print(f"index:    {result.archive.location()}")
    if result.report is not None:
        print(f"report:   {result.archive.location(result.report)}")
    for s in result.failing():
        print(f"failing:  {s.target} at {s.name}: {s.summary.error or _figures(s.summary)}")
    if result.archive_failure:
        print(f"verdict:  FAILED: the evidence archive failed, so the run stopped at a safe point: "
              f"{result.archive_failure} (exit {result.exit_code})")
        for line in result.changes() or ["nothing on the server (no step had changed it yet)"]:
            print(f"changed:  {line}")
        print(f"kept:     {result.kept}")
        return
    if result.stopped_by:
        print(f"verdict:  {stopped_line(result).removeprefix('runbook: ')} (exit {result.exit_code})")
        return
    verdict = {ExitCode.OK: "OK", ExitCode.FAILED: "FAILED", ExitCode.USAGE: "USAGE ERROR",
               ExitCode.BLOCKED: "BLOCKED: a person must act"}[ExitCode(result.exit_code)]
    pending = result.pending() if result.exit_code == ExitCode.OK else []
    if pending:
        where = ", ".join(f"{s.name} on {s.target}" for s in pending)
        verdict += f", plan only: {len(pending)} change(s) pending ({where}; -p apply true makes them)"
    print(f"verdict:  {verdict} (exit {exit_code(result, detailed)})")


def exit_code(result: RunResult, detailed: bool = False) -> int:
    """The run's exit code; with `detailed` (--detailed-exitcode), CHANGES_PENDING (4) for a run that completed
    (exit 0) with changes pending (`RunResult.pending`)."""
    if detailed and result.exit_code == ExitCode.OK and result.pending():
        return ExitCode.CHANGES_PENDING
    return result.exit_code


#: What the table says of the first inspection of a change that found something: the change is about to fix it.
BEFORE_CHANGE = "before the change: this is what it fixes"


def _fixes(s: StepResult) -> bool:
    """Whether `s` is a change's first inspection whose findings the change fixes (they do not fail the run)."""
    return s.before_change and s.status in (Status.FAIL, Status.WARN)


def recap(result: RunResult) -> str:
    """The run's last line: how many steps ended ok (changed ones included, as Ansible counts), changed, would
    change (plan only), failed, were skipped, or blocked."""
    failing = result.failing()
    blocked = sum(1 for s in failing if s.exit_code == ExitCode.BLOCKED)
    skipped = sum(1 for s in result.steps if s.status == Status.SKIPPED)
    words = [changed(s.summary) for s in result.steps]
    return (f"recap:    ok {len(result.steps) - len(failing) - skipped}, changed {words.count('yes')}, "
            f"would change {words.count('would')}, failed {len(failing) - blocked}, skipped {skipped}, "
            f"blocked {blocked}")


def advisories(result: RunResult) -> list[str]:
    """Each host advisory of the run (a sysctl of the host a server runs on), once per host: steps record them in
    their facts, outside their checks and status."""
    seen: dict[tuple[str, str], str] = {}
    for s in result.steps:
        for a in s.summary.facts.get("advisories", ()):
            if a.get("status", "warn") != Status.PASS:
                seen.setdefault((str(a.get("host", "")), str(a.get("name", ""))),
                                f"{a.get('observed', '')}: {a.get('fix', '')}".rstrip(": "))
    return [f"advisory: {host}: {text} (this host, for every server on it; not part of any step's status)"
            for (host, _), text in seen.items()]


def _print_recap(result: RunResult) -> None:
    left = result.left_out
    limited = [f"limit:    --limit left out {len(left)} target(s) of the file: {', '.join(left[:10])}"
               + (f" and {len(left) - 10} more" if len(left) > 10 else "")] if left else []
    for line in [*advisories(result), *limited, recap(result)]:
        print(line)


def _step_ended(s: StepResult) -> str:
    """How a step ended, for its line on a terminal (`TerminalWatch`)."""
    word = changed(s.summary)
    text = f"{s.status}" + (f", changed {word}" if word != "-" else "")
    if _fixes(s):
        return f"{text}: {BEFORE_CHANGE}"
    if s.status == Status.SKIPPED:
        return f"{text}: not run: {s.summary.facts.get('reason', '')}"
    if s.summary.error:
        return f"{text}: {s.summary.error[:300]}"
    return text


def _terminal_watch() -> TerminalWatch | None:
    """Step lines and a status line on stderr when it is a terminal; nothing at all otherwise (cron)."""
    try:
        return TerminalWatch(sys.stderr, _step_ended) if sys.stderr.isatty() else None
    except (AttributeError, ValueError):  # a replaced or closed stderr
        return None


#: What is left by a step cut short whose change `runbook run rollback` does not put back (enable-aof's and
#: persist-config's it does).
UNDO = {
    "backup": "at most a partial copy at the destination; the step puts auto-aof-rewrite-percentage back itself "
              "unless its kernel was killed: check it with CONFIG GET auto-aof-rewrite-percentage",
    "test-persistence": "at most canary keys under runbook:canary:, which expire by their TTL (ttl_s)",
}


def stopped_line(result: RunResult) -> str:
    """The one line of a run a signal stopped: where, what was put back or is left, and where the evidence is (its
    change report when the run wrote one, else the index)."""
    cut = next((s for s in result.steps if s.status == Status.INTERRUPTED), None)
    done = [s for s in result.steps if s.status not in (Status.SKIPPED, Status.INTERRUPTED)]
    if cut is not None:
        error = cut.summary.error
        for prefix in (f"stopped by {result.stopped_by}: ", "ChangeInterrupted: ", f"{cut.target}: "):
            error = error.removeprefix(prefix)
        where = f"during {cut.name} on {cut.target}: {error}"
        left = cut.summary.facts.get("unfinished")
        undo = UNDO.get(cut.name, "`runbook run rollback` undoes it")
        where += f"; may be left: {left} (see its intent; {undo})" if left else ""
    else:
        where = f"after {done[-1].name} on {done[-1].target}" if done else "before any step ran"
    changes = result.changes()
    return (f"runbook: stopped by {result.stopped_by} {where}; change {result.change_id}"
            + (f"; it had changed: {'; '.join(changes)}" if changes and cut is None else "")
            + (f"; report: {result.archive.location(result.report)}" if result.report is not None
               else f"; evidence: {result.archive.location()}"))


def changed(summary: StepSummary) -> str:
    """For a step that may change something (it records a `result`): yes (it did), would (a plan: apply would
    change or write something), no (nothing to do, blocked or skipped); - for a read-only step."""
    if summary.result is None:
        return "-"
    if summary.result == Outcome.PLANNED:
        return "would"
    return "yes" if summary.changed_something else "no"


def diffs(result: RunResult) -> list[str]:
    """The config-file diffs of the run, as `--diff` prints them: a header line per step, then its diff (the one
    written with apply; else the planned one, `planned_diff` where the step records it)."""
    out = []
    for s in result.steps:
        facts = s.summary.facts
        text = facts.get("diff") if s.summary.changed_something else facts.get("planned_diff") or facts.get("diff")
        if not text:
            continue
        how = ("written" if s.summary.changed_something else "planned (plan only: nothing written)"
               if s.summary.result == Outcome.PLANNED else f"not written ({s.summary.result or s.status})")
        out += [f"diff:     {s.name} on {s.target}, {how}:", str(text).rstrip("\n")]
    return out


def _figures(summary: StepSummary) -> str:
    facts = summary.facts
    parts = [f"{summary.server or '?'} {summary.version}".strip()]
    if summary.result is not None:
        parts.append(f"result={summary.result}" + (f" method={facts['method']}" if facts.get("method") else ""))
    if facts.get("dbsize") is not None:  # a plan has not counted them
        parts.append(f"keys={facts['dbsize']}")
    if facts.get("skip_reason"):
        parts.append(f"skipped because: {facts['skip_reason']}")
    elif summary.step == "backup" and facts.get("location"):
        parts.append(f"to={facts['location']}")  # plan only: where it would go
    differing = [c for c in summary.setting_changes if c.before != c.after]  # not a value only made explicit
    if summary.result == Outcome.PLANNED and differing:
        parts.append("would set " + ",".join(f"{c.setting}:{c.before}->{c.after}" for c in differing))
    if facts.get("drift"):
        parts.append("drift=" + ",".join(facts["drift"]))
    parts += [f"{c.name}={c.status}" for c in summary.not_passing]
    return " ".join(parts)


@_quiet_on_closed_pipe
def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # nbconvert/jupyter_client chatter (alt text, zmq context teardown) is noise in cron mail.
    logging.getLogger("traitlets").setLevel(logging.ERROR)
    args = build_parser().parse_args(argv)
    try:
        if args.command == "rehearse":
            return _rehearse(args)
        if args.command == "list":
            return _list_names()
        if args.command == "params":
            return _from_litellm(args.litellm_config, args.out, args.force)
        if args.command == "completion":
            return _completion(args.shell)
        if args.command == "run":
            if args.help_notebook:
                return _help_notebook(args.names, as_json=args.json)
            if args.metrics_file:
                require_writable(Path(args.metrics_file))
                job = metrics_job(args.metrics_job, args.files)
            result = run(args.names, args.files, [tuple(p) for p in args.pairs], archive_root(args.archive),
                         args.fail_on, keep_going=args.keep_going, watch=_terminal_watch(), pdf=args.pdf,
                         max_fail=args.max_fail, limit=args.limit)
            if args.metrics_file:
                # The last inspection of every target (a fleet: each of its members); an unreachable one keeps
                # its last known series from the file the previous run wrote.
                path = Path(args.metrics_file)
                write_atomically(path, render(inspections((s.name, s.target, s.summary) for s in result.steps),
                                              result.exit_code, job=job, previous=read_previous(path),
                                              changes=archive_changes(archive_root(args.archive))))
            if args.json:
                print(json.dumps({
                    "change_id": result.change_id, "exit_code": exit_code(result, args.detailed_exitcode),
                    "report": result.archive.location(result.report) if result.report is not None else None,
                    "failing": [{"target": s.target, "notebook": s.name, "status": s.status} for s in result.failing()],
                    "pending": [{"target": s.target, "notebook": s.name} for s in result.pending()],
                    "steps": [{"notebook": s.name, "target": s.target, "status": s.status,
                               "changed": changed(s.summary),
                               **({"expected_after_plan": list(s.expected)} if s.expected else {}),
                               "exit_code": s.exit_code, "summary": s.summary.to_json(),
                               "ipynb": result.archive.location(s.notebook) if s.notebook else None,
                               "html": result.archive.location(s.html) if s.html else None,
                               "run_id": s.record.get("run_id")}
                              for s in result.steps],
                    **({"stopped_by": result.stopped_by} if result.stopped_by else {}),
                    **({"archive_failure": result.archive_failure, "changed": result.changes(), "kept": result.kept}
                       if result.archive_failure else {}),
                }, indent=2))
            elif not result.stopped_by:
                _print_run(result, diff=args.diff, detailed=args.detailed_exitcode)
                _print_recap(result)
            if result.stopped_by:
                print(stopped_line(result), file=sys.stderr)
            return exit_code(result, args.detailed_exitcode)
        root = archive_root(args.archive)
        if args.metrics_file and args.action != "verify":
            raise ParameterError(f"--metrics-file goes with archive verify, not archive {args.action}")
        if args.action == "list":
            return _archive_list(root, args)
        if args.action == "prune":
            return _prune(root, args.keep_days)
        if args.action == "show":
            return _archive_show(root, args.change_id or args.change)
        return _archive_verify(root, args.metrics_file, args.metrics_job)
    except RunbookError as err:
        prefix = "parameter error: " if isinstance(err, ParameterError) else ""
        print(f"runbook: {prefix}{err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:  # Ctrl-C outside a run's steps (a run catches it and stops at a safe point)
        print("runbook: interrupted (SIGINT) before a step ran or after the run ended: no step was cut short",
              file=sys.stderr)
        return 130


def _archive_verify(root: Path | str, metrics_file: str | None, job: str) -> int:
    """`runbook archive verify`: one line per problem on stderr, the verdict and notes; with `metrics_file`, the
    verdict as a text file too (0 when the archive could not be read at all)."""
    path = Path(metrics_file) if metrics_file else None
    if path is not None:
        require_writable(path)
        job = metrics_job(job)
    try:
        found = check(root)
        interrupted, closed = findings(read_index(root))
    except RunbookError:
        if path is not None:
            write_atomically(path, render_verify(root, False, None, job=job))
        raise
    for p in [*found.problems, *interrupted]:
        print(p, file=sys.stderr)
    if not found.problems:
        pruned = f" ({found.pruned} pruned, see the checkpoints)" if found.pruned else ""
        open_runs = f"; {len(interrupted)} interrupted run(s) nothing closed yet" if interrupted else ""
        print(f"{root}: {found.records} record(s){pruned}, chain and files intact{open_runs}")
    for note in [*found.notes, *closed]:
        print(f"note: {note}")
    if path is not None:
        write_atomically(path, render_verify(root, not (found.problems or interrupted), found.records, job=job))
    return ExitCode.FAILED if found.problems or interrupted else ExitCode.OK


def _archive_show(root: Path | str, change_id: str) -> int:
    """`runbook archive show CHANGE_ID`: the change's summary (verdict, targets, steps, what changed, commands) and
    where its report is; ParameterError (exit 2) naming the archive for an id it does not hold."""
    if not change_id:
        raise ParameterError(f"archive show needs a CHANGE_ID: `runbook archive list --archive {root}` shows them")
    found = change_report.load(root, change_id)
    for line in found.report.terminal(change_report.location(root, found.file) if found.file else ""):
        print(line)
    return ExitCode.OK


def _prune(root: Path | str, keep_days: int | None) -> int:
    """`runbook archive prune --keep-days N`: one line saying what went and what stayed."""
    if keep_days is None:
        raise ParameterError("archive prune needs --keep-days N (how many days of routine inspections to keep)")
    done = prune(root, keep_days)
    print(f"{root}: pruned {done.records} record(s) of {done.changes} routine inspection(s) started before "
          f"{done.cutoff[:19]}Z, {done.files} file(s) removed, {done.segments} segment(s) rewritten with a "
          f"checkpoint; {done.kept} record(s) kept")
    return ExitCode.OK


def _rehearse(args: argparse.Namespace) -> int:
    """`runbook rehearse`: the step table, what the sandbox was built from, and the verdict for the target."""
    done = rehearse(args.files, [tuple(p) for p in args.pairs], archive_root(args.archive),
                    with_data=args.with_data, keep=args.keep)
    r, result = done.rehearsal, done.run
    if args.json:
        print(json.dumps({
            "verdict": done.verdict, "exit_code": done.exit_code, "rehearsal": r.record(),
            "timings": {"prepare_s": r.prepare_s, "run_s": done.run_s},
            "change_id": result.change_id, "run_exit_code": result.exit_code,
            "report": result.archive.location(result.report) if result.report is not None else None,
            "steps": [{"notebook": s.name, "target": s.target, "status": s.status, "exit_code": s.exit_code,
                       "summary": s.summary.to_json(),
                       "ipynb": result.archive.location(s.notebook) if s.notebook else None,
                       "html": result.archive.location(s.html) if s.html else None, "run_id": s.record.get("run_id")}
                      for s in result.steps],
        }, indent=2))
        return done.exit_code
    _print_run(result)
    match = {"exact": "same as the target", "major.minor": f"same major.minor as the target's {r.production_server}",
             "none": f"the target runs {r.production_server}: NOT the same"}[r.version_match]
    print(f"rehearsal of {r.production} from {r.config_file}")
    print(f"server:   {r.server} ({r.binary}): {match}")
    if r.data_copied:
        files = ", ".join(f"{Path(c.source).name} ({c.size} bytes)" for c in r.copied)
        print(f"data:     copied {files}; {r.keys_loaded} keys loaded, the target holds {r.production_keys}")
    elif r.keys_loaded is None:
        print("data:     not copied (no --with-data): the sandbox started empty")
    else:
        print(f"data:     nothing to copy; {r.keys_loaded} keys loaded")
    mirrored = ", ".join(f"{k} {v['sandbox']} -> {v['production']}" for k, v in r.mirrored.items())
    print(f"mirrored: {mirrored or 'nothing: the file gives the runtime state'} (the target's runtime values)")
    for caveat in r.caveats:
        print(f"caveat:   {caveat}")
    if args.keep:
        print(f"kept:     {r.sandbox_dir} (stopped; its redis.conf keeps the target's auth lines)")
    print(f"timings:  sandbox ready in {r.prepare_s:.1f} s, run {done.run_s:.1f} s")
    print(f"rehearsal: {done.verdict} (exit {done.exit_code})")
    return done.exit_code


if __name__ == "__main__":
    sys.exit(main())
