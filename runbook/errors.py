"""The runbook's exceptions: one base, a few subclasses grouped by cause.

The runner maps them to exit codes: ParameterError -> 2, Blocked -> 3,
everything else -> 1.
"""

from __future__ import annotations


class RunbookError(Exception):
    """Base of every error the runbook raises on purpose."""


class ParameterError(RunbookError):
    """Raised when parameters are unknown, mistyped, unreadable or carry a secret."""


class PreconditionFailed(RunbookError):
    """Raised when the target is not in a state the step may act on."""


class TargetUnreachable(PreconditionFailed):
    """Raised when the target cannot be reached or refuses the credentials."""


class ChangeFailed(RunbookError):
    """Raised when a change was attempted and the server refused or failed it."""


class VerificationFailed(RunbookError):
    """Raised when a change looked applied but its effect could not be proven."""


class WaitTimeout(RunbookError):
    """Raised when a wait reached its deadline; the message says what was last seen."""


class Blocked(RunbookError):
    """Raised when a person must act (rights, a file out of reach); nothing was changed."""


class ArchiveError(RunbookError):
    """Raised when evidence could not be written to, or read from, the evidence archive."""
