"""A run: base -> fine-tune -> sample (or select) -> diagnose -> evaluate, one call each.

``execute`` reads top to bottom. Each stage is a plain function that takes what it needs
and returns a value (a base, fine-tuned weights, a surrogate folder, metrics); around each
call, ``Stages.run`` holds the stage's cache claim (``mdd.cache``) and its nested MLflow
run, so a stage whose key is cached is read back instead of recomputed. Stages never
import MLflow: they get a ``log(metrics, step)`` callable.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from mdd.cache import Claim, Stage, claim
from mdd.config import Config
from mdd.core import Core
from mdd.errors import MddError, StageError
from mdd.plan import plan
from mdd.runtime import seed_everything
from mdd.stages.diagnose import diagnose_surrogate, read_diagnostics
from mdd.stages.evaluate import RESULTS_FILE, evaluate_surrogate, read_results
from mdd.stages.finetune import finetune, read_finetuned
from mdd.stages.sample import sample_surrogate
from mdd.stages.select import select_surrogate
from mdd.tracking import RunHandle, Tracker, provenance_tags
from mdd.ui import headline_metrics

T = TypeVar("T")
# The distillation time of the paper: fine-tuning plus generation (or selection).
DISTILL_STAGES = ("finetune", "sample", "select")


@dataclass
class Step:
    """One stage inside its claim and its MLflow run."""

    claim: Claim
    run: RunHandle
    metrics: dict[str, float]  # the run's, shared by its steps

    @property
    def folder(self) -> Path:
        return self.claim.folder

    def get(self, compute: Callable[[Path], Any], load: Callable[[Path], T]) -> T:
        return self.claim.get(compute, load)

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log_series(metrics, step)

    def record(self, metrics: dict[str, float]) -> None:
        """Results: on the stage's run now, and on the top-level run at its end."""
        self.run.log_metrics(metrics)
        self.metrics.update(metrics)


@dataclass
class RunResult:
    metrics: dict[str, float]
    stages: dict[str, dict[str, Any]]


class Stages:
    """The stages of one run, each run under its cache claim as a nested MLflow run."""

    def __init__(self, stages: list[Stage], tracker: Tracker, parent: RunHandle, until: str | None):
        self.plan = {stage.name: stage for stage in stages}
        self.tracker, self.parent = tracker, parent
        names = list(self.plan)
        self.last = names.index(until) if until in names else len(names) - 1
        self.result = RunResult({}, {})

    def wants(self, name: str) -> bool:
        """Whether this run has the stage and goes that far (``until`` names the last)."""
        names = list(self.plan)
        return name in names and names.index(name) <= self.last

    @contextmanager
    def run(self, name: str) -> Iterator[Step]:
        """A stage that fails is recorded as a FAILED nested run (and the parent too) before
        the error reaches the command line as one message."""
        stage = self.plan[name]
        with claim(stage) as held:
            started = time.perf_counter()
            tags = {"mdd.stage": name, "mdd.stage_key": stage.key, "mdd.cached": held.cached}
            tags["mdd.cache_folder"] = str(stage.folder.resolve())
            with self.tracker.run(name, tags=tags, parent=self.parent) as run:
                try:
                    yield Step(held, run, self.result.metrics)
                except MddError:
                    raise
                except Exception as exc:
                    raise StageError(f"stage {name} failed: {type(exc).__name__}: {exc}") from exc
                wall_s = time.perf_counter() - started
                run.log_metrics({"wall_s": wall_s})
        self.result.stages[name] = {"key": stage.key, "cached": held.cached, "wall_s": wall_s}
        # The compute time, the original one for a cached stage.
        self.result.metrics[f"wall_s/{name}"] = stage.wall_s


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
    diagnostics, no evaluation). ``report(epoch, acc)`` hears the evaluation accuracies
    as they come (a sweep's pruner). The metrics include the compute time of each stage
    (``wall_s/<stage>``) and ``distill_wall_s``, the paper's distillation time.
    """
    seed_everything(config.seed)
    stages = Stages(plan(config, core.data.fingerprint), tracker, parent, until)
    data, device = core.data, core.device
    if config.generative:
        with stages.run("pretrain") as step:
            base = core.base(step.claim, config, step.log)
        with stages.run("finetune") as step:
            tuning = config.effective_finetune()
            step.run.log_params({f"difffit.{k}": v for k, v in base.trainable.selection.items()})
            step.run.log_params({"finetune": tuning.model_dump(mode="json")})
            tuned = step.get(
                lambda folder: finetune(
                    base.trainable, base.latents, tuning, config.seed, folder, device, step.log
                ),
                lambda folder: read_finetuned(folder, device),
            )
            step.record(tuned.summary.metrics())
        with stages.run("sample") as step:
            surrogate = step.get(
                lambda folder: sample_surrogate(
                    base.model, tuned.weights, tuned.path, data.class_names, config,
                    folder / "data", device,
                ),
                lambda folder: folder / "data",
            )  # fmt: skip
            step.run.log_artifact(surrogate / "grid.png")
            step.run.log_artifact(surrogate, "surrogate")
    else:
        with stages.run("select") as step:
            surrogate = step.get(
                lambda folder: select_surrogate(data, config, folder / "data", device),
                lambda folder: folder / "data",
            )
            step.run.log_artifact(surrogate / "grid.png")
    if stages.wants("diagnose"):
        with stages.run("diagnose") as step:
            values = step.get(
                lambda folder: diagnose_surrogate(surrogate, data, config, folder, device),
                read_diagnostics,
            )
            step.record({f"surrogate/{k}": v for k, v in values.items()})
    if stages.wants("evaluate"):
        with stages.run("evaluate") as step:
            results = step.get(
                lambda folder: evaluate_surrogate(
                    surrogate, data, config, folder, device, step.log, report
                ),
                read_results,
            )
            step.record(results)
            for path in sorted(step.folder.glob("*.png")) + [step.folder / RESULTS_FILE]:
                step.run.log_artifact(path)
    metrics = stages.result.metrics
    metrics["distill_wall_s"] = sum(metrics.get(f"wall_s/{n}", 0.0) for n in DISTILL_STAGES)
    return stages.result


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
