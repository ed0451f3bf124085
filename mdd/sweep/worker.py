"""``mdd-sweep``: an Optuna study over a single run's settings; the only module using Optuna.

A trial is ``mdd-run`` with overrides: the worker turns the trial's suggestions
into a config and calls ``mdd.pipeline.execute.execute`` under a nested MLflow run. What is
expensive is shared: each worker process loads the dataset and base model once
(``Core``), and the content-addressed stage cache lets every trial with equal
fine-tuning settings reuse one fine-tuned model.

Several workers, on one machine or many, share a study through its database:
- trials are asked for under a cross-process lock (a file lock for sqlite, a
  PostgreSQL advisory lock for postgres), so the total never exceeds the budget;
- a trial's worker beats a heartbeat; a silent trial is failed by another
  worker, retried (``RetryHeartbeatStaleTrialCallback``) and its MLflow runs are closed;
- the worker that sees the last trial end writes the summary, the plots and the
  final rerun of the best configuration on the test split.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
import yaml
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback, fail_stale_trials
from optuna.trial import FrozenTrial, Trial, TrialState

from mdd.cache import file_lock
from mdd.config import DataConfig
from mdd.core import Core
from mdd.errors import ConfigError, MddError, Pruned
from mdd.pipeline.execute import execute
from mdd.stageruns import RunResult
from mdd.sweep.config import (
    ParamSpec,
    SweepConfig,
    final_config,
    load_sweep,
    trial_config,
)
from mdd.sweep.summary import log_study_summary
from mdd.tracking import RunHandle, Tracker, provenance_tags, redact
from mdd.ui import headline_metrics, headline_params

DEFAULT_STORAGE = "runs/optuna.db"
optuna.logging.set_verbosity(optuna.logging.WARNING)
# Heartbeats with ask-and-tell are what multi-machine sweeps need; Optuna flags them as
# experimental and expects Study.optimize. Both notices are known and not actionable here.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")


def storage_url(given: str | None, sweep: SweepConfig) -> str:
    url = given or sweep.storage
    if url:
        return url
    path = Path.cwd() / DEFAULT_STORAGE
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def study_name(sweep: SweepConfig, ipc: int) -> str:
    """One study per IPC of a sweep (IPC is a grid axis, never searched)."""
    return f"{sweep.name}-ipc{ipc}"


@contextlib.contextmanager
def study_lock(url: str) -> Iterator[None]:
    """One process at a time: a PostgreSQL advisory lock, or a file lock beside sqlite."""
    if url.startswith("postgresql"):
        key = int(hashlib.sha256(b"mdd-sweep").hexdigest()[:15], 16)
        try:
            engine = sqlalchemy.create_engine(url, connect_args={"connect_timeout": 10})
            connection = engine.connect()
        except sqlalchemy.exc.SQLAlchemyError as exc:
            raise _storage_error(url, exc) from None
        try:
            with connection:
                connection.execute(sqlalchemy.text(f"SELECT pg_advisory_lock({key})"))
                try:
                    yield
                finally:
                    connection.execute(sqlalchemy.text(f"SELECT pg_advisory_unlock({key})"))
        finally:
            engine.dispose()
        return
    path = Path(url.split(":///", 1)[1]) if url.startswith("sqlite:///") else Path.cwd() / "runs"
    with file_lock(Path(f"{path}.lock")):
        yield


def _storage_error(url: str, exc: Exception) -> MddError:
    first_line = (redact(str(exc)).strip().splitlines() or [type(exc).__name__])[0]
    return MddError(
        f"Optuna storage {redact(url)} is not usable: {first_line}. Hint: check --storage "
        "(e.g. postgresql://user@host:5432/optuna with PGPASSWORD set, or sqlite:///path.db) "
        "and that the server is up."
    )


def _engine_kwargs(url: str) -> dict[str, Any]:
    if url.startswith("sqlite"):
        return {"connect_args": {"timeout": 60}}
    if url.startswith("postgresql"):
        return {"pool_pre_ping": True, "connect_args": {"connect_timeout": 10}}
    return {}


def make_sampler(sweep: SweepConfig, worker_index: int) -> optuna.samplers.BaseSampler:
    # Workers get different seeds, or their random start-up trials would coincide.
    seed = sweep.sampler.seed + worker_index
    startup = sweep.sampler.startup_trials
    builders = {
        "tpe": lambda: optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup),
        "gp": lambda: optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup),
        "random": lambda: optuna.samplers.RandomSampler(seed=seed),
        "nsga2": lambda: optuna.samplers.NSGAIISampler(seed=seed),
    }
    return builders[sweep.sampler.name]()


def make_pruner(sweep: SweepConfig) -> optuna.pruners.BasePruner:
    spec = sweep.pruner
    builders = {
        "none": lambda: optuna.pruners.NopPruner(),
        "median": lambda: optuna.pruners.MedianPruner(
            n_startup_trials=spec.startup_trials, n_warmup_steps=spec.warmup_epochs
        ),
        "threshold": lambda: optuna.pruners.ThresholdPruner(
            lower=spec.lower, n_warmup_steps=spec.warmup_epochs
        ),
    }
    return builders[spec.name]()


def suggest(trial: Trial, key: str, spec: ParamSpec) -> Any:
    if spec.type == "float":
        return trial.suggest_float(key, spec.low, spec.high, log=spec.log)
    if spec.type == "int":
        return trial.suggest_int(key, int(spec.low), int(spec.high), log=spec.log)
    return trial.suggest_categorical(key, spec.choices)


class Heartbeat:
    """Tell the storage every ``interval_s`` that this worker's trial is alive."""

    def __init__(self, storage: RDBStorage, trial_id: int, interval_s: float):
        self._storage, self._trial_id, self._interval_s = storage, trial_id, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        while not self._stop.wait(self._interval_s):
            with contextlib.suppress(Exception):  # a missed beat is retried at the next one
                self._storage.record_heartbeat(self._trial_id)

    def __enter__(self) -> Heartbeat:
        self._storage.record_heartbeat(self._trial_id)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _retried_numbers(trials: list[FrozenTrial]) -> set[int]:
    """Numbers of failed trials that a later trial retries (they do not use up the budget)."""
    return {
        trial.system_attrs["failed_trial"]
        for trial in trials
        if trial.system_attrs.get("failed_trial") is not None
    }


class Worker:
    """One process running trials of every IPC study of a sweep until the budget is spent."""

    def __init__(self, sweep_path: str, storage: str | None, n_trials: int | None):
        self.sweep, self.base = load_sweep(sweep_path)
        self.url = storage_url(storage, self.sweep)
        self.n_trials = n_trials or self.sweep.budget.n_trials
        self.cores: dict[str, Core] = {}
        self.trials_run = 0
        self.finetunes_reused = 0
        self.started = time.monotonic()
        base_config = trial_config(self.base, self.sweep, {}, self.sweep.ipc[0])
        self.tracking = self.sweep.tracking or base_config.tracking
        with study_lock(self.url):
            # Created under the lock: concurrent first starts would race on table creation.
            self.tracker = Tracker(self.tracking)
            self.storage = self._open_storage()

    def _open_storage(self) -> RDBStorage:
        retry = RetryHeartbeatStaleTrialCallback(max_retry=self.sweep.max_retries)

        def on_stale(study: optuna.Study, trial: FrozenTrial) -> None:
            # The trial's worker stopped answering: retry it, and close its MLflow runs.
            retry(study, trial)
            run_id = trial.user_attrs.get("mlflow_run_id")
            if run_id:
                reason = "worker stopped answering (no heartbeat); the trial is retried"
                self.tracker.close_if_running(run_id, "KILLED", reason)
                self.tracker.handle(run_id).set_tags({"mdd.trial_state": "failed"})

        try:
            return RDBStorage(
                self.url,
                engine_kwargs=_engine_kwargs(self.url),
                heartbeat_interval=self.sweep.heartbeat_s,
                grace_period=2 * self.sweep.heartbeat_s,
                heartbeat_stale_trial_callback=on_stale,
            )
        except Exception as exc:  # noqa: BLE001 - any driver error means the same to the user
            raise _storage_error(self.url, exc) from None

    # -- studies -------------------------------------------------------------------------

    def run(self) -> int:
        for ipc in self.sweep.ipc:
            self.run_study(ipc)
        return 0

    def study_name(self, ipc: int) -> str:
        return study_name(self.sweep, ipc)

    def run_study(self, ipc: int) -> None:
        name = self.study_name(ipc)
        with study_lock(self.url):
            study = optuna.create_study(
                study_name=name,
                storage=self.storage,
                pruner=make_pruner(self.sweep),
                directions=[objective.direction for objective in self.sweep.objectives],
                load_if_exists=True,
            )
            # Each worker that joins (here or on another machine, now or on a rerun) takes
            # the next index, so seeded samplers differ between workers yet stay reproducible.
            index = study.user_attrs.get("workers_joined", 0)
            study.set_user_attr("workers_joined", index + 1)
            study.sampler = make_sampler(self.sweep, index)
            parent = self._parent_run(study, ipc)
        timeout_s = self.sweep.budget.timeout_s
        while True:
            with study_lock(self.url):
                fail_stale_trials(study)
                trials = study.get_trials(deepcopy=False)
                waiting = any(t.state == TrialState.WAITING for t in trials)
                running = any(t.state == TrialState.RUNNING for t in trials)
                used = len(trials) - len(_retried_numbers(trials))
                out_of_time = timeout_s is not None and time.monotonic() - self.started > timeout_s
                trial = None
                if not out_of_time and (waiting or used < self.n_trials):
                    trial = study.ask()
            if trial is not None:
                self.run_trial(study, trial, ipc, parent)
            elif running and not out_of_time:
                time.sleep(self.sweep.heartbeat_s)  # others still at work: wait to see them end
            else:
                break
        if not out_of_time:
            self._finish_study(study, ipc, parent)

    def _parent_run(self, study: optuna.Study, ipc: int) -> RunHandle:
        run_id = study.user_attrs.get("mlflow_parent_run_id")
        if run_id:
            return self.tracker.handle(run_id)
        config = trial_config(self.base, self.sweep, {}, ipc)
        tags = provenance_tags(config.record, None, config.device)
        tags |= {"mdd.sweep": self.sweep.name, "mdd.study": study.study_name, "mdd.ipc": ipc}
        tags["mdd.optuna_storage"] = redact(self.url)
        parent = self.tracker.start(study.study_name, tags=tags)
        parent.log_params({"sweep": self.sweep.model_dump(mode="json"), "sample.ipc": ipc})
        parent.log_text(yaml.safe_dump(self.sweep.model_dump(mode="json")), "sweep.yaml")
        study.set_user_attr("mlflow_parent_run_id", parent.run_id)
        return parent

    # -- trials --------------------------------------------------------------------------

    def core(self, source: DataConfig, device: str) -> Core:
        """The worker's core of ``source`` on ``device``: loaded by the first trial of them."""
        key = json.dumps([source.model_dump(mode="json"), device], sort_keys=True)
        if key not in self.cores:
            self.cores[key] = Core.load(source, device)
        return self.cores[key]

    def trial_id(self, study: optuna.Study, trial: Trial) -> int:
        """The storage's id of ``trial``, which its heartbeats are recorded under."""
        study_id = self.storage.get_study_id_from_name(study.study_name)
        return self.storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)

    def run_trial(self, study: optuna.Study, trial: Trial, ipc: int, parent: RunHandle) -> None:
        state, values, reason = TrialState.COMPLETE, None, None
        trial_id = self.trial_id(study, trial)
        tags = {
            "mdd.sweep": self.sweep.name,
            "mdd.study": study.study_name,
            "mdd.trial_number": trial.number,
            "mdd.optuna_trial_id": trial_id,
            "mdd.worker_pid": os.getpid(),
            "mdd.ipc": ipc,
        }
        with Heartbeat(self.storage, trial_id, self.sweep.heartbeat_s):
            try:
                with self.tracker.run(f"trial-{trial.number}", tags=tags, parent=parent) as run:
                    trial.set_user_attr("mlflow_run_id", run.run_id)
                    space = self.sweep.space.items()
                    params = {key: suggest(trial, key, spec) for key, spec in space}
                    config = trial_config(self.base, self.sweep, params, ipc)
                    record = config.record
                    run.log_params({**headline_params(record), **params, "sample.ipc": ipc})
                    run.log_config(record)
                    core = self.core(config.data, config.device)
                    result = execute(core, config, self.tracker, run, self._reporter(trial))
                    values = self._objective(trial, core, result, run)
                    run.set_tags({"mdd.trial_state": "complete"})
            except Pruned as exc:
                state, reason = TrialState.PRUNED, str(exc)
            except Exception as exc:  # noqa: BLE001 - any failure is recorded, the sweep goes on
                state, reason = TrialState.FAIL, f"{type(exc).__name__}: {exc}"
                print(f"mdd-sweep: trial {trial.number} failed: {reason}", file=sys.stderr)
            if reason is not None:
                trial.set_user_attr("fail_reason" if state == TrialState.FAIL else "note", reason)
                if run_id := trial.user_attrs.get("mlflow_run_id"):
                    label = {TrialState.FAIL: "failed", TrialState.PRUNED: "pruned"}[state]
                    self.tracker.handle(run_id).set_tags({"mdd.trial_state": label})
            with contextlib.suppress(UpdateFinishedTrialError):  # failed as stale meanwhile
                study.tell(trial, values, state=state)
        self.trials_run += 1

    def _reporter(self, trial: Trial) -> Callable[[int, float], None]:
        """What hears the trial's evaluation accuracies: the pruner, with one objective."""
        prunable = len(self.sweep.objectives) == 1 and self.sweep.pruner.name != "none"

        def report(epoch: int, accuracy: float) -> None:
            if not prunable:
                return
            trial.report(accuracy, epoch)
            if trial.should_prune():
                raise Pruned(f"pruned at epoch {epoch} (validation accuracy {accuracy:.2f} %)")

        return report

    def _objective(
        self, trial: Trial, core: Core, result: RunResult, run: RunHandle
    ) -> list[float]:
        """The trial's objective values from its run's metrics, logged with the core's counts."""
        finetune_cached = bool(result.stages.get("finetune", {}).get("cached"))
        self.finetunes_reused += finetune_cached
        trial.set_user_attr("finetune_cached", finetune_cached)
        trial.set_user_attr("worker", f"{os.uname().nodename}:{os.getpid()}")
        missing = [o.metric for o in self.sweep.objectives if o.metric not in result.metrics]
        if missing:
            raise ConfigError(
                f"objective metric {missing[0]} is not produced by the trial; it has "
                f"{', '.join(sorted(result.metrics))}."
            )
        values = [result.metrics[objective.metric] for objective in self.sweep.objectives]
        counters = {
            "core/data_loads": core.loads.get("data", 0),
            "core/base_loads": core.loads.get("base", 0),
            "core/trials_in_worker": self.trials_run + 1,
            "core/finetunes_reused_in_worker": self.finetunes_reused,
        }
        run.log_metrics({**result.metrics, **headline_metrics(result.metrics), **counters})
        run.log_metrics({f"objective/{i}": value for i, value in enumerate(values)})
        trial.set_user_attr("core", counters)
        return values

    # -- the end of a study --------------------------------------------------------------

    def _finish_study(self, study: optuna.Study, ipc: int, parent: RunHandle) -> None:
        with study_lock(self.url):
            if study.user_attrs.get("finished_by"):
                return
            study.set_user_attr("finished_by", f"{os.uname().nodename}:{os.getpid()}")
        best = log_study_summary(study, self.sweep, parent)
        if best is not None and self.sweep.final.enabled:
            self._final_rerun(best, ipc, parent)
        self.tracker.finish(parent.run_id)

    def _final_rerun(self, best: FrozenTrial, ipc: int, parent: RunHandle) -> None:
        params = {key: best.params[key] for key in self.sweep.space if key in best.params}
        config = final_config(self.base, self.sweep, params, ipc)
        tags = provenance_tags(config.record, None, config.device)
        tags |= {"mdd.sweep": self.sweep.name, "mdd.final": "true", "mdd.best_trial": best.number}
        with self.tracker.run(f"final-ipc{ipc}", tags=tags, parent=parent) as run:
            run.log_params(config.to_dict())
            run.log_config(config.record)
            result = execute(self.core(config.data, config.device), config, self.tracker, run)
            run.log_metrics(result.metrics | headline_metrics(result.metrics))
        final = {f"final/{name}": value for name, value in result.metrics.items()}
        parent.log_metrics(final | headline_metrics(result.metrics))
        print(f"final rerun of trial {best.number} at IPC {ipc}: " + json.dumps(result.metrics))


def _spawn_workers(args: argparse.Namespace) -> int:
    """``--workers N``: N local processes sharing the study through its storage."""
    command = [sys.executable, "-m", "mdd", "sweep", args.sweep, "--workers", "1"]
    if args.storage:
        command += ["--storage", args.storage]
    if args.n_trials:
        command += ["--n-trials", str(args.n_trials)]
    processes = [subprocess.Popen(command) for _ in range(args.workers)]
    return max(process.wait() for process in processes)


def run_sweep(args: argparse.Namespace) -> int:
    """The body of ``mdd-sweep``."""
    if args.workers < 1:
        raise ConfigError("--workers: at least 1")
    if args.workers > 1:
        return _spawn_workers(args)
    return Worker(args.sweep, args.storage, args.n_trials).run()
