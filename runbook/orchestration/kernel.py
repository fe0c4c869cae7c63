"""One kernel for every notebook of a run."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Mapping

from runbook.evidence import step_page
from runbook.orchestration.signals import StoppedBetweenCells

#: IPython's history off in the kernel (no sqlite file, nothing to clash between notebooks).
NO_HISTORY = ["--HistoryManager.enabled=False"]


class SharedKernel:
    """One kernel for every notebook of a run: started once, its namespace reset between notebooks.

    A kernel start and the imports (pandas, matplotlib, redis) cost more than most notebooks;
    paying them once keeps `run all` quick. Every notebook still starts from an empty namespace
    (`%reset -f`), and a kernel that died is replaced before the next notebook.
    """

    def __init__(self) -> None:
        from jupyter_client.manager import KernelManager  # noqa: PLC0415  (heavy: only when running)

        self.km = KernelManager(kernel_name="python3")
        self._used = False
        self._warm: threading.Thread | None = None

    def start(self) -> None:
        """Start the kernel and, in the background, import the runbook and its report module in it (and, in this
        process, the HTML renderer the first step's page needs).

        The kernel keeps no history database: every notebook numbers its cells from 1 again in the same session,
        which IPython's history would refuse ("Session/line number was not unique in database", under the first
        cell of every notebook after the first)."""
        # The kernel's stderr is noise for cron (a TCP-without-encryption warning); outputs are in the notebooks.
        self.km.start_kernel(env=dict(os.environ), stderr=subprocess.DEVNULL, extra_arguments=NO_HISTORY)
        self._warm = threading.Thread(target=self._warm_up, name="kernel-warm-up", daemon=True)
        self._warm.start()
        step_page.warm_up(after=self._warm)  # once the kernel has its imports: not competing for the cores

    def _execute(self, code: str, timeout_s: float = 60) -> None:
        """Run `code` in the kernel on a client of our own, discarding its output."""
        kc = self.km.blocking_client()
        kc.start_channels()
        try:
            kc.wait_for_ready(timeout=timeout_s)
            kc.execute_interactive(code, store_history=False, timeout=timeout_s, output_hook=lambda msg: None)
        finally:
            kc.stop_channels()

    def settle(self, timeout_s: float) -> None:
        """Wait until the kernel has finished what it runs (TimeoutError after `timeout_s`)."""
        self._execute("pass", timeout_s)

    def _warm_up(self) -> None:
        try:
            self._execute("import runbook.evidence.report")
        except (RuntimeError, TimeoutError):
            pass  # a cold first notebook is slower, nothing worse

    def ready(self, env: Mapping[str, str] | None = None, stopped: Callable[[], bool] = lambda: False) -> Any:
        """The kernel manager, alive, with an empty namespace and `env` set in its environment (the step's
        run id, for the journal). StoppedBetweenCells as soon as `stopped()` (a signal came): the notebook is not
        to start, and a kernel still warming up (an interrupt may reach it before it runs anything) is not waited
        for."""
        if not self.km.has_kernel or not self.km.is_alive():
            self.start()
            self._used = False
        while self._warm is not None and self._warm.is_alive() and not stopped():
            self._warm.join(0.05)
        if stopped():
            raise StoppedBetweenCells("stopped before the notebook started: nothing of it ran")
        self._warm = None
        code = []
        if self._used:
            # An empty namespace, and cell numbers from 1 again, as in a fresh kernel.
            code.append("%reset -f\nimport gc; gc.collect()\nget_ipython().execution_count = 1")
        if env:
            code.append(f"import os as _os\n_os.environ.update({dict(env)!r})\ndel _os")
        if code:
            self._execute("\n".join(code))
        self._used = True
        return self.km

    def _process(self) -> Any:
        provisioner = getattr(self.km, "provisioner", None)
        return getattr(provisioner, "process", None)

    def interrupt(self) -> None:
        """SIGINT to the kernel process: KeyboardInterrupt in the running cell, so the notebook's own code puts
        back what it had started (an idle kernel ignores it). Safe to call from a signal handler. Not while it is
        still booting (its warm-up runs): no notebook runs in it yet (`ready` sees the stop), and a SIGINT before
        ipykernel ignores it would kill the kernel mid-import."""
        warm = self._warm
        if warm is not None and warm.is_alive():
            return
        process = self._process()
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGINT)

    def kill(self) -> None:
        """SIGKILL to the kernel process, when it did not stop after an interrupt."""
        process = self._process()
        if process is not None and process.poll() is None:
            process.kill()

    def shutdown(self) -> None:
        if self.km.has_kernel:
            self.km.shutdown_kernel(now=True)


@contextmanager
def shared_kernel() -> Iterator[SharedKernel]:
    kernel = SharedKernel()
    try:
        yield kernel
    finally:
        kernel.shutdown()
