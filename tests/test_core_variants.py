"""A worker's ``Core`` shares the base between trials, but never what one trial's fine-tuning
setting made of it: DiffFit's gammas and frozen parameters, or a compiled forward."""

from __future__ import annotations

from mdd.cache import claim
from mdd.config import Config
from mdd.core import Core
from mdd.diffusion.difffit import GAMMA_ATTN
from mdd.pipeline.plan import base_stage


def _silent(metrics: dict, step: int) -> None:
    return None


def _with(config: Config, section: str, **values: object) -> Config:
    """``config`` with ``values`` set in one of its sections."""
    changed = getattr(config, section).model_copy(update=values)
    return config.model_copy(update={section: changed})


def test_a_trial_without_difffit_does_not_reuse_an_earlier_trials_difffit_subset(
    tiny_config: Config,
) -> None:
    core = Core.load(tiny_config.data, tiny_config.device)
    stage = base_stage(tiny_config.base_recipe, core.data.fingerprint)
    full = _with(tiny_config, "finetune", difffit=False)
    with claim(stage) as step:
        difffit = core.base(step, tiny_config.base_recipe, _silent)
        everything = core.base(step, full.base_recipe, _silent)
        again = core.base(step, tiny_config.base_recipe, _silent)

    every_name = {name for name, _ in everything.model.transformer.named_parameters()}
    assert not any(GAMMA_ATTN in name for name in every_name)  # no gammas from the first
    assert set(everything.trainable.initial) == every_name  # the whole backbone trains
    assert any(GAMMA_ATTN in name for name in difffit.trainable.initial)
    assert set(difffit.trainable.initial) < {
        n for n, _ in difffit.model.transformer.named_parameters()
    }
    assert set(again.trainable.initial) == set(difffit.trainable.initial)
    # The base was loaded (pretrained) once; each change of setting made a new variant.
    assert core.loads["base"] == 1
    assert core.loads["variant"] == 3


def test_the_same_setting_reuses_its_variant_and_compile_makes_another(
    tiny_config: Config,
) -> None:
    core = Core.load(tiny_config.data, tiny_config.device)
    stage = base_stage(tiny_config.base_recipe, core.data.fingerprint)
    compiled = _with(tiny_config, "model", compile=True)
    with claim(stage) as step:
        first = core.base(step, tiny_config.base_recipe, _silent)
        assert core.base(step, tiny_config.base_recipe, _silent) is first
        other = core.base(step, compiled.base_recipe, _silent)
    assert other is not first
    assert other.model.transformer is not first.model.transformer
    assert core.loads == {"data": 1, "base": 1, "variant": 2}
