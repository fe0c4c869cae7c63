"""Which runs `runbook archive list` shows: by change id, by target and by start time.

Pure functions over `runbook.evidence.journal.listing` rows; every error is a ParameterError (exit 2).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable, Mapping

from runbook.errors import ParameterError

_AGE = re.compile(r"^(?P<n>\d+)\s*(?P<unit>[smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """`--since`: an age (`30m`, `2h`, `3d`, `1w`: that long before `now`) or an ISO date or date and time
    (`2026-12-01`, `2026-12-01T14:00`, UTC unless it carries an offset such as `+02:00` or `Z`)."""
    raw = text.strip()
    age = _AGE.match(raw.lower())
    if age:
        now = now or datetime.now(timezone.utc)
        return now - timedelta(**{_UNITS[age["unit"]]: int(age["n"])})
    if raw.endswith(("z", "Z")):  # Python 3.10's fromisoformat reads +00:00 only
        raw = raw[:-1] + "+00:00"
    try:
        when = datetime.fromisoformat(raw)
    except ValueError:
        raise ParameterError(f"--since {text!r} is neither an age nor an ISO date: give e.g. 30m, 2h, 3d, 1w, "
                             "2026-12-01 or 2026-12-01T14:00 (UTC unless an offset such as +02:00 is given)") from None
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def started(row: Mapping[str, Any]) -> datetime | None:
    """When the row's run started (its `started` field, as the runner writes it), None when it has none."""
    try:
        when = datetime.fromisoformat(str(row.get("started", "")))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


@dataclass(frozen=True)
class RowFilter:
    """`archive list --change ID --target T --since WHEN`: a row is shown when it matches every filter given.

    change: the change id or its first characters (as `git` takes a commit's); target: a substring of the
    row's target (`prod-1` matches `redis://prod-1:6379/0`); since: the run started at or after it.
    """

    change: str = ""
    target: str = ""
    since: datetime | None = None

    def matches(self, row: Mapping[str, Any]) -> bool:
        if self.change and not str(row.get("change_id", "")).startswith(self.change):
            return False
        if self.target and self.target not in str(row.get("target", "")):
            return False
        if self.since is not None:
            when = started(row)
            return when is not None and when >= self.since
        return True

    def apply(self, rows: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
        return [row for row in rows if self.matches(row)]

    def describe(self) -> str:
        """The filters given, as the command line said them ("" when none)."""
        parts = [f"--change {self.change}" if self.change else "", f"--target {self.target}" if self.target else "",
                 f"--since {self.since.isoformat(timespec='seconds')}" if self.since else ""]
        return " ".join(p for p in parts if p)
