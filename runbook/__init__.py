"""Redis persistence runbook: inspect, change and test persistence, with archived evidence.

The notebook-facing API. The notebooks call these, and one module per step
(`runbook.steps.enable_aof`, ...); `runbook.evidence.report` holds their tables and plots.
Layers, top to bottom: cli, orchestration, steps, evidence and sandbox, server, model and errors.
"""

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
from runbook.evidence.journal import intend
from runbook.evidence.summary import read_summary, record
from runbook.model import Check, ConnectionSpec, Outcome, Status, StepSummary, worst
from runbook.orchestration.interactive import use_params
from runbook.sandbox.handoff import connect
from runbook.sandbox.seed import seed_sandbox
from runbook.sandbox.throwaway import Sandbox
from runbook.server.aof import aof_on_disk, parse_manifest
from runbook.server.configfile import mask_secrets, read_config
from runbook.server.target import Target, identify
from runbook.steps.inspect import Inspection, discover_group, inspect_target

__version__ = "0.1.0"

__all__ = [
    "Blocked", "ChangeFailed", "Check", "ConnectionSpec", "Inspection", "Outcome", "ParameterError",
    "PreconditionFailed", "RunbookError", "Sandbox", "Status", "StepSummary", "Target", "TargetUnreachable",
    "VerificationFailed", "WaitTimeout", "aof_on_disk", "connect", "discover_group", "identify",
    "inspect_target", "intend", "mask_secrets", "parse_manifest", "read_config", "read_summary", "record",
    "seed_sandbox", "use_params", "worst",
]
