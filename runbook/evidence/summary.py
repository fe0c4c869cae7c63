"""The step summary in an executed notebook: recorded by the notebook, read back by the runner."""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any

from runbook.model import StepSummary
from runbook.server.commandlog import COMMANDS_SENT, sent_in_step

SUMMARY_MIME = "application/vnd.runbook.summary+json"
#: The change id of the run, set by the runner for its kernel: what a step leaves behind (a config backup) carries it.
CHANGE_ID_ENV = "RUNBOOK_CHANGE_ID"


def change_id() -> str:
    """The change id of the run this notebook belongs to; "" for a notebook opened by hand."""
    return os.environ.get(CHANGE_ID_ENV, "")


def record(summary: StepSummary) -> None:
    """Show `summary` in the notebook, tagged so the runner can find it in the executed file: the whole summary
    in its own mime type, and one line for a reader (the verdict is in the page's header, the rest in the record)."""
    from IPython.display import display  # noqa: PLC0415  (only inside a kernel)

    summary = with_commands(summary, sent_in_step())
    display({SUMMARY_MIME: summary.to_json(), "text/plain": summary_line(summary)}, raw=True)


def with_commands(summary: StepSummary, lines: list[str]) -> StepSummary:
    """`summary` with the write commands its step sent (`commands_sent`, `runbook.server.commandlog`), unless it
    lists them already."""
    if COMMANDS_SENT in summary.facts:
        return summary
    return replace(summary, facts={**summary.facts, COMMANDS_SENT: list(lines)})


def summary_line(summary: StepSummary) -> str:
    """The one line a notebook shows for its recorded summary."""
    result = f", result {summary.result}" if summary.result is not None else ""
    return f"summary recorded: {summary.step} {summary.verdict}{result} ({len(summary.checks)} checks)"


def read_summary(nb: Any, step: str = "") -> StepSummary | None:
    """The last summary recorded in an executed notebook (an nbformat node or dict), if any."""
    found = None
    for cell in nb["cells"]:
        for out in cell.get("outputs", []) if cell.get("cell_type") == "code" else []:
            data = out.get("data", {})
            if SUMMARY_MIME in data:
                found = data[SUMMARY_MIME]
    return StepSummary.from_json(found, step) if found is not None else None
