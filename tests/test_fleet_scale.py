"""Large fleets: one summary row per target, full sections only for the targets that are not `pass`, a page whose
size does not grow with passing targets beyond a row each, and every target's full summary in its own record."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterator

import pytest
from conftest import binary_or_skip
from helpers import index, run_json, runbook_cli

from runbook.evidence.report import FLEET_SECTIONS
from runbook.model import Check, Status, StepSummary
from runbook.orchestration.fleet import ROW, FleetResult, Member
from runbook.sandbox.throwaway import SEED_CONFIG, Sandbox, start_many

#: AOF on at runtime and in the file: a sandbox whose inspection passes (the host's overcommit is an advisory).
PASSING = SEED_CONFIG + "appendonly yes\nappendfsync everysec\n"
#: Cheap sandboxes: a server's cron once a second instead of ten times (200 idle servers share 2 cores).
CHEAP = "hz 1\n"


def _start(binary: Path, root: Path, n: int, config: str = PASSING) -> list[Sandbox]:
    return start_many([Sandbox(config=config + CHEAP, binary=binary, root=root / f"sb{i}") for i in range(n)])


def _fleet_file(path: Path, urls: list[str]) -> Path:
    path.write_text(json.dumps({"targets": urls}))  # JSON is YAML
    return path


def _page(out: dict) -> str:
    return Path(out["steps"][0]["html"]).read_text()


def _sections(html: str) -> list[str]:
    """The targets that have a section of their own (a `### target: verdict` heading)."""
    return [m.group(1) for m in re.finditer(r"<h3[^>]*>(\S+): \w+", html)]


@pytest.mark.parametrize("label", ["redis-7", "valkey-9"])
def test_only_targets_that_do_not_pass_get_a_section(label: str, tmp_path: Path) -> None:
    binary = binary_or_skip(label)
    passing = _start(binary, tmp_path, 28)
    warned, drifted = start_many([Sandbox(config=SEED_CONFIG + CHEAP, binary=binary, root=tmp_path / "warned"),
                                  Sandbox(config=PASSING + CHEAP, binary=binary, root=tmp_path / "drifted")])
    try:
        drifted.client().config_set("appendonly", "no")  # off at runtime, on in the file: a restart changes it
        fleet = [s.url for s in passing[:14]] + [warned.url] + [s.url for s in passing[14:]] + [drifted.url]
        archive = tmp_path / "archive"
        rc, out, err = run_json(archive, "inspect", "-f", str(_fleet_file(tmp_path / "fleet.yaml", fleet)))
        assert rc == 1, err
        status = {s["target"]: s["status"] for s in out["steps"]}
        assert status == {**{s.url: "pass" for s in passing}, warned.url: "warn", drifted.url: "fail"}
        html = _page(out)
        # One table row per target, in the fleet's order; sections for the two that do not pass, and no others.
        rows = re.findall(r"<tr><td>([^<]+)</td><td[^>]*>(\w+)</td>", html)
        assert rows == [(url, status[url]) for url in fleet]
        assert _sections(html) == [warned.url, drifted.url]
        assert "30 target(s): 1 fail, 1 warn, 28 pass" in html
        row = re.search(rf"<tr><td>{re.escape(drifted.url)}</td>.*?</tr>", html).group(0)
        assert "no/yes" in row and "appendonly" in row and "config_drift:" in row  # AOF runtime/file, drift, reason
        # Every target keeps its own record with its whole summary, the passing ones too.
        records = {r["target"]: r for r in index(archive)}
        assert set(records) == set(fleet) and len({tuple(r["files"]) for r in records.values()}) == 1
        for url, rec in records.items():
            summary = StepSummary.from_json(rec["summary"])
            assert summary.verdict == status[url] and summary.facts["dbsize"] == 0
            assert {"aof_enabled", "config_drift", "save_policy"} <= {c.name for c in summary.checks}
        assert records[drifted.url]["summary"]["drift"] == ["appendonly"]
        assert runbook_cli("archive", "verify", "--archive", str(archive)).returncode == 0
    finally:
        for sb in [*passing, warned, drifted]:
            sb.cleanup()


@pytest.fixture(scope="module")
def two_hundred(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Sandbox]]:
    binary = binary_or_skip("redis-7")
    sandboxes = _start(binary, tmp_path_factory.mktemp("fleet200"), 200)
    yield sandboxes
    for sb in sandboxes:
        sb.cleanup()


#: What a passing target may add to the fleet page: its table row (target, verdict, server, role, AOF, keys).
ROW_BUDGET_BYTES = 400


def test_the_page_grows_by_a_row_per_passing_target(two_hundred: list[Sandbox], tmp_path: Path) -> None:
    sizes = {}
    for n in (50, 200):
        urls = [s.url for s in two_hundred[:n]]
        rc, out, err = run_json(tmp_path / f"a{n}", "inspect", "-f", str(_fleet_file(tmp_path / f"f{n}.yaml", urls)))
        assert rc == 0, err
        assert [s["status"] for s in out["steps"]] == ["pass"] * n
        html = _page(out)
        assert _sections(html) == [] and f"All {n} target(s) pass" in html
        assert len(re.findall(r"<tr><td>redis://", html)) == n
        assert len(index(tmp_path / f"a{n}")) == n
        sizes[n] = len(html.encode())
    per_row = (sizes[200] - sizes[50]) / 150
    assert 0 < per_row <= ROW_BUDGET_BYTES, sizes


def _member(target: str, status: Status, observed: str = "seen") -> Member:
    checks = (Check("role", Status.PASS, "master"), Check("aof_enabled", status, observed, "fix it"))
    return Member(target, StepSummary("inspect", status, server="redis", version="7.0.15", checks=checks,
                                      facts={"role": "master", "dbsize": 1234, "aof_enabled": 0, "drift": []}))


def test_rows_name_the_first_failing_check_and_sections_are_capped() -> None:
    members = [_member(f"redis://h{i}:6379/0", Status.FAIL, "x" * 500) for i in range(FLEET_SECTIONS + 5)]
    members += [_member("redis://ok:6379/0", Status.PASS), Member("redis://gone:6379/0", error="cannot connect")]
    result = FleetResult("inspect", members)
    rows = result.rows()
    assert list(rows[0]) == list(ROW)
    assert rows[0]["first failing check"].startswith("aof_enabled: xxx") and len(rows[0]["first failing check"]) == 120
    assert rows[0]["keys"] == "1,234" and rows[0]["AOF runtime/file"] == "no/?"
    assert rows[-2]["first failing check"] == ""
    assert rows[-1] == {**dict.fromkeys(ROW, ""), "target": "redis://gone:6379/0", "verdict": "error",
                        "first failing check": "cannot connect"}
    assert result.counts() == {"error": 1, "fail": FLEET_SECTIONS + 5, "pass": 1}
    assert len(result.not_passing()) == FLEET_SECTIONS + 6
    # The fleet's record carries every member's own summary, whatever the page shows.
    assert set(result.summary().members) == {m.target for m in members}
