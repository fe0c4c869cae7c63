"""JupyterLab as a person sees it: Debian's Chromium, driven by Playwright, runs 01-inspect with its defaults, and
02-enable-aof against a server of the test's own through a params file loaded with `runbook.use_params`.

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

from runbook.evidence.journal import RUN_ID_ENV
from runbook.evidence.summary import CHANGE_ID_ENV
from runbook.orchestration.interactive import BANNER_CLASS
from runbook.sandbox.seed import seed_sandbox
from runbook.sandbox.throwaway import free_port

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]

pytestmark = [
    pytest.mark.notebook,
    pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium)"),
]


@pytest.fixture(scope="module")
def jupyterlab(tmp_path_factory: pytest.TempPathFactory):
    """JupyterLab from this environment on a free loopback port, with a token; stopped afterwards. One for the
    module. It serves a copy of the notebooks, so that an autosave never writes outputs into the source tree."""
    tmp_path = tmp_path_factory.mktemp("jupyterlab")
    root = tmp_path / "notebooks"
    shutil.copytree(REPO / "notebooks", root, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    port, token = free_port(), uuid.uuid4().hex
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(tmp_path / "config"), "JUPYTER_DATA_DIR": str(tmp_path / "data"),
           "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"), "HOME": str(tmp_path)}
    for var in ("RUNBOOK_SANDBOX_URL", "RUNBOOK_SANDBOX_DIR", "RUNBOOK_SANDBOX_FILE", "REDIS_PASSWORD", RUN_ID_ENV,
                CHANGE_ID_ENV):
        env.pop(var, None)
    log = (tmp_path / "jupyterlab.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip", "127.0.0.1", f"--port={port}",
         f"--IdentityProvider.token={token}", "--allow-root", f"--ServerApp.root_dir={root}",
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


@pytest.fixture(scope="module")
def browser(jupyterlab):
    """Debian's Chromium, headless, driven by Playwright (one for the module)."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is a test extra: pip install -e '.[test]'")
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def open_notebook(browser, jupyterlab, name: str):
    """A page with notebook `name` open in JupyterLab, its kernel idle."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    base, token = jupyterlab
    page = browser.new_page(viewport={"width": 1500, "height": 1100})
    # A workspace of its own (reset), so that no other notebook of the module is open in a hidden tab.
    page.goto(f"{base}/lab/workspaces/{Path(name).stem}/tree/{name}?reset&token={token}")
    page.wait_for_selector(".jp-Notebook", timeout=60_000)
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=60_000)
    # A fresh JupyterLab may ask which kernel to start; a person keeps the preselected one.
    dialog = page.locator(".jp-Dialog", has_text="Select Kernel")
    try:
        dialog.wait_for(timeout=5_000)
        dialog.locator("button", has_text="Select").click()
    except PlaywrightTimeout:
        pass
    return page


def run_all(page) -> None:
    page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
    page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()


def no_traceback(page) -> bool:
    return page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']",
                        has_text="Traceback").count() == 0


def shown(locator, timeout: float) -> None:
    """Wait until `locator` is in the page, then scroll to it: JupyterLab renders only the cells in view, and
    stops following a run whose outputs are taller than the window."""
    locator.wait_for(state="attached", timeout=timeout)
    locator.scroll_into_view_if_needed()
    assert locator.is_visible()


def assert_shown(banner, *texts: str) -> None:
    """The not-archived banner as a person sees it: scrolled to, its text rendered, on its yellow background."""
    from playwright.sync_api import expect

    banner.scroll_into_view_if_needed()
    assert banner.is_visible()
    for text in texts:  # the rendered text (JupyterLab renders a cell scrolled to on its next frame)
        expect(banner).to_contain_text(text, use_inner_text=True, timeout=10_000)
    assert banner.evaluate("e => getComputedStyle(e).backgroundColor") == "rgb(255, 243, 205)"


def test_inspect_notebook_runs_in_jupyterlab(browser, jupyterlab) -> None:
    """With its defaults: the sandbox `runbook run inspect` starts too (AOF on at runtime, off in the file), so
    the drift shows; and the banner says the run is not archived."""
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "jupyterlab-01-inspect.png"
    page = open_notebook(browser, jupyterlab, "01-inspect.ipynb")
    try:
        run_all(page)
        # The checks table (coloured pass/fail cells) and the plot, rendered in the page as it follows the run.
        table = page.locator(".jp-OutputArea-output table", has_text="config_drift")
        table.wait_for(timeout=40_000)
        page.locator(".jp-OutputArea-output img").first.wait_for(timeout=60_000)
        shown(page.locator(".jp-OutputArea-output", has_text="summary recorded:").first, timeout=60_000)  # the summary
        page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=60_000)
        assert_shown(page.locator(f".jp-OutputArea-output .{BANNER_CLASS}"), "Not archived.", "runbook run inspect")
        # Coloured as a person sees it: the computed background of the drift's fail and of a pass cell.
        drift = table.locator("tr", has_text="config_drift").locator("td", has_text=re.compile(r"^\s*fail\s*$"))
        ok = table.locator("td", has_text=re.compile(r"^\s*pass\s*$")).first
        assert drift.evaluate("e => getComputedStyle(e).backgroundColor") == "rgb(248, 215, 218)"
        assert ok.evaluate("e => getComputedStyle(e).backgroundColor") == "rgb(212, 237, 218)"
        assert no_traceback(page)
        table.scroll_into_view_if_needed()
        page.screenshot(path=str(shot), full_page=False)
    except Exception:
        page.screenshot(path=str(ARTIFACTS / "jupyterlab-01-inspect-FAILED.png"))
        raise
    finally:
        page.close()
    assert shot.stat().st_size > 10_000


def test_a_params_file_loaded_in_jupyterlab_points_the_notebook_at_that_server(browser, jupyterlab,
                                                                               tmp_path: Path) -> None:
    """A person's way to another server: a cell with `runbook.use_params(FILE)` after the imports (the committed
    cells untouched). 02-enable-aof then runs against the test's server (AOF off: not the default sandbox), waits
    for the rewrite with a progress widget, and its banner gives the `runbook run` command that archives it."""
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "jupyterlab-02-enable-aof-params.png"
    sb = seed_sandbox("rdb-only", keys=3000)
    page = None
    try:
        params = tmp_path / "lab.yaml"
        params.write_text(f"target: {sb.url}\napply: true\ntimeout_s: 60\n")
        page = open_notebook(browser, jupyterlab, "02-enable-aof.ipynb")
        # A new cell below the imports (command mode: down to the third cell, b), typed as a person types it.
        page.locator(".jp-Cell").first.click()
        page.keyboard.press("Escape")
        page.keyboard.press("ArrowDown")
        page.keyboard.press("ArrowDown")
        assert "runbook.use_params" in page.locator(".jp-Cell.jp-mod-active").text_content()
        page.keyboard.press("b")
        page.keyboard.press("Enter")
        page.keyboard.insert_text(f'runbook.use_params("{params}")')
        run_all(page)
        page.locator(".jp-OutputArea-output", has_text="result: changed").first.wait_for(timeout=90_000)
        # The wait for the rewrite: tqdm.auto's widget (an ipywidgets progress bar and its label), not a text bar.
        progress = page.locator(".jp-OutputArea-output .widget-hbox", has_text="waiting for the AOF rewrite")
        shown(progress.locator(".widget-hprogress").first, timeout=30_000)
        shown(page.locator(".jp-OutputArea-output", has_text="summary recorded:").first, timeout=60_000)  # the summary
        page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=60_000)
        assert no_traceback(page)
        assert sb.client().config_get("appendonly")["appendonly"] == "yes"  # the change reached that server
        # The notebook's own findings name the test's server: its data dir, in the preflight table.
        preflight = page.locator(".jp-OutputArea-output table", has_text="free_disk").filter(has_text=str(sb.data_dir))
        preflight.scroll_into_view_if_needed()
        assert preflight.is_visible()
        loaded = page.locator(f".jp-OutputArea-output .{BANNER_CLASS}", has_text=str(params))
        assert_shown(loaded, "Not archived.", f"runbook run enable-aof -f {params}", sb.url)
        page.screenshot(path=str(shot), full_page=False)
    except Exception:
        if page is not None:
            page.screenshot(path=str(ARTIFACTS / "jupyterlab-02-enable-aof-params-FAILED.png"))
        raise
    finally:
        if page is not None:
            page.close()
        sb.cleanup()
    assert shot.stat().st_size > 10_000
