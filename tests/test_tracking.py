"""Tracking: a run written to a real sqlite MLflow store and read back."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from mdd.config import Config, TrackingConfig
from mdd.errors import MddError
from mdd.tracking import Tracker, flatten, provenance_tags, redact, tracking_uri


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> TrackingConfig:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return TrackingConfig(experiment="test")


def test_default_store_is_sqlite_under_runs(store: TrackingConfig, tmp_path: Path) -> None:
    assert tracking_uri(store) == f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"


def test_environment_wins_over_config(store: TrackingConfig, monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///elsewhere.db")
    cfg = TrackingConfig(uri="sqlite:///config.db")
    assert tracking_uri(cfg) == "sqlite:///elsewhere.db"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert tracking_uri(cfg) == "sqlite:///config.db"


def test_run_is_written_with_tags_params_and_config(store: TrackingConfig, tmp_path: Path) -> None:
    config = Config(tracking=store)
    tracker = Tracker(store)
    tags = provenance_tags(config.record, "abc123", "cpu")
    with tracker.run("demo", tags=tags) as parent:
        parent.log_params(config.to_dict())
        parent.log_config(config.record)
        parent.log_metrics({"acc": 0.5}, step=3)
        with tracker.run("stage", parent=parent) as child:
            child.log_metrics({"loss": 1.0})

    client = MlflowClient(tracking_uri=tracker.uri)
    run = client.get_run(parent.run_id)
    assert run.info.status == "FINISHED"
    for key in ("mdd.git_commit", "mdd.git_dirty", "mdd.config_hash", "mdd.device"):
        assert key in run.data.tags
    assert run.data.tags["mdd.data_fingerprint"] == "abc123"
    assert run.data.tags["mdd.config_hash"] == config.section_hash()
    for package in ("torch", "diffusers", "mlflow", "optuna"):
        assert run.data.tags[f"mdd.version.{package}"][0].isdigit()
    assert run.data.params["finetune.lambda_r"] == "0.002"
    assert run.data.metrics["acc"] == 0.5
    assert client.get_run(child.run_id).data.tags["mlflow.parentRunId"] == parent.run_id

    logged = Path(client.download_artifacts(parent.run_id, "config.yaml", str(tmp_path)))
    assert Config.model_validate(yaml.safe_load(logged.read_text())) == config
    assert (tmp_path / "runs" / "artifacts").is_dir()  # artifacts live beside the store


def test_failed_body_marks_run_failed_with_reason(store: TrackingConfig) -> None:
    tracker = Tracker(store)
    with pytest.raises(RuntimeError):
        with tracker.run("boom") as run:
            raise RuntimeError("loss exploded")
    stored = MlflowClient(tracking_uri=tracker.uri).get_run(run.run_id)
    assert stored.info.status == "FAILED"
    assert "loss exploded" in stored.data.tags["mdd.error"]


def test_passwords_in_urls_are_redacted() -> None:
    assert redact("postgresql://mdd:s3cret@db:5432/optuna") == "postgresql://mdd:***@db:5432/optuna"
    assert redact("no url here") == "no url here"


def test_unreachable_server_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    cfg = TrackingConfig(uri="http://user:pw@127.0.0.1:9")  # nothing listens on port 9
    with pytest.raises(MddError, match="not usable") as error:
        Tracker(cfg)
    assert "pw" not in str(error.value)


def test_flatten_joins_nested_keys() -> None:
    assert flatten({"a": {"b": 1, "c": {"d": 2}}, "e": 3}) == {"a.b": 1, "a.c.d": 2, "e": 3}


@pytest.mark.parametrize("ending", ["finished", "failed", "interrupted"])
def test_series_are_buffered_and_every_point_is_written_however_the_run_ends(
    store: TrackingConfig, ending: str
) -> None:
    tracker = Tracker(store)
    writes = []
    log_batch = tracker.client.log_batch

    def counting_log_batch(run_id, metrics=(), **kwargs):
        if metrics:
            writes.append(len(metrics))
        return log_batch(run_id, metrics=metrics, **kwargs)

    tracker.client.log_batch = counting_log_batch
    error = {"failed": RuntimeError("boom"), "interrupted": KeyboardInterrupt()}.get(ending)
    run_id = None
    with pytest.raises(type(error)) if error else nullcontext():
        with tracker.run("epochs") as run:
            run_id = run.run_id
            for epoch in range(1, 501):
                run.log_series({"train_loss": 1.0 / epoch, "lr": 0.01}, epoch)
            assert sum(writes) < 1000  # held back, not one write per epoch
            if error:
                raise error
    client = MlflowClient(tracking_uri(store))
    history = client.get_metric_history(run_id, "train_loss")
    assert sorted(point.step for point in history) == list(range(1, 501))
    assert len(writes) <= 2  # flushed in batches: at most one timed flush and the final one
    status = {"finished": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}[ending]
    assert client.get_run(run_id).info.status == status
