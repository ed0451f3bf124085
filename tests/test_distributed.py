"""Many workers on one study: a real PostgreSQL server, a real `mlflow server`, real processes.

`make test` (scripts/system-deps.sh) starts PostgreSQL on loopback and creates the role
these tests use; each test module makes its own databases and drops them afterwards.
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
import uuid
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow import MlflowClient

from tests.conftest import tiny_config_data

ROLE, PASSWORD = "mdd_test", "mdd-test-only"
ADMIN_URL = f"postgresql://{ROLE}:{PASSWORD}@127.0.0.1:5432/postgres"

pytestmark = pytest.mark.postgres


def _admin(sql: str) -> None:
    import psycopg

    with psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=5) as connection:
        connection.execute(sql)


@pytest.fixture(scope="module")
def databases() -> Iterator[dict[str, str]]:
    """Fresh Optuna and MLflow databases; URLs without the password (it is in PGPASSWORD)."""
    if shutil.which("pg_ctlcluster") is None and shutil.which("pg_ctl") is None:
        pytest.skip("PostgreSQL is not installed here (scripts/system-deps.sh installs it)")
    try:
        _admin("SELECT 1")
    except Exception as exc:  # noqa: BLE001
        pytest.fail(
            f"PostgreSQL is installed but not reachable ({exc}); run scripts/system-deps.sh"
        )
    suffix = uuid.uuid4().hex[:8]
    names = {"optuna": f"mdd_optuna_{suffix}", "mlflow": f"mdd_mlflow_{suffix}"}
    for name in names.values():
        _admin(f"CREATE DATABASE {name}")
    yield {key: f"postgresql://{ROLE}@127.0.0.1:5432/{name}" for key, name in names.items()}
    for name in names.values():
        _admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(databases: dict[str, str], tmp_path_factory) -> Iterator[str]:
    """`mlflow server` backed by PostgreSQL, serving artifacts from a temporary folder."""
    port = _free_port()
    artifacts = tmp_path_factory.mktemp("mlflow-artifacts")
    command = [
        str(Path(sys.executable).parent / "mlflow"),
        "server",
        "--backend-store-uri",
        databases["mlflow"],
        "--artifacts-destination",
        str(artifacts),
        "--serve-artifacts",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    log = open(tmp_path_factory.mktemp("mlflow-log") / "server.log", "w")  # noqa: SIM115
    server = subprocess.Popen(
        command, env={**os.environ, "PGPASSWORD": PASSWORD}, stdout=log, stderr=log
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                if answer.status == 200:
                    break
        except OSError:
            if server.poll() is not None:
                pytest.fail(f"mlflow server exited: {Path(log.name).read_text()[-2000:]}")
            time.sleep(1)
    else:
        server.kill()
        pytest.fail("mlflow server did not answer /health within 180 s")
    yield url
    server.terminate()
    server.wait(timeout=30)
    log.close()


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


def write_sweep(folder: Path, data_root: Path, cache: Path, name: str, **changes) -> Path:
    base = tiny_config_data(data_root, folder, "unused-overridden-by-MLFLOW_TRACKING_URI")
    base["cache_dir"] = str(cache)
    base["tracking"]["experiment"] = name
    base["finetune"]["steps"] = 40  # long enough to be killed in the middle of a trial
    (folder / "base.yaml").write_text(yaml.safe_dump(base))
    sweep = {
        "name": name,
        "base": "base.yaml",
        "sampler": {"name": "random", "seed": 0},
        "pruner": {"name": "none"},
        "budget": {"n_trials": 4},
        "space": {"finetune.lambda_r": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True}},
        "ipc": [2],
        "heartbeat_s": 2,
        "trial": {"epochs": 2},
        "final": {"enabled": False},
    }
    sweep.update(changes)
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return path


def start_worker(sweep: Path, storage: str, tracking: str, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PGPASSWORD": PASSWORD, "MLFLOW_TRACKING_URI": tracking}
    command = [sys.executable, "-m", "mdd", "sweep", str(sweep), "--storage", storage]
    handle = open(log, "w")  # noqa: SIM115 - closed when the process is collected
    return subprocess.Popen(command, env=env, stdout=handle, stderr=subprocess.STDOUT)


def experiment_runs(tracking: str, name: str) -> list:
    client = MlflowClient(tracking_uri=tracking)
    experiment = client.get_experiment_by_name(name)
    return client.search_runs([experiment.experiment_id]) if experiment else []


def load_study(storage: str, name: str) -> optuna.Study:
    os.environ["PGPASSWORD"] = PASSWORD
    return optuna.load_study(study_name=name, storage=storage)


def test_two_workers_on_postgres_complete_every_trial_once_under_one_parent(
    databases, mlflow_server, tiny_fmnist: Path, shared_cache: Path, tmp_path: Path
) -> None:
    sweep = write_sweep(tmp_path, tiny_fmnist, shared_cache, "pg-two")
    # The password rides in the storage URL here, to check that it is never logged.
    storage = databases["optuna"].replace(f"{ROLE}@", f"{ROLE}:{PASSWORD}@")
    workers = [
        start_worker(sweep, storage, mlflow_server, tmp_path / f"worker{i}.log") for i in range(2)
    ]
    codes = [worker.wait(timeout=600) for worker in workers]
    logs = [(tmp_path / f"worker{i}.log").read_text() for i in range(2)]
    assert codes == [0, 0], logs
    assert all(PASSWORD not in text for text in logs)

    trials = load_study(databases["optuna"], "pg-two-ipc2").trials
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    runs = experiment_runs(mlflow_server, "pg-two")
    parents = [
        r for r in runs if "mdd.study" in r.data.tags and "mdd.trial_number" not in r.data.tags
    ]
    trial_runs = [r for r in runs if "mdd.trial_number" in r.data.tags]
    assert len(parents) == 1
    assert sorted(int(r.data.tags["mdd.trial_number"]) for r in trial_runs) == [0, 1, 2, 3]
    assert {r.data.tags["mlflow.parentRunId"] for r in trial_runs} == {parents[0].info.run_id}
    assert len({r.data.tags["mdd.worker_pid"] for r in trial_runs}) == 2
    assert {r.info.status for r in runs} == {"FINISHED"}

    # The database password appears nowhere in the MLflow store: not in any table...
    import psycopg

    with psycopg.connect(
        databases["mlflow"].replace(f"{ROLE}@", f"{ROLE}:{PASSWORD}@")
    ) as connection:
        tables = connection.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchall()
        for (table,) in tables:
            for row in connection.execute(f'SELECT * FROM "{table}"').fetchall():
                assert PASSWORD not in repr(row), table
    # ...and not in any artifact.
    client = MlflowClient(tracking_uri=mlflow_server)
    for run in [*parents, *trial_runs]:
        folder = client.download_artifacts(run.info.run_id, "", str(tmp_path / run.info.run_id))
        for file in Path(folder).rglob("*"):
            if file.is_file():
                assert PASSWORD.encode() not in file.read_bytes(), file


def survive(sweep: Path, storage: str, tracking: str, folder: Path, study: str) -> tuple:
    """Run a second worker to the end of the sweep; the study's complete and failed trials."""
    survivor = start_worker(sweep, storage, tracking, folder / "survivor.log")
    assert survivor.wait(timeout=600) == 0, (folder / "survivor.log").read_text()
    trials = load_study(storage, study).trials
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    failed = [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
    return complete, failed


def running_trial_with_params(storage: str, name: str) -> optuna.trial.FrozenTrial | None:
    """The study's running trial once its parameters are in the storage, else None."""
    try:
        trials = load_study(storage, name).get_trials(deepcopy=False)
    except KeyError:  # the worker has not created the study yet
        return None
    running = [t for t in trials if t.state == optuna.trial.TrialState.RUNNING and t.params]
    return running[0] if running else None


def test_killed_worker_trial_is_failed_retried_and_its_runs_closed(
    databases, mlflow_server, tiny_fmnist: Path, shared_cache: Path, tmp_path: Path
) -> None:
    sweep = write_sweep(tmp_path, tiny_fmnist, shared_cache, "pg-kill", budget={"n_trials": 3})
    storage = databases["optuna"]
    victim = start_worker(sweep, storage, mlflow_server, tmp_path / "victim.log")
    # Kill the first worker in the middle of its first trial, once the trial's parameters
    # are stored (on a busy machine the kill could otherwise land before them: that
    # earlier death is the next test's case).
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        trial = running_trial_with_params(storage, "pg-kill-ipc2")
        if trial is not None:
            victim.send_signal(signal.SIGKILL)
            break
        if victim.poll() is not None:
            pytest.fail((tmp_path / "victim.log").read_text())
        time.sleep(0.3)
    else:
        pytest.fail("the first worker never stored a trial's parameters within 300 s")
    victim.wait(timeout=30)
    complete, failed = survive(sweep, storage, mlflow_server, tmp_path, "pg-kill-ipc2")
    assert len(complete) == 3  # the request, despite the lost trial
    assert [t.number for t in failed] == [trial.number]
    retried = [t for t in complete if t.system_attrs.get("failed_trial") == failed[0].number]
    assert len(retried) == 1 and retried[0].params == failed[0].params == trial.params
    runs = experiment_runs(mlflow_server, "pg-kill")
    assert not [r for r in runs if r.info.status == "RUNNING"]
    lost = [r for r in runs if r.info.run_id == failed[0].user_attrs["mlflow_run_id"]][0]
    assert lost.info.status == "KILLED"
    assert "no heartbeat" in lost.data.tags["mdd.error"]


# A real worker that dies right after asking for its trial: its heartbeat is stored, its
# parameters and MLflow run are not.
DIES_AFTER_ASKING = """
import os, signal, sys
from mdd.sweep.worker import Worker

class DiesAfterAsking(Worker):
    def run_trial(self, study, trial, ipc, parent):
        self.storage.record_heartbeat(self.trial_id(study, trial))
        os.kill(os.getpid(), signal.SIGKILL)

DiesAfterAsking(sys.argv[1], sys.argv[2], None).run()
"""


def test_worker_killed_before_its_parameters_leaves_a_failed_trial_and_a_full_sweep(
    databases, mlflow_server, tiny_fmnist: Path, shared_cache: Path, tmp_path: Path
) -> None:
    sweep = write_sweep(tmp_path, tiny_fmnist, shared_cache, "pg-early", budget={"n_trials": 3})
    storage = databases["optuna"]
    env = {**os.environ, "PGPASSWORD": PASSWORD, "MLFLOW_TRACKING_URI": mlflow_server}
    victim = subprocess.run(
        [sys.executable, "-c", DIES_AFTER_ASKING, str(sweep), storage],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert victim.returncode == -signal.SIGKILL, victim.stderr
    [asked] = load_study(storage, "pg-early-ipc2").trials
    assert asked.state == optuna.trial.TrialState.RUNNING and asked.params == {}

    complete, failed = survive(sweep, storage, mlflow_server, tmp_path, "pg-early-ipc2")
    assert len(complete) == 3  # the request, despite the lost trial
    assert [t.number for t in failed] == [asked.number]
    assert [t.system_attrs.get("failed_trial") for t in complete].count(asked.number) == 1
    assert all(t.params for t in complete)  # the retry drew its own values
    runs = experiment_runs(mlflow_server, "pg-early")
    trial_runs = [r for r in runs if "mdd.trial_number" in r.data.tags]
    assert len(trial_runs) == 3 and {r.info.status for r in trial_runs} == {"FINISHED"}


@pytest.mark.parametrize(
    "storage, tracking, fragment",
    [
        ("postgresql://mdd_test@127.0.0.1:1/nothing", None, "Optuna storage"),
        ("nosuchdb://x", None, "Optuna storage"),
        (None, "http://127.0.0.1:9", "MLflow tracking store"),
    ],
)
def test_wrong_storage_or_unreachable_tracking_server_exits_with_a_message(
    tiny_fmnist: Path, shared_cache: Path, tmp_path: Path, storage, tracking, fragment
) -> None:
    sweep = write_sweep(tmp_path, tiny_fmnist, shared_cache, "pg-bad")
    env = {**os.environ, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
    env["MLFLOW_TRACKING_URI"] = tracking or f"sqlite:///{tmp_path / 'mlflow.db'}"
    command = [sys.executable, "-m", "mdd", "sweep", str(sweep)]
    command += ["--storage", storage or f"sqlite:///{tmp_path / 'optuna.db'}"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert fragment in done.stderr and "Traceback" not in done.stderr
