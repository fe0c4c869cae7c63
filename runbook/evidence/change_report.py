"""One change report per change id: what an auditor reads and signs, written into the archive at the end of a run.

Built from plain data: the change's records (as the runner holds them, or as the index has them: `load`) and what
the runner knows beyond them (`RunFacts`: the run's verdict, who ran it, the commands it sent itself). The page
(`runbook.evidence.change_page`) says at the top, in one screen: the verdict, change id, targets, who ran it and from
which commit, UTC start and end, what changed setting by setting (runtime or file, before -> after), the write
commands sent to each server (`runbook.server.commandlog`), the applied config diff (beside the plan's), the backups
with their sha256 and the proofs; then each step with a link to its evidence and its record hash, and whether the
records are signed. A failed change says first what failed, what had already been changed, and how to undo it.

A report is written for every run that changed, or planned to change, something, and for every run that failed
or was stopped; not for a read-only inspection that passed (`wanted`): a routine cron inspection adds nothing. It
goes where every evidence file goes (`Journal.write_text`, `Journal.files`, `Journal.add`), listed with its sha256
by an index entry of kind `report` (`runbook.evidence.index.REPORT`), so a remote archive uploads it and `archive
verify` proves it; `archive prune` removes it with its change.
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from runbook.errors import ExitCode, ParameterError
from runbook.evidence.archive import destination, read_entries
from runbook.evidence.index import REPORT, canonical, is_checkpoint, is_report
from runbook.evidence.journal import JOURNAL_WORDS, Journal
from runbook.model import CHANGING_STEPS, UNDONE_BY_ROLLBACK, Outcome, Status, StepSummary
from runbook.server.commandlog import COMMANDS_SENT

log = logging.getLogger(__name__)

#: Where reports go in the archive: reports/<change id>.html (and .pdf).
REPORTS_DIR = "reports"
#: Steps that may change their target (or write to it: the online test's canaries) when applied.
CHANGING = (*CHANGING_STEPS, "test-persistence")
#: Of each step, the checks that prove the change (the report's proofs); every failed check is shown too.
PROOF_CHECKS: dict[str, tuple[str, ...]] = {
    "backup": ("restore_drill",),
    "enable-aof": ("settings", "aof_on_disk", "dbsize"),
    "persist-config": ("file_boots", "no_drift", "file_restored"),
    "rollback": (),
    "test-persistence": ("restart", "dbsize", "canaries", "bgsave", "aof_write", "writes_accepted",
                         "canaries_removed", "replicas-read-back"),
}
#: Steps that prove a change rather than make one: what an applied one writes (canaries, a BGSAVE, a restart) is
#: its own and removed after it (`done`, `changed yes` in the run's table), never a change left on the target.
PROOFS = ("test-persistence",)
#: Of the summary's facts, those that count a target's keys (the report's key counts before and after).
KEY_FACTS = ("dbsize_before", "dbsize", "dbsize_after")


@dataclass(frozen=True)
class RunFacts:
    """What the runner knows of a run beyond its records."""

    exit_code: int
    stopped_by: str = ""  # SIGTERM or SIGINT
    archive_failure: str = ""
    operator: str = ""  # user@host
    #: What the runner itself sent to each target (the server lock), by target.
    runner_commands: Mapping[str, Sequence[str]] = field(default_factory=dict)
    #: Per record, in order: its exit code and whether it decides the run's verdict, as the runner decided them
    #: (a change's first inspection, a plan's closing one); empty: read from the records.
    decided: Sequence[tuple[int | None, bool]] = ()


@dataclass(frozen=True)
class StepLine:
    """One step of the change, from its record."""

    n: int
    step: str
    target: str
    status: str
    summary: StepSummary
    started: str
    ended: str
    files: tuple[str, ...]  # archive-relative, as the record lists them
    record_hash: str  # sha256 of the record's line in the index ("" when the archive did not take it)
    seq: int | None
    signed: bool
    exit_code: int | None
    counts: bool = True  # decides the verdict (a change's first inspection's findings are what it fixes: no)

    @property
    def fixes(self) -> bool:
        """A change's first inspection that found what the change fixes (it does not decide the verdict)."""
        return not self.counts and self.step == "inspect" and self.status in (Status.FAIL, Status.WARN)

    @property
    def html(self) -> str:
        return next((f for f in self.files if f.endswith(".html")), "")

    @property
    def changed(self) -> str:
        """yes, would (planned), no, or - (a read-only step), as `runbook run` prints it."""
        result = self.summary.result
        if result is None:
            return "-"
        return "would" if result == Outcome.PLANNED else "yes" if result.changed_something else "no"


@dataclass(frozen=True)
class Change:
    """One setting a step changed (or, planned, would change): where (runtime, or the file), before -> after."""

    step: str
    target: str
    setting: str
    where: str
    before: str
    after: str
    done: bool


@dataclass(frozen=True)
class ChangeReport:
    change_id: str
    verdict: str  # OK, FAILED, BLOCKED, INTERRUPTED, ...
    css: str  # the verdict's class in the stylesheet: pass, warn, fail, blocked, interrupted
    exit_code: int
    targets: tuple[str, ...]
    operator: str
    commit: str
    version: str
    started: str
    ended: str
    steps: tuple[StepLine, ...]
    runner_commands: Mapping[str, Sequence[str]] = field(default_factory=dict)
    stopped_by: str = ""
    archive_failure: str = ""
    limit: Mapping[str, Any] = field(default_factory=dict)  # --limit: {"pattern", "left_out"} (a fleet run)

    # -- what the page and the terminal show ------------------------------------------------------------
    @property
    def changes(self) -> list[Change]:
        """Every setting changed (done) or planned, step by step; settings already as wanted are left out."""
        return [c for s in self.steps for c in _changes(s) if c.before != c.after]

    @property
    def done(self) -> list[Change]:
        return [c for c in self.changes if c.done]

    @property
    def planned_only(self) -> bool:
        """Nothing was changed and something was planned (a run without apply)."""
        return not any(s.summary.changed_something for s in self.steps) and \
            any(s.summary.result == Outcome.PLANNED for s in self.steps)

    def changed_lines(self) -> list[str]:
        """What the change did on its targets, one line per step that did something (or may have: cut short)."""
        out = []
        for s in self.steps:
            said = what_it_did(s)
            if changed_target(s.summary):
                out.append(f"{s.step} on {s.target}: {said}")
            elif s.summary.facts.get("unfinished"):
                out.append(f"{s.step} on {s.target} may have changed it: {s.summary.facts['unfinished']}")
        return out

    def failing(self) -> list[StepLine]:
        """The steps that made the change fail, block or stop, in order."""
        return [s for s in self.steps if s.counts and (s.exit_code not in (None, 0)
                                                      or s.status == Status.INTERRUPTED)]

    def undo(self) -> list[str]:
        """How to undo what the change did, per target (rollback undoes enable-aof and persist-config)."""
        out = []
        for target in self.targets:
            mine = [s for s in self.steps if s.target == target and s.step in UNDONE_BY_ROLLBACK
                    and (s.summary.changed_something or s.summary.facts.get("unfinished"))]
            if not mine:
                continue
            if target == "sandbox":
                out.append("sandbox: the throwaway server went with the run; nothing to undo")
                continue
            out.append(f"runbook run rollback -p target {target} -p change_id {self.change_id} -p apply true")
        return out

    def commands(self) -> dict[str, list[tuple[str, list[str]]]]:
        """The write commands sent, by target: (who sent them, lines): the runner's own (the server lock), then
        each step's in order; a step whose summary does not say is shown as not recorded."""
        out: dict[str, list[tuple[str, list[str]]]] = {t: [] for t in self.targets}
        for target, lines in self.runner_commands.items():
            if lines:
                out.setdefault(target, []).append(("runbook (server lock, around the steps)", list(lines)))
        for s in self.steps:
            if s.status == Status.SKIPPED:
                continue
            sent = s.summary.facts.get(COMMANDS_SENT)
            if sent is None and s.files:  # a notebook ran, and nothing says what it sent
                out.setdefault(s.target, []).append((f"{s.n}. {s.step}", ["(not recorded)"]))
            elif sent:
                out.setdefault(s.target, []).append((f"{s.n}. {s.step}", [str(x) for x in sent]))
        return out

    def diffs(self) -> list[dict[str, Any]]:
        """The config diffs: per persist-config or rollback step, the planned and the applied one."""
        out = []
        for s in self.steps:
            facts = s.summary.facts
            if s.step not in ("persist-config", "rollback") or not (facts.get("diff") or facts.get("planned_diff")):
                continue
            applied = str(facts.get("diff") or "") if s.summary.changed_something else ""
            planned = str(facts.get("planned_diff") or ("" if applied else facts.get("diff") or ""))
            out.append({"step": s, "planned": planned, "applied": applied,
                        "planned_directives": _names(facts.get("planned_directives")),
                        "applied_directives": _names(facts.get("applied_directives"))})
        return out

    def backups(self) -> list[dict[str, Any]]:
        """The backups the change took (data: its files with sha256; the config file's copy), or why none."""
        out = []
        for s in self.steps:
            facts = s.summary.facts
            if s.step == "backup" and (facts.get("location") or facts.get("skip_reason")):
                files = {str(k): dict(v).get("sha256", "") for k, v in dict(facts.get("files") or {}).items()}
                out.append({"step": s, "kind": "data", "where": str(facts.get("location") or ""), "files": files,
                            "done": s.summary.changed_something, "skipped": str(facts.get("skip_reason") or "")})
            written = s.summary.file_change
            if s.step == "persist-config" and written is not None and written.backup:
                out.append({"step": s, "kind": "config file", "where": written.backup,
                            "files": {written.backup: written.sha256_before}, "done": s.summary.changed_something,
                            "skipped": ""})
        return out

    def proofs(self) -> list[tuple[StepLine, str, str, str]]:
        """(step, check, status, what it saw) of the checks that prove the change, and every failed one."""
        last_inspect = next((s for s in reversed(self.steps) if s.step == "inspect" and s.n > 1), None)
        out = []
        for s in self.steps:
            wanted = PROOF_CHECKS.get(s.step, ())
            for c in s.summary.checks:
                proof = c.name in wanted or (s is last_inspect and c.name == "config_drift")
                if proof or (c.status == Status.FAIL and s.counts):
                    out.append((s, c.name, str(c.status), c.observed))
        return out

    def key_counts(self) -> dict[str, tuple[Any, Any]]:
        """Each target's keys when the change began and when it ended (DBSIZE, the runbook's lock key left out)."""
        out: dict[str, tuple[Any, Any]] = {}
        for target in self.targets:
            seen = [s.summary.facts[k] for s in self.steps if s.target == target for k in KEY_FACTS
                    if isinstance(s.summary.facts.get(k), int)]
            if seen:
                out[target] = (seen[0], seen[-1])
        return out

    def signature(self) -> str:
        """Whether the change's records are signed, in one sentence."""
        recorded = [s for s in self.steps if s.record_hash]
        signed = sum(1 for s in recorded if s.signed)
        after = "this report's sha256 is in the index entry after them"
        if recorded and signed == len(recorded):
            return (f"signed: all {signed} records carry an OpenSSH signature (namespace runbook-archive) and {after}, "
                    "signed too; `runbook archive verify` with RUNBOOK_ALLOWED_SIGNERS checks them")
        if signed:
            return f"partly signed: {signed} of {len(recorded)} records carry a signature; {after}"
        return (f"not signed (no RUNBOOK_SIGNING_KEY): the records are hash-chained and {after}; `runbook archive "
                "verify` checks the chain and every file's sha256")

    def terminal(self, location: str = "") -> list[str]:
        """The change in a few lines for a terminal (`runbook archive show`)."""
        lines = [f"change    {self.change_id}: {self.verdict} (exit {self.exit_code})",
                 f"targets:  {', '.join(self.targets) or '-'}",
                 f"run by:   {self.operator or 'unknown'}, commit {self.commit} (runbook {self.version})",
                 f"time:     {utc(self.started)} -> {utc(self.ended)} UTC"]
        for s in self.failing():
            lines.append(f"failed:   {s.step} on {s.target}: {s.summary.error or _not_passing(s.summary)}")
        lines.append("steps:")
        for s in self.steps:
            note = " (before the change: this is what it fixes)" if s.fixes else ""
            lines.append(f"  {s.n:>2} {s.step:<16} {s.target[:28]:<28} {s.status:<11} {s.changed:<6}"
                         f"{what_it_did(s) or s.summary.error[:120]}{note}".rstrip())
        head = "would set:" if self.planned_only else "changed:"
        rows = self.changes if self.planned_only else self.done
        for c in rows or ([] if self.changed_lines() else [None]):
            lines.append(f"{head:<9} {c.setting} {c.before} -> {c.after} ({c.where}; {c.step} on {c.target})"
                         if c is not None else f"{head:<9} nothing")
        for line in [] if rows else self.changed_lines():
            lines.append(f"{head:<9} {line}")
        for line in put_back(self.steps):
            lines.append(f"put back: {line}")
        for target, groups in self.commands().items():
            lines.append(f"commands: {target}" + ("" if groups else ": no write command"))
            for who, sent in groups:
                lines += [f"  # {who}"] + [f"  {x}" for x in sent]
        for line in self.undo():
            lines.append(f"undo:     {line}")
        lines.append(f"report:   {location or 'none was written for this change'}")
        return lines


# -- building ------------------------------------------------------------------------------------------


def build(records: Sequence[Mapping[str, Any]], facts: RunFacts | None = None) -> ChangeReport:
    """The report of one change from its step records, in order (verdicts; a run with no verdict by its first
    record), and, from the runner, what it knows beyond them."""
    steps = _counted([_line(n, rec) for n, rec in enumerate(records, 1)])
    if facts is not None and len(facts.decided) == len(steps):
        steps = [replace(s, exit_code=code, counts=counts) for s, (code, counts) in zip(steps, facts.decided)]
    change_id = next((str(r.get("change_id")) for r in records if r.get("change_id")), "")
    first = next((r for r in records if r.get("git_commit")), {})
    times = [str(r.get(k)) for r in records for k in ("started", "ended") if r.get(k)]
    if facts is None:
        facts = RunFacts(_exit_code(steps), operator=next((_operator(r) for r in records if _operator(r)), ""))
    verdict, css = _verdict(facts, steps)
    targets = tuple(dict.fromkeys(s.target for s in steps))
    return ChangeReport(change_id, verdict, css, facts.exit_code, targets, facts.operator,
                        str(first.get("git_commit", "unknown")), str(first.get("runbook_version", "")),
                        min(times, default=""), max(times, default=""), tuple(steps), dict(facts.runner_commands),
                        facts.stopped_by, facts.archive_failure, dict(first.get("limit") or {}))


def _line(n: int, rec: Mapping[str, Any]) -> StepLine:
    step = str(rec.get("notebook", ""))
    summary = StepSummary.from_json(rec.get("summary") or {}, step)
    status = str(rec.get("status", summary.verdict))
    if status in JOURNAL_WORDS:  # a run with no verdict (killed): what its intent said it would do
        intent = dict(rec.get("intent") or {})
        summary = StepSummary(step, Status.INTERRUPTED, error="no record says how it ended (killed?)",
                              facts={"unfinished": str(intent.get("summary") or rec.get("doing") or "")})
        status = str(Status.INTERRUPTED)
    recorded = "seq" in rec and "prev_hash" in rec
    code = rec.get("exit_code")
    return StepLine(n, step, str(rec.get("target", "")), status, summary, str(rec.get("started", "")),
                    str(rec.get("ended", "")), tuple(rec.get("files") or ()),
                    hashlib.sha256(canonical(dict(rec))).hexdigest() if recorded else "",
                    rec.get("seq") if recorded else None, bool(rec.get("signature")),
                    int(code) if isinstance(code, int) else (1 if status == Status.INTERRUPTED else None))


def _counted(steps: list[StepLine]) -> list[StepLine]:
    """The steps with `counts` set as the runner sets it: a target's first inspection, when other steps follow on
    that target, found what the change fixes; its failures and warnings do not decide the verdict."""
    out = []
    for i, s in enumerate(steps):
        first = s.step == "inspect" and all(o.target != s.target for o in steps[:i])
        followed = any(o.target == s.target and o.step != "inspect" for o in steps[i + 1:])
        fixes = first and followed and s.status in (Status.FAIL, Status.WARN)
        out.append(replace(s, counts=False) if fixes else s)
    return out


def _exit_code(steps: Sequence[StepLine]) -> int:
    """The run's exit code from its steps, as the runner decides it (blocked only when nothing failed)."""
    codes = [s.exit_code for s in steps if s.counts and s.exit_code is not None]
    if ExitCode.BLOCKED in codes and ExitCode.FAILED not in codes:
        return int(ExitCode.BLOCKED)
    return max(codes, default=0)


def _verdict(facts: RunFacts, steps: Sequence[StepLine]) -> tuple[str, str]:
    if facts.stopped_by:
        return f"INTERRUPTED by {facts.stopped_by}", "interrupted"
    if facts.archive_failure:
        return "FAILED: the evidence archive failed", "fail"
    if any(s.status == Status.INTERRUPTED for s in steps):
        return "INTERRUPTED", "interrupted"
    words = {0: ("OK", "pass"), 1: ("FAILED", "fail"), 2: ("USAGE ERROR", "fail"),
             3: ("BLOCKED: a person must act", "blocked")}
    word, css = words.get(facts.exit_code, (f"exit {facts.exit_code}", "fail"))
    if facts.exit_code == 0 and any(s.status == Status.WARN and s.counts for s in steps):
        word, css = "OK, with warnings", "warn"
    if facts.exit_code == 0 and not any(s.summary.changed_something for s in steps) \
            and any(s.summary.result == Outcome.PLANNED for s in steps):
        word += ", plan only: nothing was changed"
    return word, css


def _changes(s: StepLine) -> list[Change]:
    return _summary_changes(s.summary, s.target)


def _summary_changes(summary: StepSummary, target: str) -> list[Change]:
    facts, step = summary.facts, summary.step
    done = summary.changed_something
    if summary.result not in (Outcome.CHANGED, Outcome.DONE, Outcome.PLANNED):
        return []
    if step == "enable-aof":
        return [Change(step, target, c.setting, "runtime", str(c.before), str(c.after), done)
                for c in summary.setting_changes]
    if step == "persist-config":
        where = f"file {facts.get('edited_file') or facts.get('config_file') or '?'}"
        return [Change(step, target, c.setting, where, str(c.before), str(c.after), done)
                for c in summary.setting_changes]
    if step == "rollback":
        out = [Change(step, target, str(c.get("setting")), "runtime", str(c.get("from")), str(c.get("to")), done)
               for c in facts.get("runtime") or []]
        if facts.get("backup"):
            out.append(Change(step, target, "(the whole file)", f"file {facts.get('config_file', '?')}",
                              "as the change left it", f"restored from {facts['backup']}", done))
        return out
    return []


def changed_target(summary: StepSummary) -> bool:
    """Whether the step left a change on its target (what the change changed; a test's writes are its own)."""
    return summary.changed_something and summary.step not in PROOFS


def put_back(steps: Sequence[StepLine]) -> list[str]:
    """The steps cut short whose own code put their change back (nothing left to undo), one line each."""
    return [f"{s.step} on {s.target} put back what it had changed ({s.summary.facts['put_back']})"
            for s in steps if s.summary.facts.get("put_back")]


def what_it_did(s: StepLine) -> str:
    """A step's change in a few words: settings before -> after, the file written, the backup taken."""
    return describe(s.summary)


def describe(summary: StepSummary) -> str:
    """What a step did (or, planned, would do) in a few words, from its summary: the one wording of the run's table,
    the change report, `archive show` and a step's page."""
    facts, step = summary.facts, summary.step
    if summary.verdict == Status.SKIPPED and facts.get("reason"):
        return f"not run: {facts['reason']}"
    settings = ", ".join(f"{c.setting} {c.before} -> {c.after}" for c in _summary_changes(summary, "")
                         if c.before != c.after)
    if step == "backup" and facts.get("location") and summary.result in (Outcome.DONE, Outcome.PLANNED):
        return f"{'a backup taken to' if summary.changed_something else 'would back up to'} {facts['location']}"
    if step == "backup" and facts.get("skip_reason"):
        return f"no backup: {facts['skip_reason']}"
    if step == "persist-config" and summary.file_change is not None and summary.changed_something:
        return f"wrote {summary.file_change.written_file} ({settings}); backup {summary.file_change.backup or 'none'}"
    if step == "rollback" and summary.changed_something:
        return f"rolled back change {facts.get('change_id', '?')}" + (f" ({settings})" if settings else "")
    if step == "test-persistence" and facts.get("mode") and summary.result == Outcome.PLANNED:
        return f"would run the {facts['mode']} test"
    if step == "test-persistence" and facts.get("mode"):
        return f"{facts['mode']} test" + (f": {facts.get('canaries_found')} of {facts.get('canaries_written')} "
                                          "canaries back" if facts.get("canaries_written") else "")
    if settings:
        return f"{settings} ({'runtime' if step == 'enable-aof' else 'file'})"
    return str(summary.result or "")


def _names(value: Any) -> list[str]:
    if isinstance(value, Mapping):
        return [str(k) for k in value]
    if isinstance(value, (list, tuple)):
        return [str(v.get("name") or v.get("directive") or v) if isinstance(v, Mapping) else str(v) for v in value]
    return []


def _not_passing(summary: StepSummary) -> str:
    return "; ".join(f"{c.name} {c.status}: {c.observed}" for c in summary.not_passing) or str(summary.verdict)


def _operator(rec: Mapping[str, Any]) -> str:
    holder = (rec.get("lock") or {}).get("holder") or {}
    return str(rec.get("operator") or (f"{holder['user']}@{holder['host']}" if holder.get("user") else ""))


def utc(iso: str) -> str:
    try:
        return datetime.fromisoformat(iso).astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return iso or "?"


# -- when, and where ------------------------------------------------------------------------------------


def wanted(records: Iterable[Mapping[str, Any]], exit_code: int, stopped: bool = False) -> bool:
    """Whether a run gets a report: it ran (or planned) a step that changes something, or it failed or was stopped;
    a read-only inspection that passed does not."""
    return exit_code != 0 or stopped or any(str(r.get("notebook")) in CHANGING for r in records)


def write(journal: Journal, records: Sequence[Mapping[str, Any]], facts: RunFacts, *, pdf: bool = False) -> Path:
    """Render the change's report into the archive (reports/<change id>.html; with `pdf`, a .pdf beside it where
    Chromium is installed) and list it, with its sha256, in an index entry of kind `report`; returns its local
    path. ArchiveError (the journal's) when the archive does not take it."""
    from runbook.evidence.change_page import render, render_pdf  # noqa: PLC0415  (the page: only when writing)

    t0 = time.perf_counter()
    report = build(records, facts)
    path = journal.archive.local / REPORTS_DIR / f"{report.change_id}.html"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise journal.failed(str(path.parent), err) from err
    journal.write_text(path, render(report))
    paths = [path]
    t1 = time.perf_counter()
    if pdf:
        made = render_pdf(path)
        paths += [made] if made is not None else []
    journal.add({"kind": REPORT, "run_id": uuid.uuid4().hex, "notebook": "report",
                 "target": ", ".join(report.targets), "status": report.css, "verdict": report.verdict,
                 "exit_code": report.exit_code, "operator": report.operator, "stopped_by": report.stopped_by,
                 "archive_failure": report.archive_failure, "started": report.started, "ended": report.ended,
                 "changed": report.changed_lines(), "runner_commands": dict(report.runner_commands),
                 "decided": [[s.exit_code, s.counts] for s in report.steps],
                 "files": journal.files(paths),
                 "timings": {"render_s": round(t1 - t0, 4), "pdf_s": round(time.perf_counter() - t1, 3)}})
    return path


@dataclass(frozen=True)
class Found:
    """A change read back from an archive (`load`): its report, and the report file's place ("" when none)."""

    report: ChangeReport
    file: str  # archive-relative


def load(root: Path | str, change_id: str) -> Found:
    """The change `change_id` (or the one change whose id starts with it) of the archive at `root`, from its
    index; ParameterError naming the archive when it holds none."""
    entries = [e for e in read_entries(root) if not is_checkpoint(e)]
    ids = list(dict.fromkeys(str(e.get("change_id")) for e in entries if e.get("change_id")))
    matches = [c for c in ids if c == change_id] or [c for c in ids if change_id and c.startswith(change_id)]
    if len(matches) != 1:
        how = f"{len(matches)} changes start with {change_id!r}" if matches else f"no change {change_id!r}"
        raise ParameterError(f"evidence archive {root} holds {how}: `runbook archive list --archive {root}` shows "
                             "the change ids it holds (pass one, or --archive for another archive)")
    cid = matches[0]
    mine = [e for e in entries if e.get("change_id") == cid]
    reports = [e for e in mine if is_report(e)]
    finals = {str(e.get("run_id")) for e in mine if str(e.get("status")) not in JOURNAL_WORDS}
    steps, seen = [], set()
    for e in mine:
        run_id = str(e.get("run_id"))
        if is_report(e) or (str(e.get("status")) in JOURNAL_WORDS and (run_id in finals or run_id in seen)):
            continue
        if str(e.get("status")) in JOURNAL_WORDS:
            seen.add(run_id)
            intent = next((x.get("intent") for x in mine if x.get("run_id") == run_id and x.get("intent")), None)
            e = {**e, "intent": intent} if intent else e
        steps.append(e)
    last = reports[-1] if reports else {}
    decided = [(code, bool(counts)) for code, counts in last.get("decided") or []]
    facts = RunFacts(int(last.get("exit_code") or 0), str(last.get("stopped_by") or ""),
                     str(last.get("archive_failure") or ""), str(last.get("operator") or ""),
                     dict(last.get("runner_commands") or {}), decided) if last else None
    html = next((f for f in (last.get("files") or {}) if f.endswith(".html")), "")
    return Found(build(steps, facts), html)


def location(root: Path | str, rel: str) -> str:
    """Where an archive-relative file is, for people: a local path, or the URL under a remote archive."""
    where = destination(root) if isinstance(root, str) else root
    return str(where / rel) if isinstance(where, Path) else f"{where}/{rel}"
