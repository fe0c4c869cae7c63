"""runbook.server.aof without a server: the 7.x manifest, the AOF on disk, the readiness condition."""

from __future__ import annotations

import pytest

from runbook.server.aof import READY_CONDITION, ManifestEntry, aof_on_disk, aof_ready, parse_manifest

MANIFEST_7 = "file appendonly.aof.1.base.rdb seq 1 type b\nfile appendonly.aof.1.incr.aof seq 1 type i\n"


# --- parse_manifest -----------------------------------------------------------------------------------

def test_parse_manifest_7x():
    assert parse_manifest(MANIFEST_7) == [
        ManifestEntry("appendonly.aof.1.base.rdb", 1, "b"),
        ManifestEntry("appendonly.aof.1.incr.aof", 1, "i"),
    ]


def test_parse_manifest_after_rewrites_with_history_and_extra_fields():
    text = (
        "file appendonly.aof.2.base.rdb seq 2 type b\n"
        "file appendonly.aof.1.base.rdb seq 1 type h\n"
        "\n"
        "file appendonly.aof.5.incr.aof seq 5 type i startoffset 0 endoffset 1024\n"
    )
    assert parse_manifest(text) == [
        ManifestEntry("appendonly.aof.2.base.rdb", 2, "b"),
        ManifestEntry("appendonly.aof.1.base.rdb", 1, "h"),
        ManifestEntry("appendonly.aof.5.incr.aof", 5, "i"),
    ]


def test_parse_manifest_quoted_file_name():
    assert parse_manifest('file "my aof.1.base.rdb" seq 1 type b\n') == [ManifestEntry("my aof.1.base.rdb", 1, "b")]


def test_parse_manifest_empty():
    assert parse_manifest("") == []


@pytest.mark.parametrize(
    "text",
    [
        "file appendonly.aof.1.base.rdb seq 1 type\n",  # odd number of words
        "file appendonly.aof.1.base.rdb seq one type b\n",  # seq not a number
        "file appendonly.aof.1.base.rdb type b\n",  # no seq
        "seq 1 type b\n",  # no file
        "file appendonly.aof.1.base.rdb seq 1\n",  # no type
        'file "appendonly.aof.1.base.rdb seq 1 type b\n',  # unbalanced quote
        MANIFEST_7 + "garbage\n",
    ],
)
def test_parse_manifest_malformed_raises(text):
    with pytest.raises(ValueError):
        parse_manifest(text)


# --- aof_on_disk ------------------------------------------------------------------------------------------

def make_multipart(data_dir, manifest, files=None, dirname="appendonlydir", filename="appendonly.aof"):
    d = data_dir / dirname
    d.mkdir(parents=True)
    (d / f"{filename}.manifest").write_text(manifest)
    for name, content in (files or {}).items():
        (d / name).write_bytes(content)
    return d


def test_multipart_with_base_is_loadable(tmp_path):
    d = make_multipart(
        tmp_path,
        MANIFEST_7,
        {"appendonly.aof.1.base.rdb": b"REDIS0011" + b"\0" * 20, "appendonly.aof.1.incr.aof": b""},
    )
    aof = aof_on_disk(tmp_path)
    assert aof.layout == "multi-part"
    assert aof.has_base is True
    assert aof.problem == ""
    assert aof.loadable is True
    assert [(f.role, f.path) for f in aof.files] == [
        ("aof-manifest", d / "appendonly.aof.manifest"),
        ("aof-base", d / "appendonly.aof.1.base.rdb"),
        ("aof-incr", d / "appendonly.aof.1.incr.aof"),
    ]
    assert aof.files[1].size == 29


def test_multipart_missing_listed_file_is_a_problem(tmp_path):
    make_multipart(tmp_path, MANIFEST_7, {"appendonly.aof.1.base.rdb": b"REDIS0011"})
    aof = aof_on_disk(tmp_path)
    assert aof.layout == "multi-part"
    assert "appendonly.aof.1.incr.aof" in aof.problem
    assert "appendonly.aof.1.base.rdb" not in aof.problem
    assert aof.loadable is False


def test_multipart_missing_base_file_is_a_problem(tmp_path):
    make_multipart(tmp_path, MANIFEST_7, {"appendonly.aof.1.incr.aof": b"*1\r\n"})
    aof = aof_on_disk(tmp_path)
    assert "appendonly.aof.1.base.rdb" in aof.problem
    assert aof.loadable is False


def test_multipart_without_base_is_not_loadable(tmp_path):
    make_multipart(
        tmp_path,
        "file appendonly.aof.1.incr.aof seq 1 type i\n",
        {"appendonly.aof.1.incr.aof": b"*1\r\n$4\r\nPING\r\n"},
    )
    aof = aof_on_disk(tmp_path)
    assert aof.layout == "multi-part"
    assert aof.has_base is False
    assert aof.problem == ""
    assert aof.loadable is False


def test_multipart_missing_history_file_is_fine(tmp_path):
    make_multipart(
        tmp_path,
        "file appendonly.aof.1.base.rdb seq 1 type h\nfile appendonly.aof.2.base.rdb seq 2 type b\n",
        {"appendonly.aof.2.base.rdb": b"REDIS0011"},
    )
    aof = aof_on_disk(tmp_path)
    assert aof.problem == ""
    assert aof.loadable is True
    assert [f.role for f in aof.files] == ["aof-manifest", "aof-base"]


def test_multipart_unreadable_manifest(tmp_path):
    make_multipart(tmp_path, "file x seq\n")
    aof = aof_on_disk(tmp_path)
    assert aof.layout == "multi-part"
    assert "manifest" in aof.problem
    assert aof.loadable is False


def test_multipart_custom_names(tmp_path):
    make_multipart(
        tmp_path,
        "file my.aof.1.base.rdb seq 1 type b\n",
        {"my.aof.1.base.rdb": b"REDIS"},
        dirname="aofs",
        filename="my.aof",
    )
    assert aof_on_disk(tmp_path).layout == "absent"  # default names: not found
    aof = aof_on_disk(tmp_path, appendfilename="my.aof", appenddirname="aofs")
    assert aof.layout == "multi-part"
    assert aof.loadable is True


def test_single_file_nonempty_is_loadable(tmp_path):
    (tmp_path / "appendonly.aof").write_bytes(b"*2\r\n$6\r\nSELECT\r\n$1\r\n0\r\n")
    aof = aof_on_disk(tmp_path)
    assert aof.layout == "single-file"
    assert aof.loadable is True
    assert [(f.role, f.path) for f in aof.files] == [("aof", tmp_path / "appendonly.aof")]


def test_single_file_empty_is_not_loadable(tmp_path):
    (tmp_path / "appendonly.aof").write_bytes(b"")
    aof = aof_on_disk(tmp_path)
    assert aof.layout == "single-file"
    assert aof.loadable is False


def test_absent(tmp_path):
    (tmp_path / "dump.rdb").write_bytes(b"REDIS0011")
    aof = aof_on_disk(tmp_path)
    assert aof.layout == "absent"
    assert aof.files == ()
    assert aof.loadable is False


def test_empty_appendonlydir_without_manifest_is_absent(tmp_path):
    (tmp_path / "appendonlydir").mkdir()
    assert aof_on_disk(tmp_path).loadable is False


# --- aof_ready ----------------------------------------------------------------------------------------------

READY = {**READY_CONDITION, "aof_rewrites": 3, "aof_rewrites_consecutive_failures": 0}


def test_ready():
    assert aof_ready(dict(READY)) is True


@pytest.mark.parametrize(
    ("field", "bad"),
    [
        ("aof_enabled", 0),
        ("aof_rewrite_in_progress", 1),
        ("aof_rewrite_scheduled", 1),
        ("aof_last_bgrewrite_status", "err"),
        ("aof_last_write_status", "err"),
    ],
)
def test_not_ready_when_any_field_is_wrong(field, bad):
    assert aof_ready({**READY, field: bad}) is False
    assert aof_ready({**READY, field: bad}, rewrites_before=0) is False


@pytest.mark.parametrize("field", list(READY_CONDITION))
def test_not_ready_when_a_field_is_missing(field):
    info = dict(READY)
    del info[field]
    assert aof_ready(info) is False


@pytest.mark.parametrize(("before", "expected"), [(3, False), (4, False), (2, True), (None, True)])
def test_ready_needs_rewrites_to_advance(before, expected):
    assert aof_ready(dict(READY), rewrites_before=before) is expected


def test_ready_without_aof_rewrites_field_6x():
    info = {k: v for k, v in READY.items() if k != "aof_rewrites"}
    assert aof_ready(info, rewrites_before=3) is True
