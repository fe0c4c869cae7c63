"""Inspection against real servers of every binary in the matrix."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import runbook_cli, switch_aof_on

import runbook
from runbook.sandbox.seed import populate
from runbook.sandbox.throwaway import SEED_CONFIG


def _checks(insp: runbook.Inspection) -> dict[str, runbook.Check]:
    return {c.name: c for c in insp.checks}


def test_seed_clean_state(server_binary: Path, make_sandbox, clean_env) -> None:
    sb = make_sandbox(server_binary)
    populate(sb.client(), 500)
    sb.client().save()
    insp = runbook.inspect_target(runbook.connect(sb.url))
    checks = _checks(insp)
    assert insp.dbsize == 500
    assert insp.identity.config_file == str(sb.config_path)
    assert checks["aof_enabled"].status == "warn"
    assert checks["config_drift"].status == "pass"
    assert checks["rdb_last_bgsave"].status == "pass"
    assert insp.verdict != "fail"
    assert [f.role for f in insp.files] == ["rdb"]
    assert insp.aof is not None and insp.aof.layout == "absent"
    assert insp.runtime["save"] == "3600 1 300 100 60 10000"


def test_runtime_aof_drift_is_a_failure(server_binary: Path, make_sandbox, clean_env) -> None:
    sb = make_sandbox(server_binary)
    populate(sb.client(), 200)
    switch_aof_on(sb.client())
    insp = runbook.inspect_target(runbook.connect(sb.url))
    drift = {d.setting: d for d in insp.drift}
    assert (drift["appendonly"].runtime, drift["appendonly"].file, drift["appendonly"].status) == ("yes", "no", "drift")
    assert _checks(insp)["config_drift"].status == "fail"
    assert "after the next restart" in _checks(insp)["config_drift"].observed
    assert insp.verdict == "fail"
    assert insp.summary().facts["drift"] == ["appendonly"]
    assert insp.aof is not None and insp.aof.loadable
    expected_layout = "single-file" \
        if insp.identity.version.startswith("6.") and insp.identity.server == "redis" else "multi-part"
    assert insp.aof.layout == expected_layout


def test_identity_tells_valkey_from_redis(server_binary: Path, make_sandbox, clean_env) -> None:
    sb = make_sandbox(server_binary)
    ident = runbook.identify(sb.client())
    assert ident.server == ("valkey" if "valkey" in server_binary.name else "redis")
    assert ident.role == "master" and ident.mode == "standalone"
    assert ident.version.split(".")[0] in {"6", "7", "8", "9"}


def test_cluster_node_is_identified_as_cluster(server_binary: Path, make_sandbox, clean_env) -> None:
    sb = make_sandbox(server_binary, config=SEED_CONFIG + "cluster-enabled yes\n")
    ident = runbook.identify(sb.client())
    assert ident.mode == "cluster"  # Valkey 8+ reports server_mode, Redis redis_mode
    assert runbook.inspect_target(runbook.connect(sb.url)).identity.mode == "cluster"


def test_a_sentinel_is_refused_with_the_master_to_point_at(server_binary: Path, make_sandbox, clean_env,
                                                           tmp_path: Path) -> None:
    master = make_sandbox(server_binary)
    sentinel = make_sandbox(server_binary, config=f"sentinel monitor prod 127.0.0.1 {master.port} 1\n",
                            extra_args=("--sentinel",))
    proc = runbook_cli("run", "inspect", "-p", "target", sentinel.url, "--archive", str(tmp_path / "archive"))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Sentinel, not a data server" in proc.stdout, proc.stdout
    assert f"prod at redis://127.0.0.1:{master.port}/0" in proc.stdout  # what to point target at instead
    assert "CONFIG was renamed" not in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr


def test_server_without_config_file(server_binary: Path, make_sandbox, clean_env) -> None:
    sb = make_sandbox(server_binary, config=None)
    insp = runbook.inspect_target(runbook.connect(sb.url))
    check = _checks(insp)["config_drift"]
    assert insp.identity.config_file == ""
    assert check.status == "warn" and "without a config file" in check.observed
    assert all(d.status == "unknown" for d in insp.drift)


def test_password_from_environment(server_binary: Path, make_sandbox, clean_env) -> None:
    sb = make_sandbox(server_binary, password="s3cret-Pa55")
    with pytest.raises(runbook.TargetUnreachable, match="REDIS_PASSWORD"):
        runbook.connect(sb.url)
    clean_env.setenv("REDIS_PASSWORD", "wrong")
    with pytest.raises(runbook.TargetUnreachable, match="authentication failed|password"):
        runbook.connect(sb.url)
    clean_env.setenv("RB_PW", "s3cret-Pa55")
    insp = runbook.inspect_target(runbook.connect(sb.url, password_env="RB_PW"))
    assert insp.identity.role == "master"
    assert "s3cret-Pa55" not in repr(insp.summary())


def test_renamed_config_command(server_binary: Path, make_sandbox, clean_env) -> None:
    sb = make_sandbox(server_binary, config=SEED_CONFIG + "rename-command CONFIG RB-CONFIG-7f\n")
    with pytest.raises(runbook.PreconditionFailed, match="config_command"):
        runbook.inspect_target(runbook.connect(sb.url))
    insp = runbook.inspect_target(runbook.connect(sb.url, config_command="RB-CONFIG-7f"))
    assert insp.runtime["appendonly"] == "no"
    assert _checks(insp)["config_drift"].status == "pass"


def test_unreachable_target_says_what_to_do(clean_env) -> None:
    from runbook.sandbox.throwaway import free_port

    with pytest.raises(runbook.TargetUnreachable, match="cannot connect.*server runs"):
        runbook.connect(f"redis://127.0.0.1:{free_port()}/0", connect_timeout_s=1)


def test_unreadable_config_file_is_a_warning_not_a_crash(default_binary: Path, make_sandbox, clean_env,
                                                         tmp_path) -> None:
    sb = make_sandbox(default_binary)
    insp = runbook.inspect_target(runbook.connect(sb.url), config_file=str(tmp_path / "nope.conf"))
    check = _checks(insp)["config_drift"]
    assert check.status == "warn" and "does not exist" in check.observed
