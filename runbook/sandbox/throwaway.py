"""Throwaway real servers on free loopback ports, in temp dirs, from real config files.

Used by the notebooks when `target` is `sandbox`, by the runner, and by the tests.
"""

from __future__ import annotations

import ctypes
import logging
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Sequence

import redis

from runbook.errors import NoReply, PreconditionFailed, WaitTimeout
from runbook.sandbox.binaries import find_server_binary
from runbook.server.configfile import mask_secrets
from runbook.server.poll import Deadline
from runbook.server.target import Target

log = logging.getLogger(__name__)

#: The production settings this runbook was written for: RDB on, AOF off and only a commented fsync line.
SEED_CONFIG = """\
# Sandbox mirroring a production server: Debian's /etc/redis/redis.conf, trimmed.
bind 127.0.0.1
protected-mode yes
daemonize no

################################ SNAPSHOTTING  ################################
# One rule per line: Redis before 7.0 ignores a save line with several rules.
save 3600 1
save 300 100
save 60 10000
stop-writes-on-bgsave-error yes
rdbcompression yes
dbfilename dump.rdb

############################## APPEND ONLY MODE ###############################
appendonly no
appendfilename "appendonly.aof"

# appendfsync always
# appendfsync everysec
# appendfsync no

no-appendfsync-on-rewrite no
auto-aof-rewrite-percentage 100
auto-aof-rewrite-min-size 64mb
"""


#: Ports a sandbox may take: below the ephemeral range, and low enough that port + 10000 (a
#: cluster node's bus port) is a valid port too: Redis refuses cluster mode above 55535.
PORT_RANGE = (20000, 30000)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now, nor on port + 10000 (cluster bus)."""
    for _ in range(200):
        port = random.randrange(*PORT_RANGE)
        if _bindable(port) and _bindable(port + 10000):
            return port
    raise PreconditionFailed(f"no free port pair in {PORT_RANGE[0]}-{PORT_RANGE[1]} (+10000) on 127.0.0.1")


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@dataclass(frozen=True)
class SandboxTls:
    """A sandbox that speaks TLS only (`port 0`, its port as `tls-port`): the server's certificate and key, the
    CA that signs its clients (`tls-ca-cert-file`), and the client certificate the sandbox's own client shows."""

    ca_file: Path
    cert_file: Path
    key_file: Path
    client_cert_file: Path | None = None
    client_key_file: Path | None = None

    def overrides(self, port: int) -> list[tuple[str, str]]:
        return [("port", "0"), ("tls-port", str(port)), ("tls-cert-file", str(self.cert_file)),
                ("tls-key-file", str(self.key_file)), ("tls-ca-cert-file", str(self.ca_file))]

    def client_options(self) -> dict[str, object]:
        opts: dict[str, object] = {"ssl": True, "ssl_ca_certs": str(self.ca_file)}
        if self.client_cert_file:
            opts.update(ssl_certfile=str(self.client_cert_file), ssl_keyfile=str(self.client_key_file or ""))
        return opts


@dataclass
class Sandbox:
    """A real server in a temp dir: start, stop, restart, kill -9 and clean up.

    `config` is the text of its redis.conf; port, bind, dir, pidfile and logfile are
    appended so they always win. With `config=None` the server starts with no config
    file at all (everything on the command line), like some container images.
    """

    config: str | None = SEED_CONFIG
    binary: Path | None = None
    root: Path | None = None
    password: str | None = None
    extra_args: tuple[str, ...] = ()
    run_as: str | None = None  # a system user to run the server as (needs root and setpriv)
    tls: SandboxTls | None = None  # TLS only, on its port (the server must be built with TLS)

    def __post_init__(self) -> None:
        self.binary = Path(self.binary) if self.binary else find_server_binary()
        self._own_root = self.root is None
        self.root = Path(self.root) if self.root else Path(tempfile.mkdtemp(prefix="runbook-sandbox-"))
        self.data_dir = self.root / "data"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.config_path: Path | None = self.root / "redis.conf" if self.config is not None else None
        self.log_path = self.root / "redis.log"
        if self.run_as:
            self._hand_over(self.run_as)
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    # -- lifecycle -------------------------------------------------------------------
    def start(self, timeout_s: float = 20.0, *, what: str = "server start") -> "Sandbox":
        """Write the config (first start only), start the server and wait until it answers PING (a wait named
        `what` on a watching terminal)."""
        for attempt in range(3):
            self._launch()
            try:
                self._wait_ready(timeout_s, what)
                return self
            except _PortTaken:
                self.port = 0
                log.info("port taken, retrying (attempt %d)", attempt + 1)
        raise PreconditionFailed(f"could not start {self.binary} on a free port; see {self.log_path}")

    def _launch(self, taken: set[int] | None = None) -> None:
        """Write the config (first start, or after a taken port) and start the server process, without waiting.
        `taken`: ports other servers launched just now will bind (not free yet, but not to be picked)."""
        if not self.port:
            self.port = free_port()
            while taken is not None and self.port in taken:
                self.port = free_port()
            if self.config_path is not None:
                self.config_path.write_text(self._config_text())
        with (self.root / "stdout.log").open("ab") as out:
            self._proc = subprocess.Popen(
                self._command(),
                cwd=self.root,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )

    def stop(self, timeout_s: float = 20.0) -> None:
        """SHUTDOWN as configured (saves when save rules exist), then reap the process."""
        if not self.running:
            return
        try:
            self.client().shutdown(nosave=False)
        except redis.ConnectionError:
            pass  # shutdown closes the connection: that is success
        except redis.ResponseError as err:
            raise PreconditionFailed(f"sandbox on port {self.port} refused SHUTDOWN: {err}; "
                                     f"see {self.log_path}") from err
        assert self._proc is not None
        try:
            self._proc.wait(timeout_s)
        except subprocess.TimeoutExpired as err:
            raise WaitTimeout(f"sandbox on port {self.port} still running {timeout_s}s after SHUTDOWN") from err

    def restart(self, timeout_s: float = 60.0) -> "Sandbox":
        """Stop, then start again from the same config file, port and data dir."""
        self.stop()
        return self.start(timeout_s)

    def kill(self) -> None:
        """kill -9: a process crash, nothing flushed beyond what the server already wrote."""
        if self._proc and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGKILL)
            self._proc.wait(10)
        # A server restarted by another process (a notebook of the run) is found by its pidfile.
        pid = _pid_from(self.pidfile)
        if pid and _is_server_of(pid, self.root):
            os.kill(pid, signal.SIGKILL)

    @property
    def pidfile(self) -> Path:
        assert self.root is not None
        return (self.data_dir if self.run_as else self.root) / "redis.pid"

    def cleanup(self) -> None:
        """Kill the server if it still runs and delete the temp dir we created."""
        self.kill()
        if self._own_root and self.root and self.root.exists():
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "Sandbox":
        return self.start() if not self.running else self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.cleanup()

    # -- access ----------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def url(self) -> str:
        return f"{'rediss' if self.tls else 'redis'}://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def client(self, **kwargs: object) -> redis.Redis:
        """A client for this sandbox (decode_responses on)."""
        opts: dict[str, object] = {"decode_responses": True, "socket_timeout": 30, "password": self.password}
        opts.update(self.tls.client_options() if self.tls else {})
        opts.update(kwargs)
        return redis.Redis(host="127.0.0.1", port=self.port, **opts)  # type: ignore[arg-type]

    def log_text(self) -> str:
        """The server's log, and what it printed before it could open the log (config errors)."""
        parts = [p.read_text(errors="replace") for p in (self.root / "stdout.log", self.log_path) if p.exists()]
        return "\n".join(x for x in parts if x.strip())

    # -- internals -------------------------------------------------------------------
    def _overrides(self) -> list[tuple[str, str]]:
        pairs = [
            *(self.tls.overrides(self.port) if self.tls else [("port", str(self.port))]),
            ("bind", "127.0.0.1"),
            ("daemonize", "no"),
            ("dir", str(self.data_dir)),
            ("pidfile", str(self.pidfile)),
            ("logfile", str(self.log_path)),
        ]
        if self.password:
            pairs.append(("requirepass", self.password))
        return pairs

    def _config_text(self) -> str:
        assert self.config is not None
        lines = [self.config.rstrip("\n"), "", "# Sandbox overrides (runbook.sandbox.throwaway)"]
        lines += [f'{k} "{v}"' for k, v in self._overrides()]
        return "\n".join(lines) + "\n"

    def _hand_over(self, user: str) -> None:
        """Let `user` reach the root dir and own the data dir; the root dir itself stays root's."""
        pw = pwd.getpwnam(user)
        assert self.root is not None
        self.root.chmod(0o755)
        os.chown(self.data_dir, pw.pw_uid, pw.pw_gid)
        self.log_path.touch()
        os.chown(self.log_path, pw.pw_uid, pw.pw_gid)

    def _command(self) -> list[str]:
        cmd = [str(self.binary)]
        if self.run_as:
            cmd = ["setpriv", f"--reuid={self.run_as}", f"--regid={self.run_as}", "--clear-groups", *cmd]
        if self.config_path is not None:
            cmd.append(str(self.config_path))
        else:
            for k, v in self._overrides():
                cmd += [f"--{k}", v]
        return cmd + list(self.extra_args)

    def _wait_ready(self, timeout_s: float, what: str = "server start") -> None:
        """Until the server answers PING; each PING waits no longer than the time left."""
        deadline = Deadline(timeout_s, what)
        client = self.client(socket_timeout=2, socket_connect_timeout=1)
        while True:
            assert self._proc is not None
            if self._proc.poll() is not None:
                text = self.log_text()
                if "Address already in use" in text[-2000:]:
                    raise _PortTaken()
                raise PreconditionFailed(
                    f"{self.binary} exited with code {self._proc.returncode} while starting; "
                    f"last log lines:\n{mask_secrets(_tail(text))}"
                )
            try:
                deadline.call(client, lambda c: c.ping(), "PING")
                return
            except NoReply:
                pass  # its socket timeout was the time left: the deadline has come
            except redis.BusyLoadingError:
                deadline.saw("LOADING")
            except redis.AuthenticationError:
                return  # it answered: up, and its config file wants a password we were not given
            except redis.ConnectionError as err:
                deadline.saw(str(err))
            if deadline.expired:
                raise deadline.missed(f"sandbox on port {self.port} did not answer PING")
            deadline.sleep(0.02)


def start_many(sandboxes: Sequence[Sandbox], timeout_s: float = 20.0) -> list[Sandbox]:
    """Start every sandbox, the servers booting at once: each process is launched from this thread (never from a
    pool: a sandbox gets SIGKILL when the thread that started it exits, PR_SET_PDEATHSIG being per thread), then
    each is waited for until it answers PING. One whose port was taken meanwhile is started again on another."""
    taken: set[int] = set()
    for sb in sandboxes:
        sb._launch(taken)
        taken.add(sb.port)
    for sb in sandboxes:
        try:
            sb._wait_ready(timeout_s)
        except _PortTaken:
            sb.port = 0
            sb.start(timeout_s)
    return list(sandboxes)


def _die_with_parent() -> None:
    """In the child before exec: get SIGKILL when the process that started us dies (Linux).

    A sandbox must not outlive the kernel or test run that owns it, even when that one is
    killed without running its atexit handlers.
    """
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _alive(pid: int) -> bool:
    """True while `pid` runs (a zombie waiting for its parent to reap it has exited)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _pid_from(pidfile: Path) -> int | None:
    try:
        return int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None


def _is_server_of(pid: int, root: Path | None) -> bool:
    """True when `pid` is alive and is a server working in `root` (never kill a recycled pid)."""
    try:
        cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return False
    return root is not None and (cwd == root or root in cwd.parents)


def restart_sandbox(target: Target) -> None:
    """Restart the sandbox behind `target`: our own process, or the runner's (found by its dir)."""
    if isinstance(target.owner, Sandbox):
        target.owner.restart()
        return
    root = Path(target.sandbox_dir)
    info = target.client.info("server")
    binary, pid = Path(info["executable"]), int(info["process_id"])
    try:
        target.client.shutdown(nosave=False)
    except redis.ConnectionError:
        pass
    deadline = time.monotonic() + 30
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    # Detached on purpose: it belongs to the runner, which kills it by pidfile at the end of the run.
    with (root / "stdout.log").open("ab") as out:
        subprocess.Popen([str(binary), str(root / "redis.conf")], cwd=root, stdout=out, stderr=subprocess.STDOUT,
                         start_new_session=True)


class _PortTaken(Exception):
    pass


def _tail(text: str, n: int = 8) -> str:
    return "\n".join(text.splitlines()[-n:])
