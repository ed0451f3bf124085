"""Sampling: respacing against improved-DDPM, guidance, seeding and batch-size invariance."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DiTTransformer2DModel

from mdd.diffusion.sampling import (
    classifier_free_guidance,
    item_generator,
    make_labels,
    make_scheduler,
    sample_latents,
)
from mdd.errors import ConfigError

CPU = torch.device("cpu")
NUM_CLASSES = 5
LATENT_SHAPE = (4, 4, 4)


def _tiny_dit(out_channels: int) -> DiTTransformer2DModel:
    torch.manual_seed(0)
    model = DiTTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=4,
        out_channels=out_channels,
        num_layers=1,
        sample_size=4,
        patch_size=2,
        num_embeds_ada_norm=NUM_CLASSES,
    )
    # adaLN-zero and the output projection start at zero; perturb everything so that the
    # output depends on the input, the timestep and the label.
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            # Label tables at nn.Embedding's own scale, so that the label visibly steers eps.
            std = 1.0 if "class_embedder" in name else 0.02
            torch.nn.init.normal_(parameter, std=std)
    # Eval mode: in train mode diffusers' DiT drops labels at random in every block.
    return model.eval()


@pytest.fixture(scope="module")
def learned_dit() -> DiTTransformer2DModel:
    return _tiny_dit(out_channels=8)


@pytest.fixture(scope="module")
def fixed_dit() -> DiTTransformer2DModel:
    return _tiny_dit(out_channels=4)


def _sample(model: DiTTransformer2DModel, **overrides) -> torch.Tensor:
    arguments = {
        "labels": make_labels(NUM_CLASSES, 2),
        "latent_shape": LATENT_SHAPE,
        "guidance_scale": 3.0,
        "steps": 8,
        "scheduler": "ddpm",
        "seed": 0,
        "batch_size": 4,
        "device": CPU,
    } | overrides
    return sample_latents(model, **arguments)


def _assert_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    # The random tiny DiT predicts eps near 0, so latents grow to a few hundred: compare relatively.
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


# --- improved-DDPM reference (float64), written from improved-diffusion's respace.py and
# gaussian_diffusion.py, independent of diffusers.


def _improved_ddpm_tables(kept: list[int]) -> dict[str, np.ndarray]:
    abar_full = np.cumprod(1.0 - np.linspace(1e-4, 0.02, 1000, dtype=np.float64))
    # SpacedDiffusion: each kept step gets the beta of the jump from the previous kept step.
    betas = 1.0 - abar_full[kept] / np.append(1.0, abar_full[kept][:-1])
    abar = np.cumprod(1.0 - betas)
    abar_prev = np.append(1.0, abar[:-1])
    posterior_variance = betas * (1.0 - abar_prev) / (1.0 - abar)
    return {
        "betas": betas,
        "abar": abar,
        "abar_prev": abar_prev,
        "log_variance_clipped": np.log(np.append(posterior_variance[1], posterior_variance[1:])),
        "mean_coef_x0": betas * np.sqrt(abar_prev) / (1.0 - abar),
        "mean_coef_xt": (1.0 - abar_prev) * np.sqrt(1.0 - betas) / (1.0 - abar),
    }


def _space_timesteps(steps: int) -> list[int]:
    stride = (1000 - 1) / (steps - 1)
    position, kept = 0.0, []
    for _ in range(steps):
        kept.append(round(position))
        position += stride
    return kept


@pytest.mark.parametrize("learned_variance", [True, False])
def test_ddpm_step_matches_improved_ddpm_respacing(learned_variance: bool) -> None:
    steps = 50
    kept = _space_timesteps(steps)
    table = _improved_ddpm_tables(kept)
    scheduler = make_scheduler("ddpm", steps, learned_variance=learned_variance)
    assert scheduler.timesteps.tolist() == kept[::-1]

    torch.manual_seed(1)
    for index in reversed(range(steps)):
        x = torch.randn(2, 4, 3, 3)
        eps = torch.randn(2, 4, 3, 3)
        variance_values = torch.rand(2, 4, 3, 3) * 2 - 1
        output = torch.cat([eps, variance_values], 1) if learned_variance else eps
        generator = torch.Generator().manual_seed(index)
        got = scheduler.step(output, kept[index], x, generator=generator).prev_sample

        noise = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(index)).double()
        x64, eps64, v64 = x.double(), eps.double(), variance_values.double()
        x0 = (x64 - np.sqrt(1 - table["abar"][index]) * eps64) / np.sqrt(table["abar"][index])
        mean = table["mean_coef_x0"][index] * x0 + table["mean_coef_xt"][index] * x64
        min_log = table["log_variance_clipped"][index]
        if learned_variance:
            fraction = (v64 + 1) / 2
            log_variance = fraction * np.log(table["betas"][index]) + (1 - fraction) * min_log
        else:
            log_variance = torch.full_like(x64, min_log)
        expected = mean + (index > 0) * torch.exp(0.5 * log_variance) * noise
        torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-4)


def test_ddim_step_matches_improved_ddpm_ddim_respacing() -> None:
    steps = 10
    kept = list(range(0, 1000, 1000 // steps))  # improved-DDPM's "ddim10"
    table = _improved_ddpm_tables(kept)
    scheduler = make_scheduler("ddim", steps, learned_variance=True)
    assert scheduler.timesteps.tolist() == kept[::-1]

    torch.manual_seed(2)
    for index in reversed(range(steps)):
        x, eps = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
        got = scheduler.step(eps, kept[index], x).prev_sample
        x0 = (x.double() - np.sqrt(1 - table["abar"][index]) * eps.double()) / np.sqrt(
            table["abar"][index]
        )
        abar_prev = table["abar_prev"][index]
        expected = np.sqrt(abar_prev) * x0 + np.sqrt(1 - abar_prev) * eps.double()
        torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-4)


def test_same_seed_gives_same_latents_and_another_seed_differs(learned_dit) -> None:
    first = _sample(learned_dit, seed=7)
    again = _sample(learned_dit, seed=7)
    other = _sample(learned_dit, seed=8)
    assert torch.equal(first, again)
    assert (first - other).abs().mean() > 1.0


@pytest.mark.parametrize(
    ("scheduler", "learned_variance"), [("ddpm", True), ("ddpm", False), ("ddim", True)]
)
def test_latents_do_not_depend_on_batch_size(
    learned_dit, fixed_dit, scheduler: str, learned_variance: bool
) -> None:
    model = learned_dit if learned_variance else fixed_dit
    one_by_one = _sample(model, scheduler=scheduler, batch_size=1)
    for batch_size in (3, 8):  # 3 leaves a ragged last batch of 1 out of 10
        _assert_close(_sample(model, scheduler=scheduler, batch_size=batch_size), one_by_one)


def _reference_sample(
    model: DiTTransformer2DModel, labels: torch.Tensor, guidance_scale: float, kind: str
) -> torch.Tensor:
    """One item at a time, conditional and unconditional passes run separately."""
    results = []
    with torch.no_grad():
        for index, label in enumerate(labels.tolist()):
            scheduler = make_scheduler(kind, 8, learned_variance=True)
            generator = item_generator(0, index)
            x = torch.randn(1, *LATENT_SHAPE, generator=generator)
            for t in scheduler.timesteps.tolist():
                timestep = torch.tensor([t])
                cond = model(x, timestep=timestep, class_labels=torch.tensor([label])).sample
                eps = cond[:, :4]
                if guidance_scale != 1.0:
                    null = torch.tensor([NUM_CLASSES])
                    uncond = model(x, timestep=timestep, class_labels=null).sample
                    eps = uncond[:, :4] + guidance_scale * (eps - uncond[:, :4])
                output = torch.cat([eps, cond[:, 4:]], 1) if kind == "ddpm" else eps
                x = scheduler.step(output, t, x, generator=generator).prev_sample
            results.append(x)
    return torch.cat(results)


@pytest.mark.parametrize("scheduler", ["ddpm", "ddim"])
@pytest.mark.parametrize("guidance_scale", [1.0, 3.0])
def test_batched_sampling_matches_one_item_reference(
    learned_dit, scheduler: str, guidance_scale: float
) -> None:
    labels = torch.tensor([4, 0, 2])
    got = _sample(learned_dit, labels=labels, scheduler=scheduler, guidance_scale=guidance_scale)
    _assert_close(got, _reference_sample(learned_dit, labels, guidance_scale, scheduler))


def test_guidance_above_one_and_labels_change_the_sample(learned_dit) -> None:
    conditional = _sample(learned_dit, guidance_scale=1.0)
    guided = _sample(learned_dit, guidance_scale=3.0)
    relabelled = _sample(
        learned_dit, guidance_scale=1.0, labels=(make_labels(NUM_CLASSES, 2) + 1) % NUM_CLASSES
    )
    assert (guided - conditional).abs().mean() > 1.0
    assert (relabelled - conditional).abs().mean(dim=(1, 2, 3)).min() > 0.5


def test_make_labels_gives_ipc_per_class_in_class_major_order(learned_dit) -> None:
    labels = make_labels(3, 2)
    assert labels.dtype == torch.int64
    assert labels.tolist() == [0, 0, 1, 1, 2, 2]
    latents = _sample(learned_dit, labels=labels)
    assert latents.shape == (6, *LATENT_SHAPE)
    assert latents.dtype == torch.float32 and latents.device == CPU


def test_learned_variance_ddpm_is_finite_and_uses_the_variance_channels() -> None:
    model = _tiny_dit(out_channels=8)
    ddpm, ddim = _sample(model), _sample(model, scheduler="ddim")
    assert torch.isfinite(ddpm).all()
    # proj_out_2 emits (patch_row, patch_col, channel) per token, channel fastest: raise only
    # the variance channels (4..7) to the top of the learned range.
    variance_rows = torch.arange(model.proj_out_2.out_features) % 8 >= 4
    with torch.no_grad():
        model.proj_out_2.bias[variance_rows] += 1.0
    assert (_sample(model) - ddpm).abs().mean() > 0.1
    assert torch.equal(_sample(model, scheduler="ddim"), ddim)


def test_sampling_restores_the_training_flag(learned_dit) -> None:
    learned_dit.train()
    _sample(learned_dit, labels=make_labels(1, 1))
    assert learned_dit.training
    learned_dit.eval()


def test_bf16_autocast_gives_float32_latents_near_float32_sampling(learned_dit) -> None:
    reference = _sample(learned_dit, scheduler="ddim")
    autocast = _sample(learned_dit, scheduler="ddim", autocast_dtype=torch.bfloat16)
    assert autocast.dtype == torch.float32
    assert torch.isfinite(autocast).all()
    assert ((autocast - reference).abs() / reference.abs().clamp(min=1)).max() < 0.1


def test_mismatched_latent_channels_or_labels_raise_config_error(learned_dit) -> None:
    with pytest.raises(ConfigError, match="latent_channels"):
        _sample(learned_dit, latent_shape=(3, 4, 4))
    with pytest.raises(ConfigError, match="num_embeds_ada_norm"):
        _sample(learned_dit, labels=torch.tensor([0, NUM_CLASSES]))


def test_guidance_of_all_or_the_first_channels_matches_hand_computed_values() -> None:
    # Batch [cond; uncond] of one item, 2 eps channels + 2 variance channels, 1x1 latents.
    cond = torch.tensor([1.0, 2.0, 10.0, 20.0]).view(1, 4, 1, 1)
    uncond = torch.tensor([0.5, 1.0, -10.0, -20.0]).view(1, 4, 1, 1)
    output = torch.cat([cond, uncond])
    every = classifier_free_guidance(output, channels=2, scale=3.0)
    # eps_u + 3 (eps_c - eps_u): 0.5 + 3 * 0.5 = 2.0 and 1 + 3 * 1 = 4.0; variance from cond.
    assert every.flatten().tolist() == [2.0, 4.0, 10.0, 20.0]
    first = classifier_free_guidance(output, channels=2, scale=3.0, guided_channels=1)
    assert first.flatten().tolist() == [2.0, 2.0, 10.0, 20.0]  # channel 2 stays conditional


def test_guided_channels_reach_the_sampler(learned_dit) -> None:
    every = _sample(learned_dit, guidance_scale=3.0)
    first = _sample(learned_dit, guidance_scale=3.0, guided_channels=1)
    assert not torch.allclose(every, first)


def _reference_from_start(
    model: DiTTransformer2DModel, labels: torch.Tensor, start: torch.Tensor, kept: int
) -> torch.Tensor:
    """One item at a time: noise ``start`` to the first of the last ``kept`` respaced
    timesteps with the item's first draw, then run those steps (guidance scale 1, DDPM)."""
    results = []
    with torch.no_grad():
        for index, label in enumerate(labels.tolist()):
            scheduler = make_scheduler("ddpm", 8, learned_variance=True)
            generator = item_generator(0, index)
            noise = torch.randn(1, *LATENT_SHAPE, generator=generator)
            timesteps = scheduler.timesteps.tolist()[-kept:]
            abar = float(scheduler.alphas_cumprod[timesteps[0]])
            x = abar**0.5 * start[index : index + 1] + (1 - abar) ** 0.5 * noise
            for t in timesteps:
                output = model(x, timestep=torch.tensor([t]), class_labels=torch.tensor([label]))
                x = scheduler.step(output.sample, t, x, generator=generator).prev_sample
            results.append(x)
    return torch.cat(results)


def test_a_start_runs_the_last_steps_from_the_start_noised_as_a_one_item_reference(
    learned_dit,
) -> None:
    labels = torch.tensor([4, 0, 2])
    start = torch.randn(3, *LATENT_SHAPE, generator=torch.Generator().manual_seed(5))
    # strength 0.5 of 8 steps: the last 4 run.
    got = _sample(learned_dit, labels=labels, guidance_scale=1.0, start=start, strength=0.5)
    _assert_close(got, _reference_from_start(learned_dit, labels, start, kept=4))
    plain = _sample(learned_dit, labels=labels, guidance_scale=1.0)
    assert not torch.allclose(got, plain)


def test_the_smallest_strength_returns_about_the_start_and_a_bad_one_is_refused(
    learned_dit,
) -> None:
    labels = torch.tensor([1, 3])
    start = torch.randn(2, *LATENT_SHAPE, generator=torch.Generator().manual_seed(6))
    # One step from t = 0, where abar is 1 - 1e-4: the start comes back nearly as it was.
    got = _sample(learned_dit, labels=labels, start=start, strength=1e-3)
    assert (got - start).abs().max() < 0.1
    with pytest.raises(ConfigError, match="strength"):
        _sample(learned_dit, labels=labels, start=start, strength=0.0)
    with pytest.raises(ConfigError, match="start latents"):
        _sample(learned_dit, labels=labels, start=start[:1])
