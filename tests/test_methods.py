"""Plug-in methods: MGD3's mode guidance and generate-then-select, pinned on tiny tensors."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from mdd.baselines import class_means, select_confident
from mdd.config import (
    Config,
    ModeGuidanceConfig,
    SelectionConfig,
    apply_overrides,
    build_config,
)
from mdd.data.surrogate import read_surrogate
from mdd.diffusion.sampling import (
    StepState,
    item_generator,
    make_scheduler,
    sample_latents,
    step_std,
)
from mdd.errors import ConfigError
from mdd.methods import composition_overrides
from mdd.methods.mode import ModeGuidance, class_modes, kmeans, mode_targets
from mdd.methods.selection import SELECTIONS, Pool
from mdd.pipeline.plan import plan
from tests.test_pipeline import _fingerprint, run_cli, runs_by_name
from tests.test_sampling import LATENT_SHAPE, _tiny_dit


def test_kmeans_finds_the_centres_of_separated_clusters_the_same_way_for_a_seed() -> None:
    generator = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    points = torch.cat([c + 0.1 * torch.randn(50, 2, generator=generator) for c in centres])
    found = kmeans(points, 3, seed=0)
    # Each true centre has one found centre within the points' noise.
    distance = torch.cdist(centres, found)
    assert distance.min(dim=1).values.max() < 0.1
    assert sorted(distance.argmin(dim=1).tolist()) == [0, 1, 2]
    assert torch.equal(found, kmeans(points, 3, seed=0))
    with pytest.raises(ValueError, match="k = 4 centres need between 1 and 3 points"):
        kmeans(points[:3], 4, seed=0)


def test_each_class_gets_its_own_modes_and_sample_i_takes_mode_i_mod_k() -> None:
    latents = torch.cat([torch.full((6, 1, 2, 2), 1.0), torch.full((6, 1, 2, 2), -1.0)])
    latents[:3] += 0.5  # class 0: two groups, at 1.5 and 1.0
    labels = torch.tensor([0] * 6 + [1] * 6)
    modes = class_modes(latents, labels, 2, 2, seed=0)
    assert modes.shape == (2, 2, 1, 2, 2)
    assert sorted(modes[0, :, 0, 0, 0].tolist()) == [1.0, 1.5]
    assert modes[1].flatten().tolist() == [-1.0] * 8
    sampled = torch.tensor([0, 0, 0, 1, 1, 1])
    targets = mode_targets(modes, sampled)
    assert torch.equal(targets[0], modes[0, 0]) and torch.equal(targets[1], modes[0, 1])
    assert torch.equal(targets[2], modes[0, 0])  # the third sample of class 0: mode 0 again
    assert torch.equal(targets[4], modes[1, 1])


def test_mode_guidance_moves_the_step_toward_the_mode_by_weight_sigma_and_stops() -> None:
    targets = torch.full((4, 1, 2, 2), 3.0)
    guide = ModeGuidance(targets, weight=0.1, stop_step=25)
    x_prev, x0_hat, sigma = torch.zeros(2, 1, 2, 2), torch.ones(2, 1, 2, 2), torch.tensor(0.5)
    step = _state(x_prev=x_prev, x0_hat=x0_hat, sigma=sigma, index=0, items=slice(2, 4))
    # x_{t-1} + weight * sigma * (mode - x0_hat) = 0 + 0.1 * 0.5 * (3 - 1) = 0.1
    torch.testing.assert_close(guide(step), torch.full((2, 1, 2, 2), 0.1))
    # Respaced index = steps - 1 - index: step 23 is index 26 > 25, step 24 is 25: the last
    # guided step is the 24th of 50, as in MGD3 (t > stop_t).
    assert guide.active(23, 50) and not guide.active(24, 50)
    assert torch.equal(guide(dataclasses.replace(step, index=24)), x_prev)


def _state(**given) -> StepState:
    """A step of 50 with every field the test does not set zero or empty."""
    x = given.get("x_prev", torch.zeros(2, 1, 2, 2))
    defaults = dict(
        x_t=torch.zeros_like(x), x_prev=x, x0_hat=torch.zeros_like(x), eps=torch.zeros_like(x),
        sigma=torch.tensor(0.0), alpha_bar=0.5, index=0, steps=50, items=slice(0, len(x)),
        predict_x0=lambda x_t: x_t,
    )  # fmt: skip
    return StepState(**{**defaults, **given})


@pytest.mark.parametrize("learned_variance", [False, True])
def test_step_std_is_the_std_of_the_noise_the_scheduler_adds(learned_variance: bool) -> None:
    channels = 4
    scheduler = make_scheduler("ddpm", 10, learned_variance=learned_variance)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(3, channels, 4, 4, generator=generator)
    width = 2 * channels if learned_variance else channels
    output = torch.randn(3, width, 4, 4, generator=generator)
    output[:, channels:] = output[:, channels:].tanh()  # variance values lie in [-1, 1]
    timestep = int(scheduler.timesteps[3])
    steps = [
        scheduler.step(output, timestep, x, generator=[item_generator(seed, i) for i in range(3)])
        for seed in (1, 2)
    ]
    noise = [
        torch.stack([torch.randn(channels, 4, 4, generator=item_generator(s, i)) for i in range(3)])
        for s in (1, 2)
    ]
    # prev_1 - prev_2 = sigma * (z_1 - z_2): the same mean, two noise draws.
    sigma = step_std(scheduler, timestep, output, channels)
    difference = steps[0].prev_sample - steps[1].prev_sample
    torch.testing.assert_close(difference, sigma * (noise[0] - noise[1]), rtol=1e-4, atol=1e-5)
    assert float(step_std(scheduler, 0, output, channels).max()) == 0.0


def test_the_sampler_continues_from_what_the_guidance_hook_returns() -> None:
    model = _tiny_dit(out_channels=8)
    labels = torch.tensor([0, 1, 2, 3])
    targets = torch.arange(4.0).view(4, 1, 1, 1).expand(4, *LATENT_SHAPE).clone()
    seen: list[tuple[int, slice, float]] = []

    def last_step_lands_on_targets(step: StepState) -> torch.Tensor:
        seen.append((step.index, step.items, float(step.sigma.max())))
        # The differentiable x_t -> x0_hat is the sampler's own prediction...
        torch.testing.assert_close(step.predict_x0(step.x_t), step.x0_hat, rtol=1e-4, atol=1e-5)
        if step.index == 0:  # ... and gradients reach x_t through the model
            with torch.inference_mode(False), torch.enable_grad():
                x_t = step.x_t.clone().requires_grad_()
                (gradient,) = torch.autograd.grad(step.predict_x0(x_t).sum(), x_t)
            assert gradient.abs().sum() > 0
        return targets[step.items] if step.index == step.steps - 1 else step.x_prev

    kwargs = dict(guidance_scale=2.0, steps=5, scheduler="ddpm", seed=0, batch_size=2)
    cpu = torch.device("cpu")
    landed = sample_latents(
        model, labels, LATENT_SHAPE, device=cpu, steer=last_step_lands_on_targets, **kwargs
    )
    assert torch.equal(landed, targets)
    # Every step of both batches, each told which items of the call it holds; the last
    # step adds no noise.
    assert [(i, s.start, s.stop) for i, s, _ in seen] == [
        (i, start, start + 2) for start in (0, 2) for i in range(5)
    ]
    assert [sigma for i, _, sigma in seen if i == 4] == [0.0, 0.0]
    assert all(sigma > 0 for i, _, sigma in seen if i < 4)

    plain = sample_latents(model, labels, LATENT_SHAPE, device=cpu, **kwargs)
    weightless = ModeGuidance(targets, weight=0.0, stop_step=0)
    assert torch.equal(
        sample_latents(model, labels, LATENT_SHAPE, device=cpu, steer=weightless, **kwargs), plain
    )
    moded = ModeGuidance(targets, weight=0.1, stop_step=2)
    guided = sample_latents(model, labels, LATENT_SHAPE, device=cpu, steer=moded, **kwargs)
    assert not torch.equal(guided, plain)


def test_confidence_keeps_each_class_most_confident_candidates() -> None:
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    probabilities = torch.tensor(
        [[0.2, 0.8], [0.9, 0.1], [0.6, 0.4], [0.5, 0.5], [0.1, 0.9], [0.3, 0.7]]
    )
    assert select_confident(probabilities, labels, 2).tolist() == [1, 2, 4, 5]


def test_selection_plugins_pick_in_the_judges_features_or_by_its_confidence() -> None:
    # Class 0's candidates lie at 0, 1, 2 and 10 on a line; class 1's at 100, 101.
    features = torch.tensor([[0.0], [1.0], [2.0], [10.0], [100.0], [101.0]])
    labels = torch.tensor([0, 0, 0, 0, 1, 1])
    probabilities = torch.tensor([[0.9, 0.1]] * 3 + [[0.2, 0.8]] + [[0.4, 0.6], [0.3, 0.7]])
    pool = Pool(labels, lambda: features, lambda: probabilities, labels, lambda: features, 0)
    # k-center starts at the item nearest the class mean (3.25: the one at 2), then the farthest.
    assert SELECTIONS["kcenter"](pool, 2).tolist() == [2, 3, 4, 5]
    # Herding's first pick is the item nearest the class mean (3.25: the one at 2; class 1's
    # 100.5 is as near 100 as 101, and the earlier wins).
    assert SELECTIONS["herding"](pool, 1).tolist() == [2, 4]
    assert SELECTIONS["confidence"](pool, 1).tolist() == [0, 5]


def _unused() -> torch.Tensor:
    raise AssertionError("this rule must not ask for it")


def test_real_herding_matches_the_training_splits_class_mean_not_the_pools() -> None:
    # Candidates as above; the real images of class 0 lie at 0.4 and 1.4 (mean 0.9), class
    # 1's at 101 and 103 (mean 102).
    candidate_features = torch.tensor([[0.0], [1.0], [2.0], [10.0], [100.0], [101.0]])
    real_features = torch.tensor([[0.4], [1.4], [101.0], [103.0]])
    labels = torch.tensor([0, 0, 0, 0, 1, 1])
    real_labels = torch.tensor([0, 0, 1, 1])
    pool = Pool(labels, lambda: candidate_features, _unused, real_labels, lambda: real_features, 0)
    # Step 1 takes the candidate nearest 0.9 (the one at 1) and nearest 102 (at 101). Step 2
    # of class 0 wants 2 x 0.9 - 1 = 0.8: the one at 0 (0.8 away) beats the one at 2 (1.2);
    # class 1's only other candidate is the one at 100.
    assert SELECTIONS["real-herding"](pool, 1).tolist() == [1, 5]
    assert SELECTIONS["real-herding"](pool, 2).tolist() == [1, 0, 5, 4]
    # Toward the pool's own mean (3.25) class 0's picks differ: the one at 2, then the one
    # nearest 2 x 3.25 - 2 = 4.5 (the one at 1).
    assert SELECTIONS["herding"](pool, 2).tolist()[:2] == [2, 1]


def test_class_means_averages_each_classs_features() -> None:
    features = torch.tensor([[1.0, 2.0], [3.0, 6.0], [5.0, 0.0]])
    means = class_means(features, torch.tensor([0, 0, 2]), 3)
    assert means[0].tolist() == [2.0, 4.0]
    assert means[2].tolist() == [5.0, 0.0]
    assert torch.isnan(means[1]).all()


def _keys(config: Config) -> dict[str, str]:
    return {stage.name: stage.key for stage in plan(config, "fingerprint")}


def test_a_fine_tune_serves_every_guidance_and_a_pool_every_selection() -> None:
    plain = Config(method="minimax")
    moded = Config.model_validate({"method": "minimax", "sample": {"guidance": {"kind": "mode"}}})
    picked = {
        kind: Config.model_validate({"method": "minimax", "selection": {"kind": kind}})
        for kind in ("herding", "kcenter", "confidence")
    }
    keys = _keys(plain)
    assert _keys(moded)["finetune"] == keys["finetune"]
    assert _keys(moded)["sample"] != keys["sample"]
    pools = {kind: _keys(config) for kind, config in picked.items()}
    assert {k["finetune"] for k in pools.values()} == {keys["finetune"]}
    assert len({k["sample"] for k in pools.values()}) == 1  # one candidate pool
    assert pools["herding"]["sample"] != keys["sample"]  # 4 x IPC candidates, not the set
    assert len({k["select"] for k in pools.values()}) == 3
    assert len({k["evaluate"] for k in pools.values()}) == 3
    # Naming a plug-in "none" is the plain method, keys and all.
    nothing = Config.model_validate(
        {
            "method": "minimax",
            "sample": {"guidance": {"kind": "none"}},
            "selection": {"kind": "none"},
        }
    )
    assert _keys(nothing) == keys and nothing.composition == "minimax"


def test_compositions_are_named_by_their_parts() -> None:
    config = Config.model_validate(
        {
            "method": "dit",
            "sample": {"guidance": {"kind": "mode"}},
            "selection": {"kind": "kcenter"},
        }
    )
    assert config.composition == "dit+mode+kcenter"
    base = Config.model_validate({"method": "base", "sample": {"guidance": {"kind": "mode"}}})
    assert base.composition == "base+mode"
    assert "finetune" not in _keys(base)  # sampled from the pretrained model as it is
    with pytest.raises(ValueError, match="selection picks among generated candidates"):
        Config.model_validate({"method": "herding", "selection": {"kind": "kcenter"}})
    with pytest.raises(ValueError, match="use sample.scheduler: ddpm"):
        Config.model_validate({"sample": {"scheduler": "ddim", "guidance": {"kind": "mode"}}})


def test_a_composition_runs_end_to_end_and_a_second_selection_reuses_the_pool(
    tiny_config: Config, tmp_path: Path
) -> None:
    config = tiny_config.model_copy(deep=True)
    config.method = "dit"
    config.sample.guidance = ModeGuidanceConfig(weight=0.5, stop_step=1)
    config.selection = SelectionConfig(kind="confidence", oversample=2)
    assert run_cli(config, tmp_path) == 0

    stages = {stage.name: stage for stage in plan(config, _fingerprint(config))}
    pool = read_surrogate(stages["sample"].folder / "data")
    assert pool.labels.bincount().tolist() == [4] * 10  # 2 x IPC 2 candidates per class
    kept = read_surrogate(stages["select"].folder / "data")
    assert kept.labels.bincount().tolist() == [2] * 10
    assert kept.manifest["candidates"] == 40
    runs = runs_by_name(config)
    parent = runs["tiny"][0]
    assert parent.info.status == "FINISHED"
    assert parent.data.params["composition"] == "dit+mode+confidence"
    assert parent.data.tags["mdd.composition"] == "dit+mode+confidence"
    assert parent.data.metrics["sample/images"] == 40
    assert parent.data.metrics["sample/images_per_s"] > 0

    other = config.model_copy(deep=True)
    other.selection = SelectionConfig(kind="kcenter", oversample=2)
    (tmp_path / "second").mkdir()
    assert run_cli(other, tmp_path / "second") == 0
    latest = runs_by_name(other)
    for name in ("finetune", "sample"):
        assert latest[name][0].data.tags["mdd.cached"] == "True", name
    assert latest["select"][0].data.tags["mdd.cached"] == "False"
    assert latest["tiny"][0].data.params["composition"] == "dit+mode+kcenter"


def test_base_with_mode_guidance_samples_the_pretrained_model_without_a_fine_tune(
    tiny_config: Config, tmp_path: Path
) -> None:
    config = tiny_config.model_copy(deep=True)
    config.method = "base"
    config.tracking.experiment = "tiny-base"  # the session's store holds others' fine-tunes
    config.sample.guidance = ModeGuidanceConfig(weight=0.5, stop_step=1)
    assert run_cli(config, tmp_path) == 0
    runs = runs_by_name(config)
    assert "finetune" not in runs
    assert runs["tiny"][0].data.params["composition"] == "base+mode"
    stages = {stage.name: stage for stage in plan(config, _fingerprint(config))}
    guided = read_surrogate(stages["sample"].folder / "data")
    config.sample.guidance = None
    (tmp_path / "plain").mkdir()
    assert run_cli(config, tmp_path / "plain") == 0
    stages = {stage.name: stage for stage in plan(config, _fingerprint(config))}
    plain = read_surrogate(stages["sample"].folder / "data")
    # Positive control: the guidance reached the images (same seeds, same model).
    assert (guided.images.float() - plain.images.float()).abs().mean() > 1.0


@pytest.mark.parametrize(
    "name",
    ["minimax", "base+mode", "dit+kcenter", "minimax+mode+confidence", "dit+prototypes+mode"],
)
def test_a_composition_name_gives_back_the_config_of_that_name(name: str) -> None:
    overrides = composition_overrides(name)
    assert build_config(apply_overrides({}, overrides)).composition == name


@pytest.mark.parametrize(
    "name", ["herding+mode", "dit+kcenter+mode", "dit+mode+mode", "dit+x", "dit+mode+prototypes"]
)
def test_a_composition_out_of_order_or_unknown_is_refused_with_the_grammar(name: str) -> None:
    with pytest.raises(ConfigError, match=r"METHOD\[\+prototypes\]\[\+GUIDANCE\]\[\+SELECTION\]"):
        composition_overrides(name)
