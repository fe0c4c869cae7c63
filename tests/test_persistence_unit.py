"""runbook.server.settings without a server: memory units, normalisation, save rules, runtime vs file."""

from __future__ import annotations

import pytest

from runbook.server.configfile import read_config
from runbook.server.settings import PERSISTENCE_SETTINGS, compare, memory_bytes, normalize, save_rules


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("64mb", 67108864),
        ("64MB", 67108864),
        ("1gb", 1073741824),
        ("1g", 1_000_000_000),
        ("1m", 1_000_000),
        ("100", 100),
        ("100b", 100),
        ("1k", 1000),
        ("1kb", 1024),
        (" 2kb ", 2048),
        ("0", 0),
    ],
)
def test_memory_bytes(value, expected):
    assert memory_bytes(value) == expected


@pytest.mark.parametrize("value", ["1tb", "64 megabytes", "mb", "", "1.5mb", "abc", "64mbx"])
def test_memory_bytes_rejects_bad_values(value):
    with pytest.raises(ValueError):
        memory_bytes(value)


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("auto-aof-rewrite-min-size", "64mb", "67108864"),
        ("auto-aof-rewrite-min-size", "67108864", "67108864"),
        ("save", "  3600 1   300 100  60 10000 ", "3600 1 300 100 60 10000"),
        ("save", "", ""),
        ("appendonly", "YES", "yes"),
        ("appendfsync", " EverySec ", "everysec"),
        ("stop-writes-on-bgsave-error", "No", "no"),
        ("dir", "/var/lib/redis/", "/var/lib/redis"),
        ("dir", "/", "/"),
        ("dbfilename", "Dump.RDB", "Dump.RDB"),  # file names are case-sensitive
        ("appendonly", None, None),
    ],
)
def test_normalize(name, value, expected):
    assert normalize(name, value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("3600 1 300 100 60 10000", [(3600, 1), (300, 100), (60, 10000)]),
        ("900 1", [(900, 1)]),
        ("", []),
        ("   ", []),
    ],
)
def test_save_rules(value, expected):
    assert save_rules(value) == expected


# --- compare ------------------------------------------------------------------------------------------

RUNTIME = {
    "save": "3600 1 300 100 60 10000",
    "appendonly": "no",
    "appendfsync": "everysec",
    "aof-use-rdb-preamble": "yes",
    "auto-aof-rewrite-percentage": "100",
    "auto-aof-rewrite-min-size": "67108864",
    "no-appendfsync-on-rewrite": "no",
    "stop-writes-on-bgsave-error": "yes",
    "dir": "/var/lib/redis",
    "dbfilename": "dump.rdb",
    "appendfilename": "appendonly.aof",
    "appenddirname": "appendonlydir",
}


def conf(tmp_path, text):
    path = tmp_path / "redis.conf"
    path.write_text(text)
    return read_config(path)


def rows(runtime, config, **kw):
    found = compare(runtime, config, **kw)
    out = {d.setting: d for d in found}
    assert len(out) == len(found)  # one row per setting
    return out


def test_compare_same_when_file_omits_settings_whose_default_matches(tmp_path):
    r = rows(RUNTIME, conf(tmp_path, "dir /var/lib/redis\n"))
    assert set(r) == set(PERSISTENCE_SETTINGS)
    for row in r.values():
        assert row.status == "same", row
    assert r["dir"].in_file is True
    assert r["appendonly"].in_file is False
    assert r["appendonly"].file == "no"
    assert "default" in r["appendonly"].note


def test_compare_drift_on_appendonly_in_the_file(tmp_path):
    r = rows({**RUNTIME, "appendonly": "yes"}, conf(tmp_path, "dir /var/lib/redis\nappendonly no\n"))
    row = r["appendonly"]
    assert (row.status, row.runtime, row.file, row.in_file) == ("drift", "yes", "no", True)
    assert r["appendfsync"].status == "same"


def test_compare_drift_when_file_omits_appendonly_but_runtime_is_yes(tmp_path):
    r = rows({**RUNTIME, "appendonly": "yes"}, conf(tmp_path, "dir /var/lib/redis\n"))
    row = r["appendonly"]
    assert (row.status, row.runtime, row.file, row.in_file) == ("drift", "yes", "no", False)


def test_compare_file_yes_runtime_no_is_drift(tmp_path):
    r = rows(RUNTIME, conf(tmp_path, "appendonly yes\n"))
    assert (r["appendonly"].status, r["appendonly"].runtime, r["appendonly"].file) == ("drift", "no", "yes")


def test_compare_memory_values_normalised(tmp_path):
    r = rows(RUNTIME, conf(tmp_path, "auto-aof-rewrite-min-size 64mb\n"))
    assert r["auto-aof-rewrite-min-size"].status == "same"
    r = rows(RUNTIME, conf(tmp_path, "auto-aof-rewrite-min-size 64m\n"))  # 64 * 1000**2 bytes
    assert r["auto-aof-rewrite-min-size"].status == "drift"


def test_compare_save_lines_and_case(tmp_path):
    r = rows(RUNTIME, conf(tmp_path, "save 3600 1\nsave 300 100\nsave 60 10000\nappendonly NO\n"))
    assert r["save"].status == "same"
    assert r["appendonly"].status == "same"
    r = rows(RUNTIME, conf(tmp_path, 'save ""\n'))
    assert (r["save"].status, r["save"].file) == ("drift", "")


def test_compare_dir_trailing_slash_same_but_other_dir_drifts(tmp_path):
    assert rows(RUNTIME, conf(tmp_path, "dir /var/lib/redis/\n"))["dir"].status == "same"
    assert rows(RUNTIME, conf(tmp_path, "dir /srv/redis\n"))["dir"].status == "drift"


@pytest.mark.parametrize("text", ["dir ./\n", "dir data\n", "port 6379\n"], ids=["dot", "relative", "absent"])
def test_compare_dir_unknown_when_relative_or_absent(tmp_path, text):
    row = rows(RUNTIME, conf(tmp_path, text))["dir"]
    assert row.status == "unknown"
    assert row.note


def test_compare_unknown_when_config_is_none():
    r = rows({**RUNTIME, "appendonly": "yes"}, None)
    assert set(r) == set(PERSISTENCE_SETTINGS)
    assert {row.status for row in r.values()} == {"unknown"}
    assert r["appendonly"].runtime == "yes"
    assert r["appendonly"].file is None


def test_compare_reports_only_settings_the_server_knows(tmp_path):
    runtime = {k: v for k, v in RUNTIME.items() if k != "appenddirname"}  # 6.x has no appenddirname
    r = rows(runtime, conf(tmp_path, "appenddirname other\n"))
    assert "appenddirname" not in r
    assert set(r) == set(runtime)


def test_compare_unparsable_memory_value_is_unknown(tmp_path):
    row = rows(RUNTIME, conf(tmp_path, "auto-aof-rewrite-min-size lots\n"))["auto-aof-rewrite-min-size"]
    assert row.status == "unknown"


def test_compare_multi_rule_save_line_drifts_on_redis_6(tmp_path):
    config = conf(tmp_path, "save 3600 1 300 100 60 10000\n")
    assert rows(RUNTIME, config)["save"].status == "same"
    row = rows(RUNTIME, config, server_major=6)["save"]
    assert (row.status, row.file) == ("drift", "")
