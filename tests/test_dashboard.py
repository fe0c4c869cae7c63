"""The shipped Grafana dashboard (monitoring/grafana/): built by its script, provisioning-ready, and every query
valid PromQL on the runbook's own metric names. tests/test_monitoring_e2e.py runs the same queries against a real
Prometheus and wants data from each."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml
from helpers import DASHBOARD, REPO, dashboard_queries, dashboard_variables, tool_or_skip, with_all_selected

GRAFANA = REPO / "monitoring" / "grafana"
DS = {"type": "prometheus", "uid": "${datasource}"}


def _load() -> dict:
    return json.loads(DASHBOARD.read_text())


def _build_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("build_dashboard", GRAFANA / "build_dashboard.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def test_the_committed_json_is_what_the_script_builds() -> None:
    assert DASHBOARD.read_text() == _build_script().render(), (
        "monitoring/grafana/redis-persistence.json differs from its script: edit build_dashboard.py and run "
        "`.venv/bin/python monitoring/grafana/build_dashboard.py`")


def test_the_dashboard_is_ready_for_file_provisioning() -> None:
    board = _load()
    assert isinstance(board["schemaVersion"], int) and board["schemaVersion"] >= 36
    assert board["uid"] and board["title"] and "__inputs" not in board, "provisioning does not resolve __inputs"
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)), f"panel ids repeat: {ids}"
    (ds_var,) = [v for v in board["templating"]["list"] if v["type"] == "datasource"]
    assert (ds_var["name"], ds_var["query"]) == ("datasource", "prometheus")
    queried = [p for p in board["panels"] if p["type"] != "row"]
    assert len(queried) >= 12
    for panel in queried:
        assert panel["datasource"] == DS, panel["title"]
        assert panel["targets"], f"{panel['title']}: no query"
        for target in panel["targets"]:
            assert target["datasource"] == DS and target["expr"].strip(), (panel["title"], target)
    for var in board["templating"]["list"]:
        if var["type"] == "query":
            assert var["datasource"] == DS, var["name"]
    (changes,) = [a for a in board["annotations"]["list"] if a.get("datasource") == DS]
    assert changes["useValueForTime"] and "runbook_change_last_timestamp_seconds" in changes["expr"]


def test_panels_are_laid_out_without_overlap() -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in _load()["panels"]:
        pos = panel["gridPos"]
        assert 0 <= pos["x"] and pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = panel["title"]


def test_the_variables_chain_and_every_one_used_is_defined() -> None:
    board = _load()
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert {"datasource", "runbook_job", "target", "instance"} <= set(variables)
    assert "runbook_job" in dashboard_variables(variables["target"]["query"]["query"]), "target follows the job"
    used = set().union(*(dashboard_variables(expr) for _, expr in dashboard_queries(board)))
    assert used <= set(variables), f"undefined variables: {used - set(variables)}"
    for name in ("runbook_job", "target", "instance"):
        assert variables[name]["allValue"] == ".*" and variables[name]["includeAll"]
    for where, expr in dashboard_queries(board):
        if where.startswith("panel") and re.search(r"\brunbook_\w+\{", expr):
            assert "runbook_job" in dashboard_variables(expr), f"{where}: not filtered by $runbook_job"


def test_every_runbook_metric_the_dashboard_reads_is_one_the_runbook_writes() -> None:
    written = "\n".join(p.read_text() for p in (REPO / "runbook").rglob("*.py"))
    found = {n for _, expr in dashboard_queries(_load()) for n in re.findall(r"\brunbook_[a-z_]+\b", expr)}
    names = found - {"runbook_job"}  # the label
    assert len(names) >= 15
    missing = sorted(n for n in names if n not in written)
    assert not missing, f"the dashboard reads series that runbook/ never writes: {missing}"


def test_every_query_parses_as_promql(tmp_path: Path) -> None:
    promtool = tool_or_skip("/usr/bin/promtool", "prometheus")
    queries = dashboard_queries(_load())
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}", "expr": with_all_selected(expr)} for i, (_, expr) in enumerate(queries)]}]}
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump(rules))
    proc = subprocess.run([str(promtool), "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(queries)} rules found" in proc.stdout


def test_promtool_catches_a_broken_query(tmp_path: Path) -> None:
    """The parse check above can fail: an unbalanced brace is refused."""
    promtool = tool_or_skip("/usr/bin/promtool", "prometheus")
    path = tmp_path / "broken.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "g", "rules": [
        {"record": "dashboard:broken", "expr": with_all_selected('runbook_drift{target=~"$target"')}]}]}))
    proc = subprocess.run([str(promtool), "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0


@pytest.mark.parametrize("name", ["dashboards/runbook.yaml", "datasources/prometheus.example.yaml"])
def test_provisioning_files_are_grafana_provisioning(name: str) -> None:
    config = yaml.safe_load((GRAFANA / "provisioning" / name).read_text())
    assert config["apiVersion"] == 1
    if name.startswith("dashboards"):
        (provider,) = config["providers"]
        assert provider["type"] == "file" and provider["options"]["path"].startswith("/var/lib/grafana/")
        assert provider["options"]["path"] in (REPO / "docs" / "monitoring.md").read_text(), (
            "docs/monitoring.md says where the JSON goes: the provider's path")
    else:
        (source,) = config["datasources"]
        assert source["type"] == "prometheus" and source["url"].startswith("http")
