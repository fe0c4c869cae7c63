"""runbook.steps.checks: verdicts over hand-made INFO dicts (no server)."""

from __future__ import annotations

import pytest

from runbook.model import Status, worst
from runbook.server.settings import Drift
from runbook.steps.checks import advisory_facts, host_advisories, persistence_checks

NOW = 1_700_000_000.0
MB = 1024**2
SAVE = "3600 1 300 100 60 10000"


def info(**over):
    """INFO persistence of a healthy rdb-only master that saved 10 s ago."""
    base = {
        "loading": 0,
        "rdb_changes_since_last_save": 0,
        "rdb_bgsave_in_progress": 0,
        "rdb_last_save_time": int(NOW) - 10,
        "rdb_last_bgsave_status": "ok",
        "aof_enabled": 0,
        "aof_rewrite_in_progress": 0,
        "aof_rewrite_scheduled": 0,
        "aof_last_bgrewrite_status": "ok",
        "aof_last_write_status": "ok",
    }
    return {**base, **over}


def runtime(**over):
    base = {"save": SAVE, "appendonly": "no", "appendfsync": "everysec", "stop-writes-on-bgsave-error": "yes"}
    return {**base, **{k.replace("_", "-"): v for k, v in over.items()}}


def same(setting, value):
    return Drift(setting, value, value, True, "same")


CLEAN_DRIFT = [same("save", SAVE), same("appendonly", "no"), same("appendfsync", "everysec")]


def run(info_=None, runtime_=None, drift=None, **kw):
    kw.setdefault("role", "master")
    kw.setdefault("config_file", "/etc/redis/redis.conf")
    kw.setdefault("now", NOW)
    checks = persistence_checks(
        info() if info_ is None else info_,
        runtime() if runtime_ is None else runtime_,
        CLEAN_DRIFT if drift is None else drift,
        **kw,
    )
    names = [c.name for c in checks]
    assert len(names) == len(set(names)), names
    return {c.name: c for c in checks}


def statuses(checks):
    return [c.status for c in checks.values()]


def test_seed_state_runtime_aof_not_in_file_fails_config_drift():
    c = run(
        info(aof_enabled=1),
        runtime(appendonly="yes"),
        [same("save", SAVE), Drift("appendonly", "yes", "no", True, "drift"), same("appendfsync", "everysec")],
    )
    assert c["aof_enabled"].status == Status.PASS
    drift = c["config_drift"]
    assert drift.status == Status.FAIL
    assert "AOF will be off after the next restart" in drift.observed
    assert "03-persist-config" in drift.fix
    assert worst(statuses(c)) == Status.FAIL


def test_file_yes_runtime_no_fails_with_the_trap():
    c = run(
        info(aof_enabled=0),
        runtime(appendonly="no"),
        [same("save", SAVE), Drift("appendonly", "no", "yes", True, "drift")],
    )
    drift = c["config_drift"]
    assert drift.status == Status.FAIL
    assert "empty or stale AOF" in drift.observed
    assert "dump.rdb" in drift.observed
    assert "do not restart" in drift.fix


def test_clean_rdb_only_warns_on_aof_and_fails_nothing():
    c = run()
    assert c["aof_enabled"].status == Status.WARN
    assert Status.FAIL not in statuses(c)
    assert worst(statuses(c)) == Status.WARN
    assert [n for n, chk in c.items() if chk.status != Status.PASS] == ["aof_enabled"]
    assert c["config_drift"].status == Status.PASS
    assert c["save_policy"].status == Status.PASS
    assert "aof_write_status" not in c  # AOF off: its write status means nothing


def test_clean_aof_on_passes_everything():
    c = run(info(aof_enabled=1), runtime(appendonly="yes"))
    assert set(statuses(c)) == {Status.PASS}
    for name in ("aof_write_status", "aof_rewrite_status", "appendfsync"):
        assert c[name].status == Status.PASS


def test_other_drift_warns_and_names_the_setting():
    c = run(drift=[same("appendonly", "no"), Drift("appendfsync", "everysec", "always", True, "drift")])
    assert c["config_drift"].status == Status.WARN
    assert "appendfsync" in c["config_drift"].observed


def test_unknown_drift_rows_do_not_count_as_drift():
    c = run(drift=[Drift("dir", "/data", "./", True, "unknown")])
    assert c["config_drift"].status == Status.PASS


def test_bgsave_error_fails():
    c = run(info(rdb_last_bgsave_status="err"))
    assert c["rdb_last_bgsave"].status == Status.FAIL
    assert "err" in c["rdb_last_bgsave"].observed
    assert c["rdb_last_bgsave"].fix


@pytest.mark.parametrize(
    ("field", "check"),
    [("aof_last_write_status", "aof_write_status"), ("aof_last_bgrewrite_status", "aof_rewrite_status")],
)
def test_aof_status_error_fails(field, check):
    c = run(info(aof_enabled=1, **{field: "err"}), runtime(appendonly="yes"))
    assert c[check].status == Status.FAIL
    assert worst(statuses(c)) == Status.FAIL


def test_no_config_file_warns():
    c = run(config_file="")
    assert c["config_drift"].status == Status.WARN
    assert "without a config file" in c["config_drift"].observed


def test_config_read_error_warns_and_says_why():
    c = run(config_read_error="permission denied on /etc/redis/redis.conf")
    assert c["config_drift"].status == Status.WARN
    assert "permission denied" in c["config_drift"].observed


@pytest.mark.parametrize("role", ["replica", "slave"])
def test_replica_role_warns(role):
    c = run(role=role)
    assert c["role"].status == Status.WARN
    assert role in c["role"].observed


def test_master_role_passes():
    assert run()["role"].status == Status.PASS


def test_loading_warns():
    assert run(info(loading=1))["loading"].status == Status.WARN


def test_overdue_save_warns_and_names_the_rule():
    c = run(info(rdb_changes_since_last_save=5, rdb_last_save_time=int(NOW) - 100_000))
    assert c["save_policy"].status == Status.WARN
    assert "save 3600 1" in c["save_policy"].observed
    assert "100000s" in c["save_policy"].observed


@pytest.mark.parametrize(
    ("changes", "age"),
    [
        (0, 100_000),  # nothing to save: no rule applies however old the save
        (5, 3000),  # within 3600 s, and 5 < 100 for the 300 s rule
        (99, 3000),
    ],
)
def test_save_not_overdue_passes(changes, age):
    c = run(info(rdb_changes_since_last_save=changes, rdb_last_save_time=int(NOW) - age))
    assert c["save_policy"].status == Status.PASS


def test_save_overdue_on_a_shorter_rule():
    c = run(info(rdb_changes_since_last_save=20_000, rdb_last_save_time=int(NOW) - 1000))
    assert c["save_policy"].status == Status.WARN
    assert "save 300 100" in c["save_policy"].observed


def test_empty_save_and_aof_off_fails():
    c = run(runtime_=runtime(save=""), drift=[same("save", ""), same("appendonly", "no")])
    assert c["save_policy"].status == Status.FAIL
    assert "nothing is persisted" in c["save_policy"].observed


def test_empty_save_with_aof_on_only_warns():
    c = run(info(aof_enabled=1), runtime(save="", appendonly="yes"), [same("save", "")])
    assert c["save_policy"].status == Status.WARN


def test_appendfsync_no_warns_when_aof_on():
    c = run(info(aof_enabled=1), runtime(appendonly="yes", appendfsync="no"))
    assert c["appendfsync"].status == Status.WARN


def test_delayed_fsync_warns():
    c = run(info(aof_enabled=1, aof_delayed_fsync=3), runtime(appendonly="yes"))
    assert c["aof_delayed_fsync"].status == Status.WARN


def test_stop_writes_on_bgsave_error_no_warns():
    assert run(runtime_=runtime(stop_writes_on_bgsave_error="no"))["stop_writes_on_bgsave_error"].status == Status.WARN


@pytest.mark.parametrize(("value", "expected"), [(0, Status.WARN), (2, Status.WARN), (1, Status.PASS)])
def test_overcommit_is_a_host_advisory(value, expected):
    (advice,) = host_advisories(overcommit_memory=value)
    assert advice.name == "vm_overcommit_memory" and advice.status == expected
    assert str(value) in advice.observed
    assert bool(advice.fix) == (expected == Status.WARN)
    (fact,) = advisory_facts([advice], "db-host-1")
    assert fact == {"name": "vm_overcommit_memory", "host": "db-host-1", "status": str(expected),
                    "observed": advice.observed, "fix": advice.fix}


def test_overcommit_unknown_gives_no_advisory():
    assert host_advisories(overcommit_memory=None) == []


def test_the_host_setting_is_no_check_of_the_inspection():
    """vm.overcommit_memory is the host's (issue 17): it no longer turns a clean server's checks into warn."""
    with pytest.raises(TypeError):
        run(overcommit_memory=0)
    assert "vm_overcommit_memory" not in run(info(aof_enabled=1), runtime(appendonly="yes"))


@pytest.mark.parametrize(
    ("free", "used", "expected"),
    [
        (50 * MB, 100 * MB, Status.FAIL),
        (99 * MB, 100 * MB, Status.FAIL),
        (100 * MB, 100 * MB, Status.WARN),
        (150 * MB, 100 * MB, Status.WARN),
        (200 * MB, 100 * MB, Status.PASS),
        (10_000 * MB, 100 * MB, Status.PASS),
    ],
)
def test_free_disk(free, used, expected):
    c = run(free_disk_bytes=free, used_memory_bytes=used)
    assert c["free_disk"].status == expected
    assert bool(c["free_disk"].fix) == (expected != Status.PASS)


@pytest.mark.parametrize(("free", "used"), [(None, 100), (100, None), (None, None)])
def test_free_disk_absent_without_both_numbers(free, used):
    assert "free_disk" not in run(free_disk_bytes=free, used_memory_bytes=used)


@pytest.mark.parametrize(
    ("statuses_", "expected"),
    [
        ([], Status.PASS),
        ([Status.PASS], Status.PASS),
        ([Status.PASS, Status.WARN, Status.PASS], Status.WARN),
        ([Status.WARN, Status.FAIL, Status.PASS], Status.FAIL),
        ([Status.FAIL, Status.WARN], Status.FAIL),
        ([Status.WARN, Status.WARN], Status.WARN),
    ],
)
def test_worst(statuses_, expected):
    assert worst(statuses_) == expected
