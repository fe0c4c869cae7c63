"""The evidence archive: executed notebooks, their HTML, and a hash-chained index.

Layout: `<archive>/<YYYY>/<MM>/<DD>/<UTC time>-<notebook>-<target>.ipynb` (+ `.html`),
and `<archive>/index.jsonl`, one JSON record per run; each record carries the sha256
of the previous line, so an edited or deleted record breaks the chain.

The archive is a local directory or an fsspec URL (`s3://bucket/prefix`, `gs://...`,
`memory://...`). A remote archive stages a run's files in a local temp dir (papermill
writes there), and uploads them, then the record, when the record is added.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import random
import re
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import unquote, urlsplit

from runbook.errors import ArchiveError, ParameterError

log = logging.getLogger(__name__)

INDEX = "index.jsonl"
GENESIS = "0" * 64
ARCHIVE_ENV = "RUNBOOK_ARCHIVE"
#: The name prefix of the object a remote archive writes, reads back and deletes to prove it takes
#: writes; each check adds its own random suffix, so runs starting together do not share one object.
WRITE_CHECK = ".runbook-write-check"
#: How often an append to a remote index is retried when another writer changed it first.
APPEND_ATTEMPTS = 10


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
    by `add`, then the record is appended to `<url>/index.jsonl`. Only `close` (after a run
    that finished) removes the staging dir: a failed upload keeps it (with the unsent record in
    its own index.jsonl) and names it in the ArchiveError; `abandon` (a run that raised) keeps
    it and logs where it is. An upload never replaces an object already at the archive: a file
    whose name is taken (another host, the same notebook, target and millisecond) is stored
    under `<stem>-2<suffix>` (or -3, ...), and the record names it there.

    Object stores cannot append: `add` reads the whole index, appends and writes it back. On S3
    the write is conditional (If-Match on the ETag read, If-None-Match for a new index), so a
    concurrent writer makes it fail and it is redone on the new index. Other stores have no
    such guard, so concurrent writers to one remote index are not supported there: reading the
    index back after the write catches (ArchiveError) only a rewrite that lands after this one.
    """

    def __init__(self, dest: str | Path) -> None:
        where = destination(dest)
        self.dest = str(where)
        self.url: str | None = None
        self._remote: _Remote | None = None
        if isinstance(where, Path):
            self.local = where
            return
        self._remote = _Remote.open(where)
        _check_writable(_Remote.open(where, quick=True))
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
        """Store the record's files (already written under `local`) and append the record; returns it as written."""
        if self._remote is None:
            return append_record(self.local, record)
        try:
            files: dict[str, str] = {}
            for rel, digest in record.get("files", {}).items():
                stored, stored_digest = self._uploaded.get(rel, ("", ""))
                if stored_digest != digest:  # a fleet step's records share one notebook: upload it once
                    stored = _upload_new(self._remote, self.local / rel, rel)
                    self._uploaded[rel] = (stored, digest)
                files[stored] = digest
            return _append_remote(self._remote, {**record, "files": files} if files else record)
        except Exception as err:
            self._kept = True
            append_record(self.local, record)
            cause = str(err) if isinstance(err, ArchiveError) else explain(self._remote.url, err)
            raise ArchiveError(f"run {record.get('run_id')} was not archived: {cause}. Its files and record are "
                               f"kept in {self.local}, a local archive of its own (`runbook archive verify "
                               f"--archive {self.local}`)") from err

    def location(self, path: Path | None = None) -> str:
        """Where a local path ends up, for people to read (the index when no path is given)."""
        if self._remote is None:
            return str(path if path is not None else self.local / INDEX)
        rel = INDEX if path is None else Path(path).relative_to(self.local).as_posix()
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


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _line_hash(line: bytes) -> str:
    return hashlib.sha256(line.rstrip(b"\n")).hexdigest()


def _chained(index: bytes, record: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
    """`record` chained to the last line of `index`, and its line."""
    lines = [ln for ln in index.splitlines() if ln.strip()]
    record = {**record, "prev_hash": _line_hash(lines[-1]) if lines else GENESIS}
    return record, json.dumps(record, sort_keys=True, separators=(",", ":")).encode() + b"\n"


def append_record(root: Path, record: dict[str, Any]) -> dict[str, Any]:
    """Append `record` to the index, chained to the previous line; returns it as written."""
    root.mkdir(parents=True, exist_ok=True)
    with (root / INDEX).open("a+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        record, line = _chained(f.read(), record)
        f.seek(0, os.SEEK_END)
        f.write(line)
        f.flush()
        os.fsync(f.fileno())
    return record


def read_index(root: Path | str) -> list[dict[str, Any]]:
    """The records of the archive at `root` (a directory or a URL); empty when it has no index."""
    where = destination(root)
    if isinstance(where, Path):
        path = where / INDEX
        data = path.read_bytes() if path.exists() else b""
    else:
        data = _Remote.open(where).read_index() or b""
    return [json.loads(ln) for ln in data.splitlines() if ln.strip()]


def verify(root: Path | str) -> list[str]:
    """Every problem in the archive: broken chain, unparsable line, missing or altered file."""
    where = destination(root)
    if isinstance(where, Path):
        path = where / INDEX
        if not path.exists():
            return [f"{path} does not exist"]

        def local_digest(rel: str) -> str | None:
            f = where / rel
            return sha256_file(f) if f.exists() else None

        return _problems(path.read_bytes(), local_digest)
    remote = _Remote.open(where)
    data = remote.read_index()
    if data is None:
        return [f"{remote.url}/{INDEX} does not exist"]
    try:
        return _problems(data, remote.sha256)
    except Exception as err:
        raise ParameterError(explain(remote.url, err)) from err


def _problems(index: bytes, digest: Callable[[str], str | None]) -> list[str]:
    """The chain and file problems of an index, `digest(rel)` giving a file's sha256 (None: missing)."""
    problems: list[str] = []
    prev = GENESIS
    for n, line in enumerate(index.splitlines(), start=1):
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
        for rel, expected in rec.get("files", {}).items():
            actual = digest(rel)
            if actual is None:
                problems.append(f"line {n} (run {rec.get('run_id')}): {rel} is missing")
            elif actual != expected:
                problems.append(f"line {n} (run {rec.get('run_id')}): {rel} was altered (sha256 differs)")
        prev = _line_hash(line)
    return problems


# --- remote archives (fsspec) -----------------------------------------------------------------

#: Options for the quick check that opens a run: a dead endpoint fails in seconds, not minutes.
_QUICK_OPTIONS: dict[str, dict[str, Any]] = {
    "s3": {"config_kwargs": {"connect_timeout": 5, "read_timeout": 10, "retries": {"max_attempts": 2}}},
}


@dataclass(frozen=True)
class _Remote:
    """An archive at an fsspec URL: the filesystem and the archive's root path on it."""

    url: str
    fs: Any  # fsspec.AbstractFileSystem
    root: str

    @classmethod
    def open(cls, url: str, *, quick: bool = False) -> _Remote:
        """The filesystem for `url` (ParameterError when the URL carries credentials or cannot be opened)."""
        refuse_credentials(url)
        from fsspec.core import url_to_fs  # noqa: PLC0415  (only remote archives need it)

        scheme = urlsplit(url).scheme
        options = {"skip_instance_cache": True, **_QUICK_OPTIONS.get(scheme, {})} if quick else {}
        try:
            fs, root = url_to_fs(url, **options)
        except Exception as err:
            raise ParameterError(explain(url, err)) from err
        if quick and hasattr(fs, "retries"):
            fs.retries = 2  # s3fs retries each call 5 times with backoff by default
        return cls(url, fs, root.rstrip("/"))

    def path(self, rel: str) -> str:
        return f"{self.root}/{rel}"

    def is_s3(self) -> bool:
        protocol = self.fs.protocol
        return "s3" in (protocol if isinstance(protocol, (tuple, list)) else (protocol,))

    def read_index(self) -> bytes | None:
        """The index's bytes, None when there is none (ParameterError when the store cannot be read)."""
        try:
            return self.fs.cat_file(self.path(INDEX))
        except FileNotFoundError as err:
            if _missing_bucket(err):
                raise ParameterError(explain(self.url, err)) from err
            return None
        except Exception as err:
            raise ParameterError(explain(self.url, err)) from err

    def sha256(self, rel: str) -> str | None:
        """The sha256 of an archived file, None when it is missing."""
        h = hashlib.sha256()
        try:
            with self.fs.open(self.path(rel), "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
        except FileNotFoundError:
            return None
        return h.hexdigest()


def _check_writable(remote: _Remote) -> None:
    """Write, read back and delete a small object of this run's own at the archive (ParameterError when that fails)."""
    name = f"{WRITE_CHECK}-{uuid.uuid4().hex}"
    probe, token = remote.path(name), f"runbook write check {name}\n".encode()
    try:
        remote.fs.pipe_file(probe, token)
        back = remote.fs.cat_file(probe)
    except Exception as err:
        raise ParameterError(explain(remote.url, err)) from err
    if back != token:
        raise ParameterError(f"evidence archive {remote.url}: an object written there read back different; "
                             "check the storage service before archiving evidence to it")
    try:
        remote.fs.rm_file(probe)
    except Exception as err:  # noqa: BLE001  (a store that may not delete still archives)
        log.info("could not remove the write check %s/%s: %s", remote.url, name, err)


def _upload_new(remote: _Remote, local: Path, rel: str) -> str:
    """Upload `local` to `rel` at the archive, or to `<stem>-2<suffix>` (-3, ...) when that name is
    taken; returns the name used. Never replaces an object: on S3 the write is conditional
    (If-None-Match), elsewhere the name is checked first (a race there can still replace one)."""
    stem, suffix = rel[: -len(Path(rel).suffix) or None], Path(rel).suffix
    name, n = rel, 2
    while True:
        path = remote.path(name)
        try:
            if remote.is_s3():
                remote.fs.put_file(str(local), path, mode="create")
                return name
            if not remote.fs.exists(path):
                remote.fs.put_file(str(local), path)
                return name
        except OSError as err:
            if not (isinstance(err, FileExistsError) or _error_code(err) in _CONFLICT_CODES):
                raise
        log.info("%s/%s already exists (another run wrote evidence under the same name): trying %s-%d%s",
                 remote.url, name, stem, n, suffix)
        name, n = f"{stem}-{n}{suffix}", n + 1


def _append_remote(remote: _Remote, record: dict[str, Any]) -> dict[str, Any]:
    """Read the index, append `record` chained to its last line, write it back; returns the record."""
    index = remote.path(INDEX)
    for attempt in range(APPEND_ATTEMPTS):
        old, guard = _read_guarded(remote, index)
        written, line = _chained(old, record)
        new = old + (b"\n" if old and not old.endswith(b"\n") else b"") + line
        if remote.is_s3():
            # s3fs sends data of 2 * chunksize or more as a multipart upload, and CreateMultipartUpload
            # takes no If-Match: keep the index one conditional PutObject however large it grows.
            guard = {**guard, "chunksize": max(len(new) + 1, 50 << 20)}
        try:
            remote.fs.pipe_file(index, new, **guard)
        except OSError as err:
            if _error_code(err) in _CONFLICT_CODES:
                log.info("%s changed while this run appended to it: appending again", index)
                time.sleep(random.uniform(0, 0.05 * (attempt + 1)))  # let the other writer finish
                continue
            raise
        if line.rstrip(b"\n") not in remote.fs.cat_file(index).splitlines():
            # Another writer replaced the index after ours (a store without conditional writes, or one
            # whose conditional create is not atomic): this record is not in it, so append it again.
            log.warning("%s was rewritten by another writer right after this run appended to it: appending again",
                        index)
            time.sleep(random.uniform(0, 0.05 * (attempt + 1)))
            continue
        return written
    raise ArchiveError(f"{remote.url}/{INDEX} changed under every one of {APPEND_ATTEMPTS} attempts to append "
                       "to it: another writer keeps writing there")


#: What S3 answers to a conditional write whose condition no longer holds.
_CONFLICT_CODES = ("PreconditionFailed", "ConditionalRequestConflict")


def _read_guarded(remote: _Remote, index: str) -> tuple[bytes, dict[str, str]]:
    """The index's bytes and, on S3, the condition that makes writing it back fail if it changed since."""
    if not remote.is_s3():
        try:
            return remote.fs.cat_file(index), {}
        except FileNotFoundError:
            return b"", {}
    remote.fs.invalidate_cache(index)
    try:
        etag = remote.fs.info(index)["ETag"]
    except FileNotFoundError:
        return b"", {"IfNoneMatch": "*"}
    try:
        # Read after the ETag: a change in between makes the conditional write fail, and we redo it.
        return remote.fs.cat_file(index), {"IfMatch": etag}
    except FileNotFoundError:
        return b"", {"IfNoneMatch": "*"}


def refuse_credentials(url: str) -> None:
    """ParameterError when `url` carries credentials (`s3://KEY:SECRET@bucket`): they would end up in evidence."""
    for part in url.split("::"):
        if "@" in urlsplit(part).netloc:
            raise ParameterError(
                f"evidence archive {masked(url)}: the URL carries credentials before '@'; refused, because the "
                "archive's URL is printed and handed to the notebooks. Give credentials through the environment "
                "(AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, for s3://) and leave them out "
                "of the URL")


def masked(url: str) -> str:
    """`url` with anything before an '@' in its host part replaced by ***."""
    return re.sub(r"//[^/@]*@", "//***@", url)


def _chain(err: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    e: BaseException | None = err
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def _error_code(err: BaseException) -> str:
    """The storage service's error code behind `err` (botocore's ClientError), or ""."""
    for e in _chain(err):
        response = getattr(e, "response", None)
        if isinstance(response, dict):
            return str(response.get("Error", {}).get("Code", ""))
    return ""


def _missing_bucket(err: BaseException) -> bool:
    return _error_code(err) in ("NoSuchBucket", "404 NoSuchBucket") or "bucket does not exist" in str(err).lower()


def explain(url: str, err: BaseException) -> str:
    """One line for a person: the archive, what was found, what to do."""
    parts = urlsplit(url)
    scheme, bucket = parts.scheme, parts.netloc
    names = {type(e).__name__ for e in _chain(err)}
    code = _error_code(err)
    endpoint = ""
    if scheme in ("s3", "s3a"):
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or "AWS S3"
    if isinstance(err, ImportError):
        found = f"the {scheme}:// scheme needs a package that is not installed ({err})"
        todo = ("install it: for s3:// the `s3` extra, pip install 'redis-persistence-runbook[s3]' (s3fs)"
                if scheme in ("s3", "s3a") else "install the fsspec implementation for it")
    elif isinstance(err, ValueError) and "protocol not known" in str(err).lower():
        found = f"fsspec knows no {scheme}:// scheme"
        todo = "use a local directory or a URL fsspec can open, such as s3://bucket/prefix"
    elif names & {"NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError"}:
        found = "no credentials were found in the environment"
        todo = ("set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) for the runbook; never in the URL"
                if endpoint else "give the storage service's credentials through the environment")
    elif _missing_bucket(err):
        found = f"the bucket {bucket} does not exist" + (f" at {endpoint}" if endpoint else "")
        todo = "create it, or fix the bucket name in the URL"
    elif names & {"EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "ClientConnectorError",
                  "ConnectionError", "ConnectionRefusedError", "TimeoutError"}:
        found = f"the storage service{' at ' + endpoint if endpoint else ''} could not be reached ({err})"
        todo = ("check AWS_ENDPOINT_URL (or the network) and that the service is up" if endpoint
                else "check the network and that the service is up")
    elif isinstance(err, PermissionError) or code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
        found = f"access was denied ({err})"
        todo = "check that the credentials in the environment may read and write under this URL"
    else:
        found = f"{type(err).__name__}: {err}"
        todo = "check the URL and the storage service"
    return f"evidence archive {masked(url)}: {found}; {todo}"
