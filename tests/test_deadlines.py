"""Every wait honours its deadline, also when the server stops answering (SIGSTOP: a reply that never comes), and
says what it last saw and what it put back. The server is always resumed (SIGCONT) before the test ends."""

from __future__ import annotations

import os
import signal
import threading
import time
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Callable, Iterator

import pytest
import redis
from helpers import index, run_json, switch_aof_on

import runbook
from runbook.model import SettingChange
from runbook.sandbox.seed import populate
from runbook.sandbox.throwaway import Sandbox
from runbook.server.aof import apply_runtime
from runbook.server.ops import bgsave_and_wait
from runbook.server.target import wait_loaded
from runbook.steps import backup
from runbook.steps import enable_aof as enable

#: With this many keys and this delay per key (rdb-key-save-delay, microseconds) a BGSAVE or an AOF rewrite runs
#: for ~10 s in its child: long enough to freeze the server in the middle of it.
KEYS, KEY_DELAY_US = 2000, 5000
#: Time a failure may take past its deadline: the put-back's own bounded wait (2 s) and the teardown.
MARGIN_S = 5.0


def _slow_saves(sb: Sandbox) -> redis.Redis:
    client = sb.client()
    populate(client, KEYS)
    client.save()
    client.config_set("rdb-key-save-delay", KEY_DELAY_US)
    return client


class Freezer:
    """SIGSTOP the server `after_s` after `when(INFO persistence)` holds (or after `after_s`), SIGCONT after `max_s`
    at the latest; `resume()` (always called by `frozen`) sends SIGCONT now."""

    def __init__(self, sb: Sandbox, when: Callable[[dict], bool] | None = None, after_s: float = 0.0,
                 max_s: float = 20.0) -> None:
        assert sb.pid
        self.pid, self.when, self.after_s, self.max_s = sb.pid, when, after_s, max_s
        self.watch = sb.client(socket_timeout=5)
        self.stopped_at = self.stopped_wall = 0.0
        self._resume = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while self.when is not None and not self._resume.is_set() and not self.when(self.watch.info("persistence")):
            time.sleep(0.005)
        time.sleep(self.after_s)
        if not self._resume.is_set():
            os.kill(self.pid, signal.SIGSTOP)
            self.stopped_at, self.stopped_wall = time.monotonic(), time.time()
            self._resume.wait(self.max_s)
        os.kill(self.pid, signal.SIGCONT)

    def start(self) -> None:
        self._thread.start()

    def wait_stopped(self, timeout_s: float = 5.0) -> None:
        """Until the kernel shows the server stopped (SIGSTOP is delivered asynchronously)."""
        deadline = time.monotonic() + timeout_s
        while Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "T":
            assert time.monotonic() < deadline, "the server was not stopped"
            time.sleep(0.005)

    def resume(self) -> None:
        self._resume.set()
        self._thread.join(10)
        os.kill(self.pid, signal.SIGCONT)


@contextmanager
def frozen(sb: Sandbox, when: Callable[[dict], bool] | None = None, after_s: float = 0.0,
           max_s: float = 20.0) -> Iterator[Freezer]:
    freezer = Freezer(sb, when, after_s, max_s)
    freezer.start()
    try:
        yield freezer
    finally:
        freezer.resume()


def _eventually(check: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.mark.notebook
def test_enable_aof_on_a_frozen_server_fails_at_its_deadline_and_puts_aof_back(default_binary: Path, make_sandbox,
                                                                                clean_env, tmp_path: Path) -> None:
    sb = make_sandbox(default_binary)
    client = _slow_saves(sb)
    # Frozen during the wait for the initial rewrite, which has polled INFO a few times by then.
    with frozen(sb, when=lambda info: int(info.get("aof_enabled", 0)) == 1, after_s=0.3) as freezer:
        rc, out, err = run_json(tmp_path, "enable-aof", "-p", "target", sb.url, "-p", "apply", "true",
                                "-p", "timeout_s", "3")
        assert freezer.stopped_at, "the server was never frozen"
    # The deadline runs from the first CONFIG SET, a moment before the freeze; a read that waits for its
    # command timeout (10 s) instead, or retries, ends far later. The step's end as archived (rendering the
    # report and leaving the CLI come after it).
    ended = datetime.fromisoformat(index(tmp_path)[0]["ended"]).timestamp()
    assert ended - freezer.stopped_wall < 3 + MARGIN_S
    assert rc == 1, err
    message = out["steps"][0]["summary"]["error"]
    assert "ChangeFailed" in message and sb.url in message
    assert "did not complete within 3 s" in message
    assert "last seen" in message and "'aof_enabled': 1" in message and "no reply to INFO persistence" in message
    assert "CONFIG SET appendonly no" in message  # what was put back
    # Resumed, the server runs the put-back it was sent: AOF off again, as found.
    assert _eventually(lambda: client.config_get("appendonly")["appendonly"] == "no"
                       and client.info("persistence")["aof_enabled"] == 0)
    assert client.dbsize() == KEYS


def test_apply_runtime_freeze_longer_than_the_command_timeout(default_binary: Path, make_sandbox,
                                                              clean_env) -> None:
    sb = make_sandbox(default_binary)
    client = _slow_saves(sb)
    target = runbook.connect(sb.url, command_timeout_s=2)
    changes = [SettingChange("appendonly", "no", "yes")]
    with frozen(sb, when=lambda info: int(info.get("aof_enabled", 0)) == 1, max_s=15) as freezer:
        start = time.monotonic()
        with pytest.raises(runbook.ChangeFailed) as err:
            apply_runtime(target.client, changes, timeout_s=1.5)
        elapsed = time.monotonic() - start
    assert elapsed < 1.5 + 2 + 1, str(err.value)  # the deadline, then the put-back's own 2 s
    assert freezer.stopped_at
    assert "did not complete within 1.5 s" in str(err.value) and "Sent CONFIG SET appendonly no" in str(err.value)
    assert _eventually(lambda: client.info("persistence")["aof_enabled"] == 0)
    # The target's own client was not changed for the steps after the wait.
    kwargs = target.client.connection_pool.connection_kwargs
    assert kwargs["socket_timeout"] == 2 and target.client.ping()


def test_bgsave_wait_on_a_frozen_server_ends_at_its_deadline(default_binary: Path, make_sandbox, clean_env) -> None:
    sb = make_sandbox(default_binary)
    _slow_saves(sb)
    target = runbook.connect(sb.url)  # 10 s per reply
    # Frozen while the save runs, once the wait has polled it a few times.
    with frozen(sb, when=lambda info: int(info.get("rdb_bgsave_in_progress", 0)) == 1, after_s=0.3, max_s=12):
        start = time.monotonic()
        with pytest.raises(runbook.WaitTimeout) as err:
            bgsave_and_wait(target.client, timeout_s=2)
        elapsed = time.monotonic() - start
    assert elapsed < 2 + 1
    text = str(err.value)
    assert "no completed BGSAVE within 2 s" in text and "'rdb_bgsave_in_progress': 1" in text
    assert "no reply to INFO persistence" in text


@pytest.mark.notebook
def test_test_persistence_online_names_the_bgsave_deadline_on_a_frozen_server(default_binary: Path, make_sandbox,
                                                                              clean_env, tmp_path: Path) -> None:
    sb = make_sandbox(default_binary)
    _slow_saves(sb)
    with frozen(sb, when=lambda info: int(info.get("rdb_bgsave_in_progress", 0)) == 1, max_s=6) as freezer:
        rc, out, err = run_json(tmp_path, "test-persistence", "-p", "target", sb.url, "-p", "apply", "true",
                                "-p", "timeout_s", "2", "-p", "keys", "10")
        assert freezer.stopped_at
    assert rc == 1, err
    checks = out["steps"][0]["summary"]["checks"]
    observed = checks["bgsave"]["observed"]
    assert checks["bgsave"]["status"] == "fail"
    assert "no completed BGSAVE within 2 s" in observed and "last seen" in observed
    assert "no reply to INFO persistence" in observed


def test_wait_loaded_on_a_frozen_server_ends_at_its_deadline(default_binary: Path, make_sandbox, clean_env) -> None:
    sb = make_sandbox(default_binary)
    client = sb.client()  # 30 s per reply
    with frozen(sb, max_s=8) as freezer:
        freezer.wait_stopped()
        start = time.monotonic()
        with pytest.raises(runbook.WaitTimeout, match="the sandbox did not finish loading within 1 s"):
            wait_loaded(client, 1.0, "the sandbox")
        assert time.monotonic() - start < 1 + 1


def test_sandbox_readiness_wait_on_a_frozen_server_ends_at_its_deadline(default_binary: Path, make_sandbox,
                                                                         clean_env) -> None:
    sb = make_sandbox(default_binary)
    with frozen(sb, max_s=8) as freezer:
        freezer.wait_stopped()
        start = time.monotonic()
        with pytest.raises(runbook.WaitTimeout, match="did not answer PING within 1 s"):
            sb._wait_ready(1.0)  # the wait `start` runs, against a server that stopped answering
        assert time.monotonic() - start < 1 + 1


def test_preflight_busy_wait_on_a_frozen_server_ends_at_its_deadline(default_binary: Path, make_sandbox,
                                                                     clean_env) -> None:
    sb = make_sandbox(default_binary)
    client = _slow_saves(sb)
    client.bgsave()
    target = runbook.connect(sb.url)
    with frozen(sb, after_s=0.5, max_s=10):
        start = time.monotonic()
        with pytest.raises(runbook.WaitTimeout) as err:
            enable.preflight(target, busy_wait_s=2)
        elapsed = time.monotonic() - start
    assert elapsed < 2 + 1
    assert "within 2 s" in str(err.value) and "'rdb_bgsave_in_progress': 1" in str(err.value)


def test_backup_rewrite_hold_on_a_frozen_server_ends_at_its_deadline_and_puts_back(default_binary: Path,
                                                                                   make_sandbox, clean_env) -> None:
    sb = make_sandbox(default_binary)
    client = sb.client()
    populate(client, KEYS)
    switch_aof_on(client)
    client.config_set("rdb-key-save-delay", KEY_DELAY_US)
    client.bgrewriteaof()
    target = runbook.connect(sb.url)
    with frozen(sb, after_s=0.5, max_s=10):
        start = time.monotonic()
        with pytest.raises(runbook.RunbookError) as err:
            with backup.rewrites_held(target, timeout_s=2):
                pass
        elapsed = time.monotonic() - start
    assert elapsed < 2 + MARGIN_S - 1  # the deadline, then the put-back's own 2 s
    text = str(err.value)
    assert "within 2 s" in text and "'aof_rewrite_in_progress': 1" in text
    assert "auto-aof-rewrite-percentage 100" in text
    assert _eventually(lambda: client.config_get("auto-aof-rewrite-percentage")["auto-aof-rewrite-percentage"] == "100")
