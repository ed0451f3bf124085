"""A run = stages in order + a cache keyed by the hash of what each stage depends on.

``Core`` holds what is expensive to load and shared by every run of a process
(dataset, base model, cached latents, the trainable view); ``plan`` names the
stages of a config with their cache keys; ``execute`` runs them, one nested
MLflow run per stage, reusing every stage whose key is already in the cache.
Stages never import MLflow: they get a ``log(metrics, step)`` callable.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mdd.config import Config
from mdd.data import DatasetSplits, load_dataset
from mdd.data.folders import imagenet_indices
from mdd.data.latents import LatentSet, cached_latents
from mdd.errors import MddError, StageError
from mdd.eval.judge import judge_cache_path, load_judge
from mdd.runtime import pick_device, seed_everything
from mdd.stages.finetune import (
    Trainable,
    finetune,
    load_finetuned,
    prepare_trainable,
    read_summary,
)
from mdd.stages.pretrain import BaseModel, load_base, load_pretrained_base, pretrain_base
from mdd.stages.sample import sample_surrogate
from mdd.tracking import RunHandle, Tracker, provenance_tags
from mdd.ui import headline_metrics

GENERATIVE = ("minimax", "dit")


def _digest(*parts: Any) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


# Content hashes of checkpoint folders, by their files' names, sizes and mtimes: a plan is
# made for every run and sweep trial, and re-reading a base's weights each time is waste.
_IDENTITIES: dict[tuple[Any, ...], str] = {}


def _file_identity(path: Path) -> str:
    """Content hash of a (small) checkpoint folder's weight files, for cache keys."""
    files = sorted(file for file in path.rglob("*") if file.is_file())
    stats = [file.stat() for file in files]
    stamps = tuple(
        (file.relative_to(path).as_posix(), stat.st_size, stat.st_mtime_ns)
        for file, stat in zip(files, stats, strict=True)
    )
    known = (str(path.resolve()), stamps)
    if known not in _IDENTITIES:
        digest = hashlib.sha256()
        for file in files:
            digest.update(file.relative_to(path).as_posix().encode())
            digest.update(file.read_bytes())
        _IDENTITIES[known] = digest.hexdigest()[:16]
    return _IDENTITIES[known]


@dataclass(frozen=True)
class Stage:
    name: str
    key: str
    folder: Path

    @property
    def cached(self) -> bool:
        return (self.folder / "done.json").is_file()


@contextlib.contextmanager
def stage_lock(stage: Stage) -> Iterator[None]:
    """One process computes a stage; others with the same key wait, then find it cached.

    Sweep workers on one machine share the cache, and two trials may need the same
    base model or fine-tuning at the same moment.
    """
    stage.folder.parent.mkdir(parents=True, exist_ok=True)
    with open(stage.folder.parent / f"{stage.key}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def base_key(config: Config, fingerprint: str) -> str:
    if config.model.path is not None:
        return _digest(
            "pretrained",
            config.model.preset,
            config.model.path,
            config.autoencoder.model_dump(mode="json"),
        )
    if config.pretrain.checkpoint is not None:
        folder = config.pretrain.checkpoint
        if not (folder / "base.json").is_file():
            raise MddError(
                f"pretrain.checkpoint: {folder} is not a base model folder (no base.json). "
                "Hint: create one with `mdd pretrain CONFIG --export FOLDER`."
            )
        return "shipped-" + _file_identity(folder)
    return _digest(
        fingerprint,
        config.autoencoder.model_dump(mode="json"),
        config.model.preset,
        config.pretrain.model_dump(mode="json"),
        config.seed,
    )


def effective_finetune(config: Config) -> dict[str, Any]:
    """The fine-tuning settings that matter: the ``dit`` baseline is minimax with weights 0."""
    settings = config.finetune.model_dump(mode="json")
    if config.method == "dit":
        settings |= {"lambda_r": 0.0, "lambda_d": 0.0}
    return settings


def plan(config: Config, fingerprint: str) -> list[Stage]:
    """The stages this config runs, each with the key of everything it depends on."""
    root = config.cache_dir
    stages: list[Stage] = []
    if config.method in GENERATIVE:
        base = base_key(config, fingerprint)
        stages.append(Stage("pretrain", base, root / "base" / base))
        # The data fine-tuned on, whatever the base: a shipped or model.path base's key says
        # nothing of it, and two datasets (or splits) must not share a fine-tuned model.
        tune = _digest(
            base, fingerprint, config.data.image_size, effective_finetune(config), config.seed
        )
        stages.append(Stage("finetune", tune, root / "finetune" / tune))
        # exclude_none: settings added later with a None default keep earlier keys valid.
        sampling = config.sample.model_dump(mode="json", exclude_none=True)
        made = _digest(tune, sampling, config.seed)
        stages.append(Stage("sample", made, root / "surrogate" / made))
    else:
        # `full` takes the whole training split whatever the IPC: one selection serves all.
        ipc = None if config.method == "full" else config.sample.ipc
        made = _digest(fingerprint, config.method, ipc, config.seed)
        stages.append(Stage("select", made, root / "surrogate" / made))
    if config.judge.diagnostics:
        # Its own stage, so the distillation time (DISTILL_STAGES) leaves it out.
        # The judge's file name holds all that makes it (network, resolution, epochs, ...).
        measured = _digest(made, judge_cache_path(config, fingerprint).name, "diagnose")
        stages.append(Stage("diagnose", measured, root / "diagnostics" / measured))
    judged = _digest(made, config.eval.model_dump(mode="json"), config.seed)
    stages.append(Stage("evaluate", judged, root / "eval" / judged))
    return stages


def format_plan(stages: list[Stage]) -> str:
    lines = [f"{'stage':<10} {'key':<18} state"]
    lines += [f"{s.name:<10} {s.key:<18} {'cached' if s.cached else 'to run'}" for s in stages]
    return "\n".join(lines)


@dataclass
class Core:
    """What a process loads once and shares by every run and sweep trial."""

    config: Config
    device: torch.device
    data: DatasetSplits
    loads: dict[str, int] = field(default_factory=dict)
    _base: tuple[str, BaseModel, Trainable, LatentSet] | None = None

    @classmethod
    def load(cls, config: Config) -> Core:
        device = pick_device(config.device)
        core = cls(config, device, load_dataset(config.data))
        core.loads["data"] = 1
        return core

    def base(self, stage: Stage, config: Config, log: Callable) -> tuple[BaseModel, Trainable]:
        """The base model and its trainable view, loaded (or pretrained) once per key."""
        if self._base is not None and self._base[0] == stage.key:
            return self._base[1], self._base[2]
        if config.model.path is not None:
            ids = list(range(len(self.data.class_names)))
            if config.data.dataset == "imagenet_subset":
                assert config.data.root is not None  # the data loader checked it
                ids = imagenet_indices(config.data.root, self.data.class_names)
            shape = tuple(self.data.train.images.shape[1:])
            base = load_pretrained_base(config, ids, shape, self.device)  # type: ignore[arg-type]
        else:
            folder = config.pretrain.checkpoint or stage.folder
            if config.pretrain.checkpoint is None and not stage.cached:
                train = self.data.train
                names = self.data.class_names
                pretrain_base(train, names, self.data.fingerprint, config, folder, self.device, log)
                _mark_done(stage, {"folder": str(folder)})
            base = load_base(folder, self.device)
        latents = cached_latents(
            self.data.train.images,
            self.data.train.labels,
            autoencoder=base.autoencoder,
            data_fingerprint=self.data.fingerprint,
            flip=config.autoencoder.flip,
            cache_dir=config.cache_dir / "latents",
            batch_size=512,
            device=self.device,
        )
        trainable = prepare_trainable(base, config.finetune.difffit)
        if config.model.compile:
            base.transformer.compile()  # in place: parameter names (DiffFit's) stay the same
        self._base = (stage.key, base, trainable, latents)
        self.loads["base"] = self.loads.get("base", 0) + 1
        return base, trainable

    @property
    def latents(self) -> LatentSet:
        assert self._base is not None, "base() loads the latents"
        return self._base[3]


def _mark_done(stage: Stage, info: dict[str, Any]) -> None:
    stage.folder.mkdir(parents=True, exist_ok=True)
    (stage.folder / "done.json").write_text(json.dumps({"key": stage.key, **info}, indent=2))


@dataclass
class RunState:
    """What one stage hands to the next within a run."""

    core: Core
    config: Config
    run: RunHandle
    stage: Stage
    was_cached: bool
    base: BaseModel | None = None
    trainable: Trainable | None = None
    finetuned: Path | None = None
    surrogate: Path | None = None
    report: Callable[[int, float], None] | None = None  # evaluation accuracies, for pruners
    metrics: dict[str, float] = field(default_factory=dict)

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log_series(metrics, step)

    @property
    def label_map(self) -> torch.Tensor:
        """Dataset class index -> backbone class id (identity for mdd's own bases)."""
        assert self.base is not None
        return self.base.class_ids


def _run_pretrain(state: RunState) -> None:
    state.base, state.trainable = state.core.base(state.stage, state.config, state.log)


def _run_finetune(state: RunState) -> None:
    assert state.trainable is not None
    state.run.log_params({f"difffit.{k}": v for k, v in state.trainable.selection.items()})
    state.run.log_params({"finetune": effective_finetune(state.config)})
    if state.was_cached:
        summary = read_summary(state.stage.folder)
    else:
        tuned = state.config.finetune.model_copy(update=effective_finetune(state.config))
        summary = finetune(
            state.trainable,
            state.core.latents,
            state.label_map,
            tuned,
            state.config.seed,
            state.stage.folder,
            state.core.device,
            state.log,
        )
    state.run.log_metrics(summary.metrics())
    state.metrics.update(summary.metrics())
    state.finetuned = state.stage.folder / "ema.safetensors"


def _run_sample(state: RunState) -> None:
    assert state.base is not None and state.trainable is not None
    assert state.finetuned is not None
    folder = state.stage.folder / "data"
    if not state.was_cached:
        load_finetuned(state.trainable, state.finetuned)
        try:
            manifest = {
                "method": state.config.method,
                "config_hash": state.config.section_hash(),
                "source_checkpoint": str(state.finetuned),
            }
            sample_surrogate(
                state.base,
                state.label_map,
                state.core.data.class_names,
                state.config.sample,
                state.config.seed,
                folder,
                state.core.device,
                manifest,
            )
        finally:
            state.trainable.reset()
    state.surrogate = folder
    state.run.log_artifact(folder / "grid.png")
    state.run.log_artifact(folder, "surrogate")


def _run_select(state: RunState) -> None:
    from mdd.stages.select import select_surrogate

    folder = state.stage.folder / "data"
    if not state.was_cached:
        select_surrogate(state.core.data, state.config, folder, state.core.device)
    state.surrogate = folder
    state.run.log_artifact(folder / "grid.png")


def _run_diagnose(state: RunState) -> None:
    """The surrogate set's diagnostics beside the real data (``mdd.eval.diagnostics``)."""
    from mdd.data.surrogate import read_surrogate
    from mdd.eval.diagnostics import diagnose, real_data

    assert state.surrogate is not None
    path = state.stage.folder / "diagnostics.json"
    if not state.was_cached:
        data = state.core.data
        surrogate = read_surrogate(state.surrogate)
        judge = load_judge(data, state.config, state.core.device)
        values = diagnose(surrogate.images, surrogate.labels, judge, real_data(data))
        state.stage.folder.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values, indent=2))
    metrics = {f"surrogate/{k}": v for k, v in json.loads(path.read_text()).items()}
    state.run.log_metrics(metrics)
    state.metrics.update(metrics)


def _run_evaluate(state: RunState) -> None:
    from mdd.stages.evaluate import evaluate_surrogate

    assert state.surrogate is not None
    folder = state.stage.folder
    results = evaluate_surrogate(
        state.surrogate,
        state.core.data,
        state.config,
        folder,
        state.core.device,
        state.log,
        state.report,
    )
    state.metrics.update(results)
    state.run.log_metrics(results)
    for path in sorted(folder.glob("*.png")) + [folder / "results.json"]:
        state.run.log_artifact(path)


STAGE_RUNNERS: dict[str, Callable[[RunState], None]] = {
    "pretrain": _run_pretrain,
    "finetune": _run_finetune,
    "sample": _run_sample,
    "select": _run_select,
    "diagnose": _run_diagnose,
    "evaluate": _run_evaluate,
}


@dataclass
class RunResult:
    metrics: dict[str, float]
    stages: dict[str, dict[str, Any]]


# The distillation time of the paper: fine-tuning plus generation (or selection).
DISTILL_STAGES = ("finetune", "sample", "select")


def _compute_wall_s(stage: Stage) -> float:
    """How long the stage took when it was computed (0 if that was not recorded)."""
    return float(json.loads((stage.folder / "done.json").read_text()).get("wall_s", 0.0))


def execute(
    core: Core,
    config: Config,
    tracker: Tracker,
    parent: RunHandle,
    report: Callable[[int, float], None] | None = None,
    until: str | None = None,
) -> RunResult:
    """Run every stage of ``config`` under ``parent``; cached stages are reused, not rerun.

    ``until`` names the last stage to run (``diagnose``: a surrogate set and its
    diagnostics, no evaluation).

    A stage that fails is recorded as a FAILED nested run (and the parent too) before
    the error reaches the command line as one message. ``report(epoch, acc)`` hears the
    evaluation accuracies as they come (a sweep's pruner). The metrics include the
    compute time of each stage (``wall_s/<stage>``, the original time for cached ones)
    and ``distill_wall_s``, the paper's distillation time.
    """
    seed_everything(config.seed)
    state: RunState | None = None
    summary: dict[str, dict[str, Any]] = {}
    for stage in plan(config, core.data.fingerprint):
        with stage_lock(stage):
            state = _execute_stage(core, config, tracker, parent, stage, state, report, summary)
        if stage.name == until:
            break
    assert state is not None
    distill = [state.metrics.get(f"wall_s/{name}", 0.0) for name in DISTILL_STAGES]
    state.metrics["distill_wall_s"] = sum(distill)
    return RunResult(state.metrics, summary)


def _execute_stage(
    core: Core,
    config: Config,
    tracker: Tracker,
    parent: RunHandle,
    stage: Stage,
    state: RunState | None,
    report: Callable[[int, float], None] | None,
    summary: dict[str, dict[str, Any]],
) -> RunState:
    was_cached = stage.cached
    tags = {"mdd.stage": stage.name, "mdd.stage_key": stage.key, "mdd.cached": was_cached}
    tags["mdd.cache_folder"] = str(stage.folder.resolve())
    started = time.perf_counter()
    with tracker.run(stage.name, tags=tags, parent=parent) as run:
        if state is None:
            state = RunState(core, config, run, stage, was_cached, report=report)
        state.run, state.stage, state.was_cached = run, stage, was_cached
        try:
            STAGE_RUNNERS[stage.name](state)
        except MddError:
            raise
        except Exception as exc:
            raise StageError(f"stage {stage.name} failed: {type(exc).__name__}: {exc}") from exc
        wall_s = time.perf_counter() - started
        if not was_cached:
            _mark_done(stage, {"wall_s": wall_s})
        run.log_metrics({"wall_s": wall_s})
    summary[stage.name] = {"key": stage.key, "cached": was_cached, "wall_s": wall_s}
    assert state is not None
    state.metrics[f"wall_s/{stage.name}"] = _compute_wall_s(stage)
    return state


def format_summary(result: RunResult) -> str:
    lines = [f"{'stage':<10} {'cached':<7} {'wall s':>8}"]
    for name, info in result.stages.items():
        lines.append(f"{name:<10} {str(info['cached']):<7} {info['wall_s']:>8.1f}")
    for name, value in sorted(result.metrics.items()):
        lines.append(f"{name:<32} {value:.4f}")
    return "\n".join(lines)


def run_experiment(config: Config, config_path: str, dry_run: bool = False) -> int:
    """``mdd-run``: one parent MLflow run with a nested run per stage."""
    core = Core.load(config)
    stages = plan(config, core.data.fingerprint)
    print(format_plan(stages))
    if dry_run:
        return 0
    result = run_with_core(core, config, Tracker(config.tracking), {"mdd.config_file": config_path})
    print(format_summary(result))
    return 0


def run_with_core(
    core: Core,
    config: Config,
    tracker: Tracker,
    tags: dict[str, str],
    until: str | None = None,
) -> RunResult:
    """One top-level MLflow run of ``config`` on an already loaded core, as ``mdd-run`` records it.

    Scripts that run many configs in one process (benchmarks/quality_fmnist.py) call this
    with one core, so the dataset and the base model are loaded once. ``tags`` are added to
    the provenance tags.
    """
    tags = provenance_tags(config, core.data.fingerprint, str(core.device)) | tags
    with tracker.run(config.name, tags=tags) as parent:
        parent.log_params(config.to_dict())
        parent.log_config(config)
        result = execute(core, config, tracker, parent, until=until)
        parent.log_metrics(result.metrics | headline_metrics(result.metrics))
    return result


def _base_stage(config: Config, fingerprint: str) -> Stage:
    key = base_key(config, fingerprint)
    return Stage("pretrain", key, config.cache_dir / "base" / key)


def pretrain_only(config: Config, export: str | None = None) -> Path:
    """``mdd pretrain``: train (or reuse) the base model, then measure its class consistency."""
    from mdd.stages.consistency import class_consistency

    if config.pretrain.checkpoint is not None:
        raise MddError(
            f"pretrain.checkpoint is set ({config.pretrain.checkpoint}): there is nothing to "
            "pretrain. Hint: add --set pretrain.checkpoint=null to train a new base."
        )
    core = Core.load(config)
    stage = _base_stage(config, core.data.fingerprint)
    tracker = Tracker(config.tracking)
    tags = provenance_tags(config, core.data.fingerprint, str(core.device))
    tags |= {"mdd.stage": "pretrain", "mdd.base_key": stage.key, "mdd.cached": stage.cached}
    with tracker.run(f"{config.name}-pretrain", tags=tags) as run:
        run.log_params({k: config.to_dict()[k] for k in ("data", "autoencoder", "model")})
        run.log_params({"pretrain": config.pretrain.model_dump(mode="json"), "seed": config.seed})
        run.log_config(config)
        started = time.perf_counter()
        with stage_lock(stage):
            base, _ = core.base(stage, config, _stage_logger(run))
        run.log_metrics({"pretrain_wall_s": time.perf_counter() - started})
        result = class_consistency(core, base, config, 100, stage.folder / "consistency")
        run.log_metrics({"class_consistency": result.consistency})
        run.log_artifact(result.grid)
    print(f"base model: {stage.folder} (key {stage.key})")
    print(result.describe())
    if export:
        target = Path(export)
        for part in ("autoencoder", "transformer", "base.json"):
            source = stage.folder / part
            if source.is_dir():
                shutil.copytree(source, target / part, dirs_exist_ok=True)
            else:
                target.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, target / part)
        print(f"exported to {target}")
    return stage.folder


def _stage_logger(handle: RunHandle) -> Callable[[dict[str, float], int], None]:
    return handle.log_series


def measure_consistency(config: Config, per_class: int = 100) -> float:
    """``mdd consistency``: judge the base model; log it on its pretraining run when found."""
    from mdd.stages.consistency import class_consistency

    core = Core.load(config)
    stage = _base_stage(config, core.data.fingerprint)
    if config.pretrain.checkpoint is None and not stage.cached:
        raise MddError(
            "the base model of this config is not pretrained yet. "
            f"Hint: run `mdd pretrain {config.name}` first, or set pretrain.checkpoint."
        )
    base, _ = core.base(stage, config, lambda metrics, step: None)
    result = class_consistency(core, base, config, per_class, stage.folder / "consistency")
    print(result.describe())
    tracker = Tracker(config.tracking)
    found = tracker.search(f"tags.`mdd.base_key` = '{stage.key}'", max_results=1)
    metrics = {"class_consistency": result.consistency, "judge_test_acc": result.judge_test_acc}
    if found:
        handle = RunHandle(tracker, found[0].info.run_id)
        handle.log_metrics(metrics)
        handle.log_artifact(result.grid)
    else:
        tags = provenance_tags(config, core.data.fingerprint, str(core.device))
        tags["mdd.base_key"] = stage.key
        with tracker.run(f"{config.name}-consistency", tags=tags) as run:
            run.log_metrics(metrics)
            run.log_artifact(result.grid)
    return result.consistency
