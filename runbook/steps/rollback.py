"""Undo a change recorded in the evidence archive: runtime settings, then the config file.

What the change did comes from its own records (the enable-aof and persist-config
summaries in index.jsonl); nothing is guessed.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runbook.evidence.archive import archive_root, read_index
from runbook.steps.checks import FAIL, PASS, Check, worst
from runbook.server.configedit import atomic_write, read_raw, unified_diff
from runbook.server.configfile import read_config
from runbook.steps.test_persistence import restart_trap
from runbook.errors import Blocked, PreconditionFailed
from runbook.server.settings import config_set, normalize, runtime_settings
from runbook.server.target import Target, identify


@dataclass(frozen=True)
class RollbackPlan:
    change_id: str
    runtime: tuple[tuple[str, str, str], ...]  # (setting, now, back to)
    config_file: str
    backup: str
    diff: str  # masked: the file now -> the backup
    blocked: str  # why a person must act, or ""
    notes: tuple[str, ...]

    @property
    def empty(self) -> bool:
        return not self.runtime and not self.backup


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", errors="surrogateescape")).hexdigest()


def find_change(records: list[dict[str, Any]], target: str, change_id: str = "") -> tuple[str, list[dict[str, Any]]]:
    """The records of `change_id` (default: the latest change that changed something on `target`)."""
    changed = [r for r in records if r.get("target") == target and r.get("notebook") in ("enable-aof", "persist-config")
               and r.get("summary", {}).get("result") == "changed"]
    if change_id:
        chosen = [r for r in changed if r.get("change_id") == change_id]
        if not chosen:
            raise PreconditionFailed(f"no change {change_id} that changed {target} in the archive")
        return change_id, chosen
    if not changed:
        return "", []  # nothing was ever changed on this target: nothing to roll back
    latest = changed[-1]["change_id"]
    return latest, [r for r in changed if r["change_id"] == latest]


def plan_rollback(target: Target, *, change_id: str = "", archive: str = "") -> RollbackPlan:
    """Read the change from the archive and plan the way back (nothing is sent or written)."""
    records = read_index(archive_root(archive or None))
    cid, recs = find_change(records, target.name, change_id)
    runtime = runtime_settings(target.client, target.config_command)
    steps: list[tuple[str, str, str]] = []
    notes: list[str] = [] if recs else [f"the archive holds no change that changed {target.name}: nothing to roll back"]
    backup, config_file, diff, blocked = "", "", "", ""
    for rec in recs:
        summary = rec["summary"]
        if rec["notebook"] == "enable-aof":
            for ch in summary.get("changes", []):
                now = runtime.get(ch["setting"], "")
                if normalize(ch["setting"], now) != normalize(ch["setting"], ch["to"]):
                    notes.append(f"{ch['setting']} is {now} now, not {ch['to']} as the change left it: left alone")
                    continue
                steps.append((ch["setting"], now, ch["from"]))
        else:
            backup, config_file = summary.get("backup", ""), summary.get("edited_file") or summary.get("config_file", "")
            if not backup or not Path(backup).is_file():
                blocked = f"the backup {backup or '(none was kept)'} that persist-config made is not here"
                continue
            current = read_raw(Path(config_file))
            diff = unified_diff(current, read_raw(Path(backup)), config_file)
            if summary.get("config_sha256_after") and _sha(current) != summary["config_sha256_after"]:
                blocked = (f"{config_file} changed after the change {cid} (someone edited it): restoring the backup "
                           "would undo that edit too. Compare the diff below, then restore by hand")
    steps.sort(key=lambda s: s[0] != "appendonly")  # appendonly first: AOF off before its settings go back
    if not blocked and steps:
        blocked = _trap_after(target, runtime, steps, config_file, backup)
    return RollbackPlan(cid, tuple(steps), config_file, backup, diff, blocked, tuple(notes))


def _trap_after(target: Target, runtime: dict[str, str], steps: list[tuple[str, str, str]], config_file: str,
                backup: str) -> str:
    """Why the state after the rollback would be the restart trap (file yes, AOF off), or ""."""
    aof_after = next((back for setting, _, back in steps if setting == "appendonly"), runtime.get("appendonly", "no"))
    source = backup or config_file or identify(target.client).config_file
    if not source or not os.access(source, os.R_OK):
        return ""
    file_after = (read_config(source).value("appendonly") or "no").lower()
    if file_after == "yes" and aof_after != "yes":
        return (f"after this rollback {config_file or source} would say appendonly yes while AOF is off at "
                "runtime: a restart would load a stale AOF and ignore dump.rdb. Set appendonly no in the file "
                "first (or roll back the change that wrote it), then run again")
    return ""


def apply_rollback(target: Target, plan: RollbackPlan, *, apply: bool = False) -> str:
    """Put the runtime settings back, then the file; returns planned, done or blocked."""
    if plan.blocked:
        return "blocked"
    if not apply or plan.empty:
        return "planned" if not plan.empty else "nothing"
    if plan.backup:
        path = Path(plan.config_file)
        atomic_write(path, read_raw(Path(plan.backup)))
    for setting, _, back in plan.runtime:
        config_set(target.client, setting, back, target.config_command)
    return "done"


def verify_rollback(target: Target, plan: RollbackPlan, result: str) -> tuple[Check, ...]:
    """Runtime as before the change, file identical to its backup, and no restart trap left."""
    if result != "done":
        return (Check("nothing_changed", PASS, f"{result}: nothing was sent or written"),)
    runtime = runtime_settings(target.client, target.config_command)
    checks = []
    off = [f"{s} is {runtime.get(s)} (wanted {b})" for s, _, b in plan.runtime if normalize(s, runtime.get(s)) != normalize(s, b)]
    checks.append(Check("runtime_restored", FAIL if off else PASS, "; ".join(off) or "runtime settings as before the change"))
    if plan.backup:
        same = read_raw(Path(plan.config_file)) == read_raw(Path(plan.backup))
        checks.append(Check("file_restored", PASS if same else FAIL,
                            f"{plan.config_file} is byte for byte the backup {Path(plan.backup).name}" if same
                            else f"{plan.config_file} differs from its backup"))
    trap = restart_trap(target)
    checks.append(Check("no_restart_trap", FAIL if trap else PASS, trap or "a restart now would load the data"))
    # The same drift check as the inspection: the state the change started from, seen again.
    from runbook.steps.inspect import inspect_target  # noqa: PLC0415  (avoid an import cycle)

    checks.append(next(c for c in inspect_target(target).checks if c.name == "config_drift"))
    return tuple(checks)


def raise_if_blocked(target: Target, plan: RollbackPlan, result: str) -> None:
    if result == "blocked":
        raise Blocked(f"{target.name}: {plan.blocked}. Nothing was changed.")


def rollback_summary(plan: RollbackPlan, result: str, checks: tuple[Check, ...]) -> dict[str, Any]:
    return {"verdict": "blocked" if result == "blocked" else worst([c.status for c in checks]),
            "result": result, "change_id": plan.change_id,
            "runtime": [{"setting": s, "from": n, "to": b} for s, n, b in plan.runtime],
            "config_file": plan.config_file, "backup": plan.backup, "diff": plan.diff, "blocked": plan.blocked,
            "notes": list(plan.notes),
            "checks": {c.name: {"status": c.status, "observed": c.observed, "fix": c.fix} for c in checks}}
