"""Where an archive's bytes live: a local directory or an fsspec URL, behind one protocol (as papermill's iorw).

A store reads, creates and replaces whole objects, appends one line to a segment, lists what it
holds and hashes a file. Writes that race another writer raise `Conflict`, and the caller redoes
its read: a local store serialises writers with a lock instead; on S3 a create is conditional
(If-None-Match) and a replace is conditional on the ETag read (If-Match).
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import re
import tempfile
import uuid
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ContextManager, Iterator, Protocol
from urllib.parse import urlsplit

from runbook.errors import ParameterError
from runbook.evidence.index import INDEX_DIR

log = logging.getLogger(__name__)

#: The name prefix of the object a remote archive writes, reads back and deletes to prove it takes
#: writes; each check adds its own random suffix, so runs starting together do not share one object.
WRITE_CHECK = ".runbook-write-check"
#: What a guarded read hands back to the write that follows it (on S3: IfMatch / IfNoneMatch).
Guard = dict[str, str]


class Conflict(Exception):
    """Another writer changed the object between this writer's read and its write."""


class Store(Protocol):
    url: str

    def read(self, rel: str) -> bytes | None: ...
    def read_guarded(self, rel: str) -> tuple[bytes | None, Guard]: ...
    def exists(self, rel: str) -> bool: ...
    def segment_names(self) -> list[str]: ...
    def create(self, rel: str, data: bytes) -> None: ...
    def replace(self, rel: str, data: bytes, guard: Guard) -> None: ...
    def append(self, rel: str, before: bytes, line: bytes, guard: Guard) -> None: ...
    def walk(self) -> Iterator[tuple[str, int]]: ...
    def digest(self, rel: str) -> tuple[str, int] | None: ...
    def remove(self, rel: str) -> None: ...
    def locked(self) -> ContextManager[None]: ...


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class LocalStore:
    """An archive in a local directory. Writers on this host are serialised by `locked` (flock)."""

    root: Path

    @property
    def url(self) -> str:
        return str(self.root)

    def read(self, rel: str) -> bytes | None:
        try:
            return (self.root / rel).read_bytes()
        except FileNotFoundError:
            return None

    def read_guarded(self, rel: str) -> tuple[bytes | None, Guard]:
        return self.read(rel), {}

    def exists(self, rel: str) -> bool:
        return (self.root / rel).exists()

    def segment_names(self) -> list[str]:
        d = self.root / INDEX_DIR
        return [f"{INDEX_DIR}/{n}" for n in os.listdir(d)] if d.is_dir() else []

    def create(self, rel: str, data: bytes) -> None:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError as err:
            raise Conflict(rel) from err
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(path.parent)

    def replace(self, rel: str, data: bytes, guard: Guard) -> None:
        """Atomically: a temp file in `index/` (on the archive's file system), renamed over `rel`."""
        path, tmpdir = self.root / rel, self.root / INDEX_DIR
        tmpdir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=tmpdir, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_dir(path.parent)

    def append(self, rel: str, before: bytes, line: bytes, guard: Guard) -> None:
        with (self.root / rel).open("ab") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def walk(self) -> Iterator[tuple[str, int]]:
        for d, _, names in os.walk(self.root):
            for name in names:
                path = Path(d) / name
                try:
                    yield path.relative_to(self.root).as_posix(), path.stat().st_size
                except FileNotFoundError:  # removed while walking
                    continue

    def digest(self, rel: str) -> tuple[str, int] | None:
        path = self.root / rel
        try:
            return sha256_file(path), path.stat().st_size
        except FileNotFoundError:
            return None

    def remove(self, rel: str) -> None:
        (self.root / rel).unlink(missing_ok=True)

    @contextmanager
    def locked(self) -> Iterator[None]:
        """The archive's lock on this host (index/.lock): one writer of the index at a time."""
        (self.root / INDEX_DIR).mkdir(parents=True, exist_ok=True)
        with (self.root / INDEX_DIR / ".lock").open("a+b") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            yield


# --- fsspec URLs ----------------------------------------------------------------------------------

#: Options for the quick check that opens a run: a dead endpoint fails in seconds, not minutes.
_QUICK_OPTIONS: dict[str, dict[str, Any]] = {
    "s3": {"config_kwargs": {"connect_timeout": 5, "read_timeout": 10, "retries": {"max_attempts": 2}}},
}
#: What S3 answers to a conditional write whose condition no longer holds.
_CONFLICT_CODES = ("PreconditionFailed", "ConditionalRequestConflict")


@dataclass(frozen=True)
class RemoteStore:
    """An archive at an fsspec URL: the filesystem and the archive's root path on it.

    Object stores cannot append: `append` writes the segment back with the line added. On S3 that
    write is conditional, so a concurrent writer makes it fail (Conflict) and the caller redoes it.
    Other stores have no such guard: reading the segment back after the write catches (Conflict) only
    a rewrite that lands after this one, so concurrent writers there are not supported. The read-back
    is done on S3 too, for servers whose conditional writes are not atomic (moto's).
    """

    url: str
    fs: Any  # fsspec.AbstractFileSystem
    root: str

    @classmethod
    def open(cls, url: str, *, quick: bool = False) -> RemoteStore:
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

    def read(self, rel: str) -> bytes | None:
        """The object's bytes, None when there is none (ParameterError when the bucket is missing)."""
        try:
            return self.fs.cat_file(self.path(rel))
        except FileNotFoundError as err:
            if _missing_bucket(err):
                raise ParameterError(explain(self.url, err)) from err
            return None

    def read_guarded(self, rel: str) -> tuple[bytes | None, Guard]:
        """The object's bytes and, on S3, the condition that makes writing it back fail if it changed since."""
        if not self.is_s3():
            return self.read(rel), {}
        path = self.path(rel)
        self.fs.invalidate_cache(path)
        try:
            etag = self.fs.info(path)["ETag"]
        except FileNotFoundError:
            return None, {"IfNoneMatch": "*"}
        try:
            # Read after the ETag: a change in between makes the conditional write fail, and it is redone.
            return self.fs.cat_file(path), {"IfMatch": etag}
        except FileNotFoundError:
            return None, {"IfNoneMatch": "*"}

    def exists(self, rel: str) -> bool:
        path = self.path(rel)
        self.fs.invalidate_cache(path)
        return bool(self.fs.exists(path))

    def segment_names(self) -> list[str]:
        path = self.path(INDEX_DIR)
        self.fs.invalidate_cache(path)
        try:
            return [f"{INDEX_DIR}/{p.rsplit('/', 1)[-1]}" for p in self.fs.ls(path, detail=False)]
        except FileNotFoundError:
            return []

    def _put(self, rel: str, data: bytes, guard: Guard) -> None:
        extra: dict[str, Any] = dict(guard)
        if guard and self.is_s3():
            # s3fs sends data of 2 * chunksize or more as a multipart upload, and CreateMultipartUpload
            # takes no condition: keep a guarded write one conditional PutObject however large it is.
            extra["chunksize"] = max(len(data) + 1, 50 << 20)
        try:
            self.fs.pipe_file(self.path(rel), data, **extra)
        except OSError as err:
            if isinstance(err, FileExistsError) or error_code(err) in _CONFLICT_CODES:
                raise Conflict(rel) from err
            raise

    def create(self, rel: str, data: bytes) -> None:
        if not self.is_s3() and self.exists(rel):
            raise Conflict(rel)
        self._put(rel, data, {"IfNoneMatch": "*"} if self.is_s3() else {})
        self._landed(rel, data)

    def replace(self, rel: str, data: bytes, guard: Guard) -> None:
        self._put(rel, data, guard)

    def append(self, rel: str, before: bytes, line: bytes, guard: Guard) -> None:
        self._put(rel, before + line, guard)
        self._landed(rel, line)

    def _landed(self, rel: str, line: bytes) -> None:
        """Conflict unless `line` (the last, when several were written at once) is in the object now: another
        writer replaced it right after this write (a store without conditional writes, or one whose conditional
        writes are not atomic, as moto's)."""
        if line.rstrip(b"\n").rsplit(b"\n", 1)[-1] not in (self.read(rel) or b"").splitlines():
            log.warning("%s/%s was rewritten by another writer right after this run wrote to it", self.url, rel)
            raise Conflict(rel)

    def walk(self) -> Iterator[tuple[str, int]]:
        self.fs.invalidate_cache(self.root)
        try:
            found = self.fs.find(self.root, detail=True)
        except FileNotFoundError:
            return
        for path, info in found.items():
            if info.get("type", "file") == "file":
                yield path[len(self.root) + 1:], int(info.get("size") or 0)

    def digest(self, rel: str) -> tuple[str, int] | None:
        """The sha256 and size of an archived file, None when it is missing."""
        h, size = hashlib.sha256(), 0
        try:
            with self.fs.open(self.path(rel), "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
                    size += len(block)
        except FileNotFoundError:
            return None
        return h.hexdigest(), size

    def remove(self, rel: str) -> None:
        try:
            self.fs.rm_file(self.path(rel))
        except FileNotFoundError:
            pass

    def locked(self) -> ContextManager[None]:
        return nullcontext()  # conditional writes instead

    def check_writable(self) -> None:
        """Write, read back and delete a small object of this run's own (ParameterError when that fails)."""
        name = f"{WRITE_CHECK}-{uuid.uuid4().hex}"
        probe, token = self.path(name), f"runbook write check {name}\n".encode()
        try:
            self.fs.pipe_file(probe, token)
            back = self.fs.cat_file(probe)
        except Exception as err:
            raise ParameterError(explain(self.url, err)) from err
        if back != token:
            raise ParameterError(f"evidence archive {self.url}: an object written there read back different; "
                                 "check the storage service before archiving evidence to it")
        try:
            self.fs.rm_file(probe)
        except Exception as err:  # noqa: BLE001  (a store that may not delete still archives)
            log.info("could not remove the write check %s/%s: %s", self.url, name, err)

    def upload_new(self, local: Path, rel: str) -> str:
        """Upload `local` to `rel`, or to `<stem>-2<suffix>` (-3, ...) when that name is taken; returns the name
        used. Never replaces an object: on S3 the write is conditional (If-None-Match), elsewhere the name is
        checked first (a race there can still replace one)."""
        stem, suffix = rel[: -len(Path(rel).suffix) or None], Path(rel).suffix
        name, n = rel, 2
        while True:
            path = self.path(name)
            try:
                if self.is_s3():
                    self.fs.put_file(str(local), path, mode="create")
                    return name
                if not self.fs.exists(path):
                    self.fs.put_file(str(local), path)
                    return name
            except OSError as err:
                if not (isinstance(err, FileExistsError) or error_code(err) in _CONFLICT_CODES):
                    raise
            log.info("%s/%s already exists (another run wrote evidence under the same name): trying %s-%d%s",
                     self.url, name, stem, n, suffix)
            name, n = f"{stem}-{n}{suffix}", n + 1


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


def error_code(err: BaseException) -> str:
    """The storage service's error code behind `err` (botocore's ClientError), or ""."""
    for e in _chain(err):
        response = getattr(e, "response", None)
        if isinstance(response, dict):
            return str(response.get("Error", {}).get("Code", ""))
    return ""


def _missing_bucket(err: BaseException) -> bool:
    return error_code(err) in ("NoSuchBucket", "404 NoSuchBucket") or "bucket does not exist" in str(err).lower()


def explain(url: str, err: BaseException) -> str:
    """One line for a person: the archive, what was found, what to do."""
    parts = urlsplit(url)
    scheme, bucket = parts.scheme, parts.netloc
    names = {type(e).__name__ for e in _chain(err)}
    code = error_code(err)
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
