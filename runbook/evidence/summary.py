"""The step summary in an executed notebook: recorded by the notebook, read back by the runner."""

from __future__ import annotations

import json
import os
from typing import Any

from runbook.model import StepSummary

SUMMARY_MIME = "application/vnd.runbook.summary+json"
#: The change id of the run, set by the runner for its kernel: what a step leaves behind (a config backup) carries it.
CHANGE_ID_ENV = "RUNBOOK_CHANGE_ID"


def change_id() -> str:
    """The change id of the run this notebook belongs to; "" for a notebook opened by hand."""
    return os.environ.get(CHANGE_ID_ENV, "")


def record(summary: StepSummary) -> None:
    """Show `summary` in the notebook, tagged so the runner can find it in the executed file."""
    from IPython.display import display  # noqa: PLC0415  (only inside a kernel)

    data = summary.to_json()
    display({SUMMARY_MIME: data, "text/plain": json.dumps(data, indent=2)}, raw=True)


def read_summary(nb: Any, step: str = "") -> StepSummary | None:
    """The last summary recorded in an executed notebook (an nbformat node or dict), if any."""
    found = None
    for cell in nb["cells"]:
        for out in cell.get("outputs", []) if cell.get("cell_type") == "code" else []:
            data = out.get("data", {})
            if SUMMARY_MIME in data:
                found = data[SUMMARY_MIME]
    return StepSummary.from_json(found, step) if found is not None else None
