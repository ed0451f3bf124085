"""A run: base -> fine-tune -> sample (or select) -> diagnose -> evaluate, one call each.

``execute`` reads top to bottom. Each stage is a plain function that takes what it needs
and returns a value (a base, fine-tuned weights, a surrogate folder, metrics); around each
call, ``Stages.run`` holds the stage's cache claim (``mdd.cache``) and its nested MLflow
run, so a stage whose key is cached is read back instead of recomputed. Stages never
import MLflow: they get a ``log(metrics, step)`` callable.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from mdd.config import Config
from mdd.core import Core
from mdd.plan import plan
from mdd.runtime import seed_everything
from mdd.stageruns import RunResult, Stages
from mdd.stages.diagnose import diagnose_surrogate, read_diagnostics
from mdd.stages.evaluate import RESULTS_FILE, evaluate_surrogate, read_results
from mdd.stages.finetune import finetune, read_finetuned
from mdd.stages.sample import read_sampled, sample_surrogate
from mdd.stages.select import select_candidates, select_surrogate
from mdd.tracking import RunHandle, Tracker, provenance_tags
from mdd.ui import headline_metrics

# The distillation time of the paper: fine-tuning plus generation (or selection).
DISTILL_STAGES = ("finetune", "sample", "select")


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
    data, device, world = core.data, core.device, core.world
    if config.generative:
        with stages.run("pretrain") as step:
            base = core.base(step.claim, config, step.log)
        weights, source = None, None  # `base` samples the pretrained model as it is
        if stages.wants("finetune"):
            with stages.run("finetune") as step:
                tuning = config.effective_finetune()
                step.run.log_params(
                    {f"difffit.{k}": v for k, v in base.trainable.selection.items()}
                )
                step.run.log_params({"finetune": tuning.model_dump(mode="json")})

                def tune(folder: Path) -> None:
                    world.lead("finetune", folder)  # the other ranks train beside this one
                    finetune(base.trainable, base.latents, tuning, config.seed, folder, device,
                             step.log, world)  # fmt: skip

                tuned = step.get(tune, lambda folder: read_finetuned(folder, device))
                step.record(tuned.summary.metrics())
            weights, source = tuned.weights, tuned.path
        with stages.run("sample") as step:  # the set, or with a selection its candidates

            def sample(folder: Path) -> None:
                world.lead("sample", folder, source)  # each rank samples its classes
                sample_surrogate(base.model, weights, source, base.latents, data, config,
                                 folder, device, world)  # fmt: skip

            sampled = step.get(sample, read_sampled)
            step.record(sampled.metrics)
            step.run.log_artifact(sampled.path / "grid.png")
            step.run.log_artifact(sampled.path, "surrogate")
        surrogate = sampled.path
        if stages.wants("select"):
            with stages.run("select") as step:
                surrogate = step.get(
                    lambda folder: select_candidates(
                        sampled.path, data, config, folder / "data", device
                    ),
                    lambda folder: folder / "data",
                )
                step.run.log_artifact(surrogate / "grid.png")
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
    tags["mdd.world_size"] = str(core.world.size)
    with tracker.run(config.name, tags=tags) as parent:
        parent.log_params(config.to_dict())
        parent.log_config(config)
        result = execute(core, config, tracker, parent, until=until)
        parent.log_metrics(result.metrics | headline_metrics(result.metrics))
    return result
