"""A run stopped by SIGTERM (kill, docker stop) closes its MLflow runs and loses nothing done."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml
from mlflow import MlflowClient

from tests.conftest import tiny_config_data


def _runs_by_name(client: MlflowClient, experiment: str) -> dict[str, str]:
    found = client.get_experiment_by_name(experiment)
    runs = client.search_runs([found.experiment_id]) if found else []
    return {run.info.run_name: run.info.status for run in runs}


def test_sigterm_closes_the_open_runs_as_killed_and_keeps_the_finished_stages(
    tiny_fmnist: Path, tmp_path: Path, mlflow_store: str
) -> None:
    data = tiny_config_data(tiny_fmnist, tmp_path, mlflow_store)
    data["tracking"]["experiment"] = "tiny-sigterm"
    data["eval"]["epochs"] = 1_000_000  # still evaluating when the signal comes
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(data))
    log = tmp_path / "run.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "mdd", "run", str(config)], stdout=out, stderr=subprocess.STDOUT
        )
    try:
        client = MlflowClient(tracking_uri=mlflow_store)
        deadline = time.monotonic() + 300
        while _runs_by_name(client, "tiny-sigterm").get("evaluate") != "RUNNING":
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the run never reached its evaluation"
            time.sleep(1)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 130
    finally:
        if process.poll() is None:  # a failed assertion must not leave the run going
            process.kill()
            process.wait()
    statuses = _runs_by_name(client, "tiny-sigterm")
    assert statuses == {
        "tiny": "KILLED",
        "pretrain": "FINISHED",
        "judge": "FINISHED",
        "finetune": "FINISHED",
        "sample": "FINISHED",
        "diagnose": "FINISHED",
        "evaluate": "KILLED",
    }
    text = log.read_text()
    assert "interrupted" in text
    # Written to a file, progress is whole lines (mdd/progress.py), not redrawn bars.
    assert "\r" not in text
    assert re.search(r"^fine-tune: (\d+)/\1 \(100 %\)", text, re.MULTILINE), text


# SIGTERM sent from inside a weakref callback: its handler raises there, where Python
# swallows exceptions ("Exception ignored in ..."), as it can inside torch.compile's caches.
SIGNAL_IN_A_CALLBACK = """
import os, signal, sys, time, weakref
from mdd.cli import stop_on_sigterm
stop_on_sigterm()
class Thing: pass
def callback(ref):
    os.kill(os.getpid(), signal.SIGTERM)
    for _ in range(100_000): pass  # the handler runs here, inside the callback
thing = Thing()
held = weakref.ref(thing, callback)
try:
    del thing
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        time.sleep(0.01)
    print("not stopped")
    sys.exit(1)
except KeyboardInterrupt as exc:
    print(exc)
    sys.exit(130)
"""


def test_a_sigterm_swallowed_inside_a_callback_is_delivered_again_and_stops_the_run() -> None:
    done = subprocess.run(
        [sys.executable, "-c", SIGNAL_IN_A_CALLBACK], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 130, done.stdout + done.stderr
    assert "stopped by signal SIGTERM" in done.stdout
