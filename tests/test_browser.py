"""A finished sweep seen in a real browser: headless Chromium on `mdd ui`'s links.

`scripts/system-deps.sh` installs Debian's chromium and chromium-driver; without them
this test skips with a message. Set MDD_SCREENSHOTS to a folder to keep the screenshots.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.test_sweep import write_sweep

pytestmark = pytest.mark.browser
CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def finished_sweep(tiny_fmnist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("browser-sweep")
    store = f"sqlite:///{folder / 'mlflow.db'}"
    sweep = write_sweep(folder, tiny_fmnist, folder / "cache", store, "ui-sweep")
    done = subprocess.run(
        [sys.executable, "-m", "mdd", "sweep", str(sweep)],
        capture_output=True,
        text=True,
        timeout=1200,
        env={**os.environ, "MDD_PROGRESS": "off"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return sweep


@pytest.fixture(scope="module")
def ui_links(finished_sweep: Path) -> Iterator[dict[str, str]]:
    """`mdd ui SWEEP` serving the store; the links it printed, by their label."""
    port = _free_port()
    command = [sys.executable, "-m", "mdd", "ui", str(finished_sweep), "--port", str(port)]
    server = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        printed: dict[str, str] = {}
        while not any(label.startswith("trials of") for label in printed):
            line = server.stdout.readline()
            assert line, f"`mdd ui` exited without printing the trials' link: {printed}"
            label, _, url = line.strip().partition(": ")
            if url.startswith("http"):
                printed[label] = url
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                    break
            except OSError:
                assert time.monotonic() < deadline, "the MLflow UI did not answer within 180 s"
                time.sleep(1)
        yield printed
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # mlflow ui runs its server in a child
        server.wait(timeout=60)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if CHROMIUM is None or DRIVER is None:
        pytest.skip("headless Chromium is not installed here (scripts/system-deps.sh installs it)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    options.add_argument("--window-size=2400,1200")
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()


def _trials(sweep: Path) -> list:
    client = MlflowClient(tracking_uri=f"sqlite:///{sweep.parent / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("ui-sweep")
    runs = client.search_runs([experiment.experiment_id])
    return [run for run in runs if "mdd.trial_number" in run.data.tags]


# The button before a parent run's name that unfolds its nested runs (MLflow 3.17).
UNFOLD = 'button[data-component-id*="runnamecellrenderer"]'


def _page_showing(driver, url: str, texts: list[str], shot: Path, unfold: bool = False) -> str:
    """Open ``url`` and wait (deadline) until every text is on the rendered page; with
    ``unfold``, click open each parent run (a sweep's study) as a user would."""
    from selenium.webdriver.common.by import By

    driver.get(url)
    deadline = time.monotonic() + 120
    unfolded = not unfold
    while True:
        if not unfolded and (buttons := driver.find_elements(By.CSS_SELECTOR, UNFOLD)):
            for button in buttons:
                button.click()
            unfolded = True
        page = driver.find_element(By.TAG_NAME, "body").text
        missing = [text for text in texts if text not in page]
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(1)
    shot.parent.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(shot))
    assert not missing, f"not on {url} after 120 s: {missing} (screenshot {shot})\n{page[:3000]}"
    return page


def _shots(tmp_path: Path) -> Path:
    return Path(os.environ.get("MDD_SCREENSHOTS") or tmp_path)


def _shown(value: float) -> str:
    """A metric as the UI prints it: at most three decimals, trailing zeros dropped."""
    return f"{value:.3f}".rstrip("0").rstrip(".")


def _expected(trials: list) -> list[str]:
    """Each trial's name, its searched weight (distinct per trial) and its objective."""
    texts = [run.info.run_name for run in trials]
    texts += [run.data.params["finetune.lambda_r"] for run in trials]
    return texts + [_shown(run.data.metrics["objective/0"]) for run in trials]


def test_the_runs_table_shows_the_trials_with_their_weights_and_objective(
    finished_sweep: Path, ui_links: dict[str, str], browser, tmp_path: Path
) -> None:
    trials = _trials(finished_sweep)
    assert len(trials) == 3
    expected = [*_expected(trials), "finetune.lambda_r", "objective/0", "acc_val"]
    shot = _shots(tmp_path) / "runs.png"
    _page_showing(browser, ui_links["runs"], expected, shot, unfold=True)


def test_the_compare_view_of_the_trials_shows_each_trial_and_its_objective(
    finished_sweep: Path, ui_links: dict[str, str], browser, tmp_path: Path
) -> None:
    [url] = [url for label, url in ui_links.items() if label.startswith("trials of")]
    # acc_val is the objective's headline name, first in the view's metric list (the
    # list renders only the rows in sight).
    expected = [*_expected(_trials(finished_sweep)), "acc_val"]
    _page_showing(browser, url, expected, _shots(tmp_path) / "compare.png")
