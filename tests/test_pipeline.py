"""mdd-run end to end on a tiny dataset: stages, stage cache, MLflow records, failures."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient

from mdd.cli import run_main
from mdd.config import Config
from mdd.core import Core
from mdd.data.fingerprint import dataset_fingerprint
from mdd.data.folders import subset_wnids
from mdd.data.surrogate import read_surrogate
from mdd.pipeline.execute import run_with_core
from mdd.pipeline.plan import base_key, plan
from mdd.stages import finetune as finetune_stage
from mdd.tracking import Tracker


def run_cli(config: Config, folder: Path, *extra: str) -> int:
    path = folder / "experiment.yaml"
    path.write_text(config.to_yaml())
    return run_main([str(path), *extra])


def runs_by_name(config: Config) -> dict[str, list]:
    client = MlflowClient(tracking_uri=config.tracking.uri)
    experiment = client.get_experiment_by_name(config.tracking.experiment)
    runs = client.search_runs([experiment.experiment_id], order_by=["start_time DESC"])
    grouped: dict[str, list] = {}
    for run in runs:
        grouped.setdefault(run.info.run_name, []).append(run)
    return grouped


def test_tiny_pretrain_finetune_sample_evaluate_end_to_end(
    tiny_config: Config, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli(tiny_config, tmp_path) == 0

    stages = {stage.name: stage for stage in plan(tiny_config, _fingerprint(tiny_config))}
    assert all(stage.cached for stage in stages.values())
    surrogate = read_surrogate(stages["sample"].folder / "data")
    assert surrogate.images.shape == (20, 1, 28, 28)  # IPC 2 x 10 classes
    assert surrogate.labels.bincount().tolist() == [2] * 10

    client = MlflowClient(tracking_uri=tiny_config.tracking.uri)
    runs = runs_by_name(tiny_config)
    parent = runs["tiny"][0]
    assert parent.info.status == "FINISHED"
    assert parent.data.params["finetune.lambda_r"] == "0.002"
    assert "val/convnet3/last_acc_mean" in parent.data.metrics
    assert "val/convnet3/best_acc_mean" in parent.data.metrics
    for name in ("pretrain", "finetune", "sample", "diagnose", "evaluate"):
        child = runs[name][0]
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.data.metrics["wall_s"] > 0
    finetune_run = runs["finetune"][0]
    history = client.get_metric_history(finetune_run.info.run_id, "finetune/diffusion_loss")
    assert [m.step for m in history] == [6]  # logged every 10 steps and at the end
    assert int(finetune_run.data.params["difffit.gamma"]) > 0
    # 6 steps with EMA decay auto: the base keeps the paper's 30 % of the sampled weights.
    assert finetune_run.data.metrics["finetune/steps"] == 6
    assert finetune_run.data.metrics["finetune/ema_base_share"] == pytest.approx(0.9999**12000)
    assert finetune_run.data.metrics["finetune/weight_distance"] > 0
    diagnostics = runs["diagnose"][0].data.metrics
    for name in ("class_consistency", "intra_cosine_pixels", "precision", "frechet_features"):
        assert f"surrogate/{name}" in diagnostics
        assert f"surrogate/{name}" in parent.data.metrics
    sample_files = {a.path for a in client.list_artifacts(runs["sample"][0].info.run_id)}
    assert {"grid.png", "surrogate"} <= sample_files
    eval_files = {a.path for a in client.list_artifacts(runs["evaluate"][0].info.run_id)}
    assert {"results.json", "curves.png", "confusion_convnet3.png"} <= eval_files
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {"config.yaml"}
    assert "evaluate" in capsys.readouterr().out  # the summary table


def _fingerprint(config: Config) -> str:
    from mdd.data import load_dataset

    return load_dataset(config.data).fingerprint


def test_changing_ipc_reuses_finetuning_and_lambda_invalidates_it(tiny_config: Config) -> None:
    fingerprint = _fingerprint(tiny_config)
    keys = {stage.name: stage.key for stage in plan(tiny_config, fingerprint)}
    more_images = tiny_config.model_copy(deep=True)
    more_images.sample.ipc = 5
    keys_ipc = {stage.name: stage.key for stage in plan(more_images, fingerprint)}
    assert keys_ipc["pretrain"] == keys["pretrain"]
    assert keys_ipc["finetune"] == keys["finetune"]
    assert keys_ipc["sample"] != keys["sample"]
    other_lambda = tiny_config.model_copy(deep=True)
    other_lambda.finetune.lambda_r = 0.5
    keys_lambda = {stage.name: stage.key for stage in plan(other_lambda, fingerprint)}
    assert keys_lambda["pretrain"] == keys["pretrain"]
    assert keys_lambda["finetune"] != keys["finetune"]
    other_network = tiny_config.model_copy(deep=True)
    other_network.eval.networks = ["convnet6"]
    keys_network = {stage.name: stage.key for stage in plan(other_network, fingerprint)}
    assert keys_network["sample"] == keys["sample"]
    assert keys_network["evaluate"] != keys["evaluate"]


def _woof_nette_configs(tmp_path: Path) -> tuple[Config, Config]:
    """Two ImageNet-subset runs on the same DiT-XL/2 folder (a model.path base)."""
    woof = Config.model_validate(
        {
            "data": {"dataset": "imagenet_subset", "subset": "woof", "image_size": 256},
            "model": {"preset": "DiT-XL/2", "path": str(tmp_path / "DiT-XL-2-256")},
            "autoencoder": {"kind": "sd_vae", "path": str(tmp_path / "sd-vae")},
        }
    )
    nette = woof.model_copy(deep=True)
    nette.data.subset = "nette"
    return woof, nette


def _subset_fingerprint(subset: str, val_per_class: int = 0) -> str:
    # What load_dataset hashes: the class folders' files and the split settings.
    wnids = subset_wnids(subset)
    entries = [(f"train/{wnid}/{wnid}_1.JPEG", 1000) for wnid in wnids]
    return dataset_fingerprint(entries, split_seed=0, val_per_class=val_per_class)


def test_every_stage_after_a_model_path_base_is_keyed_by_the_data(tmp_path: Path) -> None:
    woof, nette = _woof_nette_configs(tmp_path)
    keys_woof = {s.name: s.key for s in plan(woof, _subset_fingerprint("woof"))}
    keys_nette = {s.name: s.key for s in plan(nette, _subset_fingerprint("nette"))}
    assert keys_woof["pretrain"] == keys_nette["pretrain"]  # the same DiT-XL/2
    for name in ("finetune", "sample", "evaluate"):
        assert keys_woof[name] != keys_nette[name], name
    more_val = {s.name: s.key for s in plan(woof, _subset_fingerprint("woof", 1000))}
    for name in ("finetune", "sample", "evaluate"):
        assert more_val[name] != keys_woof[name], name
    assert {s.name: s.key for s in plan(woof, _subset_fingerprint("woof"))} == keys_woof


def test_shipped_base_is_read_once_per_process_until_a_file_changes(
    tiny_config: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "base"
    (folder / "transformer").mkdir(parents=True)
    (folder / "base.json").write_text("{}")
    weights = folder / "transformer" / "weights.safetensors"
    weights.write_bytes(b"first")
    shipped = tiny_config.model_copy(deep=True)
    shipped.pretrain.checkpoint = folder
    reads: list[Path] = []
    read_bytes = Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda self: reads.append(self) or read_bytes(self))
    first = base_key(shipped.base_recipe, "fp")
    assert base_key(shipped.base_recipe, "fp") == first
    assert len(reads) == 2  # base.json and the weights, hashed once for both keys
    weights.write_bytes(b"other weights")  # new content: new size, new mtime
    assert base_key(shipped.base_recipe, "fp") != first


def test_dit_baseline_is_minimax_with_zero_weights(tiny_config: Config) -> None:
    fingerprint = _fingerprint(tiny_config)
    dit = tiny_config.model_copy(deep=True)
    dit.method = "dit"
    zero = tiny_config.model_copy(deep=True)
    zero.finetune.lambda_r = zero.finetune.lambda_d = 0.0
    finetune_key = {s.name: s.key for s in plan(dit, fingerprint)}["finetune"]
    assert finetune_key == {s.name: s.key for s in plan(zero, fingerprint)}["finetune"]


def test_second_run_with_new_ipc_reruns_only_sampling_and_evaluation(
    tiny_config: Config, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli(tiny_config, tmp_path) == 0
    capsys.readouterr()
    assert run_cli(tiny_config, tmp_path, "--set", "sample.ipc=3", "--dry-run") == 0
    plan_text = capsys.readouterr().out
    assert "finetune   " in plan_text and "cached" in plan_text.split("finetune")[1].split("\n")[0]
    assert "to run" in plan_text.split("sample")[1].split("\n")[0]
    assert run_cli(tiny_config, tmp_path, "--set", "sample.ipc=3") == 0
    runs = runs_by_name(tiny_config)
    assert runs["finetune"][0].data.tags["mdd.cached"] == "True"
    assert runs["sample"][0].data.tags["mdd.cached"] == "False"


def test_nan_loss_fails_the_run_naming_the_step_and_keeps_checkpoints(
    tiny_config: Config,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    real_loss = finetune_stage.diffusion_loss
    calls = {"n": 0}

    def loss_that_explodes_at_step_4(*args, **kwargs):
        terms = real_loss(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 5:  # 0-based step 4
            return terms._replace(total=terms.total * float("nan"))
        return terms

    monkeypatch.setattr(finetune_stage, "diffusion_loss", loss_that_explodes_at_step_4)
    assert run_cli(tiny_config, tmp_path) == 1
    err = capsys.readouterr().err
    assert "step 4" in err and "nan" in err.lower() and "Traceback" not in err
    runs = runs_by_name(tiny_config)
    assert runs["finetune"][0].info.status == "FAILED"
    assert runs["tiny"][0].info.status == "FAILED"
    stage = {s.name: s for s in plan(tiny_config, _fingerprint(tiny_config))}["finetune"]
    assert (stage.folder / "checkpoints" / "step-4" / "state.safetensors").is_file()
    assert not stage.cached


def test_a_runs_result_names_each_stages_folder_as_the_plan_does(tiny_config: Config) -> None:
    core = Core.load(tiny_config.data, tiny_config.device)
    result = run_with_core(core, tiny_config, Tracker(tiny_config.tracking), {})
    planned = {stage.name: stage.folder for stage in plan(tiny_config, core.data.fingerprint)}
    assert {name: info["folder"] for name, info in result.stages.items()} == planned
    assert read_surrogate(result.stages["sample"]["folder"] / "data").labels.numel() == 20
