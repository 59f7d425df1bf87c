"""The MLflow UI, served by a real tracking server, lists a study's parent run and its nested trial runs.

Runs headless Debian Chromium (``/usr/bin/chromium``) through Playwright. Set ``SAVE_SCREENSHOT=docs/mlflow-ui.png``
to also copy the screenshot of the expanded runs table there (relative paths resolve against the repository).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from mlflow import MlflowClient
from playwright.sync_api import Page, expect, sync_playwright
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from pipeline.commands.cli import main
from tests.conftest import ROOT
from tests.processes import stop

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
# No sandbox: CI runs as root in a container. The rest keeps Chromium off the network and away from a GPU.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SERVER_START_TIMEOUT_S = 90.0
# The first page load parses a multi-megabyte UI bundle; a slow CI machine needs more than the default 5 s.
UI_TIMEOUT_MS = 60_000


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_command(folder: Path, port: int) -> list[str]:
    return [sys.executable, "-m", "mlflow", "server",
            "--backend-store-uri", f"sqlite:///{folder}/mlflow.db",
            # Artifacts served through the proxy stay in the study's folder, not in the server's working directory.
            "--artifacts-destination", str(folder / "mlartifacts"),
            "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]


def wait_until_healthy(url: str, server: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"mlflow server exited with code {server.returncode}:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    pytest.fail(f"mlflow server did not answer {url}/health within {SERVER_START_TIMEOUT_S:.0f} s:\n"
                f"{log.read_text()[-4000:]}")


@contextmanager
def mlflow_server(folder: Path) -> Iterator[str]:
    port = free_port()
    log = folder / "mlflow-server.log"
    # The job runner serves GenAI features the runs page does not use, and its consumers would outlive the server.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with log.open("wb") as out:
        server = subprocess.Popen(server_command(folder, port), cwd=folder, env=env, stdin=subprocess.DEVNULL,
                                  stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_healthy(url, server, log)
        yield url
    finally:
        stop(server)


def close_assistant(page: Page) -> None:
    """The assistant panel opens by itself on a fresh profile and hides half of the runs table in the screenshot."""
    close = page.locator('[data-component-id="mlflow.assistant.chat_panel.close"]')
    try:
        close.wait_for(state="visible", timeout=5_000)
    except PlaywrightTimeout:  # Not every MLflow build has the assistant; the table is what the test checks.
        return
    close.click()
    expect(close).to_be_hidden()


def test_runs_page_lists_parent_and_trial_runs(tmp_path: Path):
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium); "
                    ".ci/run does this in CI")
    assert main(["study", "--config", str(ROOT / "configs/smoke.yaml"), "--trials", "2",
                 "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"]) == 0
    experiment_id = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_experiment_by_name("smoke").experiment_id
    screenshot = tmp_path / "mlflow-ui.png"

    with mlflow_server(tmp_path) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 800})
            page.set_default_timeout(UI_TIMEOUT_MS)
            page.goto(f"{url}/#/experiments/{experiment_id}/runs")
            try:
                parent_link = page.get_by_role("link", name="smoke", exact=True)
                parent = page.get_by_role("row").filter(has=parent_link)
                expect(parent).to_have_count(1, timeout=UI_TIMEOUT_MS)
                close_assistant(page)
                # The table collapses nested runs under their parent; the only button in the run-name cell expands
                # them (it has no label to select it by).
                parent.get_by_role("gridcell").filter(has=parent_link).get_by_role("button").click()
                for trial in ("trial-000", "trial-001"):
                    expect(page.get_by_role("row").filter(
                        has=page.get_by_role("link", name=trial, exact=True))).to_be_visible()
            finally:
                # Also on failure: the picture shows what the page looked like.
                page.screenshot(path=str(screenshot))
        finally:
            browser.close()

    assert screenshot.stat().st_size > 10_000
    if target := os.environ.get("SAVE_SCREENSHOT"):
        destination = ROOT / target
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(screenshot, destination)
