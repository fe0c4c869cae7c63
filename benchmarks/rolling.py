"""Rolling changes (issue 21): `runbook run all -p apply true` over a fleet of 50 sandboxes with `-p parallel 10`,
against the same run for one target (`-p target URL`). Target: the fleet within 8x the one target.

Every sandbox is a real server with its own config file and 200 keys, AOF off at runtime and in the file, started
fresh for every run (the change switches AOF on).
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from runbook.sandbox.seed import populate
from runbook.sandbox.throwaway import Sandbox

ROOT = Path(__file__).resolve().parent.parent
FLEET = 50
PARALLEL = 10


def _sandboxes(root: Path, n: int) -> list[Sandbox]:
    """`n` sandboxes started from this thread (a sandbox dies with the thread that started it)."""
    sbs = []
    try:
        for i in range(n):
            sbs.append(Sandbox(root=root / f"sb{i}").start())
            populate(sbs[-1].client(), 200)
    except BaseException:
        for sb in sbs:
            sb.cleanup()
        raise
    return sbs


def _timed_run(args: list[str], work: Path) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNBOOK_")}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "runbook", "run", "all", "-p", "apply", "true",
                           "-p", "destination", str(work / "backups"), "--archive", str(work / "archive"), *args],
                          capture_output=True, text=True, env=env, cwd=ROOT)
    took = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"runbook run all {' '.join(args)} exited {proc.returncode}: {proc.stderr[-2000:]}")
    return took


def once(n: int, parallel: int) -> float:
    """Seconds of one `run all -p apply true`: one target (n == 1, no fleet), else a fleet of `n` with `parallel`."""
    work = Path(tempfile.mkdtemp(prefix="runbook-bench-rolling-"))
    sbs = _sandboxes(work, n)
    try:
        if n == 1:
            return _timed_run(["-p", "target", sbs[0].url], work)
        fleet = work / "fleet.yaml"
        fleet.write_text(yaml.safe_dump({"targets": [sb.url for sb in sbs]}))
        return _timed_run(["-f", str(fleet), "-p", "parallel", str(parallel)], work)
    finally:
        for sb in sbs:
            sb.cleanup()
        shutil.rmtree(work, ignore_errors=True)


def rolling_costs(repeat: int, fleet: int = FLEET, parallel: int = PARALLEL) -> dict[str, Any]:
    one = statistics.median(once(1, 1) for _ in range(repeat))
    many = statistics.median(once(fleet, parallel) for _ in range(max(1, min(repeat, 3))))
    return {"one_s": one, "fleet_s": many, "fleet": fleet, "parallel": parallel}


def rows(r: dict[str, Any]) -> list[tuple[str, str, str]]:
    ratio = r["fleet_s"] / r["one_s"]
    return [
        ("runbook run all -p apply true, one target", f"{r['one_s']:.2f} s", ""),
        (f"  the same over a fleet of {r['fleet']}, -p parallel {r['parallel']}", f"{r['fleet_s']:.2f} s",
         f"{ratio:.2f}x one target (target <= 8x: {'met' if ratio <= 8 else 'MISSED'})"),
    ]
