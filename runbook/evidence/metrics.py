"""A Prometheus text file for node_exporter's textfile collector, written atomically.

Persistence figures use redis_exporter's names, so dashboards and evidence agree;
the runbook's own verdicts are `runbook_*`.
See https://github.com/prometheus/node_exporter#textfile-collector
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable

from runbook.errors import ParameterError
from runbook.evidence.archive import probe_writable
from runbook.model import Status, StepSummary

#: INFO persistence/stats fields -> (redis_exporter metric name, help), as the inspection records them.
EXPORTER_NAMES: dict[str, tuple[str, str]] = {
    "aof_enabled": ("redis_aof_enabled", "AOF is enabled (1) or not (0)"),
    "aof_rewrite_in_progress": ("redis_aof_rewrite_in_progress", "An AOF rewrite is running"),
    "aof_last_bgrewrite_status": ("redis_aof_last_bgrewrite_status", "Last AOF rewrite succeeded (1) or failed (0)"),
    "aof_last_write_status": ("redis_aof_last_write_status", "Last AOF write succeeded (1) or failed (0)"),
    "aof_delayed_fsync": ("redis_aof_delayed_fsync", "Times an fsync was delayed (appendfsync everysec)"),
    "rdb_bgsave_in_progress": ("redis_rdb_bgsave_in_progress", "A BGSAVE is running"),
    "rdb_last_bgsave_status": ("redis_rdb_last_bgsave_status", "Last BGSAVE succeeded (1) or failed (0)"),
    "rdb_last_save_time": ("redis_rdb_last_save_timestamp_seconds", "UNIX time of the last successful save"),
    "rdb_changes_since_last_save": ("redis_rdb_changes_since_last_save", "Changes since the last save"),
    "loading": ("redis_loading_dump_file", "The server is loading its dataset"),
    "latest_fork_usec": ("redis_latest_fork_seconds", "Duration of the latest fork in seconds"),
}
_STATUS_VALUE = {Status.PASS: 0, Status.WARN: 1, Status.FAIL: 2}


def _value(field: str, raw: Any) -> float:
    if field.endswith("_status"):
        return 1.0 if raw == "ok" else 0.0
    if field == "latest_fork_usec":
        return float(raw) / 1e6
    return float(raw)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render(targets: Iterable[tuple[str, StepSummary]], exit_code: int, now: float | None = None) -> str:
    """The text file for (target, inspection summary) pairs: one sample per metric and target."""
    now = time.time() if now is None else now
    series: dict[str, tuple[str, str, list[str]]] = {}

    def add(name: str, kind: str, help_text: str, labels: dict[str, str], value: float) -> None:
        label_text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
        number = str(int(value)) if float(value).is_integer() else repr(float(value))
        sample = f"{name}{{{label_text}}} {number}" if label_text else f"{name} {number}"
        series.setdefault(name, (kind, help_text, []))[2].append(sample)

    for target, summary in targets:
        base = {"target": target}
        for field, raw in summary.facts.get("metrics", {}).items():
            if field in EXPORTER_NAMES:
                name, help_text = EXPORTER_NAMES[field]
                add(name, "gauge", help_text, base, _value(field, raw))
        for check in summary.checks:
            add("runbook_check_status", "gauge", "Runbook check: 0 pass, 1 warn, 2 fail",
                {**base, "check": check.name}, _STATUS_VALUE.get(check.status, 2))
        for advisory in summary.facts.get("advisories", ()):
            add("runbook_host_advisory_status", "gauge", "Advice on the server's host, not part of any verdict "
                "(vm.overcommit_memory): 0 pass, 1 warn", {**base, "advisory": str(advisory.get("name", ""))},
                _STATUS_VALUE.get(advisory.get("status"), 1))
        drifted = set(summary.facts.get("drift", []))
        for setting in summary.facts.get("settings", sorted(drifted)):
            add("runbook_drift", "gauge", "Setting differs between runtime and config file (1) or not (0)",
                {**base, "setting": setting}, 1 if setting in drifted else 0)
    add("runbook_last_run_timestamp_seconds", "gauge", "UNIX time of the last runbook run", {}, now)
    add("runbook_last_run_exit_code", "gauge", "Exit code of the last runbook run (0 ok, 1 failed, 2 usage, 3 blocked)",
        {}, exit_code)
    lines: list[str] = []
    for name, (kind, help_text, samples) in series.items():
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", *samples]
    return "\n".join(lines) + "\n"


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
