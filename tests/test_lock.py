"""One change at a time per server (issue 14, item 2): a lock on the server itself, seen by every runner."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import redis
from helpers import REPO, index, run_json, runbook_cli
from redis.crc import key_slot

from runbook.errors import Blocked
from runbook.sandbox.seed import populate
from runbook.sandbox.throwaway import SEED_CONFIG
from runbook.server import lock


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _start_run(archive: Path, *args: str) -> subprocess.Popen[str]:
    """`runbook run ARGS --json` started in the background, as a second operator on another host would."""
    env = {k: v for k, v in os.environ.items() if k not in ("RUNBOOK_ARCHIVE", "RUNBOOK_SANDBOX_URL")}
    return subprocess.Popen([sys.executable, "-m", "runbook", "run", *args, "--archive", str(archive), "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)


@pytest.mark.notebook
def test_two_concurrent_changes_one_wins_the_other_is_blocked(default_binary: Path, make_sandbox, clean_env,
                                                             tmp_path: Path) -> None:
    """Two `run all -p apply true` on one server, from two archives, started together: one changes it, the other
    is refused at its first changing step (exit 3, naming the holder) and changes nothing."""
    sb = make_sandbox(default_binary)
    populate(sb.client(), 100_000)  # a change that lasts long enough for the second run to meet it
    sb.client().save()
    original = sb.config_path.read_bytes()
    runs = {name: _start_run(tmp_path / name, "all", "-p", "target", sb.url, "-p", "apply", "true",
                             "-p", "destination", str(tmp_path / f"backups-{name}"))
            for name in ("a", "b")}
    outputs = {name: p.communicate(timeout=600) for name, p in runs.items()}
    done = {name: (runs[name].returncode, *out) for name, out in outputs.items()}
    codes = sorted(rc for rc, _, _ in done.values())
    assert codes == [0, 3], {n: (rc, err[-2000:]) for n, (rc, _, err) in done.items()}
    winner = next(n for n, (rc, _, _) in done.items() if rc == 0)
    loser = "b" if winner == "a" else "a"
    won, lost = json.loads(done[winner][1]), json.loads(done[loser][1])

    # The loser: read-only inspection ran; its backup (the first changing step) was refused, naming the holder.
    steps = [(s["notebook"], s["status"]) for s in lost["steps"]]
    assert lost["steps"][0]["status"] in ("pass", "warn")  # warn: this host's overcommit setting
    assert steps[1:] == [("backup", "blocked"), ("enable-aof", "skipped"), ("persist-config", "skipped"),
                         ("test-persistence", "skipped"), ("inspect", "skipped")]
    error = lost["steps"][1]["summary"]["error"]
    assert "another change holds this server" in error and f"change {won['change_id']}" in error
    holder = next(r["lock"]["holder"] for r in index(tmp_path / winner) if r.get("lock"))
    assert holder["change_id"] == won["change_id"] and f"from {holder['host']}" in error
    assert f"started {holder['started']}" in error
    assert lost["steps"][1]["ipynb"] is None  # its notebook never ran: nothing was sent
    assert not (tmp_path / f"backups-{loser}").exists()
    # The winner changed the server once: one config backup, named after its change, holding the original.
    assert [s["notebook"] for s in won["steps"] if s["changed"] == "yes"] == ["backup", "enable-aof",
                                                                                "persist-config", "test-persistence"]
    assert sb.client().config_get("appendonly")["appendonly"] == "yes"
    backups = sorted(sb.config_path.parent.glob("redis.conf.runbook-*.bak"))
    assert [b.name.split("-")[1] for b in backups] == [won["change_id"]]
    assert backups[0].read_bytes() == original
    assert sb.client().get(lock.lock_key(sb.client())) is None  # released at the end of the run

    rc, out, err = run_json(tmp_path / winner, "rollback", "-p", "target", sb.url, "-p", "apply", "true")
    assert rc == 0, err
    summary = out["steps"][0]["summary"]
    assert summary["change_id"] == won["change_id"] and summary["checks"]["file_restored"]["status"] == "pass"
    assert sb.config_path.read_bytes() == original
    assert sb.client().config_get("appendonly")["appendonly"] == "no"


_KILLED_RUN = textwrap.dedent("""
    import os, sys, redis
    from runbook.server.lock import Holder, acquire
    acquire(redis.Redis.from_url(sys.argv[1]), Holder("deadbeef0001", "ghost-host", "ops", os.getpid(),
            "2024-05-01T10:00:00+00:00"), lease_ms=int(sys.argv[2]))
    print("held", flush=True)
    sys.stdin.read()  # until killed
""")


@pytest.mark.notebook
def test_a_killed_runs_lock_blocks_then_expires_and_is_reported(default_binary: Path, make_sandbox, clean_env,
                                                               tmp_path: Path) -> None:
    sb = make_sandbox(default_binary)
    populate(sb.client(), 200)
    lease_s = 20
    holder = subprocess.Popen([sys.executable, "-c", _KILLED_RUN, sb.url, str(lease_s * 1000)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    held_at = time.monotonic()
    holder.kill()  # kill -9: the lock is never released
    holder.wait()
    archive = tmp_path / "archive"

    # A change is refused at once, naming the killed run; nothing is sent.
    rc, out, _ = run_json(archive, "enable-aof", "-p", "target", sb.url, "-p", "apply", "true")
    assert rc == 3
    error = out["steps"][0]["summary"]["error"]
    assert "change deadbeef0001 from ghost-host" in error and "started 2024-05-01T10:00:00+00:00" in error
    assert sb.client().config_get("appendonly")["appendonly"] == "no"
    assert sb.client().info("commandstats").get("cmdstat_config|set") is None  # no CONFIG SET reached it
    # Read-only steps are never blocked, nor are plan-only runs of changing steps.
    rc, out, err = run_json(archive, "inspect", "enable-aof", "-p", "target", sb.url)
    assert rc == 0 and [s["status"] for s in out["steps"]] != ["blocked"] * 2, err
    assert time.monotonic() < held_at + lease_s, "too slow: the lease ended before the checks under it"

    time.sleep(max(0.0, held_at + lease_s + 0.5 - time.monotonic()))  # the killed run's lease ends
    proc = runbook_cli("run", "enable-aof", "-p", "target", sb.url, "-p", "apply", "true", "--archive", str(archive),
                       "--json")
    assert proc.returncode == 0, proc.stderr
    assert "took over the lock" in proc.stderr and "deadbeef0001" in proc.stderr
    record = next(r for r in reversed(index(archive)) if r["notebook"] == "enable-aof" and r.get("summary"))
    assert record["lock"]["took_over"]["change_id"] == "deadbeef0001"
    assert record["lock"]["holder"]["change_id"] == json.loads(proc.stdout)["change_id"]
    assert sb.client().config_get("appendonly")["appendonly"] == "yes"
    assert sb.client().get(lock.lock_key(sb.client())) is None


def test_the_lock_is_server_wide_and_never_counted_as_data(default_binary: Path, make_sandbox) -> None:
    """Two targets naming different databases of one server share its lock (database 0), and DBSIZE as the steps
    read it leaves the lock key out, so a change never reads it as a key gained or lost."""
    sb = make_sandbox(default_binary)
    db0, db3 = redis.Redis(port=sb.port, db=0), redis.Redis(port=sb.port, db=3)
    populate(db0, 10)
    held = lock.acquire(db3, lock.Holder.here("c-db3"), name="db3")
    try:
        with pytest.raises(Blocked, match="change c-db3"):
            lock.acquire(db0, lock.Holder.here("c-db0"), name="db0")
        assert db0.dbsize() == 11 and lock.data_dbsize(db0) == 10
        assert db3.dbsize() == 0 and lock.data_dbsize(db3) == 0
    finally:
        assert held.release()
    assert db0.dbsize() == 10


def test_renewal_takes_a_vanished_key_back_and_release_spares_another_holder(default_binary: Path,
                                                                            make_sandbox) -> None:
    sb = make_sandbox(default_binary)
    c = sb.client()
    held = lock.acquire(c, lock.Holder.here("mine"), lease_ms=60_000)
    c.flushall()  # a restart from an older file, a FLUSHALL: the key is gone while the change runs
    held.renew()
    assert lock.Holder.parse(c.get(held.key)).change_id == "mine" and not held.lost
    assert 0 < c.pttl(held.key) and held.lease_ms < c.pttl(held.key)  # the key outlives its lease (the memory)
    c.set(held.key, "1 other-token {}")  # an expired lease that someone else took
    held.renew()
    assert "after this run's lease ended" in held.lost
    assert held.release() is False and c.get(held.key) == "1 other-token {}"  # not ours: left alone


def test_a_cluster_nodes_lock_is_in_a_slot_it_serves(default_binary: Path, make_sandbox) -> None:
    sb = make_sandbox(default_binary, config=SEED_CONFIG + "cluster-enabled yes\ncluster-require-full-coverage no\n")
    c = sb.client()
    with pytest.raises(lock.NoLockHere, match="serves no hash slot"):  # it takes no key: nothing to lock with
        lock.acquire(c, lock.Holder.here("c0"), name="node")
    assert lock.data_dbsize(c) == 0
    served = (9000, 9100)
    c.execute_command("CLUSTER", "ADDSLOTS", *range(served[0], served[1] + 1))
    deadline = time.monotonic() + 10
    while "cluster_state:ok" not in c.execute_command("CLUSTER", "INFO") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not served[0] <= key_slot(b"runbook") <= served[1]  # the standalone key would be refused here
    held = lock.acquire(c, lock.Holder.here("c1"), name="node")
    tag = held.key.split("{")[1].rstrip("}")
    assert served[0] <= key_slot(tag.encode()) <= served[1]
    assert lock.data_dbsize(c) == 0 and c.dbsize() == 1
    assert held.release()


def test_a_read_only_replica_takes_no_lock(default_binary: Path, make_sandbox) -> None:
    """A replica refuses every write (READONLY, or inside the script's error on 6.2): the change's own guard decides
    (enable-aof refuses a replica unless allow_replica), and the run says it went ahead unlocked."""
    master = make_sandbox(default_binary)
    replica = make_sandbox(default_binary, config=SEED_CONFIG + f"replicaof 127.0.0.1 {master.port}\n")
    with pytest.raises(lock.NoLockHere, match="read-only replica"):
        lock.acquire(replica.client(), lock.Holder.here("c1"), name="replica")


def test_an_acl_user_that_may_not_write_the_lock_is_blocked(server_binary: Path, make_sandbox) -> None:
    """An application user limited to its own keys cannot take the lock: blocked (exit 3) with the grant to run."""
    sb = make_sandbox(server_binary, config=SEED_CONFIG + "user default on nopass ~* &* +@all\n"
                      "user app on >app-pw ~app:* &* +@all\n")
    app = redis.Redis(port=sb.port, username="app", password="app-pw", decode_responses=True)
    with pytest.raises(Blocked, match=r"user 'app' may not take the runbook's lock.*ACL SETUSER app .*runbook:lock"):
        lock.acquire(app, lock.Holder.here("c1"), name="app")
    assert sb.client().dbsize() == 0
