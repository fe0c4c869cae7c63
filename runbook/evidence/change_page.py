"""A change report as a page (`runbook.evidence.change_report`): self-contained HTML, and a PDF where Chromium is.

The top fits one screen at 1280x800: the verdict and, for a failed change, what failed, what had been changed and
how to undo it; the run's facts; what changed setting by setting; then, side by side, the commands sent and the
config diff (the plan's beside the applied one); the backups and the proofs. The steps follow, each with a link to
its evidence (relative: the report sits in reports/ of the same archive) and its record hash. The shared
stylesheet (`runbook.evidence.page`), a few rules of the page's own, no JavaScript. Every block of text is capped
(`MAX_BLOCK`), so a report stays small whatever a step recorded.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from datetime import datetime
from html import escape
from pathlib import Path
from typing import Any, Sequence

from runbook.evidence import group_report
from runbook.evidence.change_report import ChangeReport, StepLine, put_back, utc, what_it_did
from runbook.evidence.page import page
from runbook.model import worst
from runbook.server.configfile import mask_secrets

log = logging.getLogger(__name__)

#: The most characters one block (a diff, a server's commands) shows; the step's evidence has the rest.
MAX_BLOCK = 24_000
#: Seconds Chromium has to print the PDF.
PDF_TIMEOUT_S = 60

#: The page's own rules, on top of the shared stylesheet: a compact header and two columns.
STYLE = """<style>
.top { display: grid; grid-template-columns: 1fr 1fr; gap: 0 18px; font-size: 13px; }
.top h2, h2.top { font-size: 14px; margin: 8px 0 3px; }
.top table { margin: 2px 0 6px; font-size: 12px; } .top th, .top td { padding: 1px 6px; } .top p { margin: 2px 0; }
.facts td, .facts th { border: none; padding: 0 12px 0 0; font-size: 13px; }
.header { padding: 4px 12px; margin-bottom: 4px; } .header p { margin: 2px 0; font-size: 12px; }
h1 { margin: 0 0 4px; }
.alert { border: 2px solid var(--bad); background: var(--bad-bg); color: var(--bad); border-radius: 6px;
         padding: 4px 12px; margin: 4px 0; font-size: 13px; }
.alert p { margin: 2px 0; } .alert code { color: #1f2328; }
pre.block { margin: 2px 0 4px; padding: 4px 6px; max-height: 190px; overflow: auto; white-space: pre-wrap;
            word-break: break-all; font-size: 11px; }
@media print { pre.block { max-height: none; } }
.hash { font: 11px ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; word-break: break-all; }
.nowrap { white-space: nowrap; } td.num { text-align: right; }
</style>"""


def render(r: ChangeReport) -> str:
    """The report as one self-contained HTML page."""
    body = [STYLE, _head(r), '<div class="top">', '<div>', _changed(r), _backups(r), _proofs(r), '</div>',
            '<div>', _commands(r), _diffs(r), '</div>', '</div>', group_report.section(r.steps), _steps(r)]
    return page(f"Change {r.change_id}: {r.verdict} ({', '.join(r.targets) or 'no target'})", "\n".join(body))


def _e(value: Any) -> str:
    return escape(str(value))


def _block(text: str) -> str:
    text = mask_secrets(text)
    if len(text) > MAX_BLOCK:
        text = text[:MAX_BLOCK] + f"\n... ({len(text) - MAX_BLOCK} more characters: see the step's evidence)"
    return f'<pre class="block">{_e(text)}</pre>'


def _badge(word: str, css: str) -> str:
    return f'<span class="verdict {_e(css)}">{_e(word)}</span>'


def _duration(started: str, ended: str) -> str:
    try:
        seconds = (datetime.fromisoformat(ended) - datetime.fromisoformat(started)).total_seconds()
    except ValueError:
        return ""
    return f"{seconds:.1f} s"


def _head(r: ChangeReport) -> str:
    steps = f"{len(r.steps)} step(s): " + ", ".join(
        f"{n} {status}" for status, n in _tally(s.status for s in r.steps))
    targets = _e(", ".join(r.targets) or "-")
    if r.limit:
        left = list(r.limit.get("left_out") or [])
        targets += (f'<br><span id="f-limit">--limit {_e(r.limit.get("pattern", ""))}: left out {len(left)} '
                    f"target(s) of the file{': ' + _e(', '.join(left[:20])) if left else ''}"
                    f"{f' and {len(left) - 20} more' if len(left) > 20 else ''}</span>")
    facts = [
        ("change id", f"<code>{_e(r.change_id)}</code>", "targets", targets),
        ("run by", _e(r.operator or "unknown"), "commit", f"<code>{_e(r.commit)}</code> (runbook {_e(r.version)})"),
        ("started (UTC)", _e(utc(r.started)), "ended (UTC)",
         f"{_e(utc(r.ended))} ({_e(_duration(r.started, r.ended))})"),
        ("steps", _e(steps), "exit code", _e(r.exit_code)),
    ]
    rows = "".join(f'<tr><th>{a}</th><td id="f-{a.split()[0]}">{b}</td><th>{c}</th><td id="f-{c.split()[0]}">{d}'
                   "</td></tr>" for a, b, c, d in facts)
    return (f'<h1 id="verdict">Change report {_badge(r.verdict, r.css)} <code>{_e(r.change_id)}</code></h1>'
            f"{_alert(r)}"
            f'<div class="header"><table class="facts">{rows}</table>'
            f'<p class="muted" id="f-signature">Signature: {_e(r.signature())}</p></div>')


def _tally(statuses: Any) -> list[tuple[str, int]]:
    out: dict[str, int] = {}
    for s in statuses:
        out[str(s)] = out.get(str(s), 0) + 1
    return list(out.items())


def _alert(r: ChangeReport) -> str:
    """For a change that failed, blocked or stopped: what failed, what had been changed, how to undo it."""
    failing = r.failing()
    if r.css not in ("fail", "blocked", "interrupted") and not failing:
        return ""
    what = [f"<strong>{_e(s.step)} on {_e(s.target)} {_e(s.status)}</strong>: "
            f"{_e(s.summary.error or '; '.join(f'{c.name}: {c.observed}' for c in s.summary.failed_checks))}"
            for s in failing]
    if r.stopped_by:
        what.append(f"the run was stopped by {_e(r.stopped_by)} at a safe point")
    if r.archive_failure:
        what.append(f"the evidence archive failed: {_e(r.archive_failure)}")
    changed = r.changed_lines()
    undo = r.undo()
    back = put_back(r.steps)
    none = f"nothing left: {'; '.join(back)}" if back else "nothing (no step had changed anything)"
    return ('<div class="alert" id="failure">'
            f"<p>What failed: {'; '.join(what) or _e(r.verdict)}</p>"
            f"<p>Already changed: {_e('; '.join(changed)) if changed else _e(none)}"
            + (f"; {_e('; '.join(back))}" if changed and back else "") + "</p>"
            + (f"<p>To undo: {'; '.join(f'<code>{_e(u)}</code>' for u in undo)}</p>" if undo else "")
            + "</div>")


def _changed(r: ChangeReport) -> str:
    planned = r.planned_only
    rows = r.changes if planned else r.done
    title = ("Nothing was changed: plan only. What would change" if planned else "What changed")
    if not rows:
        lines = r.changed_lines()
        text = "; ".join(lines) if lines else "nothing was changed" + (
            "; nothing would change" if not planned else "")
        return f'<h2 id="changed">{_e(title)}</h2><p id="changed-none">{_e(text)}</p>'
    cells = "".join(f"<tr><td>{_e(c.setting)}</td><td>{_e(c.where)}</td><td class=\"nowrap\"><code>{_e(c.before)}"
                    f"</code> -&gt; <code>{_e(c.after)}</code></td><td>{_e(c.step)} on {_e(c.target)}</td></tr>"
                    for c in rows)
    return (f'<h2 id="changed">{_e(title)}</h2><table id="changes"><tr><th>setting</th><th>where</th>'
            f"<th>before -&gt; after</th><th>step</th></tr>{cells}</table>")


def _commands(r: ChangeReport) -> str:
    parts = []
    for target, groups in r.commands().items():
        if not groups:
            parts.append(f"<p>{_e(target)}: no write command (read-only steps)</p>")
            continue
        text = "\n".join(f"# {who}\n" + "\n".join(lines) for who, lines in groups)
        parts.append(f"<p><strong>{_e(target)}</strong></p>{_block(text)}")
    return ('<h2 id="commands">Commands sent</h2><p class="muted">write commands only, secrets masked, data writes '
            "folded by key pattern (xN: N keys)</p>" + "".join(parts))


def _diffs(r: ChangeReport) -> str:
    out = []
    for d in r.diffs():
        s: StepLine = d["step"]
        head = f"<h2>Config diff: {_e(s.step)} on {_e(s.target)}</h2>"
        names = ""
        if d["planned_directives"] or d["applied_directives"]:
            same = set(d["planned_directives"]) == set(d["applied_directives"])
            names = (f"<p>plan names: {_e(', '.join(d['planned_directives']) or '-')}; applied: "
                     f"{_e(', '.join(d['applied_directives']) or '-')} "
                     f"({'the same directives' if same else 'they differ'})</p>")
        if d["planned"] and d["applied"]:
            out.append(f'{head}{names}<table style="width:100%;table-layout:fixed"><tr><th>planned</th><th>applied'
                       f'</th></tr><tr><td>{_block(d["planned"])}</td><td>{_block(d["applied"])}</td></tr></table>')
        elif d["applied"]:
            out.append(f"{head}{names}<p>applied</p>{_block(d['applied'])}")
        else:
            out.append(f"{head}{names}<p>planned (nothing was written)</p>{_block(d['planned'])}")
    return "".join(out) or '<h2>Config diff</h2><p>no config file was planned or written</p>'


def _backups(r: ChangeReport) -> str:
    rows = []
    for b in r.backups():
        s = b["step"]
        if b["skipped"]:
            rows.append(f"<tr><td>{_e(b['kind'])}</td><td colspan=2>skipped: {_e(b['skipped'])}</td></tr>")
            continue
        state = "" if b["done"] else " (planned)"
        files = "<br>".join(f'{_e(name)} <span class="hash">sha256 {_e(sha or "?")}</span>'
                            for name, sha in b["files"].items() if name != b["where"])
        sha = b["files"].get(b["where"])
        where = _e(b["where"]) + (f' <span class="hash">sha256 {_e(sha)}</span>' if sha else "")
        rows.append(f"<tr><td>{_e(b['kind'])}{state}</td><td>{where}{'<br>' + files if files else ''}</td>"
                    f"<td>{_e(s.step)} on {_e(s.target)}</td></tr>")
    return ('<h2 id="backups">Backups</h2>' + (f"<table>{''.join(rows)}</table>" if rows else "<p>none taken</p>"))


def _proofs(r: ChangeReport) -> str:
    by_step: dict[int, list[tuple[StepLine, str, str, str]]] = {}
    for proof in r.proofs():
        by_step.setdefault(proof[0].n, []).append(proof)
    rows = []
    for proofs in by_step.values():
        status = worst(p[2] for p in proofs if p[2] in ("pass", "warn", "fail"))
        seen = "; ".join(f"<strong>{_e(name)}</strong> {_e(st) + ': ' if st != 'pass' else ''}{_e(obs)}"
                         for _, name, st, obs in proofs)
        rows.append(f"<tr><td>{_e(proofs[0][0].step)}</td><td class=\"{_e(status)}\">{_e(status)}</td>"
                    f"<td>{seen}</td></tr>")
    counts = "; ".join(f"{t}: {a} before, {b} after" for t, (a, b) in r.key_counts().items())
    return ('<h2 id="proofs">Proofs</h2>' + (f"<p>keys: {_e(counts)}</p>" if counts else "")
            + (f"<table>{''.join(rows)}</table>" if rows else "<p>no proof was run</p>"))


def _steps(r: ChangeReport) -> str:
    rows = []
    for s in r.steps:
        link = (f'<a href="../{_e(s.html)}">evidence</a>' if s.html else "")
        ipynb = next((f for f in s.files if f.endswith(".ipynb")), "")
        link += f' <a href="../{_e(ipynb)}">.ipynb</a>' if ipynb else ""
        record = (f'seq {s.seq}<br><span class="hash">{_e(s.record_hash)}</span>' if s.record_hash
                  else "not archived")
        said = s.summary.error or what_it_did(s) or ", ".join(f"{c.name} {c.status}" for c in s.summary.not_passing)
        note = " (before the change: what it fixes)" if s.fixes else ""
        rows.append(f'<tr><td class="num">{s.n}</td><td>{_e(s.step)}</td><td>{_e(s.target)}</td>'
                    f'<td class="{_e(s.status)}">{_e(s.status)}</td><td>{_e(s.changed)}</td>'
                    f"<td>{_e(utc(s.started)[11:])} ({_e(_duration(s.started, s.ended))})</td>"
                    f"<td>{_e(said[:300])}{_e(note)}</td><td>{link}</td><td>{record}</td></tr>")
    return ('<h2 id="steps" class="top">Steps</h2><table id="step-table"><tr><th>#</th><th>step</th><th>target</th>'
            "<th>status</th><th>changed</th><th>started (UTC)</th><th>what</th><th>evidence</th>"
            f"<th>record (sha256 of its index line)</th></tr>{''.join(rows)}</table>")


def chromium() -> str | None:
    """Debian's Chromium, where it is installed."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


def render_pdf(html: Path, browser: str | None = None) -> Path | None:
    """`html` printed to a PDF beside it by headless Chromium; None (logged) when there is none or it fails."""
    browser = browser or chromium()
    if browser is None:
        log.warning("no Chromium here (apt-get install chromium): the change report has no PDF, only %s", html)
        return None
    out = html.with_suffix(".pdf")
    cmd: Sequence[str] = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-pdf-header-footer",
                          f"--print-to-pdf={out}", html.resolve().as_uri()]
    try:
        subprocess.run(cmd, capture_output=True, timeout=PDF_TIMEOUT_S, check=True)
    except (OSError, subprocess.SubprocessError) as err:
        log.warning("Chromium could not print %s to PDF (%s): the change report has no PDF", html, err)
        out.unlink(missing_ok=True)
        return None
    return out if out.is_file() and out.stat().st_size else None
