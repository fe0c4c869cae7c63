"""The gateway keeps working during the change (issue 19): real LiteLLM traffic (its Router with Redis usage
counters and the Redis response cache, mock deployments, no network) against a server of 1,000,000 keys while
`runbook run enable-aof persist-config -p apply true` runs beside it.

Asserted: the run passes; AOF is on at runtime and in the file; no client error (`gateway_traffic.Traffic.errors`);
requests were served while the server was writing its initial AOF (the window its own log gives); every completion
was counted in Redis; cache hits came from Redis. The client's latency during the change is reported beside the
runbook's own PING probe (the enable-aof summary's `latency` fact), printed and written to
test-artifacts/gateway-traffic.json, never asserted (benchmarks/bench.py --only gateway measures it).
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest
from conftest import binary_or_skip
from gateway_traffic import change_under_traffic, counters, drive, gateway_server, missing_modules, rewrite_window
from helpers import REPO, switch_aof_on

import runbook
from runbook.server.configfile import read_config

KEYS = 1_000_000
ARTIFACT = REPO / "test-artifacts" / "gateway-traffic.json"


@pytest.fixture(scope="module")
def litellm_ready() -> None:
    """LiteLLM and what its cache-hit path imports (the `gateway` extra): skipped where absent, a failure under CI,
    which installs the extra (as conftest.binary_or_skip for servers)."""
    missing = missing_modules()
    if not missing:
        return
    reason = (f"{', '.join(missing)} not importable: install the gateway extra "
              "(.venv/bin/pip install -e '.[test,gateway]'; .ci/run does)")
    if os.environ.get("CI"):
        pytest.fail(f"CI must run the gateway traffic test: {reason}")
    pytest.skip(reason)


@pytest.mark.notebook
@pytest.mark.parametrize("label", ["redis-7", "valkey-9"])
def test_gateway_traffic_during_the_change(label: str, litellm_ready: None, clean_env, tmp_path: Path) -> None:
    sb, seed_s = gateway_server(binary_or_skip(label), tmp_path / "server", KEYS)
    try:
        client = sb.client()
        server = runbook.identify(client).label
        run = change_under_traffic(sb, tmp_path / "archive", check_cache=True)
        assert run.exit_code == 0, run.stderr[-3000:]

        # The change happened: AOF on at runtime, and in the file the server boots from.
        assert int(client.info("persistence")["aof_enabled"]) == 1
        assert read_config(sb.config_path).value("appendonly") == "yes"
        assert client.dbsize() >= KEYS

        # The gateway kept working: not one client error, and it was busy while the server wrote its initial AOF
        # (cache hits and routed completions both), from before the run started to after it ended.
        traffic = run.traffic
        assert traffic.errors() == [], traffic.errors()[:10]
        rewrite = run.rewrite()
        assert run.start <= rewrite[0] <= rewrite[1] <= run.end
        assert traffic.requests[0].start < run.start and traffic.requests[-1].end > run.end
        during_rewrite = traffic.overlapping(*rewrite)
        assert any(r.cached_prompt for r in during_rewrite) and any(not r.cached_prompt for r in during_rewrite)

        # LiteLLM really used this Redis: every completion counted in the router's rpm counters there (a lost
        # increment would leave the sum short), tpm counters too, and the cache hits came from its keys.
        assert traffic.counted == traffic.made and sum(counters(client, "rpm").values()) == traffic.made
        assert counters(client, "tpm")
        assert traffic.hit_before_delete and traffic.deleted >= 16 and not traffic.hit_after_delete

        report = {"server": server, "keys": KEYS, "seed_s": round(seed_s, 2), **run.report()}
        print(f"\n{label}: {json.dumps(report)}")
        ARTIFACT.parent.mkdir(exist_ok=True)
        previous = json.loads(ARTIFACT.read_text()) if ARTIFACT.exists() else {}
        ARTIFACT.write_text(json.dumps({**previous, label: report}, indent=1) + "\n")
    finally:
        sb.cleanup()


def test_a_restart_during_the_traffic_is_seen(litellm_ready: None, default_binary: Path, tmp_path: Path) -> None:
    """The checks above can fail: a change that restarts the server (what the runbook never does) makes client errors
    and loses counted completions, and a rewrite done before the traffic started overlaps none of it."""
    sb, _ = gateway_server(default_binary, tmp_path / "server", 10_000)
    try:
        switch_aof_on(sb.client())  # written before the traffic starts
        _, traffic = asyncio.run(drive(sb.port, sb.restart, lead_s=0.5, count_wait_s=1.0))
        assert traffic.errors(), "a restart under the traffic went unnoticed"
        assert 0 <= traffic.counted < traffic.made  # the increments sent while it was down are lost
        assert not traffic.overlapping(*rewrite_window(sb.log_text()))
    finally:
        sb.cleanup()
