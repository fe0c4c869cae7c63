"""The archived HTML of one step: the executed notebook as a report an auditor reads.

A header first (verdict, what changed, change id, run id, UTC start and end, user@host, commit, parameters), then
the notebook's prose and outputs; its code stays in the executed `.ipynb` beside the page. Papermill's failure
banner gives way to one that names the step, the cell and the error, and what had been changed. stderr (a
library's warning, a progress bar) is left out of the page, which says how many outputs it left out. One shared
stylesheet (`runbook.evidence.page`), no JavaScript.
"""

from __future__ import annotations

import copy
import functools
import getpass
import os
import socket
import threading
from dataclasses import dataclass, field
from datetime import datetime
from html import escape
from typing import Any, Mapping

from runbook.evidence.change_report import describe
from runbook.evidence.page import page
from runbook.model import Outcome, Status, StepSummary

#: Papermill's tag on the two markdown cells it inserts into a notebook that raised (its banner and anchor).
PAPERMILL_ERROR_TAG = "papermill-error-cell-tag"
#: The id of the failing cell's note, as papermill's banner links it.
ERROR_ANCHOR = "papermill-error-cell"
#: One rendering at a time: a page waits for the warm-up (`warm_up`) rather than share the exporter with it.
_RENDERING = threading.Lock()


def operator() -> str:
    """Who runs the step, as user@host."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no user name for this uid (a container)
        user = str(os.geteuid())
    return f"{user}@{socket.gethostname()}"


@dataclass(frozen=True)
class StepHeader:
    """What the top of a step's page says: the runner's facts about the step, and how it ended."""

    step: str
    target: str
    summary: StepSummary
    change_id: str
    run_id: str
    started: datetime
    ended: datetime
    commit: str = "unknown"
    #: Papermill's error (ename, evalue, cell: its index in the executed notebook), when the notebook raised.
    error: Mapping[str, str] | None = None
    #: What the notebook said it was about to write (`runbook.evidence.journal.intend`), if it got that far.
    intent: Mapping[str, Any] | None = None
    host: str = field(default_factory=operator)

    @property
    def title(self) -> str:
        return f"{self.step} on {self.target} \N{EM DASH} {self.summary.verdict} \N{EM DASH} change {self.change_id}"


def changes(summary: StepSummary) -> str:
    """What the step changed (or, planned, would change) in a few words; "" when nothing (the change report's
    wording, `runbook.evidence.change_report.describe`)."""
    if not (summary.changed_something or summary.result == Outcome.PLANNED):
        return ""
    return describe(summary)


def what_had_changed(header: StepHeader) -> str:
    """The failure banner's second sentence: what the step had changed on its target before it stopped."""
    s = header.summary
    said = changes(s)
    if s.facts.get("put_back"):
        return "Nothing is left to undo: the step's own code put back what it had changed before it stopped."
    if s.changed_something:
        return f"It had changed: {said or s.result}."
    if s.facts.get("unfinished") or header.intent:
        what = s.facts.get("unfinished") or (header.intent or {}).get("summary", "")
        return (f"It may have changed: {what} (it had announced that write and stopped before recording what it "
                "did): look at the target before running again.")
    return "Nothing had been changed: the step stopped before it announced a write."


def render(nb: Any, header: StepHeader | None = None) -> str:
    """`nb` (an executed notebook, nbformat) as a page: the header, then its prose and outputs, no code."""
    nb = _page_copy(nb)
    nb.cells = [c for c in nb.cells if PAPERMILL_ERROR_TAG not in c.get("metadata", {}).get("tags", [])]
    failed_at = _failing_cell(nb) if header is not None and header.error else None
    where = _where(nb, failed_at) if failed_at is not None else ""
    left_out = 0
    for cell in nb.cells:
        if cell.cell_type == "code":
            kept = [_folded(o) if o.get("output_type") == "error" else o for o in cell.get("outputs", [])
                    if not _stderr(o)]
            left_out += len(cell.get("outputs", [])) - len(kept)
            cell.outputs = kept
    if failed_at is not None:
        nb.cells.insert(failed_at, _failure_note())
    # A code cell shows only its outputs: those without any are left out (the parameters, the imports).
    nb.cells = [c for c in nb.cells if c.cell_type != "code" or c.get("outputs")]
    with _RENDERING:
        body, _ = exporter().from_notebook_node(nb)
    top = _header_html(nb, header, where) if header is not None else ""
    foot = (f'<p class="muted">{left_out} stderr output(s) (warnings, progress) are left out of this page; the '
            "executed notebook beside it keeps them.</p>") if left_out else ""
    return page(header.title if header is not None else _first_heading(nb), f"{top}\n{body}\n{foot}")


#: The outputs' machine-readable data (the summary, the intent) starts so: the runner reads it from the .ipynb, and
#: a page shows its one line of text instead.
MACHINE_DATA = "application/vnd.runbook."


def _page_copy(nb: Any) -> Any:
    """A copy of `nb` to render, without its outputs' machine-readable data: a fleet's summary holds every target's
    record (2 MB for 1,000 targets), and copying it, twice, was most of what rendering such a page cost."""
    held = []
    for cell in nb.cells:
        for out in cell.get("outputs", []) if cell.get("cell_type") == "code" else []:
            data = out.get("data") or {}
            held += [(data, k, data.pop(k)) for k in [k for k in data if k.startswith(MACHINE_DATA)]]
    try:
        return copy.deepcopy(nb)
    finally:
        for data, k, v in held:
            data[k] = v


@functools.lru_cache(maxsize=1)
def exporter() -> Any:
    """nbconvert's HTMLExporter on its `basic` template (cells only: the page and its stylesheet are ours), with
    every input and prompt left out."""
    from nbconvert import HTMLExporter  # noqa: PLC0415  (heavy: only when rendering)

    return HTMLExporter(template_name="basic", exclude_input=True, exclude_input_prompt=True,
                        exclude_output_prompt=True, anchor_link_text="")


def warm_up(after: threading.Thread | None = None) -> threading.Thread:
    """Import nbconvert and compile its templates in the background (about 1 s, once per process), so the first
    step's page is rendered as fast as the next; `after`: a thread to wait for first (the kernel's own warm-up,
    which should not share the cores with this one)."""
    def work() -> None:
        if after is not None:
            after.join()
        import nbformat  # noqa: PLC0415  (heavy: only when rendering)

        warm = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# warm-up\n\n*a* `b`")])
        warm.cells.append(nbformat.v4.new_code_cell(outputs=[nbformat.v4.new_output(
            "display_data", data={"image/png": "", "text/html": "<p>x</p>"})]))
        with _RENDERING:
            exporter().from_notebook_node(warm)

    thread = threading.Thread(target=work, name="html-warm-up", daemon=True)
    thread.start()
    return thread


def _stderr(output: Mapping[str, Any]) -> bool:
    return output.get("output_type") == "stream" and output.get("name") == "stderr"


def _folded(error: Any) -> Any:
    """An error output as its last line, with the traceback folded under it (the banner already says what failed)."""
    import nbformat  # noqa: PLC0415  (heavy: only when rendering)
    from nbconvert.filters import ansi2html  # noqa: PLC0415

    trace = ansi2html("\n".join(error.get("traceback", [])))
    line = escape(f"{error.get('ename', '')}: {error.get('evalue', '')}")
    return nbformat.v4.new_output("display_data", data={
        "text/html": f'<details class="traceback"><summary>{line}</summary><pre>{trace}</pre></details>'})


def _failing_cell(nb: Any) -> int | None:
    """The index of the cell that raised, if one did."""
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and (any(o.get("output_type") == "error" for o in cell.get("outputs", []))
                                         or cell.get("metadata", {}).get("papermill", {}).get("exception")):
            return i
    return None


def _section(nb: Any, index: int) -> str:
    """The `##` heading the cell at `index` is under ("" when none)."""
    for cell in reversed(nb.cells[:index]):
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("## ") or line.startswith("# "):
                    return line.lstrip("#").strip()
    return ""


def _where(nb: Any, index: int) -> str:
    """The failing cell (HTML), for a reader who does not see its code: its number, its section, its first line."""
    cell = nb.cells[index]
    code = next((line for line in cell.source.splitlines() if line.strip()), "")
    count = cell.get("execution_count")
    section = _section(nb, index)
    return (f"cell In [{count}]" if count else f"cell {index}") + (
        f" in \N{LEFT DOUBLE QUOTATION MARK}{escape(section)}\N{RIGHT DOUBLE QUOTATION MARK}" if section else "") + (
        f" (<code>{escape(code)}</code>)" if code else "")


def _failure_note() -> Any:
    """A markdown cell put before the failing one: where the banner's link lands (the error follows it)."""
    import nbformat  # noqa: PLC0415  (heavy: only when rendering)

    return nbformat.v4.new_markdown_cell(f'<div id="{ERROR_ANCHOR}" class="banner error"><strong>The step stopped '
                                         "here</strong>, with this error (its traceback folded under it):</div>")


def _header_html(nb: Any, h: StepHeader, where: str) -> str:
    s = h.summary
    verdict = f'<span class="verdict {escape(str(s.verdict))}">{escape(str(s.verdict))}</span>'
    detail = ", ".join(f"{c.name} {c.status}" for c in s.not_passing)
    rows = [("verdict", f"{verdict} {escape(detail)}".strip())]
    if s.result is not None:
        said = changes(s) if s.changed_something or s.result == Outcome.PLANNED else ""
        if said and s.result == Outcome.PLANNED and not said.startswith("would "):
            said = f"would change {said}"
        rows.append(("result", escape(f"{s.result}: {said}" if said else str(s.result))))
    if s.server or s.version:
        rows.append(("server", escape(f"{s.server} {s.version}".strip())))
    took = (h.ended - h.started).total_seconds()
    rows += [
        ("change id", f"<code>{escape(h.change_id)}</code>"),
        ("run id", f"<code>{escape(h.run_id)}</code>"),
        ("time (UTC)", f"{_utc(h.started)} to {_utc(h.ended)} ({took:.1f} s)"),
        ("host", escape(h.host)),
        ("commit", f"<code>{escape(h.commit)}</code>"),
    ]
    params = dict(nb.metadata.get("papermill", {}).get("parameters") or {})
    if params:
        rows.append(("parameters", escape(", ".join(f"{k}={v}" for k, v in params.items()))))
    table = "\n".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows)
    banner = _banner(h, where) if h.error else ""
    return (f'<header class="header">\n<h1>{escape(h.step)} on {escape(h.target)} {verdict}</h1>\n{banner}'
            f'<table>\n{table}\n</table>\n<p class="muted">The code of every cell is in the executed notebook '
            "beside this page (.ipynb); this page shows what it printed.</p>\n</header>")


def _banner(h: StepHeader, where: str) -> str:
    """Papermill's "An Exception was encountered", said for a reader: the step, the cell, the error, and what had
    been changed."""
    s = h.summary
    stopped = "was interrupted" if s.verdict == Status.INTERRUPTED else "failed"
    at = f' at <a href="#{ERROR_ANCHOR}">{where}</a>' if where else ""
    return (f'<div class="banner error"><p><strong>{escape(h.step)} on {escape(h.target)} {stopped}</strong>{at}: '
            f"{escape(s.error)}</p>\n<p>{escape(what_had_changed(h))}</p></div>\n")


def _utc(at: datetime) -> str:
    return at.strftime("%Y-%m-%d %H:%M:%S.") + f"{at.microsecond // 1000:03d} UTC"


def _first_heading(nb: Any) -> str:
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    return "Notebook"
