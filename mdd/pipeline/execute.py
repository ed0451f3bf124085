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
from mdd.core import Core, LoadedBase
from mdd.eval.judge import make_judge
from mdd.phases import Phase, class_phases, merge_phases
from mdd.pipeline.plan import plan
from mdd.runtime import seed_everything
from mdd.stageruns import RunResult, Stages
from mdd.stages.diagnose import diagnose_surrogate, read_diagnostics
from mdd.stages.evaluate import RESULTS_FILE, EvaluationJob, evaluate_surrogate, read_results
from mdd.stages.finetune import finetune, read_finetuned
from mdd.stages.sample import Sampled, read_sampled, sample_surrogate
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
    only_phase: int | None = None,
) -> RunResult:
    """Run every stage of ``config`` under ``parent``; cached stages are reused, not rerun.

    ``until`` names the last stage to run (``diagnose``: a surrogate set and its
    diagnostics, no evaluation). ``report(epoch, acc)`` hears the evaluation accuracies
    as they come (a sweep's pruner). The metrics include the compute time of each stage
    (``wall_s/<stage>``) and ``distill_wall_s``, the paper's distillation time.
    ``only_phase`` runs the base and that class phase's stages alone (``data.phases``).
    """
    seed_everything(config.seed)
    stages = Stages(plan(config, core.data.fingerprint), tracker, parent, until)
    data, device = core.data, core.device
    if config.generative:
        with stages.run("pretrain") as step:
            base = core.base(step.claim, config.base_recipe, step.log)
        _judge(stages, core, config)
        parts = [
            _tune_and_sample(stages, core, config, base, phase)
            for phase in class_phases(config.data.phases)
            if only_phase is None or phase.index == only_phase
        ]
        if only_phase is not None:  # one phase's stages, as an array task runs them
            return _finish(stages.result)
        sampled = parts[0]
        if len(parts) > 1:
            with stages.run("sample") as step:  # the phases' sets as one
                sampled = step.get(
                    lambda folder: merge_phases(
                        parts, data, config.sample, config.made_by(), folder
                    ),
                    read_sampled,
                )
                step.record(sampled.metrics)
                step.run.log_artifact(sampled.path / "grid.png")
                step.run.log_artifact(sampled.path, "surrogate")
        surrogate = sampled.path
        if (selection := config.selection) is not None and stages.wants("select"):
            with stages.run("select") as step:
                surrogate = step.get(
                    lambda folder: select_candidates(
                        sampled.path,
                        data,
                        selection.kind,
                        config.sample.ipc,
                        config.set_origin,
                        folder / "data",
                        device,
                    ),  # fmt: skip
                    lambda folder: folder / "data",
                )
                step.run.log_artifact(surrogate / "grid.png")
    else:
        decoded = None  # real images as they are, or as the base's autoencoder decodes them
        if config.sample.through_autoencoder:
            with stages.run("pretrain") as step:
                decoded = core.base(step.claim, config.base_recipe, step.log)
        _judge(stages, core, config)
        with stages.run("select") as step:
            surrogate = step.get(
                lambda folder: select_surrogate(
                    data,
                    config.method,
                    config.sample,
                    config.set_origin,
                    folder / "data",
                    device,
                    decoded,
                ),  # fmt: skip
                lambda folder: folder / "data",
            )
            step.run.log_artifact(surrogate / "grid.png")
    if stages.wants("diagnose"):
        with stages.run("diagnose") as step:
            values = step.get(
                lambda folder: diagnose_surrogate(
                    surrogate, data, config.judge_spec, folder, device
                ),
                read_diagnostics,
            )
            step.record({f"surrogate/{k}": v for k, v in values.items()})
    if stages.wants("evaluate"):
        job = EvaluationJob(config.eval, config.data, config.sample.ipc, config.seed)
        with stages.run("evaluate") as step:
            results = step.get(
                lambda folder: evaluate_surrogate(
                    surrogate, data, job, folder, device, step.log, report
                ),
                read_results,
            )
            step.record(results)
            for path in sorted(step.folder.glob("*.png")) + [step.folder / RESULTS_FILE]:
                step.run.log_artifact(path)
    return _finish(stages.result)


def _judge(stages: Stages, core: Core, config: Config) -> None:
    """The judge, trained (or found shipped) before the stages that look through it read it."""
    if stages.wants("judge"):
        with stages.run("judge") as step:
            step.get(lambda folder: make_judge(core.data, config.judge_spec, core.device),
                     lambda folder: None)  # fmt: skip


def _tune_and_sample(
    stages: Stages, core: Core, config: Config, base: LoadedBase, phase: Phase
) -> Sampled:
    """A phase's fine-tune (none for ``base``) and the set (or pool) sampled with it."""
    world, device = core.world, core.device
    classes = phase.classes(base.model.num_classes)
    weights, source = None, None  # `base` samples the pretrained model as it is
    if stages.wants(phase.finetune):
        with stages.run(phase.finetune) as step:
            tuning = config.effective_finetune()
            step.run.log_params({f"difffit.{k}": v for k, v in base.trainable.selection.items()})
            step.run.log_params({"finetune": tuning.model_dump(mode="json")})
            latents = phase.latents(base.latents, base.model.num_classes)

            def tune(folder: Path) -> None:
                world.lead("finetune", folder, classes)  # the other ranks train beside this one
                finetune(base.trainable, latents, tuning, config.seed, folder, device, step.log,
                         world)  # fmt: skip

            tuned = step.get(tune, lambda folder: read_finetuned(folder, device))
            step.record({phase.prefix + k: v for k, v in tuned.summary.metrics().items()})
        weights, source = tuned.weights, tuned.path
    with stages.run(phase.sample) as step:  # the set, or with a selection its candidates

        def sample(folder: Path) -> None:
            world.lead("sample", folder, source, classes)  # each rank samples its classes
            sample_surrogate(base.model, weights, source, base.latents, core.data,
                             config.sample, config.set_origin, folder, device, world,
                             classes)  # fmt: skip

        sampled = step.get(sample, read_sampled)
        step.record({phase.prefix + k: v for k, v in sampled.metrics.items()})
        step.run.log_artifact(sampled.path / "grid.png")
        if phase.whole:  # a phase's part is logged with the merged set
            step.run.log_artifact(sampled.path, "surrogate")
    return sampled


def _finish(result: RunResult) -> RunResult:
    """The run's distillation time: its fine-tunes and samplings (every phase's)."""
    metrics = result.metrics
    metrics["distill_wall_s"] = sum(
        value
        for name, value in list(metrics.items())
        if name.startswith("wall_s/") and name[7:].split("-")[0] in DISTILL_STAGES
    )
    return result


def run_with_core(
    core: Core,
    config: Config,
    tracker: Tracker,
    tags: dict[str, str],
    until: str | None = None,
    only_phase: int | None = None,
) -> RunResult:
    """One top-level MLflow run of ``config`` on an already loaded core, as ``mdd-run`` records it.

    Scripts that run many configs in one process (benchmarks/quality_fmnist.py) call this
    with one core, so the dataset and the base model are loaded once. ``tags`` are added to
    the provenance tags.
    """
    record = config.record
    tags = provenance_tags(record, core.data.fingerprint, str(core.device)) | tags
    tags["mdd.world_size"] = str(core.world.size)
    if only_phase is not None:
        tags["mdd.phase"] = str(only_phase)
    with tracker.run(config.name, tags=tags) as parent:
        parent.log_params(config.to_dict())
        parent.log_config(record)
        result = execute(core, config, tracker, parent, until=until, only_phase=only_phase)
        parent.log_metrics(result.metrics | headline_metrics(result.metrics))
    return result
