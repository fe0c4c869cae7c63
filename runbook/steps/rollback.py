"""Undo a change recorded in the evidence archive: runtime settings, then the config file.

What the change did comes from its own records (the enable-aof and persist-config
summaries in the archive's index); nothing is guessed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from runbook.errors import Blocked, PreconditionFailed
from runbook.evidence.archive import archive_root, read_index
from runbook.evidence.journal import Interrupted, interrupted_runs
from runbook.model import UNDONE_BY_ROLLBACK, Check, Outcome, Status, StepSummary, worst
from runbook.server.configedit import atomic_write, read_raw, sha256_text, unified_diff
from runbook.server.configfile import read_config
from runbook.server.ops import restart_trap
from runbook.server.settings import compare, normalize
from runbook.server.target import Target

STEP = "rollback"


@dataclass(frozen=True)
class RollbackPlan:
    change_id: str
    runtime: tuple[tuple[str, str, str], ...]  # (setting, now, back to)
    config_file: str
    backup: str
    diff: str  # masked: the file now -> the backup
    blocked: str  # why a person must act, or ""
    notes: tuple[str, ...]
    #: The drift the rollback puts back: runtime as the change found it against the backup (or the file it left).
    state_before: tuple[str, ...] = ()
    #: The sha256 of the config file before the change, as persist-config recorded it ("" in older records).
    sha256_before: str = ""
    #: The data backup 05-backup took in the same change: location and each file's sha256 (or why it was skipped).
    data_backup: Mapping[str, Any] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not self.runtime and not self.backup


@dataclass(frozen=True)
class Recorded:
    """One step of a change, as its index record tells it."""

    step: str
    change_id: str
    summary: StepSummary
    interrupted: bool = False  # read from the intent of a run that never recorded its verdict


def from_intent(item: Interrupted) -> Recorded:
    """An interrupted enable-aof or persist-config as if it had changed what its intent names."""
    intent = item.intent
    facts: dict[str, Any] = {"changes": list(intent.get("changes") or [])}
    if item.step == "persist-config":
        facts.update(config_file=intent.get("config_file", ""), edited_file=intent.get("file", ""),
                     backup=intent.get("backup", ""), config_sha256_before=intent.get("config_sha256_before", ""),
                     config_sha256_after=intent.get("config_sha256_planned", ""))
    return Recorded(item.step, item.change_id, StepSummary(item.step, Status.INTERRUPTED, Outcome.CHANGED,
                                                           facts=facts), interrupted=True)


def find_change(records: list[dict[str, Any]], target: str, change_id: str = "") -> tuple[str, list[Recorded]]:
    """The steps of `change_id` (default: the latest change that changed something on `target`), from their
    records; an interrupted run (killed, or stopped by a signal) counts as having changed what its intent names."""
    stopped = {i.position: i for i in interrupted_runs(records)
               if i.target == target and i.step in UNDONE_BY_ROLLBACK and i.intent}
    changed: list[Recorded] = []
    for n, r in enumerate(records):
        if n in stopped:
            changed.append(from_intent(stopped[n]))
        elif r.get("target") == target and r.get("notebook") in UNDONE_BY_ROLLBACK:
            rec = Recorded(r["notebook"], r.get("change_id", ""), StepSummary.from_json(r.get("summary", {}),
                                                                                        r["notebook"]))
            if rec.summary.result == Outcome.CHANGED:
                changed.append(rec)
    if change_id:
        chosen = [r for r in changed if r.change_id == change_id]
        if not chosen:
            raise PreconditionFailed(f"no change {change_id} that changed {target} in the archive")
        return change_id, chosen
    if not changed:
        return "", []  # nothing was ever changed on this target: nothing to roll back
    latest = changed[-1].change_id
    return latest, [r for r in changed if r.change_id == latest]


def data_backup_of(records: list[dict[str, Any]], target: str, change_id: str) -> dict[str, Any]:
    """The data backup of change `change_id` on `target`: where it went and its files' sha256 (MANIFEST.json),
    or the reason it was skipped; {} when the change took none."""
    for r in reversed(records):
        if r.get("notebook") != "backup" or r.get("target") != target or r.get("change_id") != change_id:
            continue
        facts = StepSummary.from_json(r.get("summary", {}), "backup").facts
        if facts.get("skip_reason"):
            return {"skipped": facts["skip_reason"]}
        if facts.get("location") and facts.get("files"):
            return {"location": facts["location"],
                    "files": {name: meta.get("sha256", "") for name, meta in dict(facts["files"]).items()}}
    return {}


def plan_rollback(target: Target, *, change_id: str = "", archive: str = "") -> RollbackPlan:
    """Read the change from the archive and plan the way back (nothing is sent or written)."""
    records = read_index(archive_root(archive or None))
    cid, recs = find_change(records, target.name, change_id)
    sha_before = ""
    runtime = target.runtime_settings()
    steps: list[tuple[str, str, str]] = []
    notes: list[str] = [] if recs else [f"the archive holds no change that changed {target.name}: nothing to roll back"]
    backup, config_file, diff, blocked = "", "", "", ""
    for rec in recs:
        if rec.interrupted:
            notes.append(f"{rec.step} of change {cid} was interrupted before it recorded a verdict: what it did is "
                         "read from its intent")
        if rec.step == "enable-aof":
            for ch in rec.summary.setting_changes:
                now = runtime.get(ch.setting, "")
                if normalize(ch.setting, now) != normalize(ch.setting, ch.after):
                    notes.append(f"{ch.setting} is {now} now, not {ch.after} as the change left it: left alone")
                    continue
                if ch.before is None:
                    notes.append(f"{ch.setting}: the record does not say what it was before the change: left alone")
                    continue
                steps.append((ch.setting, now, ch.before))
            continue
        written = rec.summary.file_change
        if written is None:  # a record that says it changed the file but not which file, nor its backup
            blocked = f"the persist-config record of change {cid} names no file and no backup"
            continue
        if rec.interrupted and _untouched(written.written_file, written.sha256_before):
            notes.append(f"{written.written_file} is as it was before the change (sha256 {written.sha256_before[:16]}"
                         "...): the interrupted persist-config did not write it, nothing to restore")
            continue
        backup, config_file, sha_before = written.backup, written.written_file, written.sha256_before
        if not backup or not Path(backup).is_file():
            blocked = f"the backup {backup or '(none was kept)'} that persist-config made is not here"
            continue
        kept = sha256_text(read_raw(Path(backup)))
        if sha_before and kept != sha_before:
            blocked = (f"the backup {backup} is not the file as it was before the change {cid} (sha256 {kept}, "
                       f"recorded before the change: {sha_before}): it was overwritten or edited since. Find the "
                       "original file and restore it by hand")
            continue
        current = read_raw(Path(config_file))
        diff = unified_diff(current, read_raw(Path(backup)), config_file)
        if written.sha256_after and sha256_text(current) != written.sha256_after:
            blocked = (f"{config_file} changed after the change {cid} (someone edited it): restoring the backup "
                       "would undo that edit too. Compare the diff below, then restore by hand")
    steps.sort(key=lambda s: s[0] != "appendonly")  # appendonly first: AOF off before its settings go back
    if not blocked and steps:
        blocked = _trap_after(target, runtime, steps, config_file, backup)
    before, _ = drift_of(target, {**runtime, **{s: back for s, _, back in steps}}, backup or config_file)
    return RollbackPlan(cid, tuple(steps), config_file, backup, diff, blocked, tuple(notes), before, sha_before,
                        data_backup_of(records, target.name, cid) if cid else {})


def _untouched(path: str, sha256_before: str) -> bool:
    """Whether the file at `path` still has the bytes recorded before the change."""
    return bool(sha256_before) and os.access(path, os.R_OK) and sha256_text(read_raw(Path(path))) == sha256_before


def intent(plan: RollbackPlan, *, apply: bool = False) -> dict[str, Any] | None:
    """What `apply_rollback` is about to write, for `runbook.intend` (None when it writes nothing)."""
    if not apply or plan.blocked or plan.empty:
        return None
    parts = ([f"restore {plan.config_file} from {plan.backup}"] if plan.backup else []) + [
        f"CONFIG SET {s} {now} -> {back}" for s, now, back in plan.runtime]
    return {"summary": f"roll back change {plan.change_id}: " + "; ".join(parts), "change_id": plan.change_id,
            "changes": [{"setting": s, "from": now, "to": back} for s, now, back in plan.runtime],
            "config_file": plan.config_file, "backup": plan.backup}


def _trap_after(target: Target, runtime: dict[str, str], steps: list[tuple[str, str, str]], config_file: str,
                backup: str) -> str:
    """Why the state after the rollback would be the restart trap (file yes, AOF off), or ""."""
    aof_after = next((back for setting, _, back in steps if setting == "appendonly"), runtime.get("appendonly", "no"))
    source = backup or config_file or target.identify().config_file
    if not source or not os.access(source, os.R_OK):
        return ""
    file_after = (read_config(source).value("appendonly") or "no").lower()
    if file_after == "yes" and aof_after != "yes":
        return (f"after this rollback {config_file or source} would say appendonly yes while AOF is off at "
                "runtime: a restart would load a stale AOF and ignore dump.rdb. Set appendonly no in the file "
                "first (or roll back the change that wrote it), then run again")
    return ""


def apply_rollback(target: Target, plan: RollbackPlan, *, apply: bool = False) -> Outcome:
    """Put the runtime settings back, then the file; returns planned, done, nothing or blocked."""
    if plan.blocked:
        return Outcome.BLOCKED
    if plan.empty:
        return Outcome.NOTHING
    if not apply:
        return Outcome.PLANNED
    if plan.backup:
        path = Path(plan.config_file)
        atomic_write(path, read_raw(Path(plan.backup)))
    for setting, _, back in plan.runtime:
        target.config_set(setting, back)
    return Outcome.DONE


def verify_rollback(target: Target, plan: RollbackPlan, result: Outcome) -> tuple[Check, ...]:
    """Runtime as before the change, file identical to its backup, and no restart trap left."""
    if result != Outcome.DONE:
        return (Check("nothing_changed", Status.PASS, f"{result}: nothing was sent or written"),)
    runtime = target.runtime_settings()
    checks = []
    off = [f"{s} is {runtime.get(s)} (wanted {b})" for s, _, b in plan.runtime
           if normalize(s, runtime.get(s)) != normalize(s, b)]
    checks.append(Check("runtime_restored", Status.FAIL if off else Status.PASS,
                        "; ".join(off) or "runtime settings as before the change"))
    if plan.backup:
        checks.append(file_restored(plan))
    trap = restart_trap(target)
    checks.append(Check("no_restart_trap", Status.FAIL if trap else Status.PASS,
                        trap or "a restart now would load the data"))
    checks.append(state_restored(target, plan))
    return tuple(checks)


def file_restored(plan: RollbackPlan) -> Check:
    """The config file now is exactly the file before the change: its sha256 equals the one persist-config
    recorded before it wrote (records without one: the file equals the backup, byte for byte)."""
    now = sha256_text(read_raw(Path(plan.config_file)))
    if not plan.sha256_before:
        same = now == sha256_text(read_raw(Path(plan.backup)))
        return Check("file_restored", Status.PASS if same else Status.FAIL,
                     f"{plan.config_file} is byte for byte the backup {Path(plan.backup).name} (the change's record "
                     "holds no sha256 of the file before it)" if same
                     else f"{plan.config_file} differs from its backup")
    if now == plan.sha256_before:
        return Check("file_restored", Status.PASS, f"{plan.config_file} is byte for byte the file before the change "
                     f"(sha256 {now[:16]}..., as recorded before the change; from {Path(plan.backup).name})")
    return Check("file_restored", Status.FAIL, f"{plan.config_file} is NOT the file before the change: sha256 {now}, "
                 f"recorded before the change {plan.sha256_before}",
                 f"restore the original by hand; the backup was {plan.backup}")


def drift_of(target: Target, runtime: dict[str, str], config_file: str = "") -> tuple[tuple[str, ...], str]:
    """Each setting where `runtime` and the file (default: the one the server was started with) differ, as
    'appendonly yes at runtime, no in the file'; or why the file could not be compared."""
    ident = target.identify()
    path = config_file or ident.config_file
    if not path:
        return (), "the server runs without a config file"
    if not target.local:
        return (), f"the target is not on this host, so {path} cannot be read here"
    try:
        config = read_config(path)
    except PreconditionFailed as err:
        return (), str(err)
    return tuple(f"{d.setting} {d.runtime} at runtime, {d.file} in the file"
                 for d in compare(runtime, config, ident.major) if d.status == "drift"), ""


def state_restored(target: Target, plan: RollbackPlan) -> Check:
    """The drift now against the drift before the change: the same is a rollback done (warn when that state had
    drift: the rollback put it back), anything else fails."""
    name = "state_restored"
    now, error = drift_of(target, target.runtime_settings(), plan.config_file)
    if error:
        return Check(name, Status.WARN, f"runtime not compared with the config file: {error}",
                     "compare CONFIG GET with the config file by hand")
    if now != plan.state_before:
        return Check(name, Status.FAIL, f"not the state before the change: now {'; '.join(now) or 'no drift'}, "
                     f"before {'; '.join(plan.state_before) or 'no drift'}",
                     "compare CONFIG GET and the config file with the change's records and fix by hand")
    if now:
        return Check(name, Status.WARN, f"the state before the change is back: {'; '.join(now)}, as the change "
                     "found it", "that drift predates the change: run 02-enable-aof and 03-persist-config again "
                     "to fix it")
    return Check(name, Status.PASS, "the state before the change is back: the config file matches the runtime "
                 "persistence settings")


def raise_if_blocked(target: Target, plan: RollbackPlan, result: Outcome) -> None:
    if result == Outcome.BLOCKED:
        raise Blocked(f"{target.name}: {plan.blocked}. Nothing was changed.")


def rollback_summary(plan: RollbackPlan, result: Outcome, checks: tuple[Check, ...]) -> StepSummary:
    verdict = Status.BLOCKED if result == Outcome.BLOCKED else worst([c.status for c in checks])
    return StepSummary(STEP, verdict, result, checks=checks, facts={
        "change_id": plan.change_id,
        "runtime": [{"setting": s, "from": n, "to": b} for s, n, b in plan.runtime],
        "config_file": plan.config_file, "backup": plan.backup, "config_sha256_before": plan.sha256_before,
        "data_backup": dict(plan.data_backup), "diff": plan.diff, "blocked": plan.blocked,
        "notes": list(plan.notes), "restored_drift": list(plan.state_before) if result == Outcome.DONE else [],
    })
