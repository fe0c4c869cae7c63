"""Helpers for tests that drive the `runbook` command in a subprocess, as cron or CI would."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
_SCRUB = ("REDIS_PASSWORD", "RUNBOOK_SANDBOX_URL", "RUNBOOK_SANDBOX_DIR", "RUNBOOK_ARCHIVE", "RUNBOOK_SIGNING_KEY",
          "RUNBOOK_ALLOWED_SIGNERS")


def runbook_cli(*args: str, env: dict[str, str] | None = None, timeout: int = 300,
                drop_prefix: str = "") -> subprocess.CompletedProcess[str]:
    """`runbook ARGS` in a subprocess, without the runbook's own settings from this environment (nor, given
    `drop_prefix`, any variable whose name starts with it: `AWS_` keeps ~/.aws settings out), plus `env`."""
    base = {k: v for k, v in os.environ.items() if k not in _SCRUB and not (drop_prefix and k.startswith(drop_prefix))}
    base.update(env or {})
    return subprocess.run([sys.executable, "-m", "runbook", *args], capture_output=True, text=True,
                          env=base, timeout=timeout, cwd=REPO)


def wait_for_port(host: str, port: int, timeout: float, proc: subprocess.Popen | None = None) -> bool:
    """True once `host:port` accepts connections; False after `timeout` seconds, or as soon as `proc` exits."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((host, port), timeout=1).close()
            return True
        except OSError:
            if (proc is not None and proc.poll() is not None) or time.monotonic() > deadline:
                return False
            time.sleep(0.1)


def run_json(archive: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, dict, str]:
    """`runbook run ARGS --json`: exit code, parsed JSON (empty when none) and stderr."""
    proc = runbook_cli("run", *args, "--archive", str(archive), "--json", env=env)
    out = json.loads(proc.stdout) if proc.stdout.strip().startswith("{") else {}
    return proc.returncode, out, proc.stderr


def index(archive: Path, *, journal: bool = False) -> list[dict]:
    """The archive's records, in order (its index is split into segments: read it the runbook's way): each step's
    verdict; with `journal`, the `started` and `intent` records of changing steps too."""
    from runbook.evidence.archive import read_index

    records = read_index(archive)
    return records if journal else [r for r in records if r.get("status") not in ("started", "intent")]


def _has_user(name: str) -> bool:
    import pwd

    return any(p.pw_name == name for p in pwd.getpwall())


#: Tests that run a server as the `redis` user (to make a directory unwritable to it) need root and that user.
needs_redis_user_reason = "needs root and a 'redis' user (apt-get install redis-server creates it)"
has_redis_user = os.geteuid() == 0 and _has_user("redis")


def switch_aof_on(client: object) -> dict:
    """AOF switched on at runtime the runbook's one way (appendfsync everysec, then appendonly yes, then the
    wait for the initial rewrite), on a raw client of a test server."""
    from runbook.model import SettingChange
    from runbook.server.aof import apply_runtime
    from runbook.server.settings import config_get

    fsync = config_get(client, ["appendfsync"])["appendfsync"]  # type: ignore[arg-type]
    return apply_runtime(client, [SettingChange("appendfsync", fsync, "everysec"),  # type: ignore[arg-type]
                                  SettingChange("appendonly", "no", "yes")])


DASHBOARD = REPO / "monitoring" / "grafana" / "redis-persistence.json"
_VARIABLE = re.compile(r"\$\{?(\w+)\}?")
_LABEL_VALUES = re.compile(r"^label_values\((.+),\s*(\w+)\)$", re.S)


def dashboard_queries(dashboard: dict) -> list[tuple[str, str]]:
    """Every PromQL expression of a Grafana dashboard, as (where, expr): the panels' targets, the annotations and
    the selector inside each variable's `label_values(...)`."""
    found = [(f"panel {p['id']} {p['title']!r} {t['refId']}", t["expr"])
             for p in dashboard["panels"] if p["type"] != "row" for t in p["targets"]]
    found += [(f"annotation {a['name']!r}", a["expr"]) for a in dashboard["annotations"]["list"] if "expr" in a]
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            m = _LABEL_VALUES.match(var["query"]["query"])
            assert m, f"variable {var['name']}: not a label_values(selector, label) query"
            found.append((f"variable {var['name']}", m.group(1)))
    return found


def dashboard_variables(expr: str) -> set[str]:
    """The dashboard variables an expression uses ($name or ${name})."""
    return set(_VARIABLE.findall(expr))


def with_all_selected(expr: str) -> str:
    """`expr` as Grafana sends it with "All" chosen in every variable (their allValue is `.*`)."""
    return _VARIABLE.sub(".*", expr)


def with_selected(expr: str, chosen: dict[str, str]) -> str:
    """`expr` as Grafana sends it with one value chosen in each variable of `chosen`: regex-escaped, inside a PromQL
    string (so `.` becomes `\\.`), as Grafana's Prometheus data source does for a multi-value variable."""
    def escaped(m: re.Match[str]) -> str:
        return re.sub(r"([$^*+?.()|{}\[\]\\])", r"\\\\\1", chosen[m.group(1)])

    return _VARIABLE.sub(escaped, expr)


def tool_or_skip(path: str, package: str) -> Path:
    """A Debian tool the test runs (`.ci/run` installs `package`): skipped with a reason where absent, but a
    failure under CI, which must run everything (as conftest.binary_or_skip)."""
    import pytest

    if Path(path).is_file() and os.access(path, os.X_OK):
        return Path(path)
    reason = f"{path} not found on this machine (apt-get install {package}; .ci/run installs it)"
    if os.environ.get("CI"):
        pytest.fail(f"CI must run the monitoring tests: {reason}")
    pytest.skip(reason)
