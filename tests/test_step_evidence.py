"""A step's archived HTML reads as a report (issue 16, item 2 and the step half of item 4).

Two runs of real notebooks through the runner, on a real sandbox: a change (enable-aof with apply, then an
inspection, on one shared kernel) and a step that fails (an inspection of a target that refuses connections).
The rest renders notebooks built here, without a kernel.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import nbformat
import pytest
from helpers import index, run_json

from runbook.evidence import report, step_page
from runbook.evidence.summary import SUMMARY_MIME
from runbook.model import Check, Outcome, Status, StepSummary
from runbook.orchestration.kernel import shared_kernel
from runbook.sandbox.throwaway import free_port
from runbook.server.probe import LatencyStats

KIB = 1024
#: Lines of the notebooks' code that a page showing inputs would hold.
CODE = ("import runbook", "ConnectionSpec.from_parameters(globals())", "report.checks_table(", "runbook.record(")


def _header_of(html: str) -> str:
    return html[html.index('<header class="header">'):html.index("</header>")]


def _title(html: str) -> str:
    found = re.search(r"<title>(.*?)</title>", html, re.S)
    assert found, "the page has no <title>"
    return found.group(1)


@pytest.fixture(scope="module")
def change(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """`runbook run enable-aof inspect -p apply true` on an rdb-only sandbox: AOF is switched on (the wait, the
    latency probe and its plot), then the server inspected by the same kernel's second notebook (it fails: AOF is
    not in the config file yet)."""
    archive = tmp_path_factory.mktemp("change")
    rc, out, err = run_json(archive, "enable-aof", "inspect", "-p", "apply", "true", "-p", "sandbox_scenario",
                            "rdb-only")
    steps = {s["notebook"]: s for s in out.get("steps", [])}
    # AOF on at runtime and not yet in the file: the inspection fails its config_drift check (exit 1).
    assert rc == 1 and steps["inspect"]["summary"]["checks"]["config_drift"]["status"] == "fail", err
    assert steps["enable-aof"]["summary"]["result"] == "changed"
    records = {r["notebook"]: r for r in index(archive)}
    return {"archive": archive, "out": out, "steps": steps, "records": records}


def _page(change: dict[str, Any], step: str) -> tuple[str, dict[str, Any]]:
    nb = json.loads(Path(change["steps"][step]["ipynb"]).read_text())
    return Path(change["steps"][step]["html"]).read_text(), nb


@pytest.mark.notebook
@pytest.mark.parametrize("step", ["enable-aof", "inspect"])
def test_page_is_a_report_without_code(change: dict[str, Any], step: str) -> None:
    html, nb = _page(change, step)
    assert [c for c in CODE if c in html] == []
    assert "In&nbsp;[" not in html and 'class="input' not in html
    # The executed notebook keeps the code, so the check above could have failed.
    sources = "".join("".join(c["source"]) for c in nb["cells"])
    assert [c for c in CODE if c not in sources] == []
    # One stylesheet of our own, no JavaScript, no lab template.
    assert "<script" not in html and "jp-Notebook" not in html and html.count("<style>") == 1


@pytest.mark.notebook
@pytest.mark.parametrize("step", ["enable-aof", "inspect"])
def test_header_names_verdict_change_run_time_host_and_commit(change: dict[str, Any], step: str) -> None:
    html, _ = _page(change, step)
    rec, res = change["records"][step], change["steps"][step]
    cid = change["out"]["change_id"]
    assert _title(html) == f"{step} on sandbox \N{EM DASH} {rec['status']} \N{EM DASH} change {cid}"
    header = _header_of(html)
    assert f'<span class="verdict {rec["status"]}">{rec["status"]}</span>' in header
    started, ended = (datetime.fromisoformat(rec[k]).astimezone(timezone.utc) for k in ("started", "ended"))
    for value in (cid, res["run_id"], rec["git_commit"], step_page.operator(), step_page._utc(started),
                  step_page._utc(ended)):
        assert value in header, value
    # The header comes first, before the notebook's own cells.
    assert 0 < html.index('<header class="header">') < html.index('<div class="cell')


@pytest.mark.notebook
def test_change_header_says_what_changed(change: dict[str, Any]) -> None:
    html, _ = _page(change, "enable-aof")
    header = _header_of(html)
    assert "changed: " in header and "appendonly no -&gt; yes (runtime)" in header
    assert "apply=True" in header  # the parameters, since the injected cell is not shown


@pytest.mark.notebook
def test_no_history_error_stderr_or_json_dump(change: dict[str, Any]) -> None:
    files = [Path(s[k]) for s in change["steps"].values() for k in ("ipynb", "html")]
    assert [p.name for p in files if "Session/line number" in p.read_text()] == []
    for step in ("enable-aof", "inspect"):
        html, nb = _page(change, step)
        outputs = [o for c in nb["cells"] for o in c.get("outputs", [])]
        # No stderr at all, not even in the executed notebook: the AOF wait's bar is gone from there too.
        assert [o for o in outputs if o.get("name") == "stderr"] == [], step
        assert "output_stderr" not in html and "stderr output(s)" not in html
        # The summary is in its own mime type (the runner read it back), with one short line for a reader.
        (summary,) = [o for o in outputs if SUMMARY_MIME in o.get("data", {})]
        line = "".join(summary["data"]["text/plain"])
        assert "\n" not in line and len(line) < 120 and line.startswith(f"summary recorded: {step}")
        assert '"checks"' not in html and '"schema"' not in html
    html, _ = _page(change, "enable-aof")
    assert re.search(r"AOF rewrite finished in \d+\.\d s \(deadline 300 s\)", html)
    assert "waiting for the AOF rewrite" not in html


@pytest.mark.notebook
def test_sizes_under_the_limits(change: dict[str, Any]) -> None:
    """A step's page <= 150 KiB; an inspection's evidence (.ipynb + .html) <= 200 KiB, its plot included."""
    for step, res in change["steps"].items():
        html = Path(res["html"]).stat().st_size
        assert html <= 150 * KIB, (step, html)
    inspect = change["steps"]["inspect"]
    html, nb = (Path(inspect[k]).stat().st_size for k in ("html", "ipynb"))
    assert html + nb <= 200 * KIB, (html, nb)
    page, _ = _page(change, "inspect")
    assert page.count("data:image/png;base64,") == 1  # the persistence plot is there, and counted


@pytest.mark.notebook
def test_failing_step_gets_a_banner_that_names_step_cell_and_error(tmp_path: Path) -> None:
    target = f"redis://127.0.0.1:{free_port()}"  # nothing listens there: the connection is refused
    rc, out, err = run_json(tmp_path, "inspect", "-p", "target", target)
    assert rc == 1, err
    (step,) = out["steps"]
    html = Path(step["html"]).read_text()
    assert _title(html) == f"inspect on {target} \N{EM DASH} error \N{EM DASH} change {out['change_id']}"
    banner = html[html.index('<div class="banner error">'):html.index("</header>")]
    assert f"inspect on {target} failed" in banner
    assert "cell In [" in banner and "Connect and identify" in banner and "TargetUnreachable" in banner
    assert "Nothing had been changed" in banner
    # Papermill's own banner and anchor text are gone from the page (they stay in the .ipynb).
    assert "An Exception was encountered" not in html and "encountered an exception here" not in html
    assert "An Exception was encountered" in Path(step["ipynb"]).read_text()
    assert f'id="{step_page.ERROR_ANCHOR}"' in html and '<details class="traceback">' in html


def test_shared_kernel_keeps_no_history() -> None:
    """The clash behind "Session/line number was not unique in database" comes and goes with the history writer's
    timing (3 notebooks of 5 in a `make demo` run): the kernel asserts it has no history to write to."""
    with shared_kernel() as kernel:
        kernel.start()
        client = kernel.ready().blocking_client()
        client.start_channels()
        try:
            client.wait_for_ready(timeout=60)
            seen: list[str] = []
            client.execute_interactive("print(get_ipython().history_manager.enabled)", timeout=60,
                                       output_hook=lambda m: seen.append(m["content"].get("text", "")))
        finally:
            client.stop_channels()
    assert "".join(seen).strip() == "False"


# -- without a kernel --------------------------------------------------------------------------------------------

def _executed(error_cell: bool = True) -> Any:
    """A notebook as papermill leaves one that raised in its `## Apply` section: its banner cell on top, its
    anchor before the failing cell, a stderr output, and the summary recorded before the raise."""
    v4 = nbformat.v4
    cells = [
        v4.new_markdown_cell("# Enable AOF at runtime"),
        v4.new_code_cell("target = 'sandbox'", metadata={"tags": ["injected-parameters"]}),
        v4.new_markdown_cell("## Apply\n\nThe change."),
        v4.new_code_cell("result = enable_aof.apply_enable(server, pre, plan)", execution_count=7, outputs=[
            v4.new_output("stream", name="stderr", text="a library's warning\n"),
            v4.new_output("stream", name="stdout", text="result: changed\n"),
        ]),
    ]
    if error_cell:
        cells.append(v4.new_code_cell("enable_aof.raise_on_failure(verified)", execution_count=8, outputs=[
            v4.new_output("error", ename="VerificationFailed", evalue="aof_enabled is 0",
                          traceback=["\x1b[0;31mVerificationFailed\x1b[0m: aof_enabled is 0"])]))
        cells.insert(len(cells) - 1, v4.new_markdown_cell("papermill anchor", metadata={
            "tags": [step_page.PAPERMILL_ERROR_TAG]}))
        cells.insert(0, v4.new_markdown_cell("An Exception was encountered at 'In [8]'.", metadata={
            "tags": [step_page.PAPERMILL_ERROR_TAG]}))
    nb = v4.new_notebook(cells=cells)
    nb.metadata["papermill"] = {"parameters": {"target": "sandbox", "apply": True}}
    return nb


def _header(summary: StepSummary, *, error: bool = True, intent: dict[str, Any] | None = None) -> Any:
    at = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=timezone.utc)
    return step_page.StepHeader(
        "enable-aof", "redis://10.0.0.5:6379", summary, "c0ffee123456", "r" * 32, at, at, commit="abc123+dirty",
        error={"ename": "VerificationFailed", "evalue": "aof_enabled is 0", "cell": "4"} if error else None,
        intent=intent, host="ops@db-admin")


CHANGED = StepSummary("enable-aof", Status.ERROR, Outcome.CHANGED, facts={
    "changes": [{"setting": "appendonly", "from": "no", "to": "yes"}]}, error="VerificationFailed: aof_enabled is 0")


@pytest.mark.parametrize("summary, intent, said", [
    (CHANGED, None, "It had changed: appendonly no -> yes (runtime)."),
    (StepSummary("enable-aof", Status.ERROR, error="ChangeFailed: x"), {"summary": "CONFIG SET appendonly yes"},
     "It may have changed: CONFIG SET appendonly yes"),
    (StepSummary("enable-aof", Status.INTERRUPTED, facts={"unfinished": "CONFIG SET appendonly yes"}), None,
     "It may have changed: CONFIG SET appendonly yes"),
    (StepSummary("enable-aof", Status.ERROR, error="PreconditionFailed: x"), None,
     "Nothing had been changed: the step stopped before it announced a write."),
    # interrupted after its intent, and its own code put the change back: nothing may be left
    (StepSummary("enable-aof", Status.INTERRUPTED, facts={"put_back": "The server was left as found: appendonly no."}),
     {"summary": "CONFIG SET at runtime (appendonly no -> yes)"},
     "Nothing is left to undo: the step's own code put back what it had changed before it stopped."),
])
def test_what_had_changed(summary: StepSummary, intent: dict[str, Any] | None, said: str) -> None:
    assert step_page.what_had_changed(_header(summary, intent=intent)).startswith(said)


def test_banner_replaces_papermills_and_names_the_failing_cell() -> None:
    html = step_page.render(_executed(), _header(CHANGED))
    banner = html[html.index('<div class="banner error">'):html.index("</header>")]
    assert ('enable-aof on redis://10.0.0.5:6379 failed</strong> at <a href="#papermill-error-cell">cell In [8] in '
            "\N{LEFT DOUBLE QUOTATION MARK}Apply\N{RIGHT DOUBLE QUOTATION MARK} "
            "(<code>enable_aof.raise_on_failure(verified)</code>)</a>: VerificationFailed: aof_enabled is 0") in banner
    assert "It had changed: appendonly no -&gt; yes (runtime)." in banner
    assert "An Exception was encountered" not in html and "papermill anchor" not in html
    # The anchor the banner links to sits right before the error, whose traceback is folded under its last line.
    anchor, error = html.index(f'id="{step_page.ERROR_ANCHOR}"'), html.index("<summary>VerificationFailed")
    assert anchor < error and html.index("result: changed") < anchor
    assert "\x1b" not in html


def test_header_fields_and_stderr_left_out() -> None:
    html = step_page.render(_executed(error_cell=False), _header(
        StepSummary("enable-aof", Status.WARN, Outcome.CHANGED, server="redis", version="7.2.4",
                    checks=(Check("appendfsync", Status.WARN, "always"),),
                    facts={"changes": [{"setting": "appendonly", "from": "no", "to": "yes"}]}), error=False))
    assert _title(html) == "enable-aof on redis://10.0.0.5:6379 \N{EM DASH} warn \N{EM DASH} change c0ffee123456"
    header = _header_of(html)
    for text in ("appendfsync warn", "changed: appendonly no -&gt; yes (runtime)", "redis 7.2.4", "c0ffee123456",
                 "r" * 32, "2026-01-02 03:04:05.678 UTC to 2026-01-02 03:04:05.678 UTC", "ops@db-admin",
                 "abc123+dirty", "target=sandbox, apply=True"):
        assert text in header, text
    assert 'class="banner' not in header  # no error, no banner
    assert "a library&#x27;s warning" not in html and "a library's warning" not in html
    assert "1 stderr output(s)" in html and "result: changed" in html
    assert "target = &#x27;sandbox&#x27;" not in html and "apply_enable" not in html


def test_plots_with_nothing_to_plot_are_a_sentence() -> None:
    from IPython.display import Markdown
    from matplotlib.figure import Figure

    assert isinstance(report.plot_latency(LatencyStats((), 0)), Markdown)
    assert isinstance(report.plot_latency(LatencyStats(((0.0, 0.2), (0.1, 0.3)), 0)), Figure)
    assert isinstance(report.crash_table([]), Markdown) and report.plot_crash([]) is None

    class Insp:  # what plot_persistence reads of an Inspection
        runtime = {"save": ""}
        files: tuple = ()
        info: dict = {}
        at = 0.0

    assert isinstance(report.plot_persistence(Insp()), Markdown)
    Insp.runtime = {"save": "3600 1"}
    fig = report.plot_persistence(Insp())
    assert isinstance(fig, Figure) and len(fig.axes) == 1  # only the panel that has something to show


def test_a_planned_backups_result_says_would_once() -> None:
    planned = StepSummary("backup", Status.PASS, Outcome.PLANNED, facts={"location": "/var/backups/redis"})
    header = _header_of(step_page.render(_executed(error_cell=False), _header(planned, error=False)))
    assert "planned: would back up to /var/backups/redis" in header and "would change would" not in header
