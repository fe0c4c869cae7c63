"""The `runbook` command: run notebooks into the evidence archive, list and verify it."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Sequence

from runbook.errors import ExitCode, ParameterError, RunbookError
from runbook.evidence.archive import archive_root, check, read_index
from runbook.evidence.journal import findings, listing
from runbook.evidence.metrics import render, require_writable, write_atomically
from runbook.evidence.prune import prune
from runbook.model import Status, StepSummary
from runbook.orchestration.plan import NOTEBOOKS, SEQUENCES
from runbook.orchestration.rehearse import rehearse
from runbook.orchestration.runner import RunResult, run

ARCHIVE_HELP = ("evidence archive: a directory or an fsspec URL such as s3://bucket/prefix, credentials from "
                "the environment (default $RUNBOOK_ARCHIVE or ./archive)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="runbook", description="Redis persistence runbook: notebooks with evidence.")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run notebooks through papermill into the evidence archive")
    r.add_argument("names", nargs="+", metavar="NAME", help=f"one of: {', '.join([*NOTEBOOKS, *SEQUENCES])}")
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
    r.add_argument("--keep-going", action="store_true",
                   help="fleets: a target that fails stops only its own later steps, not the other targets'")

    a = sub.add_parser("archive", help="list, verify or prune the evidence archive")
    a.add_argument("action", choices=("list", "verify", "prune"))
    a.add_argument("--archive", help=ARCHIVE_HELP)
    a.add_argument("--keep-days", type=int, metavar="N",
                   help="prune: remove routine inspections (changes that only ran inspect) older than N days; "
                        "every other change's records stay")

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
    return p


def _print_run(result: RunResult) -> None:
    print(f"change {result.change_id}")
    print(f"{'step':<16} {'target':<28} {'status':<8} {'changed':<8} key figures")
    for s in result.steps:
        figures = s.summary.error or _figures(s.summary)
        if s.status == Status.SKIPPED and s.summary.facts.get("reason"):
            figures = f"not run: {s.summary.facts['reason']}"
        print(f"{s.name:<16} {s.target[:28]:<28} {s.status:<8} {changed(s.summary):<8} {figures}")
    for nb, html in dict.fromkeys((s.notebook, s.html) for s in result.steps if s.notebook is not None):
        print(f"evidence: {result.archive.location(nb)}")
        if html is not None:
            print(f"          {result.archive.location(html)}")
    print(f"index:    {result.archive.location()}")
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
    print(f"verdict:  {verdict} (exit {result.exit_code})")


def stopped_line(result: RunResult) -> str:
    """The one line of a run a signal stopped: where, what was put back or is left, and where the evidence is."""
    cut = next((s for s in result.steps if s.status == Status.INTERRUPTED), None)
    done = [s for s in result.steps if s.status not in (Status.SKIPPED, Status.INTERRUPTED)]
    if cut is not None:
        error = cut.summary.error
        for prefix in (f"stopped by {result.stopped_by}: ", "ChangeInterrupted: ", f"{cut.target}: "):
            error = error.removeprefix(prefix)
        where = f"during {cut.name} on {cut.target}: {error}"
        left = cut.summary.facts.get("unfinished")
        where += f"; may be left: {left} (see its intent; `runbook run rollback` undoes it)" if left else ""
    else:
        where = f"after {done[-1].name} on {done[-1].target}" if done else "before any step ran"
    changes = result.changes()
    return (f"runbook: stopped by {result.stopped_by} {where}; change {result.change_id}"
            + (f"; it had changed: {'; '.join(changes)}" if changes and cut is None else "")
            + f"; evidence: {result.archive.location()}")


def changed(summary: StepSummary) -> str:
    """yes / no for a step that may change something (it records a `result`), - for a read-only step."""
    if summary.result is None:
        return "-"
    return "yes" if summary.changed_something else "no"


def _figures(summary: StepSummary) -> str:
    facts = summary.facts
    parts = [f"{summary.server or '?'} {summary.version}".strip()]
    if summary.result is not None:
        parts.append(f"result={summary.result}" + (f" method={facts['method']}" if facts.get("method") else ""))
    if "dbsize" in facts:
        parts.append(f"keys={facts['dbsize']}")
    if facts.get("skip_reason"):
        parts.append(f"skipped because: {facts['skip_reason']}")
    elif summary.step == "backup" and facts.get("location"):
        parts.append(f"to={facts['location']}")  # plan only: where it would go
    if facts.get("drift"):
        parts.append("drift=" + ",".join(facts["drift"]))
    parts += [f"{c.name}={c.status}" for c in summary.not_passing]
    return " ".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # nbconvert/jupyter_client chatter (alt text, zmq context teardown) is noise in cron mail.
    logging.getLogger("traitlets").setLevel(logging.ERROR)
    args = build_parser().parse_args(argv)
    try:
        if args.command == "rehearse":
            return _rehearse(args)
        if args.command == "run":
            if args.metrics_file:
                require_writable(Path(args.metrics_file))
            result = run(args.names, args.files, [tuple(p) for p in args.pairs], archive_root(args.archive),
                         args.fail_on, keep_going=args.keep_going)
            if args.metrics_file:
                # The last inspection of every target (a fleet: each of its members).
                inspected = {s.target: s.summary for s in result.steps if s.name == "inspect" and s.summary.checks}
                write_atomically(Path(args.metrics_file), render(inspected.items(), result.exit_code))
            if args.json:
                print(json.dumps({
                    "change_id": result.change_id, "exit_code": result.exit_code,
                    "failing": [{"target": s.target, "notebook": s.name, "status": s.status} for s in result.failing()],
                    "steps": [{"notebook": s.name, "target": s.target, "status": s.status,
                               "changed": changed(s.summary),
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
                _print_run(result)
            if result.stopped_by:
                print(stopped_line(result), file=sys.stderr)
            return result.exit_code
        root = archive_root(args.archive)
        if args.action == "list":
            for row in listing(read_index(root)):
                note = f"  (was: {row['note']})" if row.get("note") else ""
                print(f"{str(row.get('started', ''))[:19]}  {row.get('change_id', '')}  {row.get('notebook', ''):<10} "
                      f"{row.get('target', ''):<28} {row.get('status', ''):<8} {row['file']}{note}")
            return ExitCode.OK
        if args.action == "prune":
            return _prune(root, args.keep_days)
        found = check(root)
        interrupted, closed = findings(read_index(root))
        for p in [*found.problems, *interrupted]:
            print(p, file=sys.stderr)
        if not found.problems:
            pruned = f" ({found.pruned} pruned, see the checkpoints)" if found.pruned else ""
            open_runs = f"; {len(interrupted)} interrupted run(s) nothing closed yet" if interrupted else ""
            print(f"{root}: {found.records} record(s){pruned}, chain and files intact{open_runs}")
        for note in [*found.notes, *closed]:
            print(f"note: {note}")
        return ExitCode.FAILED if found.problems or interrupted else ExitCode.OK
    except RunbookError as err:
        prefix = "parameter error: " if isinstance(err, ParameterError) else ""
        print(f"runbook: {prefix}{err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:  # Ctrl-C outside a run's steps (a run catches it and stops at a safe point)
        print("runbook: interrupted (SIGINT) before a step ran or after the run ended: no step was cut short",
              file=sys.stderr)
        return 130


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
