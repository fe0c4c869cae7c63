"""Bad input to `runbook run`: exit 2 with one readable message, before any server is touched or anything
is archived (issue 15, items 3, 7, 8, 9 and 10). Run as cron runs it, through the command in a subprocess."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

import pytest
from helpers import REPO, runbook_cli

import runbook
from runbook.errors import ParameterError
from runbook.sandbox.throwaway import SEED_CONFIG, Sandbox
from runbook.steps import test_persistence as durability

#: What a test calls to get the commands its server ran since the test began.
Seen = Callable[[], set[str]]


@pytest.fixture
def untouched(default_binary: Path, make_sandbox) -> Sandbox:
    """A real server for a test to name as its target."""
    return make_sandbox(default_binary)


@pytest.fixture
def seen(untouched: Sandbox) -> Seen:
    """The commands `untouched` ran since the test began (CONFIG RESETSTAT counts itself, as `config` on 6.2),
    read through the one connection that reset them (a new one would count its own HELLO)."""
    client = untouched.client()
    client.config_resetstat()
    return lambda: {k.removeprefix("cmdstat_") for k in client.info("commandstats")} - {"config|resetstat", "config"}


def refused(tmp_path: Path, *args: str, archive: Path | None = None) -> tuple[str, Path]:
    """`runbook run ARGS --archive ...`: asserts exit 2, one line of message, no traceback and nothing archived;
    returns stderr and the archive."""
    where = archive or tmp_path / "archive"
    proc = runbook_cli("run", *args, "--archive", str(where), timeout=120)
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith("runbook: ") and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not where.exists() or not any(where.iterdir()), sorted(where.rglob("*"))  # nothing archived
    return proc.stderr, where


# -- item 3: a -f file that names no target -----------------------------------------------------------


def test_a_params_file_without_a_target_is_refused_not_run_on_a_sandbox(tmp_path: Path) -> None:
    gw = tmp_path / "gw.yaml"
    shutil.copy(REPO / "params" / "gateway.example.yaml", gw)  # every line commented out, as shipped
    err, archive = refused(tmp_path, "inspect", "-f", str(gw))
    assert f"{gw} names no target: add `target: redis://" in err
    assert not archive.exists()


def test_a_params_file_with_settings_but_no_target_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "p.yaml"
    f.write_text("connect_timeout_s: 2\nconfig_file: /etc/redis/redis.conf\n")
    err, _ = refused(tmp_path, "inspect", "-f", str(f))
    assert "names no target" in err


def test_a_target_on_the_command_line_completes_a_file_without_one(untouched: Sandbox, tmp_path: Path) -> None:
    f = tmp_path / "p.yaml"
    f.write_text("connect_timeout_s: 2\n")
    proc = runbook_cli("run", "inspect", "-f", str(f), "-p", "target", untouched.url,
                       "-p", "sandbox_scenario", "rdb-only", "--archive", str(tmp_path / "a"))
    assert proc.returncode in (0, 1), proc.stderr  # ran: inspected the named server, not a sandbox
    assert untouched.url in proc.stdout and "sandbox" not in proc.stdout.split("index:")[0].lower()


# -- item 7: unreadable files and unwritable destinations -----------------------------------------------


def test_a_directory_as_params_file(untouched: Sandbox, tmp_path: Path) -> None:
    err, _ = refused(tmp_path, "inspect", "-f", str(tmp_path))
    assert f"parameter file {tmp_path} is a directory" in err


def test_a_params_file_that_is_not_utf8(untouched: Sandbox, seen: Seen, tmp_path: Path) -> None:
    f = tmp_path / "latin1.yaml"
    f.write_bytes(f"target: {untouched.url}\n# caf\xe9 au lait\n".encode("latin-1"))
    err, _ = refused(tmp_path, "inspect", "-f", str(f))
    assert f"parameter file {f} is not UTF-8 text" in err and "line 2" in err
    assert seen() == set()


def test_an_archive_that_cannot_be_created(untouched: Sandbox, seen: Seen, tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    where = tmp_path / "a-file" / "archive"
    err, _ = refused(tmp_path, "inspect", "-p", "target", untouched.url, archive=where)
    assert f"evidence archive {where} does not take files" in err
    assert seen() == set()
    assert (tmp_path / "a-file").read_text() == ""


@pytest.mark.parametrize("where", ["{tmp}/a-file/metrics.prom", "{tmp}/a-file/textfile/metrics.prom",
                                   "/proc/runbook-metrics.prom", "{tmp}"])
def test_a_metrics_file_that_cannot_be_written(untouched: Sandbox, seen: Seen, tmp_path: Path, where: str) -> None:
    (tmp_path / "a-file").write_text("")
    path = where.format(tmp=tmp_path)
    err, archive = refused(tmp_path, "inspect", "-p", "target", untouched.url, "--metrics-file", path)
    assert f"--metrics-file {path}" in err
    assert seen() == set()  # checked before the server is touched
    assert not archive.exists()


def test_a_metrics_file_in_a_writable_directory_is_written(untouched: Sandbox, tmp_path: Path) -> None:
    path = tmp_path / "metrics.prom"
    proc = runbook_cli("run", "inspect", "-p", "target", untouched.url, "--metrics-file", str(path),
                       "--archive", str(tmp_path / "a"))
    assert proc.returncode in (0, 1), proc.stderr
    assert "runbook_redis_aof_enabled{" in path.read_text()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no probe or temp file left


# -- item 8: malformed targets, timeouts and YAML ---------------------------------------------------------


@pytest.mark.parametrize("target, message", [
    ("redis://127.0.0.1:notaport/0", "port must be a number from 1 to 65535"),
    ("redis://127.0.0.1:99999/0", "port must be a number from 1 to 65535"),
    ("redis://127.0.0.1:0/0", "port must be a number from 1 to 65535"),
    ("redis://127.0.0.1:{port}/abc", "database must be a number"),
    ("redis://127.0.0.1:{port}/0;touch x", "database must be a number"),
    ("redis://127.0.0.1:{port}/0?db=x", "database must be a number"),
    ("redis://127.0.0.1:{port}/0\n2026-01-01T00:00:00  forged  inspect", "control character '\\n'"),
    ("redis://127.0.0.1:{port}/0\x1b[2J", "control character '\\x1b'"),
])
def test_a_malformed_target_is_refused(untouched: Sandbox, seen: Seen, tmp_path: Path, target: str,
                                       message: str) -> None:
    err, _ = refused(tmp_path, "inspect", "-p", "target", target.format(port=untouched.port))
    assert message in err
    assert seen() == set()


@pytest.mark.parametrize("notebook, name, value", [
    ("inspect", "connect_timeout_s", "0"),
    ("inspect", "command_timeout_s", "-1"),
    ("enable-aof", "timeout_s", "0"),
    ("backup", "timeout_s", "-5"),
    ("inspect", "connect_timeout_s", ".nan"),
    ("backup", "retention", "0"),
])
def test_a_timeout_or_count_that_is_not_positive(untouched: Sandbox, seen: Seen, tmp_path: Path, notebook: str,
                                                 name: str, value: str) -> None:
    err, _ = refused(tmp_path, notebook, "-p", "target", untouched.url, "-p", name, value)
    assert f"parameter {name} must be" in err
    assert seen() == set()


def test_a_yaml_file_with_two_targets_names_the_key(untouched: Sandbox, seen: Seen, tmp_path: Path) -> None:
    f = tmp_path / "two.yaml"
    f.write_text(f"target: redis://127.0.0.1:1/0\nconfig_file: ''\ntarget: {untouched.url}\n")
    err, _ = refused(tmp_path, "inspect", "-f", str(f))
    assert f"parameter file {f} sets target twice (lines 1 and 3)" in err
    assert seen() == set()


# -- item 9: test-persistence bounds ---------------------------------------------------------------------


@pytest.mark.parametrize("args, message", [
    (["-p", "keys", "0"], "parameter keys must be at least 1"),
    (["-p", "keys", "-10"], "parameter keys must be at least 1"),
    (["-p", "keys", "3000000"], f"parameter keys must be at most {durability.MAX_CANARIES}"),
    (["-p", "ttl_s", "0"], "parameter ttl_s must be at least 1"),
    (["-p", "ttl_s", "-1"], "parameter ttl_s must be at least 1"),
    (["-p", "mode", "crash", "-p", "crash_seconds", "0"], "parameter crash_seconds must be greater than 0"),
    (["-p", "mode", "crash", "-p", "crash_seconds", "-2.5"], "parameter crash_seconds must be greater than 0"),
])
def test_test_persistence_bounds(untouched: Sandbox, seen: Seen, tmp_path: Path, args: list[str], message: str) -> None:
    err, _ = refused(tmp_path, "test-persistence", "-p", "target", untouched.url, *args)
    assert message in err
    assert seen() == set()
    assert untouched.client().dbsize() == 0


def test_an_oversized_canary_set_is_refused_before_anything_is_written(default_binary: Path, make_sandbox,
                                                                       clean_env) -> None:
    sb = make_sandbox(default_binary, config=SEED_CONFIG + "maxmemory 8mb\n")
    client = sb.client()
    used = int(client.info("memory")["used_memory"])
    keys = durability.MAX_CANARIES  # ~25 MB of canaries against less than 8 MB of room
    with pytest.raises(ParameterError) as exc:
        durability.online_test(runbook.connect(sb.url), keys=keys, timeout_s=30)
    msg = str(exc.value)
    assert f"{keys} canaries" in msg and "maxmemory 8388608" in msg and "lower keys" in msg
    assert client.dbsize() == 0 and "cmdstat_set" not in client.info("commandstats")
    assert int(client.info("memory")["used_memory"]) < used + 1_000_000


def test_a_canary_set_that_fits_is_written_in_batches_and_removed(default_binary: Path, make_sandbox,
                                                                  clean_env) -> None:
    sb = make_sandbox(default_binary, config=SEED_CONFIG + "maxmemory 64mb\n")
    client = sb.client()
    values = durability.write_canaries(client, "t:canary:", 2500, 60)  # two full batches and a part
    assert len(values) == 2500 and client.dbsize() == 2500
    assert durability.count_canaries(client, values) == 2500
    assert 0 < client.ttl("t:canary:2499") <= 60
    durability.remove_canaries(client, values)
    assert client.dbsize() == 0


@pytest.mark.parametrize("memory, count, refused_because", [
    ({"used_memory": 1 << 20, "maxmemory": 0, "total_system_memory": 0}, 1000, None),
    ({"used_memory": 1 << 20, "maxmemory": 0, "total_system_memory": 0}, durability.MAX_CANARIES, None),
    ({"used_memory": 1 << 20, "maxmemory": 0, "total_system_memory": 0}, durability.MAX_CANARIES + 1, "at most"),
    ({"used_memory": 1 << 20, "maxmemory": 0, "total_system_memory": 64 << 20}, 100_000, "total_system_memory"),
    ({"used_memory": 1 << 20, "maxmemory": 0, "total_system_memory": 16 << 30}, 100_000, None),
    ({"used_memory": 9 << 20, "maxmemory": 10 << 20}, 1000, "maxmemory"),  # 256 KB of canaries in 1 MB of room
    ({"used_memory": 9 << 20, "maxmemory": 10 << 20}, 400, None),
    ({"used_memory": 11 << 20, "maxmemory": 10 << 20}, 1, "maxmemory"),  # already over its limit
    ({}, 1000, None),  # an INFO that says nothing about memory: only the fixed bound
])
def test_canary_room(memory: dict, count: int, refused_because: str | None) -> None:
    problem = durability.canary_room(memory, count)
    if refused_because is None:
        assert problem == ""
    else:
        assert refused_because in problem and f"{count} canaries" in problem


# -- item 10: allowed values -----------------------------------------------------------------------------


@pytest.mark.parametrize("notebook, name, value, allowed", [
    ("enable-aof", "appendfsync", "sometimes", "always, everysec, no"),
    ("test-persistence", "mode", "nuke", "online, restart, crash"),
    ("persist-config", "method", "foo", "auto, rewrite, edit"),
    ("inspect", "sandbox_scenario", "prod", "rdb-only, runtime-aof"),
])
def test_a_value_outside_the_allowed_ones(untouched: Sandbox, seen: Seen, tmp_path: Path, notebook: str, name: str,
                                          value: str, allowed: str) -> None:
    err, archive = refused(tmp_path, notebook, "-p", "target", untouched.url, "-p", name, value)
    assert f"parameter {name} must be one of {allowed}, got {value!r}" in err
    assert seen() == set()
    assert not archive.exists()


def test_an_unknown_sandbox_scenario_is_refused_before_a_sandbox_starts(tmp_path: Path) -> None:
    err, archive = refused(tmp_path, "inspect", "-p", "sandbox_scenario", "prod")
    assert "parameter sandbox_scenario must be one of rdb-only, runtime-aof" in err
    assert not archive.exists()
