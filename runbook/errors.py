"""The runbook's exceptions: one base, a few subclasses grouped by cause, each carrying its exit code.

As click does, the exit code is on the exception class; the runner and `cli.main` read it there
(`exit_code_for` for an error a notebook raised, known only by its class name) and nobody else
decides one. A step that ends without raising exits by its status (`exit_code_for_status`).
"""

from __future__ import annotations

from enum import IntEnum
from typing import ClassVar

from runbook.model import Status


class ExitCode(IntEnum):
    """The `runbook` command's exit codes (README and docs/run-all.md: Exit codes)."""

    OK = 0
    FAILED = 1  # a check failed, a guard refused, or a notebook raised
    USAGE = 2  # usage or parameter error; nothing was changed
    BLOCKED = 3  # a person must act; nothing was changed
    CHANGES_PENDING = 4  # `run --detailed-exitcode` only: the plan completed and found something to change


class RunbookError(Exception):
    """Base of every error the runbook raises on purpose."""

    exit_code: ClassVar[ExitCode] = ExitCode.FAILED


class ParameterError(RunbookError):
    """Raised when parameters are unknown, mistyped, unreadable or carry a secret."""

    exit_code = ExitCode.USAGE


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


class NoReply(WaitTimeout):
    """Raised when the server did not answer a call before its deadline (frozen, overloaded or cut off)."""


class Blocked(RunbookError):
    """Raised when a person must act (rights, a file out of reach); nothing was changed."""

    exit_code = ExitCode.BLOCKED


class ChangeInterrupted(RunbookError):
    """Raised when an interrupt (SIGINT, or the runner passing on SIGTERM) stopped a change midway; the message
    says what was put back, or what is left."""

    #: The sentences of a message whose change was put back in full, or never sent (`runbook.server.aof`).
    LEFT_AS_FOUND = "The server was left as found: "
    NOTHING_SENT = "Nothing had been changed."

    @classmethod
    def put_back(cls, message: str) -> str:
        """The sentence of `message` (this error's) saying nothing is left to undo, or "" when something may be."""
        for sentence in (cls.LEFT_AS_FOUND, cls.NOTHING_SENT):
            if sentence in message:
                return message[message.index(sentence):].strip()
        return ""


class ArchiveError(RunbookError):
    """Raised when evidence could not be written to, or read from, the evidence archive."""


def exit_code_for(ename: str) -> ExitCode:
    """The exit code of the runbook exception class named `ename` (as papermill reports a notebook's
    error); FAILED for any other exception."""
    cls = globals().get(ename)
    if isinstance(cls, type) and issubclass(cls, RunbookError):
        return cls.exit_code
    return ExitCode.FAILED


def exit_code_for_status(status: Status, *, fail_on_warn: bool = False) -> ExitCode:
    """The exit code of a step that ended with `status` (a warning fails only with --fail-on warn)."""
    if status == Status.BLOCKED:
        return Blocked.exit_code
    if status in (Status.FAIL, Status.ERROR, Status.INTERRUPTED) or (status == Status.WARN and fail_on_warn):
        return ExitCode.FAILED
    return ExitCode.OK
