"""Make the runtime persistence settings permanent in the config file, without the restart trap.

Methods: `rewrite` (CONFIG REWRITE, the server writes its own file), `edit` (a careful
file edit done here), `auto` (rewrite when the server can write its config directory
and the file has no includes, else edit when we can write the file, else blocked).
See https://redis.io/docs/latest/commands/config-rewrite/
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import stat
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

import redis
from redis.exceptions import NoPermissionError

from runbook.errors import Blocked, ChangeFailed, ParameterError, PreconditionFailed, VerificationFailed
from runbook.evidence.summary import change_id as run_change_id
from runbook.model import Check, Outcome, SettingChange, Status, StepSummary, worst
from runbook.sandbox.binaries import BinaryChoice, for_server
from runbook.sandbox.defaults import server_defaults
from runbook.sandbox.isolation import private_file, sandbox_config
from runbook.sandbox.throwaway import Sandbox
from runbook.server.aof import AofOnDisk, aof_on_disk, aof_ready
from runbook.server.configedit import (
    atomic_write,
    backup,
    backup_path,
    edit_text,
    read_raw,
    sha256_text,
    unified_diff,
    utc_stamp,
)
from runbook.server.configfile import ConfigFile, read_config
from runbook.server.ops import acl_user, may_run, may_write_dir, read_only_mount, server_ids
from runbook.server.rewrite import RewritePrediction, changed_directives, differences, predict_rewrite, read_inputs
from runbook.server.settings import PERSISTENCE_SETTINGS, Drift, compare, normalize, runtime_settings
from runbook.server.target import Identity, Target

log = logging.getLogger(__name__)

STEP = "persist-config"

METHODS = ("auto", "rewrite", "edit")
#: Settings persisted when they drift (appenddirname/appendfilename cannot change at runtime anyway).
PERSISTED = tuple(k for k in PERSISTENCE_SETTINGS if k not in ("appendfilename", "appenddirname"))


@dataclass(frozen=True)
class PersistPlan:
    """What would be written where, by which method, and why."""

    identity: Identity
    config_file: str
    changes: tuple[Drift, ...]  # runtime = value to write, file = value after a restart now
    desired: dict[str, str]
    method: str  # rewrite, edit, blocked, none
    reason: str
    diff: str  # masked: what the write will change (for CONFIG REWRITE: every line the server will rewrite)
    commands: str  # for a person with the rights, when blocked
    new_text: str = field(repr=False, default="")
    edit_file: str = ""
    before_sha: str = ""  # of the file the plan was made from, so a concurrent edit is caught
    boot: BinaryChoice | None = None  # the binary the boot check runs: the one search's choice, made at plan time
    fallback: str = ""  # "edit" when auto chose rewrite and the server may refuse it for rights (no ACL DRYRUN)
    stamp: str = ""  # UTC time of the plan: in the edit's header and the backup's name, so the intent can name it
    directives: tuple[str, ...] = ()  # the directives whose lines `diff` changes
    edit_diff: str = ""  # the edit's diff (masked): the patch for a person with the rights, and the fallback's
    rewrite: RewritePrediction | None = field(default=None, repr=False)  # what CONFIG REWRITE will write
    #: A plan-only run's runtime settings that an earlier step of the run plans to set (enable-aof's), planned on
    #: top of what runs now: the plan shows the file change the apply will make. Never applied from.
    assumed: Mapping[str, str] = field(default_factory=dict)

    @property
    def unchanged(self) -> bool:
        return not self.changes

    @property
    def boot_match(self) -> str:
        """exact, major.minor, or none (then the file is not boot-checked: allow_unchecked_boot)."""
        return self.boot.match if self.boot else ""


@dataclass(frozen=True)
class PersistResult:
    result: Outcome
    method: str
    backup: str = ""
    diff: str = ""
    reason: str = ""  # why, when it differs from the plan's (blocked or edited instead at apply time)
    commands: str = ""  # for a person with the rights, when blocked
    sha256_before: str = ""  # of the file as it was right before the write (the bytes of the backup)
    directives: tuple[str, ...] = ()  # the directives whose lines the write changed, read back from the file
    unpredicted: tuple[str, ...] = ()  # those CONFIG REWRITE wrote otherwise than the plan said


def desired_values(runtime: Mapping[str, str], drift: list[Drift],
                   settings: Mapping[str, object] | None) -> dict[str, str]:
    """The values to persist: explicit `settings`, else the runtime value of every drifted setting."""
    if settings:
        unknown = sorted(set(settings) - set(PERSISTED))
        if unknown:
            raise ParameterError(f"settings accepts {', '.join(PERSISTED)}; unknown: {', '.join(unknown)}")
        return {k: ("yes" if v is True else "no" if v is False else str(v)) for k, v in settings.items()}
    if all(d.status == "unknown" for d in drift):
        # No file to compare with (the server has none): whatever differs from the defaults is
        # lost at the next restart unless it reaches the service's configuration.
        return {k: v for k, v in runtime.items() if k in PERSISTED and PERSISTENCE_SETTINGS.get(k) is not None
                and normalize(k, v) != normalize(k, PERSISTENCE_SETTINGS[k])}
    return {d.setting: str(d.runtime) for d in drift if d.status == "drift" and d.setting in PERSISTED}


def trap_guard(desired: Mapping[str, str], runtime: Mapping[str, str], info: Mapping[str, Any],
               aof: AofOnDisk | None) -> str:
    """Why writing `desired` would set the restart trap, or "" when it is safe.

    `appendonly yes` may reach the file only when AOF is on at runtime, its initial rewrite
    completed, and (when the data dir is readable here) a loadable AOF is on disk.
    """
    if normalize("appendonly", desired.get("appendonly", "no")) != "yes":
        return ""
    if runtime.get("appendonly") != "yes" or int(info.get("aof_enabled", 0)) != 1:
        return ("refusing to write appendonly yes: AOF is off at runtime, so there is no current AOF and a "
                "restart would load an empty (or stale) AOF and ignore dump.rdb. Run 02-enable-aof first "
                "(runbook run enable-aof -p apply true), then this notebook.")
    if not aof_ready(info):
        return ("refusing to write appendonly yes: the initial AOF rewrite has not completed "
                f"(aof_rewrite_in_progress:{info.get('aof_rewrite_in_progress')}, aof_rewrite_scheduled:"
                f"{info.get('aof_rewrite_scheduled')}, aof_last_bgrewrite_status:"
                f"{info.get('aof_last_bgrewrite_status')}). "
                "Wait for it (02-enable-aof waits), then run again.")
    if aof is not None and not aof.loadable:
        return (f"refusing to write appendonly yes: no loadable AOF on disk ({aof.layout}"
                f"{': ' + aof.problem if aof.problem else ''}). Run 02-enable-aof, then this notebook.")
    return ""


def _we_can_edit(real: Path) -> bool:
    """This user may replace `real` (write it and its directory) and keep its owner (root, or owning it)."""
    return (os.access(real, os.W_OK) and os.access(real.parent, os.W_OK)
            and (os.geteuid() == 0 or real.stat().st_uid == os.geteuid()))


def choose_method(method: str, target: Target, ident: Identity, config: ConfigFile | None,
                  path: Path | None) -> tuple[str, str]:
    """(method, reason) for `auto`, or the asked method with a reason it cannot work ('blocked').

    CONFIG REWRITE is never used on a symlinked file (it would replace the link with a regular file), nor
    when the server may not write the file's directory, nor when ACL DRYRUN says this user may not run it.
    """
    if method not in METHODS:
        raise ParameterError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if path is None or config is None:
        return "blocked", "the server runs without a config file: there is no file to make the change permanent in"
    real = path.resolve()
    we_can_edit = target.local and _we_can_edit(real)
    server_file = bool(ident.config_file) and Path(ident.config_file).resolve() == real
    ids = server_ids(ident.process_id) if target.local else None
    server_can = (server_file and ids is not None and may_write_dir(real.parent, *ids)) if target.local else server_file
    has_includes = len(config.files) > 1
    read_only = read_only_mount(real.parent) if target.local else None
    # Why CONFIG REWRITE cannot work here, when that is known before trying it.
    no_rewrite = ""
    if server_file and target.local and Path(ident.config_file).is_symlink():
        no_rewrite = (f"{ident.config_file} is a symlink to {real}: CONFIG REWRITE would replace the link with a "
                      "regular file")
    elif read_only is not None:
        no_rewrite = f"{real.parent} is on a read-only mount ({read_only})"
    elif server_file and target.local and ids is not None and not server_can:
        no_rewrite = (f"the server (uid {ids[0]}) cannot write {real.parent} (CONFIG REWRITE needs to create a "
                      "temp file there)")
    elif server_file and may_run(target, target.config_command, "REWRITE") is False:
        no_rewrite = f"the ACL user {acl_user(target)!r} may not run CONFIG REWRITE (ACL DRYRUN says so)"
    if method == "rewrite":
        if not server_file:
            return "blocked", f"CONFIG REWRITE writes the server's own file ({ident.config_file or 'none'}), not {path}"
        if no_rewrite:
            return "blocked", no_rewrite + ("; method edit can write it" if we_can_edit else "")
        return "rewrite", "asked for"
    if method == "edit":
        if not target.local:
            return "blocked", "the target is not on this host: its file cannot be edited from here"
        if not we_can_edit:
            why = f"{real.parent} is on a read-only mount ({read_only})" if read_only is not None else \
                f"this user (uid {os.geteuid()}) cannot write {real} and its directory while keeping the file's owner"
            return "blocked", why
        return "edit", "asked for"
    if server_can and not has_includes and not no_rewrite:
        return "rewrite", "the server can write its config directory"
    if we_can_edit:
        why = no_rewrite or ("the file has include directives (CONFIG REWRITE would copy their values into the "
                             "main file)" if has_includes
                             else f"the server cannot write {real.parent} (CONFIG REWRITE needs to create a temp "
                                  "file there)")
        return "edit", why
    if server_file and not target.local and not no_rewrite:
        return "rewrite", "the target is remote: only the server can write its file"
    if read_only is not None:
        return "blocked", (f"{real.parent} is on a read-only mount ({read_only}): neither the server nor this "
                           f"user may write {real}")
    return "blocked", (f"neither the server nor this user (uid {os.geteuid()}) may write {real} "
                       "and its directory" + (f" ({no_rewrite})" if no_rewrite else ""))


def blocked_commands(path: str, diff: str, desired: Mapping[str, str], note: str = "") -> str:
    """What a person with the rights runs, ready to paste (`note`: what else they may run instead, as comments)."""
    head = note.rstrip("\n") + "\n" if note else ""
    if not path:
        lines = "\n".join(f"    {k} {v}" for k, v in desired.items())
        return (head + "# The server has no config file. Put these settings where it gets its configuration\n"
                "# (the service's command line, or a new config file it is started with):\n" + lines)
    return (head + f"sudo cp -p {path} {path}.runbook-$(date -u +%Y%m%dT%H%M%SZ).bak\n"
            f"sudo patch --forward {path} <<'PATCH'\n{diff}PATCH\n"
            "# then check: runbook run persist-config  (plan only: it must report no drift)")


def _acl_note(target: Target, what: str) -> str:
    user, cmd = acl_user(target), target.config_command
    return (f"# The ACL user {user!r} may not run {cmd} {what}. A person with the rights either grants it and runs\n"
            f"# this notebook again:\n#   redis-cli -u {target.name} --user ADMIN --askpass ACL SETUSER {user} "
            f"'+{cmd.lower()}|{what.lower()}'\n# or edits the file (method edit does it where this user may):")


def _read_only_note(real: Path) -> str:
    mount = read_only_mount(real.parent)
    if mount is None:
        return ""
    return (f"# {real.parent} is on a read-only mount ({mount}): apply the patch where the file comes from\n"
            f"# (the image, the ConfigMap), or remount it first: sudo mount -o remount,rw {mount}")


def _no_boot_binary(ident: Identity, choice: BinaryChoice) -> tuple[str, str]:
    """(reason, note) when no binary of the target's product and major.minor is here for the boot check."""
    minor = ".".join(ident.version.split(".")[:2])
    found = ", ".join(f"{b.label} ({b.path})" for b in choice.considered) or "none"
    name = f"{ident.server}-server"
    reason = (f"no {ident.server.capitalize()} {minor} server binary here to boot-check the file with (found: "
              f"{found}); set RUNBOOK_REDIS_SERVER to a {ident.label} {name} and run again, or pass "
              "allow_unchecked_boot true to write the file without the boot check")
    note = (f"# No {ident.server.capitalize()} {minor} {name} here to prove the edited file boots (found: {found}).\n"
            f"# Point the runbook at one and run again:\n#   RUNBOOK_REDIS_SERVER=/path/to/{name} "
            "runbook run persist-config -p apply true\n# or write it without the boot check:\n"
            "#   runbook run persist-config -p apply true -p allow_unchecked_boot true\n# or apply the patch by hand:")
    return reason, note


def plan_persist(target: Target, *, config_file: str = "", method: str = "auto",
                 settings: Mapping[str, object] | None = None, allow_unchecked_boot: bool = False,
                 planned_runtime: Mapping[str, object] | None = None) -> PersistPlan:
    """Read runtime and file, decide what to write and how; sends nothing that changes state.

    Blocked when no server binary of the target's product and major.minor is here to boot-check the file
    with, unless `allow_unchecked_boot`. `planned_runtime` (a plan-only run: what enable-aof plans to set) is
    planned on top of the runtime; the trap guard then waits for the apply, which checks the real runtime.
    """
    client = target.client
    ident = target.identify()
    assumed = {str(k): ("yes" if v is True else "no" if v is False else str(v))
               for k, v in (planned_runtime or {}).items()}
    runtime = {**target.runtime_settings(), **assumed}
    info = dict(client.info("persistence"))
    path_str = config_file or ident.config_file
    path = Path(path_str) if path_str else None
    if path is not None and not target.local and not config_file:
        raise Blocked(f"{target.name}: the config file {path} is on another host; run this notebook there "
                      "or pass config_file with a local copy to plan against")
    config = read_config(path) if path is not None else None
    major = ident.major
    drift = compare(runtime, config, major)
    desired = desired_values(runtime, drift, settings)
    data_dir = runtime.get("dir", "")
    aof = None
    if target.local and data_dir and os.access(data_dir, os.R_OK | os.X_OK):
        aof = aof_on_disk(Path(data_dir), runtime.get("appendfilename", "appendonly.aof"),
                          runtime.get("appenddirname", "appendonlydir"))
    refusal = "" if assumed else trap_guard(desired, runtime, info, aof)
    if refusal:
        raise PreconditionFailed(f"{target.name}: {refusal} The config file was not touched.")

    # Only what differs from what a restart would give now.
    now = {d.setting: d for d in drift}
    changes: list[Drift] = []
    for name, value in desired.items():
        after = now[name].file if name in now else None
        if after is not None and normalize(name, after) == normalize(name, value):
            continue
        changes.append(Drift(name, value, after, bool(config and config.value(name) is not None), "drift"))
    # When appendonly yes is written, its fsync policy is written beside it (as the seed asks)
    # rather than left to a default that may differ between versions.
    if any(c.setting == "appendonly" and c.runtime == "yes" for c in changes) and "appendfsync" not in desired \
            and config is not None and config.value("appendfsync") is None:
        fsync = runtime.get("appendfsync", "everysec")
        changes.append(Drift("appendfsync", fsync, now["appendfsync"].file if "appendfsync" in now else None,
                             False, "drift"))
    chosen, reason = choose_method(method, target, ident, config, path) if changes else ("none", "no drift")
    if chosen == "rewrite":
        # CONFIG REWRITE writes every runtime setting, not only the planned ones: guard what it will write.
        refusal = "" if assumed else trap_guard({**desired, "appendonly": runtime.get("appendonly", "no")}, runtime,
                                                info, aof)
        if refusal:
            raise PreconditionFailed(f"{target.name}: {refusal} (CONFIG REWRITE would write the runtime "
                                     "appendonly). The config file was not touched.")
        reason += "; CONFIG REWRITE writes every runtime setting: the diff is every line it will change"

    new_text, diff, edit_file, before_sha, directives = "", "", "", "", ()
    stamp = utc_stamp()
    if changes and config is not None and path is not None:
        # The edit goes to the file where each setting is effectively defined (an include may hold it).
        owners = {(config.last(c.setting).file if config.last(c.setting) else path) for c in changes}
        if len(owners) > 1:
            raise Blocked(f"{target.name}: the settings to change live in several files "
                          f"({', '.join(map(str, owners))}); edit them by hand")
        edit_path = owners.pop().resolve()
        before = read_raw(edit_path)
        before_sha = sha256_text(before)
        new_text = edit_text(before, {c.setting: str(c.runtime) for c in changes},
                             single_save_rule=major < 7, stamp=stamp)
        diff = unified_diff(before, new_text, str(edit_path))
        directives = changed_directives(before, new_text)
        edit_file = str(edit_path)
    boot: BinaryChoice | None = None
    note = ""
    if chosen in ("rewrite", "edit") and path is not None and os.access(path, os.R_OK):
        boot = for_server(ident, local=target.local)
        if boot.match == "none" and not allow_unchecked_boot:
            chosen = "blocked"
            reason, note = _no_boot_binary(ident, boot)
    fallback = "edit" if (chosen == "rewrite" and method == "auto" and path is not None and target.local
                          and edit_file and _we_can_edit(Path(edit_file))) else ""
    if chosen == "blocked" and not note and path is not None:
        note = _acl_note(target, "REWRITE") if "may not run CONFIG REWRITE" in reason \
            else _read_only_note(path.resolve()) if target.local else ""
    commands = blocked_commands(edit_file or path_str, diff, desired, note) if chosen == "blocked" else ""
    edit_diff, rewrite = diff, None
    if chosen == "rewrite" and path is not None:
        rewrite = _predict_rewrite(target, ident, path.resolve(), boot, assumed)
        if rewrite is not None:
            diff = unified_diff(read_raw(path.resolve()), rewrite.text, str(path.resolve()))
            directives = rewrite.directives
    if assumed and changes:
        reason += (f"; planned as if {', '.join(f'{k} {v}' for k, v in assumed.items())} were set at runtime (what "
                   "enable-aof plans): the apply plans again from the real runtime, behind the trap guard")
    return PersistPlan(ident, path_str, tuple(changes), desired, chosen, reason, diff, commands, new_text,
                       edit_file, before_sha, boot, fallback, stamp, directives, edit_diff, rewrite, assumed)


def _predict_rewrite(target: Target, ident: Identity, path: Path, boot: BinaryChoice | None,
                     assumed: Mapping[str, str] | None = None) -> RewritePrediction | None:
    """What CONFIG REWRITE will write to `path` (`runbook.server.rewrite`): every runtime setting against the file,
    with the defaults of a throwaway of the boot check's binary (its product and major.minor); None when the file
    is not readable here."""
    if not os.access(path, os.R_OK):
        return None
    text = read_raw(path)
    inputs = read_inputs(target, text)
    runtime = {**inputs.runtime, **(assumed or {})}
    defaults: dict[str, str] = {}
    if boot is not None and boot.match in ("exact", "major.minor"):
        try:
            defaults = server_defaults(boot.binary.path)
        except PreconditionFailed as err:
            log.warning("%s: the defaults of %s were not measured (%s): the plan assumes the documented ones",
                        target.name, boot.binary.path, err)
    try:
        return predict_rewrite(text, runtime, server=ident.server, version=ident.version, defaults=defaults,
                               acl_users=inputs.acl_users)
    except (ValueError, KeyError) as err:  # a value this prediction cannot read: plan with the edit's diff instead
        log.warning("%s: what CONFIG REWRITE will write was not predicted (%r): the plan shows the edit's diff",
                    target.name, err)
        return None


#: How a server or the OS says that rights are missing (CONFIG REWRITE's reply, or an OSError's text).
_NO_RIGHTS = ("permission denied", "read-only file system", "operation not permitted")
_NO_RIGHTS_ERRNO = (errno.EACCES, errno.EPERM, errno.EROFS)


def apply_persist(target: Target, plan: PersistPlan, *, apply: bool = False, make_backup: bool = True,
                  change_id: str | None = None) -> PersistResult:
    """Write the plan (only with `apply`). Missing rights, found at plan time or only now, give a blocked
    result with the commands for a person with the rights (exit 3 after the summary is recorded).

    The backup beside the file is named after `change_id` (default: the run's, `runbook.evidence.summary`) and
    never replaces an existing file; its sha256 (the file before the write) is in the result."""
    if plan.unchanged:
        return PersistResult(Outcome.UNCHANGED, "none")
    if plan.method == "blocked":
        return PersistResult(Outcome.BLOCKED, "blocked", reason=plan.reason, commands=plan.commands)
    if not apply:
        return PersistResult(Outcome.PLANNED, plan.method, diff=plan.diff)
    if plan.assumed:
        raise ParameterError(f"{target.name}: planned_runtime is for plans only (it plans on top of settings not yet "
                             "set); with apply the plan is made from the real runtime: leave planned_runtime empty")
    stamp = plan.stamp or utc_stamp()
    cid = run_change_id() if change_id is None else change_id
    if plan.method == "rewrite":
        return _rewrite(target, plan, make_backup, stamp, cid)
    return _edit(target, plan, make_backup, stamp, cid)


def intent(plan: PersistPlan, *, apply: bool = False, make_backup: bool = True,
           change_id: str | None = None) -> dict[str, Any] | None:
    """What `apply_persist` is about to write, for `runbook.intend` (None when it writes nothing): the file, the
    backup it will keep and the sha256 of the file now, so a rollback can undo an interrupted write from it."""
    if plan.unchanged or plan.method not in ("rewrite", "edit") or not apply:
        return None
    path = Path(plan.edit_file if plan.method == "edit" else plan.config_file).resolve()
    keeps = make_backup and (plan.method == "edit" or os.access(path.parent, os.W_OK))
    saved = str(backup_path(path, plan.stamp, run_change_id() if change_id is None else change_id)) if keeps else ""
    before = sha256_text(read_raw(path)) if os.access(path, os.R_OK) else ""
    changes = [SettingChange(c.setting, c.file, c.runtime).to_json() for c in plan.changes]
    settings = ", ".join(f"{c.setting} {c.file} -> {c.runtime}" for c in plan.changes)
    return {
        "summary": f"write {path} by {plan.method} ({settings})"
                   + (f", after a backup to {saved}" if saved else ", without a backup"),
        "config_file": plan.config_file, "file": str(path), "method": plan.method, "backup": saved,
        "config_sha256_before": before,
        "config_sha256_planned": sha256_text(plan.new_text) if plan.method == "edit" else "",
        "changes": changes,
    }


def _blocked(plan: PersistPlan, reason: str, note: str = "") -> PersistResult:
    return PersistResult(Outcome.BLOCKED, "blocked", reason=reason,
                         commands=blocked_commands(plan.edit_file or plan.config_file, plan.edit_diff or plan.diff,
                                                   plan.desired, note))


def _backup(path: Path, stamp: str, change_id: str, current: str) -> tuple[str, str]:
    """(backup, sha256 of the file before the write): the backup is of exactly the bytes read as `current`, else
    ChangeFailed (someone wrote the file meanwhile) and no backup is left."""
    try:
        saved, digest = backup(path, stamp, change_id)
    except FileExistsError as err:
        raise ChangeFailed(f"{err.filename} exists already: a backup never replaces a file; nothing was written. "
                           "Run again (the next backup gets a new name).") from err
    if digest != sha256_text(current):
        saved.unlink(missing_ok=True)
        raise ChangeFailed(f"{path} changed while it was backed up; nothing was written. Run again to re-plan.")
    return str(saved), digest


def _rewrite(target: Target, plan: PersistPlan, make_backup: bool, stamp: str, change_id: str) -> PersistResult:
    link = Path(plan.config_file)
    if link.is_symlink():
        return _blocked(plan, f"{link} is a symlink to {link.resolve()}: CONFIG REWRITE would replace the link "
                              "with a regular file; nothing was written (method edit writes through the link)")
    path = link.resolve()
    before = read_raw(path) if os.access(path, os.R_OK) else ""
    saved, sha_before = _backup(path, stamp, change_id, before) if make_backup and os.access(path.parent, os.W_OK) \
        else ("", sha256_text(before) if before else "")
    st = path.stat()
    try:
        target.config_rewrite()
    except redis.ResponseError as err:
        if saved:
            Path(saved).unlink(missing_ok=True)
        acl = isinstance(err, NoPermissionError)
        if not (acl or any(w in str(err).lower() for w in _NO_RIGHTS)):
            raise ChangeFailed(f"{target.name}: {target.config_command} REWRITE failed: {err}. The file was not "
                               "changed (the server writes a temp file and renames it); see the server log, or "
                               "use method edit.") from err
        who = f"the ACL user {acl_user(target)!r}" if acl else "the server"
        if plan.fallback == "edit":
            log.info("%s: CONFIG REWRITE refused (%s): editing the file instead", target.name, err)
            edited = _edit(target, plan, make_backup, stamp, change_id)
            return replace(edited, reason=f"{who} may not run CONFIG REWRITE here ({err}): the file was edited "
                                          "instead") if edited.result == Outcome.CHANGED else edited
        note = _acl_note(target, "REWRITE") if acl else _read_only_note(path) if target.local else ""
        return _blocked(plan, f"{target.config_command} REWRITE was refused: {err} ({who} lacks the rights); "
                              "nothing was written", note)
    after = read_raw(path) if before else ""
    _keep_mode_and_owner(path, st)
    unpredicted = differences(plan.rewrite, after) if plan.rewrite is not None and before else ()
    return PersistResult(Outcome.CHANGED, "rewrite", saved, unified_diff(before, after, str(path)),
                         sha256_before=sha_before, directives=changed_directives(before, after),
                         unpredicted=unpredicted)


def _edit(target: Target, plan: PersistPlan, make_backup: bool, stamp: str, change_id: str) -> PersistResult:
    """The planned edit of the real file (a symlink is written through), after a backup beside it."""
    path = Path(plan.edit_file).resolve()
    current = read_raw(path)
    if sha256_text(current) != plan.before_sha:
        raise ChangeFailed(f"{path} changed since the plan was made; nothing was written. Run again to re-plan.")
    saved, sha_before = "", sha256_text(current)
    try:
        if make_backup:
            saved, sha_before = _backup(path, stamp, change_id, current)
        atomic_write(path, plan.new_text)
    except OSError as err:
        if saved:
            Path(saved).unlink(missing_ok=True)
        if err.errno in _NO_RIGHTS_ERRNO:
            return _blocked(plan, f"this user (uid {os.geteuid()}) may not write {path}: {err}; nothing was "
                                  "written", _read_only_note(path))
        raise ChangeFailed(f"{target.name}: writing {path} failed: {err}. The file was not changed (it is replaced "
                           "only by a complete temp file).") from err
    # The evidence is what really changed on disk, read back.
    written = read_raw(path)
    return PersistResult(Outcome.CHANGED, "edit", saved, unified_diff(current, written, str(path)),
                         sha256_before=sha_before, directives=changed_directives(current, written))


def _keep_mode_and_owner(path: Path, before: os.stat_result) -> None:
    """CONFIG REWRITE resets the mode to 0644 & ~umask (a file holding requirepass becomes world-readable):
    put the original mode and owner back."""
    now = path.stat()
    if stat.S_IMODE(now.st_mode) != stat.S_IMODE(before.st_mode):
        os.chmod(path, stat.S_IMODE(before.st_mode))
    if (now.st_uid, now.st_gid) != (before.st_uid, before.st_gid) and os.geteuid() == 0:
        os.chown(path, before.st_uid, before.st_gid)


def raise_if_blocked(target: Target, plan: PersistPlan, result: PersistResult) -> None:
    """Raise Blocked (exit 3) after the summary is recorded, when a person must act."""
    if result.result == Outcome.BLOCKED:
        raise Blocked(f"{target.name}: {result.reason or plan.reason}. Nothing was changed; the patch and the "
                      "commands to run are in the notebook and in the archived summary.")


def boot_check(target: Target, plan: PersistPlan, *, timeout_s: float = 30.0) -> Check:
    """Start a throwaway server from an isolated copy of the config file and compare its persistence settings.

    The copy is the one rehearse builds (`runbook.sandbox.isolation`): every line that could reach the
    real server's sockets, files, master or logs is commented out and replaced by the sandbox's own.
    The binary is the one the plan chose (the one search, `runbook.sandbox.binaries`): the target's product
    and version, else its major.minor; with none of those here (allow_unchecked_boot) nothing is booted.
    """
    path = Path(plan.config_file)
    if not plan.config_file or not os.access(path, os.R_OK):
        return Check("file_boots", Status.WARN,
                     f"{plan.config_file or 'no config file'} is not readable here: boot not tested")
    choice = plan.boot or for_server(plan.identity, local=target.local)
    if choice.match == "none":
        return Check("file_boots", Status.WARN,
                     f"not boot-checked: no {plan.identity.label} binary (nor its major.minor) here, and a server of "
                     "another version may refuse a good file (allow_unchecked_boot)",
                     "set RUNBOOK_REDIS_SERVER to a matching server binary and run persist-config again")
    binary = choice.binary.path
    root = Path(tempfile.mkdtemp(prefix="runbook-boot-"))
    sb: Sandbox | None = None
    try:
        copy = sandbox_config(read_config(path), root)
        private_file(root / "redis.conf")  # it keeps requirepass: readable by this user only
        sb = Sandbox(config=copy.text, binary=binary, root=root)
        sb.start(timeout_s, what="boot check")
        creds = target.client.connection_pool.connection_kwargs  # the same user and password as the target
        client = sb.client(username=creds.get("username"), password=creds.get("password"))
        booted = runtime_settings(client, target.config_command)
    except redis.AuthenticationError as err:
        return Check("file_boots", Status.WARN, f"a server booted from a copy of {path} but refused this "
                     f"connection's credentials ({err}): its settings were not compared",
                     "define the ACL user in the file (a user made with ACL SETUSER is lost at restart)")
    except (PreconditionFailed, ParameterError, redis.RedisError) as err:
        return Check("file_boots", Status.FAIL, f"a server started from a copy of {path} failed: {err}",
                     "fix the file before any restart; the backup is beside it")
    finally:
        if sb is not None:
            sb.cleanup()
        shutil.rmtree(root, ignore_errors=True)
    runtime = {**target.runtime_settings(), **plan.assumed}  # a plan on top of enable-aof's: that runtime
    off = [f"{k}: boots with {booted.get(k)!r}, runs with {runtime.get(k)!r}" for k in PERSISTED
           if k != "dir" and k in runtime and normalize(k, booted.get(k)) != normalize(k, runtime.get(k))]
    if off:
        return Check("file_boots", Status.FAIL, "a server started from the file differs: " + "; ".join(off),
                     "run this notebook again, or fix the file by hand")
    match = {"exact": "", "major.minor": " (same major.minor)"}.get(choice.match,
                                                                    f" (the target runs {plan.identity.label})")
    return Check("file_boots", Status.PASS,
                 f"{binary.name} ({choice.binary.label}{match}) booted from a copy of {path} "
                 "with the same persistence settings")


def verify_persist(target: Target, plan: PersistPlan, result: PersistResult) -> tuple[Check, ...]:
    """Re-read the file: no drift left, and the file boots. Plan-only: the file is untouched."""
    if result.result in (Outcome.PLANNED, Outcome.BLOCKED):
        path = Path(plan.edit_file or plan.config_file) if (plan.edit_file or plan.config_file) else None
        same = path is None or not plan.before_sha or sha256_text(
            read_raw(path)) == plan.before_sha
        return (Check("file_untouched", Status.PASS if same else Status.FAIL,
                      "the config file is byte for byte as before" if same
                      else "the config file changed during the run"),)
    # A plan made on top of what enable-aof plans (`assumed`) is checked against that runtime: the real one has not
    # been changed yet, so it differs from the file exactly where enable-aof would change it.
    runtime = {**target.runtime_settings(), **plan.assumed}
    checks: list[Check] = []
    try:
        config = read_config(plan.config_file)
        drift = [d for d in compare(runtime, config, plan.identity.major)
                 if d.status == "drift" and d.setting in PERSISTED]
        checks.append(Check("no_drift", Status.FAIL if drift else Status.PASS,
                            "; ".join(f"{d.setting}: runtime {d.runtime}, file {d.file}" for d in drift)
                            or "every persistence setting in the file matches the runtime"))
    except PreconditionFailed as err:
        checks.append(Check("no_drift", Status.WARN, f"file not re-read: {err}"))
    if result.unpredicted:
        checks.append(Check("rewrite_as_planned", Status.WARN,
                            f"CONFIG REWRITE wrote the lines of {', '.join(result.unpredicted)} otherwise than the "
                            "plan said (the summary's planned_diff and diff show both)",
                            "nothing to undo for it (the file was checked as written); report the two diffs so the "
                            "prediction (runbook.server.rewrite) learns this server's rule"))
    booted = boot_check(target, plan)
    if booted.status == Status.FAIL and result.result == Outcome.CHANGED:
        restored = restore_backup(plan, result)
        if restored.status == Status.PASS:
            booted = replace(booted, observed=f"{booted.observed}; the file was put back from the backup "
                                              f"{result.backup}", fix="fix the change by hand, then run again")
        checks += [booted, restored]
    else:
        checks.append(booted)
    return tuple(checks)


def restore_backup(plan: PersistPlan, result: PersistResult) -> Check:
    """Put the file that failed its boot check back from the backup taken before the write."""
    written = Path(_written_file(plan, result))
    if not result.backup or not Path(result.backup).is_file():
        return Check("file_restored", Status.FAIL, f"no backup was kept (backup false): {written} stays as "
                     "written", "undo the diff in the summary by hand before any restart")
    try:
        atomic_write(written, read_raw(Path(result.backup)))
    except OSError as err:
        return Check("file_restored", Status.FAIL, f"{written} could not be put back from {result.backup}: {err}",
                     f"copy {result.backup} over {written} by hand before any restart")
    return Check("file_restored", Status.PASS, f"{written} was put back from the backup {result.backup}, byte for "
                 "byte: the file that failed its boot check is not left in place (the running server is unchanged)")


def _written_file(plan: PersistPlan, result: PersistResult) -> str:
    """The file the change wrote: CONFIG REWRITE writes the main file, an edit the file holding the setting."""
    return plan.config_file if result.method == "rewrite" else (plan.edit_file or plan.config_file)


def persist_summary(plan: PersistPlan, result: PersistResult, checks: tuple[Check, ...]) -> StepSummary:
    """The record of this notebook; rollback reads the file it wrote and its backup (`file_change`)."""
    changed = result.result == Outcome.CHANGED
    blocked = result.result == Outcome.BLOCKED
    verdict = Status.BLOCKED if blocked else worst([c.status for c in checks])
    restored = next((c for c in checks if c.name == "file_restored" and c.status == Status.PASS), None)
    return StepSummary(STEP, verdict, result.result, plan.identity.server, plan.identity.version, checks, facts={
        "config_file": plan.config_file,
        "method": result.method if changed or blocked else plan.method,
        "reason": result.reason or plan.reason,
        "changes": [SettingChange(c.setting, c.file, c.runtime).to_json() for c in plan.changes],
        "backup": result.backup,
        "config_sha256_before": result.sha256_before,
        "config_sha256_after": sha256_text(read_raw(Path(_written_file(plan, result)))) if changed else "",
        "edited_file": _written_file(plan, result),
        "diff": result.diff or plan.diff,
        "planned_diff": plan.diff,
        "planned_directives": list(plan.directives),
        "applied_directives": list(result.directives),
        "planned_notes": list(plan.rewrite.notes) if plan.rewrite is not None else [],
        "commands": result.commands or plan.commands,
        "restored_from_backup": result.backup if restored else "",
        "boot_binary": f"{plan.boot.binary.label} ({plan.boot.binary.path}, {plan.boot.match} match)"
                       if plan.boot else "",
    })


def raise_on_failure(checks: tuple[Check, ...]) -> None:
    failed = [c for c in checks if c.status == Status.FAIL]
    if failed:
        raise VerificationFailed("; ".join(f"{c.name}: {c.observed}" for c in failed))
