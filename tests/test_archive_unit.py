"""runbook.evidence.archive: the hash-chained index, its verification, and where runs are stored.

(Torn lines, signatures, the head, segments and pruning: tests/test_archive_integrity.py.)"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime, timezone
from pathlib import Path

import pytest

from runbook.evidence.archive import (
    ARCHIVE_ENV,
    GENESIS,
    append_record,
    archive_root,
    read_index,
    run_path,
    sha256_file,
    slug,
    verify,
)

STARTED = datetime(2024, 3, 5, 7, 8, 9, 123456, tzinfo=timezone.utc)


SEGMENT = "index/0000000001.jsonl"  # the first segment: the seq of its first record


def index_lines(root: Path) -> list[bytes]:
    return (root / SEGMENT).read_bytes().splitlines()


def test_append_record_chains_prev_hash(tmp_path):
    first = append_record(tmp_path, {"run_id": "a", "status": "pass"})
    assert first["prev_hash"] == GENESIS == "0" * 64
    second = append_record(tmp_path, {"run_id": "b", "status": "warn"})
    lines = index_lines(tmp_path)
    assert len(lines) == 2
    assert second["prev_hash"] == hashlib.sha256(lines[0]).hexdigest()
    third = append_record(tmp_path, {"run_id": "c"})
    assert third["prev_hash"] == hashlib.sha256(index_lines(tmp_path)[1]).hexdigest()
    assert third["prev_hash"] != second["prev_hash"]
    assert [json.loads(ln) for ln in index_lines(tmp_path)] == [first, second, third]
    assert [r["seq"] for r in (first, second, third)] == [1, 2, 3]
    assert read_index(tmp_path) == [first, second, third]


def test_append_record_does_not_mutate_input_and_creates_root(tmp_path):
    root = tmp_path / "deep" / "archive"
    rec = {"run_id": "a"}
    append_record(root, rec)
    assert rec == {"run_id": "a"}
    assert (root / SEGMENT).is_file() and (root / "head.json").is_file()


def make_archive(root: Path, n: int = 3) -> list[Path]:
    """n runs, each with a notebook and an HTML file listed in `files`."""
    paths = []
    for i in range(n):
        nb = run_path(root, f"0{i + 1}-step", "redis://10.0.0.5:6379/0", STARTED)
        nb.write_text(json.dumps({"cells": [], "run": i}))
        html = nb.with_suffix(".html")
        html.write_text(f"<html>run {i}</html>")
        append_record(root, {
            "run_id": f"run{i}",
            "files": {str(p.relative_to(root)): sha256_file(p) for p in (nb, html)},
        })
        paths += [nb, html]
    return paths


def test_verify_intact_archive(tmp_path):
    paths = make_archive(tmp_path)
    assert len(paths) == 6
    assert verify(tmp_path) == []


def test_verify_missing_index(tmp_path):
    problems = verify(tmp_path)
    assert len(problems) == 1 and "does not exist" in problems[0]


def test_verify_reports_an_altered_file(tmp_path):
    paths = make_archive(tmp_path)
    paths[2].write_text(paths[2].read_text() + " ")  # run1's notebook
    problems = verify(tmp_path)
    assert len(problems) == 1
    assert "altered" in problems[0]
    assert paths[2].name in problems[0]
    assert "run1" in problems[0]


def test_verify_reports_a_missing_file(tmp_path):
    paths = make_archive(tmp_path)
    paths[5].unlink()  # run2's html
    problems = verify(tmp_path)
    assert len(problems) == 1
    assert "missing" in problems[0]
    assert paths[5].name in problems[0]


def test_verify_reports_an_edited_earlier_line(tmp_path):
    make_archive(tmp_path)
    lines = index_lines(tmp_path)
    rec = json.loads(lines[0])
    rec["status"] = "pass"  # someone rewrites history
    lines[0] = json.dumps(rec, sort_keys=True, separators=(",", ":")).encode()
    (tmp_path / SEGMENT).write_bytes(b"\n".join(lines) + b"\n")
    problems = verify(tmp_path)
    assert len(problems) == 1
    assert problems[0].startswith(f"{SEGMENT} line 2 (run run1)")
    assert "chain broken" in problems[0]


@pytest.mark.parametrize(("deleted", "broken_line"), [(0, 1), (1, 2)])
def test_verify_reports_a_deleted_line(tmp_path, deleted, broken_line):
    paths = make_archive(tmp_path)
    lines = index_lines(tmp_path)
    del lines[deleted]
    (tmp_path / SEGMENT).write_bytes(b"\n".join(lines) + b"\n")
    problems = verify(tmp_path)
    assert problems[0].startswith(f"{SEGMENT} line {broken_line} (run run{deleted + 1})")
    assert "chain broken" in problems[0]
    # The deleted record's files are still there, and no record lists them now.
    orphans = sorted(p.relative_to(tmp_path).as_posix() for p in paths[2 * deleted:2 * deleted + 2])
    assert problems[1:] == [f"{rel}: no record lists this file" for rel in orphans]


def test_verify_reports_an_unparsable_line(tmp_path):
    make_archive(tmp_path, 2)
    with (tmp_path / SEGMENT).open("ab") as f:
        f.write(b"{not json\n")
    problems = verify(tmp_path)
    assert len(problems) == 1 and problems[0].startswith(f"{SEGMENT} line 3: not JSON")
    assert [r["run_id"] for r in read_index(tmp_path)] == ["run0", "run1"]  # read around it, no exception


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("redis://10.0.0.5:6379/0", "redis-10.0.0.5-6379-0"),
        ("rediss://redis.example.com:6380", "rediss-redis.example.com-6380"),
        ("sandbox", "sandbox"),
        ("", "target"),
        ("///", "target"),
    ],
)
def test_slug(text, expected):
    assert slug(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "redis://[::1]:6379/0",
        "unix:///run/redis/redis.sock",
        "unix:///tmp/a b/../c.sock",
        "x" * 200,
        "redis://h/0?x=1&y=2",
    ],
)
def test_slug_is_a_safe_file_name(text):
    s = slug(text)
    assert re.fullmatch(r"[A-Za-z0-9._-]{1,80}", s)
    assert not s.startswith("-")
    assert "/" not in s


def test_run_path_layout(tmp_path):
    p = run_path(tmp_path, "01-inspect", "redis://10.0.0.5:6379/0", STARTED)
    assert p.parent == tmp_path / "2024" / "03" / "05"
    assert p.parent.is_dir()
    assert p.name == "070809.123Z-01-inspect-redis-10.0.0.5-6379-0.ipynb"
    assert p.exists() and p.stat().st_size == 0  # reserved empty; the runner then writes it


def test_run_path_is_unique_for_the_same_time(tmp_path):
    first = run_path(tmp_path, "01-inspect", "sandbox", STARTED)
    # Not written yet: the reservation alone keeps a concurrent runner off this name.
    second = run_path(tmp_path, "01-inspect", "sandbox", STARTED)
    assert second != first
    assert second.parent == first.parent
    assert second.suffix == ".ipynb"
    second.write_text("{}")
    third = run_path(tmp_path, "01-inspect", "sandbox", STARTED)
    assert third not in (first, second)


def test_archive_root(monkeypatch, tmp_path):
    monkeypatch.delenv(ARCHIVE_ENV, raising=False)
    assert archive_root() == Path("archive")
    monkeypatch.setenv(ARCHIVE_ENV, str(tmp_path / "env-archive"))
    assert archive_root() == tmp_path / "env-archive"
    assert archive_root(str(tmp_path / "arg")) == tmp_path / "arg"  # --archive wins over the env
    monkeypatch.setenv(ARCHIVE_ENV, "")
    assert archive_root() == Path("archive")
