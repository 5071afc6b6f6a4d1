"""The MLflow UI as a user sees it: headless Chromium (the system's, driven by Playwright) opens the URL that
`pgnet sweep` prints, on a real `mlflow server` holding a small sweep (`tracked_sweep`).

It must land on the experiment's runs table in the "Model training" view, with the sweep's trials as rows
(not folded under their parent run), the swept param and the AP metric as columns, and each trial's data set
and model. The page is saved as test-artifacts/mlflow_runs.png (git-ignored).
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.support.paths import REPO

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SCREENSHOT = REPO / "test-artifacts" / "mlflow_runs.png"
PAGE_TIMEOUT_MS = 30_000

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(),
                                reason="no /usr/bin/chromium: install it with `apt-get install -y chromium`")


def printed_url(lines: list[str]) -> str:
    found = [m.group(0) for line in lines for m in [re.search(r"http://\S+", line)] if m]
    assert len(found) == 1, lines
    return found[0]


@pytest.fixture(scope="module")
def page():
    from playwright.sync_api import sync_playwright
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        yield chromium.new_page(viewport={"width": 1920, "height": 1000})
        chromium.close()


def test_the_printed_url_opens_the_sweeps_trials_in_the_model_training_view(tracked_sweep, page):
    url = printed_url(tracked_sweep.printed)
    assert url.startswith(f"{tracked_sweep.uri}/#/experiments/") and "workflowType=machine_learning" in url
    client = tracked_sweep.client
    trial_names = sorted(client.get_run(run_id).info.run_name for run_id, _ in tracked_sweep.trials.values())
    parent_name = client.get_run(tracked_sweep.parent_run_id).info.run_name

    page.goto(url)
    for name in trial_names:  # each trial a row of its own
        page.get_by_text(name, exact=True).first.wait_for(timeout=PAGE_TIMEOUT_MS)
    assistant = page.locator("button[aria-label='Close']")  # MLflow's assistant panel, open in a new browser
    if assistant.count():
        assistant.first.click()
    page.locator("[role=columnheader]", has_text="model.neck").first.wait_for(timeout=PAGE_TIMEOUT_MS)
    page.wait_for_timeout(1000)  # the page polls the server, it is never idle: let the table settle
    SCREENSHOT.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOT))
    print(f"\nscreenshot of the MLflow runs table: {SCREENSHOT}")

    headers = set(page.locator("[role=columnheader]").all_inner_texts())
    assert {"Run Name", "Dataset", "Models", "model.neck", "keypoints/AP", "bbox/AP"} <= headers, headers
    table = page.locator(".ag-root").first.inner_text()
    assert "cffm" in table and "fpn" in table  # the swept values, one per trial
    assert table.count("synthetic-train2017") == len(trial_names)  # each trial's training data
    assert table.count("pgnet") >= len(trial_names)  # the Models column: each trial's logged model
    assert parent_name not in table  # the view lists the sweep's trials alone
    sidebar = page.locator("nav").first.inner_text()
    assert "Runs" in sidebar and "Judges" not in sidebar  # the Model training view, not GenAI's
    assert "workflowType=machine_learning" in page.url
