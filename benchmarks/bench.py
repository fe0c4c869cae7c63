"""Benchmarks of the runbook on the sandbox (`make bench`; not part of `make test`).

Each figure is the median of --repeat runs (default 5). Prints one table and, with --json,
the raw numbers. Targets are from the benchmark issue; a missed target is printed as MISSED.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

import nbformat
import papermill as pm
from archive_costs import archive_costs
from archive_costs import rows as archive_rows
from ctrl_c import ctrl_c_costs
from ctrl_c import rows as ctrl_c_rows
from gateway import gateway_costs
from gateway import rows as gateway_rows
from nbformat.v4 import new_code_cell, new_notebook
from rolling import rolling_costs
from rolling import rows as rolling_rows

import runbook
from runbook.evidence.archive import read_index
from runbook.orchestration.plan import notebooks_dir
from runbook.sandbox.seed import populate
from runbook.sandbox.throwaway import SEED_CONFIG, Sandbox, start_many
from runbook.steps import enable_aof as enable

ROOT = Path(__file__).resolve().parent.parent
RUNBOOK = [sys.executable, "-m", "runbook"]


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def timed(cmd: list[str], env: dict[str, str] | None = None) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=False, capture_output=True, env={**os.environ, **(env or {})}, cwd=ROOT)
    return time.perf_counter() - t


def floor_s(repeat: int, work: Path) -> float:
    """The `papermill` command on a one-cell notebook with the same kernel: process start + kernel start."""
    nb = new_notebook(cells=[new_code_cell("1")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    src = work / "empty.ipynb"
    nbformat.write(nb, src)
    papermill = [str(Path(sys.executable).with_name("papermill")), "--no-progress-bar", "--log-level", "ERROR"]
    return median([timed([*papermill, str(src), str(work / "empty-out.ipynb")]) for _ in range(repeat)])


def inspect_e2e(repeat: int, work: Path) -> float:
    return median([timed([*RUNBOOK, "run", "inspect", "--archive", str(work / "a1")]) for _ in range(repeat)])


def inspect_evidence_kib(work: Path) -> tuple[float, float]:
    """KiB of the last inspection's evidence in `inspect_e2e`'s archive: its page (.html) and the executed notebook
    with it (.ipynb + .html)."""
    archive = work / "a1"
    last = [r for r in read_index(archive) if r.get("notebook") == "inspect"][-1]
    sizes = {Path(rel).suffix: (archive / rel).stat().st_size / 1024 for rel in last["files"]}
    return sizes[".html"], sum(sizes.values())


def run_all(repeat: int, work: Path) -> tuple[float, dict[str, float]]:
    totals, shares = [], {"execute_s": [], "render_s": []}
    for i in range(repeat):
        archive = work / f"all{i}"
        totals.append(timed([*RUNBOOK, "run", "all", "-p", "apply", "true", "--archive", str(archive)]))
        recs = read_index(archive)
        for k in shares:
            shares[k].append(sum(r.get("timings", {}).get(k, 0) for r in recs))
        waits = [r["summary"].get("seconds", 0) + r["summary"].get("bgsave_s", 0) for r in recs]
        shares.setdefault("redis_wait_s", []).append(sum(waits))
    return median(totals), {k: median(v) for k, v in shares.items()}


def report_cost(archive: Path, repeat: int) -> dict[str, float]:
    """The change report of a `run all -p apply true` archive: its size, and what writing it adds to the run
    (render, write, fsync, index entry: `change_report.write`), redone into fresh archives; the first write in a
    process also imports the page module."""
    from runbook.evidence import change_report  # noqa: PLC0415  (this row only)
    from runbook.evidence.archive import Archive, read_entries  # noqa: PLC0415
    from runbook.evidence.journal import Journal  # noqa: PLC0415

    entries = read_entries(archive)
    entry = [e for e in entries if e.get("kind") == "report"][-1]
    records = [e for e in entries if e.get("change_id") == entry["change_id"] and "kind" not in e
               and e.get("status") not in ("started", "intent")]
    facts = change_report.RunFacts(int(entry["exit_code"]), operator=str(entry.get("operator", "")),
                                   runner_commands=dict(entry.get("runner_commands") or {}))
    times = []
    for i in range(max(repeat, 20)):
        store = Archive(archive.parent / f"{archive.name}-report{i}")
        t = time.perf_counter()
        change_report.write(Journal(store, entry["change_id"], {}), records, facts)
        times.append((time.perf_counter() - t) * 1000)
    return {"write_ms": median(times), "first_ms": times[0], "in_run_render_ms": entry["timings"]["render_s"] * 1000,
            "kib": (archive / next(iter(entry["files"]))).stat().st_size / 1024}


def report_rows(cost: dict[str, float]) -> list[tuple[str, str, str]]:
    added = max(cost["write_ms"], cost["first_ms"]) / 1000
    return [
        ("change report of run all: write (render, fsync, index entry) / first in a process",
         f"{cost['write_ms']:.1f} / {cost['first_ms']:.1f} ms", f"target < 1 s added: {met(added < 1)}"),
        ("  its size / its rendering inside the run", f"{cost['kib']:.1f} KiB / {cost['in_run_render_ms']:.1f} ms",
         f"target <= 300 KiB: {met(cost['kib'] <= 300)}"),
    ]


def met(ok: bool) -> str:
    return "met" if ok else "MISSED"


def inspect_cost(sizes: list[int], repeat: int) -> dict[int, float]:
    """Median milliseconds of one inspect_target call (no kernel) at each dataset size.

    One server per size, all up at once, measured in turns (10k, 100k, 1M, 10k, ...): noise from
    the rest of this 2-core machine then falls on every size alike instead of on whichever ran last.
    """
    servers = [Sandbox().start() for _ in sizes]
    try:
        targets = []
        for n, sb in zip(sizes, servers):
            client = sb.client()
            populate(client, n)
            # The seed's save rules fire while populating: let that BGSAVE end and save once more,
            # so no fork competes for the cores while inspecting.
            while int(client.info("persistence")["rdb_bgsave_in_progress"]):
                time.sleep(0.05)
            client.save()
            targets.append(runbook.connect(sb.url))
            runbook.inspect_target(targets[-1])  # warm-up
        runs: dict[int, list[float]] = {n: [] for n in sizes}
        for _ in range(max(repeat, 51)):
            for n, target in zip(sizes, targets):
                t = time.perf_counter()
                runbook.inspect_target(target)
                runs[n].append((time.perf_counter() - t) * 1000)
        return {n: median(r) for n, r in runs.items()}
    finally:
        for sb in servers:
            sb.cleanup()


_LOG_TS = re.compile(r"(\d+ \w+ \d{4} \d\d:\d\d:\d\d\.\d{3})")


def _log_time(line: str) -> float:
    return datetime.strptime(_LOG_TS.search(line).group(1), "%d %b %Y %H:%M:%S.%f").timestamp()


def enable_overhead(sizes: list[int], repeat: int) -> dict[int, tuple[float, float]]:
    """(server's own rewrite seconds from its log, our extra seconds) for enable-aof at each size."""
    out = {}
    for n in sizes:
        rewrite, extra = [], []
        for _ in range(repeat):
            with Sandbox() as sb:
                populate(sb.client(), n)
                target = runbook.connect(sb.url, command_timeout_s=120)
                pre = enable.preflight(target)
                result = enable.apply_enable(target, pre, enable.plan_enable(pre), apply=True, timeout_s=600)
                lines = sb.log_text().splitlines()
                start = next(ln for ln in lines if "append only file rewriting started" in ln)
                end = next(ln for ln in lines if "AOF rewrite" in ln and "finished successfully" in ln
                           or "Background AOF rewrite finished" in ln)
                server_s = _log_time(end) - _log_time(start)
                rewrite.append(server_s)
                extra.append(result.seconds - server_s)
        out[n] = (median(rewrite), median(extra))
    return out


def benchmark_impact(repeat: int) -> tuple[float, float]:
    """p99 (ms) of a concurrent redis-benchmark without and with inspections running."""
    tool = shutil.which("redis-benchmark")
    if tool is None:
        return float("nan"), float("nan")
    with Sandbox() as sb:
        populate(sb.client(), 10_000)
        cmd = [tool, "-h", "127.0.0.1", "-p", str(sb.port), "-t", "get,set", "-n", "100000", "-c", "10", "--csv"]

        def p99() -> float:
            out = subprocess.run(cmd, capture_output=True, text=True).stdout.splitlines()
            rows = [ln.replace('"', "").split(",") for ln in out[1:] if ln.strip()]
            return max(float(r[6]) for r in rows)  # p99_latency_ms column, worst of GET/SET

        quiet = median([p99() for _ in range(repeat)])
        stop = threading.Event()
        target = runbook.connect(sb.url)

        def inspect_loop() -> None:
            # One inspection a second: far more often than cron would run it.
            while not stop.is_set():
                runbook.inspect_target(target)
                stop.wait(1.0)

        busy = []
        for _ in range(repeat):
            th = threading.Thread(target=inspect_loop)
            stop.clear()
            th.start()
            busy.append(p99())
            stop.set()
            th.join()
        return quiet, median(busy)


def _vm_hwm_kib(pid: int) -> int:
    try:
        line = next(ln for ln in Path(f"/proc/{pid}/status").read_text().splitlines() if ln.startswith("VmHWM:"))
        return int(line.split()[1])
    except (OSError, StopIteration):
        return 0


def peak_rss(work: Path) -> tuple[float, float]:
    """Peak RSS (MiB) of the runner process alone (VmHWM, polled), and of the kernel running 01-inspect."""
    proc = subprocess.Popen([*RUNBOOK, "run", "inspect", "--archive", str(work / "rss")], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    hwm = 0
    while proc.poll() is None:
        hwm = max(hwm, _vm_hwm_kib(proc.pid))
        time.sleep(0.05)
    runner = hwm / 1024
    nb = nbformat.read(str(notebooks_dir() / "01-inspect.ipynb"), as_version=4)
    nb.cells.append(new_code_cell("import resource; print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"))
    src = work / "inspect-rss.ipynb"
    nbformat.write(nb, src)
    done = pm.execute_notebook(str(src), str(work / "inspect-rss-out.ipynb"), progress_bar=False)
    kernel = int(done.cells[-1].outputs[0]["text"].strip()) / 1024
    return runner, kernel


def fleet_inspection(counts: list[int], repeat: int, work: Path) -> dict[int, tuple[float, float]]:
    """`runbook run inspect -f fleet.yaml` against fleets of 1, 50, 200, 1,000 sandboxes (one document each run):
    (median seconds, the page's KiB).

    The sandboxes start at once (`start_many`), each with 100 keys saved (no save rule fires while measuring) and
    `hz 1` (a server's cron once a second instead of ten times: a thousand idle servers at hz 10 take most of
    a core of this 2-core machine, from every row alike). They are all up for every row."""
    sandboxes = start_many([Sandbox(config=SEED_CONFIG + "hz 1\n") for _ in range(max(counts))])
    try:
        for sb in sandboxes:
            client = sb.client()
            populate(client, 100)
            client.save()
            client.close()
        out: dict[int, tuple[float, float]] = {}
        for n in counts:
            params = work / f"fleet-{n}.yaml"
            params.write_text(json.dumps({"targets": [sb.url for sb in sandboxes[:n]]}))  # JSON is YAML
            archive = work / f"f{n}"
            took = median([timed([*RUNBOOK, "run", "inspect", "-f", str(params), "--archive", str(archive)])
                           for _ in range(repeat)])
            page = next(rel for rel in read_index(archive)[-1]["files"] if rel.endswith(".html"))
            out[n] = took, (archive / page).stat().st_size / 1024
        return out
    finally:
        for sb in sandboxes:
            sb.cleanup()


def fleet_rows(fleet: dict[int, tuple[float, float]]) -> list[tuple[str, str, str]]:
    """The fleet rows: each fleet's time and page size, the largest against one target (target < 3x), and the
    marginal milliseconds per target between the sizes measured (target: flat)."""
    counts = sorted(fleet)
    rows = [(f"runbook run inspect, fleet of {n:,}", f"{t:.2f} s", f"page {kib:,.0f} KiB") for n, (t, kib) in
            fleet.items()]
    if len(counts) > 1:
        ratio = fleet[counts[-1]][0] / fleet[counts[0]][0]
        rows.append((f"fleet of {counts[-1]:,} / fleet of {counts[0]:,}", f"{ratio:.2f}x",
                     f"target < 3x: {met(ratio < 3)}"))
    marginal = [(a, b, (fleet[b][0] - fleet[a][0]) / (b - a) * 1000) for a, b in zip(counts[1:], counts[2:])]
    rows += [(f"  marginal cost per target, {a:,} -> {b:,}", f"{ms:.1f} ms", "") for a, b, ms in marginal]
    if len(marginal) > 1:
        flat = marginal[-1][2] / marginal[0][2] if marginal[0][2] > 0 else float("inf")
        rows.append(("  marginal cost, last / first", f"{flat:.2f}", f"target flat (<= 1.5): {met(flat <= 1.5)}"))
    return rows


def lock_overhead(repeat: int) -> dict[str, float]:
    """Median milliseconds the server lock adds to a run (`runbook.orchestration.locking`): taking it before a
    target's first changing step (connect, key, one script), one renewal, and the release. A step after the first
    of the same target only looks it up."""
    from runbook.orchestration.locking import RunLocks  # noqa: PLC0415  (this row only)
    from runbook.orchestration.plan import NOTEBOOKS, Step  # noqa: PLC0415

    times: dict[str, list[float]] = {"take_ms": [], "renew_ms": [], "release_ms": [], "again_ms": []}
    with Sandbox() as sb:
        step = Step("enable-aof", notebooks_dir() / NOTEBOOKS["enable-aof"], {"target": sb.url, "apply": True})
        for i in range(max(repeat, 20)):
            locks = RunLocks(f"bench{i}")
            t0 = time.perf_counter()
            locks.take(step)
            t1 = time.perf_counter()
            locks.take(step)  # the next changing step of the same target
            t2 = time.perf_counter()
            held = locks.held[sb.url]
            assert held is not None
            held.renew()
            t3 = time.perf_counter()
            locks.release()
            t4 = time.perf_counter()
            for k, v in zip(times, (t1 - t0, t3 - t2, t4 - t3, t2 - t1)):
                times[k].append(v * 1000)
    return {k: median(v) for k, v in times.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--fleets", default="1,50,200,1000", help="fleet sizes for the fleet rows (sandboxes)")
    ap.add_argument("--only", choices=("fleet", "lock", "archive", "report", "ctrlc", "gateway", "rolling"),
                    help="measure only this (the table shows it alone)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    fleets = [int(x) for x in args.fleets.split(",")]
    work = Path(tempfile.mkdtemp(prefix="runbook-bench-"))
    r: dict[str, object] = {}
    if args.only == "archive":
        r["archive"] = archive_costs(work, args.repeat)
        shutil.rmtree(work, ignore_errors=True)
        _print_table(archive_rows(r["archive"]), args.repeat, "")
        if args.json:
            print(json.dumps(r, indent=2, default=str))
        return 0
    if args.only == "report":
        timed([*RUNBOOK, "run", "all", "-p", "apply", "true", "-p", "destination", str(work / "backups"),
               "--archive", str(work / "all0")])
        r["report"] = report_cost(work / "all0", args.repeat)
        shutil.rmtree(work, ignore_errors=True)
        _print_table(report_rows(r["report"]), max(args.repeat, 20), "")
        if args.json:
            print(json.dumps(r, indent=2, default=str))
        return 0
    # The rows measured on their own (no sandbox work dir): their key in the JSON, what measures them, their rows.
    alone = {"ctrlc": ("ctrl_c", ctrl_c_costs, ctrl_c_rows), "rolling": ("rolling", rolling_costs, rolling_rows),
             "gateway": ("gateway", gateway_costs, gateway_rows)}
    if args.only in alone:
        key, costs, rows = alone[args.only]
        r[key] = costs(args.repeat)
        shutil.rmtree(work, ignore_errors=True)
        _print_table(rows(r[key]), args.repeat, "")
        if args.json:
            print(json.dumps(r, indent=2, default=str))
        return 0
    r["lock_ms"] = lock = lock_overhead(args.repeat)
    per_step = lock["take_ms"] + lock["release_ms"]
    lock_rows = [
        ("server lock per changing step: take + release (first step of a target)",
         f"{lock['take_ms']:.2f} + {lock['release_ms']:.2f} ms",
         f"target < 10 ms: {'met' if per_step < 10 else 'MISSED'}"),
        ("  a later step of the same target / one renewal (every 10 s, in the background)",
         f"{lock['again_ms']:.3f} / {lock['renew_ms']:.2f} ms", ""),
    ]
    if args.only == "lock":
        shutil.rmtree(work, ignore_errors=True)
        _print_table(lock_rows, max(args.repeat, 20), "")
        return 0
    r["fleet"] = fleet_inspection(fleets, args.repeat, work)
    fleet_table_rows = fleet_rows(r["fleet"])
    if args.only == "fleet":
        shutil.rmtree(work, ignore_errors=True)
        _print_table(fleet_table_rows, args.repeat, "")
        return 0
    r["floor_s"] = floor_s(args.repeat, work)
    r["inspect_s"] = inspect_e2e(args.repeat, work)
    r["inspect_html_kib"], r["inspect_evidence_kib"] = inspect_evidence_kib(work)
    r["all_s"], r["all_shares"] = run_all(args.repeat, work)
    r["report"] = report_cost(work / "all0", args.repeat)
    r["inspect_ms_by_keys"] = inspect_cost(sizes, args.repeat)
    r["enable_by_keys"] = enable_overhead([sizes[0], sizes[-1]], args.repeat)
    r["p99_quiet_ms"], r["p99_inspecting_ms"] = benchmark_impact(args.repeat)
    r["rss_runner_mib"], r["rss_kernel_mib"] = peak_rss(work)
    r["archive"] = archive_costs(work, args.repeat)
    r["ctrl_c"] = ctrl_c_costs(args.repeat)
    r["gateway"] = gateway_costs(args.repeat)
    r["rolling"] = rolling_costs(args.repeat)
    shutil.rmtree(work, ignore_errors=True)

    with Sandbox() as sb:
        server = runbook.identify(sb.client()).label
    ratio = r["inspect_s"] / r["floor_s"]
    costs = r["inspect_ms_by_keys"]
    flat = costs[sizes[-1]] / costs[sizes[0]]
    extras = [v[1] for v in r["enable_by_keys"].values()]

    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    rows = [
        ("floor: papermill, one-cell notebook", f"{r['floor_s']:.2f} s", ""),
        ("runbook run inspect (end to end, HTML, archive)", f"{r['inspect_s']:.2f} s",
         f"{ratio:.2f}x floor (target <= 1.25x: {verdict(ratio <= 1.25)})"),
        ("  its evidence: the page / .ipynb + page",
         f"{r['inspect_html_kib']:.0f} / {r['inspect_evidence_kib']:.0f} KiB",
         f"target <= 150 / 200 KiB: {verdict(r['inspect_html_kib'] <= 150 and r['inspect_evidence_kib'] <= 200)}"),
        ("runbook run all -p apply true", f"{r['all_s']:.2f} s", f"target < 12 s: {verdict(r['all_s'] < 12)}"),
        ("  of which notebook execution (5 notebooks, one kernel)", f"{r['all_shares']['execute_s']:.2f} s", ""),
        ("  of which HTML rendering", f"{r['all_shares']['render_s']:.2f} s", ""),
        ("  of which waiting on Redis (rewrite, BGSAVE)", f"{r['all_shares']['redis_wait_s']:.2f} s", ""),
        *report_rows(r["report"]),
        *[(f"inspect_target at {n:,} keys", f"{ms:.2f} ms", "") for n, ms in costs.items()],
        ("inspection cost, largest / smallest", f"{flat:.2f}", f"target <= 1.1: {verdict(flat <= 1.1)}"),
        *[(f"enable-aof at {n:,} keys: server rewrite / our overhead", f"{a:.3f} s / {b:.3f} s", "")
          for n, (a, b) in r["enable_by_keys"].items()],
        ("enable-aof overhead", f"max {max(extras):.3f} s", f"target < 0.2 s and flat: {verdict(max(extras) < 0.2)}"),
        ("redis-benchmark p99 alone / during inspections",
         f"{r['p99_quiet_ms']:.3f} / {r['p99_inspecting_ms']:.3f} ms", ""),
        ("peak RSS: runner / kernel", f"{r['rss_runner_mib']:.0f} / {r['rss_kernel_mib']:.0f} MiB", ""),
        *lock_rows,
        *fleet_table_rows,
        *archive_rows(r["archive"]),
        *ctrl_c_rows(r["ctrl_c"]),
        *gateway_rows(r["gateway"]),
        *rolling_rows(r["rolling"]),
    ]
    _print_table(rows, args.repeat, server)
    if args.json:
        print(json.dumps(r, indent=2, default=str))
    return 0


def _print_table(rows: list[tuple[str, str, str]], repeat: int, server: str) -> None:
    if not server:
        with Sandbox() as sb:
            server = runbook.identify(sb.client()).label
    print(f"machine: {platform.node()} {os.cpu_count()} cores, {platform.platform()}, "
          f"Python {platform.python_version()}")
    print(f"server: {server}; median of {repeat} runs")
    width = max(len(a) for a, _, _ in rows)
    for a, b, c in rows:
        print(f"{a:<{width}}  {b:>22}  {c}")


if __name__ == "__main__":
    sys.exit(main())
