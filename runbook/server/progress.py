"""How far a long wait has got, for the terminal of the run that started the kernel.

A wait (the initial AOF rewrite, a BGSAVE, a restart, a boot check) runs inside the notebook kernel, a
process of its own. While `runbook run` watches on a terminal it names a file in $RUNBOOK_PROGRESS_FILE;
each wait appends one JSON line to it (what it waits for, elapsed, deadline, what the server reports),
and the runner tails the file and redraws one status line. With no such file (cron, JupyterLab, a test)
nothing is written.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

#: The file the waits of a watched run append to (set by the runner in the kernel's environment).
PROGRESS_ENV = "RUNBOOK_PROGRESS_FILE"
#: Seconds between two reports of one wait; a wait shorter than this is never reported.
INTERVAL_S = 0.5


@dataclass(frozen=True)
class WaitProgress:
    """One report of a wait: what it waits for, seconds waited, its deadline, what the server reports."""

    label: str
    elapsed_s: float
    deadline_s: float
    seen: str

    def line(self, since_s: float = 0.0) -> str:
        """`label elapsed / deadline: seen`, elapsed moved on by `since_s` (time since the report)."""
        elapsed = min(self.elapsed_s + since_s, self.deadline_s)
        return f"{self.label} {elapsed:.1f} s / {self.deadline_s:g} s" + (f": {self.seen}" if self.seen else "")


def describe(seen: object) -> str:
    """What a wait saw, in one line: `field:value` pairs for INFO fields, else the text."""
    if isinstance(seen, Mapping):
        return " ".join(f"{k}:{v}" for k, v in seen.items() if v is not None)
    return " ".join(str(seen or "").split())


def report(label: str, elapsed_s: float, deadline_s: float, seen: object) -> None:
    """Append one report to $RUNBOOK_PROGRESS_FILE, when it names one; never raises (progress is a courtesy)."""
    path = os.environ.get(PROGRESS_ENV)
    if not path:
        return
    line = json.dumps({"label": label, "elapsed_s": round(elapsed_s, 2), "deadline_s": deadline_s,
                       "seen": describe(seen)})
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
    except OSError:
        pass


def read_reports(path: Path, offset: int) -> tuple[list[WaitProgress], int]:
    """The reports appended to `path` after byte `offset`, and the offset after the last whole line."""
    try:
        with path.open("rb") as f:
            f.seek(offset)
            data = f.read()
    except OSError:
        return [], offset
    end = data.rfind(b"\n") + 1  # a line still being written is read next time
    reports = []
    for raw in data[:end].splitlines():
        try:
            rec: dict[str, Any] = json.loads(raw)
            reports.append(WaitProgress(str(rec["label"]), float(rec["elapsed_s"]), float(rec["deadline_s"]),
                                        str(rec.get("seen", ""))))
        except (ValueError, KeyError, TypeError):
            continue  # not one of ours: skip it
    return reports, offset + end
