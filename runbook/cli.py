"""The `runbook` command: run notebooks into the evidence archive, list and verify it."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Sequence

from runbook.errors import ExitCode, ParameterError, RunbookError
from runbook.evidence.archive import archive_root, read_index, verify
from runbook.evidence.metrics import render, require_writable, write_atomically
from runbook.model import StepSummary
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

    a = sub.add_parser("archive", help="list or verify the evidence archive")
    a.add_argument("action", choices=("list", "verify"))
    a.add_argument("--archive", help=ARCHIVE_HELP)

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
        print(f"{s.name:<16} {s.target[:28]:<28} {s.status:<8} {changed(s.summary):<8} {figures}")
    for nb in dict.fromkeys(s.notebook for s in result.steps if s.notebook is not None):
        print(f"evidence: {result.archive.location(nb)}\n          {result.archive.location(nb.with_suffix('.html'))}")
    print(f"index:    {result.archive.location()}")
    for s in result.failing():
        print(f"failing:  {s.target} at {s.name}: {s.summary.error or _figures(s.summary)}")
    verdict = {ExitCode.OK: "OK", ExitCode.FAILED: "FAILED", ExitCode.USAGE: "USAGE ERROR",
               ExitCode.BLOCKED: "BLOCKED: a person must act"}[result.exit_code]
    print(f"verdict:  {verdict} (exit {result.exit_code})")


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
                               "run_id": s.record["run_id"]}
                              for s in result.steps],
                }, indent=2))
            else:
                _print_run(result)
            return result.exit_code
        root = archive_root(args.archive)
        if args.action == "list":
            for rec in read_index(root):
                print(f"{rec['started'][:19]}  {rec['change_id']}  {rec['notebook']:<10} {rec['target']:<28} "
                      f"{rec['status']:<8} {next(iter(rec['files']), '')}")
            return ExitCode.OK
        problems = verify(root)
        for p in problems:
            print(p, file=sys.stderr)
        if not problems:
            print(f"{root}: {len(read_index(root))} record(s), chain and files intact")
        return ExitCode.FAILED if problems else ExitCode.OK
    except RunbookError as err:
        prefix = "parameter error: " if isinstance(err, ParameterError) else ""
        print(f"runbook: {prefix}{err}", file=sys.stderr)
        return err.exit_code


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
                       "html": result.archive.location(s.html) if s.html else None, "run_id": s.record["run_id"]}
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
