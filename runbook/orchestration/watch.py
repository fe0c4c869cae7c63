"""What a terminal shows while `runbook run` goes: each step as it starts and ends, and while a step runs one
status line, redrawn in place, with the wait it is in (elapsed / deadline, what the server reports).

The waits run in the notebook kernel and append their progress to a file (`runbook.server.progress`); `Tail`
reads it on a thread of the runner while a step runs. The CLI watches only when stderr is a terminal: under
cron nothing here runs, and the output is the final table alone.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Protocol, TextIO

from runbook.server.progress import INTERVAL_S, WaitProgress, read_reports

if TYPE_CHECKING:
    from runbook.orchestration.runner import StepResult

#: A wait with no report for this long has ended: the status line shows the step again.
STALE_S = 3 * INTERVAL_S
#: Seconds between two reads of the progress file (and redraws of the status line).
POLL_S = 0.1


class Watch(Protocol):
    """Whoever follows a run as it goes (`TerminalWatch`)."""

    def started(self, number: int, total: int, name: str, target: str) -> None: ...

    def waiting(self, progress: WaitProgress) -> None: ...

    def tick(self) -> None: ...

    def finished(self, number: int, total: int, result: StepResult) -> None: ...


class Tail:
    """While a step runs (`with Tail(...)`): a thread that passes every wait report appended to `path` to
    `watch.waiting`, and lets it redraw (`watch.tick`) every `POLL_S`."""

    def __init__(self, path: Path, watch: Watch) -> None:
        self.path, self.watch = path, watch
        self.offset = path.stat().st_size if path.exists() else 0  # earlier steps' reports are done
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="progress-tail", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(POLL_S):
            reports, self.offset = read_reports(self.path, self.offset)
            for report in reports:
                self.watch.waiting(report)
            self.watch.tick()

    def __enter__(self) -> Tail:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(1.0)


class TerminalWatch:
    """Step lines and one redrawn status line on `stream` (a terminal); `describe` says how a step ended
    (status, changed, figures: the CLI's words)."""

    def __init__(self, stream: TextIO, describe: Callable[[StepResult], str]) -> None:
        self.stream, self.describe = stream, describe
        self._lock = threading.Lock()
        self._name, self._step = "", ""  # the running step's name, and `name on target`
        self._step_at = 0.0
        self._wait: WaitProgress | None = None
        self._wait_at = 0.0
        self._shown = 0  # length of the status line on screen
        self._drawn = ""  # the status line on screen

    def started(self, number: int, total: int, name: str, target: str) -> None:
        with self._lock:
            self._name, self._step, self._step_at, self._wait = name, f"{name} on {target}", time.monotonic(), None
            self._line(f"[{number}/{total}] {self._step} ...")
            self._draw()

    def waiting(self, progress: WaitProgress) -> None:
        with self._lock:
            self._wait, self._wait_at = progress, time.monotonic()

    def tick(self) -> None:
        with self._lock:
            self._draw()

    def finished(self, number: int, total: int, result: StepResult) -> None:
        with self._lock:
            took = f" ({time.monotonic() - self._step_at:.1f} s)" if self._step else ""
            self._step, self._wait = "", None
            self._line(f"[{number}/{total}] {result.name} on {result.target}: {self.describe(result)}{took}")

    # -- drawing (the lock held) --------------------------------------------------------------------------
    def _status(self) -> str:
        if not self._step:
            return ""
        now = time.monotonic()
        if self._wait is not None and now - self._wait_at < STALE_S:
            return f"      {self._name}: {self._wait.line(now - self._wait_at)}"
        return f"      {self._step}: {now - self._step_at:.1f} s"

    def _draw(self) -> None:
        text = self._status()[: self._width()]
        if text == self._drawn:
            return
        self._write("\r" + text.ljust(self._shown) + ("\r" + text if len(text) < self._shown else ""))
        self._shown, self._drawn = len(text), text

    def _line(self, text: str) -> None:
        """A line that stays, in place of the status line."""
        self._write("\r" + " " * self._shown + "\r" + text + "\n")
        self._shown, self._drawn = 0, ""

    def _width(self) -> int:
        try:
            columns = os.get_terminal_size(self.stream.fileno()).columns
        except (OSError, ValueError, AttributeError):
            columns = 0
        return max(20, columns - 1) if columns else 99  # a line that wraps cannot be redrawn in place

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):
            pass  # a closed terminal: the run goes on, its table and records are what count
