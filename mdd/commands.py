"""The commands around a run: ``mdd-run`` itself, ``mdd pretrain`` and ``mdd consistency``
(the base model alone, outside a run), ``mdd judge`` (the dataset's judge alone)."""

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
from mdd.distributed import join_world, leave_world
from mdd.errors import MddError
from mdd.eval.judge import judge_cache_path, load_judge
from mdd.follow import follow
from mdd.pipeline import RunResult, run_with_core
from mdd.plan import base_stage, format_plan, plan
from mdd.runtime import pick_device
from mdd.stages.consistency import class_consistency
from mdd.tracking import RunHandle, Tracker, provenance_tags

BASE_PARTS = ("autoencoder", "transformer", "base.json")  # what a base folder holds


def format_summary(result: RunResult) -> str:
    lines = [f"{'stage':<16} {'cached':<7} {'wall s':>8}"]
    for name, info in result.stages.items():
        lines.append(f"{name:<16} {str(info['cached']):<7} {info['wall_s']:>8.1f}")
    for name, value in sorted(result.metrics.items()):
        lines.append(f"{name:<32} {value:.4f}")
    return "\n".join(lines)


def run_experiment(
    config: Config, config_path: str, dry_run: bool = False, phase: int | None = None
) -> int:
    """``mdd-run``: one parent MLflow run with a nested run per stage.

    Under torchrun, rank 0 runs it and the other ranks follow (``mdd.follow``) until rank 0
    ends the run, whether it finished or failed. ``phase`` runs one class phase's stages.
    """
    phases = config.data.phases
    if phase is not None and not (phases > 1 and 0 <= phase < phases):
        raise MddError(
            f"--phase {phase}: the config has data.phases {phases}; --phase names one of "
            "the phases 0 to data.phases - 1. Hint: set data.phases, or leave --phase out."
        )
    world = join_world()
    try:
        core = Core.load(config.data, config.device, world)
        if not world.main:
            follow(core, config)
            return 0
        try:
            print(format_plan(plan(config, core.data.fingerprint)))
            if dry_run:
                return 0
            tags = {"mdd.config_file": config_path}
            tracker = Tracker(config.tracking)
            result = run_with_core(core, config, tracker, tags, only_phase=phase)
        finally:
            world.broadcast(None)
        print(format_summary(result))
        return 0
    finally:
        leave_world()


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
    tags = provenance_tags(config, core.data.fingerprint, str(core.device))
    tags |= {"mdd.stage": "pretrain", "mdd.base_key": stage.key, "mdd.cached": stage.cached}
    with tracker.run(f"{config.name}-pretrain", tags=tags) as run:
        run.log_params({k: config.to_dict()[k] for k in ("data", "autoencoder", "model")})
        run.log_params({"pretrain": config.pretrain.model_dump(mode="json"), "seed": config.seed})
        run.log_config(config)
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
    cache = judge_cache_path(config.judge_spec, data.fingerprint)
    started = time.perf_counter()
    judge = load_judge(data, config.judge_spec, device)
    wall_s = time.perf_counter() - started
    test_acc = 100.0 * float((judge.predict(data.test.images) == data.test.labels).double().mean())
    print(f"judge: {cache} ({wall_s:.1f} s), test accuracy {test_acc:.2f} %")
    if not export:
        return cache
    target = Path(export)
    target.mkdir(parents=True, exist_ok=True)
    shutil.copy2(cache, target / cache.name)
    note = {
        "file": cache.name,
        "data_fingerprint": data.fingerprint,
        "judge": config.judge.model_dump(mode="json"),
        "protocol": dataclasses.asdict(judge.protocol),
        "test_acc": test_acc,
        "wall_s": wall_s,
        "device": str(device),
        "torch_version": torch.__version__,
        "command": f"mdd judge {config_path} --export {export}",
    }
    (target / f"{cache.stem}.json").write_text(json.dumps(note, indent=2) + "\n")
    print(f"exported to {target}")
    return target / cache.name


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
    tags = provenance_tags(config, core.data.fingerprint, str(core.device))
    tags["mdd.base_key"] = stage.key
    with tracker.run(f"{config.name}-consistency", tags=tags) as run:
        record(run)
    return result.consistency
