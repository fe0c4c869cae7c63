"""The runbook's vocabulary: status and outcome words, checks, the step summary, the connection spec.

Everything a notebook records and the runner, CLI, metrics, rollback and fleet read back is a
`StepSummary`; its JSON form (`to_json`) is what the evidence index stores, under a schema version.
Every connection parameter a notebook declares comes from `ConnectionSpec`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields, replace
from enum import Enum
from typing import Any, Iterable, Mapping

#: Version of the summary's JSON form. Records written before it existed read as version 0.
SCHEMA_VERSION = 1

#: The steps that change a server's settings, its config file or the backups of its data when applied: the lock
#: guards them, and the metrics' change series counts them (the online test writes only canaries it removes).
CHANGING_STEPS = ("backup", "enable-aof", "persist-config", "rollback")
#: The steps whose change `rollback` puts back (the runtime settings, the config file).
UNDONE_BY_ROLLBACK = ("enable-aof", "persist-config")


class Word(str, Enum):
    """An enum whose members are their own word in JSON, f-strings and comparisons with str."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)


class Status(Word):
    """The verdict of a check, a step or a run."""

    PASS = "pass"
    WARN = "warn"
    FAIL = "fail"
    ERROR = "error"  # the step could not run to its end (it raised)
    BLOCKED = "blocked"  # a person must act; nothing was changed
    SKIPPED = "skipped"  # not run: an earlier step stopped the run
    # Journal words (runbook.evidence.journal): a changing step's records before its verdict, and its end when
    # a signal stopped it. A run whose last record is `started` or `intent` reads as interrupted.
    STARTED = "started"  # the runner is about to run a step that may change the target
    INTENT = "intent"  # the notebook is about to send its first write: what exactly it will set or write
    INTERRUPTED = "interrupted"  # stopped by SIGTERM/SIGINT (or left without a verdict by a kill)


class Outcome(Word):
    """What a step that may change something did, or would do."""

    PLANNED = "planned"  # plan only: nothing was sent or written
    UNCHANGED = "unchanged"  # already as wanted: nothing to do
    CHANGED = "changed"  # the server or its config file was changed
    DONE = "done"  # a backup taken, a rollback made
    BLOCKED = "blocked"  # a person with the rights must act
    NOTHING = "nothing"  # nothing to act on (no recorded change to roll back)
    SKIPPED = "skipped"  # not done on purpose, with the reason recorded (a backup skipped with skip_backup)

    @property
    def changed_something(self) -> bool:
        return self in (Outcome.CHANGED, Outcome.DONE)


_RANK = {Status.PASS: 0, Status.WARN: 1, Status.FAIL: 2}


def worst(statuses: Iterable[Status | str]) -> Status:
    """The worst of pass/warn/fail (pass for none)."""
    return max((Status(s) for s in statuses), key=_RANK.__getitem__, default=Status.PASS)


@dataclass(frozen=True)
class Check:
    """One verdict: what was checked, what was seen, and what to do about it."""

    name: str
    status: Status
    observed: str
    fix: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", Status(self.status))

    def to_json(self) -> dict[str, str]:
        return {"status": str(self.status), "observed": self.observed, "fix": self.fix}


@dataclass(frozen=True)
class SettingChange:
    """One setting a step changed (or would change): from -> to."""

    setting: str
    before: str | None
    after: str | None

    def to_json(self) -> dict[str, Any]:
        return {"setting": self.setting, "from": self.before, "to": self.after}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SettingChange:
        return cls(str(data["setting"]), data.get("from"), data.get("to"))


@dataclass(frozen=True)
class FileChange:
    """The config file a step wrote, the backup it kept, and the file's sha256 right before and after the write."""

    config_file: str
    written_file: str
    backup: str
    sha256_after: str
    sha256_before: str = ""  # recorded since issue 14; older records have none


#: Keys of the JSON form that are StepSummary fields; every other key is one of its `facts`.
_OWN_KEYS = ("schema", "step", "verdict", "result", "server", "version", "checks", "error")


@dataclass(frozen=True)
class StepSummary:
    """What one step recorded: its verdict, what it did, its checks, and figures of its own (`facts`).

    `facts` holds the step's own JSON-able figures (dbsize, drift, diff, backup, ...); typed
    accessors (`setting_changes`, `file_change`, `members`) read the ones other steps rely on.
    """

    step: str
    verdict: Status
    result: Outcome | None = None
    server: str = ""
    version: str = ""
    checks: tuple[Check, ...] = ()
    facts: Mapping[str, Any] = field(default_factory=dict)
    error: str = ""
    schema: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        object.__setattr__(self, "verdict", Status(self.verdict))
        if self.result is not None:
            object.__setattr__(self, "result", Outcome(self.result))
        clash = sorted(set(self.facts) & set(_OWN_KEYS))
        if clash:
            raise ValueError(f"facts may not use the summary's own keys: {', '.join(clash)}")

    # -- JSON -----------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        """The record's JSON form: the summary's fields and its facts side by side."""
        out: dict[str, Any] = {"schema": self.schema, "step": self.step, "verdict": str(self.verdict)}
        if self.result is not None:
            out["result"] = str(self.result)
        if self.server or self.version:
            out["server"], out["version"] = self.server, self.version
        out.update(self.facts)
        out["checks"] = {c.name: c.to_json() for c in self.checks}
        if self.error:
            out["error"] = self.error
        return json.loads(json.dumps(out, default=str))

    @classmethod
    def from_json(cls, data: Mapping[str, Any], step: str = "") -> StepSummary:
        """A summary from its JSON form (a record's `summary`); `step` for records older than the schema."""
        checks = tuple(Check(name, Status(c.get("status", "fail")), str(c.get("observed", "")), str(c.get("fix", "")))
                       for name, c in dict(data.get("checks") or {}).items())
        result = data.get("result")
        return cls(
            step=str(data.get("step") or step), verdict=_status(data.get("verdict")),
            result=Outcome(result) if result in Outcome._value2member_map_ else None,
            server=str(data.get("server", "")), version=str(data.get("version", "")), checks=checks,
            facts={k: v for k, v in data.items() if k not in _OWN_KEYS}, error=str(data.get("error", "")),
            schema=int(data.get("schema", 0)),
        )

    # -- reading --------------------------------------------------------------------------------
    def with_error(self, status: Status, error: str) -> StepSummary:
        """This summary (what the notebook recorded before it raised) marked as ended by `error`."""
        return replace(self, verdict=status, error=error)

    @property
    def failed_checks(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if c.status == Status.FAIL)

    @property
    def not_passing(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if c.status != Status.PASS)

    @property
    def changed_something(self) -> bool:
        return self.result is not None and self.result.changed_something

    @property
    def setting_changes(self) -> tuple[SettingChange, ...]:
        """The settings the step changed or planned (enable-aof: runtime; persist-config: the file)."""
        return tuple(SettingChange.from_json(c) for c in self.facts.get("changes", []))

    @property
    def file_change(self) -> FileChange | None:
        """persist-config: the file it wrote and the backup it kept (None for other steps)."""
        if "edited_file" not in self.facts and "backup" not in self.facts:
            return None
        return FileChange(config_file=str(self.facts.get("config_file", "")),
                          written_file=str(self.facts.get("edited_file") or self.facts.get("config_file", "")),
                          backup=str(self.facts.get("backup", "")),
                          sha256_after=str(self.facts.get("config_sha256_after", "")),
                          sha256_before=str(self.facts.get("config_sha256_before", "")))

    @property
    def members(self) -> dict[str, StepSummary]:
        """A fleet step: each target's own summary (empty for a single target's step). The fleet notebook records
        them as one JSON text (`FleetResult.summary`), a mapping is read too."""
        raw = self.facts.get("targets") or {}
        return {t: StepSummary.from_json(s, self.step) for t, s in dict(json.loads(raw) if isinstance(raw, str)
                                                                        else raw).items()}


def _status(value: Any) -> Status:
    return Status(value) if value in Status._value2member_map_ else Status.ERROR


# -- connection ---------------------------------------------------------------------------------------


def _param(default: Any, help_text: str, *, per_target: bool = True) -> Any:
    return field(default=default, metadata={"help": help_text, "per_target": per_target})


@dataclass(frozen=True)
class ConnectionSpec:
    """How to reach one server. The one source of the connection parameters: every notebook's
    parameters block, `connect()`, fleet entries, rehearse and the table in docs/parameters.md derive from it.

    Never holds a password: that comes from the environment variable named by `password_env`.
    """

    target: str = _param("sandbox", "redis://host:port/db, rediss://..., unix:///path.sock, "
                                    "redis+sentinel://h1:26379,h2:26379/mymaster (a Sentinel group), or sandbox "
                                    "(a throwaway server)")
    username: str = _param("", "ACL user name; empty for the default user")
    password_env: str = _param("REDIS_PASSWORD", "name of the environment variable that holds the password")
    tls_ca_file: str = _param("", "CA bundle for rediss:// targets")
    tls_cert_file: str = _param("", "client certificate (PEM) for rediss:// targets whose server wants one "
                                    "(tls-auth-clients yes)")
    tls_key_file: str = _param("", "the client certificate's private key (PEM; a path, never the key itself)")
    connect_timeout_s: float = _param(5.0, "seconds to wait for the connection", per_target=False)
    command_timeout_s: float = _param(10.0, "seconds to wait for each reply", per_target=False)
    config_command: str = _param("CONFIG", "the CONFIG command's name, if it was renamed with rename-command")
    discover: bool = _param(False, "find the whole replicated group of target (replicas, Sentinel, Cluster) and "
                                   "change it node by node", per_target=False)
    sentinel_password_env: str = _param("", "name of the environment variable that holds the Sentinels' own "
                                            "password; empty: the Sentinels want none", per_target=False)
    # The state this runbook fixes, as `runbook run` with no -f starts it (params/sandbox.yaml): Lab and CLI agree.
    sandbox_scenario: str = _param("runtime-aof", "target sandbox only: runtime-aof (AOF on at runtime, off in "
                                                  "redis.conf), or rdb-only (AOF off in both)", per_target=False)

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def per_target(cls) -> tuple[str, ...]:
        """What a fleet entry may set for itself (the timeouts and the sandbox are the run's)."""
        return tuple(f.name for f in fields(cls) if f.metadata["per_target"])

    @classmethod
    def from_parameters(cls, values: Mapping[str, Any]) -> ConnectionSpec:
        """The spec from a notebook's parameters (its globals()) or a merged params mapping; names it
        does not declare keep their defaults, and other names are ignored."""
        kwargs: dict[str, Any] = {}
        for f in fields(cls):
            if f.name in values and values[f.name] is not None:
                value = values[f.name]
                kwargs[f.name] = float(value) if f.type == "float" and isinstance(value, int) else value
        return cls(**kwargs)

    @classmethod
    def parameter_lines(cls, names: Iterable[str] | None = None) -> list[str]:
        """Lines of a notebook's parameters cell (`name: type = default  # help`), in the spec's order."""
        wanted = cls.names() if names is None else tuple(names)
        return [f"{f.name}: {f.type} = {repr(f.default) if isinstance(f.default, bool) else json.dumps(f.default)}"
                f"  # {f.metadata['help']}" for f in fields(cls) if f.name in wanted]

    @classmethod
    def markdown_rows(cls) -> list[str]:
        """The rows of the table in docs/parameters.md: | `name` | type | `default` | help |."""
        return [f"| `{f.name}` | {f.type} | `{json.dumps(f.default)}` | {f.metadata['help']} |" for f in fields(cls)]

    def replace(self, **changes: Any) -> ConnectionSpec:
        return replace(self, **changes)
