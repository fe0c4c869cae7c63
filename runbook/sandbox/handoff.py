"""`target: sandbox`: the throwaway server of a run, shared with every notebook of it, or one started here.

The runner starts one sandbox per run and hands its address to the kernel, either in
$RUNBOOK_SANDBOX_URL / $RUNBOOK_SANDBOX_DIR or in the JSON file named by $RUNBOOK_SANDBOX_FILE
(written once the sandbox is up, so the kernel may start earlier). Opened by hand (JupyterLab,
nbval), a notebook starts its own, removed when the kernel exits.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
from pathlib import Path
from typing import Any

from runbook.model import ConnectionSpec
from runbook.sandbox.seed import seed_sandbox
from runbook.server.target import Target
from runbook.server.target import connect as connect_url

log = logging.getLogger(__name__)

SANDBOX_URL_ENV = "RUNBOOK_SANDBOX_URL"
SANDBOX_DIR_ENV = "RUNBOOK_SANDBOX_DIR"
SANDBOX_FILE_ENV = "RUNBOOK_SANDBOX_FILE"


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
    sandbox = seed_sandbox(spec.sandbox_scenario)
    atexit.register(sandbox.cleanup)
    log.info("started a %s sandbox at %s", spec.sandbox_scenario, sandbox.url)
    return connect_url(spec, url=sandbox.url, sandbox_dir=sandbox.root, owner=sandbox)


def share(url: str, root: Path, handoff: Path) -> None:
    """Tell the run's kernel where its sandbox is (the file named by $RUNBOOK_SANDBOX_FILE)."""
    handoff.write_text(json.dumps({"url": url, "dir": str(root)}))
