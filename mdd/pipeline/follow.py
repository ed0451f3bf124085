"""The ranks after 0 of a torchrun run: they join the stages rank 0 splits, nothing else.

Rank 0 runs ``mdd.pipeline.execute.execute`` as a run on its own does and, at a split stage it has
to compute, names it (``World.lead``). A follower then does its part of that stage with
what rank 0 has already made: the base (its stage is done before a fine-tune starts), the
fine-tuned weights (read from the stage's folder before sampling). Claims, MLflow runs and
result files stay with rank 0. ``None`` ends the run.
"""

from __future__ import annotations

import sys
from pathlib import Path

from mdd.cache import Claim
from mdd.config import Config
from mdd.core import Core, LoadedBase
from mdd.errors import MddError
from mdd.pipeline.plan import plan
from mdd.runtime import seed_everything
from mdd.stages.finetune import finetune, read_finetuned
from mdd.stages.sample import sample_surrogate


def follow(core: Core, config: Config) -> None:
    """Do this rank's part of every split stage rank 0 names, until it says the run ended."""
    world = core.world
    seed_everything(config.seed)
    pretrain = {stage.name: stage for stage in plan(config, core.data.fingerprint)}["pretrain"]
    while (task := world.broadcast()) is not None:
        name, args = task
        try:
            base = core.base(Claim(pretrain, cached=True), config.base_recipe, _quiet)
            if name == "finetune":
                _finetune(core, config, base, *args)
            elif name == "sample":
                _sample(core, config, base, *args)
            else:
                raise MddError(f"rank 0 named a stage rank {world.rank} does not know: {name}")
        except MddError as exc:
            # Rank 0 met the same failure at the same collective, records it and ends the run.
            print(f"mdd: rank {world.rank}: {exc}", file=sys.stderr)


def _finetune(
    core: Core, config: Config, base: LoadedBase, folder: Path, classes: range | None
) -> None:
    tuning = config.effective_finetune()
    latents = base.latents if classes is None else base.latents.of_classes(classes)
    finetune(base.trainable, latents, tuning, config.seed, folder, core.device, _quiet,
             core.world)  # fmt: skip


def _sample(
    core: Core,
    config: Config,
    base: LoadedBase,
    folder: Path,
    source: Path | None,
    classes: range | None,
) -> None:
    weights = None if source is None else read_finetuned(source.parent, core.device).weights
    sample_surrogate(base.model, weights, source, base.latents, core.data, config.sample,
                     config.set_origin, folder, core.device, core.world, classes)  # fmt: skip


def _quiet(metrics: dict[str, float], step: int) -> None:
    """A follower's series: rank 0 logs the world's means."""
