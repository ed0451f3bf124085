"""The stages a config runs and the cache key of each: the hash of all its result depends on.

Keys chain: a fine-tune's key holds its base's, a sample's holds its fine-tune's, and so
on, so changing one setting invalidates exactly the stages downstream of it. Every key
below the base holds the data fingerprint, whatever the base (a shipped or ``model.path``
base's key says nothing of the data fine-tuned on).
"""

from __future__ import annotations

from typing import Any

from mdd.cache import Stage, digest, file_identity, folder_identity
from mdd.config import AutoencoderConfig, BaseRecipe, Config, EvalConfig
from mdd.errors import MddError
from mdd.eval.judge import judge_cache_path, judge_stage
from mdd.methods.selection import looks_through_the_judge
from mdd.phases import class_phases


def _autoencoder_settings(autoencoder: AutoencoderConfig) -> dict[str, Any]:
    settings = autoencoder.model_dump(mode="json")
    if settings["widths"] is None:  # the default: keys made before autoencoder.widths stay
        settings.pop("widths")
    return settings


def base_key(recipe: BaseRecipe, fingerprint: str) -> str:
    model, pretrain = recipe.model, recipe.pretrain
    if model.path is not None:
        return digest(
            "pretrained", model.preset, model.path, _autoencoder_settings(recipe.autoencoder)
        )
    if pretrain.checkpoint is not None:
        folder = pretrain.checkpoint
        if not (folder / "base.json").is_file():
            raise MddError(
                f"pretrain.checkpoint: {folder} is not a base model folder (no base.json). "
                "Hint: create one with `mdd pretrain CONFIG --export FOLDER`."
            )
        return "shipped-" + folder_identity(folder)
    return digest(
        fingerprint,
        _autoencoder_settings(recipe.autoencoder),
        model.preset,
        pretrain.model_dump(mode="json"),
        recipe.seed,
    )


def base_stage(recipe: BaseRecipe, fingerprint: str) -> Stage:
    key = base_key(recipe, fingerprint)
    return Stage("pretrain", key, recipe.cache_dir / "base" / key)


def plan(config: Config, fingerprint: str) -> list[Stage]:
    """The stages this config runs, in order, each with the key of everything it depends on."""
    root = config.cache_dir
    stages: list[Stage] = []
    judge = judge_stage(config.judge_spec, fingerprint) if needs_judge(config) else None
    # The keys below hold the judge's weights' file name, as before the judge was a stage.
    judge_file = judge_cache_path(config.judge_spec, fingerprint).name
    if config.generative:
        base = base_stage(config.base_recipe, fingerprint)
        stages.append(base)
        if judge is not None:  # trained (or read) once, before anything looks through it
            stages.append(judge)
        # exclude_none: settings added later with a None default keep earlier keys valid.
        # through_autoencoder is for real selections only (always False here).
        sampling = config.sample.model_dump(
            mode="json", exclude_none=True, exclude={"through_autoencoder"}
        )
        # One candidate pool serves every selection rule with the same oversampling.
        pool = () if config.selection is None else ({"oversample": config.selection.oversample},)
        parts = []
        for phase in class_phases(config.data.phases):
            # A phase's keys say which phase, so one phase's stages never stand for another's.
            which = () if phase.whole else ({"phase": phase.index, "phases": phase.count},)
            if config.method == "base":  # sampled as pretrained: the data only shapes guidance
                tune = digest("untuned", base.key, fingerprint, config.data.image_size)
            else:
                tuned = config.effective_finetune().model_dump(mode="json")
                tune = digest(base.key, fingerprint, config.data.image_size, tuned, config.seed,
                              *which)  # fmt: skip
                stages.append(Stage(phase.finetune, tune, root / "finetune" / tune))
            made = digest(tune, sampling, config.seed, *pool, *which)
            stages.append(Stage(phase.sample, made, root / "surrogate" / made))
            parts.append(made)
        if len(parts) > 1:  # the phases' sets as one
            made = digest(*parts, "merge")
            stages.append(Stage("sample", made, root / "surrogate" / made))
        if config.selection is not None:
            made = digest(made, config.selection.kind, judge_file, "select")
            stages.append(Stage("select", made, root / "surrogate" / made))
    else:
        # `full` takes the whole training split whatever the IPC: one selection serves all.
        ipc = None if config.method == "full" else config.sample.ipc
        drawn = () if config.sample.seed is None else ({"set_seed": config.sample.seed},)
        decoded = ()
        if config.sample.through_autoencoder:  # decoded from the base's latents
            base = base_stage(config.base_recipe, fingerprint)
            stages.append(base)
            decoded = ({"through_autoencoder": base.key},)
        if judge is not None:
            stages.append(judge)
        made = digest(fingerprint, config.method, ipc, config.seed, *drawn, *decoded)
        stages.append(Stage("select", made, root / "surrogate" / made))
    if config.judge.diagnostics:
        # Its own stage, so the distillation time (DISTILL_STAGES) leaves it out.
        # The judge's file name holds all that makes it (network, resolution, epochs, ...).
        measured = digest(made, judge_file, "diagnose")
        stages.append(Stage("diagnose", measured, root / "diagnostics" / measured))
    judged = digest(made, *evaluation_settings(config.eval), config.seed)
    stages.append(Stage("evaluate", judged, root / "eval" / judged))
    return stages


def needs_judge(config: Config) -> bool:
    """Whether the run looks through the judge: its diagnostics, a selection among
    candidates or of real images by any rule but the unjudged ones (``random``, ``full``)."""
    if config.judge.diagnostics:
        return True
    rule = config.selection.kind if config.selection is not None else None
    if not config.generative:
        rule = config.method
    return rule is not None and looks_through_the_judge(rule)


def evaluation_settings(evaluation: EvalConfig) -> tuple[Any, ...]:
    """What the evaluation's key holds: the ``eval`` section and, for the soft-label protocol,
    the teacher file's content (the same path may hold other weights later)."""
    settings = evaluation.model_dump(mode="json")
    teacher = settings.pop("teacher")  # absent from the keys made before eval.teacher
    if teacher is None:
        return (settings,)
    weights = evaluation.teacher.weights if evaluation.teacher else None
    held = file_identity(weights) if weights is not None and weights.is_file() else "missing"
    return (settings, {"teacher": teacher, "teacher_sha256": held})


def format_plan(stages: list[Stage]) -> str:
    lines = [f"{'stage':<16} {'key':<18} state"]
    lines += [f"{s.name:<16} {s.key:<18} {'cached' if s.cached else 'to run'}" for s in stages]
    return "\n".join(lines)
