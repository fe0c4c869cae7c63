"""`runbook rehearse`: the whole change on a sandbox built from a real server's own config file.

The "production" server here is Debian's stock redis.conf (tests/data/debian-redis.conf: Debian 12,
package redis-server 5:7.0.15-1~deb12u10, BSD-3-Clause) edited to the seed's settings and run by the
real redis-server on a free loopback port in tmp_path. Every test checks that it stays untouched.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import pytest
import redis
from conftest import BINARIES, binary_or_skip
from helpers import REPO, has_redis_user, index, needs_redis_user_reason, runbook_cli, switch_aof_on

from runbook.errors import ExitCode, ParameterError, PreconditionFailed
from runbook.model import ConnectionSpec, Status, StepSummary
from runbook.orchestration.rehearse import (
    Connection,
    _refuse_unless_isolated,
    _version_caveat,
    check_room,
    observe,
    rehearsal_sandbox,
    verdict,
)
from runbook.orchestration.runner import RunResult, StepResult
from runbook.sandbox.binaries import binary_version, choose_binary, find_server_binary
from runbook.sandbox.seed import populate
from runbook.sandbox.throwaway import _die_with_parent, free_port
from runbook.server.target import Identity

pytestmark = pytest.mark.notebook

DEBIAN_CONF = Path(__file__).parent / "data" / "debian-redis.conf"
DEBIAN_CONF_SHA256 = "f558f95397acc98423d3521b4c59af5ab8c36264e43c58c7e97419e0d4fcbbdf"
#: Redis's own commands that only read; anything else reaching the production server is a bug.
#: What a rehearsal may send to production. ACL DRYRUN runs nothing: it asks whether this user may run
#: CONFIG REWRITE (the persist-config method the target would get).
READ_ONLY = {"ping", "info", "config|get", "dbsize", "hello", "auth", "client|setinfo", "select", "acl|dryrun",
             "exists"}  # exists: DBSIZE without the runbook's lock key


@dataclass
class Production:
    """A running "production" server started from an edited copy of Debian's redis.conf."""

    root: Path
    port: int
    conf: Path
    data: Path
    proc: subprocess.Popen[bytes]
    password: str | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, password=self.password, decode_responses=True, socket_timeout=10)


def seed_config(root: Path, port: int, *edits: tuple[str, str]) -> str:
    """Debian's stock file with the seed's settings, running from `root` on `port`; each edit must apply once."""
    text = DEBIAN_CONF.read_text()
    for pattern, repl in [
        (r"^port 6379$", f"port {port}"),
        (r"^bind 127\.0\.0\.1 -::1$", "bind 127.0.0.1"),
        (r"^daemonize yes$", "daemonize no"),
        (r"^# supervised auto$", "supervised no"),
        (r"^pidfile .*$", f"pidfile {root}/redis-server.pid"),
        (r"^logfile .*$", f"logfile {root}/redis-server.log"),
        (r"^dir /var/lib/redis$", f"dir {root}/data"),
        # The seed: RDB with its save policy, AOF off in the file and no fsync line.
        (r"^# save 3600 1 300 100 60 10000$", "save 3600 1 300 100 60 10000"),
        (r"^appendonly no$", "appendonly no"),
        (r"^appendfsync everysec$", "# appendfsync everysec"),
        *edits,
    ]:
        text, n = re.subn(pattern, lambda _m, r=repl: r, text, flags=re.MULTILINE)
        assert n == 1, f"{pattern!r} matched {n} lines of {DEBIAN_CONF}"
    return text


@pytest.fixture
def start_production(tmp_path: Path) -> Iterator[Callable[..., Production]]:
    started: list[Production] = []

    def start(binary: Path, *edits: tuple[str, str], password: str | None = None, keys: int = 2000,
              drift: bool = True, name: str = "prod") -> Production:
        root = tmp_path / name
        (root / "data").mkdir(parents=True)
        port = free_port()
        conf = root / "redis.conf"
        conf.write_text(seed_config(root, port, *edits))
        with (root / "stdout.log").open("ab") as out:
            proc = subprocess.Popen([str(binary), str(conf)], cwd=root, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True, preexec_fn=_die_with_parent)  # no leak if pytest is killed
        prod = Production(root, port, conf, root / "data", proc, password)
        started.append(prod)
        deadline = time.monotonic() + 20
        while True:
            try:
                prod.client().ping()
                break
            except redis.ConnectionError:
                assert proc.poll() is None and time.monotonic() < deadline, (root / "stdout.log").read_text()
                time.sleep(0.05)
        if keys:
            populate(prod.client(), keys)
            prod.client().save()
        if drift:
            switch_aof_on(prod.client())  # the seed: CONFIG SET appendonly yes, `no` in the file
        return prod

    yield start
    for prod in started:
        if prod.proc.poll() is None:
            prod.proc.kill()
            prod.proc.wait(10)


def params_file(tmp_path: Path, prod: Production, **extra: str) -> Path:
    path = tmp_path / "params.yaml"
    lines = [f"target: {prod.url}", *(f"{k}: {v}" for k, v in extra.items())]
    path.write_text("\n".join(lines) + "\n")
    return path


def rehearse_json(tmp_path: Path, *args: str, env: dict[str, str] | None = None,
                  prefix: tuple[str, ...] = ()) -> tuple[int, dict, str, str]:
    """`runbook rehearse ARGS --json` with its own TMPDIR (so leftovers show): code, JSON, stdout, stderr."""
    tmp = tmp_path / "tmpdir"
    tmp.mkdir(exist_ok=True)
    if prefix:
        scrub = ("REDIS_PASSWORD", "RUNBOOK_SANDBOX_URL", "RUNBOOK_SANDBOX_DIR", "RUNBOOK_ARCHIVE")
        full = {**{k: v for k, v in os.environ.items() if k not in scrub}, "TMPDIR": str(tmp), **(env or {})}
        proc = subprocess.run([*prefix, sys.executable, "-m", "runbook", "rehearse", *args, "--json"],
                              capture_output=True, text=True, env=full, timeout=300, cwd=REPO, check=False)
    else:
        proc = runbook_cli("rehearse", *args, "--json", env={"TMPDIR": str(tmp), **(env or {})})
    out = json.loads(proc.stdout) if proc.stdout.strip().startswith("{") else {}
    return proc.returncode, out, proc.stdout, proc.stderr


def tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under `root` with its size and mtime: what "untouched" means for a data dir."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(prod: Production) -> dict:
    c = prod.client()
    return {"conf": sha(prod.conf), "config": c.config_get("*"), "dbsize": c.dbsize(), "files": tree(prod.data)}


def commands_seen(client: redis.Redis) -> set[str]:
    """The commands the server ran since the test's CONFIG RESETSTAT (which counts itself)."""
    return {k.removeprefix("cmdstat_") for k in client.info("commandstats")} - {"config|resetstat"}


def test_the_test_data_is_debians_stock_config() -> None:
    assert sha(DEBIAN_CONF) == DEBIAN_CONF_SHA256


def test_rehearsal_from_debians_stock_config_in_the_seeds_state(start_production, tmp_path: Path) -> None:
    binary = binary_or_skip("redis-7")
    prod = start_production(binary)
    before = snapshot(prod)
    assert before["dbsize"] == 2000 and prod.client().config_get("appendonly")["appendonly"] == "yes"
    prod.client().config_resetstat()
    archive = tmp_path / "archive"

    rc, out, _, err = rehearse_json(tmp_path, "-f", str(params_file(tmp_path, prod)), "--with-data",
                                    "--archive", str(archive))

    assert rc == 0, err
    assert out["verdict"] == "production would pass" and out["exit_code"] == 0
    r = out["rehearsal"]
    assert r["of"] == prod.url and r["config_file"] == str(prod.conf)
    assert r["version_match"] == "exact" and r["server"] == r["production_server"]
    assert Path(r["binary"]).resolve() == binary.resolve()
    assert r["data_copied"] and [c["role"] for c in r["copied"]] == ["rdb"]
    assert r["keys_loaded"] == before["dbsize"] == r["production_keys"]
    # The seed's drift was reproduced in the sandbox: AOF on at runtime, off in the file.
    assert r["mirrored"] == {"appendonly": {"sandbox": "no", "production": "yes"}}
    overrides = {o["directive"]: o for o in r["overrides"]}
    assert overrides["dir"]["production"] == str(prod.data) and overrides["dir"]["sandbox"].startswith(r["sandbox_dir"])
    assert overrides["port"]["production"] == str(prod.port)
    steps = out["steps"]
    assert [s["notebook"] for s in steps] == ["inspect", "backup", "enable-aof", "persist-config", "test-persistence",
                                              "inspect"]
    assert steps[0]["status"] == "fail" and steps[0]["summary"]["drift"] == ["appendonly"]
    assert steps[0]["summary"]["dbsize"] == before["dbsize"]
    # The backup is rehearsed too, into the sandbox's own dir (gone with it), never the target's destination.
    assert steps[1]["summary"]["result"] == "done" and steps[1]["summary"]["location"].startswith(r["sandbox_dir"])
    assert steps[1]["summary"]["dbsize"] == before["dbsize"]
    assert steps[2]["summary"]["result"] == "unchanged"  # AOF already runs, as in production
    assert steps[3]["summary"]["result"] == "changed" \
        and steps[3]["summary"]["config_file"].startswith(r["sandbox_dir"])
    assert steps[3]["summary"]["checks"]["file_boots"]["status"] == "pass"
    assert steps[5]["summary"]["drift"] == [] and steps[5]["summary"]["dbsize"] == before["dbsize"]
    # The evidence: every record marked as a rehearsal of this production, the chain intact.
    records = [rec for rec in index(archive) if rec["status"] not in ("started", "intent")]
    assert len(records) == 6 and all(rec["rehearsal"]["of"] == prod.url and rec["target"] == "sandbox"
                                     for rec in records)
    assert runbook_cli("archive", "verify", "--archive", str(archive)).returncode == 0
    # Production untouched: only read commands, same file, same settings, same data, no new files.
    assert commands_seen(prod.client()) <= READ_ONLY, commands_seen(prod.client()) - READ_ONLY
    assert snapshot(prod) == before
    assert os.listdir(tmp_path / "tmpdir") == []  # the sandbox is gone


def test_unreadable_rdb_with_data_exits_2_and_starts_nothing(start_production, tmp_path: Path) -> None:
    prod = start_production(binary_or_skip("redis-7"), keys=100, drift=False)
    rdb = prod.data / "dump.rdb"
    rdb.chmod(0)
    # root reads anything: drop the capabilities that let it, so it meets the file's mode like anyone.
    prefix = ("setpriv", "--bounding-set", "-dac_override,-dac_read_search") if os.geteuid() == 0 else ()
    if prefix and not shutil.which("setpriv"):
        pytest.skip("running as root without setpriv: cannot make a file unreadable")
    archive = tmp_path / "archive"
    rc, _, stdout, err = rehearse_json(tmp_path, "-f", str(params_file(tmp_path, prod)), "--with-data",
                                       "--archive", str(archive), prefix=prefix)
    assert rc == 2, err
    assert f"--with-data: {rdb} is not readable" in err and "drop --with-data" in err
    assert "Traceback" not in err and stdout == ""
    assert not archive.exists() and os.listdir(tmp_path / "tmpdir") == []


@pytest.mark.parametrize("params, message", [
    ("config_file: {tmp}/missing.conf\n", "the config_file parameter names {tmp}/missing.conf, which does not exist"),
    ("targets:\n  - target: {url}\n  - target: redis://127.0.0.1:1/0\n", "rehearse takes one target"),
    ("target: sandbox\n", "rehearse copies a real server"),
])
def test_usage_errors_exit_2(default_binary: Path, make_sandbox, tmp_path: Path, params: str, message: str) -> None:
    sb = make_sandbox(default_binary)
    path = tmp_path / "params.yaml"
    text = params.format(tmp=tmp_path, url=sb.url)
    path.write_text(text if text.startswith(("targets", "target:")) else f"target: {sb.url}\n{text}")
    rc, _, _, err = rehearse_json(tmp_path, "-f", str(path), "--archive", str(tmp_path / "archive"))
    assert rc == 2, err
    assert message.format(tmp=tmp_path) in err
    assert "Pass config_file" not in err  # never tell the user to pass what they passed
    assert not (tmp_path / "archive").exists()


def test_a_replica_never_gets_its_copy_connected_to_its_master(make_sandbox, start_production,
                                                                tmp_path: Path) -> None:
    # Master and replica of one product: a Redis 7.0 replica cannot load a Valkey 9 master's RDB.
    master = make_sandbox(binary_or_skip("redis-7"))
    populate(master.client(), 100)
    prod = start_production(binary_or_skip("redis-7"), (r"^# replicaof <masterip> <masterport>$",
                                                         f"replicaof 127.0.0.1 {master.port}"), keys=0, drift=False)
    deadline = time.monotonic() + 20
    while prod.client().info("replication").get("master_link_status") != "up":
        assert time.monotonic() < deadline, "the production replica did not sync"
        time.sleep(0.05)
    fields = ("sync_full", "sync_partial_ok", "sync_partial_err")
    before = {k: master.client().info("stats")[k] for k in fields}

    rc, out, _, err = rehearse_json(tmp_path, "-f", str(params_file(tmp_path, prod)), "--archive", str(tmp_path / "a"))

    # The copy ran as a master and passed; production, a replica without allow_replica, would not.
    assert out["run_exit_code"] == 0, err
    assert all(s["summary"]["role"] == "master" for s in out["steps"] if s["notebook"] == "inspect")
    assert rc == 1 and out["verdict"].startswith("production would fail at enable-aof: the target is a replica")
    assert {"directive": "replicaof", "production": f"127.0.0.1 {master.port}", "sandbox": "no one"} \
        in out["rehearsal"]["overrides"]
    # The master never served another replica: same sync counters, still one replica (production).
    assert {k: master.client().info("stats")[k] for k in fields} == before
    assert master.client().info("replication")["connected_slaves"] == 1
    assert prod.client().info("replication")["master_link_status"] == "up"


def test_password_protected_production_leaves_no_secret_in_evidence(start_production, tmp_path: Path) -> None:
    secret = "Rh-9q-not-in-evidence-41"
    prod = start_production(binary_or_skip("redis-7"), (r"^# requirepass foobared$", f"requirepass {secret}"),
                            password=secret)
    before = snapshot(prod)
    archive = tmp_path / "archive"
    params = params_file(tmp_path, prod, password_env="PROD_REDIS_PASSWORD")

    rc, out, stdout, err = rehearse_json(tmp_path, "-f", str(params), "--with-data", "--keep",
                                         "--archive", str(archive), env={"PROD_REDIS_PASSWORD": secret})

    assert rc == 0, err
    assert out["verdict"] == "production would pass"
    assert out["rehearsal"]["keys_loaded"] == before["dbsize"]
    persist = next(s for s in out["steps"] if s["notebook"] == "persist-config")
    assert persist["summary"]["checks"]["file_boots"]["status"] == "pass"  # a copy booted with the password
    files = [p for p in archive.rglob("*") if p.is_file()]
    # An executed notebook and its HTML for each of the six steps of `all`, and the change's report (the index files
    # besides): the secret is in none of them.
    assert len([p for p in files if p.suffix in (".ipynb", ".html") and p.parent.name != "reports"]) == 12
    assert [p.name for p in files if p.parent.name == "reports"] == [f"{out['change_id']}.html"]
    assert [p for p in files if secret in p.read_text(errors="replace")] == []
    assert secret not in stdout and secret not in err
    # The kept sandbox holds the secret (so the checks above could fail), readable by this user only.
    kept = Path(out["rehearsal"]["sandbox_dir"])
    try:
        assert secret in (kept / "redis.conf").read_text()
        assert stat.S_IMODE(kept.stat().st_mode) == 0o700
        assert stat.S_IMODE((kept / "redis.conf").stat().st_mode) == 0o600
    finally:
        shutil.rmtree(kept)
    assert snapshot(prod) == before


def test_sockets_acl_file_includes_and_cluster_state_move_into_the_sandbox(default_binary: Path, make_sandbox,
                                                                          tmp_path: Path, clean_env) -> None:
    conf_dir = tmp_path / "etc"
    (conf_dir / "conf.d").mkdir(parents=True)
    (conf_dir / "conf.d" / "tuning.conf").write_text("maxmemory-policy allkeys-lru\n")
    (conf_dir / "users.acl").write_text("user default on nopass ~* &* +@all\n")
    sock = tmp_path / "prod.sock"
    text = (f"include {conf_dir}/conf.d/*.conf\nunixsocket {sock}\naclfile {conf_dir}/users.acl\n"
            "cluster-enabled yes\nappendonly no\nsave 3600 1\n")
    prod = make_sandbox(default_binary, config=text)
    nodes = prod.data_dir / "nodes.conf"
    before = {p: sha(p) for p in (nodes, conf_dir / "users.acl")}
    conn = Connection(ConnectionSpec(prod.url, password_env=""), str(prod.config_path), "auto", False)
    with rehearsal_sandbox(observe(conn)) as staged:
        root, c = staged.sandbox.root, staged.sandbox.client()
        seen = c.config_get("*")
        assert Path(seen["unixsocket"]).parent == root and Path(seen["aclfile"]).parent == root
        # Relative, so a copy of this file started with another dir (the boot check) takes its own.
        assert seen["cluster-config-file"] == "nodes.conf" and (root / "data" / "nodes.conf").is_file()
        assert seen["maxmemory-policy"] == "allkeys-lru"  # the included file, read from its private copy
        (copy,) = (root / "include").iterdir()
        assert stat.S_IMODE(copy.stat().st_mode) == 0o600
        assert c.set("k", "v") and c.get("k") == "v"  # the lone cluster node serves every slot
        assert c.info("replication")["role"] == "master"
    assert not root.exists()
    assert {p: sha(p) for p in before} == before and sock.exists()
    assert prod.client().execute_command("CLUSTER", "INFO").count("cluster_slots_assigned:0") == 1


@pytest.mark.parametrize("label, same, match", [
    ("redis-7", "version", "exact"),
    ("redis-7", "major.minor", "major.minor"),
    ("valkey-9", "version", "exact"),
    ("redis-6", "version", "exact"),
])
def test_the_binary_matches_the_targets_version(label: str, same: str, match: str) -> None:
    want = binary_or_skip(label)
    found = binary_version(want)
    assert found is not None
    version = found.version if same == "version" else ".".join([*found.version.split(".")[:2], "999"])
    ident = Identity(found.server, version, "standalone", "master", "", "", 0, 0, 0)
    choice = choose_binary(ident, [b for b in BINARIES.values() if b != want] + [want])
    assert choice.binary.path == want and choice.match == match


def test_an_unknown_version_falls_back_to_the_default_and_says_so(default_binary: Path) -> None:
    ident = Identity("redis", "5.0.14", "standalone", "master", "", "", 0, 0, 0)
    choice = choose_binary(ident, list(BINARIES.values()))
    default = binary_version(find_server_binary())
    assert default is not None and choice.match == "none"
    assert choice.binary.path == find_server_binary()
    assert _version_caveat(ident, choice) == (
        f"no Redis 5.0.14 binary here: rehearsed on {default.label}, results may differ (set RUNBOOK_REDIS_SERVER "
        "to a matching redis-server)")


def _step(name: str, status: str, code: int, before_change: bool = False, **summary: object) -> StepResult:
    return StepResult(name, "sandbox", Status(status), ExitCode(code),
                      StepSummary.from_json({"verdict": status, **summary}, name), None, None, {}, before_change)


@pytest.mark.parametrize("steps, text, code", [
    ([_step("inspect", "fail", 1, True), _step("enable-aof", "pass", 0), _step("inspect", "pass", 0)],
     "production would pass", 0),
    ([_step("inspect", "warn", 0, True), _step("enable-aof", "error", 1, error="ChangeFailed: rewrite failed"),
      _step("inspect", "skipped", 0)], "production would fail at enable-aof: ChangeFailed: rewrite failed", 1),
    ([_step("inspect", "pass", 0, True), _step("persist-config", "blocked", 3, error="Blocked: no rights")],
     "production would be blocked at persist-config: Blocked: no rights", 3),
    ([_step("inspect", "pass", 0, True), _step("test-persistence", "fail", 1,
                                               checks={"bgsave": {"status": "fail", "observed": "MISCONF"}})],
     "production would fail at test-persistence: bgsave: MISCONF", 1),
    # The last inspection is not the picture before the change: its failure counts.
    ([_step("inspect", "fail", 1, True), _step("enable-aof", "pass", 0),
      _step("inspect", "fail", 1, checks={"drift": {"status": "fail", "observed": "appendonly"}})],
     "production would fail at inspect: drift: appendonly", 1),
])
def test_verdict(steps: list[StepResult], text: str, code: int) -> None:
    assert verdict(RunResult("c", None, steps)) == (text, code)  # type: ignore[arg-type]


def test_verdict_adds_what_the_sandbox_cannot_show() -> None:
    passed = RunResult("c", None, [_step("inspect", "pass", 0, True), _step("enable-aof", "pass", 0)])  # type: ignore[arg-type]
    assert verdict(passed, [("persist-config", 3, "no rights")]) == (
        "production would be blocked at persist-config: no rights", 3)


def test_room_for_the_copy(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal: 4000000 kB\nMemAvailable: 1000 kB\n")
    with pytest.raises(ParameterError, match="OOM killer"):
        check_room(1_000_000, [], tmp_path, meminfo)
    meminfo.write_text("MemAvailable: 4000000 kB\n")
    check_room(1_000_000, [], tmp_path, meminfo)


def test_a_cluster_node_rehearses_end_to_end(start_production, tmp_path: Path) -> None:
    prod = start_production(binary_or_skip("redis-7"), (r"^# cluster-enabled yes$", "cluster-enabled yes"), keys=0)
    assert prod.client().info("cluster")["cluster_enabled"] == 1
    before = snapshot(prod)

    rc, out, _, err = rehearse_json(tmp_path, "-f", str(params_file(tmp_path, prod)), "--archive", str(tmp_path / "a"))

    steps = {s["notebook"]: s for s in out["steps"]}
    assert steps["enable-aof"]["exit_code"] == 0, err
    assert steps["persist-config"]["exit_code"] == 0
    assert steps["persist-config"]["summary"]["checks"]["file_boots"]["status"] == "pass"  # its own nodes.conf
    assert {"directive": "cluster-config-file", "production": "", "sandbox": "nodes.conf"} \
        in out["rehearsal"]["overrides"]
    # test-persistence's canaries share one hash tag, in a slot the node serves.
    assert steps["test-persistence"]["summary"]["checks"]["canaries_removed"]["status"] == "pass"
    assert rc == 0 and out["verdict"] == "production would pass", err
    assert snapshot(prod) == before
    assert os.listdir(tmp_path / "tmpdir") == []


@pytest.mark.skipif(not has_redis_user, reason=needs_redis_user_reason)
def test_a_target_whose_bgsave_fails_would_fail_at_enable_aof(default_binary: Path, make_sandbox,
                                                               tmp_path: Path) -> None:
    prod = make_sandbox(default_binary, run_as="redis")
    c = prod.client()
    c.set("k", "v")
    os.chown(prod.data_dir, 0, 0)  # the server can no longer write its dir: its BGSAVE fails
    prod.data_dir.chmod(0o755)
    c.bgsave()
    deadline = time.monotonic() + 20
    while (info := c.info("persistence"))["rdb_bgsave_in_progress"] or info["rdb_last_bgsave_status"] != "err":
        assert time.monotonic() < deadline, info
        time.sleep(0.05)
    before = (c.config_get("*"), tree(prod.data_dir))
    c.config_resetstat()
    params = tmp_path / "params.yaml"
    params.write_text(f"target: {prod.url}\n")

    rc, out, _, err = rehearse_json(tmp_path, "-f", str(params), "--archive", str(tmp_path / "a"))

    assert out["run_exit_code"] == 0, err  # the sandbox's own BGSAVE works: only the preflight on the target shows it
    assert rc == 1
    assert out["verdict"].startswith("production would fail at enable-aof: rdb_last_bgsave_status:err "
                                     "(a fork-and-write")
    assert commands_seen(c) <= READ_ONLY, commands_seen(c) - READ_ONLY
    assert (c.config_get("*"), tree(prod.data_dir)) == before


@pytest.mark.parametrize("where", ["/proc/forbidden-dir", "{tmp}/a-file/archive"])
def test_an_archive_that_takes_no_files_exits_2_before_the_target_is_read(default_binary: Path, make_sandbox,
                                                                          tmp_path: Path, where: str) -> None:
    prod = make_sandbox(default_binary)
    (tmp_path / "a-file").write_text("")
    c = prod.client()
    c.config_resetstat()
    params = tmp_path / "params.yaml"
    params.write_text(f"target: {prod.url}\n")

    rc, _, stdout, err = rehearse_json(tmp_path, "-f", str(params), "--archive", where.format(tmp=tmp_path))

    assert rc == 2, err
    assert f"evidence archive {where.format(tmp=tmp_path)} does not take files" in err and stdout == ""
    assert commands_seen(c) == set()  # not even PING
    assert os.listdir(tmp_path / "tmpdir") == []


@pytest.mark.parametrize("line, leak", [
    ("", ""),
    ("syslog-enabled yes\n", "syslog-enabled yes"),
    ("unixsocket {tmp}/outside.sock\n", "unixsocket {tmp}/outside.sock"),
    ("aclfile {tmp}/outside.acl\n", "aclfile {tmp}/outside.acl"),
    ("cluster-enabled yes\ncluster-config-file ../../nodes-outside.conf\n", "cluster-config-file ../../nodes-outside"),
])
def test_the_isolation_check_names_what_reaches_outside_the_sandbox(default_binary: Path, make_sandbox,
                                                                    tmp_path: Path, line: str, leak: str) -> None:
    (tmp_path / "outside.acl").write_text("user default on nopass ~* &* +@all\n")
    sb = make_sandbox(default_binary, config='save ""\n' + line.format(tmp=tmp_path))
    if not leak:
        _refuse_unless_isolated(sb.client(), sb, "CONFIG")  # the plain sandbox: everything inside its root
        return
    with pytest.raises(PreconditionFailed, match=re.escape(leak.format(tmp=tmp_path))):
        _refuse_unless_isolated(sb.client(), sb, "CONFIG")


def test_credentials_changed_at_runtime_and_never_saved_are_named(start_production, tmp_path: Path) -> None:
    in_file, at_runtime = "in-the-file-Pw-1", "at-runtime-Pw-2"
    prod = start_production(binary_or_skip("redis-7"), (r"^# requirepass foobared$", f"requirepass {in_file}"),
                            password=in_file, keys=0, drift=False)
    prod.client().config_set("requirepass", at_runtime)
    prod.password = at_runtime
    params = params_file(tmp_path, prod, password_env="PROD_REDIS_PASSWORD")

    rc, _, stdout, err = rehearse_json(tmp_path, "-f", str(params), "--archive", str(tmp_path / "a"),
                                       env={"PROD_REDIS_PASSWORD": at_runtime})

    assert rc == 1, err
    assert "refused the credentials" in err and "differ from the running server's" in err
    assert "would lock its clients out" in err and "CONFIG REWRITE" in err
    assert "Traceback" not in err and stdout == ""
    assert at_runtime not in err and in_file not in err
    assert os.listdir(tmp_path / "tmpdir") == []


def test_a_relative_aclfile_comes_from_the_final_dir_and_min_replicas_is_lifted(default_binary: Path, make_sandbox,
                                                                                tmp_path: Path, clean_env) -> None:
    root = tmp_path / "sb0"  # make_sandbox's first dir; its config ends with `dir <root>/data`
    (root / "data").mkdir(parents=True)
    (root / "users.acl").write_text("user default on nopass ~* &* +@all\nuser beside-the-file on nopass +@all\n")
    (root / "data" / "users.acl").write_text("user default on nopass ~* &* +@all\nuser in-the-dir on nopass +@all\n")
    prod = make_sandbox(default_binary, config='aclfile users.acl\nmin-replicas-to-write 1\nsave ""\n')
    assert prod.client().acl_users() == ["default", "in-the-dir"]  # where Redis itself read it from
    conn = Connection(ConnectionSpec(prod.url, password_env=""), str(prod.config_path), "auto", False)

    with rehearsal_sandbox(observe(conn)) as staged:
        c = staged.sandbox.client()
        assert c.acl_users() == ["default", "in-the-dir"]
        assert c.set("k", "v")  # with min-replicas-to-write 1 the lone master would answer NOREPLICAS
        r = staged.rehearsal.record()

    assert {"directive": "min-replicas-to-write", "production": "1", "sandbox": "0"} in r["overrides"]
    assert any(c.startswith("the file sets min-replicas-to-write 1") for c in r["caveats"])


@pytest.mark.parametrize("keep", [True, False])
def test_a_sandbox_that_does_not_start_says_why(default_binary: Path, make_sandbox, tmp_path: Path,
                                                keep: bool) -> None:
    prod = make_sandbox(default_binary)
    conf = tmp_path / "with-module.conf"  # the file as the target runs it: with a module this binary lacks
    conf.write_text(prod.config_path.read_text() + "loadmodule /nonexistent/redisearch.so\n")
    params = tmp_path / "params.yaml"
    params.write_text(f"target: {prod.url}\nconfig_file: {conf}\n")

    rc, _, stdout, err = rehearse_json(tmp_path, "-f", str(params), *(["--keep"] if keep else []),
                                       "--archive", str(tmp_path / "a"))

    assert rc == 1, err
    found = binary_version(default_binary)
    assert found is not None
    assert f"the rehearsal sandbox built from {conf} did not start on {found.label} (exact match" in err
    assert "/nonexistent/redisearch.so" in err  # the server's own words, from its log
    assert "Set RUNBOOK_REDIS_SERVER" in err and "Traceback" not in err and stdout == ""
    left = list((tmp_path / "tmpdir").iterdir())
    if keep:
        assert len(left) == 1 and f"its dir is kept: {left[0]}" in err
        assert (left[0] / "redis.conf").is_file()
    else:
        assert left == [] and "use --keep" in err
