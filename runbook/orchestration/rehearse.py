"""Rehearse the whole change on a throwaway copy of a target, and say whether the target would pass.

`runbook rehearse -f params/<target>.yaml` reads the target like `runbook run` does, builds a
sandbox from a copy of the target's own config file (listeners, files, replication and cluster
state moved into the sandbox, so the copy cannot touch the real server), optionally loads a copy
of its data, puts the sandbox in the target's runtime persistence state, then runs `all` with
`apply` there. Towards the target it only sends PING, INFO, CONFIG GET and DBSIZE (enable-aof's
read-only preflight), and reads its files.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import redis
import yaml

from runbook.errors import ExitCode, NoReply, ParameterError, PreconditionFailed, WaitTimeout
from runbook.evidence.archive import Archive
from runbook.model import ConnectionSpec, Outcome, SettingChange, Status
from runbook.orchestration.fleet import normalize_targets
from runbook.orchestration.params import load_files
from runbook.orchestration.plan import effective, plan
from runbook.orchestration.runner import RunResult, run
from runbook.sandbox.binaries import BinaryChoice, for_server
from runbook.sandbox.handoff import SANDBOX_DIR_ENV, SANDBOX_URL_ENV
from runbook.sandbox.isolation import ISOLATED_FILES, Override, private_file, sandbox_config
from runbook.sandbox.throwaway import Sandbox
from runbook.server.aof import aof_on_disk, apply_runtime
from runbook.server.configfile import ConfigFile, mask_secrets, read_config
from runbook.server.poll import Deadline
from runbook.server.settings import PERSISTENCE_SETTINGS, config_get, normalize
from runbook.server.target import Identity, Target, connect, identify, redact_url, wait_loaded
from runbook.steps.enable_aof import Preflight
from runbook.steps.enable_aof import preflight as enable_preflight
from runbook.steps.persist_config import choose_method

log = logging.getLogger(__name__)

#: Runtime persistence settings copied from the target (dir is the sandbox's own; the file names
#: cannot change at runtime).
MIRRORED = tuple(k for k in PERSISTENCE_SETTINGS if k not in ("dir", "appendfilename", "appenddirname"))
#: Memory the sandbox may need per byte the target uses: the dataset, plus copy-on-write while it forks.
MEMORY_FACTOR = 1.5


@dataclass(frozen=True)
class Connection:
    """The real target as the parameter files name it (merged as `runbook run` merges them): how to
    reach it, its config file, and what the change there would use."""

    spec: ConnectionSpec
    config_file: str
    method: str
    allow_replica: bool

    @property
    def target(self) -> str:
        return self.spec.target

    @property
    def config_command(self) -> str:
        return self.spec.config_command


@dataclass(frozen=True)
class Production:
    """What rehearse read from the real target: identity, runtime settings and its config file."""

    connection: Connection
    target: Target = field(repr=False)
    identity: Identity
    runtime: dict[str, str]
    keys: int
    used_memory: int
    config_path: Path
    config: ConfigFile = field(repr=False)
    preflight: Preflight = field(repr=False)  # enable-aof's read-only preflight, run against the target


@dataclass(frozen=True)
class CopiedFile:
    role: str  # rdb, aof-manifest, aof-base, aof-incr, aof
    source: str
    size: int


@dataclass(frozen=True)
class Rehearsal:
    """How the sandbox was built: recorded in every index record of the rehearsal run."""

    production: str
    production_server: str
    config_file: str
    binary: str
    server: str
    version_match: str
    data_copied: bool
    copied: tuple[CopiedFile, ...]
    keys_loaded: int | None  # None without --with-data
    production_keys: int
    mirrored: dict[str, dict[str, str]]
    overrides: tuple[Override, ...]
    includes: tuple[str, ...]  # the target's included files, copied into the sandbox
    persist_method: str
    persist_method_reason: str
    caveats: tuple[str, ...]
    sandbox_dir: str
    prepare_s: float

    def record(self) -> dict[str, Any]:
        """The JSON-able form for the evidence (no secrets: values of secret directives never get here)."""
        fields = asdict(self)
        return {"of": fields.pop("production"), **fields}


@dataclass(frozen=True)
class Staged:
    """A started rehearsal sandbox and the parameters that point the run at it."""

    sandbox: Sandbox
    rehearsal: Rehearsal
    pairs: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class RehearsalResult:
    rehearsal: Rehearsal
    run: RunResult
    verdict: str
    exit_code: ExitCode
    run_s: float


# -- the target -------------------------------------------------------------------------------------


def connection_from(files: Sequence[str | Path], pairs: Sequence[tuple[str, str]] = ()) -> Connection:
    """The target's connection parameters, checked like `runbook run all` checks them (ParameterError)."""
    if not files:
        raise ParameterError("rehearse needs -f with the target's parameter file (for example params/local.yaml)")
    merged = load_files(files)
    if "targets" in merged or any(k == "targets" for k, _ in pairs):
        raise ParameterError(
            f"rehearse takes one target; {', '.join(map(str, files))} lists several (targets:). "
            "Use a parameter file with a single `target:`, or pass -p target URL (one of them)."
        )
    steps = plan(["all"], files, pairs)

    def value(key: str) -> Any:
        for step in steps:
            found = effective(step, key)
            if found is not None:
                return found
        return None

    conn = Connection(
        spec=ConnectionSpec.from_parameters({name: value(name) for name in ConnectionSpec.names()}),
        config_file=str(value("config_file") or ""), method=str(value("method") or "auto"),
        allow_replica=bool(value("allow_replica")),
    )
    if conn.target == "sandbox":
        raise ParameterError("the target is `sandbox`: rehearse copies a real server. Pass -f with the target's "
                             "parameter file (target: redis://host:port/db).")
    return conn


def observe(conn: Connection) -> Production:
    """Connect to the real target and read it: PING, INFO, CONFIG GET, DBSIZE and its config file, nothing else."""
    target = connect(conn.spec)
    ident = target.identify()
    runtime = target.runtime_settings()
    keys = keys_of(target.client)
    used_memory = int(target.client.info("memory").get("used_memory", 0))
    path_str = conn.config_file or ident.config_file
    if not path_str:
        raise ParameterError(f"{conn.target} runs without a config file (INFO server config_file is empty): there "
                             "is nothing to build the rehearsal from. Pass config_file with the file its service "
                             "would start it with.")
    if not conn.config_file and not target.local:
        raise ParameterError(f"{conn.target} is on another host: its config file {path_str} is not here. Pass "
                             "config_file with a local copy of it.")
    if conn.config_file and not Path(path_str).is_file():
        raise ParameterError(f"cannot rehearse {redact_url(conn.target)}: the config_file parameter names "
                             f"{path_str}, which does not exist here. Point config_file at the file the target "
                             f"runs with, or a local copy of it (INFO server config_file: "
                             f"{ident.config_file or 'empty'}).")
    try:
        config = read_config(path_str)
    except PreconditionFailed as err:
        raise ParameterError(f"cannot rehearse {redact_url(conn.target)}: {err}") from err
    # What the real enable-aof step would refuse on this target (a failing BGSAVE, no disk room,
    # a replica): the sandbox cannot show it, since it measures itself. Read-only.
    pre = enable_preflight(target, allow_replica=conn.allow_replica)
    return Production(conn, target, ident, runtime, keys, used_memory, Path(path_str), config, pre)


# -- the data ---------------------------------------------------------------------------------------


def _stat_source(path: Path) -> os.stat_result | None:
    """The file's stat, None when it does not exist; ParameterError when this user may not read it."""
    try:
        st = path.stat()
        with path.open("rb") as f:
            f.read(1)
        return st
    except FileNotFoundError:
        return None
    except PermissionError as err:
        raise ParameterError(
            f"--with-data: {path} is not readable by this user (uid {os.geteuid()}). Run rehearse as a user that "
            "can read the target's data dir (for example one in the redis group), or drop --with-data to rehearse "
            "on an empty sandbox. Nothing was started."
        ) from err


def data_files(production: Production) -> tuple[list[tuple[str, Path, Path]], list[str]]:
    """(role, source, path inside the sandbox's data dir) of the files to copy, and caveats.

    The RDB always; the AOF too when the config file says appendonly yes (what the sandbox loads at boot).
    """
    if not production.target.local:
        raise ParameterError(f"--with-data: {production.connection.target} is on another host, its data files are "
                             "not here. Run rehearse on that host, or drop --with-data.")
    runtime, config = production.runtime, production.config
    src_dir = Path(runtime.get("dir", ""))
    files: list[tuple[str, Path, Path]] = []
    caveats: list[str] = []
    rdb = src_dir / runtime.get("dbfilename", "dump.rdb")
    if _stat_source(rdb) is None:
        caveats.append(f"{rdb} does not exist (the target never saved): the sandbox starts without an RDB")
    else:
        files.append(("rdb", rdb, Path(config.value("dbfilename") or "dump.rdb")))
    if normalize("appendonly", config.value("appendonly") or "no") == "yes":
        try:
            aof = aof_on_disk(src_dir, runtime.get("appendfilename", "appendonly.aof"),
                              runtime.get("appenddirname", "appendonlydir"))
        except PermissionError as err:
            _stat_source(Path(err.filename or src_dir))  # raises the ParameterError that says what to do
            raise
        if aof.layout == "absent":
            caveats.append(f"the file says appendonly yes but {src_dir} holds no AOF: the sandbox boots as the "
                           "target would after a restart (empty)")
        for f in aof.files:
            _stat_source(f.path)
            dest = Path(config.value("appenddirname") or "appendonlydir") / f.path.name \
                if aof.layout == "multi-part" else Path(config.value("appendfilename") or "appendonly.aof")
            files.append((f.role, f.path, dest))
    return files, caveats


def check_room(used_memory: int, files: Sequence[tuple[str, Path, Path]], root: Path,
               meminfo: Path = Path("/proc/meminfo")) -> None:
    """ParameterError when the copy would crowd the target's host: disk for the files (and the
    sandbox's own rewrite and save), memory for the dataset."""
    size = sum(src.stat().st_size for _, src, _ in files)
    free = shutil.disk_usage(root).free
    if 3 * size + (64 << 20) > free:
        raise ParameterError(f"--with-data: {size} bytes of data files need about {3 * size + (64 << 20)} bytes "
                             f"free under {root} (copy, rewrite, save); {free} are free. Set TMPDIR to a roomier "
                             "disk, or drop --with-data.")
    available = mem_available(meminfo)
    needed = int(used_memory * MEMORY_FACTOR)
    if available is not None and needed > available:
        raise ParameterError(f"--with-data: the target uses {used_memory} bytes of memory; a copy needs "
                             f"about {needed} and this host has {available} available. Loading it could push the "
                             "target into swap or the OOM killer: rehearse on another host, or drop --with-data.")


def mem_available(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    """MemAvailable in bytes, or None where /proc/meminfo does not say."""
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def copy_data(files: Sequence[tuple[str, Path, Path]], data_dir: Path) -> tuple[CopiedFile, ...]:
    """Copy the target's data files into the sandbox's data dir (read only on the target's side)."""
    copied: list[CopiedFile] = []
    for role, src, rel in files:
        dest = data_dir / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            shutil.copyfile(src, dest)
        except FileNotFoundError as err:
            raise PreconditionFailed(f"{src} went away while copying (a rewrite or save replaced it); run rehearse "
                                     "again") from err
        copied.append(CopiedFile(role, str(src), dest.stat().st_size))
    for role, src, rel in files:
        if role == "aof-manifest" and src.read_bytes() != (data_dir / rel).read_bytes():
            raise PreconditionFailed(f"the target rewrote its AOF while it was being copied ({src} changed); run "
                                     "rehearse again")
    return tuple(copied)


# -- the sandbox ------------------------------------------------------------------------------------


def keys_of(client: redis.Redis) -> int:
    """Keys in every database, from INFO keyspace."""
    return sum(int(db.get("keys", 0)) for db in client.info("keyspace").values() if isinstance(db, dict))


def serve_all_slots(client: redis.Redis, timeout_s: float = 10.0) -> None:
    """A lone cluster node serves nothing until it owns the slots: take every one not taken yet."""
    owned: set[int] = set()
    for entry in client.execute_command("CLUSTER", "SLOTS"):
        owned.update(range(int(entry[0]), int(entry[1]) + 1))
    free = [s for s in range(16384) if s not in owned]
    if free:
        client.execute_command("CLUSTER", "ADDSLOTS", *free)
    deadline = Deadline(timeout_s)
    while True:
        try:
            state = str(deadline.call(client, lambda c: c.execute_command("CLUSTER", "INFO"), "CLUSTER INFO"))
        except NoReply as err:
            raise deadline.missed("the rehearsal's cluster node did not reach cluster_state:ok") from err
        if "cluster_state:ok" in state:
            return
        deadline.saw(next((ln for ln in state.splitlines() if ln.startswith("cluster_state:")), state[:80]))
        if deadline.expired:
            raise deadline.missed("the rehearsal's cluster node did not reach cluster_state:ok")
        deadline.sleep(0.05)


def mirror_runtime(client: redis.Redis, production: dict[str, str], config_command: str = "CONFIG",
                   timeout_s: float = 300.0) -> dict[str, dict[str, str]]:
    """CONFIG SET on the sandbox every persistence setting whose runtime value differs from the target's
    (`apply_runtime`: appendonly last, waiting for its initial rewrite).
    Returns {setting: {"sandbox", "production"}}."""
    sandbox = config_get(client, list(MIRRORED), config_command)
    changes = {k: {"sandbox": sandbox[k], "production": production[k]} for k in MIRRORED
               if k in sandbox and k in production and normalize(k, sandbox[k]) != normalize(k, production[k])}
    apply_runtime(client, [SettingChange(k, v["sandbox"], v["production"]) for k, v in changes.items()],
                  config_command, timeout_s=timeout_s)
    return changes


def _version_caveat(production: Identity, choice: BinaryChoice) -> str:
    if choice.match == "exact":
        return ""
    if choice.match == "major.minor":
        return f"rehearsed on {choice.binary.label}, production runs {production.label} (same major.minor)"
    return (f"no {production.label} binary here: rehearsed on {choice.binary.label}, results may differ "
            "(set RUNBOOK_REDIS_SERVER to a matching redis-server)")


@contextmanager
def rehearsal_sandbox(production: Production, *, with_data: bool = False, keep: bool = False) -> Iterator[Staged]:
    """Build, load and start the sandbox and put it in the target's runtime state; removed afterwards
    (with `keep`: stopped and left in place)."""
    t0 = time.perf_counter()
    ident, conn = production.identity, production.connection
    choice = for_server(ident, local=production.target.local)
    caveats = [c for c in [_version_caveat(ident, choice)] if c]
    files: list[tuple[str, Path, Path]] = []
    if with_data:  # before anything is built: a file we may not read stops here
        files, notes = data_files(production)
        caveats += notes
        check_room(production.used_memory, files, Path(tempfile.gettempdir()))
    root = Path(tempfile.mkdtemp(prefix="runbook-rehearse-"))  # 0700
    sb: Sandbox | None = None
    try:
        built = sandbox_config(production.config, root)
        caveats += built.caveats
        data_dir = root / "data"
        data_dir.mkdir(mode=0o700)
        copied = copy_data(files, data_dir)
        if ident.role != "master":
            caveats.append(f"the target is a {ident.role}; the sandbox is a master (replication is never copied)")
        method, method_reason = choose_method(conn.method, production.target, ident, production.config,
                                              production.config_path)
        private_file(root / "redis.conf")  # Sandbox writes into it and keeps the mode
        sb = Sandbox(config=built.text, binary=choice.binary.path, root=root)
        try:
            sb.start(timeout_s=600.0 if copied else 20.0)  # PING waits out the loading of a large copy
        except (PreconditionFailed, WaitTimeout) as err:
            tail = "\n".join(mask_secrets(sb.log_text()).splitlines()[-8:]) or str(err)
            after = f"its dir is kept: {root}" if keep else "or use --keep to look at its dir"
            raise PreconditionFailed(
                f"the rehearsal sandbox built from {production.config_path} did not start on "
                f"{choice.binary.label} ({choice.match} match for the target's {ident.label}):\n{tail}\n"
                f"Set RUNBOOK_REDIS_SERVER to a server binary that can run this file (its modules, its "
                f"version), {after}."
            ) from err
        creds = production.target.client.connection_pool.connection_kwargs
        client = sb.client(username=creds.get("username"), password=creds.get("password"))
        # First thing once it answers. (Sandbox.start waits out LOADING unless the file sets a password, so a
        # large copy is loaded before this runs; INFO, CONFIG GET and AUTH would be answered while loading.)
        try:
            _refuse_unless_isolated(client, sb, conn.config_command)
        except (redis.AuthenticationError, redis.ResponseError) as err:
            if isinstance(err, redis.ResponseError) and not str(err).startswith(("NOAUTH", "WRONGPASS")):
                raise
            raise PreconditionFailed(
                f"the rehearsal sandbox, built from {production.config_path}, refused the credentials that "
                f"{redact_url(conn.target)} accepts ({err}): the file's requirepass or ACL users differ from the "
                "running server's (changed at runtime with CONFIG SET or ACL SETUSER and never saved). A restart "
                "of the target would lock its clients out. Save the running credentials into the file first "
                "(CONFIG REWRITE, ACL SAVE for an aclfile, or edit the file), then rehearse again."
            ) from err
        wait_loaded(client, 600.0, "the rehearsal sandbox (loading the copied data)")
        if (production.config.value("cluster-enabled") or "no").lower() == "yes":
            serve_all_slots(client)
        loaded = keys_of(client) if with_data else None
        if loaded is not None and loaded != production.keys:
            caveats.append(f"{loaded} keys loaded from the files, the target holds {production.keys} now "
                           "(writes since its last save)")
        running = identify(client)
        mirrored = mirror_runtime(client, production.runtime, conn.config_command)
        rehearsal = Rehearsal(
            production=redact_url(conn.target), production_server=ident.label, config_file=str(production.config_path),
            binary=str(choice.binary.path), server=running.label, version_match=choice.match,
            data_copied=bool(copied), copied=copied, keys_loaded=loaded, production_keys=production.keys,
            mirrored=mirrored, overrides=built.overrides, includes=built.includes, persist_method=method,
            persist_method_reason=method_reason,
            caveats=tuple(caveats), sandbox_dir=str(root), prepare_s=round(time.perf_counter() - t0, 3),
        )
        # The backup of the rehearsal goes with the sandbox, never to the target's own destination.
        pairs = [("target", "sandbox"), ("config_file", str(sb.config_path)), ("apply", "true"),
                 ("destination", str(root / "backups"))]
        if method in ("rewrite", "edit"):
            pairs.append(("method", method))  # what the target would use, not what suits the sandbox
        yield Staged(sb, rehearsal, tuple(pairs))
        if keep:
            _shutdown(client)
    finally:
        if sb is not None:
            sb.cleanup()
        if not keep:
            shutil.rmtree(root, ignore_errors=True)


def _refuse_unless_isolated(client: redis.Redis, sb: Sandbox, config_command: str) -> None:
    """Make sure the started copy listens, writes, logs and replicates only inside the sandbox."""
    role = client.info("replication").get("role")
    seen = config_get(client, ["dir", "port", "syslog-enabled", *ISOLATED_FILES], config_command)
    cwd = Path(seen.get("dir", ""))
    leaks = [f"role {role}"] if role != "master" else []
    if cwd.resolve() != sb.data_dir.resolve():
        leaks.append(f"dir {cwd}")
    if int(seen.get("port", 0)) != sb.port:
        leaks.append(f"port {seen.get('port')}")
    if seen.get("syslog-enabled", "no") != "no":
        leaks.append(f"syslog-enabled {seen['syslog-enabled']}")
    assert sb.root is not None
    for name in ISOLATED_FILES:  # an empty value: no such file (no socket, no ACL file)
        if seen.get(name) and not (cwd / seen[name]).resolve().is_relative_to(sb.root.resolve()):
            leaks.append(f"{name} {seen[name]}")
    if leaks:
        raise PreconditionFailed(f"the rehearsal sandbox in {sb.root} is not isolated ({', '.join(leaks)}); it was "
                                 "stopped. Report this as a bug.")


def _shutdown(client: redis.Redis) -> None:
    try:
        client.shutdown(nosave=False)
    except redis.ConnectionError:
        pass


# -- the rehearsal ----------------------------------------------------------------------------------


@contextmanager
def _pointed_at(sb: Sandbox) -> Iterator[None]:
    """Point `target: sandbox` of the run (and its kernel) at the rehearsal sandbox."""
    saved = {k: os.environ.get(k) for k in (SANDBOX_URL_ENV, SANDBOX_DIR_ENV)}
    os.environ[SANDBOX_URL_ENV], os.environ[SANDBOX_DIR_ENV] = sb.url, str(sb.root)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def predicted_failures(production: Production, rehearsal: Rehearsal,
                       result: RunResult) -> list[tuple[str, ExitCode, str]]:
    """(step, exit code, reason) the target would meet that a sandbox cannot show: enable-aof's preflight
    on the target itself (role, last BGSAVE, disk room, ...) and its rights on its config file."""
    out: list[tuple[str, ExitCode, str]] = []
    refused = [f"{c.observed} ({c.fix})" if c.fix else c.observed
               for c in production.preflight.checks if c.status == Status.FAIL]
    if refused:
        out.append(("enable-aof", ExitCode.FAILED, "; ".join(refused)))
    backed_up = any(s.name == "backup" and s.summary.result == Outcome.DONE for s in result.steps)
    data_dir = production.runtime.get("dir", "")
    if backed_up and not (production.target.local and data_dir and os.access(data_dir, os.R_OK | os.X_OK)):
        out.append(("backup", ExitCode.BLOCKED, f"the target's data dir {data_dir or '(unknown)'} is not readable "
                    "from here, so 05-backup cannot copy it: run the change on the Redis host as a user who may read "
                    "it, or pass skip_backup with the reason (the rehearsal backed up its own copy)"))
    persisted = [s for s in result.steps if s.name == "persist-config" and s.summary.result == Outcome.CHANGED]
    if rehearsal.persist_method == "blocked" and persisted:
        out.append(("persist-config", ExitCode.BLOCKED, (f"{rehearsal.persist_method_reason}; a person with the "
                    "rights must apply the patch (the rehearsal wrote its own copy)")))
    return out


def verdict(result: RunResult, predicted: Sequence[tuple[str, ExitCode, str]] = ()) -> tuple[str, ExitCode]:
    """("production would pass" or "production would fail at STEP: REASON", exit code)."""
    failing = result.failing()  # the runner's rule: the first inspection's findings are what the change fixes
    if failing:
        step = failing[0]
        checks = [f"{c.name}: {c.observed}" for c in step.summary.failed_checks]
        reason = step.summary.error or "; ".join(checks) or f"ended {step.status}"
        word = "be blocked" if step.status == Status.BLOCKED else "fail"
        return f"production would {word} at {step.name}: {reason}", result.exit_code
    if result.exit_code == ExitCode.OK and predicted:
        step_name, code, reason = predicted[0]
        return f"production would {'be blocked' if code == ExitCode.BLOCKED else 'fail'} at {step_name}: {reason}", code
    return "production would pass", ExitCode.OK


def rehearse(files: Sequence[str | Path], pairs: Sequence[tuple[str, str]] = (),
             archive: str | Path | Archive = Path("archive"), *, with_data: bool = False,
             keep: bool = False) -> RehearsalResult:
    """Rehearse `runbook run all -p apply true` for the one target of `files` on a copy of it."""
    # The evidence must have somewhere to go before the target is read or anything is copied or started.
    store = archive if isinstance(archive, Archive) else Archive(archive)
    store.require_writable()
    with _one_of_the_fleet(files, pairs) as (files, pairs):
        return _rehearse(files, pairs, store, with_data=with_data, keep=keep)


@contextmanager
def _one_of_the_fleet(files: Sequence[str | Path], pairs: Sequence[tuple[str, str]]
                      ) -> Iterator[tuple[Sequence[str | Path], Sequence[tuple[str, str]]]]:
    """`files` and `pairs` as they are, or, for a fleet file (`targets:`) with `-p target URL`, a one-target params
    file of that entry (its own keys over the file's shared ones) in a temporary dir, and the pairs without target."""
    merged = load_files(files) if files else {}
    chosen = dict(pairs).get("target")
    if "targets" not in merged or chosen is None:
        yield files, pairs
        return
    entries = normalize_targets(merged.pop("targets"))
    entry = next((e for e in entries if e["target"] == chosen), None)
    if entry is None:
        raise ParameterError(f"rehearse -p target {redact_url(chosen)}: {', '.join(map(str, files))} lists no such "
                             f"target; its targets are {', '.join(redact_url(e['target']) for e in entries)}")
    with tempfile.TemporaryDirectory(prefix="runbook-rehearse-") as tmp:
        one = (Path(tmp) / "target").with_suffix(".yaml")
        one.write_text(yaml.safe_dump({**merged, **entry}, sort_keys=False), encoding="utf-8")
        yield [one], [(k, v) for k, v in pairs if k != "target"]


def _rehearse(files: Sequence[str | Path], pairs: Sequence[tuple[str, str]], store: Archive, *, with_data: bool,
              keep: bool) -> RehearsalResult:
    production = observe(connection_from(files, pairs))
    try:
        with rehearsal_sandbox(production, with_data=with_data, keep=keep) as staged, _pointed_at(staged.sandbox):
            t0 = time.perf_counter()
            result = run(["all"], files, [*pairs, *staged.pairs], store,
                         record_extra={"rehearsal": staged.rehearsal.record()})
            run_s = round(time.perf_counter() - t0, 3)
    finally:
        production.target.client.close()
    text, code = verdict(result, predicted_failures(production, staged.rehearsal, result))
    return RehearsalResult(staged.rehearsal, result, text, code, run_s)
