"""Ctrl-C to exit (issue 17): `runbook run all -p apply true` against a real server whose saves are slowed down
(rdb-key-save-delay), stopped with SIGINT during the wait of a step, and timed from the signal to the exit.

The target is 2 s: the wait put back (or what is left recorded), one line, exit 130.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from runbook.sandbox.seed import seed_sandbox

ROOT = Path(__file__).resolve().parent.parent
#: Microseconds per key of a save or rewrite: with the seed's 3000 keys, about 6 s each.
KEY_DELAY_US = 2000
#: (row name, the INFO persistence field that shows the wait is on, where SIGINT goes)
POINTS = (
    ("during enable-aof's AOF rewrite, SIGINT to the runbook process", "aof_rewrite_in_progress", "process"),
    ("during enable-aof's AOF rewrite, SIGINT to its process group", "aof_rewrite_in_progress", "group"),
    ("during the backup's BGSAVE, SIGINT to its process group", "rdb_bgsave_in_progress", "group"),
)


def stop_once(field: str, to: str) -> tuple[float, int, int]:
    """One run stopped 0.3 s into the wait `field` shows: (seconds from the signal to the exit, exit code, lines of
    stderr)."""
    sb = seed_sandbox("rdb-only")
    work = Path(tempfile.mkdtemp(prefix="runbook-bench-ctrlc-"))
    try:
        client = sb.client()
        client.config_set("rdb-key-save-delay", KEY_DELAY_US)
        env = {k: v for k, v in os.environ.items() if not k.startswith("RUNBOOK_")}
        proc = subprocess.Popen(
            [sys.executable, "-m", "runbook", "run", "all", "-p", "target", sb.url, "-p", "config_file",
             str(sb.config_path), "-p", "apply", "true", "-p", "destination", str(work / "backups"),
             "-p", "method", "edit", "--archive", str(work / "archive")],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT, start_new_session=True)
        while not int(client.info("persistence")[field]):
            if proc.poll() is not None:
                raise RuntimeError(f"the run ended before {field}: {proc.communicate()}")
            time.sleep(0.02)
        time.sleep(0.3)
        sent = time.perf_counter()
        if to == "group":
            os.killpg(proc.pid, signal.SIGINT)
        else:
            proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
        return time.perf_counter() - sent, proc.returncode, len(err.splitlines())
    finally:
        sb.cleanup()


def ctrl_c_costs(repeat: int) -> dict[str, Any]:
    """Seconds from SIGINT to exit at each point of `POINTS`: median and worst of `repeat` runs, and whether every
    run exited 130 with one line."""
    out: dict[str, Any] = {}
    for name, field, to in POINTS:
        runs = [stop_once(field, to) for _ in range(repeat)]
        out[name] = {"median_s": statistics.median(s for s, _, _ in runs), "max_s": max(s for s, _, _ in runs),
                     "one_line_130": all(code == 130 and lines == 1 for _, code, lines in runs)}
    return out


def rows(costs: dict[str, Any]) -> list[tuple[str, str, str]]:
    """The table rows: median / worst, against the 2 s target."""
    out = []
    for name, c in costs.items():
        ok = c["max_s"] < 2 and c["one_line_130"]
        out.append((f"Ctrl-C {name}, to exit", f"{c['median_s']:.2f} / max {c['max_s']:.2f} s",
                    f"target < 2 s, exit 130, one line: {'met' if ok else 'MISSED'}"))
    return out
