"""Build monitoring/grafana/redis-persistence.json, the Grafana dashboard for the runbook's metrics.

The panels are declared once, below, as a table; this script lays them out and writes the JSON that Grafana
provisions. Edit here, then run `python monitoring/grafana/build_dashboard.py`: tests/test_dashboard.py fails
when the committed JSON differs from what this script writes.

Standard library only: grafana-foundation-sdk (PyPI) needs Python 3.11 and is alpha, the project supports 3.10.
Every query selects through the dashboard's variables: `$runbook_job` and `$target` (the labels of the runbook's
text file, docs/monitoring.md) and `$instance` (redis_exporter's scrape target, for the live row).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

OUT = Path(__file__).with_name("redis-persistence.json")
UID = "redis-persistence-runbook"
DS = {"type": "prometheus", "uid": "${datasource}"}
RUNBOOK_TARGET = 'runbook_job=~"$runbook_job",target=~"$target"'
RUNBOOK_JOB = 'runbook_job=~"$runbook_job"'
EXPORTER = 'instance=~"$instance"'

ON_OFF = [{"type": "value", "options": {"0": {"text": "off", "color": "red", "index": 0},
                                        "1": {"text": "on", "color": "green", "index": 1}}}]
UP_DOWN = [{"type": "value", "options": {"0": {"text": "unreachable", "color": "red", "index": 0},
                                         "1": {"text": "up", "color": "green", "index": 1}}}]
DRIFT = [{"type": "value", "options": {"0": {"text": "same", "color": "green", "index": 0},
                                       "1": {"text": "differs", "color": "red", "index": 1}}}]
CHECK = [{"type": "value", "options": {"0": {"text": "pass", "color": "green", "index": 0},
                                       "1": {"text": "warn", "color": "orange", "index": 1},
                                       "2": {"text": "fail", "color": "red", "index": 2}}}]
VERIFY = [{"type": "value", "options": {"0": {"text": "problems", "color": "red", "index": 0},
                                        "1": {"text": "intact", "color": "green", "index": 1}}}]
EXIT = [{"type": "value", "options": {"0": {"text": "0 ok", "color": "green", "index": 0},
                                      "1": {"text": "1 failed", "color": "red", "index": 1},
                                      "2": {"text": "2 usage", "color": "red", "index": 2},
                                      "3": {"text": "3 blocked", "color": "orange", "index": 3},
                                      "4": {"text": "4 would change", "color": "orange", "index": 4}}}]
#: Table columns that say nothing here: the scrape's own labels (node_exporter's address and job).
HIDDEN = {"Time": True, "__name__": True, "instance": True, "job": True}


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str = "{{target}}"


@dataclass(frozen=True)
class Panel:
    title: str
    kind: str  # a Grafana panel type: stat, timeseries, table, state-timeline
    description: str
    queries: tuple[Query, ...]
    width: int = 8
    height: int = 8
    unit: str = "none"
    mappings: list = field(default_factory=list)
    red_above: float | None = None  # a threshold step: red from this value on
    value_column: str = "Value"


@dataclass(frozen=True)
class Row:
    title: str


LAYOUT: tuple[Row | Panel, ...] = (
    Row("State per target (from the runbook's text file)"),
    Panel("AOF at runtime and in redis.conf", "state-timeline",
          "appendonly at runtime (INFO aof_enabled) and in the config file (runtime, flipped where the runbook "
          "found the two differ). On at runtime and off in the file is the state a restart loses.",
          (Query(f"runbook_redis_aof_enabled{{{RUNBOOK_TARGET}}}", "{{target}} runtime"),
           Query(f"abs(runbook_redis_aof_enabled{{{RUNBOOK_TARGET}}} - ignoring(setting) "
                 f'runbook_drift{{setting="appendonly",{RUNBOOK_TARGET}}})', "{{target}} redis.conf")),
          width=12, mappings=ON_OFF),
    Panel("Target reachable", "stat",
          "1 when the runbook's last run reached and inspected the target; 0 when it could not (the other "
          "panels then show the last values it saw).",
          (Query(f"runbook_target_up{{{RUNBOOK_TARGET}}}"),), width=6, mappings=UP_DOWN),
    Panel("Since the last inspection", "stat",
          "Time since the last successful inspection of each target (RunbookInspectionStale fires past 2 h).",
          (Query(f"time() - runbook_inspection_timestamp_seconds{{{RUNBOOK_TARGET}}}"),),
          width=6, unit="s", red_above=7200),
    Panel("Drift: runtime vs redis.conf", "table",
          "Each persistence setting per target: whether its runtime value differs from the config file.",
          (Query(f"runbook_drift{{{RUNBOOK_TARGET}}}"),), width=12, height=9, mappings=DRIFT,
          value_column="drift"),
    Panel("Runbook checks", "table",
          "The inspection's checks per target: pass, warn or fail (RunbookCheckFailing fires on a fail).",
          (Query(f"runbook_check_status{{{RUNBOOK_TARGET}}}"),), width=12, height=9, mappings=CHECK,
          value_column="status"),
    Row("Saves and rewrites"),
    Panel("Last save age vs save policy window", "timeseries",
          "Time since the last successful save, against the longest window of the save policy and twice "
          "that (RedisNoRecentSave fires past twice the window while there are unsaved changes).",
          (Query(f"time() - runbook_redis_rdb_last_save_timestamp_seconds{{{RUNBOOK_TARGET}}}",
                 "{{target}} since last save"),
           Query(f"runbook_save_policy_window_seconds{{{RUNBOOK_TARGET}}}", "{{target}} policy window"),
           Query(f"2 * runbook_save_policy_window_seconds{{{RUNBOOK_TARGET}}}", "{{target}} alert at")),
          width=12, unit="s"),
    Panel("BGSAVE and AOF rewrite durations", "timeseries",
          "How long the last BGSAVE and the last AOF rewrite took (-1: none since the server started).",
          (Query(f"runbook_redis_rdb_last_bgsave_duration_seconds{{{RUNBOOK_TARGET}}}", "{{target}} BGSAVE"),
           Query(f"runbook_redis_aof_last_rewrite_duration_seconds{{{RUNBOOK_TARGET}}}",
                 "{{target}} AOF rewrite")),
          width=12, unit="s"),
    Panel("Fork time", "timeseries",
          "Duration of the latest fork (BGSAVE or rewrite): the pause the server's clients saw.",
          (Query(f"runbook_redis_latest_fork_seconds{{{RUNBOOK_TARGET}}}"),), width=12, unit="s"),
    Panel("AOF and RDB sizes", "timeseries",
          "The AOF's current and base size (INFO) and the dump file on disk.",
          (Query(f"runbook_redis_aof_current_size_bytes{{{RUNBOOK_TARGET}}}", "{{target}} AOF current"),
           Query(f"runbook_redis_aof_base_size_bytes{{{RUNBOOK_TARGET}}}", "{{target}} AOF base"),
           Query(f"runbook_rdb_file_size_bytes{{{RUNBOOK_TARGET}}}", "{{target}} RDB file")),
          width=12, unit="bytes"),
    Row("Runs, changes and the evidence archive"),
    Panel("Last change", "table",
          "The last run that changed each target: when it ended, its change id and result (from the archive).",
          (Query(f"runbook_change_last_timestamp_seconds{{{RUNBOOK_TARGET}}} * 1000 * on(runbook_job, target) "
                 f"group_left(change_id, result) runbook_change_last_info{{{RUNBOOK_TARGET}}}"),),
          width=12, unit="dateTimeAsIso", value_column="ended"),
    Panel("Last run exit code", "stat",
          "The exit code of each job's last run (0 ok, 1 failed, 2 usage, 3 blocked).",
          (Query(f"runbook_last_run_exit_code{{{RUNBOOK_JOB}}}", "{{runbook_job}}"),), width=6, mappings=EXIT),
    Panel("Archive verify", "stat",
          "The last `runbook archive verify` of each archive: intact or problems (RunbookArchiveVerifyFailing).",
          (Query(f"runbook_archive_verify_ok{{{RUNBOOK_JOB}}}", "{{archive}}"),), width=6, mappings=VERIFY),
    Row("Live from redis_exporter (every scrape)"),
    Panel("redis_exporter: up and AOF", "stat",
          "redis_exporter's own view at each scrape: the server answers, and AOF is on at runtime.",
          (Query(f"redis_up{{{EXPORTER}}}", "{{instance}} up"),
           Query(f"redis_aof_enabled{{{EXPORTER}}}", "{{instance}} AOF")), width=12, mappings=ON_OFF),
    Panel("redis_exporter: fork and last BGSAVE", "timeseries",
          "redis_exporter's latest fork time and last BGSAVE duration, between the runbook's inspections.",
          (Query(f"redis_latest_fork_seconds{{{EXPORTER}}}", "{{instance}} fork"),
           Query(f"redis_rdb_last_bgsave_duration_sec{{{EXPORTER}}}", "{{instance}} BGSAVE")),
          width=12, unit="s"),
)

#: The runbook's changes as annotations, at the time each ended (the sample's value, not when it was scraped).
CHANGES_ANNOTATION = (f"runbook_change_last_timestamp_seconds{{{RUNBOOK_TARGET}}} * 1000 * on(runbook_job, target) "
                      f"group_left(change_id, result) runbook_change_last_info{{{RUNBOOK_TARGET}}}")


def _variable(name: str, label: str, query: str) -> dict:
    return {"name": name, "label": label, "type": "query", "datasource": DS, "query": {"query": query,
            "refId": f"{name}-query"}, "definition": query, "refresh": 2, "multi": True, "includeAll": True,
            "allValue": ".*", "current": {"selected": True, "text": ["All"], "value": ["$__all"]}, "sort": 1,
            "regex": "", "hide": 0, "options": []}


def _panel(panel: Panel, pid: int, pos: dict) -> dict:
    table = panel.kind == "table"
    out = {
        "id": pid, "type": panel.kind, "title": panel.title, "description": panel.description, "datasource": DS,
        "gridPos": pos,
        "fieldConfig": {"defaults": {
            "unit": panel.unit, "mappings": panel.mappings,
            "color": {"mode": "thresholds" if panel.mappings or table else "palette-classic"},
            "thresholds": {"mode": "absolute", "steps": [{"color": "green", "value": None}] + (
                [{"color": "red", "value": panel.red_above}] if panel.red_above is not None else [])},
            **({"custom": {"cellOptions": {"type": "color-text"}}} if table else {}),
        }, "overrides": []},
        "targets": [{"refId": chr(ord("A") + i), "datasource": DS, "expr": q.expr, "legendFormat": q.legend,
                     "instant": table, "range": not table, "format": "table" if table else "time_series"}
                    for i, q in enumerate(panel.queries)],
    }
    if table:
        out["options"] = {"showHeader": True, "sortBy": [{"displayName": panel.value_column, "desc": True}]}
        out["transformations"] = [{"id": "organize", "options": {
            "excludeByName": HIDDEN, "renameByName": {"Value": panel.value_column}}}]
    elif panel.kind == "stat":
        out["options"] = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                          "colorMode": "background", "textMode": "value_and_name", "graphMode": "none"}
    elif panel.kind == "state-timeline":
        out["options"] = {"showValue": "auto", "mergeValues": True, "legend": {"showLegend": False}}
    return out


def build() -> dict:
    """The dashboard as Grafana's JSON model (schemaVersion 39: Grafana 10.4 and later read it as is)."""
    panels: list[dict] = []
    x = y = row_height = 0  # the cursor: where the next panel goes, and the height of the line it is on
    for pid, item in enumerate(LAYOUT, start=1):
        if isinstance(item, Row):
            y, x, row_height = y + row_height, 0, 0
            panels.append({"id": pid, "type": "row", "title": item.title, "collapsed": False, "panels": [],
                           "gridPos": {"x": 0, "y": y, "w": 24, "h": 1}})
            y += 1
            continue
        if x + item.width > 24:
            x, y, row_height = 0, y + row_height, 0
        panels.append(_panel(item, pid, {"x": x, "y": y, "w": item.width, "h": item.height}))
        x, row_height = x + item.width, max(row_height, item.height)
    return {
        "uid": UID, "title": "Redis persistence (runbook)", "schemaVersion": 39, "version": 1, "editable": True,
        "tags": ["redis", "persistence", "runbook"], "timezone": "browser", "refresh": "1m",
        "time": {"from": "now-24h", "to": "now"}, "graphTooltip": 1, "fiscalYearStartMonth": 0, "liveNow": False,
        "description": "Redis persistence per target, from the runbook's --metrics-file and redis_exporter "
                       "(docs/monitoring.md).",
        "links": [],
        "templating": {"list": [
            {"name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus",
             "current": {}, "hide": 0, "refresh": 1, "regex": "", "options": []},
            _variable("runbook_job", "Runbook job", "label_values(runbook_last_run_timestamp_seconds, runbook_job)"),
            _variable("target", "Target",
                      'label_values(runbook_target_up{runbook_job=~"$runbook_job"}, target)'),
            _variable("instance", "redis_exporter instance", "label_values(redis_up, instance)"),
        ]},
        "annotations": {"list": [
            {"builtIn": 1, "name": "Annotations & Alerts", "type": "dashboard", "enable": True, "hide": True,
             "iconColor": "rgba(0, 211, 255, 1)", "datasource": {"type": "grafana", "uid": "-- Grafana --"}},
            {"name": "Runbook changes", "enable": True, "hide": False, "iconColor": "purple", "datasource": DS,
             "expr": CHANGES_ANNOTATION, "step": "60s", "useValueForTime": True,
             "titleFormat": "change {{change_id}}: {{result}}", "textFormat": "{{target}} (job {{runbook_job}})",
             "tagKeys": "runbook_job,target,result"},
        ]},
        "panels": panels,
    }


def render() -> str:
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    OUT.write_text(render())
    sys.stdout.write(f"wrote {OUT}\n")
