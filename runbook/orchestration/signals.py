"""SIGTERM and SIGINT during `runbook run`: stop at a safe point.

The kernel runs in a session of its own, so a Ctrl-C at the terminal reaches only the runner; the runner
passes it on. The first signal is noted and, while a notebook runs, sent to the kernel as an interrupt: a
KeyboardInterrupt in the running cell, so the notebook's own code puts back what it had started (the wait
for the AOF rewrite puts the settings back). An idle kernel ignores an interrupt, so a signal that comes
between two cells (or while the kernel is made ready) stops the notebook before its next cell instead
(`ENGINE`). The run then stops after that step. A second signal, or a notebook still running `GRACE_S`
after the interrupt, kills the kernel: nothing more is put back, and the step's record says so.
"""

from __future__ import annotations

import functools
import signal
import threading
from contextlib import contextmanager
from typing import Any, Iterator, Protocol

#: Seconds a notebook has, after the interrupt, to put back what it started and end.
GRACE_S = 20.0
SIGNALS = (signal.SIGTERM, signal.SIGINT)
#: The papermill engine of a run's notebooks (`engine`): nbclient's, stopping before the next cell once a signal
#: came.
ENGINE = "runbook"


class StoppedBetweenCells(Exception):
    """A signal came while no cell ran: the notebook stopped before its next cell (a safe point)."""


class Interruptible(Protocol):
    def interrupt(self) -> None: ...

    def kill(self) -> None: ...


class Stop:
    """What a signal asked of one run: 0 until SIGTERM or SIGINT arrives."""

    def __init__(self, grace_s: float = GRACE_S) -> None:
        self.signum = 0
        self.killed = False  # the kernel was killed: the notebook put nothing back
        self.grace_s = grace_s
        self._kernels: list[Interruptible] = []  # the kernels running a notebook now (a rolling change: several)
        self._timer: threading.Timer | None = None
        self._guard = threading.Lock()

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""

    @property
    def exit_code(self) -> int:
        """The shell's code for death by the signal: 143 for SIGTERM, 130 for SIGINT."""
        return 128 + self.signum

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum:
            self._force()
            return
        self.signum = signum
        kernels = list(self._kernels)
        for kernel in kernels:
            kernel.interrupt()
        if kernels:
            self._timer = threading.Timer(self.grace_s, self._force)
            self._timer.daemon = True
            self._timer.start()

    def _force(self) -> None:
        kernels = list(self._kernels)
        if kernels:
            self.killed = True
        for kernel in kernels:
            kernel.kill()

    @contextmanager
    def notebook(self, kernel: Interruptible | None) -> Iterator[None]:
        """While a notebook runs in `kernel`: a signal interrupts it (and every other kernel running one: the
        workers of a rolling change each enter here from their own thread)."""
        if kernel is not None:
            with self._guard:
                self._kernels.append(kernel)
        try:
            yield
        finally:
            with self._guard:
                if kernel is not None:
                    self._kernels.remove(kernel)
                last = not self._kernels
            if last and self._timer is not None:
                self._timer.cancel()
                self._timer = None

    @contextmanager
    def installed(self) -> Iterator[Stop]:
        """Catch SIGTERM and SIGINT for the run, and put the previous handlers back after it (only in the main
        thread, where Python delivers signals; elsewhere the run keeps the process's handlers)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


@functools.lru_cache(maxsize=1)
def engine() -> str:
    """Register `ENGINE` with papermill (once) and return its name. `execute_notebook(..., engine_name=engine(),
    stop=stop)` runs the notebook as nbclient does, and raises StoppedBetweenCells before a cell once `stop` has a
    signal: the interrupt that signal sent reached no cell (an idle kernel ignores it)."""
    from papermill.engines import NBClientEngine, papermill_engines  # noqa: PLC0415  (heavy: only when running)

    class StoppableEngine(NBClientEngine):  # type: ignore[misc]
        @classmethod
        def execute_managed_notebook(cls, nb_man: Any, kernel_name: str, stop: Stop | None = None,
                                     **kwargs: Any) -> Any:
            if stop is not None:
                nb_man.cell_start = _stop_before(nb_man.cell_start, stop)
            return super().execute_managed_notebook(nb_man, kernel_name, **kwargs)

    papermill_engines.register(ENGINE, StoppableEngine)
    return ENGINE


def _stop_before(cell_start: Any, stop: Stop) -> Any:
    """papermill's `cell_start`, refusing to start a cell once `stop` has a signal."""

    def start(cell: Any, cell_index: int | None = None, **kwargs: Any) -> Any:
        if stop.signum:
            raise StoppedBetweenCells(f"stopped before cell {cell_index}, at a safe point (no cell was running)")
        return cell_start(cell, cell_index, **kwargs)

    return start
