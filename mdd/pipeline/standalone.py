"""Stages run alone, outside a run: ``mdd pretrain`` and ``mdd consistency`` (the base
model), ``mdd judge`` (the dataset's judge)."""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path

import torch

from mdd.cache import claim
from mdd.config import Config
from mdd.core import Core
from mdd.data.load import load_dataset
from mdd.errors import MddError
from mdd.eval.judge import judge_weights, load_judge
from mdd.pipeline.plan import base_stage
from mdd.runtime import pick_device
from mdd.stages.consistency import class_consistency
from mdd.tracking import RunHandle, Tracker, provenance_tags

BASE_PARTS = ("autoencoder", "transformer", "base.json")  # what a base folder holds


def pretrain_only(config: Config, export: str | None = None) -> Path:
    """Train (or reuse) the base model, then measure its class consistency."""
    if config.pretrain.checkpoint is not None:
        raise MddError(
            f"pretrain.checkpoint is set ({config.pretrain.checkpoint}): there is nothing to "
            "pretrain. Hint: add --set pretrain.checkpoint=null to train a new base."
        )
    core = Core.load(config.data, config.device)
    stage = base_stage(config.base_recipe, core.data.fingerprint)
    tracker = Tracker(config.tracking)
    record = config.record
    tags = provenance_tags(record, core.data.fingerprint, str(core.device))
    tags |= {"mdd.stage": "pretrain", "mdd.base_key": stage.key, "mdd.cached": stage.cached}
    with tracker.run(f"{config.name}-pretrain", tags=tags) as run:
        run.log_params({k: config.to_dict()[k] for k in ("data", "autoencoder", "model")})
        run.log_params({"pretrain": config.pretrain.model_dump(mode="json"), "seed": config.seed})
        run.log_config(record)
        started = time.perf_counter()
        with claim(stage) as step:
            base = core.base(step, config.base_recipe, run.log_series).model
        run.log_metrics({"pretrain_wall_s": time.perf_counter() - started})
        result = class_consistency(
            core.data, base, config.sample, config.seed, config.judge_spec, 100,
            stage.folder / "consistency", core.device,
        )  # fmt: skip
        run.log_metrics({"class_consistency": result.consistency})
        run.log_artifact(result.grid)
    print(f"base model: {stage.folder} (key {stage.key})")
    print(result.describe())
    if export:
        target = Path(export)
        for part in BASE_PARTS:
            source = stage.folder / part
            if source.is_dir():
                shutil.copytree(source, target / part, dirs_exist_ok=True)
            else:
                target.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, target / part)
        print(f"exported to {target}")
    return stage.folder


def judge_only(config: Config, export: str | None = None, config_path: str = "CONFIG") -> Path:
    """``mdd judge``: the dataset's judge (cached, shipped or trained now) and its test
    accuracy; ``export`` copies its weights into that folder with a JSON note beside them,
    as ``mdd/assets/fashion_mnist_judge`` is made."""
    data = load_dataset(config.data)
    device = pick_device(config.device)
    started = time.perf_counter()
    judge = load_judge(data, config.judge_spec, device)
    wall_s = time.perf_counter() - started
    weights = judge_weights(config.judge_spec, data.fingerprint)
    assert weights is not None  # load_judge read them
    test_acc = 100.0 * float((judge.predict(data.test.images) == data.test.labels).double().mean())
    print(f"judge: {weights} ({wall_s:.1f} s), test accuracy {test_acc:.2f} %")
    if not export:
        return weights
    target = Path(export)
    target.mkdir(parents=True, exist_ok=True)
    shutil.copy2(weights, target / weights.name)
    note = {
        "file": weights.name,
        "data_fingerprint": data.fingerprint,
        "judge": config.judge.model_dump(mode="json"),
        "protocol": dataclasses.asdict(judge.protocol),
        "test_acc": test_acc,
        "wall_s": wall_s,
        "device": str(device),
        "torch_version": torch.__version__,
        "command": f"mdd judge {config_path} --export {export}",
    }
    (target / f"{weights.stem}.json").write_text(json.dumps(note, indent=2) + "\n")
    print(f"exported to {target}")
    return target / weights.name


def measure_consistency(config: Config, per_class: int = 100) -> float:
    """Judge the base model; log it on its pretraining run when that run is found."""
    core = Core.load(config.data, config.device)
    stage = base_stage(config.base_recipe, core.data.fingerprint)
    if config.pretrain.checkpoint is None and not stage.cached:
        raise MddError(
            "the base model of this config is not pretrained yet. "
            f"Hint: run `mdd pretrain {config.name}` first, or set pretrain.checkpoint."
        )
    with claim(stage) as step:
        base = core.base(step, config.base_recipe, lambda metrics, step: None).model
    result = class_consistency(
        core.data, base, config.sample, config.seed, config.judge_spec, per_class,
        stage.folder / "consistency", core.device,
    )  # fmt: skip
    print(result.describe())
    tracker = Tracker(config.tracking)
    metrics = {"class_consistency": result.consistency, "judge_test_acc": result.judge_test_acc}

    def record(handle: RunHandle) -> None:
        handle.log_metrics(metrics)
        handle.log_artifact(result.grid)

    found = tracker.find_tagged("mdd.base_key", stage.key)
    if found is not None:
        record(found)
        return result.consistency
    tags = provenance_tags(config.record, core.data.fingerprint, str(core.device))
    tags["mdd.base_key"] = stage.key
    with tracker.run(f"{config.name}-consistency", tags=tags) as run:
        record(run)
    return result.consistency
