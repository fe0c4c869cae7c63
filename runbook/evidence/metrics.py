"""A Prometheus text file for node_exporter's textfile collector, written atomically.

Every series carries `runbook_job` (`--metrics-job`, else the first params file's stem), so several cron jobs
and files share one textfile directory; per-target series carry `target`. The persistence figures mirror
redis_exporter's metrics under a `runbook_redis_` prefix (each HELP names the one it mirrors), so they never add up
with redis_exporter's own `redis_*` series. A target the run could not inspect gets `runbook_target_up 0` and keeps
its last known series from the previous file at the same path, so alerts on them do not resolve while Redis is down.
See https://github.com/prometheus/node_exporter#textfile-collector and docs/monitoring.md.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
import time
import unicodedata
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping
from urllib.parse import urlsplit, urlunsplit

from runbook.errors import ExitCode, ParameterError, RunbookError
from runbook.evidence.archive import probe_writable, read_index
from runbook.evidence.journal import listing
from runbook.model import CHANGING_STEPS, Outcome, Status, StepSummary

log = logging.getLogger(__name__)

#: Inspection figures (INFO fields, as the inspection records them) -> (metric name, help naming redis_exporter's).
PERSISTENCE: dict[str, tuple[str, str]] = {
    "aof_enabled": ("runbook_redis_aof_enabled", "AOF is enabled (1) or not (0) at runtime (redis_exporter: "
                    "redis_aof_enabled)"),
    "aof_rewrite_in_progress": ("runbook_redis_aof_rewrite_in_progress", "An AOF rewrite is running "
                                "(redis_exporter: redis_aof_rewrite_in_progress)"),
    "aof_last_bgrewrite_status": ("runbook_redis_aof_last_bgrewrite_status", "Last AOF rewrite succeeded (1) or "
                                  "failed (0) (redis_exporter: redis_aof_last_bgrewrite_status)"),
    "aof_last_write_status": ("runbook_redis_aof_last_write_status", "Last AOF write succeeded (1) or failed (0) "
                              "(redis_exporter: redis_aof_last_write_status)"),
    "aof_delayed_fsync": ("runbook_redis_aof_delayed_fsync", "Times an fsync was delayed, appendfsync everysec "
                          "(redis_exporter: redis_aof_delayed_fsync)"),
    "aof_current_size": ("runbook_redis_aof_current_size_bytes", "AOF size in bytes, AOF on only "
                         "(redis_exporter: redis_aof_current_size_bytes)"),
    "aof_base_size": ("runbook_redis_aof_base_size_bytes", "AOF size at the last rewrite in bytes, AOF on only "
                      "(redis_exporter: redis_aof_base_size_bytes)"),
    "aof_last_rewrite_time_sec": ("runbook_redis_aof_last_rewrite_duration_seconds", "Duration of the last AOF "
                                  "rewrite, -1 before the first (redis_exporter: redis_aof_last_rewrite_duration_sec)"),
    "rdb_bgsave_in_progress": ("runbook_redis_rdb_bgsave_in_progress", "A BGSAVE is running "
                               "(redis_exporter: redis_rdb_bgsave_in_progress)"),
    "rdb_last_bgsave_status": ("runbook_redis_rdb_last_bgsave_status", "Last BGSAVE succeeded (1) or failed (0) "
                               "(redis_exporter: redis_rdb_last_bgsave_status)"),
    "rdb_last_bgsave_time_sec": ("runbook_redis_rdb_last_bgsave_duration_seconds", "Duration of the last BGSAVE, "
                                 "-1 before the first (redis_exporter: redis_rdb_last_bgsave_duration_sec)"),
    "rdb_last_save_time": ("runbook_redis_rdb_last_save_timestamp_seconds", "UNIX time of the last successful save "
                           "(redis_exporter: redis_rdb_last_save_timestamp_seconds)"),
    "rdb_changes_since_last_save": ("runbook_redis_rdb_changes_since_last_save", "Changes since the last save "
                                    "(redis_exporter: redis_rdb_changes_since_last_save)"),
    "loading": ("runbook_redis_loading_dump_file", "The server is loading its dataset "
                "(redis_exporter: redis_loading_dump_file)"),
    "latest_fork_usec": ("runbook_redis_latest_fork_seconds", "Duration of the latest fork "
                         "(redis_exporter: redis_latest_fork_seconds)"),
    "rdb_file_size": ("runbook_rdb_file_size_bytes", "Size of the dump file (dir/dbfilename) on disk, when the "
                      "data dir is readable where the runbook runs"),
}
#: The runbook's own series (all gauges) -> help.
RUNBOOK_HELP: dict[str, str] = {
    "runbook_target_up": "The last inspection reached the target (1) or not (0); at 0 the target's other series "
                         "are the last known ones",
    "runbook_inspection_timestamp_seconds": "UNIX time of the last successful inspection of the target",
    "runbook_check_status": "Runbook check: 0 pass, 1 warn, 2 fail",
    "runbook_drift": "Setting differs between runtime and config file (1) or not (0)",
    "runbook_config_compared": "The inspection read the config file and compared it with the runtime settings (1) "
                               "or could not (0: unreadable, missing or none): at 0 there is no runbook_drift",
    "runbook_save_policy_window_seconds": "Longest window of the runtime save policy (absent for save \"\")",
    "runbook_host_advisory_status": "Advice on the server's host, not part of any verdict (vm.overcommit_memory): "
                                    "0 pass, 1 warn",
    "runbook_change_last_timestamp_seconds": "UNIX time the last run that changed the target ended (archive index)",
    "runbook_change_last_exit_code": "Exit code of the last run that changed the target (0 ok, 1 failed, 3 blocked)",
    "runbook_change_last_info": "The last run that changed the target: its change id and result "
                                "(ok, failed, blocked, interrupted)",
    "runbook_last_run_timestamp_seconds": "UNIX time of the last runbook run",
    "runbook_last_run_exit_code": "Exit code of the last runbook run (0 ok, 1 failed, 2 usage, 3 blocked)",
    "runbook_archive_verify_ok": "The last archive verify found the evidence archive intact (1) or problems (0)",
    "runbook_archive_verify_timestamp_seconds": "UNIX time of the last archive verify",
    "runbook_archive_records": "Records the last archive verify read in the evidence archive's index",
}
_STATUS_VALUE = {Status.PASS: 0, Status.WARN: 1, Status.FAIL: 2}
_CHANGE_PREFIX = "runbook_change_"


# -- the text format (ours: one sample per line, `name{labels} value`) ---------------------------------------


@dataclass(frozen=True)
class Sample:
    name: str
    labels: tuple[tuple[str, str], ...]
    value: str  # as written in the file

    def line(self) -> str:
        text = ",".join(f'{k}="{_escape(v)}"' for k, v in self.labels)
        return f"{self.name}{{{text}}} {self.value}" if text else f"{self.name} {self.value}"

    def label(self, name: str) -> str | None:
        return dict(self.labels).get(name)


@dataclass
class Family:
    help: str
    kind: str = "gauge"
    samples: list[Sample] = field(default_factory=list)


_SAMPLE_LINE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?[ \t]+(\S+)(?:[ \t]+-?\d+)?")
_LABEL = re.compile(r'[ \t]*([a-zA-Z_][a-zA-Z0-9_]*)[ \t]*=[ \t]*"((?:[^"\\]|\\.)*)"[ \t]*(?:,|$)')
_UNESCAPE = re.compile(r"\\(.)")


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(text: str) -> tuple[tuple[str, str], ...] | None:
    out, pos = [], 0
    while pos < len(text):
        m = _LABEL.match(text, pos)
        if m is None or m.end() == pos:
            return None
        out.append((m.group(1), _UNESCAPE.sub(lambda e: "\n" if e.group(1) == "n" else e.group(1), m.group(2))))
        pos = m.end()
    return tuple(out)


def parse(text: str) -> dict[str, Family]:
    """The families of a text file this module wrote (HELP, TYPE and samples); a line it does not read is left
    out (a file edited by hand or written by something else: only our own lines are carried forward)."""
    families: dict[str, Family] = {}
    for line in text.splitlines():
        if line.startswith(("# HELP ", "# TYPE ")):
            _, word, name, *rest = [*line.split(" ", 3), ""]
            fam = families.setdefault(name, Family("")) if name else Family("")
            if word == "HELP":
                fam.help = rest[0]
            else:
                fam.kind = rest[0] or "untyped"
            continue
        m = _SAMPLE_LINE.fullmatch(line.strip())
        labels = _labels(m.group(2) or "") if m else None
        if m is None or labels is None or not _is_number(m.group(3)):
            continue
        families.setdefault(m.group(1), Family("")).samples.append(Sample(m.group(1), labels, m.group(3)))
    return families


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def read_previous(path: Path) -> dict[str, Family]:
    """The families of the file at `path` as the last run left it (none when there is no readable file)."""
    try:
        return parse(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeError) as err:
        log.warning("--metrics-file %s: the previous file cannot be read (%s): nothing is carried forward", path, err)
        return {}


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


class _Text:
    """The families of the file being written, in the order they first appear."""

    def __init__(self, previous: Mapping[str, Family]) -> None:
        self.families: dict[str, Family] = {}
        self.previous = previous

    def add(self, name: str, labels: Mapping[str, str], value: float) -> None:
        self.keep(Sample(name, tuple(labels.items()), _number(value)))

    def keep(self, sample: Sample) -> None:
        """Add `sample` (its help ours; for a family this version does not write, the previous file's)."""
        known, before = RUNBOOK_HELP.get(sample.name) or _help(sample.name), self.previous.get(sample.name)
        fam = Family(known) if known else Family(before.help, before.kind) if before else Family("", "untyped")
        self.families.setdefault(sample.name, fam).samples.append(sample)

    def carry(self, job: str, target: str, wanted: Callable[[str], bool]) -> None:
        """The previous file's samples for `job` and `target` of the families whose name is `wanted`."""
        for name, fam in self.previous.items():
            for s in fam.samples if wanted(name) else ():
                if s.label("runbook_job") == job and s.label("target") == target:
                    self.keep(s)

    def text(self) -> str:
        lines: list[str] = []
        for name, fam in self.families.items():
            lines += [f"# HELP {name} {fam.help}", f"# TYPE {name} {fam.kind}", *(s.line() for s in fam.samples)]
        return "\n".join(lines) + "\n"


def _help(name: str) -> str:
    return next((h for n, h in PERSISTENCE.values() if n == name), "")


# -- what a run knows -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Inspected:
    """What a run knows of one target: its last successful inspection (`summary`, None when none in this run) and
    whether its last inspection reached it (`up`; None when no inspection ran for it)."""

    target: str
    summary: StepSummary | None = None
    up: bool | None = None


def inspections(steps: Iterable[tuple[str, str, StepSummary]]) -> list[Inspected]:
    """Each target of a run's steps (step name, target, summary), in order, with what its inspections found."""
    found: dict[str, Inspected] = {}
    for name, target, summary in steps:
        seen = found.setdefault(target, Inspected(target))
        if name != "inspect" or summary.verdict in (Status.SKIPPED, Status.INTERRUPTED):
            continue  # not run, or stopped by a signal: nothing learnt of the target
        found[target] = Inspected(target, summary, True) if summary.checks else Inspected(target, seen.summary, False)
    return list(found.values())


@dataclass(frozen=True)
class LastChange:
    """The last run of a change on one target, from the archive's index (`last_changes`)."""

    change_id: str
    ended: float  # UNIX time
    exit_code: int
    result: str  # ok, failed, blocked or interrupted


def _epoch(text: Any) -> float | None:
    try:
        return datetime.fromisoformat(str(text)).timestamp()
    except ValueError:
        return None


def _is_change(row: Mapping[str, Any]) -> bool:
    summary = StepSummary.from_json(row.get("summary") or {}, str(row.get("notebook", "")))
    status = str(row.get("status"))
    return row.get("notebook") in CHANGING_STEPS and (summary.changed_something or status in (
        Status.FAIL, Status.ERROR, Status.BLOCKED, Status.INTERRUPTED) or summary.result == Outcome.BLOCKED)


def last_changes(records: Iterable[Mapping[str, Any]]) -> dict[str, LastChange]:
    """Per target, the last change (change id) whose run changed it or failed to: an enable-aof, persist-config,
    rollback or backup with a changed outcome or a failure. Its end time and exit code are those of that run's
    steps on the target from the first changing one on (the inspection before a change does not count)."""
    rows = listing(records)
    last: dict[str, str] = {}
    for row in rows:
        if _is_change(row):
            last[str(row.get("target"))] = str(row.get("change_id"))
    by_target: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        if last.get(str(row.get("target"))) == str(row.get("change_id")):
            by_target.setdefault(str(row.get("target")), []).append(row)
    out: dict[str, LastChange] = {}
    for target, change_id in last.items():
        mine = by_target[target]
        first = next(n for n, r in enumerate(mine) if r.get("notebook") in CHANGING_STEPS)
        mine = mine[first:]
        times = [t for r in mine for t in (_epoch(r.get("ended")), _epoch(r.get("started"))) if t is not None]
        out[target] = LastChange(change_id, max(times, default=0.0), *_outcome(mine))
    return out


def _outcome(rows: list[Mapping[str, Any]]) -> tuple[int, str]:
    """The exit code and result word of a change's steps on one target, as the runner decides a run's: failed
    over blocked; a step stopped by a signal (its record says interrupted; exit 1) makes it interrupted."""
    statuses = {str(r.get("status")) for r in rows}
    codes = {r.get("exit_code") for r in rows}
    if Status.INTERRUPTED in statuses:
        return ExitCode.FAILED, "interrupted"
    if ExitCode.FAILED in codes or statuses & {Status.FAIL, Status.ERROR}:
        return ExitCode.FAILED, "failed"
    if ExitCode.BLOCKED in codes or Status.BLOCKED in statuses:
        return ExitCode.BLOCKED, "blocked"
    return ExitCode.OK, "ok"


def archive_changes(root: Path | str) -> dict[str, LastChange] | None:
    """`last_changes` of the archive at `root`; None (logged) when its index cannot be read: the previous file's
    change series are then carried forward."""
    try:
        return last_changes(read_index(root))
    except (RunbookError, OSError) as err:
        log.warning("evidence archive %s: its index cannot be read for the change series (%s): the last known ones "
                    "are kept", root, err)
        return None


def metrics_job(name: str | None, files: Iterable[str | Path] = ()) -> str:
    """The `runbook_job` label: `--metrics-job`, else the first params file's stem, else `sandbox`."""
    first = next(iter(files), None)
    job = name if name is not None else (Path(first).stem if first is not None else "sandbox")
    if not job or any(unicodedata.category(ch).startswith("C") for ch in job):
        raise ParameterError(f"--metrics-job {job!r}: name the job in printable characters (for example the "
                             "params file's name, `gateway`); nothing was run")
    return job


# -- rendering ----------------------------------------------------------------------------------------------


def _inspection(out: _Text, job: str, target: str, summary: StepSummary, now: float) -> None:
    base = {"runbook_job": job, "target": target}
    facts = summary.facts
    out.add("runbook_inspection_timestamp_seconds", base, float(facts.get("inspected_at") or now))
    for key, raw in facts.get("metrics", {}).items():
        if key not in PERSISTENCE:
            continue
        value = (1.0 if raw == "ok" else 0.0) if key.endswith("_status") else \
            float(raw) / 1e6 if key == "latest_fork_usec" else float(raw)
        out.add(PERSISTENCE[key][0], base, value)
    if facts.get("save_policy_window_s") is not None:
        out.add("runbook_save_policy_window_seconds", base, float(facts["save_policy_window_s"]))
    for check in summary.checks:
        out.add("runbook_check_status", {**base, "check": check.name}, _STATUS_VALUE.get(check.status, 2))
    for advisory in facts.get("advisories", ()):
        out.add("runbook_host_advisory_status", {**base, "advisory": str(advisory.get("name", ""))},
                _STATUS_VALUE.get(advisory.get("status"), 1))
    drifted = set(facts.get("drift", []))
    if "settings" in facts:  # the settings compared with the file: none when it was not read
        out.add("runbook_config_compared", base, 1 if facts["settings"] else 0)
    for setting in facts.get("settings", sorted(drifted)):
        out.add("runbook_drift", {**base, "setting": setting}, 1 if setting in drifted else 0)


def render(targets: Iterable[Inspected | tuple[str, StepSummary]], exit_code: int, now: float | None = None, *,
           job: str = "sandbox", previous: Mapping[str, Family] | None = None,
           changes: Mapping[str, LastChange] | None = None) -> str:
    """The text file of a run for its targets (`inspections`; a (target, summary) pair is an inspected target).

    A target whose last inspection failed gets `runbook_target_up 0` and its last known series: from an earlier
    inspection of this run, else from `previous` (the file the last run wrote, `read_previous`); a target with no
    inspection in this run keeps all its previous series. `changes` (`archive_changes`; None: keep the previous
    ones) gives the `runbook_change_*` series of the run's targets."""
    now = time.time() if now is None else now
    out = _Text(previous or {})
    items = [t if isinstance(t, Inspected) else Inspected(t[0], t[1], True) for t in targets]
    for item in items:
        base = {"runbook_job": job, "target": item.target}
        if item.up is None:
            out.carry(job, item.target, lambda name: not name.startswith(_CHANGE_PREFIX))
            continue
        out.add("runbook_target_up", base, 1 if item.up else 0)
        if item.summary is not None:
            _inspection(out, job, item.target, item.summary, now)
        else:
            out.carry(job, item.target,
                      lambda name: name != "runbook_target_up" and not name.startswith(_CHANGE_PREFIX))
    for item in items:
        if changes is None:
            out.carry(job, item.target, lambda name: name.startswith(_CHANGE_PREFIX))
        elif item.target in changes:
            change, base = changes[item.target], {"runbook_job": job, "target": item.target}
            out.add("runbook_change_last_timestamp_seconds", base, change.ended)
            out.add("runbook_change_last_exit_code", base, change.exit_code)
            out.add("runbook_change_last_info", {**base, "change_id": change.change_id, "result": change.result}, 1)
    out.add("runbook_last_run_timestamp_seconds", {"runbook_job": job}, now)
    out.add("runbook_last_run_exit_code", {"runbook_job": job}, exit_code)
    return out.text()


def archive_label(root: Path | str) -> str:
    """The `archive` label: the archive's path or URL, without any user or password a URL may carry."""
    text = str(root)
    parts = urlsplit(text)
    if parts.scheme and "@" in parts.netloc:
        return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
    return text


def render_verify(archive: Path | str, ok: bool, records: int | None, *, job: str = "sandbox",
                  now: float | None = None) -> str:
    """The text file of `runbook archive verify`: intact or not, when, and how many records it read (left out when
    the archive could not be read at all)."""
    now = time.time() if now is None else now
    out = _Text({})
    base = {"runbook_job": job, "archive": archive_label(archive)}
    out.add("runbook_archive_verify_ok", base, 1 if ok else 0)
    out.add("runbook_archive_verify_timestamp_seconds", base, now)
    if records is not None:
        out.add("runbook_archive_records", base, records)
    return out.text()


# -- writing ------------------------------------------------------------------------------------------------


def require_writable(path: Path) -> None:
    """ParameterError unless `write_atomically` can write `path`: checked before a run, which would otherwise
    end with its step table lost to the failed write."""
    try:
        if path.is_dir():
            raise IsADirectoryError(21, "it is a directory")
        probe_writable(path.parent)
    except OSError as err:
        raise ParameterError(f"--metrics-file {path} cannot be written ({err.strerror or err}): name a file in a "
                             "directory this user may write (node_exporter's textfile directory). Nothing was run."
                             ) from err


def write_atomically(path: Path, text: str) -> None:
    """Write `text` to `path` through a temp file in the same directory and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise

