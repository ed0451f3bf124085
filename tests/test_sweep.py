"""mdd-sweep with real Optuna storage, real MLflow store and real worker processes."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow import MlflowClient

from mdd.cli import sweep_main
from mdd.config import Config
from mdd.eval.protocols import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Protocol,
    protocol_for,
    resolve_protocol,
)
from mdd.sweep.config import final_config, load_sweep, trial_config
from tests.conftest import tiny_config_data


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The stage cache is content-addressed, so every sweep here may share the base model."""
    return tmp_path_factory.mktemp("cache")


def write_sweep(
    folder: Path, data_root: Path, cache: Path, store: str, experiment: str, **changes
) -> Path:
    base = tiny_config_data(data_root, folder, store)
    base["cache_dir"] = str(cache)
    base["tracking"]["experiment"] = experiment
    (folder / "base.yaml").write_text(yaml.safe_dump(base))
    sweep = {
        "name": experiment,
        "base": "base.yaml",
        "storage": f"sqlite:///{folder / 'optuna.db'}",
        "sampler": {"name": "random", "seed": 0},
        "pruner": {"name": "none"},
        "budget": {"n_trials": 3},
        "space": {
            "finetune.lambda_r": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
            "finetune.memory_size": {"type": "categorical", "choices": [4, 8]},
        },
        "ipc": [2],
        "heartbeat_s": 5,
        "trial": {"epochs": 2},
        "final": {"protocol": "dc", "repeats": 1, "epochs": 2},
    }
    sweep.update(changes)
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return path


def sweep_runs(store: str, experiment: str) -> tuple[list, list, list]:
    client = MlflowClient(tracking_uri=store)
    found = client.get_experiment_by_name(experiment)
    runs = client.search_runs([found.experiment_id])
    parents = [
        r
        for r in runs
        if r.data.tags.get("mdd.study")
        and "mdd.trial_number" not in r.data.tags
        and "mlflow.parentRunId" not in r.data.tags
    ]
    trials = [r for r in runs if "mdd.trial_number" in r.data.tags]
    finals = [r for r in runs if r.data.tags.get("mdd.final") == "true"]
    return parents, trials, finals


def study(path: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{path / 'optuna.db'}")


def test_sweep_runs_n_trials_as_nested_runs_with_plots_and_a_final_test_rerun(
    tmp_path: Path, tiny_fmnist: Path, shared_cache: Path, mlflow_store: str
) -> None:
    sweep = write_sweep(tmp_path, tiny_fmnist, shared_cache, mlflow_store, "sweep-basic")
    assert sweep_main([str(sweep)]) == 0

    parents, trials, finals = sweep_runs(mlflow_store, "sweep-basic")
    assert len(parents) == 1 and len(trials) == 3 and len(finals) == 1
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert all(t.data.tags["mlflow.parentRunId"] == parent.info.run_id for t in trials)
    assert sorted(int(t.data.tags["mdd.trial_number"]) for t in trials) == [0, 1, 2]
    client = MlflowClient(tracking_uri=mlflow_store)
    plots = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert {"plots/optimization_history.png", "plots/parallel_coordinate.png"} <= plots
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert "study_summary.json" in artifacts

    # Trials tune on the validation split only; the final rerun is the one test evaluation.
    for trial in trials:
        assert any(k.startswith("val/") for k in trial.data.metrics)
        assert not any(k.startswith("test/") for k in trial.data.metrics)
        assert trial.data.tags["mdd.trial_state"] == "complete"
    assert any(k.startswith("test/") for k in finals[0].data.metrics)
    assert any(k.startswith("final/test/") for k in parent.data.metrics)

    # Optuna and MLflow point at each other.
    optuna_trials = study(tmp_path, "sweep-basic-ipc2").trials
    by_run = {t.info.run_id: t for t in trials}
    for trial in optuna_trials:
        run = by_run[trial.user_attrs["mlflow_run_id"]]
        assert int(run.data.tags["mdd.trial_number"]) == trial.number
        assert float(run.data.params["finetune.lambda_r"]) == pytest.approx(
            trial.params["finetune.lambda_r"]
        )
    # One worker process: the base model was loaded once and shared by its trials.
    assert {t.data.metrics["core/base_loads"] for t in trials} == {1.0}

    # Rerunning with a larger budget resumes the same study: new numbers, no duplicates.
    assert sweep_main([str(sweep), "--n-trials", "4"]) == 0
    numbers = [t.number for t in study(tmp_path, "sweep-basic-ipc2").trials]
    assert sorted(numbers) == [0, 1, 2, 3]


def test_two_worker_processes_share_one_study_without_running_a_trial_twice(
    tmp_path: Path, tiny_fmnist: Path, shared_cache: Path, mlflow_store: str
) -> None:
    sweep = write_sweep(
        tmp_path, tiny_fmnist, shared_cache, mlflow_store, "sweep-two", budget={"n_trials": 4}
    )
    assert sweep_main([str(sweep), "--workers", "2"]) == 0
    trials = study(tmp_path, "sweep-two-ipc2").trials
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    _, runs, finals = sweep_runs(mlflow_store, "sweep-two")
    assert len(runs) == 4 and len(finals) == 1
    workers = {run.data.tags["mdd.worker_pid"] for run in runs}
    assert len(workers) == 2  # both processes took trials
    assert {run.data.metrics["core/base_loads"] for run in runs} == {1.0}  # once per process


def test_failed_and_pruned_trials_are_recorded_and_the_sweep_goes_on(
    tmp_path: Path, tiny_fmnist: Path, shared_cache: Path, mlflow_store: str
) -> None:
    # 'bogus' is not a scheduler: those trials fail when their config is built.
    space = {"sample.scheduler": {"type": "categorical", "choices": ["ddpm", "bogus"]}}
    sweep = write_sweep(
        tmp_path,
        tiny_fmnist,
        shared_cache,
        mlflow_store,
        "sweep-fail",
        space=space,
        sampler={"name": "random", "seed": 2},  # draws ddpm, ddpm, ddpm, bogus
        pruner={"name": "threshold", "lower": 101.0},  # no accuracy reaches it: prune all
        budget={"n_trials": 4},
    )
    assert sweep_main([str(sweep)]) == 0
    trials = study(tmp_path, "sweep-fail-ipc2").trials
    states = {t.number: t.state for t in trials}
    assert len(trials) == 4
    failed = [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
    pruned = [t for t in trials if t.state == optuna.trial.TrialState.PRUNED]
    assert failed and pruned, states
    assert [t.number for t in failed] == [3]
    assert "sample.scheduler" in failed[0].user_attrs["fail_reason"]
    _, runs, finals = sweep_runs(mlflow_store, "sweep-fail")
    run_states = {r.data.tags["mdd.trial_state"] for r in runs}
    assert run_states == {"failed", "pruned"}
    assert {r.info.status for r in runs} <= {"FAILED", "KILLED"}
    assert finals == []  # nothing completed, so nothing to rerun
    summary_path = MlflowClient(tracking_uri=mlflow_store).download_artifacts(
        sweep_runs(mlflow_store, "sweep-fail")[0][0].info.run_id,
        "study_summary.json",
        str(tmp_path),
    )
    summary = json.loads(Path(summary_path).read_text())
    assert summary["trials_by_state"]["fail"] == len(failed)


@pytest.mark.parametrize(
    "space, fragment",
    [
        (
            {"finetune.lambda_r": {"type": "float", "low": 0.1, "high": 0.01}},
            "low (0.1) must be below high",
        ),
        (
            {"finetune.lamda_r": {"type": "float", "low": 0.01, "high": 0.1}},
            "'finetune.lamda_r' does not fit",
        ),
        ({"sample.ipc": {"type": "int", "low": 1, "high": 50}}, "IPC is a grid axis"),
        ({"eval.protocol": {"type": "categorical", "choices": ["dc"]}}, "validation"),
        (
            {
                "sample.guidance.kind": {"type": "categorical", "choices": ["none", "mode"]},
                "sample.guidance.wieght": {"type": "float", "low": 0.01, "high": 0.1},
            },
            "'sample.guidance.wieght' does not fit",
        ),
        (
            {"method": {"type": "categorical", "choices": ["minimax", "herding"]}},
            "may only take the generative methods minimax, dit, base in a sweep, not herding",
        ),
    ],
)
def test_invalid_search_spaces_give_clear_errors(
    tmp_path: Path,
    tiny_fmnist: Path,
    mlflow_store: str,
    capsys: pytest.CaptureFixture[str],
    space: dict,
    fragment: str,
) -> None:
    sweep = write_sweep(tmp_path, tiny_fmnist, tmp_path / "cache", mlflow_store, "bad", space=space)
    assert sweep_main([str(sweep)]) == 2
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err


def _protocol(config: Config) -> Protocol:
    return protocol_for(config.eval, config.data.dataset, config.sample.ipc)


def _imagewoof_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MDD_DIT_XL_2", "MDD_IMAGENET_TRAIN", "MDD_IMAGENET_VAL"):
        monkeypatch.setenv(name, f"/data/{name.lower()}")


def test_imagewoof_trials_run_the_final_idc_protocol_shortened_on_validation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _imagewoof_env(monkeypatch)
    sweep, base = load_sweep("sweeps/imagewoof.yaml")
    trial = _protocol(trial_config(base, sweep, {}, 10))
    assert (trial.name, trial.augmentation, trial.image_size) == ("idc", "idc", 224)
    assert (trial.mean, trial.std) == (IMAGENET_MEAN, IMAGENET_STD)
    assert (trial.epochs, trial.evaluations, trial.eval_split) == (300, 10, "val")
    assert sweep.pruner.warmup_epochs < trial.epochs
    final = _protocol(final_config(base, sweep, {}, 10))
    assert (final.epochs, final.evaluations, final.eval_split) == (2000, 100, "test")


def test_fashion_mnist_trials_run_the_dc_protocol_as_the_proxy_preset_does() -> None:
    sweep, base = load_sweep("sweeps/fashion_mnist.yaml")
    trial = _protocol(trial_config(base, sweep, {}, 10))
    assert dataclasses.replace(trial, name="proxy") == resolve_protocol("proxy", 10)
    final = _protocol(final_config(base, sweep, {}, 10))
    assert final == resolve_protocol("dc", 10)


def test_a_pruner_warmup_as_long_as_the_trial_is_rejected(
    tmp_path: Path, tiny_fmnist: Path, mlflow_store: str, capsys: pytest.CaptureFixture[str]
) -> None:
    sweep = write_sweep(
        tmp_path,
        tiny_fmnist,
        tmp_path / "cache",
        mlflow_store,
        "warmup",
        pruner={"name": "median", "warmup_epochs": 2},
    )
    assert sweep_main([str(sweep)]) == 2
    err = capsys.readouterr().err
    assert "pruner.warmup_epochs (2) is not below the trial's epochs (2)" in err


def test_the_plugin_sweep_searches_fine_tune_guidance_and_selection_as_compositions() -> None:
    sweep, base = load_sweep("sweeps/fashion_mnist_plugins.yaml")
    assert {"method", "sample.guidance.kind", "selection.kind", "selection.oversample"} <= set(
        sweep.space
    )
    moded = {"method": "minimax", "sample.guidance.kind": "mode", "sample.guidance.weight": 0.05}
    config = trial_config(base, sweep, {**moded, "selection.kind": "kcenter"}, 10)
    assert config.composition == "minimax+mode+kcenter"
    assert (config.sample.guidance.weight, config.finetune.lambda_r) == (0.05, 0.0221)
    plain = {"method": "dit", "sample.guidance.kind": "none", "selection.kind": "none"}
    assert trial_config(base, sweep, plain, 10).composition == "dit"
