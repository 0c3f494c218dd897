"""The admin console in a real browser: headless Chromium, driven by Selenium.

The real service (`crispml serve` in a subprocess) serves version 2 of a real registry
model; the browser logs in with an admin token, reads the serving version from the
page, rolls back through the form with a reason, and sees the history gain the event
and the serving version change. A screenshot goes to test-artifacts/console.png
(gitignored), and the browser's console must hold no error: the page's
scripts, Plotly included, run under its Content-Security-Policy.

Needs Debian's `chromium` and `chromium-driver` packages and the `selenium` package;
without them the test skips, saying which is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.service.conftest import Registry, Server, make_repo

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
# A token for this test only.
ADMIN = "console-browser-admin-token-0123456789"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,1000",
)


def _browser_or_skip() -> None:
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not Path(path).is_file()]
    if missing:
        pytest.skip(
            f"{', '.join(missing)} not installed: `apt-get install chromium chromium-driver` "
            "(Debian's packages) to run the console in a real browser"
        )
    pytest.importorskip("selenium", reason="the selenium package is not installed")


@pytest.fixture
def registry(request: pytest.FixtureRequest) -> Registry:
    """The service tests' registry (two versions), built only when a browser is there."""
    _browser_or_skip()  # before the minute the registry takes
    return request.getfixturevalue("model_registry")


def _reports(root: Path) -> None:
    """A verify summary and a replay, so the page's charts and report links have data."""
    reports = root / "reports"
    (reports / "verify").mkdir(parents=True)
    frames = {
        str(day): {
            "drift_share": share,
            "drifted": ["Amount", "V1"] if share else [],
            "labeled_rows": 3000,
            "labelled_positives": 40,
            "pr_auc": auc,
            "pr_auc_interval": [auc - 0.08, auc + 0.07],
            "recall": 0.6,
            "roc_auc": 0.93,
        }
        for day, share, auc in ((7, 0.0, 0.81), (8, 0.03, 0.78), (9, 0.24, 0.52))
    }
    verify = {
        "frames": frames,
        "overall": frames["9"],
        "gate": {"verdict": "passed", "reasons": []},
        "model_name": "crispml-fraud",
        "model_version": "2",
    }
    (reports / "verify.json").write_text(json.dumps(verify))
    for day in (7, 8, 9):
        for kind in ("drift", "quality"):
            page = reports / "verify" / f"frame_{day}_{kind}.html"
            page.write_text(f"<html><body><h1>frame {day} {kind}</h1></body></html>")
    days = [
        {
            "day": 7,
            "drift_share": 0.0,
            "drift_share_static": 0.0,
            "pr_auc_static": 0.81,
            "pr_auc_ct": 0.81,
        },
        {
            "day": 8,
            "drift_share": 0.03,
            "drift_share_static": 0.03,
            "pr_auc_static": 0.78,
            "pr_auc_ct": 0.8,
        },
        {
            "day": 9,
            "drift_share": 0.24,
            "drift_share_static": 0.24,
            "pr_auc_static": 0.52,
            "pr_auc_ct": 0.66,
        },
    ]
    (reports / "replay.json").write_text(json.dumps({"days": days}))


def _full_page(driver: Any, path: Path) -> None:
    """A screenshot of the whole page: the window made as tall as the document."""
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1400, min(int(height) + 40, 6000))
    driver.execute_script("window.scrollTo(0, 0)")
    assert driver.save_screenshot(str(path)), path
    driver.set_window_size(1400, 1000)


def test_an_admin_rolls_back_from_the_console_in_headless_chromium(
    tmp_path: Path, registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager must never download a driver
    alias = f"browser-{uuid.uuid4().hex[:8]}"
    store_url = f"sqlite:///{tmp_path / 'scores.db'}"
    root = make_repo(tmp_path / "repo", env="dev", store_url=store_url, alias=alias)
    _reports(root)
    registry.move_alias(alias, 1, store_url)
    registry.move_alias(alias, 2, store_url)
    server = Server(root, registry, env_vars={"CRISPML_API_TOKEN": ADMIN})
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = None
    try:
        server.start().wait_ready()
        with httpx.Client(base_url=server.url, timeout=30) as client:  # traffic to show
            answers = [
                client.post("/v1/score", json=item["record"]).json()
                for item in registry.records[:30]
            ]
            labels = [
                {"score_id": answer["score_id"], "label": item["label"]}
                for answer, item in zip(answers[:18], registry.records, strict=False)
            ]
            auth = {"authorization": f"Bearer {ADMIN}"}
            stored = client.post("/v1/labels", json={"labels": labels}, headers=auth)
            assert stored.status_code == 200, stored.text
        driver = webdriver.Chrome(
            service=Service(executable_path=CHROMEDRIVER, log_output=str(tmp_path / "driver.log")),
            options=options,
        )
        wait = WebDriverWait(driver, 90)
        driver.get(f"{server.url}/console")
        assert driver.current_url.endswith("/console/login")  # no session: the login page
        driver.find_element(By.ID, "token").send_keys(ADMIN)
        driver.find_element(By.ID, "login").click()
        version = wait.until(ready.presence_of_element_located((By.ID, "serving-version")))
        assert version.text == "2"
        assert ADMIN not in driver.current_url and ADMIN not in driver.page_source
        history = f"#history-{alias} tbody tr"
        before = driver.find_elements(By.CSS_SELECTOR, history)
        assert len(before) == 2
        assert driver.find_element(By.ID, "rollback-target").text == "1"

        ARTIFACTS.mkdir(exist_ok=True)
        _full_page(driver, ARTIFACTS / "console-before-rollback.png")
        driver.find_element(By.ID, "reason").send_keys("INC-2026: recall dropped on frame 9")
        driver.find_element(By.ID, "rollback").click()
        wait.until(ready.presence_of_element_located((By.ID, "notice")))
        assert driver.find_element(By.ID, "serving-version").text == "1"
        rows = driver.find_elements(By.CSS_SELECTOR, history)
        assert len(rows) == 3
        newest = rows[0].text
        reason = "rollback: from version 2 to version 1 (INC-2026: recall dropped on frame 9)"
        assert reason in newest
        assert "console:token-1" in newest
        loaded = driver.find_element(By.ID, "loaded").text
        assert "champion 1" in loaded  # this process reloaded at once

        # Plotly drew the charts, from this service, under the page's CSP; the live
        # traffic chart fills in from the page's polling while requests arrive.
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#chart-pr-auc .main-svg"))
        chart = driver.find_element(By.ID, "chart-traffic")
        with httpx.Client(base_url=server.url, timeout=30) as client:
            for round_ in range(40):
                for item in registry.records[30 + 5 * round_ : 35 + 5 * round_]:
                    client.post("/v1/score", json=item["record"])
                if int(chart.get_attribute("data-points") or 0) >= 3:
                    break
                time.sleep(0.5)
        assert int(chart.get_attribute("data-points") or 0) >= 3
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors

        _full_page(driver, ARTIFACTS / "console.png")
    except BaseException:
        if driver is not None:  # what the browser showed, for whoever reads the failure
            ARTIFACTS.mkdir(exist_ok=True)
            driver.save_screenshot(str(ARTIFACTS / "console-failure.png"))
        raise
    finally:
        if driver is not None:
            driver.quit()
        server.stop()
        if os.environ.get("CRISPML_KEEP_SERVER_LOG"):
            print(server.log())
