"""JupyterLab as a person sees it: Debian's Chromium, driven by Playwright, runs 01-inspect.

Installs nothing at run time: Chromium comes from `.ci/run` (apt-get install chromium), Playwright's
Python package from the test extras. Skipped with a reason only where Chromium is not installed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
from helpers import REPO

from runbook.sandbox.throwaway import free_port

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]

pytestmark = [
    pytest.mark.notebook,
    pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium)"),
]


@pytest.fixture
def jupyterlab(tmp_path: Path):
    """JupyterLab from this environment on a free loopback port, with a token; stopped afterwards."""
    port, token = free_port(), uuid.uuid4().hex
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(tmp_path / "config"), "JUPYTER_DATA_DIR": str(tmp_path / "data"),
           "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"), "HOME": str(tmp_path)}
    for var in ("RUNBOOK_SANDBOX_URL", "RUNBOOK_SANDBOX_DIR", "REDIS_PASSWORD"):
        env.pop(var, None)
    log = (tmp_path / "jupyterlab.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip", "127.0.0.1", f"--port={port}",
         f"--IdentityProvider.token={token}", "--allow-root", f"--ServerApp.root_dir={REPO / 'notebooks'}",
         "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2)
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"JupyterLab did not start: {(tmp_path / 'jupyterlab.log').read_text()[-2000:]}")
            time.sleep(0.2)
    yield base, token
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()


def test_inspect_notebook_runs_in_jupyterlab(jupyterlab, tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is a test extra: pip install -e '.[test]'")
    base, token = jupyterlab
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "jupyterlab-01-inspect.png"
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1100})
            page.goto(f"{base}/lab/tree/01-inspect.ipynb?token={token}")
            page.wait_for_selector(".jp-Notebook", timeout=60_000)
            page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=60_000)
            # A fresh JupyterLab may ask which kernel to start; a person keeps the preselected one.
            dialog = page.locator(".jp-Dialog", has_text="Select Kernel")
            try:
                dialog.wait_for(timeout=5_000)
                dialog.locator("button", has_text="Select").click()
            except sync_api.TimeoutError:
                pass
            page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
            page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
            # The checks table (coloured pass/warn/fail cells) and the plot, rendered in the page.
            table = page.locator(".jp-OutputArea-output table", has_text="config_drift")
            table.wait_for(timeout=40_000)
            page.locator(".jp-OutputArea-output img").first.wait_for(timeout=60_000)
            page.locator(".jp-OutputArea-output", has_text='"verdict"').first.wait_for(timeout=60_000)
            page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=60_000)
            # Coloured as a person sees it: the computed background of a warn and a pass cell.
            warn = table.locator("td", has_text=re.compile(r"^\s*warn\s*$")).first
            ok = table.locator("td", has_text=re.compile(r"^\s*pass\s*$")).first
            assert warn.evaluate("e => getComputedStyle(e).backgroundColor") == "rgb(255, 243, 205)"
            assert ok.evaluate("e => getComputedStyle(e).backgroundColor") == "rgb(212, 237, 218)"
            assert page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']",
                                has_text="Traceback").count() == 0
            table.scroll_into_view_if_needed()
            page.screenshot(path=str(shot), full_page=False)
        except Exception:
            page.screenshot(path=str(ARTIFACTS / "jupyterlab-01-inspect-FAILED.png"))
            raise
        finally:
            browser.close()
    assert shot.stat().st_size > 10_000
