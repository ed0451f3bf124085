"""The MLflow UI opens mdd's experiments on their runs, with each run's headline visible."""

from __future__ import annotations

import json
import urllib.parse
from pathlib import Path

from mlflow import MlflowClient

from mdd.config import TrackingConfig, load_config
from mdd.tracking import Tracker
from mdd.ui import (
    EXPERIMENT_KIND_TAG,
    MODEL_TRAINING,
    VIEW_TAG,
    compare_url,
    headline_metrics,
    headline_params,
    links,
    runs_url,
    view_state,
)


def test_headline_metrics_take_each_splits_first_network_last_epoch_accuracy() -> None:
    metrics = {
        "val/convnet3/best_acc_mean": 90.0,
        "val/convnet3/last_acc_mean": 80.0,
        "val/resnet18/last_acc_mean": 70.0,
        "test/convnet3/last_acc_std": 1.0,
        "test/resnet18/last_acc_mean": 60.0,
        "distill_wall_s": 5.0,
    }
    assert headline_metrics(metrics) == {"acc_val": 80.0, "acc_test": 60.0}
    assert headline_metrics({"distill_wall_s": 5.0}) == {}


def test_the_saved_view_selects_the_headline_columns() -> None:
    state = json.loads(view_state())
    assert "params.`finetune.lambda_d`" in state["selectedColumns"]
    assert "params.`sample.ipc`" in state["selectedColumns"]
    assert "metrics.`acc_test`" in state["selectedColumns"]
    assert "metrics.`objective/0`" in state["selectedColumns"]


def test_links_give_the_runs_table_and_one_compare_view_per_study_in_trial_order() -> None:
    def run(run_id: str, **tags: str) -> dict:
        return {"run_id": run_id, "tags": tags}

    runs = [
        run("p", **{"mdd.study": "s-ipc2"}),
        run("b", **{"mdd.study": "s-ipc2", "mdd.trial_number": "10"}),
        run("a", **{"mdd.study": "s-ipc2", "mdd.trial_number": "2"}),
        run("x"),
    ]
    lines = links("http://h:1/", "7", runs)
    assert lines[0] == "runs: http://h:1/#/experiments/7/runs?viewStateShareKey=mdd-headline"
    assert lines[0] == f"runs: {runs_url('http://h:1', '7')}"
    assert len(lines) == 2 and lines[1].startswith("trials of s-ipc2: ")
    query = urllib.parse.parse_qs(lines[1].split("?", 1)[1])
    assert json.loads(query["runs"][0]) == ["a", "b"]
    assert json.loads(query["experiments"][0]) == ["7"]
    assert lines[1].endswith(compare_url("http://h:1", "7", ["a", "b"]).split("#")[1])


def test_an_experiment_is_tagged_model_training_with_the_view_also_when_made_elsewhere(
    tmp_path: Path,
) -> None:
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=store)
    made_by_hand = client.create_experiment("by-hand")
    for name in ("new", "by-hand"):
        tracker = Tracker(TrackingConfig(uri=store, experiment=name))
        tags = client.get_experiment(tracker.experiment_id).tags
        assert tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING
        assert json.loads(tags[VIEW_TAG])["selectedColumns"]
    assert tracker.experiment_id == made_by_hand


def test_headline_params_are_the_configs_method_ipc_and_minimax_settings() -> None:
    config = load_config("experiments/fashion_mnist.yaml", ["finetune.lambda_d=0.5"])
    assert headline_params(config.record) == {
        "composition": "minimax",
        "method": "minimax",
        "sample.ipc": 10,
        "finetune.lambda_r": 0.002,
        "finetune.lambda_d": 0.5,
        "finetune.memory_size": 64,
    }
