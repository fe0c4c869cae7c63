"""The evidence archive: executed notebooks, their HTML, and a hash-chained index of one record per run.

Layout: `<archive>/<YYYY>/<MM>/<DD>/<UTC time>-<notebook>-<target>.ipynb` (+ `.html`); the index in
segments `<archive>/index/<seq>.jsonl` (`runbook.evidence.index`: chain, head, verification), and
`<archive>/head.json`, where the chain ends. Archives from before the segments keep their single
`index.jsonl`, read first; new records go to segments.

The archive is a local directory or an fsspec URL (`s3://bucket/prefix`, `gs://...`, `memory://...`),
behind one store protocol (`runbook.evidence.stores`). A remote archive stages a run's files in a
local temp dir (papermill writes there), and uploads them, then the record, when the record is added
(`runbook.evidence.appending`). With $RUNBOOK_SIGNING_KEY set, every entry and the head are signed
(`runbook.evidence.signing`). `runbook.evidence.prune` removes old routine inspections.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from runbook.errors import ArchiveError, ParameterError
from runbook.evidence.appending import append_many, append_record
from runbook.evidence.index import (
    GENESIS,
    HEAD,
    INDEX_DIR,
    LEGACY_INDEX,
    LIMITS_WITHOUT_KEY,
    Findings,
    examine,
    examine_files,
    lines,
    ordered,
    parse,
    records,
    split_torn,
)
from runbook.evidence.signing import Signer, Verifier
from runbook.evidence.stores import WRITE_CHECK, LocalStore, RemoteStore, Store, explain, sha256_file

log = logging.getLogger(__name__)

__all__ = ["ARCHIVE_ENV", "GENESIS", "HEAD", "INDEX_DIR", "LEGACY_INDEX", "WRITE_CHECK", "Archive", "Findings",
           "append_record", "archive_root", "check", "destination", "read_entries", "read_index", "read_store",
           "run_path", "sha256_file", "slug", "verify"]

ARCHIVE_ENV = "RUNBOOK_ARCHIVE"


def archive_root(arg: str | None = None) -> Path | str:
    """--archive, else $RUNBOOK_ARCHIVE, else ./archive: a local Path, or a URL kept as a string."""
    return destination(arg or os.environ.get(ARCHIVE_ENV) or "archive")


def destination(dest: str | Path) -> Path | str:
    """A local directory as a Path; an fsspec URL as a string (a Path would fold its `//`).

    `file:///dir` is the local directory `/dir`.
    """
    if isinstance(dest, Path):
        return dest
    if dest.startswith("file://"):
        parts = urlsplit(dest)
        if parts.netloc not in ("", "localhost"):
            raise ParameterError(f"evidence archive {dest}: a file:// URL names a local directory "
                                 "(file:///path); for another host use a mounted path or an object store URL")
        return Path(unquote(parts.path))
    if "://" in dest:
        return dest.rstrip("/")
    return Path(dest)


def open_store(root: Path | str) -> Store:
    where = destination(root)
    return LocalStore(where) if isinstance(where, Path) else RemoteStore.open(where)


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

    An fsspec URL: opening it proves the destination takes writes (an object is written, read
    back and deleted), so a run fails with ParameterError before any notebook runs when the
    endpoint is unreachable, the bucket is missing, there are no credentials or the scheme
    needs a package that is not installed. Credentials come from the environment only: a URL
    that carries them is refused. Files are staged in a local temp dir (`local`) and uploaded
    by `add`, then the record is appended to the index's last segment. Only `close` (after a run
    that finished) removes the staging dir: a failed upload keeps it (with the unsent record in
    its own index) and names it in the ArchiveError; `abandon` (a run that raised) keeps it and
    logs where it is. An upload never replaces an object already at the archive: a file whose
    name is taken (another host, the same notebook, target and millisecond) is stored under
    `<stem>-2<suffix>` (or -3, ...), and the record names it there.

    Object stores cannot append: `add` rewrites the last segment (at most SEGMENT_BYTES, whatever
    the archive's size). On S3 the write is conditional, so a concurrent writer makes it fail and it
    is redone (`runbook.evidence.stores`).

    With $RUNBOOK_SIGNING_KEY set, opening checks that the key signs (ParameterError otherwise).
    """

    def __init__(self, dest: str | Path) -> None:
        where = destination(dest)
        self.dest = str(where)
        self.url: str | None = None
        self._remote: RemoteStore | None = None
        self._segment = ""  # the segment this archive's last record went to
        self.signer = Signer.from_env()
        if isinstance(where, Path):
            self.local = where
            return
        self._remote = RemoteStore.open(where)
        RemoteStore.open(where, quick=True).check_writable()
        self.url = where
        self.local = Path(tempfile.mkdtemp(prefix="runbook-archive-"))
        self._uploaded: dict[str, tuple[str, str]] = {}  # staged rel -> (rel at the archive, sha256)
        self._kept = False

    def require_writable(self) -> None:
        """ParameterError unless a local archive directory takes a file (a remote one was checked on opening).

        Leaves it as found: directories made for the check are removed again.
        """
        if self.url is not None:
            return
        try:
            probe_writable(self.local)
        except OSError as err:
            raise ParameterError(f"evidence archive {self.local} does not take files ({err.strerror or err}): pass "
                                 "--archive with a writable directory. Nothing was run.") from err

    def run_path(self, notebook: str, target: str, started: datetime) -> Path:
        """A reserved local path for a run's executed notebook (its HTML goes beside it)."""
        return run_path(self.local, notebook, target, started)

    def files(self, paths: list[Path]) -> dict[str, str]:
        """The `files` entry of a record: each path relative to the archive, with its sha256."""
        return {p.relative_to(self.local).as_posix(): sha256_file(p) for p in paths}

    def add(self, record: dict[str, Any]) -> dict[str, Any]:
        """Store the record's files (already written under `local`) and append the record; returns it as written.

        The record gains `sizes` (each file's size, so verify can tell a partial file), `seq`, `prev_hash` and,
        with a signing key, `signature`."""
        return self.add_many([record])[0]

    def add_many(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """`add` for several records at once, in order (a fleet step's one per target): their files are stored
        once, and the index takes them in a few writes (`appending.append_many`), not one each."""
        records = [self._with_sizes(r) for r in records]
        if self._remote is None:
            written, self._segment = append_many(LocalStore(self.local), records, self.signer)
            return written
        landed: list[dict[str, Any]] = []
        try:
            sent = [self._uploaded_files(r) for r in records]
            written, self._segment = append_many(self._remote, sent, self.signer, landed)
            return written
        except Exception as err:
            self._kept = True
            for record in records[len(landed):]:
                append_record(self.local, record, self.signer)
            first = records[len(landed)]
            cause = str(err) if isinstance(err, ArchiveError) else explain(self._remote.url, err)
            runs = f"run {first.get('run_id')}" + (f" and {len(records) - len(landed) - 1} more"
                                                   if len(records) - len(landed) > 1 else "")
            raise ArchiveError(f"{runs} was not archived: {cause}. Its files and record are kept in {self.local}, "
                               f"a local archive of its own (`runbook archive verify --archive {self.local}`)"
                               ) from err

    def _uploaded_files(self, record: dict[str, Any]) -> dict[str, Any]:
        """`record` with its files uploaded (each once: a fleet step's records share one notebook), named as
        stored at the archive."""
        assert self._remote is not None
        files: dict[str, str] = {}
        sizes: dict[str, int] = {}
        for rel, digest in record.get("files", {}).items():
            stored, stored_digest = self._uploaded.get(rel, ("", ""))
            if stored_digest != digest:
                stored = self._remote.upload_new(self.local / rel, rel)
                self._uploaded[rel] = (stored, digest)
            files[stored] = digest
            if rel in record.get("sizes", {}):
                sizes[stored] = record["sizes"][rel]
        return {**record, "files": files, "sizes": sizes} if files else record

    def _with_sizes(self, record: dict[str, Any]) -> dict[str, Any]:
        files = record.get("files") or {}
        sizes = {}
        for rel in files:
            try:
                sizes[rel] = (self.local / rel).stat().st_size
            except OSError:
                continue
        return {**record, "sizes": sizes} if sizes else record

    def location(self, path: Path | None = None) -> str:
        """Where a local path ends up, for people to read (the index segment last written when no path is given)."""
        index = self._segment or INDEX_DIR
        if self._remote is None:
            return str(path if path is not None else self.local / index)
        rel = index if path is None else Path(path).relative_to(self.local).as_posix()
        return f"{self._remote.url}/{self._uploaded.get(rel, (rel, ''))[0]}"

    def env_value(self) -> str:
        """What the kernel gets in $RUNBOOK_ARCHIVE (the rollback notebook reads the index there)."""
        return self.url if self.url is not None else str(self.local.resolve())

    def close(self) -> None:
        """After a run that finished: remove a remote archive's staging dir, unless a failed upload kept it."""
        if self._remote is not None and not self._kept:
            shutil.rmtree(self.local, ignore_errors=True)

    def abandon(self) -> None:
        """After a run that raised: keep a remote archive's staging dir when it holds files not yet
        uploaded (a step that may have changed the target), and log where it is."""
        if self._remote is None or self._kept:
            return
        uploaded = set(self._uploaded)
        pending = sorted(p.relative_to(self.local).as_posix() for p in self.local.rglob("*")
                         if p.is_file() and p.relative_to(self.local).as_posix() not in uploaded)
        if not pending:
            shutil.rmtree(self.local, ignore_errors=True)
            return
        self._kept = True
        log.warning("the run stopped before all its evidence was archived: evidence kept in %s; upload it to "
                    "%s by hand (not uploaded, and named in no record: %s)",
                    self.local, self._remote.url, ", ".join(pending))


def probe_writable(directory: Path) -> None:
    """OSError unless a file can be created in `directory` (made for the check, with missing parents, which are
    removed again: it is left as found)."""
    missing: list[Path] = []
    probe = directory.absolute()
    while not probe.exists() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    made: list[Path] = []
    try:
        for d in reversed(missing):
            d.mkdir()
            made.append(d)
        fd, name = tempfile.mkstemp(dir=directory, prefix=f"{WRITE_CHECK}-")
        os.close(fd)
        os.unlink(name)
    finally:
        for d in reversed(made):
            try:
                d.rmdir()
            except OSError:
                pass


# --- reading and verifying --------------------------------------------------------------------------

def _segments(store: Store) -> list[tuple[str, bytes]]:
    """Every segment's bytes, in chain order (the old single index first)."""
    out = []
    legacy = store.read(LEGACY_INDEX)
    if legacy is not None:
        out.append((LEGACY_INDEX, legacy))
    for name in ordered(store.segment_names()):
        data = store.read(name)
        if data is not None:
            out.append((name, data))
    return out


def read_store(root: Path | str) -> tuple[Store, list[tuple[str, bytes]], bytes | None]:
    """The store, its segments and its head, read before the segments: a record appended meanwhile then
    leaves the head behind the segments read (a note), never ahead of them (a dropped tail)."""
    store = open_store(root)
    try:
        head = store.read(HEAD)
        return store, _segments(store), head
    except ParameterError:
        raise
    except Exception as err:
        if isinstance(store, LocalStore) and isinstance(err, OSError):
            raise ParameterError(f"evidence archive {store.url}: its index cannot be read ({err.strerror or err}); "
                                 "check the path and this user's rights on it") from err
        if isinstance(store, LocalStore):
            raise
        raise ParameterError(explain(store.url, err)) from err


def read_entries(root: Path | str) -> list[dict[str, Any]]:
    """Every entry of the archive at `root`, records and checkpoints, in order (no partial or damaged lines)."""
    _, segments, _ = read_store(root)
    return [e for _, data in segments for ln in lines(split_torn(data)[0]) if (e := parse(ln)) is not None]


def read_index(root: Path | str) -> list[dict[str, Any]]:
    """The records of the archive at `root` (a directory or a URL), in order; empty when it has no index.

    A partial last line and lines that are not JSON are left out (`verify` reports them); so are the
    checkpoints `prune` leaves."""
    _, segments, _ = read_store(root)
    return list(records(segments))


def check(root: Path | str) -> Findings:
    """Everything `archive verify` says about the archive at `root`: problems, and notes on what was proven.

    Signatures are checked when $RUNBOOK_ALLOWED_SIGNERS names an allowed-signers file."""
    verifier = Verifier.from_env()
    store, segments, head = read_store(root)
    try:
        if not segments and head is None:
            return Findings(problems=[f"{store.url}/{INDEX_DIR} does not exist: nothing was archived here"])
        found, walk = examine(segments, head, verifier.check if verifier is not None else None)
        announced = {rel: rec for rel, rec in walk.announced.items() if rel not in walk.listed}
        # A save of that file cut short by the kill (runbook.evidence.journal.AtomicSaves' temp file beside it).
        saving = {(p.parent / f".{p.name}.saving").as_posix() for p in map(Path, announced)}
        present = [(rel, size) for rel, size in store.walk()
                   if rel not in announced and rel not in saving and not rel.startswith(WRITE_CHECK)]
        examine_files(found, walk, store.digest, present)
    except (ParameterError, ArchiveError):
        raise
    except Exception as err:
        if isinstance(store, LocalStore):
            raise
        raise ParameterError(explain(store.url, err)) from err
    for rel, rec in announced.items():
        found.notes.append(f"{rel}: the evidence of run {rec.get('run_id')} ({rec.get('notebook')} on "
                           f"{rec.get('target')}), named by its {rec.get('status')} record; no verdict lists it")
    if verifier is None:
        found.notes.append(LIMITS_WITHOUT_KEY)
    return found


def verify(root: Path | str) -> list[str]:
    """Every problem in the archive: broken chain, bad signature, dropped tail, missing, partial, altered or
    unlisted file, a partial index line."""
    return check(root).problems
