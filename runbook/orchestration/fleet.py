"""Fleets: several targets in one params file, inspected or online-tested in parallel in one kernel.

A params file lists `targets`, each a URL or a mapping that overrides the connection settings
for that target. Read-only work (inspection) and the online test cover every target at once in
one notebook (`07-fleet`); changing steps run per target, one after another, or up to `parallel` at once
(orchestration.rolling).
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from runbook.errors import ParameterError, RunbookError
from runbook.model import ConnectionSpec, Status, StepSummary, worst
from runbook.sandbox.handoff import connect, start_own
from runbook.server.target import check_target_parameter
from runbook.steps import gateway_view, inspect, test_persistence

#: What a target entry may set for itself (its connection, and its config file); everything else comes
#: from the params file as a whole.
PER_TARGET = (*ConnectionSpec.per_target(), "config_file")
#: The fleet notebook's checks, by the runbook step they stand for.
CHECKS = {"inspect": "inspect", "test-persistence": "online-test"}


def normalize_targets(raw: Any) -> list[dict[str, str]]:
    """The `targets` parameter as a list of {"target": url, ...} mappings; ParameterError when malformed."""
    if not isinstance(raw, list) or not raw:
        raise ParameterError("targets must be a non-empty list of target URLs or mappings with a `target` key")
    out: list[dict[str, str]] = []
    seen: set[str] = set()
    for n, entry in enumerate(raw, start=1):
        item = {"target": entry} if isinstance(entry, str) else entry
        if not isinstance(item, dict) or not isinstance(item.get("target"), str):
            raise ParameterError(f"targets entry {n} ({entry!r}) must be a URL or a mapping with a `target` key")
        unknown = sorted(set(item) - set(PER_TARGET))
        if unknown:
            raise ParameterError(f"targets entry {n} ({item['target']}): unknown key(s) {', '.join(unknown)}; "
                                 f"an entry may set {', '.join(PER_TARGET)}")
        bad = [k for k, v in item.items() if not isinstance(v, str)]
        if bad:
            raise ParameterError(f"targets entry {n} ({item['target']}): {', '.join(bad)} must be text")
        if item["target"] == "sandbox":
            raise ParameterError("targets cannot list `sandbox`: a fleet is made of real servers "
                                 "(start sandboxes yourself and list their redis:// URLs)")
        check_target_parameter(item["target"])
        if item["target"] in seen:
            raise ParameterError(f"targets lists {item['target']} twice")
        seen.add(item["target"])
        out.append(dict(item))
    return out


@dataclass
class Member:
    """One target of the fleet and what its check found (`error` when it could not be checked)."""

    target: str
    summary: StepSummary | None = None
    detail: Any = None  # the Inspection or TestResult, for the tables
    error: str = ""

    @property
    def verdict(self) -> Status:
        return Status.ERROR if self.error or self.summary is None else self.summary.verdict

    def first_failing(self) -> str:
        """Why it is not `pass`, in one short line: its error, or the first check with its verdict (a fail before
        any warning); "" when it passes."""
        if self.error or self.summary is None:
            return _short(self.error or "not checked")
        check = next((c for c in self.summary.checks if c.status == self.verdict and c.status != Status.PASS), None)
        return _short(f"{check.name}: {check.observed}") if check is not None else ""

    def row(self) -> dict[str, str]:
        """Its row of the fleet's summary table (the columns of `ROW`); a column it has no figure for is empty."""
        s, facts = self.summary, self.summary.facts if self.summary is not None else {}
        aof_file = next((d.file for d in getattr(self.detail, "drift", ()) if d.setting == "appendonly"), None)
        aof = "" if "aof_enabled" not in facts else \
            f"{'yes' if facts['aof_enabled'] else 'no'}/{aof_file if aof_file is not None else '?'}"
        return {"target": self.target, "verdict": str(self.verdict),
                "server": f"{s.server} {s.version}".strip() if s is not None and s.server else "",
                "role": str(facts.get("role", "")), "AOF runtime/file": aof,
                "drift": ", ".join(facts.get("drift", [])),
                "keys": f"{facts['dbsize']:,}" if isinstance(facts.get("dbsize"), int) else "",
                "first failing check": self.first_failing()}


#: The fleet summary table's columns (`Member.row`).
ROW = ("target", "verdict", "server", "role", "AOF runtime/file", "drift", "keys", "first failing check")
#: How long a table cell's reason may be; the whole of it is in the target's own record.
REASON_CHARS = 120


def _short(text: str) -> str:
    return text if len(text) <= REASON_CHARS else text[:REASON_CHARS - 3] + "..."


@dataclass
class FleetResult:
    check: str
    members: list[Member]

    @property
    def verdict(self) -> Status:
        verdicts = [m.verdict for m in self.members]
        return Status.ERROR if Status.ERROR in verdicts else worst(verdicts)

    def failing(self) -> list[str]:
        return [m.target for m in self.members if m.verdict in (Status.FAIL, Status.ERROR)]

    def rows(self) -> list[dict[str, str]]:
        """The fleet's summary table: one row per member (`Member.row`), in the fleet's order."""
        return [m.row() for m in self.members]

    def not_passing(self) -> list[Member]:
        """The members whose verdict is not `pass` (warn, fail, error), in the fleet's order: the ones the fleet
        document shows in full."""
        return [m for m in self.members if m.verdict != Status.PASS]

    def counts(self) -> dict[str, int]:
        """How many members have each verdict, worst first."""
        order = (Status.ERROR, Status.FAIL, Status.WARN, Status.PASS)
        found = [m.verdict for m in self.members]
        return {str(v): found.count(v) for v in (*order, *sorted(set(found) - set(order))) if v in found}

    def summary(self) -> StepSummary:
        """The fleet document's record: a summary per target (`targets`, one JSON text: the notebook saves it at
        every cell, and 1,000 targets' summaries as nested JSON cost a second a save; as text, 20 ms), and the
        ones that failed."""
        step = "inspect" if self.check == "inspect" else "test-persistence"
        members = {m.target: (m.summary if m.summary is not None and not m.error
                              else StepSummary(step, Status.ERROR, error=m.error)).to_json() for m in self.members}
        return StepSummary(step, self.verdict, facts={
            "fleet": True, "check": self.check, "failing": self.failing(),
            "warning": [m.target for m in self.members if m.verdict == Status.WARN],
            "targets": json.dumps(members, separators=(",", ":")),
        })


def _check_one(entry: Mapping[str, str], check: str, defaults: ConnectionSpec, opts: Mapping[str, Any]) -> Member:
    settings = dict(entry)
    config_file = settings.pop("config_file", "")
    member = Member(settings["target"])
    try:
        server = connect(defaults.replace(**settings))
        try:
            if check == "inspect":
                member.detail = inspect.inspect_target(server, config_file=config_file)
                if opts.get("gateway"):  # what an LLM gateway keeps there (a bounded sample; not in the verdict)
                    member.detail = member.detail.with_gateway(gateway_view.view_gateway(server,
                                                                                         member.detail.runtime))
                member.summary = member.detail.summary()
            else:  # without apply, only what the online test would write (`plan_test`)
                test = test_persistence.online_test if opts["apply"] else test_persistence.plan_test
                member.detail = test(server, keys=opts["keys"], ttl_s=opts["ttl_s"], timeout_s=opts["timeout_s"])
                member.summary = member.detail.summary(server.identify())
        finally:
            server.client.close()
    except (RunbookError, OSError) as err:
        member.error = str(err)
    except Exception as err:  # noqa: BLE001  (redis errors and the like: one target must not sink the fleet)
        member.error = f"{type(err).__name__}: {err}"
    return member


def check_fleet(targets: Sequence[Any], defaults: ConnectionSpec, *, check: str = "inspect", parallel: int = 16,
                keys: int = 1000, ttl_s: int = 3600, timeout_s: float = 120.0, apply: bool = False,
                gateway: bool = False) -> FleetResult:
    """Inspect (read-only) or online-test every target, `parallel` at a time; one target's error stays its own.

    The online test writes its canaries only with `apply`; without it, each target's plan says what it would write.

    `defaults` is the connection (username, password_env, timeouts, ...) for entries that do not set their own.
    With `gateway`, each inspection also samples the key classes an LLM gateway keeps (`gateway_view`).
    """
    if check not in CHECKS.values():
        raise ParameterError(f"check must be one of {', '.join(CHECKS.values())}, got {check!r}")
    if parallel < 1:
        raise ParameterError(f"parallel must be at least 1, got {parallel}")
    entries = normalize_targets(list(targets))
    opts = {"keys": keys, "ttl_s": ttl_s, "timeout_s": timeout_s, "apply": apply, "gateway": gateway}
    with ThreadPoolExecutor(max_workers=min(parallel, len(entries)), thread_name_prefix="fleet") as pool:
        members = list(pool.map(lambda e: _check_one(e, check, defaults, opts), entries))
    return FleetResult(check, members)


def demo_targets() -> list[str]:
    """Two throwaway sandboxes, the second with AOF on at runtime but off in its file, removed when the kernel exits.

    What the fleet notebook checks when it is opened without `targets` (in JupyterLab, or by nbval). Run again,
    it stops the two it started before.
    """
    return [sb.url for sb in start_own("fleet-demo", ("rdb-only", "runtime-aof"), keys=300)]
