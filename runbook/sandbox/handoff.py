"""`target: sandbox`: the throwaway server of a run, shared with every notebook of it, or one started here.

The runner starts one sandbox per run and hands its address to the kernel, either in
$RUNBOOK_SANDBOX_URL / $RUNBOOK_SANDBOX_DIR or in the JSON file named by $RUNBOOK_SANDBOX_FILE
(written once the sandbox is up, so the kernel may start earlier). Opened by hand (JupyterLab,
nbval), a notebook starts its own: one per kernel, so a cell run again stops the one it started before
starting the next, and the last one is removed when the kernel exits.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
from pathlib import Path
from typing import Any, Sequence

from runbook.model import ConnectionSpec
from runbook.sandbox.seed import seed_sandbox
from runbook.sandbox.throwaway import Sandbox
from runbook.server.target import Target
from runbook.server.target import connect as connect_url

log = logging.getLogger(__name__)

SANDBOX_URL_ENV = "RUNBOOK_SANDBOX_URL"
SANDBOX_DIR_ENV = "RUNBOOK_SANDBOX_DIR"
SANDBOX_FILE_ENV = "RUNBOOK_SANDBOX_FILE"

#: The sandboxes this process started for itself, by what started them (`connect`, the fleet's demo).
_OWN: dict[str, list[Sandbox]] = {}


def connect(spec: ConnectionSpec | str = "sandbox", **fields: Any) -> Target:
    """Connect to the target of `spec` (a ConnectionSpec, or a target URL with spec fields as keywords),
    starting or finding the sandbox when the target is `sandbox`. See `runbook.server.target.connect`."""
    if not isinstance(spec, ConnectionSpec):
        spec = ConnectionSpec(spec, **fields)
    elif fields:
        spec = spec.replace(**fields)
    if spec.target != "sandbox":
        return connect_url(spec)
    url = os.environ.get(SANDBOX_URL_ENV, "")
    handoff = Path(os.environ.get(SANDBOX_FILE_ENV, "") or "/nonexistent")
    if url:
        return connect_url(spec, url=url, sandbox_dir=Path(os.environ.get(SANDBOX_DIR_ENV, ".")))
    if handoff.is_file():
        shared = json.loads(handoff.read_text())
        return connect_url(spec, url=shared["url"], sandbox_dir=Path(shared["dir"]))
    (sandbox,) = start_own("connect", [spec.sandbox_scenario])
    log.info("started a %s sandbox at %s", spec.sandbox_scenario, sandbox.url)
    return connect_url(spec, url=sandbox.url, sandbox_dir=sandbox.root, owner=sandbox)


def start_own(role: str, scenarios: Sequence[str], keys: int = 3000) -> list[Sandbox]:
    """Seeded sandboxes for `role`, one per scenario, after stopping those this process started for it before
    (a notebook cell run again, JupyterLab's Run All twice: one set per kernel, never one more per run)."""
    stop_own(role)
    started = _OWN.setdefault(role, [])
    for scenario in scenarios:
        started.append(seed_sandbox(scenario, keys=keys))
    return list(started)


def stop_own(role: str | None = None) -> None:
    """Stop and remove the sandboxes this process started for `role` (None: all of them)."""
    for name in [role] if role is not None else list(_OWN):
        for sandbox in _OWN.pop(name, []):
            log.info("stopping the sandbox at %s (started here for %s)", sandbox.url, name)
            sandbox.cleanup()


atexit.register(stop_own)  # the last set goes when the kernel exits (a killed kernel's die with it: PDEATHSIG)


def share(url: str, root: Path, handoff: Path) -> None:
    """Tell the run's kernel where its sandbox is (the file named by $RUNBOOK_SANDBOX_FILE)."""
    handoff.write_text(json.dumps({"url": url, "dir": str(root)}))
