"""A run's journal: the one writer of a run's records, and what the records say about runs that never ended.

A step that may change its target leaves up to three records under one run id: `started` (the runner,
before the notebook runs), `intent` (the notebook, through `intend`, just before its first write: exactly
what it will set or write) and its verdict. A run whose last record is `started` or `intent` was killed
(SIGKILL, the host going down); one whose verdict is `interrupted` was stopped by SIGTERM/SIGINT and says
what was put back. Both read as interrupted (`interrupted_runs`) until a rollback of their change, or a later
run of the same step on the same target that ended, closes them; an interrupted one whose own code put its change
back in full (its summary's `put_back`) closed itself: nothing is left to undo.

Every write goes through `Archive.add`, `Archive.run_path` and `Archive.files`; a failing write (disk full,
permission lost, a failed upload) comes out as ArchiveError naming what could not be written and where the
evidence so far is.
"""

from __future__ import annotations

import os
import threading
import uuid
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from runbook.errors import ArchiveError
from runbook.evidence.archive import ARCHIVE_ENV, Archive, open_store, read_index
from runbook.evidence.index import LEGACY_INDEX, ordered, records
from runbook.evidence.summary import CHANGE_ID_ENV
from runbook.model import Outcome, Status, StepSummary

#: What the runner sets in the kernel for each step (with CHANGE_ID_ENV), so `intend` writes under its run id.
RUN_ID_ENV = "RUNBOOK_RUN_ID"
STEP_ENV = "RUNBOOK_STEP"
TARGET_ENV = "RUNBOOK_STEP_TARGET"
#: The mime type of the intent an executed notebook shows (the runner reads it back, as it does the summary).
INTENT_MIME = "application/vnd.runbook.intent+json"
#: Records that come before a step's verdict.
JOURNAL_WORDS = (str(Status.STARTED), str(Status.INTENT))
#: How many of the index's last segments (256 KiB each) the start of a run reads for interrupted runs; an older
#: one is still reported by `archive verify`, which reads them all.
RECENT_SEGMENTS = 2


def now() -> str:
    return datetime.now(timezone.utc).isoformat()


class Journal:
    """The records of one run (one change id), written to `archive` and nowhere else.

    `fields` go into every record (runbook version, git commit, a rehearsal's description); `per_target(target)`
    gives fields for the records of one target (the server lock the run holds for it).
    """

    def __init__(self, archive: Archive, change_id: str, fields: Mapping[str, Any] | None = None,
                 per_target: Callable[[str], Mapping[str, Any]] | None = None) -> None:
        self.archive = archive
        self.change_id = change_id
        self.fields = dict(fields or {})
        self.per_target = per_target
        self.failure = ""  # the first archive failure, once one happened
        # The workers of a rolling change write from several threads: one record at a time (the archive's own
        # lock is per host and process; a remote archive's upload state is this object's).
        self._writing = threading.Lock()

    # -- writing ----------------------------------------------------------------------------------------
    def add(self, fields: Mapping[str, Any]) -> dict[str, Any]:
        """Append one record with the run-wide fields; returns it as written (ArchiveError when it cannot be)."""
        own = self.per_target(str(fields.get("target"))) if self.per_target else {}
        record = {**self.fields, **fields, **own, "change_id": self.change_id}
        try:
            with self._writing:
                return self.archive.add(record)
        except (ArchiveError, OSError) as err:
            raise self.failed(f"the {record.get('status')} record of {record.get('notebook')} on "
                               f"{record.get('target')}", err) from err

    def add_many(self, many: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """`add` for several records, appended in order in a few writes (`Archive.add_many`); ArchiveError when
        they cannot all be (then none of them counts as written by this run)."""
        records = [{**self.fields, **fields, **(self.per_target(str(fields.get("target"))) if self.per_target
                                               else {}), "change_id": self.change_id} for fields in many]
        try:
            with self._writing:
                return self.archive.add_many(records)
        except (ArchiveError, OSError) as err:
            first = records[0] if records else {}
            raise self.failed(f"the {len(records)} records of {first.get('notebook')} on {first.get('target')} and "
                              "the rest of its fleet", err) from err

    def reserve(self, step: str, target: str, started: datetime) -> Path:
        """The local path the step's executed notebook goes to (reserved: no other run takes the name)."""
        try:
            return self.archive.run_path(step, target, started)
        except OSError as err:
            raise self.failed(f"a file for {step} on {target}", err) from err

    def write_text(self, path: Path, text: str) -> None:
        """Write an evidence file under the archive (the HTML rendering)."""
        try:
            path.write_text(text, encoding="utf-8")
        except OSError as err:
            raise self.failed(str(path), err) from err

    def files(self, paths: list[Path]) -> dict[str, str]:
        """A record's `files` (each synced to disk first, so the record never names bytes still in memory)."""
        try:
            for p in paths:
                fd = os.open(p, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            return self.archive.files(paths)
        except OSError as err:
            raise self.failed(", ".join(map(str, paths)), err) from err

    def started(self, step: str, target: str, parameters: Mapping[str, Any], doing: str, notebook: Path) -> str:
        """Before a step that may change `target` runs: what it is about to do; returns the run id."""
        run_id = uuid.uuid4().hex
        self.add({"run_id": run_id, "notebook": step, "target": target, "status": str(Status.STARTED),
                  "started": now(), "doing": doing, "parameters": dict(parameters),
                  "evidence": self._relative(notebook), "files": {}})
        return run_id

    def verdict(self, run_id: str, step: str, target: str, summary: StepSummary, exit_code: int | None,
                parameters: Mapping[str, Any], **common: Any) -> dict[str, Any]:
        """A step's verdict (its `summary`, `files`, `started`/`ended` and timings in `common`)."""
        return self.add(_verdict(run_id, step, target, summary, exit_code, parameters, common))

    def verdicts(self, step: str, each: list[tuple[str, StepSummary, int | None, Mapping[str, Any]]],
                 **common: Any) -> list[dict[str, Any]]:
        """The verdicts of one step on several targets (a fleet step: `(target, summary, exit_code, parameters)`
        each, under a run id of its own), sharing `common`; written together (`add_many`)."""
        return self.add_many([_verdict(uuid.uuid4().hex, step, target, summary, code, parameters, common)
                              for target, summary, code, parameters in each])

    def skipped(self, step: str, target: str, parameters: Mapping[str, Any], reason: str) -> tuple[StepSummary,
                                                                                                 dict[str, Any]]:
        """A step that did not run for `target` (an earlier one stopped the run): its summary and record."""
        at = now()
        summary = StepSummary(step, Status.SKIPPED, facts={"reason": reason})
        return summary, self.verdict(uuid.uuid4().hex, step, target, summary, None, parameters, started=at, ended=at,
                                     files={})

    def kernel_env(self, run_id: str, step: str, target: str) -> dict[str, str]:
        """What the kernel's environment says while the step runs (read by `intend`)."""
        return {ARCHIVE_ENV: self.archive.env_value(), CHANGE_ID_ENV: self.change_id, RUN_ID_ENV: run_id,
                STEP_ENV: step, TARGET_ENV: target}

    @staticmethod
    def parameters_for(parameters: Mapping[str, Any], target: str) -> dict[str, Any]:
        """What a record for one target shows as its parameters (a fleet step: the shared ones and its entry)."""
        entries = parameters.get("targets")
        if not isinstance(entries, list):
            return dict(parameters)
        entry = next(e for e in entries if e["target"] == target)
        return {**{k: v for k, v in parameters.items() if k != "targets"}, **entry}

    # -- failures ---------------------------------------------------------------------------------------
    def kept(self) -> str:
        """Where this run's evidence is, for a person to read after an archive failure."""
        if self.archive.url is None:
            return f"the archive {self.archive.dest} (partial: what was written before the failure)"
        return (f"{self.archive.url} (records and files uploaded before the failure) and the local staging dir "
                f"{self.archive.local} (what was not uploaded)")

    def failed(self, what: str, err: BaseException) -> ArchiveError:
        """The ArchiveError for a write of `what` that failed; the run's first one is kept in `failure`."""
        detail = str(err) if isinstance(err, ArchiveError) else f"{type(err).__name__}: {err}"
        message = f"evidence archive {self.archive.dest}: could not write {what} ({detail})"
        self.failure = self.failure or message
        return ArchiveError(message)

    def _relative(self, path: Path) -> str:
        try:
            return path.relative_to(self.archive.local).as_posix()
        except ValueError:
            return str(path)


def _verdict(run_id: str, step: str, target: str, summary: StepSummary, exit_code: int | None,
             parameters: Mapping[str, Any], common: Mapping[str, Any]) -> dict[str, Any]:
    return {"run_id": run_id, "notebook": step, "target": target, "status": str(summary.verdict),
            "exit_code": exit_code, "summary": summary.to_json(), "parameters": dict(parameters), **common}


class AtomicSaves:
    """A papermill I/O handler for the archive's local directory: every save of a running notebook replaces the
    file whole (a temp file beside it, then a rename), so a kill leaves the last complete save, never a torn
    file; a failing write is the journal's ArchiveError. Registered by the runner for the archive's path."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal

    def read(self, path: str) -> str:
        return Path(path).read_text(encoding="utf-8")

    def listdir(self, path: str) -> list[str]:
        return [os.path.join(path, name) for name in os.listdir(path)]

    def write(self, buf: str, path: str) -> None:
        final = Path(path)
        tmp = final.with_name(f".{final.name}.saving")
        try:
            tmp.write_text(buf, encoding="utf-8")
            os.replace(tmp, final)
        except OSError as err:
            tmp.unlink(missing_ok=True)
            raise self.journal.failed(str(final), err) from err

    def pretty_path(self, path: str) -> str:
        return path

    def cwd(self, new_path: str | None) -> None:
        return None


# -- the notebook's side ----------------------------------------------------------------------------------


def intend(what: Mapping[str, Any] | None) -> None:
    """Record, before a notebook's first write, exactly what it is about to set or write (`what`, with a
    one-line `summary`). Under `runbook run` the record goes to the run's archive under the step's run id
    (ArchiveError when it cannot: then nothing is sent); run by hand, nothing is recorded and the notebook
    says so in one line. `None`: nothing will be written (plan only, or nothing to do)."""
    from IPython.display import display  # noqa: PLC0415  (only inside a kernel)

    if not what:
        line = "intent: nothing will be written (plan only, or nothing to do)"
    elif not os.environ.get(RUN_ID_ENV) or not os.environ.get(ARCHIVE_ENV):
        line = f"intent not recorded (not run by `runbook run`: no evidence archive): {what.get('summary', '')}"
    else:
        record_intent(dict(what))
        line = f"intent recorded in the evidence archive: {what.get('summary', '')}"
    display({INTENT_MIME: dict(what or {}), "text/plain": line}, raw=True)


def record_intent(what: dict[str, Any], env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Append the `intent` record of the step named in `env` (default: this process's environment)."""
    env = os.environ if env is None else env
    archive = Archive(env[ARCHIVE_ENV])
    try:
        return archive.add({"run_id": env[RUN_ID_ENV], "change_id": env.get(CHANGE_ID_ENV, ""),
                            "notebook": env.get(STEP_ENV, ""), "target": env.get(TARGET_ENV, ""),
                            "status": str(Status.INTENT), "started": now(), "intent": what, "files": {}})
    except (ArchiveError, OSError) as err:
        raise ArchiveError(f"evidence archive {archive.dest}: could not record the intent ({err}); nothing was "
                           "sent or written") from err
    finally:
        archive.close()


def read_intent(nb: Any) -> dict[str, Any] | None:
    """The intent an executed notebook showed (an nbformat node or dict), if any."""
    found = None
    for cell in nb["cells"]:
        for out in cell.get("outputs", []) if cell.get("cell_type") == "code" else []:
            data = out.get("data", {})
            if data.get(INTENT_MIME):
                found = data[INTENT_MIME]
    return dict(found) if found else None


# -- reading ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Interrupted:
    """A run of a changing step that has no verdict (killed), or whose verdict is `interrupted`."""

    run_id: str
    change_id: str
    step: str
    target: str
    started: str
    doing: str  # the intent's summary, else what the runner said the step was about to do
    intent: Mapping[str, Any]  # empty when the notebook never got to its intent
    ended: str  # the interrupted verdict's error (what was put back), or "" when no record says how it ended
    position: int  # the index of its first record
    closed_by: str = ""  # the later run that closed it, or ""

    @property
    def killed(self) -> bool:
        return not self.ended

    def describe(self) -> str:
        """One line: which step, where, when, what it was doing, and how it ended."""
        how = self.ended or "no record says how it ended (killed, or the host went down)"
        return (f"{self.step} on {self.target} (change {self.change_id}, run {self.run_id[:12]}, started "
                f"{self.started[:19]}) was interrupted while {self.doing or 'starting'}: {how}")

    def todo(self) -> str:
        """What a person runs to undo it."""
        return (f"check {self.target}, then undo it with `runbook run rollback -p target {self.target} "
                f"-p change_id {self.change_id} -p apply true`")


def interrupted_runs(records: Iterable[Mapping[str, Any]]) -> list[Interrupted]:
    """Every interrupted run in `records` (the index, in order), each with the later run that closed it, if any."""
    recs = list(records)
    journaled = {rec.get("run_id") for rec in recs if rec.get("status") in JOURNAL_WORDS}
    by_run: dict[str, list[tuple[int, Mapping[str, Any]]]] = {}
    for n, rec in enumerate(recs):
        if rec.get("run_id") in journaled:
            by_run.setdefault(str(rec["run_id"]), []).append((n, rec))
    found = []
    for run_id, entries in by_run.items():
        final = [r for _, r in entries if str(r.get("status")) not in JOURNAL_WORDS]
        if final and str(final[-1].get("status")) != str(Status.INTERRUPTED):
            continue  # it ended with a verdict
        first_n, first = entries[0]
        intent = next((dict(r.get("intent") or {}) for _, r in entries if r.get("status") == str(Status.INTENT)), {})
        verdict = StepSummary.from_json(final[-1].get("summary") or {}) if final else None
        ended = str(verdict.error or "interrupted") if verdict is not None else ""
        item = Interrupted(run_id, str(first.get("change_id", "")), str(first.get("notebook", "")),
                           str(first.get("target", "")), str(first.get("started", "")),
                           str(intent.get("summary") or first.get("doing") or ""), intent, ended, first_n)
        if verdict is not None and verdict.facts.get("put_back"):
            found.append(replace(item, closed_by=SELF_CLOSED))
            continue
        last_n = entries[-1][0]
        found.append(_with_closer(item, recs[last_n + 1:], last_n + 1))
    return sorted(found, key=lambda i: i.position)


#: What closed an interrupted run whose own code put its change back (nothing left to undo).
SELF_CLOSED = "itself (it put its change back: nothing is left to undo)"


def _with_closer(item: Interrupted, later: list[Mapping[str, Any]], offset: int) -> Interrupted:
    """`item` with the first later record that closes it: a rollback of its change that ended (done or nothing
    left to undo), or the same step on the same target run to a verdict."""
    for rec in later:
        if rec.get("target") != item.target or str(rec.get("status")) in JOURNAL_WORDS:
            continue
        summary = StepSummary.from_json(rec.get("summary") or {}, str(rec.get("notebook", "")))
        if rec.get("notebook") == "rollback" and summary.result in (Outcome.DONE, Outcome.NOTHING) \
                and summary.facts.get("change_id") == item.change_id and summary.verdict != Status.FAIL:
            return replace(item, closed_by=f"rollback run {str(rec.get('run_id'))[:12]}")
        if rec.get("notebook") == item.step and summary.verdict in (Status.PASS, Status.WARN) \
                and summary.result is not None and summary.result != Outcome.PLANNED:
            return replace(item, closed_by=f"{item.step} run {str(rec.get('run_id'))[:12]} ({summary.result})")
    return item


def open_interrupted(records: Iterable[Mapping[str, Any]]) -> list[Interrupted]:
    """The interrupted runs that nothing closed yet."""
    return [i for i in interrupted_runs(records) if not i.closed_by]


def recent_records(root: Path | str) -> list[dict[str, Any]]:
    """The records of the last `RECENT_SEGMENTS` segments of the index at `root` (all of an archive from before
    the segments): what a run reads at its start, at a cost flat in the archive's size."""
    store = open_store(root)
    names = ordered(store.segment_names())
    if not names or names[-1] == LEGACY_INDEX:
        return read_index(root)
    return list(records((n, d) for n in names[-RECENT_SEGMENTS:] if (d := store.read(n)) is not None))


def notice(records: Iterable[Mapping[str, Any]]) -> str:
    """One line for the start of a run on this archive: the interrupted runs nothing closed, or ""."""
    still = open_interrupted(records)
    if not still:
        return ""
    more = f" (and {len(still) - 1} more interrupted run(s): `runbook archive verify` lists them)" if len(still) > 1 \
        else ""
    return f"this archive holds an interrupted run: {still[-1].describe()}; {still[-1].todo()}{more}"


def findings(records: Iterable[Mapping[str, Any]]) -> tuple[list[str], list[str]]:
    """`archive verify`'s lines about interrupted runs: (problems: open ones, notes: closed ones)."""
    problems, notes = [], []
    for item in interrupted_runs(records):
        if item.closed_by:
            notes.append(f"line {item.position + 1}: interrupted, closed by {item.closed_by}: {item.describe()}")
        else:
            problems.append(f"line {item.position + 1}: interrupted: {item.describe()}; {item.todo()}")
    return problems, notes


def listing(records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """`archive list`'s rows: one per run, where its verdict is (its started and intent records folded into
    it); a run with no verdict shows once, at its first record, as interrupted, with what it was doing."""
    recs = list(records)
    finals = {str(r.get("run_id")) for r in recs if str(r.get("status")) not in JOURNAL_WORDS}
    stopped = {i.run_id: i for i in interrupted_runs(recs)}
    rows, shown = [], set()
    for rec in recs:
        run_id, status = str(rec.get("run_id")), str(rec.get("status"))
        if status in JOURNAL_WORDS:
            if run_id in finals or run_id in shown:
                continue
            shown.add(run_id)
            item = stopped.get(run_id)
            rows.append({**rec, "status": str(Status.INTERRUPTED),
                         "note": item.doing if item else "", "file": rec.get("evidence", "")})
            continue
        item = stopped.get(run_id)
        rows.append({**rec, "note": item.doing if item else "", "file": next(iter(rec.get("files") or {}), "")})
    return rows
