"""The safe copy of a real server's config file: the target's own file, minus everything that could reach
the target (listeners, files, replication, cluster state), plus the sandbox's own values at the end.

The one way the runbook starts a throwaway copy of a production config: rehearse's sandbox and
persist-config's boot check both use it."""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field
from pathlib import Path

from runbook.errors import ParameterError
from runbook.server.configedit import quote
from runbook.server.configfile import ConfigFile, mask_secrets, split_args

#: Directives of the copied config that would reach the real server's sockets, files or master;
#: they are commented out in the copy and, where needed, replaced by a sandbox value at the end.
#: Commented out rather than only overridden: Redis 6.2 opens `logfile` and every version chdirs
#: to `dir` while parsing, before a later line could win.
NEUTRALIZED = frozenset({
    "port", "bind", "unixsocket", "tls-port", "tls-replication", "tls-cluster", "dir", "pidfile", "logfile",
    "daemonize", "supervised", "syslog-enabled", "syslog-ident", "syslog-facility", "replicaof", "slaveof",
    "primaryof", "cluster-config-file", "cluster-port", "aclfile",
})
#: Settings naming a file that must lie inside the sandbox (a relative one resolves against its dir).
ISOLATED_FILES = ("logfile", "pidfile", "unixsocket", "aclfile", "cluster-config-file")
#: A master with fewer connected replicas than this refuses writes; the lone sandbox has none.
MIN_REPLICAS = ("min-replicas-to-write", "min-slaves-to-write")
_COMMENT = "# rehearsal: disabled: "


@dataclass(frozen=True)
class Override:
    """A directive of the target's file that the sandbox does not take as it is."""

    directive: str
    production: str  # the value in the target's file ("" when the file does not set it)
    sandbox: str  # what the sandbox uses instead ("" = the directive is left out)


@dataclass(frozen=True)
class SandboxConfig:
    """The sandbox's config text, what it changed, the included files it copied, and what to tell the user."""

    text: str = field(repr=False)
    overrides: tuple[Override, ...]
    includes: tuple[str, ...]
    caveats: tuple[str, ...] = ()


def private_file(path: Path, data: bytes = b"") -> None:
    """Create `path` readable by this user only (it may hold requirepass)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.chmod(path, 0o600)


def read_private(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError as err:
        raise ParameterError(f"{what} {path} does not exist. Fix the target's config file, or pass config_file "
                             "with the file it runs with.") from err
    except PermissionError as err:
        raise ParameterError(f"{what} {path} is not readable by this user (uid {os.geteuid()}); a throwaway "
                             "copy of the server (rehearse, the boot check) needs it. Run as a user that can read "
                             "it (for example one in the redis group).") from err


def _neutralized(text: str, path: Path, root: Path, overrides: list[Override], includes: list[str],
                 cwd: Path, depth: int = 0) -> tuple[str, Path]:
    """`text` with every NEUTRALIZED directive commented out and every include pointed at a private copy,
    and the working directory the server has after reading it (`dir` lines move it, as Redis chdirs)."""
    out: list[str] = []
    for lineno, raw in enumerate(text.splitlines(keepends=True), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            out.append(raw)
            continue
        try:
            args = split_args(line)
        except ValueError as err:
            raise ParameterError(f"{path}:{lineno}: cannot parse {mask_secrets(line)!r} ({err}); the server would "
                                 "refuse it too. Fix the line first.") from err
        name = args[0].lower() if args else ""
        ending = raw[len(raw.rstrip("\r\n")):]
        if name == "dir" and len(args) >= 2:
            cwd = cwd / args[1]  # relative includes are opened from there, as read_config resolves them
        if name in NEUTRALIZED:
            overrides.append(Override(name, " ".join(args[1:]), ""))
            out.append(_COMMENT + raw.lstrip())
            continue
        if name == "include" and len(args) >= 2:
            if depth > 10:
                raise ParameterError(f"{path}:{lineno}: includes nest deeper than 10 levels (a loop?)")
            pattern = str(cwd / args[1])
            matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
            out.append(_COMMENT + raw.lstrip())
            for inc in map(Path, matches):
                sub = read_private(inc, f"included file (from {path}:{lineno})")
                copy = root / "include" / f"{len(includes):02d}-{inc.name}"
                includes.append(str(inc))
                body, cwd = _neutralized(sub.decode("utf-8", errors="surrogateescape"), inc, root, overrides,
                                         includes, cwd, depth + 1)
                private_file(copy, body.encode("utf-8", errors="surrogateescape"))
                out.append(f'include "{copy}"{ending or chr(10)}')
            continue
        out.append(raw)
    return "".join(out), cwd


def sandbox_config(config: ConfigFile, root: Path) -> SandboxConfig:
    """The sandbox's config: the target's file as it is, minus what would reach the target, plus the
    sandbox's own values at the end (port, bind, dir, pidfile and logfile are appended by Sandbox).

    Persistence and auth lines stay: persistence is what is rehearsed or boot-checked, and the same
    password works.
    """
    config_path = config.path
    (root / "include").mkdir(mode=0o700, exist_ok=True)
    overrides: list[Override] = []
    includes: list[str] = []
    caveats: list[str] = []
    main = read_private(config_path, "config file").decode("utf-8", errors="surrogateescape")
    # Where the server was started is unknown here: start from the file's own directory, as read_config does.
    text, final_dir = _neutralized(main, config_path, root, overrides, includes, config_path.parent)
    seen = {o.directive for o in overrides}
    extra: list[tuple[str, tuple[str, ...]]] = [("supervised", ("no",))]
    if "unixsocket" in seen:
        extra.append(("unixsocket", (str(root / "redis.sock"),)))
    if "aclfile" in seen:
        # Redis loads the ACL file after the whole config, from the directory the last `dir` left it in.
        source = final_dir / next(o.production for o in reversed(overrides) if o.directive == "aclfile")
        private_file(root / "users.acl", read_private(source, "aclfile"))
        extra.append(("aclfile", (str(root / "users.acl"),)))
    if seen & {"replicaof", "slaveof", "primaryof"}:
        extra.append(("replicaof", ("no", "one")))
    if (config.value("cluster-enabled") or "no").lower() == "yes":
        # Relative, so it resolves in the dir appended last: a copy of this file started with its own
        # dir (persist-config's boot check) then takes its own nodes.conf, not the sandbox's locked one.
        extra.append(("cluster-config-file", ("nodes.conf",)))
    min_replicas = [d for d in config.directives if d.name in MIN_REPLICAS and d.args]
    if min_replicas and min_replicas[-1].args[0] not in ("0", ""):
        d = min_replicas[-1]
        extra.append((d.name, ("0",)))
        overrides.append(Override(d.name, d.args[0], "0"))
        caveats.append(f"the file sets {d.name} {d.args[0]}: the lone sandbox master has no replicas and would "
                       "refuse writes, so it ran with 0; the target needs its replicas connected for the change")
    text = text.rstrip("\n") + ("\n\n# Sandbox overrides (runbook.sandbox.isolation): "
                                "the copy's own sockets and files\n")
    text += "".join(f"{k} {' '.join(map(quote, args))}\n" for k, args in extra)
    # What the record shows: each overridden directive once (its last value), with what replaced it.
    sandbox_values = {k: " ".join(args) for k, args in extra}
    sandbox_values.update({"port": "a free loopback port", "bind": "127.0.0.1", "dir": str(root / "data"),
                           "pidfile": str(root / "redis.pid"), "logfile": str(root / "redis.log"),
                           "daemonize": "no", "slaveof": "no one", "primaryof": "no one"})
    last = {o.directive: o for o in overrides}
    shown = [Override(o.directive, o.production, sandbox_values.get(o.directive, "")) for o in last.values()
             if o.production != sandbox_values.get(o.directive, "")]
    replication_shown = bool(last.keys() & {"replicaof", "slaveof", "primaryof"})
    for k, args in extra:
        if k not in last and not (k == "replicaof" and replication_shown):  # no slaveof + replicaof pair
            shown.append(Override(k, "", " ".join(args)))
    return SandboxConfig(text, tuple(shown), tuple(includes), tuple(caveats))
