"""The change report's group part: the replicated group before and after the change, for a group run.

A group run's inspections record the group they discovered (fact `topology`, `Topology.to_json()`). The report
shows the first one (before the change) and the last one (after it): a table per moment, one row per node (role,
AOF at runtime and in its file, replication link, lag), and the Sentinels' view (master, config epoch) at each, so a
failover during the change stands out. A run whose inspections recorded no group shows nothing of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from html import escape
from typing import Any, Mapping, Sequence

from runbook.server.topology import Topology


@dataclass(frozen=True)
class Moment:
    """The group as one inspection of the change saw it."""

    label: str  # "before" or "after"
    step: int  # the inspection's number in the change
    topology: Topology


def moments(steps: Sequence[Any]) -> list[Moment]:
    """The group before the change (the first inspection that recorded one) and after it (the last, when it is
    another); empty when no inspection recorded a group. `steps`: the report's StepLines."""
    seen = []
    for s in steps:
        data = s.summary.facts.get("topology") if s.step == "inspect" else None
        if isinstance(data, Mapping):
            try:
                seen.append((s.n, Topology.from_json(data)))
            except (KeyError, TypeError, ValueError):  # a record this version cannot read: leave it out
                continue
    if not seen:
        return []
    out = [Moment("before", *seen[0])]
    return out + [Moment("after", *seen[-1])] if len(seen) > 1 else out


def sentinel_lines(found: Sequence[Moment]) -> list[str]:
    """The Sentinels' view at each moment (master, config epoch), and whether it changed between them."""
    views = [(m, m.topology.sentinel) for m in found if m.topology.sentinel is not None]
    lines = [f"{m.label}: {v.name} master {v.master}, config epoch {v.epoch}, {len(v.sentinels)} Sentinel(s)"
             + (", a failover in progress" if v.failover_in_progress else "") for m, v in views]
    if len(views) == 2:
        (_, a), (_, b) = views
        same = (a.master, a.epoch) == (b.master, b.epoch)
        lines.append("the master and epoch did not change" if same
                     else f"CHANGED: master {a.master} -> {b.master}, epoch {a.epoch} -> {b.epoch} (a failover)")
    return lines


def _e(value: Any) -> str:
    return escape(str(value))


def _table(m: Moment) -> str:
    rows = []
    for n in sorted(m.topology.nodes, key=lambda n: (n.shard, n.role != "primary", n.address)):
        aof = "pass" if n.aof_runtime == n.aof_file == "yes" else "fail" if n.drift or n.aof_runtime == "no" else ""
        link = "" if n.role == "primary" else n.link
        rows.append(f"<tr><td>{_e(n.address)}</td><td>{_e(n.role)}</td><td class=\"{aof}\">{_e(n.aof_runtime)} / "
                    f"{_e(n.aof_file)}</td><td>{_e(link)}</td><td class=\"num\">{_e(n.lag_bytes)}</td>"
                    f"<td>{_e(n.error[:120])}</td></tr>")
    return (f'<div><p><strong>{_e(m.label)}</strong> (step {m.step}: {_e(m.topology.kind)}, '
            f'{len(m.topology.nodes)} nodes)</p><table id="group-{_e(m.label)}"><tr><th>node</th><th>role</th>'
            f"<th>AOF runtime / file</th><th>link</th><th>lag (bytes)</th><th>error</th></tr>{''.join(rows)}"
            "</table></div>")


def section(steps: Sequence[Any]) -> str:
    """The page's group section (HTML), or "" for a change whose inspections recorded no group."""
    found = moments(steps)
    if not found:
        return ""
    sentinel = "".join(f"<p>Sentinel {_e(line)}</p>" for line in sentinel_lines(found))
    return ('<h2 id="group" class="top">The group before and after</h2>'
            f'<div class="top">{"".join(_table(m) for m in found)}</div>{sentinel}')
