"""Everything mdd says to MLflow goes through here: no other module imports mlflow.

Runs are handled through ``MlflowClient`` with explicit run ids rather than the
fluent ``mlflow.start_run`` stack, so a parent run, its nested stage runs and
the trials of a sweep can be written from one process (or many) without a
hidden global "active run".
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from mdd.config import RunRecord, TrackingConfig
from mdd.errors import MddError, Pruned
from mdd.ui import VIEW_TAG, experiment_tags

DEFAULT_STORE = "runs/mlflow.db"
_PARAM_VALUE_LIMIT = 6000  # MLflow's limit on one param value
_BATCH_LIMIT = 1000  # MLflow accepts at most 1000 metrics per log_batch call
# Series (per step, per epoch) are held in memory and written at most this often, and
# when the run ends: a training step never waits on the store.
SERIES_FLUSH_S = 15.0
_URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]+):(?P<pw>[^@\s]+)@")


def redact(text: str) -> str:
    """Hide the password of any ``scheme://user:password@host`` URL in ``text``."""
    return _URL_PASSWORD.sub(r"\g<head>:***@", text)


def tracking_uri(cfg: TrackingConfig) -> str:
    """``$MLFLOW_TRACKING_URI`` first, then the config, then a sqlite file under ``runs/``."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or cfg.uri
    if uri:
        return uri
    store = Path.cwd() / DEFAULT_STORE
    store.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{store}"


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``: MLflow params are flat."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def git_state(repo: Path | None = None) -> dict[str, str]:
    """Commit and dirty flag of the working tree the code runs from, for provenance."""
    cwd = repo or Path(__file__).resolve().parent.parent

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(
                ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        # Container images carry no .git; their build passes the commit in instead.
        commit = os.environ.get("MDD_GIT_COMMIT", "unknown")
        return {"mdd.git_commit": commit, "mdd.git_dirty": "unknown"}
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return {"mdd.git_commit": commit, "mdd.git_dirty": str(bool(dirty)).lower()}


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def provenance_tags(record: RunRecord, data_fingerprint: str | None, device: str) -> dict[str, str]:
    """The tags every mdd run carries: what ran (``Config.record``), on what data and where."""
    tags = {
        "mdd.config_hash": record.config_hash,
        "mdd.data_fingerprint": data_fingerprint or "none",
        "mdd.device": device,
        "mdd.host": platform.node(),
        "mdd.method": record.method,
        "mdd.composition": record.composition,
    }
    for package in ("torch", "diffusers", "mlflow", "optuna"):
        tags[f"mdd.version.{package}"] = _version(package)
    tags.update(git_state())
    return tags


def _metrics(metrics: Mapping[str, float], step: int | None) -> list[Metric]:
    now = int(time.time() * 1000)
    return [Metric(key, float(value), now, step or 0) for key, value in metrics.items()]


def _client(uri: str) -> MlflowClient:
    # MLflow retries an unreachable server with backoff for minutes by default;
    # a worker should fail fast with a message instead (unless the user set these).
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    return MlflowClient(tracking_uri=uri)


@dataclass
class RunHandle:
    """One MLflow run, written through the tracker's client."""

    tracker: Tracker
    run_id: str
    _series: list[Metric] = field(default_factory=list, repr=False)
    _flushed_at: float = field(default_factory=time.monotonic, repr=False)

    def log_params(self, params: Mapping[str, Any]) -> None:
        items = [
            Param(key, redact(str(value))[:_PARAM_VALUE_LIMIT])
            for key, value in flatten(params).items()
        ]
        for start in range(0, len(items), 100):
            self.tracker.client.log_batch(self.run_id, params=items[start : start + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Write now: summaries and results."""
        self._write(_metrics(metrics, step))

    def log_series(self, metrics: Mapping[str, float], step: int) -> None:
        """Buffer one point of per-step or per-epoch series; written every
        ``SERIES_FLUSH_S`` seconds and by ``flush``, which ``Tracker.run`` calls however the
        run ends."""
        self._series += _metrics(metrics, step)
        if time.monotonic() - self._flushed_at >= SERIES_FLUSH_S:
            self.flush()

    def flush(self) -> None:
        """Write the buffered series points."""
        pending, self._series = self._series, []
        self._flushed_at = time.monotonic()
        self._write(pending)

    def _write(self, items: list[Metric]) -> None:
        for start in range(0, len(items), _BATCH_LIMIT):
            self.tracker.client.log_batch(self.run_id, metrics=items[start : start + _BATCH_LIMIT])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        items = [RunTag(key, redact(str(value))) for key, value in tags.items()]
        self.tracker.client.log_batch(self.run_id, tags=items)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        if path.is_dir():
            self.tracker.client.log_artifacts(self.run_id, str(path), artifact_path)
        else:
            self.tracker.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_text(self, text: str, file_name: str) -> None:
        self.tracker.client.log_text(self.run_id, redact(text), file_name)

    def log_config(self, record: RunRecord) -> None:
        """The resolved configuration, as the YAML file that reproduces this run, and the
        method's composition (``minimax+mode``, ...) as a param of its own."""
        self.log_params({"composition": record.composition})
        self.log_text(record.yaml, "config.yaml")


class Tracker:
    """A connection to one MLflow store and one experiment in it."""

    def __init__(self, cfg: TrackingConfig):
        self.uri = tracking_uri(cfg)
        self.client = _client(self.uri)
        self.experiment_id = self._experiment(cfg)

    def _experiment(self, cfg: TrackingConfig) -> str:
        try:
            found = self.client.get_experiment_by_name(cfg.experiment)
            if found is not None:
                if VIEW_TAG not in found.tags:  # made by an older mdd or by hand
                    self._tag_experiment(found.experiment_id, experiment_tags())
                return found.experiment_id
            # A local store keeps artifacts beside it under runs/; a tracking server
            # decides its own artifact location.
            location = None
            if self.uri.startswith(("sqlite:", "file:")) or "://" not in self.uri:
                location = (Path.cwd() / cfg.artifact_root).resolve().as_uri()
            try:
                return self.client.create_experiment(
                    cfg.experiment, artifact_location=location, tags=experiment_tags()
                )
            except MlflowException:
                # Another worker created it between our lookup and our create.
                found = self.client.get_experiment_by_name(cfg.experiment)
                if found is None:
                    raise
                return found.experiment_id
        except MlflowException as exc:
            raise MddError(
                f"MLflow tracking store {redact(self.uri)} is not usable: {redact(str(exc))}. "
                "Hint: check tracking.uri / MLFLOW_TRACKING_URI and that the server is up."
            ) from None

    def _tag_experiment(self, experiment_id: str, tags: Mapping[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_experiment_tag(experiment_id, key, value)

    @contextmanager
    def run(
        self,
        name: str,
        tags: Mapping[str, Any] | None = None,
        parent: RunHandle | None = None,
    ) -> Iterator[RunHandle]:
        """A run that ends FINISHED, or FAILED (with the error as a tag) if the body raises."""
        handle = self.start(name, tags, parent)
        try:
            yield handle
        except BaseException as exc:
            stopped = isinstance(exc, (KeyboardInterrupt, Pruned))
            status = "KILLED" if stopped else "FAILED"
            try:
                handle.flush()  # the series up to the failure are part of the record
            finally:
                handle.set_tags({"mdd.error": f"{type(exc).__name__}: {exc}"[:5000]})
                self.client.set_terminated(handle.run_id, status=status)
            raise
        handle.flush()
        self.client.set_terminated(handle.run_id, status=RunStatus.to_string(RunStatus.FINISHED))

    def start(
        self, name: str, tags: Mapping[str, Any] | None = None, parent: RunHandle | None = None
    ) -> RunHandle:
        """A new RUNNING run; ``run`` closes it for you, ``finish`` closes a long-lived one."""
        all_tags = {key: redact(str(value)) for key, value in (tags or {}).items()}
        if parent is not None:
            all_tags[MLFLOW_PARENT_RUN_ID] = parent.run_id
        created = self.client.create_run(self.experiment_id, tags=all_tags, run_name=name)
        return RunHandle(self, created.info.run_id)

    def handle(self, run_id: str) -> RunHandle:
        return RunHandle(self, run_id)

    def finish(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)

    def close_if_running(self, run_id: str, status: str, reason: str) -> list[str]:
        """End ``run_id`` and its nested runs that are still RUNNING (their process died)."""
        closed = []
        children = self.search(f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{run_id}'")
        for run in [self.client.get_run(run_id), *children]:
            if run.info.status == "RUNNING":
                self.client.set_tag(run.info.run_id, "mdd.error", reason)
                self.client.set_terminated(run.info.run_id, status=status)
                closed.append(run.info.run_id)
        return closed

    def find_tagged(self, tag: str, value: str) -> RunHandle | None:
        """The newest run of the experiment whose ``tag`` is ``value``, if there is one."""
        found = self.search(f"tags.`{tag}` = '{value}'", max_results=1)
        return RunHandle(self, found[0].info.run_id) if found else None

    def search(self, filter_string: str = "", max_results: int = 10000) -> list[Any]:
        return self.client.search_runs(
            [self.experiment_id], filter_string=filter_string, max_results=max_results
        )


def experiment_id(cfg: TrackingConfig) -> str | None:
    """The id of ``cfg.experiment`` in its store, None if it does not exist (yet)."""
    try:
        found = _client(tracking_uri(cfg)).get_experiment_by_name(cfg.experiment)
    except MlflowException:
        return None
    return found.experiment_id if found is not None else None


def finished_runs(cfg: TrackingConfig) -> list[dict[str, Any]]:
    """Every FINISHED run of ``cfg.experiment``, as plain dicts.

    Each dict holds ``run_id``, ``parent_run_id`` (None for a top-level run), ``name``,
    ``start_time_ms``, ``params``, ``tags`` and ``metrics`` (the latest value of each).
    Reading never creates the experiment, so a misspelt name is an error naming the
    experiments that do exist.
    """
    uri = tracking_uri(cfg)
    client = _client(uri)
    try:
        experiment = client.get_experiment_by_name(cfg.experiment)
        if experiment is None or experiment.lifecycle_stage != "active":
            names = sorted(found.name for found in client.search_experiments())
            raise MddError(
                f"MLflow store {redact(uri)} has no experiment named '{cfg.experiment}'. "
                f"Hint: pass --experiment with one of: {', '.join(names) or '(none yet)'}."
            )
        runs: list[Any] = []
        page_token = None
        while True:
            page = client.search_runs(
                [experiment.experiment_id],
                filter_string="attributes.status = 'FINISHED'",
                max_results=1000,
                page_token=page_token,
            )
            runs.extend(page)
            page_token = page.token
            if not page_token:
                break
    except MlflowException as exc:
        raise MddError(
            f"MLflow tracking store {redact(uri)} is not usable: {redact(str(exc))}. "
            "Hint: check MLFLOW_TRACKING_URI and that the server is up."
        ) from None
    return [
        {
            "run_id": run.info.run_id,
            "parent_run_id": run.data.tags.get(MLFLOW_PARENT_RUN_ID),
            "name": run.info.run_name,
            "start_time_ms": run.info.start_time,
            "params": dict(run.data.params),
            "tags": dict(run.data.tags),
            "metrics": dict(run.data.metrics),
        }
        for run in runs
    ]
