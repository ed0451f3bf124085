"""cluster/mdd-sweep.sbatch on a real (one-node) SLURM cluster: a two-task job array is
two mdd-sweep workers finishing one study on PostgreSQL and an MLflow server.

`scripts/system-deps.sh` installs slurm-wlm and munge and starts the cluster
(cluster/local-slurm.sh); without it this test skips with a message.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import optuna
import pytest

from tests.test_distributed import (  # noqa: F401 - fixtures used by name
    PASSWORD,
    databases,
    experiment_runs,
    load_study,
    mlflow_server,
    write_sweep,
)

pytestmark = pytest.mark.postgres
REPO = Path(__file__).resolve().parents[1]


def _cluster_up() -> bool:
    if shutil.which("sbatch") is None:
        return False
    answer = subprocess.run(["sinfo", "-h", "-o", "%a"], capture_output=True, text=True)
    return answer.returncode == 0 and "up" in answer.stdout


def test_a_two_task_job_array_is_two_workers_completing_one_study(
    databases,  # noqa: F811
    mlflow_server,  # noqa: F811
    tiny_fmnist: Path,
    tmp_path: Path,
) -> None:
    if not _cluster_up():
        pytest.skip("no SLURM cluster answers here (scripts/system-deps.sh starts a local one)")
    sweep = write_sweep(tmp_path, tiny_fmnist, tmp_path / "cache", "slurm", budget={"n_trials": 4})
    storage = databases["optuna"]
    env = {
        **os.environ,
        "PGPASSWORD": PASSWORD,
        "MDD_SWEEP": str(sweep),
        "MDD_STORAGE": storage,
        "MLFLOW_TRACKING_URI": mlflow_server,
        "MDD_PYTHON": sys.executable,
    }
    name = f"mdd-test-{uuid.uuid4().hex[:8]}"
    command = ["sbatch", "--wait", "--array=0-1", f"--job-name={name}", "--cpus-per-task=1"]
    command += ["--mem=2G", f"--output={tmp_path}/worker-%a.out", "cluster/mdd-sweep.sbatch"]
    try:
        job = subprocess.run(
            command, cwd=REPO, env=env, capture_output=True, text=True, timeout=1500
        )
    finally:
        subprocess.run(["scancel", f"--name={name}"], capture_output=True)  # if we timed out
    outputs = {path.name: path.read_text() for path in sorted(tmp_path.glob("worker-*.out"))}
    assert job.returncode == 0, f"{job.stdout}{job.stderr}\n{outputs}"
    assert sorted(outputs) == ["worker-0.out", "worker-1.out"]
    for index, text in enumerate(outputs.values()):
        assert f"mdd-sweep worker {index} of job" in text

    study = load_study(storage, "slurm-ipc2")
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 4 == len(study.trials)
    assert study.user_attrs["workers_joined"] == 2  # each array task joined as a worker
    runs = experiment_runs(mlflow_server, "slurm")
    assert runs and {run.info.status for run in runs} == {"FINISHED"}
