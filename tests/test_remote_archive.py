"""The evidence archive at an fsspec URL: a real S3 API (moto's server on a loopback port), real runs.

No mocks of the archive: the runner writes through `Archive`, the objects are read back with boto3,
and tampering is done to the objects themselves.
"""

from __future__ import annotations

import gc
import hashlib
import importlib.util
import inspect
import itertools
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import pytest
from helpers import REPO, runbook_cli, wait_for_port

from runbook.errors import ArchiveError, ParameterError
from runbook.evidence import stores
from runbook.evidence.archive import (
    GENESIS,
    HEAD,
    WRITE_CHECK,
    Archive,
    destination,
    read_index,
    verify,
)
from runbook.evidence.stores import RemoteStore, refuse_credentials
from runbook.sandbox.throwaway import free_port

SECRET = "moto-secret-Zq9-4f1c"  # moto takes any key; this one must never reach the evidence
INDEX = "index/0000000001.jsonl"  # the index's first segment (named by the seq of its first record)


def _needs(module: str) -> None:
    if importlib.util.find_spec(module) is None:
        reason = f"{module} is not installed (pip install -e '.[test]')"
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the remote archive tests: {reason}")
        pytest.skip(reason)


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """moto's S3 server on a free loopback port, for the whole module."""
    for module in ("moto", "s3fs", "boto3"):
        _needs(module)
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with log.open("wb") as out:
        # Multipart parts from 256 bytes (S3 wants 5 MiB): a test sends a multipart upload of a few KiB.
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "S3_UPLOAD_PART_MIN_SIZE": "256"})
    if not wait_for_port("127.0.0.1", port, 30, proc):
        proc.kill()
        pytest.fail(f"moto_server did not start on 127.0.0.1:{port}: {log.read_text()[-2000:]}")
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


def aws_env(endpoint: str) -> dict[str, str]:
    """What the runbook's environment holds for S3: the endpoint and dummy credentials, nothing from ~/.aws."""
    return {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": SECRET,
            "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent", "AWS_CONFIG_FILE": "/nonexistent"}


@pytest.fixture
def s3_env(endpoint: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The S3 environment in this process too (for tests that open an Archive here)."""
    env = aws_env(endpoint)
    for k in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(k)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return env


def s3_client(endpoint: str) -> Any:
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing", aws_secret_access_key=SECRET,
                        region_name="us-east-1")


def new_bucket(endpoint: str) -> str:
    name = f"evidence-{uuid.uuid4().hex[:10]}"
    s3_client(endpoint).create_bucket(Bucket=name)
    return name


def cli(*args: str, env: dict[str, str], tmpdir: Path | None = None) -> subprocess.CompletedProcess[str]:
    """`runbook ARGS` in a subprocess whose AWS settings are exactly `env` (temp files in `tmpdir`)."""
    return runbook_cli(*args, env={**env, **({"TMPDIR": str(tmpdir)} if tmpdir is not None else {})},
                       drop_prefix="AWS_")


def objects(endpoint: str, bucket: str, prefix: str) -> dict[str, bytes]:
    """Every object under `prefix/`, by key relative to the prefix, read with boto3."""
    s3 = s3_client(endpoint)
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/")
            for o in page.get("Contents", [])]
    return {k[len(prefix) + 1:]: s3.get_object(Bucket=bucket, Key=k)["Body"].read() for k in keys}


def put(endpoint: str, bucket: str, key: str, body: bytes) -> None:
    s3_client(endpoint).put_object(Bucket=bucket, Key=key, Body=body)


# --- a real run into S3 --------------------------------------------------------------------------

@dataclass(frozen=True)
class RemoteRun:
    bucket: str
    prefix: str
    proc: subprocess.CompletedProcess[str]
    tmpdir: Path

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"


@pytest.fixture(scope="module")
def remote_run(endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> RemoteRun:
    """`runbook run inspect inspect --archive s3://bucket/runs` on the sandbox: two records in one run.

    The scenario is pinned (AOF off, no drift: the inspection passes with warnings, exit 0), so the
    exit code says how the archiving went, whatever the default params file holds.
    """
    bucket, tmpdir = new_bucket(endpoint), tmp_path_factory.mktemp("tmpdir")
    proc = cli("run", "inspect", "inspect", "-p", "sandbox_scenario", "rdb-only", "--archive", f"s3://{bucket}/runs",
               env=aws_env(endpoint), tmpdir=tmpdir)
    return RemoteRun(bucket, "runs", proc, tmpdir)


def test_run_archives_notebooks_html_and_index_in_the_bucket(remote_run: RemoteRun, endpoint: str) -> None:
    proc = remote_run.proc
    assert proc.returncode == 0, proc.stdout + proc.stderr
    stored = objects(endpoint, remote_run.bucket, remote_run.prefix)
    records = [json.loads(line) for line in stored[INDEX].splitlines()]
    assert [r["notebook"] for r in records] == ["inspect", "inspect"]
    assert records[0]["prev_hash"] == GENESIS
    assert records[1]["prev_hash"] == hashlib.sha256(stored[INDEX].splitlines()[0]).hexdigest()
    # Every file a record names is in the bucket with that sha256; nothing else is there (no write check).
    named = {rel: digest for r in records for rel, digest in r["files"].items()}
    assert {Path(rel).suffix for rel in named} == {".ipynb", ".html"} and len(named) == 4
    assert set(stored) == {INDEX, HEAD, *named}
    assert json.loads(stored[HEAD])["seq"] == 2
    for rel, digest in named.items():
        assert hashlib.sha256(stored[rel]).hexdigest() == digest, rel
    executed = json.loads(stored[next(rel for rel in named if rel.endswith(".ipynb"))])
    assert executed["metadata"]["papermill"]["parameters"]["target"] == "sandbox"
    assert any(c.get("outputs") for c in executed["cells"]), "the archived notebook was executed"


def test_run_prints_s3_urls_and_leaves_no_staging_behind(remote_run: RemoteRun, endpoint: str) -> None:
    out = remote_run.proc.stdout
    assert remote_run.proc.returncode == 0, out + remote_run.proc.stderr
    lines = out.splitlines()
    printed = [ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("evidence:")]
    printed += [ln.strip() for prev, ln in itertools.pairwise(lines) if prev.startswith("evidence:")]
    assert len(printed) == 4
    stored = objects(endpoint, remote_run.bucket, remote_run.prefix)
    for url in printed:
        assert url.startswith(remote_run.url + "/"), url
        assert url[len(remote_run.url) + 1:] in stored, url
    assert f"index:    {remote_run.url}/{INDEX}" in lines
    assert list(remote_run.tmpdir.iterdir()) == []  # the staging dir was removed
    everything = out + remote_run.proc.stderr + "".join(b.decode(errors="replace") for b in stored.values())
    assert SECRET not in everything


def test_archive_verify_and_list_work_on_the_url(remote_run: RemoteRun, endpoint: str) -> None:
    env = aws_env(endpoint)
    ok = cli("archive", "verify", "--archive", remote_run.url, env=env)
    assert ok.returncode == 0, ok.stderr
    assert f"{remote_run.url}: 2 record(s), chain and files intact" in ok.stdout
    listed = cli("archive", "list", "--archive", remote_run.url, env=env)
    assert listed.returncode == 0, listed.stderr
    change = next(ln.split()[1] for ln in remote_run.proc.stdout.splitlines() if ln.startswith("change "))
    assert [ln.split()[1] for ln in listed.stdout.splitlines()[1:]] == [change, change]  # under the header row


def copy_of(run: RemoteRun, endpoint: str) -> str:
    """A copy of the run's archive under a new prefix (each tampering test gets its own)."""
    prefix = f"copy-{uuid.uuid4().hex[:8]}"
    for rel, body in objects(endpoint, run.bucket, run.prefix).items():
        put(endpoint, run.bucket, f"{prefix}/{rel}", body)
    return prefix


def _record_files(endpoint: str, bucket: str, prefix: str) -> list[list[str]]:
    index = objects(endpoint, bucket, prefix)[INDEX]
    return [sorted(json.loads(line)["files"]) for line in index.splitlines()]


def test_verify_names_an_altered_object(remote_run: RemoteRun, endpoint: str) -> None:
    prefix = copy_of(remote_run, endpoint)
    html = _record_files(endpoint, remote_run.bucket, prefix)[0][0]
    assert html.endswith(".html")
    original = objects(endpoint, remote_run.bucket, prefix)[html]
    put(endpoint, remote_run.bucket, f"{prefix}/{html}", original.replace(b"</html>", b"<!-- edited --></html>"))
    proc = cli("archive", "verify", "--archive", f"s3://{remote_run.bucket}/{prefix}", env=aws_env(endpoint))
    assert proc.returncode == 1
    run_id = _run_ids(endpoint, remote_run.bucket, prefix)[0]
    assert proc.stderr.splitlines() == [f"{INDEX} line 1 (run {run_id}): {html} was altered (sha256 differs)"]


def _run_ids(endpoint: str, bucket: str, prefix: str) -> list[str]:
    return [json.loads(line)["run_id"] for line in objects(endpoint, bucket, prefix)[INDEX].splitlines()]


def test_verify_names_a_missing_object(remote_run: RemoteRun, endpoint: str) -> None:
    prefix = copy_of(remote_run, endpoint)
    notebook = _record_files(endpoint, remote_run.bucket, prefix)[1][1]
    assert notebook.endswith(".ipynb")
    s3_client(endpoint).delete_object(Bucket=remote_run.bucket, Key=f"{prefix}/{notebook}")
    proc = cli("archive", "verify", "--archive", f"s3://{remote_run.bucket}/{prefix}", env=aws_env(endpoint))
    assert proc.returncode == 1
    run_id = _run_ids(endpoint, remote_run.bucket, prefix)[1]
    assert proc.stderr.splitlines() == [f"{INDEX} line 2 (run {run_id}): {notebook} is missing"]


@pytest.mark.parametrize("change", ["remove-first-line", "edit-first-line"])
def test_verify_catches_an_index_line_removed_or_edited(remote_run: RemoteRun, endpoint: str, change: str) -> None:
    prefix = copy_of(remote_run, endpoint)
    lines = objects(endpoint, remote_run.bucket, prefix)[INDEX].splitlines()
    if change == "remove-first-line":
        lines, broken = lines[1:], 1
    else:
        rec = json.loads(lines[0])
        rec["status"] = "pass" if rec["status"] != "pass" else "warn"  # someone rewrites history
        lines[0], broken = json.dumps(rec, sort_keys=True, separators=(",", ":")).encode(), 2
    put(endpoint, remote_run.bucket, f"{prefix}/{INDEX}", b"\n".join(lines) + b"\n")
    proc = cli("archive", "verify", "--archive", f"s3://{remote_run.bucket}/{prefix}", env=aws_env(endpoint))
    assert proc.returncode == 1
    problems = proc.stderr.splitlines()
    assert problems[0].startswith(f"{INDEX} line {broken} ") and "hash chain broken" in problems[0]
    # A removed record leaves its two files listed by no record; an edit leaves nothing else to say.
    assert len(problems) == (3 if change == "remove-first-line" else 1), problems
    assert all(p.endswith(": no record lists this file") for p in problems[1:])


# --- failing fast, before anything runs ----------------------------------------------------------

def test_missing_bucket_exits_2_before_the_target_is_touched(endpoint: str, default_binary: Path, make_sandbox,
                                                             tmp_path: Path) -> None:
    sb = make_sandbox(default_binary)
    client = sb.client()
    connections = client.info("stats")["total_connections_received"]
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    proc = cli("run", "inspect", "-p", "target", sb.url, "--archive", "s3://no-such-bucket-7f3/runs",
               env=aws_env(endpoint), tmpdir=tmpdir)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stdout == ""
    assert proc.stderr.strip() == (f"runbook: parameter error: evidence archive s3://no-such-bucket-7f3/runs: the "
                                   f"bucket no-such-bucket-7f3 does not exist at {endpoint}; create it, or fix the "
                                   "bucket name in the URL")
    assert client.info("stats")["total_connections_received"] == connections  # nobody else connected
    assert list(tmpdir.iterdir()) == []  # no staging dir, no run dir


@pytest.mark.parametrize(
    ("case", "url", "expected"),
    [
        ("unreachable", "s3://{bucket}/runs", "could not be reached"),
        ("no-credentials", "s3://{bucket}/runs", "no credentials were found in the environment; set AWS_ACCESS_KEY_ID"),
        ("no-s3fs", "s3://{bucket}/runs", "the s3:// scheme needs a package that is not installed"),
        ("unknown-scheme", "nosuchfs://{bucket}/runs", "fsspec knows no nosuchfs:// scheme"),
        ("credentials-in-url", "s3://AKIAEXAMPLE:wJalr-secret@{bucket}/runs", "the URL carries credentials"),
    ],
)
def test_unusable_destination_exits_2_with_one_clear_line(endpoint: str, case: str, url: str, expected: str,
                                                          tmp_path: Path) -> None:
    bucket = new_bucket(endpoint)
    url = url.format(bucket=bucket)
    env = aws_env(endpoint)
    if case == "unreachable":
        env["AWS_ENDPOINT_URL"] = f"http://127.0.0.1:{free_port()}"
    elif case == "no-credentials":
        del env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]
    elif case == "no-s3fs":  # as if s3fs were not installed: a package of that name that fails to import
        (tmp_path / "s3fs").mkdir()
        (tmp_path / "s3fs" / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 's3fs'\")\n")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    t0 = time.perf_counter()
    proc = cli("run", "inspect", "--archive", url, env=env)
    seconds = time.perf_counter() - t0
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("runbook: parameter error: evidence archive "), proc.stderr
    assert expected in lines[0]
    assert "wJalr-secret" not in proc.stderr
    assert seconds < 30, f"took {seconds:.1f} s to give up"
    assert objects(endpoint, bucket, "runs") == {}  # nothing was written (not even the write check)


# --- the archive object against S3 ---------------------------------------------------------------

def test_concurrent_writers_to_one_s3_index_lose_no_record(s3_env: dict[str, str], endpoint: str) -> None:
    url = f"s3://{new_bucket(endpoint)}/shared"
    errors: list[BaseException] = []

    def writer(name: str) -> None:
        archive = Archive(url)
        try:
            for i in range(8):
                archive.add({"run_id": f"{name}-{i}", "files": {}})
        except BaseException as err:  # noqa: BLE001
            errors.append(err)
        finally:
            archive.close()

    threads = [threading.Thread(target=writer, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    assert sorted(r["run_id"] for r in read_index(url)) == sorted(f"{n}-{i}" for n in "ab" for i in range(8))
    assert verify(url) == []


class _ReadAfterAllWrote:
    """A filesystem whose write-check reads wait until every one of `n` runs has written its own."""

    def __init__(self, fs: Any, barrier: threading.Barrier) -> None:
        self._fs, self._barrier = fs, barrier

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fs, name)

    def cat_file(self, path: str, *args: Any, **kwargs: Any) -> Any:
        if WRITE_CHECK in path:
            self._barrier.wait()
        return self._fs.cat_file(path, *args, **kwargs)


def test_runs_starting_together_each_check_writes_with_their_own_object(
        s3_env: dict[str, str], endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    bucket = new_bucket(endpoint)
    n = 4
    barrier = threading.Barrier(n, timeout=60)
    real_open = RemoteStore.open

    def gated_open(url: str, *, quick: bool = False) -> Any:
        remote = real_open(url, quick=quick)
        if not quick:  # the write check opens its own, quick one
            return remote
        return RemoteStore(remote.url, _ReadAfterAllWrote(remote.fs, barrier), remote.root)

    monkeypatch.setattr(RemoteStore, "open", gated_open)
    opened: list[Archive] = []
    errors: list[BaseException] = []

    def start() -> None:
        try:
            opened.append(Archive(f"s3://{bucket}/runs"))
        except BaseException as err:  # noqa: BLE001
            errors.append(err)

    threads = [threading.Thread(target=start) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == [] and len(opened) == n  # every check read back its own token
    for archive in opened:
        archive.close()
    assert objects(endpoint, bucket, "runs") == {}  # and removed its own object


def test_a_run_that_raises_keeps_the_staged_evidence_and_says_where(
        s3_env: dict[str, str], endpoint: str, caplog: pytest.LogCaptureFixture) -> None:
    archive = Archive(f"s3://{new_bucket(endpoint)}/runs")
    staging = archive.local
    first = archive.run_path("inspect", "sandbox", datetime.now(timezone.utc))
    first.write_text('{"cells": []}')
    archive.add({"run_id": "r1", "files": archive.files([first])})
    # The next step has run (it may have changed production) and then something raises before `add`.
    nb = archive.run_path("enable-aof", "sandbox", datetime.now(timezone.utc))
    nb.write_text('{"cells": ["changed"]}')
    html = nb.with_suffix(".html")
    html.write_text("<html>changed</html>")
    with caplog.at_level(logging.WARNING, logger="runbook.evidence.archive"):
        try:
            raise KeyboardInterrupt  # what runner.run() does with any exception
        except BaseException:  # noqa: BLE001
            archive.abandon()
    del archive
    gc.collect()  # nothing removes it later either (there was a finalizer that did, at exit or GC)
    assert nb.read_text() == '{"cells": ["changed"]}' and html.read_text() == "<html>changed</html>"
    [message] = [r.getMessage() for r in caplog.records]
    assert f"evidence kept in {staging};" in message
    pending = message.rsplit("(", 1)[1]
    assert nb.relative_to(staging).as_posix() in pending and html.relative_to(staging).as_posix() in pending
    assert first.relative_to(staging).as_posix() not in pending  # that one is in the archive already
    shutil.rmtree(staging)


def test_a_run_that_raises_with_everything_uploaded_leaves_nothing_behind(
        s3_env: dict[str, str], endpoint: str, caplog: pytest.LogCaptureFixture) -> None:
    archive = Archive(f"s3://{new_bucket(endpoint)}/runs")
    nb = archive.run_path("inspect", "sandbox", datetime.now(timezone.utc))
    nb.write_text('{"cells": []}')
    archive.add({"run_id": "r1", "files": archive.files([nb])})
    archive.abandon()
    assert not archive.local.exists()
    assert caplog.records == []


def test_evidence_under_a_taken_name_is_stored_beside_it_not_over_it(s3_env: dict[str, str], endpoint: str) -> None:
    url = f"s3://{new_bucket(endpoint)}/runs"
    started = datetime.now(timezone.utc)  # two hosts, the same notebook, target and millisecond
    hosts = [Archive(url), Archive(url)]
    staged = []
    for n, archive in enumerate(hosts):
        nb = archive.run_path("inspect", "sandbox", started)
        nb.write_text(f'{{"cells": [], "host": {n}}}')
        nb.with_suffix(".html").write_text(f"<html>host {n}</html>")
        staged.append(nb)
    assert staged[0].relative_to(hosts[0].local) == staged[1].relative_to(hosts[1].local)
    written = [a.add({"run_id": f"h{n}", "files": a.files([nb, nb.with_suffix(".html")])})
               for n, (a, nb) in enumerate(zip(hosts, staged))]
    rel = staged[0].relative_to(hosts[0].local).as_posix()
    taken = rel.removesuffix(".ipynb")
    assert sorted(written[0]["files"]) == sorted([f"{taken}.html", rel])
    assert sorted(written[1]["files"]) == sorted([f"{taken}-2.html", f"{taken}-2.ipynb"])
    assert hosts[1].location(staged[1]) == f"{url}/{taken}-2.ipynb"
    assert hosts[1].location(staged[1].with_suffix(".html")) == f"{url}/{taken}-2.html"
    assert verify(url) == []  # each record's files are the ones it wrote
    stored = objects(endpoint, url.split("/")[2], "runs")
    assert stored[rel] == b'{"cells": [], "host": 0}' and stored[f"{taken}-2.ipynb"] == b'{"cells": [], "host": 1}'
    for archive in hosts:
        archive.close()


def add_while_another_lands(monkeypatch: pytest.MonkeyPatch, this: Archive, other: Archive,
                            record: dict[str, Any], another: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """`this.add(record)`, with `other.add(another)` landing between its read of the index's last segment and
    its write; returns what this add wrote and how many times the segment was read."""
    real_read, reads = RemoteStore.read_guarded, []

    def read_then_another_lands(remote: Any, rel: str) -> Any:
        got = real_read(remote, rel)
        if rel != INDEX:
            return got  # the head
        reads.append(rel)
        if len(reads) == 1:
            other.add(another)  # its own read is the second
        return got

    monkeypatch.setattr(RemoteStore, "read_guarded", read_then_another_lands)
    try:
        return this.add(record), len(reads)
    finally:
        monkeypatch.setattr(RemoteStore, "read_guarded", real_read)


def test_a_write_over_a_changed_index_fails_and_the_append_is_redone(
        s3_env: dict[str, str], endpoint: str, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    url = f"s3://{new_bucket(endpoint)}/shared"
    this, other = Archive(url), Archive(url)
    this.add({"run_id": "r0", "files": {}})
    # The guard itself: read the index, let another add land, then write with the guard read before it.
    remote = RemoteStore.open(url)
    index = f"{url}/{INDEX}"
    old, guard = remote.read_guarded(INDEX)
    other.add({"run_id": "r1", "files": {}})
    with pytest.raises(stores.Conflict):
        remote.replace(INDEX, old + b'{"run_id": "lost"}\n', guard)
    assert [r["run_id"] for r in read_index(url)] == ["r0", "r1"]
    # The retry: another add lands between this add's read and its write.
    with caplog.at_level(logging.INFO, logger="runbook.evidence.appending"):
        written, reads = add_while_another_lands(monkeypatch, this, other, {"run_id": "r3", "files": {}},
                                                 {"run_id": "r2", "files": {}})
    assert reads == 3  # this add, the other add, this add again
    assert f"{index} changed while this run appended to it: appending again" in caplog.text
    records = read_index(url)
    assert [r["run_id"] for r in records] == ["r0", "r1", "r2", "r3"]
    assert records[-1] == written and verify(url) == []
    this.close()
    other.close()


def test_an_index_past_the_multipart_threshold_is_still_written_conditionally(
        s3_env: dict[str, str], endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import s3fs

    # s3fs sends data of 2 * chunksize (100 MB by default) or more as a multipart upload. Lower that
    # default to 1 KiB (moto's server takes parts that small) rather than write 100 MB indexes.
    pipe = s3fs.S3FileSystem._pipe_file
    names = [p.name for p in inspect.signature(pipe).parameters.values() if p.default is not p.empty
             and p.kind is p.POSITIONAL_OR_KEYWORD]
    defaults = list(pipe.__defaults__)
    defaults[names.index("chunksize")] = 1024
    monkeypatch.setattr(pipe, "__defaults__", tuple(defaults))
    url = f"s3://{new_bucket(endpoint)}/shared"
    remote = RemoteStore.open(url)
    # What a multipart upload does with a condition: CreateMultipartUpload takes none, s3fs drops it.
    remote.fs.pipe_file(remote.path("taken"), b"first")
    remote.fs.pipe_file(remote.path("taken"), b"x" * 4096, IfNoneMatch="*")
    assert remote.fs.cat_file(remote.path("taken")) == b"x" * 4096  # replaced, condition and all
    remote.fs.rm_file(remote.path("taken"))  # not evidence: verify would report a file no record lists
    this, other = Archive(url), Archive(url)
    padding = "x" * 4096
    this.add({"run_id": "r0", "files": {}, "note": padding})
    written, reads = add_while_another_lands(monkeypatch, this, other, {"run_id": "r2", "files": {}, "note": padding},
                                             {"run_id": "r1", "files": {}, "note": padding})
    assert reads == 3  # the stale write was refused and redone
    assert [r["run_id"] for r in read_index(url)] == ["r0", "r1", "r2"]
    assert verify(url) == []
    this.close()
    other.close()


def test_an_s3_append_reads_and_rewrites_only_the_head_and_the_last_segment(
        s3_env: dict[str, str], endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from runbook.evidence import appending

    monkeypatch.setattr(appending, "SEGMENT_BYTES", 2048)  # many segments from few records
    url = f"s3://{new_bucket(endpoint)}/runs"
    archive = Archive(url)
    for i in range(40):
        archive.add({"run_id": f"r{i}", "files": {}, "note": "x" * 100})
    segments = sorted(k for k in objects(endpoint, url.split("/")[2], "runs") if k.startswith("index/"))
    assert len(segments) == 4
    reads: list[str] = []
    writes: list[tuple[str, int]] = []
    real_read, real_put = RemoteStore.read_guarded, RemoteStore._put
    monkeypatch.setattr(RemoteStore, "read_guarded", lambda self, rel: reads.append(rel) or real_read(self, rel))
    monkeypatch.setattr(RemoteStore, "_put", lambda self, rel, data, guard: writes.append((rel, len(data)))
                        or real_put(self, rel, data, guard))
    written = archive.add({"run_id": "last", "files": {}})
    assert set(reads) <= {segments[-1], HEAD} and segments[-1] in reads
    assert {rel for rel, _ in writes} <= {segments[-1], f"index/{written['seq']:010d}.jsonl", HEAD}
    assert max(size for _, size in writes) <= 2048 + 400  # one segment, not the whole index
    assert [r["run_id"] for r in read_index(url)] == [*[f"r{i}" for i in range(40)], "last"]
    assert verify(url) == []
    # The head anchors the tail on S3 too: the last records dropped from their segment are reported.
    s3, bucket = s3_client(endpoint), url.split("/")[2]
    key = "runs/" + max(k for k in objects(endpoint, bucket, "runs") if k.startswith("index/"))
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    s3.put_object(Bucket=bucket, Key=key, Body=b"".join(ln + b"\n" for ln in body.splitlines()[:-1]))
    assert verify(url) == [f"records dropped from the tail: {HEAD} says the chain reaches seq 41, the index ends at "
                           "seq 40"]
    archive.close()


def test_prune_on_s3_removes_old_inspections_and_their_objects_and_the_chain_verifies(
        s3_env: dict[str, str], endpoint: str) -> None:
    from datetime import timedelta

    from runbook.evidence.prune import prune

    url = f"s3://{new_bucket(endpoint)}/runs"
    archive = Archive(url)
    old = datetime.now(timezone.utc) - timedelta(days=40)
    for run, change, notebook in (("i1", "c1", "inspect"), ("e1", "c2", "enable-aof"), ("i2", "c3", "inspect")):
        nb = archive.run_path(notebook, "sandbox", old)
        nb.write_text(json.dumps({"run": run}))
        archive.add({"run_id": run, "change_id": change, "notebook": notebook, "target": "sandbox", "status": "pass",
                     "started": old.isoformat(), "files": archive.files([nb])})
    archive.close()
    files = {r["run_id"]: next(iter(r["files"])) for r in read_index(url)}
    done = prune(url, 30)
    assert (done.records, done.files) == (2, 2)
    assert [r["run_id"] for r in read_index(url)] == ["e1"]
    stored = objects(endpoint, url.split("/")[2], "runs")
    assert files["e1"] in stored and files["i1"] not in stored and files["i2"] not in stored
    assert verify(url) == []


def test_failed_upload_keeps_the_evidence_locally_and_says_where(s3_env: dict[str, str], endpoint: str) -> None:
    bucket = new_bucket(endpoint)
    archive = Archive(f"s3://{bucket}/runs")
    nb = archive.run_path("inspect", "sandbox", datetime.now(timezone.utc))
    nb.write_text('{"cells": []}')
    record = {"run_id": "r1", "files": archive.files([nb])}
    s3_client(endpoint).delete_bucket(Bucket=bucket)  # empty: the write check removed its object
    with pytest.raises(ArchiveError) as caught:
        archive.add(record)
    message = str(caught.value)
    assert "run r1 was not archived" in message and f"bucket {bucket} does not exist" in message
    assert str(archive.local) in message
    archive.close()
    assert nb.is_file()  # kept: the staging dir is a local archive with the unsent record
    assert [r["run_id"] for r in read_index(archive.local)] == ["r1"]
    assert verify(archive.local) == []
    shutil.rmtree(archive.local)


def test_the_rollback_notebook_reads_the_remote_index(s3_env: dict[str, str], endpoint: str, tmp_path: Path) -> None:
    url = f"s3://{new_bucket(endpoint)}/runs"
    archive = Archive(url)
    archive.add({"run_id": "seeded", "change_id": "c0ffee000000", "notebook": "enable-aof", "target": "sandbox",
                 "status": "pass", "files": {},
                 "summary": {"result": "changed", "changes": [{"setting": "appendfsync", "from": "always",
                                                              "to": "everysec"}]}})
    archive.close()
    proc = cli("run", "rollback", "--json", "--archive", url, env=aws_env(endpoint), tmpdir=tmp_path)
    out = json.loads(proc.stdout)
    summary = out["steps"][0]["summary"]
    assert summary["change_id"] == "c0ffee000000", (summary, proc.stderr)  # found only in the remote index
    assert "appendfsync" in json.dumps(summary["runtime"]) + json.dumps(summary["notes"])
    assert out["steps"][0]["ipynb"].startswith(url + "/")
    assert [r["notebook"] for r in read_index(url)] == ["enable-aof", "rollback"]


# --- the same archive on another fsspec store (memory://), and the pure parts --------------------

def test_memory_archive_round_trip_and_tampering() -> None:
    import fsspec

    url = f"memory://runbook-{uuid.uuid4().hex[:8]}/runs"
    archive = Archive(url)
    staging = archive.local
    nb = archive.run_path("inspect", "redis://10.0.0.5:6379/0", datetime.now(timezone.utc))
    nb.write_text('{"cells": []}')
    html = nb.with_suffix(".html")
    html.write_text("<html>run</html>")
    written = archive.add({"run_id": "m1", "files": archive.files([nb, html])})
    second = archive.add({"run_id": "m2", "files": {}})
    rel = nb.relative_to(staging).as_posix()
    assert archive.location(nb) == f"{url}/{rel}"
    assert archive.location() == f"{url}/{INDEX}"  # the segment its last record went to
    assert archive.env_value() == url
    archive.close()
    assert not staging.exists()

    fs = fsspec.filesystem("memory")
    root = url[len("memory://"):]
    assert fs.cat_file(f"{root}/{rel}") == b'{"cells": []}'
    assert not [p for p in fs.find(root) if WRITE_CHECK in p]
    assert read_index(url) == [written, second]
    assert second["prev_hash"] == hashlib.sha256(fs.cat_file(f"{root}/{INDEX}").splitlines()[0]).hexdigest()
    assert verify(url) == []
    fs.pipe_file(f"{root}/{rel}", b'{"cells": [1]}')
    assert verify(url) == [f"{INDEX} line 1 (run m1): {rel} was altered (sha256 differs)"]
    fs.rm_file(f"{root}/{INDEX}")
    assert verify(url)[0] == (f"records dropped from the tail: {HEAD} says the chain reaches seq 2, the index ends "
                              "at seq 0")
    fs.rm_file(f"{root}/{HEAD}")
    assert verify(url) == [f"{url}/index does not exist: nothing was archived here"]
    assert read_index(url) == []


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("archive", Path("archive")),
        ("/var/lib/runbook/archive", Path("/var/lib/runbook/archive")),
        (Path("rel/dir"), Path("rel/dir")),
        ("file:///var/lib/runbook/archive", Path("/var/lib/runbook/archive")),
        ("file://localhost/srv/a%20b", Path("/srv/a b")),
        ("s3://bucket/prefix/", "s3://bucket/prefix"),
        ("gs://bucket", "gs://bucket"),
        ("memory://x/y", "memory://x/y"),
    ],
)
def test_destination(given: Any, expected: Any) -> None:
    assert destination(given) == expected
    assert type(destination(given)) is type(expected)


def test_file_url_of_another_host_is_refused() -> None:
    with pytest.raises(ParameterError, match="names a local directory"):
        destination("file://otherhost/srv/archive")


@pytest.mark.parametrize("url", ["s3://AKIA:secret-1@bucket/p", "s3://AKIA@bucket/p", "simplecache::s3://k:secret-1@b/p"])
def test_credentials_in_the_url_are_refused_and_not_repeated(url: str) -> None:
    with pytest.raises(ParameterError) as caught:
        refuse_credentials(url)
    assert "carries credentials" in str(caught.value)
    assert "secret-1" not in str(caught.value) and "AKIA" not in str(caught.value)
    with pytest.raises(ParameterError):
        Archive(url)
    with pytest.raises(ParameterError):
        verify(url)


def test_plain_urls_are_not_refused() -> None:
    refuse_credentials("s3://bucket/prefix")
    refuse_credentials("memory://x/y")


def test_a_changing_step_journals_its_start_and_intent_in_the_bucket(s3_env: dict[str, str], endpoint: str,
                                                                     tmp_path: Path) -> None:
    """The runner's `started` record and the notebook's `intent` (written from the kernel, to the same URL)
    come before the verdict, under one run id."""
    url = f"s3://{new_bucket(endpoint)}/runs"
    proc = cli("run", "enable-aof", "-p", "apply", "true", "-p", "sandbox_scenario", "rdb-only", "--archive", url,
               "--json", env=aws_env(endpoint), tmpdir=tmp_path)
    assert proc.returncode == 0, proc.stderr
    records = read_index(url)
    assert [r["status"] for r in records][:2] == ["started", "intent"] and records[2]["summary"]["result"] == "changed"
    assert len({r["run_id"] for r in records}) == 1
    assert records[1]["intent"]["changes"] == [{"setting": "appendonly", "from": "no", "to": "yes"}]
    assert os.listdir(tmp_path) == []  # the kernel's archive left no staging dir behind either


def test_an_upload_that_fails_mid_run_stops_it_with_the_table_and_what_changed(s3_env: dict[str, str],
                                                                                endpoint: str, tmp_path: Path) -> None:
    """The bucket goes away once enable-aof has changed the server: the next record cannot be uploaded, and the
    run stops there with its table, a verdict naming the change, and where the evidence was kept."""
    bucket = new_bucket(endpoint)
    url = f"s3://{bucket}/runs"
    env = {k: v for k, v in os.environ.items() if k not in ("RUNBOOK_ARCHIVE", "RUNBOOK_SANDBOX_URL")
           and not k.startswith("AWS_")}
    proc = subprocess.Popen([sys.executable, "-m", "runbook", "run", "all", "-p", "apply", "true",
                             "-p", "sandbox_scenario", "rdb-only", "-p", "destination", str(tmp_path / "backups"),
                             "--archive", url], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**env, **aws_env(endpoint), "TMPDIR": str(tmp_path)}, cwd=REPO)
    s3 = s3_client(endpoint)
    deadline = time.monotonic() + 120
    while not any(r["notebook"] == "enable-aof" and r["status"] not in ("started", "intent")
                  for r in read_index(url)):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.1)
    for key in objects(endpoint, bucket, "runs"):
        s3.delete_object(Bucket=bucket, Key=f"runs/{key}")
    s3.delete_bucket(Bucket=bucket)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, (out, err)
    assert "Traceback" not in out + err
    verdict = out[out.index("verdict:"):]
    assert verdict.startswith("verdict:  FAILED: the evidence archive failed")
    assert "changed:  enable-aof on sandbox: appendonly no -> yes (runtime)" in verdict
    kept = verdict.split("kept:", 1)[1]
    assert url in kept and "staging dir" in kept
    staging = Path(kept.split("staging dir ", 1)[1].split(" ", 1)[0])
    assert staging.is_dir() and list(staging.rglob("*.ipynb"))  # what was not uploaded is there
