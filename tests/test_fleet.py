"""Fleets: a params file with `targets`, inspected in one document, changed one target at a time."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from helpers import has_redis_user, index, needs_redis_user_reason, run_json, runbook_cli
from prometheus_client.parser import text_string_to_metric_families

from runbook.errors import ParameterError
from runbook.orchestration.fleet import normalize_targets
from runbook.orchestration.plan import plan
from runbook.sandbox.seed import populate
from runbook.sandbox.throwaway import Sandbox


@pytest.mark.parametrize(("raw", "message"), [
    ([], "non-empty list"),
    ("redis://h:1", "non-empty list"),
    (["sandbox"], "cannot list `sandbox`"),
    (["redis://h:1", "redis://h:1"], "twice"),
    (["redis://:pw@h:1"], "carries a password"),
    ([{"target": "redis://h:1", "password": "x"}], "unknown key(s) password"),
    ([{"username": "u"}], "with a `target` key"),
    ([{"target": "redis://h:1", "config_file": 3}], "config_file must be text"),
    (["http://h:1"], "is not a redis://"),
])
def test_bad_targets_are_refused(raw: object, message: str) -> None:
    with pytest.raises(ParameterError, match=None) as err:
        normalize_targets(raw)
    assert message in str(err.value)


def _fleet_file(tmp_path: Path, targets: list, **extra: object) -> Path:
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump({"targets": targets, **extra}))
    return path


def test_plan_runs_checks_once_for_the_fleet_and_changes_per_target(tmp_path: Path) -> None:
    f = _fleet_file(tmp_path, ["redis://a:1", {"target": "redis://b:2", "password_env": "B_PASS"}],
                    password_env="FLEET_PASS", apply=True)
    steps = plan(["all"], [f])
    shape = [(s.name, s.path.name, s.targets) for s in steps]
    both = ("redis://a:1", "redis://b:2")
    assert shape == [
        ("inspect", "07-fleet.ipynb", both),
        # The backup before the change is taken per target, like the change itself (each server's own files).
        ("backup", "05-backup.ipynb", ("redis://a:1",)), ("backup", "05-backup.ipynb", ("redis://b:2",)),
        ("enable-aof", "02-enable-aof.ipynb", ("redis://a:1",)), ("enable-aof", "02-enable-aof.ipynb", ("redis://b:2",)),
        ("persist-config", "03-persist-config.ipynb", ("redis://a:1",)),
        ("persist-config", "03-persist-config.ipynb", ("redis://b:2",)),
        ("test-persistence", "07-fleet.ipynb", both),
        ("inspect", "07-fleet.ipynb", both),
    ]
    assert [s.parameters["check"] for s in steps if s.fleet] == ["inspect", "online-test", "inspect"]
    # The file's password_env is every target's default; an entry's own wins.
    assert steps[3].parameters["password_env"] == "FLEET_PASS" and steps[4].parameters["password_env"] == "B_PASS"
    assert steps[1].parameters["password_env"] == "FLEET_PASS" and steps[2].parameters["password_env"] == "B_PASS"
    assert steps[0].parameters["password_env"] == "FLEET_PASS"


@pytest.mark.parametrize(("extra", "message"), [
    ({"target": "redis://c:3"}, "either target"),
    ({"mode": "restart"}, "online only"),
    ({"check": "inspect"}, "unknown parameter(s): check"),
])
def test_plan_refuses_ambiguous_fleets(tmp_path: Path, extra: dict, message: str) -> None:
    f = _fleet_file(tmp_path, ["redis://a:1"], **extra)
    with pytest.raises(ParameterError) as err:
        plan(["test-persistence"], [f])
    assert message in str(err.value)


def _fleet(make_sandbox, binary: Path, n: int) -> list[Sandbox]:
    sbs = [make_sandbox(binary) for _ in range(n)]
    for sb in sbs:
        populate(sb.client(), 200)
        sb.client().save()
    return sbs


def test_fleet_with_one_drifted_member_fails_and_names_it(default_binary: Path, make_sandbox, tmp_path: Path) -> None:
    sbs = _fleet(make_sandbox, default_binary, 3)
    drifted = sbs[1]
    drifted.client().config_set("appendonly", "yes")  # the seed's drift: on at runtime, `no` in the file
    archive, prom = tmp_path / "archive", tmp_path / "fleet.prom"
    rc, out, err = run_json(archive, "inspect", "-f", str(_fleet_file(tmp_path, [s.url for s in sbs])),
                            "--metrics-file", str(prom))
    assert rc == 1, err
    assert out["failing"] == [{"target": drifted.url, "notebook": "inspect", "status": "fail"}]
    by_target = {s["target"]: s for s in out["steps"]}
    assert set(by_target) == {s.url for s in sbs}
    assert by_target[drifted.url]["summary"]["drift"] == ["appendonly"]
    assert all(by_target[s.url]["summary"]["drift"] == [] for s in sbs if s is not drifted)
    # One document for the fleet, one index record per target pointing at it.
    assert len({s["ipynb"] for s in out["steps"]}) == 1
    records = index(archive)
    assert sorted(r["target"] for r in records) == sorted(s.url for s in sbs)
    assert len({tuple(r["files"]) for r in records}) == 1 and len({r["change_id"] for r in records}) == 1
    assert {r["target"]: r["status"] for r in records}[drifted.url] == "fail"
    html = Path(out["steps"][0]["html"]).read_text()
    assert all(f"{s.url}: " in html for s in sbs)  # a section per target
    # The text file for node_exporter: drift flagged for the drifted member only.
    drift = {s.labels["target"]: s.value for fam in text_string_to_metric_families(prom.read_text())
             for s in fam.samples if s.name == "runbook_drift" and s.labels["setting"] == "appendonly"}
    assert drift == {s.url: (1.0 if s is drifted else 0.0) for s in sbs}
    assert runbook_cli("archive", "verify", "--archive", str(archive)).returncode == 0


def test_unreachable_member_is_an_error_row_and_the_rest_are_inspected(default_binary: Path, make_sandbox,
                                                                       tmp_path: Path) -> None:
    good = _fleet(make_sandbox, default_binary, 1)[0]
    gone = make_sandbox(default_binary)
    gone_url = gone.url
    gone.stop()
    rc, out, _ = run_json(tmp_path / "a", "inspect", "-f",
                          str(_fleet_file(tmp_path, [good.url, gone_url], connect_timeout_s=1.0)))
    assert rc == 1
    by_target = {s["target"]: s for s in out["steps"]}
    assert by_target[good.url]["status"] == "warn" and by_target[good.url]["summary"]["dbsize"] == 200
    assert by_target[gone_url]["status"] == "error" and "cannot connect" in by_target[gone_url]["summary"]["error"]


def test_online_test_covers_the_fleet(default_binary: Path, make_sandbox, tmp_path: Path) -> None:
    sbs = _fleet(make_sandbox, default_binary, 2)
    rc, out, err = run_json(tmp_path / "a", "test-persistence", "-f",
                            str(_fleet_file(tmp_path, [s.url for s in sbs], keys=50)), "-p", "apply", "true")
    assert rc == 0, err
    for step in out["steps"]:
        assert step["summary"]["canaries_written"] == 50 and step["summary"]["canaries_left"] == 0
        assert step["summary"]["checks"]["bgsave"]["status"] == "pass"
    for sb in sbs:
        assert sb.client().dbsize() == 200  # canaries gone, data untouched


def test_fleet_change_is_applied_to_every_target(default_binary: Path, make_sandbox, tmp_path: Path) -> None:
    sbs = _fleet(make_sandbox, default_binary, 2)
    sbs[0].client().config_set("appendonly", "yes")
    archive = tmp_path / "a"
    rc, out, err = run_json(archive, "all", "-p", "apply", "true", "-p", "destination", str(tmp_path / "bk"),
                            "-f", str(_fleet_file(tmp_path, [s.url for s in sbs])))
    assert rc == 0, err
    # every check passes (the host's vm.overcommit_memory is an advisory, apart from the status: issue 17)
    assert [(s["notebook"], s["status"]) for s in out["steps"]][-2:] == [("inspect", "pass")] * 2
    for sb in sbs:
        assert sb.client().config_get("appendonly")["appendonly"] == "yes"
        assert "appendonly yes" in sb.config_path.read_text()
    backups = {s["target"]: s["summary"] for s in out["steps"] if s["notebook"] == "backup"}
    assert set(backups) == {sb.url for sb in sbs} and all(b["result"] == "done" for b in backups.values())
    assert len({b["location"] for b in backups.values()}) == 2 and len(list((tmp_path / "bk").iterdir())) == 2
    assert len([r for r in index(archive) if r["status"] not in ("started", "intent")]) == 12
    assert runbook_cli("archive", "verify", "--archive", str(archive)).returncode == 0


@pytest.mark.skipif(not has_redis_user, reason=needs_redis_user_reason)
@pytest.mark.parametrize("keep_going", [False, True])
def test_a_failing_target_stops_the_fleet_unless_keep_going(default_binary: Path, make_sandbox, tmp_path: Path,
                                                            keep_going: bool) -> None:
    broken = make_sandbox(default_binary, run_as="redis")
    healthy = _fleet(make_sandbox, default_binary, 1)[0]
    broken.client().set("k", "v")
    broken.client().save()
    os.chown(broken.data_dir, 0, 0)  # the server can no longer write its dir: the AOF cannot be created
    broken.data_dir.chmod(0o755)
    args = ["all", "-p", "apply", "true", "-p", "destination", str(tmp_path / "bk"),
            "-f", str(_fleet_file(tmp_path, [broken.url, healthy.url]))]
    rc, out, _ = run_json(tmp_path / "a", *args, *(["--keep-going"] if keep_going else []))
    assert rc == 1
    status = {(s["notebook"], s["target"]): s["status"] for s in out["steps"] if s["notebook"] != "inspect"}
    assert status[("backup", broken.url)] == "error"  # its BGSAVE cannot write the dir: no change without a backup
    assert status[("enable-aof", broken.url)] == "skipped"
    assert status[("persist-config", broken.url)] == "skipped"
    assert out["failing"][0]["target"] == broken.url
    if keep_going:
        assert status[("enable-aof", healthy.url)] in ("pass", "warn")  # warn: this host's overcommit setting
        assert status[("test-persistence", healthy.url)] == "pass"
        assert status[("test-persistence", broken.url)] == "skipped"
        assert healthy.client().config_get("appendonly")["appendonly"] == "yes"
    else:
        assert status[("backup", healthy.url)] == "skipped" and status[("enable-aof", healthy.url)] == "skipped"
        assert healthy.client().config_get("appendonly")["appendonly"] == "no"
    assert broken.client().config_get("appendonly")["appendonly"] == "no"


def test_fleet_passwords_come_from_each_targets_env_and_stay_out_of_evidence(default_binary: Path, make_sandbox,
                                                                              tmp_path: Path) -> None:
    secret_a, secret_b = "fleet-pw-a-7f3e", "fleet-pw-b-91c2"
    a = make_sandbox(default_binary, password=secret_a)
    b = make_sandbox(default_binary, password=secret_b)
    f = _fleet_file(tmp_path, [{"target": a.url, "password_env": "PW_A"}, {"target": b.url, "password_env": "PW_B"}])
    archive = tmp_path / "archive"
    rc, out, err = run_json(archive, "inspect", "-f", str(f), env={"PW_A": secret_a, "PW_B": secret_b})
    assert rc == 0, err
    assert [s["status"] for s in out["steps"]] == ["warn", "warn"]  # both authenticated and inspected
    for path in archive.rglob("*"):
        if path.is_file():
            text = path.read_text(errors="replace")
            assert secret_a not in text and secret_b not in text, path
