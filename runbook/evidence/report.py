"""Tables and plots for the notebooks: what a reader of the evidence looks at.

Only the notebooks import this module (it pulls in pandas and matplotlib). It takes the steps'
results (an Inspection, LatencyStats, a FleetResult) by their shape, so it stays below the steps layer.
"""

from __future__ import annotations

import os
import time
import warnings
from datetime import datetime, timezone
from html import escape
from typing import Any, Sequence

import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import Markdown
from matplotlib.figure import Figure
from pandas.io.formats.style import Styler

from runbook.evidence.journal import RUN_ID_ENV
from runbook.model import Check
from runbook.server.aof import INTERRUPTED
from runbook.server.settings import save_rules

COLOURS = {
    "pass": "background-color: #d4edda; color: #155724",
    "same": "background-color: #d4edda; color: #155724",
    "warn": "background-color: #fff3cd; color: #856404",
    "unknown": "background-color: #fff3cd; color: #856404",
    "fail": "background-color: #f8d7da; color: #721c24",
    "drift": "background-color: #f8d7da; color: #721c24",
}


def _colour(value: object) -> str:
    return COLOURS.get(str(value), "")


def styled(df: pd.DataFrame, column: str = "status") -> Styler:
    """`df` with its status column coloured pass/warn/fail, left-aligned text, no index."""
    return (
        df.style.map(_colour, subset=[column])
        .hide(axis="index")
        .set_properties(**{"text-align": "left"})
    )


def age(seconds: float) -> str:
    """A duration as a short age: 42s, 7m 3s, 5h 2m, 3d 4h."""
    s = int(max(0, seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60}m"
    return f"{s // 86400}d {s % 86400 // 3600}h"


def when(ts: float, now: float | None = None) -> str:
    """A UNIX time as UTC and as an age."""
    now = time.time() if now is None else now
    stamp = datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"{stamp} ({age(now - ts)} ago)"


def identity_table(insp: Any) -> pd.DataFrame:
    i = insp.identity
    rows = [
        ("server", i.label), ("mode", i.mode), ("role", i.role),
        ("config_file", i.config_file or "(none: started without a config file)"),
        ("data dir", insp.data_dir), ("uptime", age(i.uptime_s)), ("keys (DBSIZE)", f"{insp.dbsize:,}"),
        ("used_memory", f"{insp.used_memory / 1024**2:,.1f} MiB"),
    ]
    return pd.DataFrame(rows, columns=["", "value"]).set_index("")


def save_policy_table(insp: Any) -> pd.DataFrame:
    rules = save_rules(insp.runtime.get("save", ""))
    return pd.DataFrame(
        [(f"{s}s ({age(s)})", c, f"save if at least {c} key change(s) within {age(s)}") for s, c in rules],
        columns=["window", "changes", "meaning"],
    )


def settings_table(insp: Any) -> Styler:
    return styled(_drift_frame(insp.drift))


def _drift_frame(drift: Sequence[Any]) -> pd.DataFrame:
    return pd.DataFrame(
        [(d.setting, d.runtime, d.file if d.file is not None else "", d.status, d.note) for d in drift],
        columns=["setting", "runtime", "after restart (file)", "status", "note"],
    )


_TIME_FIELDS = ("rdb_last_save_time",)
_DURATION_FIELDS = ("rdb_last_bgsave_time_sec", "rdb_current_bgsave_time_sec",
                    "aof_last_rewrite_time_sec", "aof_current_rewrite_time_sec")


def info_table(insp: Any) -> pd.DataFrame:
    """INFO persistence, times shown as ages."""
    rows = []
    for k, v in insp.info.items():
        shown: Any = v
        if k in _TIME_FIELDS and int(v):
            shown = when(int(v), insp.at)
        elif k in _DURATION_FIELDS and int(v) >= 0:
            shown = f"{v}s"
        elif k.endswith("_time_sec") and int(v) < 0:
            shown = "never"
        rows.append((k, str(shown)))
    return pd.DataFrame(rows, columns=["field", "value"]).set_index("field")


def files_table(insp: Any) -> pd.DataFrame:
    if not insp.data_dir_readable:
        return pd.DataFrame([("(data dir not readable from here)", "", "")], columns=["file", "size", "age"])
    rows = [(f.role, str(f.path), f"{f.size:,} B", age(insp.at - f.mtime)) for f in insp.files]
    if insp.aof is not None and insp.aof.layout == "absent":
        rows.append(("aof", "(none on disk)", "", ""))
    return pd.DataFrame(rows, columns=["role", "file", "size", "age"])


def checks_table(checks: Sequence[Check]) -> Styler:
    df = pd.DataFrame([(c.name, c.status, c.observed, c.fix) for c in checks],
                      columns=["check", "status", "observed", "fix"])
    return styled(df)


def plot_persistence(insp: Any) -> Figure | Markdown:
    """Time since the last save against each save-policy window, and the files on disk: the panels that have
    something to show, or a sentence when neither has."""
    rules = save_rules(insp.runtime.get("save", ""))
    sizes: dict[str, float] = {}
    for f in insp.files:
        sizes[f.role] = sizes.get(f.role, 0) + f.size / 1024
    if not rules and not sizes:
        return Markdown("No persistence plot: the server has no save policy, and its data dir cannot be read from "
                        "here.")
    panels = int(bool(rules)) + int(bool(sizes))
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 3.2), squeeze=False, constrained_layout=True)
    if rules:
        left = axes[0][0]
        since = max(0, insp.at - int(insp.info.get("rdb_last_save_time", insp.at)))
        changes = int(insp.info.get("rdb_changes_since_last_save", 0))
        labels = [f"save {s} {c}" for s, c in rules]
        colours = ["#d9534f" if changes >= c and since > s else "#5bc0de" for s, c in rules]
        left.barh(labels, [s for s, _ in rules], color=colours)
        left.axvline(since, color="black", linestyle="--", label=f"last save {age(since)} ago, {changes} changes since")
        left.set_xscale("log")
        left.legend(loc="lower right", fontsize=8)
        left.set_title("RDB: time since last save vs save policy (s)")
    if sizes:
        right = axes[0][-1]
        right.bar(list(sizes), list(sizes.values()), color="#5cb85c")
        right.set_ylabel("KiB")
        right.set_title("Persistence files on disk")
    plt.close(fig)
    return fig


def plan_table(rows: Sequence[Any]) -> Styler:
    """Setting, current, desired, and whether it changes (rows with .setting/.current/.desired/.change)."""
    df = pd.DataFrame([(r.setting, r.current, r.desired, "change" if r.change else "same") for r in rows],
                      columns=["setting", "current", "desired", "status"])
    return df.style.map(lambda v: COLOURS["warn"] if v == "change" else COLOURS["pass"],
                        subset=["status"]).hide(axis="index")


def progress(total_s: float, label: str = "waiting for the AOF rewrite", done: str = "AOF rewrite finished") -> Any:
    """A progress callback(elapsed_s, info) for the AOF wait, shown only once there is something to wait for
    (never in a plan-only run).

    Under `runbook run` (the runner names the step's run in the kernel's environment) nothing moves in the
    evidence: one line, shown when the wait starts and replaced in place when it ends ("AOF rewrite finished in
    0.4 s (deadline 300 s)"). Opened by hand (JupyterLab): tqdm.auto's bar against the deadline.
    """
    if os.environ.get(RUN_ID_ENV):
        return _line_progress(total_s, label, done)
    from tqdm import TqdmWarning  # noqa: PLC0415  (only when there is something to wait for)

    with warnings.catch_warnings():  # without ipywidgets tqdm.auto falls back to its text bar, saying so
        warnings.simplefilter("ignore", TqdmWarning)
        from tqdm.auto import tqdm  # noqa: PLC0415

    bars: list[Any] = []

    def update(elapsed: float, info: Any) -> None:
        if not bars:
            bars.append(tqdm(total=round(total_s, 1), desc=label, unit="s", mininterval=0.5, leave=True,
                             bar_format="{desc}: {n:.1f}/{total:.0f}s {postfix}"))
        bar = bars[0]
        bar.n = round(min(elapsed, total_s), 1)
        bar.set_postfix_str("interrupted" if info == INTERRUPTED else
                            f"rewrite_in_progress:{info.get('aof_rewrite_in_progress')}", refresh=False)
        bar.refresh()
        if _aof_wait_over(info) or info == INTERRUPTED:
            bar.close()

    return update


#: Seconds between updates of the one line `progress` shows under `runbook run` (a killed run's saved notebook
#: says how long it had waited, within this); the wait's end and an interrupt are always shown.
LINE_EVERY_S = 0.5


def _line_progress(total_s: float, label: str, done: str) -> Any:
    from IPython.display import display  # noqa: PLC0415  (only inside a kernel)

    handles: list[Any] = []
    shown = [0.0]

    def update(elapsed: float, info: Any) -> None:
        if _aof_wait_over(info):
            line = f"{done} in {elapsed:.1f} s (deadline {total_s:g} s)"
        elif info == INTERRUPTED:
            line = f"{label}: interrupted after {elapsed:.1f} s of {total_s:g} s"
        elif not handles or elapsed - shown[0] >= LINE_EVERY_S:
            line, shown[0] = f"{label}: {elapsed:.1f} s of {total_s:g} s", elapsed
        else:
            return
        if handles:
            handles[0].update({"text/plain": line}, raw=True)
        else:
            handles.append(display({"text/plain": line}, raw=True, display_id=True))

    return update


def _aof_wait_over(info: Any) -> bool:
    return bool(int(info.get("aof_enabled", 0)) and not int(info.get("aof_rewrite_in_progress", 0))
                and not int(info.get("aof_rewrite_scheduled", 0)))


def latency_table(stats: Any, latest_fork_usec: int, rewrite_s: float | None, seconds: float) -> pd.DataFrame:
    s = stats.summary() if stats.count else {}
    rows = [
        ("PING samples during the change", s.get("samples", 0)),
        ("p50 latency", f"{s['p50_ms']:.2f} ms" if s else "n/a"),
        ("p99 latency", f"{s['p99_ms']:.2f} ms" if s else "n/a"),
        ("max latency", f"{s['max_ms']:.2f} ms" if s else "n/a"),
        ("probe errors", s.get("errors", 0)),
        ("latest_fork_usec", f"{latest_fork_usec:,} µs"),
        ("server's rewrite time (aof_last_rewrite_time_sec)", f"{rewrite_s:.0f} s" if rewrite_s is not None else "n/a"),
        ("CONFIG SET to rewrite complete (this notebook)", f"{seconds:.3f} s"),
    ]
    return pd.DataFrame(rows, columns=["figure", "value"]).set_index("figure")


def plot_latency(stats: Any, title: str = "PING latency on a second connection during the change") -> Figure | Markdown:
    """The probe's samples against time, with their p99; a sentence when there are none."""
    if not stats.count:
        return Markdown(f"No latency plot: all {stats.errors} PINGs of the probe failed." if stats.errors else
                        "No latency plot: no change was made, so nothing was probed.")
    fig, ax = plt.subplots(figsize=(11, 3), constrained_layout=True)
    t = [x for x, _ in stats.samples]
    ms = [y for _, y in stats.samples]
    ax.plot(t, ms, ".", markersize=3, color="#337ab7")
    ax.axhline(stats.percentile(99), color="#d9534f", linestyle="--", label=f"p99 {stats.percentile(99):.2f} ms")
    ax.legend(loc="upper right", fontsize=8)
    ax.set_xlabel("seconds since the first CONFIG SET")
    ax.set_ylabel("ms")
    ax.set_title(title)
    plt.close(fig)
    return fig


def drift_rows(insp: Any) -> pd.DataFrame:
    """Only the settings a restart would change."""
    return pd.DataFrame([(d.setting, d.runtime, d.file) for d in insp.drift if d.status == "drift"],
                        columns=["setting", "runtime", "after restart (file)"])


def changes_table(changes: Sequence[Any]) -> Styler:
    """Settings the file will get: value to write and what a restart would give now."""
    df = pd.DataFrame([(c.setting, c.runtime, c.file if c.file is not None else "(not in the file)", "change")
                       for c in changes], columns=["setting", "write", "after restart now", "status"])
    return styled(df) if len(df) else pd.DataFrame([("(none)", "", "", "same")],
                                                   columns=df.columns).style.hide(axis="index")


def show_diff(diff: str, empty: str = "(no change to the file)") -> Any:
    """A unified diff as a monospaced block, added lines green and removed lines red (in JupyterLab and
    in the archived HTML); plain text elsewhere."""
    colours = {"+": "#155724; background-color: #d4edda", "-": "#721c24; background-color: #f8d7da"}
    rows = []
    for line in (diff or empty).splitlines():
        style = colours.get(line[:1], "") if not line.startswith(("+++", "---")) else "#555"
        rows.append(f'<span style="color: {style}">{escape(line)}</span>' if style else escape(line))

    class Diff:
        def _repr_html_(self) -> str:
            return '<pre style="font-size: 12px; line-height: 1.35">' + "\n".join(rows) + "</pre>"

        def __repr__(self) -> str:
            return diff or empty

    return Diff()


def crash_table(rows: Sequence[dict[str, Any]]) -> pd.DataFrame | Markdown:
    """Acknowledged writes lost per setup, beside the loss each setup is expected to allow; a sentence when the
    mode crashed nothing."""
    if not rows:
        return Markdown("No server was crashed in this run, so there are no lost writes to count (the crash test "
                        "runs only in mode `crash`).")
    return pd.DataFrame(rows).rename(columns={
        "acknowledged": "acknowledged writes", "recovered": "after restart", "lost": "lost",
        "lost_pct": "lost %", "expected_process_crash": "expected: process crash (measured here)",
        "expected_os_crash": "expected: OS crash / power loss (not measured)"}).set_index("setup")


def plot_crash(rows: Sequence[dict[str, Any]]) -> Figure | None:
    """Writes lost per setup, as bars; None (nothing shown) when nothing was crashed: `crash_table` says so."""
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(9, 3), constrained_layout=True)
    names = [r["setup"] for r in rows]
    lost = [r["lost"] for r in rows]
    bars = ax.bar(names, lost, color=["#d9534f" if v else "#5cb85c" for v in lost])
    ax.bar_label(bars, labels=[f"{r['lost']} of {r['acknowledged']}" for r in rows], fontsize=8)
    ax.set_ylabel("acknowledged writes lost")
    ax.set_title("kill -9 during a write load: acknowledged writes lost per setup")
    plt.close(fig)
    return fig


class HtmlTable:
    """A plain HTML table (one string, not a pandas Styler per row): what a table of a thousand rows is shown as;
    its text form is `text`."""

    def __init__(self, html: str, text: str) -> None:
        self.html, self.text = html, text

    def _repr_html_(self) -> str:
        return self.html

    def __repr__(self) -> str:
        return self.text


#: The fleet table's cell colours, by the verdict word (the same as `styled`'s).
_CELL = {**COLOURS, "error": COLOURS["fail"], "blocked": COLOURS["fail"]}


def fleet_table(result: Any) -> HtmlTable:
    """The fleet at a glance: one row per target (`FleetResult.rows`: target, verdict, server, role, AOF
    runtime/file, drift, key count, the first failing check), the verdicts counted in its caption. One HTML table
    whatever the fleet's size, about 300 bytes a row."""
    counts = ", ".join(f"{n} {verdict}" for verdict, n in result.counts().items())
    rows = result.rows()
    columns = list(rows[0]) if rows else []
    cell = "<td>{}</td>".format
    body = "".join(
        "<tr>" + "".join(f'<td style="{_CELL.get(v, "")}">{escape(v)}</td>' if k == "verdict" else cell(escape(v))
                         for k, v in row.items()) + "</tr>\n" for row in rows)
    html = (f'<table class="fleet" style="text-align: left"><caption>{len(rows)} target(s): {escape(counts)}'
            "</caption><thead><tr>" + "".join(f"<th>{escape(c)}</th>" for c in columns) + "</tr></thead>\n"
            f"<tbody>\n{body}</tbody></table>")
    return HtmlTable(html, f"{len(rows)} target(s): {counts}")


#: How many targets that are not `pass` the fleet document shows in full; the rest are rows of the table only.
FLEET_SECTIONS = 50


def fleet_sections(result: Any, limit: int = FLEET_SECTIONS) -> None:
    """A heading and the checks table of each target that is not `pass`, the first `limit` of them, in the fleet's
    order; a line for the ones left out, and for a fleet where every target passes."""
    from IPython.display import Markdown, display  # noqa: PLC0415  (only inside a kernel)

    shown = result.not_passing()
    if not shown:
        display(Markdown(f"All {len(result.members)} target(s) pass: nothing to show beyond the table."))
        return
    for m in shown[:limit]:
        display(Markdown(f"### {m.target}: {m.verdict}"))
        if m.error:
            display(Markdown(f"Could not be checked: `{m.error}`"))
            continue
        if getattr(m.detail, "would", ""):  # the online test's plan (no apply)
            display(Markdown(f"Plan only, nothing was written; with `apply = True` it would: {m.detail.would}"))
        display(checks_table(m.detail.checks))
        if getattr(m.detail, "drift", None):
            drifted = [d for d in m.detail.drift if d.status == "drift"]
            if drifted:
                display(styled(_drift_frame(drifted)))
    rest = len(shown) - limit
    if rest > 0:
        display(Markdown(f"{rest} more target(s) that are not `pass` are shown only in the table above, which "
                         f"lists all {len(result.members)}; each has its full checks in its own record in the "
                         "evidence archive (`runbook archive list --json --target TARGET`)."))


#: The colour of a node in the group's picture, by its AOF state (runtime/file).
AOF_COLOURS = {"on": "#5cb85c", "drift": "#f0ad4e", "off": "#d9534f", "unknown": "#bbbbbb"}


def _aof_state(node: Any) -> str:
    """on (runtime and file), drift (they differ), off (both no), unknown (not read)."""
    if node.error or node.aof_runtime == "?":
        return "unknown"
    if node.drift:
        return "drift"
    return "on" if node.aof_runtime == "yes" else "off"


def topology_table(topology: Any) -> Styler | Markdown:
    """One row per node of the group (`Topology.rows()`), AOF and drift coloured, the Sentinels' view as its
    caption; a sentence when the run did not discover the group."""
    if topology is None:
        return Markdown("The group was not discovered: pass `discover = True` (or a `redis+sentinel://` target) to "
                        "see every node of it.")
    df = pd.DataFrame(topology.rows())
    aof = {"yes": COLOURS["pass"], "no": COLOURS["warn"], "?": COLOURS["unknown"]}
    cols = [c for c in ("aof_runtime", "aof_file") if c in df]
    style = df.style.map(lambda v: aof.get(str(v), ""), subset=cols).hide(axis="index")
    if "drift" in df:
        style = style.map(lambda v: COLOURS["drift"] if v is True or v == "yes" else "", subset=["drift"])
    view = topology.sentinel
    if view is not None:
        style = style.set_caption(f"Sentinel view of {view.name}: master {view.master}, config epoch {view.epoch}, "
                                  f"quorum {view.quorum}, flags {view.flags}"
                                  + (", A FAILOVER IS IN PROGRESS" if view.failover_in_progress else "")
                                  + f"; {len(view.sentinels)} Sentinel(s): {', '.join(view.sentinels)}")
    return style.set_properties(**{"text-align": "left"})


def plot_topology(topology: Any) -> Figure | None:
    """The group as a picture: each primary above its replicas (a dashed red line for a link down, the lag in
    bytes on the line), the Sentinels above when there are some, each node coloured by its AOF state; None
    without a group (`topology_table` says why)."""
    if topology is None:
        return None
    primaries = sorted(topology.primaries(), key=lambda n: n.address)
    width = max(1, *(len(topology.replicas_of(p.address)) for p in primaries)) if primaries else 1
    sentinels = list(topology.sentinel.sentinels) if topology.sentinel is not None else []
    columns = max(len(primaries) * width, len(sentinels), 1)
    shift = (columns - len(primaries) * width) / 2  # the data nodes centred under the Sentinels
    fig, ax = plt.subplots(figsize=(min(12.0, 1.6 + 2.2 * columns), 2.6 + 0.8 * bool(sentinels)),
                           constrained_layout=True)

    def box(x: float, y: float, text: str, colour: str) -> None:
        ax.text(x, y, text, ha="center", va="center", fontsize=7,
                bbox={"boxstyle": "round,pad=0.35", "facecolor": colour, "edgecolor": "#444444"})

    where: dict[str, tuple[float, float]] = {}
    for i, p in enumerate(primaries):
        centre = shift + i * width + (width - 1) / 2
        where[p.address] = (centre, 1.0)
        for j, r in enumerate(sorted(topology.replicas_of(p.address), key=lambda n: n.address)):
            x = shift + i * width + j
            up = r.link == "up"
            ax.plot([centre, x], [1.0, 0.0], color="#444444" if up else "#d9534f", linestyle="-" if up else "--",
                    linewidth=1, zorder=0)
            ax.text((centre + x) / 2, 0.5, f"lag {r.lag_bytes} B" if up else f"link {r.link}", fontsize=6,
                    ha="center", color="#444444" if up else "#d9534f")
            box(x, 0.0, f"{r.address}\nreplica\nAOF {r.aof_runtime}/{r.aof_file}", AOF_COLOURS[_aof_state(r)])
        slots = f"\nslots {p.slots}" if p.slots else ""
        box(centre, 1.0, f"{p.address}\nprimary{slots}\nAOF {p.aof_runtime}/{p.aof_file}", AOF_COLOURS[_aof_state(p)])
    for k, s in enumerate(sentinels):
        x = k + (columns - len(sentinels)) / 2
        master = where.get(topology.sentinel.master)
        if master:
            ax.plot([x, master[0]], [2.0, 1.0], color="#7952b3", linestyle=":", linewidth=1, zorder=0)
        box(x, 2.0, f"{s}\nsentinel", "#e2d9f3")
    for state, colour in AOF_COLOURS.items():
        ax.scatter([], [], color=colour, marker="s", label=f"AOF {state}")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7, frameon=False)
    ax.set_xlim(-0.8, columns - 0.2)
    ax.set_ylim(-0.5, 2.5 if sentinels else 1.5)
    ax.axis("off")
    ax.set_title(f"{topology.kind}: {len(topology.nodes)} nodes (AOF runtime/file)", fontsize=9)
    plt.close(fig)
    return fig


def fleet_gateway_sections(result: Any, limit: int = 50) -> None:
    """`gateway_section` for each inspected member of a fleet that has one (the first `limit`); nothing when the
    fleet was inspected without `gateway`."""
    from IPython.display import display  # noqa: PLC0415  (only inside a kernel)

    shown = [m for m in result.members if getattr(m.detail, "gateway", None) is not None]
    for member in shown[:limit]:
        display(Markdown(f"### {member.target}"))
        gateway_section(member.detail.gateway)
    if len(shown) > limit:
        display(Markdown(f"{len(shown) - limit} more target(s): their key classes are in their own records "
                         "(`gateway_keys`)."))


def gateway_section(view: Any) -> None:
    """What a gateway keeps in its Redis (`runbook.steps.gateway_view.GatewayView`): the sample's budgets, one row
    per key class, the memory settings and the advice; nothing at all for None (inspect without `gateway`)."""
    if view is None:
        return
    from IPython.display import display  # noqa: PLC0415  (only inside a kernel)

    display(Markdown(f"{view.budget_line()}  \n{view.memory_line()}"))
    rows = view.rows()
    if rows:
        display(pd.DataFrame(rows).style.hide(axis="index").set_properties(**{"text-align": "left"}))
    else:
        display(Markdown("No keys: the gateway has written nothing here yet."))
    if view.advice:
        display(checks_table(view.advice))
