"""The evidence archive: executed notebooks, their HTML, and a hash-chained index.

Layout: `<archive>/<YYYY>/<MM>/<DD>/<UTC time>-<notebook>-<target>.ipynb` (+ `.html`),
and `<archive>/index.jsonl`, one JSON record per run; each record carries the sha256
of the previous line, so an edited or deleted record breaks the chain.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
from datetime import datetime
from pathlib import Path
from typing import Any

INDEX = "index.jsonl"
GENESIS = "0" * 64
ARCHIVE_ENV = "RUNBOOK_ARCHIVE"


def archive_root(arg: str | None = None) -> Path:
    """--archive, else $RUNBOOK_ARCHIVE, else ./archive."""
    return Path(arg or os.environ.get(ARCHIVE_ENV) or "archive")


def slug(text: str) -> str:
    """`text` made safe for a file name: redis://10.0.0.5:6379/0 -> redis-10.0.0.5-6379-0."""
    s = re.sub(r"^[a-z]+://", lambda m: m.group(0)[:-3] + "-", text)
    return re.sub(r"[^A-Za-z0-9._-]+", "-", s).strip("-")[:80] or "target"


def run_path(root: Path, notebook: str, target: str, started: datetime) -> Path:
    """Where a run's executed notebook goes (the HTML goes beside it)."""
    day = root / started.strftime("%Y/%m/%d")
    day.mkdir(parents=True, exist_ok=True)
    stem = f"{started.strftime('%H%M%S.%f')[:-3]}Z-{notebook}-{slug(target)}"
    path, n = day / f"{stem}.ipynb", 2
    while True:
        try:
            path.touch(exist_ok=False)  # reserve the name, even against a concurrent runner
            return path
        except FileExistsError:
            path, n = day / f"{stem}-{n}.ipynb", n + 1


class Archive:
    """Where a run's evidence goes. The runner writes through this and nothing else.

    A local directory: files are written in place and the index is appended under a lock.
    """

    def __init__(self, dest: str | Path) -> None:
        self.dest = str(dest)
        self.local = Path(dest)

    def run_path(self, notebook: str, target: str, started: datetime) -> Path:
        """A reserved local path for a run's executed notebook (its HTML goes beside it)."""
        return run_path(self.local, notebook, target, started)

    def files(self, paths: list[Path]) -> dict[str, str]:
        """The `files` entry of a record: each path relative to the archive, with its sha256."""
        return {str(p.relative_to(self.local)): sha256_file(p) for p in paths}

    def add(self, record: dict[str, Any]) -> dict[str, Any]:
        """Store the record's files (already written under `local`) and append the record; returns it as written."""
        return append_record(self.local, record)

    def location(self, path: Path | None = None) -> str:
        """Where a local path ends up, for people to read (the index when no path is given)."""
        return str(path if path is not None else self.local / INDEX)

    def env_value(self) -> str:
        """What the kernel gets in $RUNBOOK_ARCHIVE (the rollback notebook reads the index there)."""
        return str(self.local.resolve())

    def close(self) -> None:
        """Nothing to do for a local directory."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _line_hash(line: bytes) -> str:
    return hashlib.sha256(line.rstrip(b"\n")).hexdigest()


def append_record(root: Path, record: dict[str, Any]) -> dict[str, Any]:
    """Append `record` to the index, chained to the previous line; returns it as written."""
    root.mkdir(parents=True, exist_ok=True)
    with (root / INDEX).open("a+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        lines = [ln for ln in f.read().splitlines() if ln.strip()]
        record = {**record, "prev_hash": _line_hash(lines[-1]) if lines else GENESIS}
        f.seek(0, os.SEEK_END)
        f.write(json.dumps(record, sort_keys=True, separators=(",", ":")).encode() + b"\n")
        f.flush()
        os.fsync(f.fileno())
    return record


def read_index(root: Path) -> list[dict[str, Any]]:
    path = root / INDEX
    if not path.exists():
        return []
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]


def verify(root: Path) -> list[str]:
    """Every problem in the archive: broken chain, unparsable line, missing or altered file."""
    path = root / INDEX
    if not path.exists():
        return [f"{path} does not exist"]
    problems: list[str] = []
    prev = GENESIS
    for n, line in enumerate(path.read_bytes().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as err:
            problems.append(f"line {n}: not JSON ({err})")
            prev = _line_hash(line)
            continue
        if rec.get("prev_hash") != prev:
            problems.append(f"line {n} (run {rec.get('run_id')}): hash chain broken: a record before it was "
                            "changed, removed or inserted")
        for rel, digest in rec.get("files", {}).items():
            f = root / rel
            if not f.exists():
                problems.append(f"line {n} (run {rec.get('run_id')}): {rel} is missing")
            elif sha256_file(f) != digest:
                problems.append(f"line {n} (run {rec.get('run_id')}): {rel} was altered (sha256 differs)")
        prev = _line_hash(line)
    return problems
