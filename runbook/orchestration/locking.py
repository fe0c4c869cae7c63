"""The server locks of one run (`runbook.server.lock`): one change at a time per server.

A target's lock is taken before its first step that may change it and held to the end of the run, so the
whole change (backup, enable-aof, persist-config, the proof, the inspection after) is one change to any
other runner: a second change is refused at its first changing step, before it sends or writes anything.
Read-only steps (inspect, the online test, fleet inspections, plan-only runs) never take it and are never
refused.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from runbook.model import CHANGING_STEPS, ConnectionSpec
from runbook.orchestration.plan import Step, effective
from runbook.sandbox.handoff import connect
from runbook.server.lock import Holder, NoLockHere, ServerLock, acquire

log = logging.getLogger(__name__)


def may_change(step: Step) -> bool:
    """Whether `step` may change its target: a changing step with apply (a backup skipped with a reason does
    not), or the restart test with apply. Fleet steps only inspect or test online; without apply (a plan) no
    step changes anything."""
    if step.fleet:
        return False
    if step.name == "test-persistence":
        return effective(step, "mode") == "restart" and bool(effective(step, "apply"))
    if step.name == "backup" and str(effective(step, "skip_backup") or "").strip():
        return False
    return step.name in CHANGING_STEPS and bool(effective(step, "apply"))


class RunLocks:
    """The locks one run holds, by target; released (if still ours) when the run ends, however it ends."""

    def __init__(self, change_id: str) -> None:
        self.change_id = change_id
        self.held: dict[str, ServerLock | None] = {}  # None: the server takes no key (NoLockHere)
        self.why_none: dict[str, str] = {}
        self.acquire_ms: dict[str, float] = {}

    def take(self, step: Step) -> None:
        """Hold the lock of `step`'s target when the step may change it (once per run and target).

        Raises Blocked (exit 3) naming the holder when another change holds it; a RunbookError when the target
        cannot be reached or refuses the lock. Nothing has been sent that changes the server then.
        """
        if not may_change(step):
            return
        target = str(effective(step, "target"))
        if target in self.held:
            return
        t0 = time.perf_counter()
        server = connect(ConnectionSpec.from_parameters(step.parameters))
        try:
            self.held[target] = acquire(server.client, Holder.here(self.change_id), name=target)  # owns the client
        except NoLockHere as err:
            log.warning("%s: %s; the change goes ahead unlocked", target, err)
            self.held[target], self.why_none[target] = None, str(err)
            server.client.close()
        except BaseException:
            server.client.close()
            raise
        self.acquire_ms[target] = round((time.perf_counter() - t0) * 1000, 2)

    def fact(self, target: str) -> dict[str, Any] | None:
        """The lock `target`'s records show, None when the run holds none for it."""
        if target not in self.held:
            return None
        held = self.held[target]
        if held is None:
            return {"key": "", "not_taken": self.why_none.get(target, "")}
        return {**held.fact(), "acquire_ms": self.acquire_ms.get(target)}

    def release(self) -> None:
        for target, held in self.held.items():
            if held is not None and not held.release():
                log.warning("%s: the lock %s was no longer this run's at release%s", target, held.key,
                            f" ({held.lost})" if held.lost else "")

    def __enter__(self) -> RunLocks:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
