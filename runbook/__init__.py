"""Redis persistence runbook: inspect, change and test persistence, with archived evidence.

The notebooks call these; `runbook.report` holds their tables and plots.
"""

from .aof import aof_on_disk, enable_aof_runtime, parse_manifest, wait_aof_ready
from .checks import Check, worst
from .configfile import mask_secrets, read_config
from .errors import (
    Blocked,
    ChangeFailed,
    ParameterError,
    PreconditionFailed,
    RunbookError,
    TargetUnreachable,
    VerificationFailed,
    WaitTimeout,
)
from .evidence import read_summary, record
from .inspection import Inspection, inspect_target
from .sandbox import Sandbox, seed_sandbox
from .target import Target, connect, identify

__version__ = "0.1.0"

__all__ = [
    "Blocked", "ChangeFailed", "Check", "Inspection", "ParameterError", "PreconditionFailed",
    "RunbookError", "Sandbox", "Target", "TargetUnreachable", "VerificationFailed", "WaitTimeout",
    "aof_on_disk", "connect", "enable_aof_runtime", "identify", "inspect_target", "mask_secrets",
    "parse_manifest", "read_config", "read_summary", "record", "seed_sandbox", "wait_aof_ready", "worst",
]
