"""Rolling changes of a fleet: up to N targets at once, a failure budget, a selection of targets.

As Ansible's `serial`, `max_fail_percentage` and `--limit` (docs/fleet.md):

- `-p parallel N` (the fleet's run-level parameter, also the inspection's threads): a fleet's per-target steps run
  for up to N targets at once (`run_pool`), each target's own sequence in order, on a worker of its own with a
  kernel of its own (`KernelPool`). The targets of one replicated group are one unit (`units`): one worker, in their
  order, never two of its nodes at once.
- `--max-fail K` or `--max-fail P%` (`MaxFail`): once K targets (or P% of the fleet) failed, no new target starts.
- `--limit PATTERN` (`select`): comma-separated fnmatch patterns on the target URL, `!pattern` excludes.
"""

from __future__ import annotations

import fnmatch
import math
import re
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence, TypeVar
from urllib.parse import urlparse

import redis

from runbook.errors import ParameterError, RunbookError
from runbook.model import ConnectionSpec
from runbook.server.target import connect

if TYPE_CHECKING:
    from runbook.orchestration.kernel import SharedKernel
    from runbook.orchestration.plan import Step

U = TypeVar("U")
R = TypeVar("R")

#: How often the runner's main thread wakes while workers run (a signal is handled in the main thread only).
JOIN_S = 0.2


# -- --max-fail ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MaxFail:
    """After how many failed targets a run starts no new one: `count`, or `percent` of the fleet; neither: never
    (`--keep-going`). The default, `count` 1, is the runbook's own: the first failure stops the run."""

    count: int | None = 1
    percent: float | None = None
    given: str = ""  # as the operator wrote it; "" for the default

    @classmethod
    def parse(cls, text: str | None, *, keep_going: bool = False) -> MaxFail:
        """`--max-fail` (K or P%; it wins over `--keep-going`); without it, unbounded with `keep_going`, else 1."""
        if text is None or not str(text).strip():
            return cls(None) if keep_going else cls()
        raw = str(text).strip()
        found = re.fullmatch(r"(\d+(?:\.\d+)?)\s*%|(\d+)", raw)
        if found and found.group(1) is not None and 0 < float(found.group(1)) <= 100:
            return cls(None, float(found.group(1)), raw)
        if found and found.group(2) is not None and int(found.group(2)) >= 1:
            return cls(int(found.group(2)), None, raw)
        raise ParameterError(f"--max-fail {raw!r}: give a number of targets (at least 1, e.g. --max-fail 2) or a "
                             "share of the fleet (more than 0%, at most 100%, e.g. --max-fail 20%)")

    def reached(self, failed: int, size: int) -> bool:
        """Whether `failed` failed targets of a fleet of `size` stop new targets from starting."""
        if failed < 1:
            return False
        if self.percent is not None:
            return failed * 100 >= self.percent * size
        return self.count is not None and failed >= self.count

    def bound(self, size: int) -> int | None:
        """The number of failed targets that stops a fleet of `size` (None: no bound)."""
        if self.percent is not None:
            return max(1, math.ceil(self.percent * size / 100 - 1e-9))
        return self.count

    def why(self, failed: Sequence[str], size: int) -> str:
        """The reason a target that did not start is skipped for."""
        names = ", ".join(failed[:5]) + (f" and {len(failed) - 5} more" if len(failed) > 5 else "")
        return (f"not started: --max-fail {self.given} reached ({len(failed)} of {size} targets failed: {names}); "
                "fix them, then run again for the rest (--limit selects them)")


# -- --limit ---------------------------------------------------------------------------------------------------


def select(targets: Sequence[str], limit: str) -> list[str]:
    """The targets `limit` selects, in their order: comma-separated fnmatch patterns on the URL (`*`, `?`,
    `[...]`), `!pattern` excludes; only exclusions: every other target. ParameterError when none is selected, naming
    the targets there are."""
    patterns = [p.strip() for p in limit.split(",") if p.strip()]
    if not patterns:
        raise ParameterError("--limit needs a pattern: a target URL, or fnmatch patterns such as "
                             "'redis://10.0.1.*' (comma-separated; !pattern excludes)")
    include = [p for p in patterns if not p.startswith("!")]
    exclude = [p[1:] for p in patterns if p.startswith("!")]
    chosen = [t for t in targets if (not include or any(fnmatch.fnmatchcase(t, p) for p in include))
              and not any(fnmatch.fnmatchcase(t, p) for p in exclude)]
    if not chosen:
        there = ", ".join(targets[:20]) + (f" and {len(targets) - 20} more" if len(targets) > 20 else "")
        raise ParameterError(f"--limit {limit!r} selects none of the run's targets ({there}): give a pattern that "
                             "matches a target URL, e.g. --limit 'redis://10.0.1.*' (comma-separated; !pattern "
                             "excludes)")
    return chosen


# -- units and workers -----------------------------------------------------------------------------------------


def unit_key(step: Step, nodes: dict[str, str]) -> str:
    """Which unit a per-target step belongs to: its group's source for a group run's step (or a target that is a
    node of a group found at the start), else its target."""
    if step.group is not None:
        return step.group.source
    target = step.targets[0]
    return nodes.get(target, target)


def replication_links(steps: Sequence[Step]) -> dict[str, str]:
    """The plain targets of `steps` (not of a group run) that replicate from, or to, another of them: target URL ->
    the URL of the primary among them (read-only: INFO replication of each). A fleet file may list a primary and
    its replica as two entries; `units` keeps them in one unit, so they are never changed at once. A target that
    cannot be read here is left alone (its own step fails and says why)."""
    by_address: dict[str, str] = {}
    specs: dict[str, ConnectionSpec] = {}
    for step in steps:
        url = step.targets[0]
        parsed = urlparse(url)
        if step.group is None and parsed.scheme in ("redis", "rediss") and parsed.hostname:
            by_address[f"{parsed.hostname}:{parsed.port or 6379}"] = url
            specs.setdefault(url, ConnectionSpec.from_parameters(step.parameters))
    if len(specs) < 2:
        return {}
    links: dict[str, str] = {}
    for url, spec in specs.items():
        try:
            server = connect(spec.replace(target=url, discover=False))
        except (RunbookError, OSError):
            continue
        try:
            repl = server.client.info("replication")
        except redis.RedisError:
            continue
        finally:
            server.client.close()
        primary = by_address.get(f"{repl.get('master_host')}:{repl.get('master_port')}")
        if repl.get("role") == "slave" and primary is not None:
            links[url] = primary
    # A chain (a replica of a replica) ends at the first target that replicates from none of them.
    for url in list(links):
        seen = {url}
        while links[url] in links and links[url] not in seen:
            seen.add(links[url])
            links[url] = links[links[url]]
    return links


def units(steps: Sequence[Step], links: dict[str, str] | None = None) -> list[tuple[str, list[Step]]]:
    """`steps` (a fleet's per-target block) as units, in the order of their first step: each target's (or group's)
    own steps, in order; `links` (`replication_links`) puts a replica listed as its own target in its primary's
    unit. A worker runs one unit at a time, step after step."""
    nodes = {url: s.group.source for s in steps if s.group is not None for url in s.group.nodes}
    nodes.update(links or {})
    out: dict[str, list[Step]] = {}
    for step in steps:
        out.setdefault(unit_key(step, nodes), []).append(step)
    return list(out.items())


def run_pool(work: Sequence[U], workers: int, run_unit: Callable[[int, U], R],
             may_start: Callable[[], bool]) -> list[R | None]:
    """Run `run_unit(worker, unit)` for every unit, up to `workers` at once (worker numbers 0 .. workers-1, each on
    a thread of its own, running its units one after another); a unit starts only while `may_start()`. Returns the
    results in the units' order (None: not started). The calling thread waits in short joins, so a signal reaches
    its handler; an exception of a unit is raised here once every worker is done."""
    results: list[R | None] = [None] * len(work)
    queue = iter(range(len(work)))
    taking = threading.Lock()
    errors: list[BaseException] = []

    def worker(number: int) -> None:
        while True:
            with taking:
                if errors or not may_start():
                    return
                index = next(queue, None)
            if index is None:
                return
            try:
                results[index] = run_unit(number, work[index])
            except BaseException as err:  # noqa: BLE001  (raised again in the calling thread)
                errors.append(err)
                return

    threads = [threading.Thread(target=worker, args=(n,), name=f"rolling-{n}", daemon=True)
               for n in range(max(1, min(workers, len(work))))]
    for t in threads:
        t.start()
    for t in threads:
        while t.is_alive():
            t.join(JOIN_S)
    if errors:
        raise errors[0]
    return results


class KernelPool:
    """The kernels of a rolling change: worker 0 uses the run's own kernel, every other worker one of its own,
    started on first use (or ahead, `prestart`) and shut down with the pool."""

    def __init__(self, main: SharedKernel | None, make: Callable[[], SharedKernel]) -> None:
        self.main = main
        self.make = make
        self.extra: dict[int, SharedKernel] = {}
        self._lock = threading.Lock()

    def kernel(self, worker: int) -> SharedKernel | None:
        if worker == 0 or self.main is None:
            return self.main
        with self._lock:
            if worker not in self.extra:
                kernel = self.make()
                kernel.start()
                self.extra[worker] = kernel
            return self.extra[worker]

    def prestart(self, workers: int) -> None:
        """Start the kernels of workers 1 .. workers-1 now (they boot while the fleet is inspected)."""
        for worker in range(1, workers):
            self.kernel(worker)

    def shutdown(self) -> None:
        for kernel in self.extra.values():
            kernel.shutdown()
        self.extra.clear()

    def __enter__(self) -> KernelPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


def workers(steps: Sequence[Step]) -> int:
    """How many workers the rolling change of `steps` (a plan) has: its `parallel`, at most one per unit; 0 when it
    is no rolling change."""
    block = [s for s in steps if s.parallel and not s.fleet]
    return min(max(s.parallel for s in block), len(units(block))) if block else 0
