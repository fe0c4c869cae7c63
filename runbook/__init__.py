"""Redis persistence runbook: inspect, change and test persistence, with archived evidence.

The notebooks call these; `runbook.evidence.report` holds their tables and plots.
"""

from runbook.server.aof import aof_on_disk, enable_aof_runtime, parse_manifest, wait_aof_ready
from runbook.steps.checks import Check, worst
from runbook.server.configfile import mask_secrets, read_config
from runbook.errors import (
    Blocked,
    ChangeFailed,
    ParameterError,
    PreconditionFailed,
    RunbookError,
    TargetUnreachable,
    VerificationFailed,
    WaitTimeout,
)
from runbook.evidence.summary import read_summary, record
from runbook.steps.inspect import Inspection, inspect_target
from runbook.sandbox.throwaway import Sandbox, seed_sandbox
from runbook.server.target import Target, connect, identify

__version__ = "0.1.0"

__all__ = [
    "Blocked", "ChangeFailed", "Check", "Inspection", "ParameterError", "PreconditionFailed",
    "RunbookError", "Sandbox", "Target", "TargetUnreachable", "VerificationFailed", "WaitTimeout",
    "aof_on_disk", "connect", "enable_aof_runtime", "identify", "inspect_target", "mask_secrets",
    "parse_manifest", "read_config", "read_summary", "record", "seed_sandbox", "wait_aof_ready", "worst",
]
