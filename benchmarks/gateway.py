"""The gateway during the change (issue 19): real LiteLLM traffic (Router, Redis usage counters, Redis response cache,
mock deployments) against a server of 1,000,000 keys while `runbook run enable-aof persist-config -p apply true`
runs; the client's latency p50/p99 before the change, during the run and during the server's AOF rewrite, beside
the runbook's own PING probe. The traffic is tests/gateway_traffic.py's, the test's (tests/test_gateway_traffic.py).

Needs the `gateway` extra (`pip install -e '.[test,gateway]'`); without it the rows say so.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the traffic and its runbook call are the test's own helpers

from gateway_traffic import change_under_traffic, gateway_server, missing_modules  # noqa: E402

from runbook.sandbox.binaries import find_server_binary  # noqa: E402

KEYS = 1_000_000
#: (row, the report's latency entry)
FIGURES = (
    ("client before the change", "client_before_change_ms"),
    ("client during the run (kernel start to exit)", "client_during_run_ms"),
    ("client during the server's AOF rewrite", "client_during_rewrite_ms"),
    ("the runbook's PING probe (enable-aof)", "runbook_ping_probe_ms"),
)


def gateway_costs(repeat: int) -> dict[str, Any]:
    """Median over `repeat` changes (a new server each) of each figure; {"skipped": reason} without LiteLLM."""
    missing = missing_modules()
    if missing:
        return {"skipped": f"{', '.join(missing)} not installed (pip install -e '.[test,gateway]')"}
    reports = []
    for _ in range(repeat):
        work = Path(tempfile.mkdtemp(prefix="runbook-bench-gateway-"))
        sb, seed_s = gateway_server(find_server_binary(), work / "server", KEYS)
        try:
            run = change_under_traffic(sb, work / "archive")
            if run.exit_code != 0 or run.traffic.errors():
                raise RuntimeError(f"the change under traffic failed (exit {run.exit_code}): "
                                   f"{run.traffic.errors()[:3] or run.stderr[-500:]}")
            reports.append({"seed_s": seed_s, **run.report()})
        finally:
            sb.cleanup()
    out: dict[str, Any] = {k: statistics.median(r[k] for r in reports)
                           for k in ("seed_s", "run_s", "aof_rewrite_s", "requests", "requests_during_rewrite")}
    for _, key in FIGURES:
        out[key] = {q: statistics.median(r[key][q] for r in reports) for q in ("p50_ms", "p99_ms", "samples")}
    out["client_errors"] = 0
    return out


def rows(costs: dict[str, Any]) -> list[tuple[str, str, str]]:
    """The table rows: p50 / p99 of each, reported (no target: the check is zero client errors)."""
    if "skipped" in costs:
        return [("gateway traffic during enable-aof + persist-config", "skipped", costs["skipped"])]
    out = [("gateway traffic during enable-aof + persist-config, 1M keys",
            f"{costs['requests']:.0f} requests, {costs['client_errors']} errors",
            f"rewrite {costs['aof_rewrite_s']:.2f} s ({costs['requests_during_rewrite']:.0f} requests in it), "
            f"run {costs['run_s']:.1f} s, seed {costs['seed_s']:.1f} s")]
    for name, key in FIGURES:
        c = costs[key]
        out.append((f"  {name}: p50 / p99", f"{c['p50_ms']:.2f} / {c['p99_ms']:.2f} ms", f"{c['samples']:.0f} samples"))
    return out
