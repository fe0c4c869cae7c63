"""The machine-readable summary a notebook records and the runner reads back."""

from __future__ import annotations

import json
from typing import Any

SUMMARY_MIME = "application/vnd.runbook.summary+json"


def record(summary: dict[str, Any]) -> None:
    """Show `summary` in the notebook, tagged so the runner can find it in the executed file."""
    from IPython.display import display  # noqa: PLC0415  (only inside a kernel)

    data = json.loads(json.dumps(summary, default=str))
    display({SUMMARY_MIME: data, "text/plain": json.dumps(data, indent=2)}, raw=True)


def read_summary(nb: Any) -> dict[str, Any] | None:
    """The last summary recorded in an executed notebook (an nbformat node or dict), if any."""
    found = None
    for cell in nb["cells"]:
        for out in cell.get("outputs", []) if cell.get("cell_type") == "code" else []:
            data = out.get("data", {})
            if SUMMARY_MIME in data:
                found = data[SUMMARY_MIME]
    return dict(found) if found is not None else None
