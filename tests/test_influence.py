"""IGD's influence guidance, pinned on tiny tensors: the influence loss and its sign, the
deviation term, the step size, the window, the memory, and the rounds it samples in."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mdd.config import Config, InfluenceGuidanceConfig
from mdd.data.surrogate import read_surrogate
from mdd.methods.influence import (
    InfluenceGuidance,
    Trajectory,
    class_gradients,
    deviation_gradient,
    influence_loss,
    rho,
    trajectory_path,
)
from mdd.pipeline.plan import plan
from mdd.stages.sample import round_major
from tests.test_methods import _state
from tests.test_pipeline import _fingerprint, run_cli, runs_by_name

PROTOCOL = dataclasses.make_dataclass("P", ["mean", "std", "image_size"])((0.5,), (0.5,), None)


def _network() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1), nn.GroupNorm(3, 3), nn.ReLU(), nn.Flatten(),
        nn.Linear(3 * 4 * 4, 2),
    ).eval()  # fmt: skip


def _trajectory(real: torch.Tensor | None = None) -> Trajectory:
    network = _network()
    params = {k: v.detach().clone() for k, v in network.named_parameters()}
    size = sum(v.numel() for v in params.values())
    real = (
        torch.randn(1, 2, size, generator=torch.Generator().manual_seed(1))
        if real is None
        else real
    )
    return Trajectory(network, [params], real, PROTOCOL)


def test_influence_loss_is_one_minus_the_cosine_of_per_sample_and_real_gradients() -> None:
    trajectory = _trajectory()
    images = torch.rand(3, 1, 4, 4) * 2 - 1
    labels = torch.tensor([0, 1, 1])
    expected = []
    for image, label in zip(images, labels, strict=True):
        x = (image.unsqueeze(0) + 1) / 2  # [-1, 1] -> [0, 1], then (x - 0.5) / 0.5
        out = trajectory.network((x - 0.5) / 0.5)
        loss = F.cross_entropy(out, label.view(1))
        grads = torch.autograd.grad(loss, list(trajectory.network.parameters()))
        flat = torch.cat([g.flatten() for g in grads])
        expected.append(1 - F.cosine_similarity(flat, trajectory.real[0, label], dim=0))
    torch.testing.assert_close(influence_loss(trajectory, images, labels), torch.stack(expected))


def test_a_step_against_the_influence_gradient_raises_the_gradient_agreement() -> None:
    trajectory = _trajectory()
    images = (torch.rand(4, 1, 4, 4) * 2 - 1).requires_grad_()
    labels = torch.tensor([0, 1, 0, 1])
    loss = influence_loss(trajectory, images, labels)
    (gradient,) = torch.autograd.grad(loss.sum(), images)
    stepped = influence_loss(trajectory, images.detach() - 1e-2 * gradient, labels)
    assert bool((stepped < loss.detach()).all())  # x - k rho G lowers L: cosines rise


def test_class_gradients_are_the_mean_of_batch_mean_gradients() -> None:
    network = _network()
    params = {k: v.detach() for k, v in network.named_parameters()}
    inputs, labels = torch.randn(8, 1, 4, 4), torch.tensor([0, 1] * 4)
    rows = class_gradients(network, params, inputs, labels, 2, batch_size=2)
    for c in (0, 1):
        loss = F.cross_entropy(network(inputs[labels == c]), labels[labels == c])
        grads = torch.autograd.grad(loss, list(network.parameters()))
        torch.testing.assert_close(rows[c], torch.cat([g.flatten() for g in grads]))


def test_deviation_gradient_is_that_of_the_cosine_to_the_most_similar_memory_item() -> None:
    x = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 1.0]])
    nan = float("nan")
    memory = torch.tensor(
        [
            [[0.9, 0.1, 0.0], [0.0, 1.0, 0.0], [nan, nan, nan]],  # row 0: the first is closer
            [[nan, nan, nan], [nan, nan, nan], [nan, nan, nan]],  # row 1: an empty memory
        ]
    )
    gradient = deviation_gradient(x, memory)
    leaf = x[0].clone().requires_grad_()
    (expected,) = torch.autograd.grad(F.cosine_similarity(leaf, memory[0, 0], dim=0), leaf)
    torch.testing.assert_close(gradient[0], expected)
    assert torch.equal(gradient[1], torch.zeros(3))


def test_rho_scales_by_the_eps_and_noise_levels_over_the_gradients_size() -> None:
    eps, gradient = torch.full((1, 2, 2), 2.0), torch.full((1, 2, 2), 4.0)
    # 0.0015 * rms(eps) * sqrt(1 - abar) / rms(G) = 0.0015 * 2 * 0.5 / 4
    torch.testing.assert_close(rho(eps, 0.75, gradient), torch.full((1, 1, 1), 0.000375))


def _guidance(weight: float, deviation: float, memory_size: int = 2) -> InfluenceGuidance:
    def decode(latents: torch.Tensor) -> torch.Tensor:
        return latents.tanh()

    labels = torch.tensor([0, 1, 0, 1, 0, 1])
    return InfluenceGuidance(
        _trajectory(), decode, labels, weight, deviation, (30, 45), memory_size
    )


def test_the_window_guides_respaced_steps_30_to_45_and_memory_keeps_the_last_finals() -> None:
    guide = _guidance(weight=0.0, deviation=0.0)
    assert [i for i in range(50) if guide.active(i, 50)] == list(range(4, 20))
    x = torch.randn(2, 1, 4, 4)
    for round_start in (0, 2, 4):  # three rounds of one image per class
        items = slice(round_start, round_start + 2)
        final = _state(x_prev=x + round_start, index=49, items=items)
        assert torch.equal(guide(final), final.x_prev)  # no weight: the step as it was
    assert torch.equal(guide.memory[0], torch.stack([x[0] + 2, x[0] + 4]))  # FIFO of 2
    assert torch.equal(guide.memory[1], torch.stack([x[1] + 2, x[1] + 4]))


def test_guided_steps_move_against_influence_and_away_from_memory() -> None:
    x_t = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(3))
    step = _state(
        x_t=x_t, x_prev=x_t.clone(), eps=torch.ones_like(x_t), alpha_bar=0.5, index=10,
        items=slice(0, 2), predict_x0=lambda x: 0.9 * x,
    )  # fmt: skip
    only_influence = _guidance(weight=5.0, deviation=0.0)(step)
    expected = _guidance(weight=5.0, deviation=0.0).influence_step(step, torch.tensor([0, 1]))
    torch.testing.assert_close(only_influence, step.x_prev - 5.0 * expected)
    assert not torch.equal(only_influence, step.x_prev)
    away = _guidance(weight=0.0, deviation=1.0)
    near = x_t + 0.5 * torch.randn(x_t.shape, generator=torch.Generator().manual_seed(4))
    away.memory = torch.full((2, 2, *x_t.shape[1:]), float("nan"))
    away.memory[:, -1] = near  # one earlier sample per class
    moved = away(step)
    for row in (0, 1):
        before = F.cosine_similarity(step.x_t[row].flatten(), near[row].flatten(), dim=0)
        after = F.cosine_similarity(moved[row].flatten(), near[row].flatten(), dim=0)
        assert after < before


def test_rounds_put_one_item_of_every_class_in_each_batch() -> None:
    assert round_major(torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2])).tolist() == [0, 1, 2] * 3


def test_influence_guidance_runs_end_to_end_caches_its_surrogate_and_reaches_the_images(
    tiny_config: Config, tmp_path: Path
) -> None:
    config = tiny_config.model_copy(deep=True)
    config.tracking.experiment = "tiny-influence"
    config.sample.guidance = InfluenceGuidanceConfig(
        weight=50.0, deviation=50.0, window=(0, 3), checkpoints=(0, 1), real_per_class=5
    )
    assert run_cli(config, tmp_path) == 0
    fingerprint = _fingerprint(config)
    stages = {stage.name: stage for stage in plan(config, fingerprint)}
    guided = read_surrogate(stages["sample"].folder / "data")
    assert guided.labels.tolist() == sorted(guided.labels.tolist())  # written class-major
    assert trajectory_path(config.judge_spec, config.sample.guidance, fingerprint).is_file()
    runs = runs_by_name(config)
    assert runs["tiny"][0].data.params["composition"] == "minimax+influence"
    assert runs["sample"][0].data.metrics["sample/guidance_setup_s"] > 0

    config.sample.guidance = None
    (tmp_path / "plain").mkdir()
    assert run_cli(config, tmp_path / "plain") == 0
    stages = {stage.name: stage for stage in plan(config, fingerprint)}
    plain = read_surrogate(stages["sample"].folder / "data")
    # Positive control: the guidance reached the images (same seeds, same model).
    assert (guided.images.float() - plain.images.float()).abs().mean() > 1.0


def test_influence_settings_are_checked_by_kind() -> None:
    def sample(guidance: dict) -> Config:
        return Config.model_validate({"sample": {"guidance": guidance}})

    assert sample({"kind": "influence"}).sample.guidance.window == (30, 45)
    with pytest.raises(ValueError, match="stop_step"):  # mode's key, not influence's
        sample({"kind": "influence", "stop_step": 3})
    with pytest.raises(ValueError, match="expected 0 <= low <= high"):
        sample({"kind": "influence", "window": [40, 30]})
    with pytest.raises(ValueError, match="distinct, in order"):
        sample({"kind": "influence", "checkpoints": [2, 1]})
    # Kind none ignores another kind's settings, so a sweep may search both side by side.
    assert sample({"kind": "none", "weight": 0.3}).sample.guidance is None
