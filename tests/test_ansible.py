"""The Ansible role (ansible/): four hosts on this machine, each with its own Redis 7, config file and data dir.

The inventory's hosts are `ansible_connection=local`: the play installs the runbook into a venv, writes each host's
params file, rehearses, then runs `runbook run all -p apply true` with every host's evidence in one S3 archive (moto's
server on loopback). Two hosts succeed; `replica-1` (a replica, no allow_replica) fails with exit 1 and `blocked-1`
(its config_file is a copy, not the file the server runs with, and method rewrite) is blocked with exit 3; good-2
and replica-1 skip the rehearsal (runbook_rehearse false, a host var), to keep the file near its budget.
The three plays run in order, on the same servers: --check (nothing changes), serial 1 with max_fail_percentage 0
(the play stops at the first host, which fails), then the change itself.

The venv: one for the four hosts (they are one machine: runbook_venv_shared), made by a venv command that also
reaches this checkout's .venv packages (a .pth: no dependency is downloaded); the play then pip installs --no-deps a
copy of this checkout's sources (pyproject.toml, README.md, runbook/, notebooks/) into it (pip's isolated build gets
setuptools as for any source install).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest
import redis
import yaml
from conftest import binary_or_skip
from helpers import REPO, runbook_cli
from test_remote_archive import aws_env, endpoint, new_bucket  # noqa: F401 (endpoint: moto's S3 server fixture)

from runbook.sandbox.throwaway import _die_with_parent, free_port

PLAYBOOK = REPO / "ansible" / "playbook.yml"
ROLE = REPO / "ansible" / "roles" / "redis_runbook"
#: The four hosts in one batch, every failure tolerated (the defaults are serial 1, max_fail_percentage 0).
ALL_AT_ONCE = ("-e", "runbook_serial=100%", "-e", "runbook_max_fail_percentage=100")
HOSTS = ("replica-1", "good-1", "good-2", "blocked-1")  # inventory order: serial 1 starts with replica-1


def _ansible_or_skip() -> Path:
    if importlib.util.find_spec("ansible") is None:
        reason = "ansible-core is not installed (pip install -e '.[ansible]'; .ci/run installs it)"
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the Ansible tests: {reason}")
        pytest.skip(reason)
    return Path(sys.executable).parent / "ansible-playbook"


@dataclass
class Host:
    name: str
    port: int
    conf: Path
    workdir: Path
    proc: subprocess.Popen[bytes]
    original: bytes = b""

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, decode_responses=True, socket_timeout=10)

    def aof(self) -> str:
        return self.client().config_get("appendonly")["appendonly"]


def _start(binary: Path, root: Path, name: str, *lines: str) -> Host:
    port = free_port()
    data = root / name / "data"
    data.mkdir(parents=True)
    (root / name / "work").mkdir()
    conf = root / name / "redis.conf"
    conf.write_text("\n".join([f"port {port}", "bind 127.0.0.1", "daemonize no", f"dir {data}",
                               f"logfile {root / name / 'redis.log'}", "save 3600 1", "appendonly no", *lines]) + "\n")
    proc = subprocess.Popen([str(binary), str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                            start_new_session=True, preexec_fn=_die_with_parent)
    return Host(name, port, conf, root / name / "work", proc, conf.read_bytes())


def _wait(host: Host) -> None:
    deadline = time.monotonic() + 20
    while True:
        try:
            host.client().ping()
            return
        except redis.ConnectionError:
            assert host.proc.poll() is None and time.monotonic() < deadline, f"{host.name} did not start"
            time.sleep(0.05)


VENV_COMMAND = '''#!{python}
"""The test's venv command: a venv (without pip of its own) that reaches {site} through a .pth
and {prefix}/share/jupyter through a symlink."""
import subprocess, sys
from pathlib import Path

if sys.argv[-1] == "--help":  # the pip module asks which options the command takes
    sys.exit(subprocess.run([sys.executable, "-m", "venv", "--help"]).returncode)
env = Path(sys.argv[-1])
subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
site = next(env.glob("lib/python*/site-packages"))
(site / "runbook-test-deps.pth").write_text("{site}\\n")
(env / "share").mkdir(exist_ok=True)  # nbconvert's templates are data files of that venv: sys.prefix/share/jupyter
(env / "share" / "jupyter").symlink_to("{prefix}/share/jupyter")
pip = env / "bin" / "pip"
pip.write_text("#!" + str(env / "bin" / "python") + "\\nimport sys\\nfrom pip._internal.cli.main import main\\n"
               "sys.exit(main())\\n")
pip.chmod(0o755)
'''


@dataclass
class Fleet:
    hosts: dict[str, Host]
    inventory: Path
    env: dict[str, str]
    bucket: str
    venv: Path
    root: Path

    def archive(self, play: str) -> str:
        return f"s3://{self.bucket}/{play}"

    def play(self, play: str, *args: str) -> Play:
        t0 = time.monotonic()
        proc = subprocess.run([str(_ansible_or_skip()), "-i", str(self.inventory), str(PLAYBOOK),
                               "-e", f"runbook_archive={self.archive(play)}", *args],
                              capture_output=True, text=True, env=self.env, timeout=300, cwd=self.root)
        (self.root / f"{play}.out").write_text(proc.stdout + proc.stderr)  # to read after a failure
        return Play(proc, round(time.monotonic() - t0, 1), self.archive(play))


@dataclass
class Play:
    proc: subprocess.CompletedProcess[str]
    seconds: float
    archive: str

    @property
    def out(self) -> str:
        return self.proc.stdout + self.proc.stderr

    def recap(self) -> dict[str, dict[str, int]]:
        """PLAY RECAP's counts by host."""
        found = {}
        for m in re.finditer(r"^(\S+)\s+: ((?:\w+=\d+\s*)+)$", self.proc.stdout.split("PLAY RECAP", 1)[-1], re.M):
            found[m.group(1)] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(2))}
        return found

    def fatal(self, host: str) -> str:
        """The message of the task that failed `host`."""
        lines = [ln for ln in self.proc.stdout.splitlines() if ln.startswith(f"fatal: [{host}]")]
        assert len(lines) == 1, self.out
        return json.loads(lines[0].split("=> ", 1)[1])["msg"]


@pytest.fixture(scope="module")
def fleet(endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:  # noqa: F811
    _ansible_or_skip()
    binary = binary_or_skip("redis-7")
    root = tmp_path_factory.mktemp("ansible")
    primary = _start(binary, root, "primary")  # replica-1's primary: not in the inventory
    started = [primary]
    try:
        _wait(primary)
        hosts = {"replica-1": _start(binary, root, "replica-1", f"replicaof 127.0.0.1 {primary.port}"),
                 "good-1": _start(binary, root, "good-1"), "good-2": _start(binary, root, "good-2"),
                 "blocked-1": _start(binary, root, "blocked-1")}
        started += hosts.values()
        for host in hosts.values():
            _wait(host)
        copy = root / "blocked-1" / "copy.conf"  # a file that is not the one the server runs with
        shutil.copy(hosts["blocked-1"].conf, copy)

        source = root / "source"  # what a checkout on each host holds, copied from this one
        source.mkdir()
        for part in ("pyproject.toml", "README.md"):
            shutil.copy(REPO / part, source / part)
        for part in ("runbook", "notebooks"):
            shutil.copytree(REPO / part, source / part, ignore=shutil.ignore_patterns("__pycache__", ".ipynb_*"))
        venv_command = root / "venv-command"
        site = next(Path(sys.prefix).glob("lib/python*/site-packages"))
        venv_command.write_text(VENV_COMMAND.format(python=sys.executable, site=site, prefix=sys.prefix))
        venv_command.chmod(0o755)

        venv = root / "venv"
        inventory = {"redis": {
            "vars": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable,
                     "runbook_source": str(source), "runbook_venv": str(venv), "runbook_venv_shared": True,
                     "runbook_venv_command": f"{venv_command} -m venv", "runbook_pip_extra_args": "--no-deps",
                     "runbook_password_env": "REDIS_PASSWORD"},
            "hosts": {name: {"runbook_target": h.url, "runbook_config_file": str(h.conf),
                             "runbook_workdir": str(h.workdir)} for name, h in hosts.items()}}}
        inventory["redis"]["hosts"]["blocked-1"].update(runbook_config_file=str(copy),
                                                        runbook_params={"method": "rewrite"})
        for name in ("good-2", "replica-1"):  # a host var: two rehearsals less to wait for (each is a whole run)
            inventory["redis"]["hosts"][name]["runbook_rehearse"] = False
        path = root / "inventory.yml"
        path.write_text(yaml.safe_dump(inventory, sort_keys=False))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "ANSIBLE_", "RUNBOOK_"))
               and k != "REDIS_PASSWORD"}
        env.update(aws_env(endpoint), ANSIBLE_HOME=str(root / "ansible-home"), ANSIBLE_NOCOLOR="1",
                   ANSIBLE_PIPELINING="1", ANSIBLE_LOCAL_TEMP=str(root / "ansible-tmp"),
                   ANSIBLE_CONFIG=str(root / "no-ansible.cfg"),
                   PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
        yield Fleet(hosts, path, env, new_bucket(endpoint), venv, root)
    finally:
        for host in started:
            host.proc.kill()
            host.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def check_play(fleet: Fleet) -> Play:
    """`ansible-playbook --check`: every host's `runbook run all` plan only."""
    return fleet.play("check", "--check", *ALL_AT_ONCE)


@pytest.fixture(scope="module")
def serial_play(fleet: Fleet, check_play: Play) -> Play:
    """serial 1, max_fail_percentage 0, no rehearsal: replica-1 (first in the inventory) fails and the play stops."""
    return fleet.play("serial", "-e", json.dumps({"runbook_serial": 1, "runbook_max_fail_percentage": 0,
                                                   "runbook_rehearse": False}))


@pytest.fixture(scope="module")
def change_play(fleet: Fleet, serial_play: Play) -> Play:
    """The change: rehearse, then `run all -p apply true`, on the four hosts at once."""
    return fleet.play("change", *ALL_AT_ONCE)


def test_syntax_check() -> None:
    proc = subprocess.run([str(_ansible_or_skip()), "--syntax-check", "-i", "localhost,", str(PLAYBOOK)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ansible_lint() -> None:
    lint = Path(sys.executable).parent / "ansible-lint"
    if not lint.exists():
        pytest.skip("ansible-lint is not installed (pip install ansible-lint: it installs cleanly, 12 packages)")
    proc = subprocess.run([str(lint), "--offline", "--nocolor", str(PLAYBOOK), str(ROLE)], capture_output=True,
                          text=True, timeout=120, cwd=REPO / "ansible")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_check_mode_changes_nothing_and_reports_the_plan(fleet: Fleet, check_play: Play) -> None:
    recap = check_play.recap()
    assert set(recap) == set(HOSTS), check_play.out
    for name in ("good-1", "good-2"):
        assert recap[name]["failed"] == 0 and recap[name]["changed"] >= 1, check_play.out  # would change
    assert "would set appendonly:no->yes" in check_play.proc.stdout
    assert recap["replica-1"]["failed"] == 1 and recap["blocked-1"]["failed"] == 1
    assert "runbook run all (plan only) exited 1 (failed)" in check_play.fatal("replica-1")
    assert "runbook run all (plan only) exited 3 (blocked" in check_play.fatal("blocked-1")
    for host in fleet.hosts.values():
        assert host.aof() == "no", host.name
        assert host.conf.read_bytes() == host.original, host.name
    assert (fleet.venv / "bin" / "runbook").exists()  # installed in check mode too: the plan needs it


def test_serial_with_max_fail_0_stops_after_the_first_failing_host(fleet: Fleet, serial_play: Play) -> None:
    recap = serial_play.recap()
    assert list(recap) == ["replica-1"], serial_play.out
    assert recap["replica-1"]["failed"] == 1
    assert "runbook run all -p apply true exited 1 (failed)" in serial_play.fatal("replica-1")
    assert "enable-aof" in serial_play.fatal("replica-1")
    for name in ("good-1", "good-2", "blocked-1"):
        host = fleet.hosts[name]
        assert host.aof() == "no" and host.conf.read_bytes() == host.original, name
    listed = runbook_cli("archive", "list", "--archive", serial_play.archive, "--json", env=fleet.env)
    assert listed.returncode == 0, listed.stderr
    assert {r["target"] for r in json.loads(listed.stdout)} == {fleet.hosts["replica-1"].url}


def test_the_change_two_hosts_pass_one_fails_one_is_blocked(fleet: Fleet, check_play: Play, serial_play: Play,
                                                            change_play: Play) -> None:
    # The figures docs/ansible.md quotes (pytest -s shows them); not asserted on.
    print(f"\nansible-playbook, 4 hosts on this machine, Redis 7: --check {check_play.seconds} s (with the install), "
          f"serial 1 stopped at the first host {serial_play.seconds} s, the change {change_play.seconds} s")
    recap = change_play.recap()
    assert set(recap) == set(HOSTS), change_play.out
    assert change_play.proc.returncode == 2, change_play.out  # Ansible: a host failed
    for name in ("good-1", "good-2"):
        host = fleet.hosts[name]
        assert recap[name]["failed"] == 0 and recap[name]["changed"] >= 1, change_play.out
        assert host.aof() == "yes", name
        assert re.search(r"^appendonly yes$", host.conf.read_text(), re.M), name
    failed = change_play.fatal("replica-1")
    assert "runbook run all -p apply true exited 1 (failed)" in failed, failed
    assert "at enable-aof: PreconditionFailed: refusing to change the server: role: the target is a replica" in failed
    blocked = change_play.fatal("blocked-1")
    assert "runbook rehearse exited 3 (blocked: a person must act" in blocked, blocked
    assert "verdict:" not in blocked  # the sandbox run's own verdict (OK) is not the target's
    assert "would be blocked at persist-config: CONFIG REWRITE writes the server's own file" in blocked
    for name in ("replica-1", "blocked-1"):
        host = fleet.hosts[name]
        assert host.aof() == "no" and host.conf.read_bytes() == host.original, name
    params = yaml.safe_load((fleet.hosts["good-1"].workdir / "params" / "good-1.yaml").read_text())
    assert params == {"target": fleet.hosts["good-1"].url, "config_file": str(fleet.hosts["good-1"].conf),
                      "password_env": "REDIS_PASSWORD"}



def test_every_hosts_records_are_in_the_one_archive(fleet: Fleet, change_play: Play) -> None:
    import s3fs

    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": fleet.env["AWS_ENDPOINT_URL"]}, key="testing",
                           secret=fleet.env["AWS_SECRET_ACCESS_KEY"])
    stored = fs.find(change_play.archive.removeprefix("s3://"))
    assert any(p.endswith(".jsonl") for p in stored) and any(p.endswith(".ipynb") for p in stored)
    listed = runbook_cli("archive", "list", "--archive", change_play.archive, "--json", env=fleet.env)
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    url = {name: h.url for name, h in fleet.hosts.items()}
    rehearsed = {r["rehearsal"]["of"] for r in rows if r.get("rehearsal")}
    assert rehearsed == {url["good-1"], url["blocked-1"]}  # good-2 and replica-1: runbook_rehearse false
    ran = {r["target"] for r in rows if not r.get("rehearsal")}
    assert ran == {url["good-1"], url["good-2"], url["replica-1"]}  # blocked-1 stopped at its rehearsal
    verify = runbook_cli("archive", "verify", "--archive", change_play.archive, env=fleet.env)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "chain and files intact" in verify.stdout
