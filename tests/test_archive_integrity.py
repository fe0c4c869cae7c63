"""What the evidence archive survives and what `archive verify` proves (issue 14, items 4, 5 and 7).

Torn index lines (a crash during an append), OpenSSH signatures and the signed head (tampering of
every kind, each its own test), unlisted, empty and partial files, the index split into segments
(an append reads only the last one), old single-file archives, and `archive prune`.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from helpers import runbook_cli

from runbook.evidence import appending
from runbook.evidence.appending import append, append_record
from runbook.evidence.archive import HEAD, Archive, check, read_entries, read_index, run_path, verify
from runbook.evidence.index import GENESIS, LIMITS_WITHOUT_KEY, canonical, signed_bytes
from runbook.evidence.prune import prune
from runbook.evidence.signing import ALLOWED_SIGNERS_ENV, NAMESPACE, SIGNING_KEY_ENV, Signer
from runbook.evidence.stores import LocalStore

SEGMENT = "index/0000000001.jsonl"
NOW = datetime.now(timezone.utc)


def needs_ssh_keygen() -> None:
    if shutil.which("ssh-keygen") is None:
        pytest.skip("ssh-keygen is not installed (apt-get install openssh-client)")


def make_key(directory: Path, name: str = "signer") -> Path:
    needs_ssh_keygen()
    key = directory / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(key)], check=True)
    return key


@pytest.fixture
def keys(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """A signing key in $RUNBOOK_SIGNING_KEY and an allowed-signers file naming it in $RUNBOOK_ALLOWED_SIGNERS
    (outside the test's archive: verify would report them as files no record lists)."""
    where = tmp_path_factory.mktemp("keys")
    key = make_key(where)
    allowed = where / "allowed_signers"
    allowed.write_text(f'ops@example.com namespaces="{NAMESPACE}" {key.with_suffix(".pub").read_text()}')
    monkeypatch.setenv(SIGNING_KEY_ENV, str(key))
    monkeypatch.setenv(ALLOWED_SIGNERS_ENV, str(allowed))
    return {"key": key, "allowed": allowed}


@pytest.fixture(autouse=True)
def no_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever this environment holds, a test signs and checks signatures only where it says so."""
    monkeypatch.delenv(SIGNING_KEY_ENV, raising=False)
    monkeypatch.delenv(ALLOWED_SIGNERS_ENV, raising=False)


def make_archive(root: Path, n: int = 4, *, started: datetime = NOW, change: str = "c") -> list[dict[str, Any]]:
    """n runs through `Archive.add` (signed when a key is configured), each with a notebook and its HTML."""
    archive, written = Archive(root), []
    for i in range(n):
        nb = archive.run_path("inspect", "sandbox", started + timedelta(milliseconds=i))
        nb.write_text(json.dumps({"cells": [], "run": i}))
        nb.with_suffix(".html").write_text(f"<html>run {i}</html>")
        written.append(archive.add({"run_id": f"run{i}", "change_id": f"{change}{i}", "notebook": "inspect",
                                    "target": "sandbox", "status": "pass", "started": started.isoformat(),
                                    "files": archive.files([nb, nb.with_suffix(".html")])}))
    return written


def segment_lines(root: Path, segment: str = SEGMENT) -> list[bytes]:
    return (root / segment).read_bytes().splitlines()


def write_lines(root: Path, lines: list[bytes], segment: str = SEGMENT) -> None:
    (root / segment).write_bytes(b"".join(ln + b"\n" for ln in lines))


def rechain(lines: list[bytes], start: int) -> list[bytes]:
    """What someone without the key does after editing line `start`: every later prev_hash recomputed."""
    out = list(lines)
    for n in range(start + 1, len(out)):
        rec = json.loads(out[n])
        rec["prev_hash"] = hashlib.sha256(out[n - 1]).hexdigest()
        out[n] = canonical(rec)
    return out


def edit_and_rechain(root: Path, line: int) -> None:
    """Tamper as someone who knows the format would: record `line` says fail, the chain after it and the head are
    recomputed (without a key, nothing can tell)."""
    lines = segment_lines(root)
    rec = json.loads(lines[line])
    rec["status"] = "fail"
    lines[line] = canonical(rec)
    lines = rechain(lines, line)
    write_lines(root, lines)
    forge_head(root, lines)


def forge_head(root: Path, lines: list[bytes]) -> None:
    """A head that matches `lines` (unsigned: the forger has no key)."""
    last = json.loads(lines[-1])
    (root / HEAD).write_bytes(canonical({"format": 1, "seq": last["seq"], "hash": hashlib.sha256(lines[-1]).hexdigest(),
                                         "segment": SEGMENT, "updated": NOW.isoformat()}) + b"\n")


# --- item 4: a partial last line ------------------------------------------------------------------

def test_a_partial_last_line_is_set_aside_and_the_next_record_is_not_glued_to_it(tmp_path: Path) -> None:
    make_archive(tmp_path, 2)
    whole = segment_lines(tmp_path)
    # A crash during the third append: half its line reached the disk, the head never moved.
    half = canonical({"run_id": "torn", "prev_hash": hashlib.sha256(whole[-1]).hexdigest(), "seq": 3,
                      "summary": {"x": "y" * 200}})[:150]
    with (tmp_path / SEGMENT).open("ab") as f:
        f.write(half)
    assert [r["run_id"] for r in read_index(tmp_path)] == ["run0", "run1"]  # read around it, no exception
    assert verify(tmp_path) == [f"{SEGMENT}: a partial last line (150 bytes): a write to the index did not finish; "
                                "the next record sets it aside"]
    written = append_record(tmp_path, {"run_id": "next", "files": {}})
    lines = segment_lines(tmp_path)
    assert lines[:2] == whole and json.loads(lines[2]) == written  # not glued: its own line, chained to run1
    assert written["seq"] == 3 and written["prev_hash"] == hashlib.sha256(whole[-1]).hexdigest()
    [side] = (tmp_path / "index").glob("*.torn")
    assert side.read_bytes() == half
    rel = side.relative_to(tmp_path).as_posix()
    assert verify(tmp_path) == [f"{rel}: a partial record (150 bytes) that a write to the index did not finish, set "
                                "aside; the record it held is not in the chain"]
    assert [r["run_id"] for r in read_index(tmp_path)] == ["run0", "run1", "next"]


@pytest.mark.parametrize("records", [1, 3])
def test_a_last_line_cut_after_the_head_moved_sets_it_aside_and_the_head_back(tmp_path: Path, records: int) -> None:
    make_archive(tmp_path, records)
    data = (tmp_path / SEGMENT).read_bytes()
    cut = data.rstrip(b"\n").rfind(b"\n") + 1 + 100  # 100 bytes into the last line
    (tmp_path / SEGMENT).write_bytes(data[:cut])
    written = append_record(tmp_path, {"run_id": "next", "files": {}})
    assert written["seq"] == records  # the torn record's place: the chain has no gap
    assert [r["run_id"] for r in read_index(tmp_path)] == [*[f"run{i}" for i in range(records - 1)], "next"]
    problems = verify(tmp_path)
    assert len(problems) == 3, problems  # the partial record set aside, and its two files, now unlisted
    assert sum("a partial record (100 bytes)" in p for p in problems) == 1
    assert sum(p.endswith("no record lists this file") for p in problems) == 2
    assert json.loads((tmp_path / HEAD).read_text())["seq"] == records


def test_a_last_record_that_lacks_only_its_newline_is_kept(tmp_path: Path) -> None:
    make_archive(tmp_path, 2)
    data = (tmp_path / SEGMENT).read_bytes()
    (tmp_path / SEGMENT).write_bytes(data[:-1])  # the write stopped right before the newline
    append_record(tmp_path, {"run_id": "next", "files": {}})
    assert [r["run_id"] for r in read_index(tmp_path)] == ["run0", "run1", "next"]
    assert verify(tmp_path) == [] and not list((tmp_path / "index").glob("*.torn"))


def test_an_old_index_with_a_record_glued_to_a_partial_line_is_read_and_reported(tmp_path: Path) -> None:
    """What the old code left (the half line with the next record on it): list and rollback read around it."""
    lines, prev = [], GENESIS
    for i in range(3):
        line = canonical({"run_id": f"old{i}", "prev_hash": prev, "files": {}})
        if i == 1:
            line = b'{"run_id":"half","prev_h' + line  # glued
        lines.append(line)
        prev = hashlib.sha256(line).hexdigest()
    (tmp_path / "index.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    assert [r["run_id"] for r in read_index(tmp_path)] == ["old0", "old2"]
    problems = verify(tmp_path)
    assert problems == ["index.jsonl line 2: not JSON (a damaged line, or a record glued onto a partial one)"]


def last_index_file(archive: Path) -> Path:
    """The file the last record is in: a segment, or the single index.jsonl of the code before segments."""
    segments = sorted((archive / "index").glob("*.jsonl")) if (archive / "index").is_dir() else []
    return segments[-1] if segments else archive / "index.jsonl"


def test_runs_list_verify_and_rollback_survive_a_torn_last_line(tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    scenario = ("-p", "sandbox_scenario", "rdb-only")
    first = runbook_cli("run", "inspect", *scenario, "--archive", str(archive))
    assert first.returncode == 0, first.stdout + first.stderr
    index = last_index_file(archive)
    data = index.read_bytes()
    index.write_bytes(data[:len(data) // 2])  # the last line cut mid-record
    second = runbook_cli("run", "inspect", *scenario, "--archive", str(archive))
    assert second.returncode == 0, second.stdout + second.stderr
    listed = runbook_cli("archive", "list", "--archive", str(archive))
    assert listed.returncode == 0 and "Traceback" not in listed.stderr, listed.stderr
    assert len(listed.stdout.splitlines()) == 2  # the header and the second run; the first's record was the torn line
    checked = runbook_cli("archive", "verify", "--archive", str(archive))
    assert checked.returncode == 1 and "Traceback" not in checked.stderr, checked.stderr
    problems = checked.stderr.splitlines()
    assert any("a partial record" in p and "set aside" in p for p in problems), problems
    # The first run's files stay and say so: no record lists them any more.
    assert sum(p.endswith("no record lists this file") for p in problems) == 2, problems
    rollback = runbook_cli("run", "rollback", *scenario, "--archive", str(archive), "--json")
    assert "Traceback" not in rollback.stderr and "JSONDecodeError" not in rollback.stdout + rollback.stderr
    out = json.loads(rollback.stdout)
    assert rollback.returncode == 0, rollback.stderr
    assert "error" not in out["steps"][0]["summary"], out["steps"][0]["summary"]
    assert [r["notebook"] for r in read_index(archive)] == ["inspect", "rollback"]


# --- item 5: signatures, the head, files --------------------------------------------------------------

def test_every_record_and_the_head_are_signed_the_way_ssh_keygen_verifies(tmp_path: Path,
                                                                           keys: dict[str, Path]) -> None:
    written = make_archive(tmp_path / "a", 3)
    assert all(r["signature"].startswith("-----BEGIN SSH SIGNATURE-----") for r in written)
    head = json.loads((tmp_path / "a" / HEAD).read_text())
    assert head["seq"] == 3 and head["hash"] == hashlib.sha256(segment_lines(tmp_path / "a")[-1]).hexdigest()
    for entry in (written[1], head):  # checked by ssh-keygen itself, as git checks a commit
        sig = tmp_path / "entry.sig"
        sig.write_text(entry["signature"] + "\n")
        done = subprocess.run(["ssh-keygen", "-Y", "verify", "-f", str(keys["allowed"]), "-I", "ops@example.com",
                               "-n", NAMESPACE, "-s", str(sig)], input=signed_bytes(entry), capture_output=True)
        assert done.returncode == 0, done.stderr
    found = check(tmp_path / "a")
    assert found.problems == [] and found.records == 3
    assert not any("RUNBOOK_ALLOWED_SIGNERS" in n for n in found.notes)


def test_an_edited_record_with_the_chain_and_head_recomputed_is_caught(tmp_path: Path, keys: dict[str, Path]) -> None:
    make_archive(tmp_path, 4)
    edit_and_rechain(tmp_path, 1)
    problems = verify(tmp_path)
    assert problems[0].startswith(f"{SEGMENT} line 2 (run run1): signature does not verify"), problems
    assert not any("chain broken" in p for p in problems)  # the chain itself is consistent again
    assert any(p.startswith(f"{HEAD}: signature does not verify") for p in problems)


def test_without_a_key_a_recomputed_chain_passes_and_verify_says_so(tmp_path: Path) -> None:
    make_archive(tmp_path, 3)
    edit_and_rechain(tmp_path, 0)
    assert verify(tmp_path) == []  # the documented limit
    proc = runbook_cli("archive", "verify", "--archive", str(tmp_path))
    assert proc.returncode == 0 and f"note: {LIMITS_WITHOUT_KEY}" in proc.stdout.splitlines(), proc.stdout


@pytest.mark.parametrize("forgery", ["unsigned", "signed-by-another-key", "signature-copied-from-another-record"])
def test_a_forged_record_with_the_right_prev_hash_is_caught(tmp_path: Path, keys: dict[str, Path],
                                                            forgery: str) -> None:
    make_archive(tmp_path / "a", 2)
    lines = segment_lines(tmp_path / "a")
    forged = {"run_id": "forged", "change_id": "c9", "notebook": "enable-aof", "target": "sandbox", "status": "pass",
              "files": {}, "seq": 3, "prev_hash": hashlib.sha256(lines[-1]).hexdigest()}
    if forgery == "signed-by-another-key":
        other = make_key(tmp_path, "intruder")
        done = subprocess.run(["ssh-keygen", "-q", "-Y", "sign", "-f", str(other), "-n", NAMESPACE],
                              input=signed_bytes(forged), capture_output=True, check=True)
        forged["signature"] = done.stdout.decode().strip()
    elif forgery == "signature-copied-from-another-record":
        forged["signature"] = json.loads(lines[-1])["signature"]
    write_lines(tmp_path / "a", [*lines, canonical(forged)])
    problems = verify(tmp_path / "a")
    assert len(problems) == 1, problems
    expected = {"unsigned": "not signed, after signed records",
                "signed-by-another-key": "signed by a key that",
                "signature-copied-from-another-record": "signature does not verify"}[forgery]
    assert problems[0].startswith(f"{SEGMENT} line 3 (run forged): ") and expected in problems[0], problems


@pytest.mark.parametrize("head", ["left-alone", "rewritten-unsigned"])
def test_records_dropped_from_the_tail_are_caught(tmp_path: Path, keys: dict[str, Path], head: str) -> None:
    make_archive(tmp_path, 4)
    lines = segment_lines(tmp_path)[:2]
    write_lines(tmp_path, lines)
    if head == "rewritten-unsigned":
        forge_head(tmp_path, lines)
    problems = [p for p in verify(tmp_path) if not p.endswith("no record lists this file")]
    if head == "left-alone":
        assert problems == [f"records dropped from the tail: {HEAD} says the chain reaches seq 4, the index ends at "
                            "seq 2"]
    else:
        assert len(problems) == 1 and problems[0].startswith(f"{HEAD}: signature does not verify (it is not signed)")


def test_a_dropped_tail_is_caught_without_a_key_when_the_head_is_left_alone(tmp_path: Path) -> None:
    make_archive(tmp_path, 3)
    write_lines(tmp_path, segment_lines(tmp_path)[:1])
    assert "records dropped from the tail" in verify(tmp_path)[0]


def test_a_file_that_no_record_lists_is_reported(tmp_path: Path) -> None:
    make_archive(tmp_path, 2)
    planted = tmp_path / "2026" / "planted.ipynb"
    planted.parent.mkdir(parents=True, exist_ok=True)
    planted.write_text("{}")
    killed = run_path(tmp_path, "enable-aof", "sandbox", NOW)  # reserved by a run killed before it wrote it
    assert sorted(verify(tmp_path)) == sorted([
        "2026/planted.ipynb: no record lists this file",
        f"{killed.relative_to(tmp_path).as_posix()}: no record lists this file (0 bytes: a run killed before it "
        "wrote it?)"])


@pytest.mark.parametrize("cut", ["empty", "partial"])
def test_zero_byte_and_partial_files_are_reported(tmp_path: Path, cut: str) -> None:
    written = make_archive(tmp_path, 2)
    rel = next(r for r in written[1]["files"] if r.endswith(".html"))
    size = (tmp_path / rel).stat().st_size
    (tmp_path / rel).write_bytes(b"" if cut == "empty" else (tmp_path / rel).read_bytes()[:size // 2])
    expected = (f"is 0 bytes (the record says sha256 {written[1]['files'][rel][:12]}...)" if cut == "empty"
                else f"is partial ({size // 2} of {size} bytes)")
    assert verify(tmp_path) == [f"{SEGMENT} line 2 (run run1): {rel} {expected}"]


def test_a_signing_key_that_cannot_sign_stops_the_run_before_anything_runs(tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    bad = tmp_path / "not-a-key"
    bad.write_text("this is not an OpenSSH key\n")
    needs_ssh_keygen()
    for key in (tmp_path / "missing", bad):
        proc = runbook_cli("run", "inspect", "--archive", str(archive), env={SIGNING_KEY_ENV: str(key)})
        assert proc.returncode == 2, proc.stdout + proc.stderr
        [line] = proc.stderr.strip().splitlines()
        assert line.startswith(f"runbook: parameter error: {SIGNING_KEY_ENV}={key}: ") and "Nothing was run" in line
        assert not archive.exists()


def test_a_signed_run_verifies_and_a_forged_record_after_it_fails(tmp_path: Path, keys: dict[str, Path]) -> None:
    archive = tmp_path / "archive"
    env = {SIGNING_KEY_ENV: str(keys["key"]), ALLOWED_SIGNERS_ENV: str(keys["allowed"])}
    proc = runbook_cli("run", "inspect", "-p", "sandbox_scenario", "rdb-only", "--archive", str(archive), env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ok = runbook_cli("archive", "verify", "--archive", str(archive), env=env)
    assert ok.returncode == 0 and "1 record(s), chain and files intact" in ok.stdout, ok.stdout + ok.stderr
    assert "note: not checked" not in ok.stdout
    unsigned = runbook_cli("archive", "verify", "--archive", str(archive), env={SIGNING_KEY_ENV: str(keys["key"])})
    assert unsigned.returncode == 0 and f"note: {LIMITS_WITHOUT_KEY}" in unsigned.stdout.splitlines()
    seg = last_index_file(archive)
    last = seg.read_bytes().splitlines()[-1]
    forged = {**json.loads(last), "run_id": "forged", "seq": 2, "prev_hash": hashlib.sha256(last).hexdigest()}
    with seg.open("ab") as f:
        f.write(canonical(forged) + b"\n")
    bad = runbook_cli("archive", "verify", "--archive", str(archive), env=env)
    assert bad.returncode == 1 and "(run forged): signature does not verify" in bad.stderr, bad.stderr


# --- item 7: segments, old archives, prune ------------------------------------------------------------

class CountingStore(LocalStore):
    """A local store that counts the bytes read, by file."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        object.__setattr__(self, "reads", {})

    def read(self, rel: str) -> bytes | None:
        data = super().read(rel)
        self.reads[rel] = self.reads.get(rel, 0) + len(data or b"")  # type: ignore[attr-defined]
        return data

    def read_guarded(self, rel: str) -> tuple[bytes | None, dict[str, str]]:
        return self.read(rel), {}


def test_an_append_reads_only_the_head_and_the_last_segment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(appending, "SEGMENT_BYTES", 2048)
    for i in range(120):
        append_record(tmp_path, {"run_id": f"r{i}", "files": {}, "note": "x" * 100})
    segments = sorted(p.relative_to(tmp_path).as_posix() for p in (tmp_path / "index").glob("*.jsonl"))
    assert len(segments) > 5
    store = CountingStore(tmp_path)
    written, segment = append(store, {"run_id": "last", "files": {}}, None)
    assert set(store.reads) == {HEAD, segments[-1]}  # nothing before the last segment was read
    assert store.reads[segments[-1]] <= 2048 + 200 and segment in (segments[-1], f"index/{written['seq']:010d}.jsonl")
    # Each segment is named by the seq of its first record and chains onto the one before it.
    for name in segments:
        first = json.loads((tmp_path / name).read_bytes().splitlines()[0])
        assert f"index/{first['seq']:010d}.jsonl" == name
    assert [r["run_id"] for r in read_index(tmp_path)] == [*[f"r{i}" for i in range(120)], "last"]
    assert verify(tmp_path) == []


def test_a_removed_segment_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(appending, "SEGMENT_BYTES", 1024)
    for i in range(40):
        append_record(tmp_path, {"run_id": f"r{i}", "files": {}, "note": "x" * 100})
    segments = sorted((tmp_path / "index").glob("*.jsonl"))
    segments[1].unlink()
    problems = verify(tmp_path)
    assert problems[0].startswith(f"index/{segments[2].name}: starts at seq ")
    assert "a segment was removed" in problems[0]
    assert "hash chain broken" in problems[1]


def test_an_old_single_file_index_is_read_verified_and_continued_in_a_segment(tmp_path: Path) -> None:
    lines, prev = [], GENESIS
    for i in range(3):  # the old format: no seq, no head
        line = canonical({"run_id": f"old{i}", "prev_hash": prev, "files": {}, "notebook": "inspect"})
        lines.append(line)
        prev = hashlib.sha256(line).hexdigest()
    (tmp_path / "index.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    assert [r["run_id"] for r in read_index(tmp_path)] == ["old0", "old1", "old2"]
    found = check(tmp_path)
    assert found.problems == [] and any(f"no {HEAD}" in n for n in found.notes)
    written = append_record(tmp_path, {"run_id": "new", "files": {}})
    assert written["seq"] == 4 and written["prev_hash"] == prev
    assert (tmp_path / "index" / "0000000004.jsonl").is_file()
    assert (tmp_path / "index.jsonl").read_bytes() == b"\n".join(lines) + b"\n"  # never appended to again
    assert [r["run_id"] for r in read_index(tmp_path)] == ["old0", "old1", "old2", "new"]
    assert verify(tmp_path) == []


def prune_fixture(root: Path) -> dict[str, list[dict[str, Any]]]:
    """Old routine inspections, an old change (inspect + enable-aof), a recent inspection, a record with no change."""
    old = NOW - timedelta(days=40)
    archive = Archive(root)

    def add(run: str, change: str, notebook: str, started: datetime, result: str | None = None) -> dict[str, Any]:
        nb = archive.run_path(notebook, "sandbox", started)
        nb.write_text(json.dumps({"run": run}))
        summary = {"result": result} if result else {"checks": {}}
        return archive.add({"run_id": run, "change_id": change, "notebook": notebook, "target": "sandbox",
                            "status": "pass", "started": started.isoformat(), "summary": summary,
                            "files": archive.files([nb])})

    return {
        "routine": [add("i1", "c1", "inspect", old), add("i2", "c2", "inspect", old + timedelta(seconds=1))],
        "change": [add("ch-inspect", "c3", "inspect", old + timedelta(seconds=2)),
                   add("ch-enable", "c3", "enable-aof", old + timedelta(seconds=3), "changed")],
        "more": [add("i4", "c4", "inspect", old + timedelta(seconds=4))],
        "recent": [add("i5", "c5", "inspect", NOW - timedelta(hours=1)), add("nochange", "", "inspect", old)],
    }


def test_prune_removes_old_routine_inspections_keeps_every_change_and_still_verifies(
        tmp_path: Path, keys: dict[str, Path]) -> None:
    made = prune_fixture(tmp_path)
    before = {json.loads(ln)["run_id"]: ln for ln in segment_lines(tmp_path)}
    head = (tmp_path / HEAD).read_bytes()
    done = prune(tmp_path, 30)
    assert (done.records, done.changes, done.files, done.kept) == (3, 3, 3, 4)
    kept = ["ch-inspect", "ch-enable", "i5", "nochange"]
    assert [r["run_id"] for r in read_index(tmp_path)] == kept
    lines = segment_lines(tmp_path)
    for ln in lines:  # what stays is byte for byte what was written (its signature still holds)
        entry = json.loads(ln)
        assert entry.get("kind") == "checkpoint" or before[entry["run_id"]] == ln
    checkpoints = [e for e in read_entries(tmp_path) if e.get("kind") == "checkpoint"]
    assert [c["seq"] for c in checkpoints] == [[1, 2], [5, 5]]
    assert checkpoints[0]["pruned"]["records"] == 2 and checkpoints[0]["continues_from"] == json.loads(
        before["ch-inspect"])["prev_hash"]
    assert all(c["signature"] for c in checkpoints)
    for r in made["routine"] + made["more"]:
        assert not any((tmp_path / rel).exists() for rel in r["files"])
    for r in made["change"] + made["recent"]:
        assert all((tmp_path / rel).exists() for rel in r["files"])
    assert (tmp_path / HEAD).read_bytes() == head  # the chain ends where it ended
    found = check(tmp_path)
    assert found.problems == [] and found.records == 4 and found.pruned == 3
    written = append_record(tmp_path, {"run_id": "after", "files": {}}, Signer.from_env())
    assert written["seq"] == 8 and verify(tmp_path) == []
    # Pruning again removes nothing and leaves the checkpoints as they are.
    again = prune(tmp_path, 30)
    assert again.records == 0 and segment_lines(tmp_path)[:-1] == lines


def test_a_forged_checkpoint_is_caught_with_a_key(tmp_path: Path, keys: dict[str, Path]) -> None:
    prune_fixture(tmp_path)
    lines = segment_lines(tmp_path)
    # Someone removes the change's records and covers them with a checkpoint of their own.
    first, last = json.loads(lines[2]), lines[3]
    fake = {"kind": "checkpoint", "seq": [3, 4], "prev_hash": first["prev_hash"],
            "continues_from": hashlib.sha256(last).hexdigest(), "pruned": {"records": 2}}
    write_lines(tmp_path, [*lines[:2], canonical(fake), *lines[4:]])
    problems = [p for p in verify(tmp_path) if not p.endswith("no record lists this file")]
    assert len(problems) == 1 and "(checkpoint): not signed, after signed records" in problems[0], problems


def test_prune_from_the_command_line(tmp_path: Path) -> None:
    prune_fixture(tmp_path)
    missing = runbook_cli("archive", "prune", "--archive", str(tmp_path))
    assert missing.returncode == 2 and "needs --keep-days N" in missing.stderr
    zero = runbook_cli("archive", "prune", "--keep-days", "0", "--archive", str(tmp_path))
    assert zero.returncode == 2 and "keep at least 1 day" in zero.stderr
    done = runbook_cli("archive", "prune", "--keep-days", "30", "--archive", str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "pruned 3 record(s) of 3 routine inspection(s)" in done.stdout and "4 record(s) kept" in done.stdout
    ok = runbook_cli("archive", "verify", "--archive", str(tmp_path))
    assert ok.returncode == 0 and "4 record(s) (3 pruned, see the checkpoints), chain and files intact" in ok.stdout
