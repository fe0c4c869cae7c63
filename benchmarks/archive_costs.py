"""What the evidence archive costs as it grows (`bench.py --only archive`): one append at 10 and at
100,000 records (local, signed, s3:// on moto's server), and `archive verify` of 100,000 records.

The large archives are written straight from the index's own functions (chained, split into segments,
with a head), not through 100,000 appends; signed ones are signed in this process (SSHSIG, ed25519,
with `cryptography`), and `verify` checks them with ssh-keygen and `runbook.evidence.signing` as usual.
Records are the size of a real inspection's (about 2 KB) and list no files: this measures the index.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import statistics
import struct
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

from runbook.evidence.archive import Archive, check
from runbook.evidence.index import (
    HEAD,
    SEGMENT_BYTES,
    Tail,
    canonical,
    chained,
    head_entry,
    segment_name,
    signed_bytes,
)
from runbook.evidence.signing import ALLOWED_SIGNERS_ENV, NAMESPACE, SIGNING_KEY_ENV
from runbook.sandbox.throwaway import free_port


def record(i: int) -> dict[str, Any]:
    """An inspection's record, about the size of a real one."""
    now = datetime.now(timezone.utc).isoformat()
    checks = {f"check_{k:02d}": {"status": "pass", "observed": f"observed value {k} " + "x" * 40, "fix": ""}
              for k in range(14)}
    return {"run_id": uuid.uuid4().hex, "change_id": uuid.uuid4().hex[:12], "notebook": "inspect",
            "target": "redis://10.0.0.5:6379/0", "status": "pass", "exit_code": 0, "started": now, "ended": now,
            "runbook_version": "0.1.0", "git_commit": "0" * 40, "files": {},
            "parameters": {"target": "redis://10.0.0.5:6379/0", "sandbox_scenario": "rdb-only", "n": i},
            "summary": {"schema": 2, "step": "inspect", "verdict": "pass", "server": "redis", "version": "7.0.15",
                        "checks": checks}}


def _sshsig(private: Any, public_blob: bytes) -> Callable[[bytes], str]:
    """An in-process SSHSIG signer (PROTOCOL.sshsig), for building large signed archives fast."""
    def s(b: bytes) -> bytes:
        return struct.pack(">I", len(b)) + b

    def sign(message: bytes) -> str:
        digest = hashlib.sha512(message).digest()
        signed = b"SSHSIG" + s(NAMESPACE.encode()) + s(b"") + s(b"sha512") + s(digest)
        sig = s(b"ssh-ed25519") + s(private.sign(signed))
        blob = (b"SSHSIG" + struct.pack(">I", 1) + s(public_blob) + s(NAMESPACE.encode()) + s(b"") + s(b"sha512")
                + s(sig))
        body = base64.b64encode(blob).decode()
        lines = [body[i:i + 70] for i in range(0, len(body), 70)]
        return "\n".join(["-----BEGIN SSH SIGNATURE-----", *lines, "-----END SSH SIGNATURE-----"])

    return sign


def make_key(work: Path) -> tuple[Path, Path, Callable[[bytes], str]]:
    """An ed25519 key, its allowed-signers file, and an in-process signer with it."""
    from cryptography.hazmat.primitives.serialization import load_ssh_private_key  # noqa: PLC0415  (signed rows only)

    key = work / "bench-key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "bench", "-f", str(key)], check=True)
    pub = key.with_suffix(".pub").read_text()
    allowed = work / "allowed_signers"
    allowed.write_text(f'bench namespaces="{NAMESPACE}" {pub}')
    private = load_ssh_private_key(key.read_bytes(), password=None)
    return key, allowed, _sshsig(private, base64.b64decode(pub.split()[1]))


def build(n: int, sign: Callable[[bytes], str] | None = None) -> dict[str, bytes]:
    """The index files of an archive of n records: segments and head, by relative path."""
    files: dict[str, bytes] = {}
    tail, name, chunk = Tail(), "", bytearray()
    for i in range(n):
        entry = chained(record(i), tail)
        if sign is not None:
            entry["signature"] = sign(signed_bytes(entry))
        line = canonical(entry) + b"\n"
        if not name or len(chunk) >= SEGMENT_BYTES:
            if name:
                files[name] = bytes(chunk)
            name, chunk = segment_name(entry["seq"]), bytearray()
        chunk += line
        tail = tail.after(line)
    if name:
        files[name] = bytes(chunk)
        head = head_entry(tail, name, datetime.now(timezone.utc).isoformat())
        if sign is not None:
            head["signature"] = sign(signed_bytes(head))
        files[HEAD] = canonical(head) + b"\n"
    return files


def write_local(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    os.sync()  # else the first appends' fsyncs also flush the archive just written
    return root


def append_ms(dest: str | Path, repeat: int) -> float:
    """Median milliseconds of one `Archive.add` (a record with no files) at `dest`."""
    archive = Archive(dest)
    times = []
    try:
        for i in range(repeat):
            rec = record(i)
            t = time.perf_counter()
            archive.add(rec)
            times.append((time.perf_counter() - t) * 1000)
    finally:
        archive.close()
    return statistics.median(times)


@contextmanager
def environ(**values: str) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextmanager
def moto_s3(work: Path) -> Iterator[str | None]:
    """moto's S3 server on a loopback port (None when moto is not installed)."""
    try:
        import boto3  # noqa: PLC0415  (the s3 rows only: the test extra)
        import moto  # noqa: F401, PLC0415
    except ImportError:
        yield None
        return
    port = free_port()
    log = (work / "moto.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], stdout=log,
                            stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        with environ(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                     AWS_DEFAULT_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true"):
            deadline = time.monotonic() + 30
            s3 = boto3.client("s3", endpoint_url=endpoint)
            while True:
                try:
                    s3.list_buckets()
                    break
                except Exception:  # not up yet
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
            yield endpoint
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


def put_s3(endpoint: str, bucket: str, prefix: str, files: dict[str, bytes]) -> str:
    import boto3  # noqa: PLC0415  (the s3 rows only: the test extra)

    s3 = boto3.client("s3", endpoint_url=endpoint)
    s3.create_bucket(Bucket=bucket)
    for rel, data in files.items():
        s3.put_object(Bucket=bucket, Key=f"{prefix}/{rel}", Body=data)
    return f"s3://{bucket}/{prefix}"


def archive_costs(work: Path, repeat: int, big: int = 100_000, small: int = 10) -> dict[str, float]:
    """Milliseconds per append and seconds per verify, by archive size."""
    out: dict[str, float] = {}
    small_files, big_files = build(small), build(big)
    for n, files in ((small, small_files), (big, big_files)):
        root = write_local(work / f"local-{n}", files)
        out[f"append_local_{n}_ms"] = append_ms(root, max(repeat, 20))
    t = time.perf_counter()
    found = check(write_local(work / "verify-big", big_files))
    out["verify_local_s"] = time.perf_counter() - t
    assert not found.problems, found.problems[:3]
    if shutil.which("ssh-keygen"):
        key, allowed, sign = make_key(work)
        with environ(**{SIGNING_KEY_ENV: str(key), ALLOWED_SIGNERS_ENV: str(allowed)}):
            signed_big = build(big, sign)
            for n, files in ((small, build(small, sign)), (big, signed_big)):
                out[f"append_signed_{n}_ms"] = append_ms(write_local(work / f"signed-{n}", files), max(repeat, 10))
            t = time.perf_counter()
            found = check(write_local(work / "verify-signed", signed_big))
            out["verify_signed_s"] = time.perf_counter() - t
            assert not found.problems, found.problems[:3]
    with moto_s3(work) as endpoint:
        if endpoint is not None:
            for n, files in ((small, small_files), (big, big_files)):
                url = put_s3(endpoint, f"bench-{n}", "runs", files)
                out[f"append_s3_{n}_ms"] = append_ms(url, max(repeat, 20))
    out["segments_at_big"] = sum(1 for rel in big_files if rel.startswith("index/"))
    return out


def rows(costs: dict[str, float], big: int = 100_000, small: int = 10) -> list[tuple[str, str, str]]:
    """The benchmark table's rows for these figures."""
    def flat(kind: str) -> tuple[str, str, str] | None:
        a, b = costs.get(f"append_{kind}_{small}_ms"), costs.get(f"append_{kind}_{big}_ms")
        if a is None or b is None:
            return None
        ratio = b / a
        return (f"archive append ({kind}) at {small} / {big:,} records", f"{a:.1f} / {b:.1f} ms",
                f"{ratio:.2f}x (target flat, <= 1.5x: {'met' if ratio <= 1.5 else 'MISSED'})")

    out = [r for r in (flat("local"), flat("signed"), flat("s3")) if r is not None]
    out.append((f"archive verify of {big:,} records ({int(costs['segments_at_big'])} segments)",
                f"{costs['verify_local_s']:.2f} s", "linear"))
    if "verify_signed_s" in costs:
        out.append((f"archive verify of {big:,} signed records (RUNBOOK_ALLOWED_SIGNERS)",
                    f"{costs['verify_signed_s']:.2f} s", "linear"))
    return out

