"""Batched classifier-free-guided sampling of latents from a diffusers DiT (METHOD.md section 3).

The loop is our own rather than ``diffusers.DiTPipeline`` because the pipeline drops the
learned-variance channels before the scheduler step, so the paper's sampler (respaced DDPM with
``variance_type="learned_range"``) fails there. Here the scheduler gets the full ``2C``-channel
output: the guided eps followed by the conditional half's variance values, as in the DiT code.

Results do not depend on the batch size: item ``i`` of a call draws its initial noise and every
DDPM step's noise from its own CPU generator seeded by ``(seed, i)`` (see ``item_generator``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal, NamedTuple

import numpy as np
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DiTTransformer2DModel
from diffusers.utils.torch_utils import randn_tensor

from mdd.diffusion.backbone import predict
from mdd.errors import ConfigError
from mdd.progress import progress_bar

SchedulerKind = Literal["ddpm", "ddim"]

# The DiT / improved-DDPM training schedule (METHOD.md section 3).
_BETAS = {
    "num_train_timesteps": 1000,
    "beta_schedule": "linear",
    "beta_start": 1e-4,
    "beta_end": 0.02,
    "clip_sample": False,
}


def make_scheduler(
    kind: SchedulerKind, steps: int, learned_variance: bool
) -> DDPMScheduler | DDIMScheduler:
    """A diffusers scheduler respaced to ``steps`` sampling steps, as the DiT code samples.

    DDPM: improved-DDPM respacing (``space_timesteps(1000, str(steps))``, DiT's ``sample.py``)
    keeps the timesteps ``round(linspace(0, 999, steps))`` and gives each kept step the beta
    ``1 - abar_t / abar_prev`` of the jump to the previous kept step; with learned variance the
    log-variance interpolates between the log posterior variance and the log of that beta.
    diffusers' DDPMScheduler does exactly this once its timesteps are set: ``previous_timestep``
    looks up the next entry of ``timesteps`` and ``step`` / ``_get_variance`` compute beta,
    posterior variance and the ``learned_range`` interpolation from ``abar_t`` and ``abar_prev``
    (checked against an independent float64 improved-DDPM implementation in
    tests/test_sampling.py). Only its default ``timestep_spacing="leading"`` differs (it keeps
    0, 20, ..., 980 for 50 steps), so ``"linspace"`` is set here to keep DiT's timesteps.

    DDIM: diffusers' DDIMScheduler always steps back by ``1000 // steps``, so it needs its
    default ``"leading"`` spacing, which is also improved-DDPM's ``"ddimN"`` respacing when
    ``steps`` divides 1000. eta is 0 (deterministic); DDIM has no use for a learned variance.
    """
    if kind == "ddpm":
        scheduler: DDPMScheduler | DDIMScheduler = DDPMScheduler(
            **_BETAS,
            variance_type="learned_range" if learned_variance else "fixed_small",
            timestep_spacing="linspace",
        )
    elif kind == "ddim":
        scheduler = DDIMScheduler(**_BETAS, set_alpha_to_one=True, timestep_spacing="leading")
    else:
        raise ConfigError(f"sample.scheduler: unknown sampler {kind!r}. Hint: use ddpm or ddim.")
    # Timesteps stay on the CPU: the loop passes them to step() as Python ints.
    scheduler.set_timesteps(steps)
    return scheduler


def item_generator(seed: int, index: int) -> torch.Generator:
    """The CPU generator of item ``index`` of a sampling call: one stream per (seed, item)."""
    # SeedSequence mixes (seed, index) so that no two pairs share a stream; it needs non-negative
    # entropy, hence the modulo for negative seeds.
    state = np.random.SeedSequence([seed % 2**64, index]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator(device="cpu").manual_seed(int(state))


def make_labels(num_classes: int, ipc: int) -> torch.Tensor:
    """Class-major labels for ``ipc`` images per class: 0, ..., 0, 1, ..., 1, ... (int64)."""
    return torch.arange(num_classes, dtype=torch.int64).repeat_interleave(ipc)


def sample_latents(
    model: DiTTransformer2DModel,
    labels: torch.Tensor,
    latent_shape: tuple[int, int, int],
    *,
    guidance_scale: float,
    steps: int,
    scheduler: SchedulerKind,
    seed: int,
    batch_size: int,
    device: torch.device,
    autocast_dtype: torch.dtype | None = None,
    progress: bool = False,
    guided_channels: int | None = None,
    weights: Mapping[str, torch.Tensor] | None = None,
    steer: Steer | None = None,
    first_index: int = 0,
    start: torch.Tensor | None = None,
    strength: float = 1.0,
) -> torch.Tensor:
    """Sample one latent per label; returns float32 ``[N, C, H, W]`` on the CPU.

    Item ``i`` draws its noise from ``item_generator(seed, first_index + i)``: a rank that
    samples a shard of a larger call's labels (``mdd.distributed``) gives its shard's first
    index there and gets that call's images of its items.

    ``guidance_scale`` 1 runs the conditional model only; above 1 each batch is doubled with
    the null class (``model.config.num_embeds_ada_norm``) and the eps channels are guided as
    ``eps_u + s * (eps_c - eps_u)`` (METHOD.md section 3): all of them, or the first
    ``guided_channels`` as the original DiT code does (see ``classifier_free_guidance``). The
    model is run in eval mode under
    ``torch.inference_mode``, with autocast to ``autocast_dtype`` when one is given; its
    training flag is restored afterwards. ``weights`` (fine-tuned EMA tensors, named like the
    model's parameters) stand in for those parameters; the model itself is not changed.
    ``steer`` (a guidance plug-in, ``mdd.methods``) adjusts every DDPM step's result.

    ``start`` (``[N, C, H, W]`` clean latents, one per label) begins each item from its
    latent noised instead of from pure noise, as image-to-image diffusion does (SDEdit; D4M
    starts from class prototypes): only the last ``round(strength * steps)`` steps of the
    respaced schedule run (at least one), and item ``i`` starts at the first of them, ``t0``,
    from ``sqrt(abar_t0) * start_i + sqrt(1 - abar_t0) * z_i`` with ``z_i`` the first draw of
    its generator (the noise it would start from without ``start``).
    """
    if not 0 < strength <= 1:
        raise ConfigError(f"sample.start.strength must lie in (0, 1], got {strength}")
    if start is not None and tuple(start.shape) != (len(labels), *latent_shape):
        raise ConfigError(
            f"start latents of shape {tuple(start.shape)} do not match {len(labels)} items of "
            f"latent shape {tuple(latent_shape)}"
        )
    channels = latent_shape[0]
    config = model.config
    if config.in_channels != channels:
        raise ConfigError(
            f"the latents have {channels} channels but the DiT takes {config.in_channels}. "
            "Hint: autoencoder.latent_channels must match the model's in_channels."
        )
    out_channels = config.out_channels or config.in_channels
    if out_channels not in (channels, 2 * channels):
        raise ConfigError(
            f"the DiT outputs {out_channels} channels; sampling needs {channels} (eps) or "
            f"{2 * channels} (eps and learned variance). Hint: check model.preset."
        )
    num_classes = config.num_embeds_ada_norm
    labels = labels.to(dtype=torch.int64, device="cpu")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ConfigError(
            f"sampling labels must lie in [0, {num_classes}) for this DiT, got "
            f"{int(labels.min())}..{int(labels.max())}. Hint: the dataset's class count must "
            "match the model's num_embeds_ada_norm."
        )
    noise_scheduler = make_scheduler(scheduler, steps, learned_variance=out_channels > channels)

    guide = Guidance(guidance_scale, guided_channels, num_classes)

    def denoise(x: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            output = predict(model, x, t, class_labels, weights)
        # The scheduler's arithmetic (1 / sqrt(abar_t) near t = 999) stays in float32.
        return output.float()

    latents = torch.empty((len(labels), *latent_shape), dtype=torch.float32)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            starts = range(0, len(labels), batch_size)
            for first in progress_bar(starts, desc="sampling", unit="batch", disable=not progress):
                stop = min(first + batch_size, len(labels))
                items = range(first_index + first, first_index + stop)
                generators = [item_generator(seed, index) for index in items]
                batch = labels[first:stop].to(device)
                begin = None if start is None else start[first:stop].to(device, torch.float32)
                x = _sample_batch(
                    denoise, noise_scheduler, batch, generators, latent_shape, guide,
                    steer, slice(first, stop), begin, strength,
                )  # fmt: skip
                latents[first:stop] = x.cpu()
    finally:
        model.train(was_training)
    return latents


def classifier_free_guidance(
    output: torch.Tensor, channels: int, scale: float, guided_channels: int | None = None
) -> torch.Tensor:
    """Guided model output from a batch stacked as [conditional; unconditional].

    ``output`` holds ``channels`` eps channels, then the learned variance if any. The first
    ``guided_channels`` eps channels (all when None) become ``eps_u + scale * (eps_c - eps_u)``;
    the other eps channels and the variance are the conditional half's. DiT's
    ``forward_with_cfg`` (which the paper's code samples with) guides the first 3 of the 4
    latent channels "for exact reproducibility"; ``guided_channels: 3`` reproduces it.
    """
    cond, uncond = output.chunk(2)
    guided = channels if guided_channels is None else min(guided_channels, channels)
    eps_cond, eps_uncond = cond[:, :guided], uncond[:, :guided]
    eps = eps_uncond + scale * (eps_cond - eps_uncond)
    return torch.cat([eps, cond[:, guided:]], dim=1)


@dataclass(frozen=True)
class StepState:
    """What a guidance plug-in (``mdd.methods``) sees of one DDPM step of a batch."""

    x_t: torch.Tensor  # the step's input
    x_prev: torch.Tensor  # the scheduler's result x_{t-1}, its noise added
    x0_hat: torch.Tensor  # the clean latent the guided model output predicts
    eps: torch.Tensor  # the guided eps (latent channels only)
    sigma: torch.Tensor  # the standard deviation of the step's noise (0 at the last step)
    alpha_bar: float  # abar_t of the step's timestep
    index: int  # the step's place in the loop, 0 first
    steps: int
    items: slice  # which items of the sampling call the batch holds
    # x_t -> x0_hat through the guided model, differentiable: for guidance by gradients
    # with respect to x_t (call it with grad enabled, outside inference mode).
    predict_x0: Callable[[torch.Tensor], torch.Tensor]


# A guidance plug-in's hook: the step's state -> the new x_{t-1}.
Steer = Callable[[StepState], torch.Tensor]


class Guidance(NamedTuple):
    scale: float  # 1: the conditional model alone
    channels: int | None  # eps channels guided (None: all)
    null_class: int


def _sample_batch(
    denoise: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    noise_scheduler: DDPMScheduler | DDIMScheduler,
    labels: torch.Tensor,
    generators: list[torch.Generator],
    latent_shape: tuple[int, int, int],
    guide: Guidance,
    steer: Steer | None,
    items: slice,
    start: torch.Tensor | None = None,
    strength: float = 1.0,
) -> torch.Tensor:
    channels = latent_shape[0]
    guided = guide.scale != 1.0
    device = labels.device
    # A list of CPU generators makes randn_tensor draw item by item on the CPU (then move the
    # noise to the device), so each item's noise is independent of its batch neighbours.
    x = randn_tensor((len(labels), *latent_shape), generator=generators, device=device)
    null = torch.full_like(labels, guide.null_class)
    class_labels = torch.cat([labels, null]) if guided else labels
    timesteps = noise_scheduler.timesteps.tolist()
    skipped = 0
    if start is not None:
        skipped = len(timesteps) - max(1, round(strength * len(timesteps)))
        abar = float(noise_scheduler.alphas_cumprod[timesteps[skipped]])
        x = abar**0.5 * start + (1 - abar) ** 0.5 * x
    # A guidance sees each step's place in the whole schedule, so its step counts keep
    # their meaning when the first steps are skipped.
    for index, timestep in enumerate(timesteps[skipped:], start=skipped):
        t = torch.full((2 * len(x) if guided else len(x),), timestep, device=device)

        def guided_output(
            x_t: torch.Tensor, t: torch.Tensor = t, class_labels: torch.Tensor = class_labels
        ) -> torch.Tensor:
            output = denoise(torch.cat([x_t, x_t]) if guided else x_t, t, class_labels)
            if guided:
                output = classifier_free_guidance(output, channels, guide.scale, guide.channels)
            return output

        output = guided_output(x)
        if isinstance(noise_scheduler, DDIMScheduler):
            output = output[:, :channels]
        stepped = noise_scheduler.step(output, timestep, x, generator=generators)
        if steer is None:
            x = stepped.prev_sample
            continue
        alpha_bar = float(noise_scheduler.alphas_cumprod[timestep])

        def predict_x0(
            x_t: torch.Tensor,
            alpha_bar: float = alpha_bar,
            t: torch.Tensor = t,
            class_labels: torch.Tensor = class_labels,
        ) -> torch.Tensor:
            # Clones: the loop's tensors are inference tensors, which autograd cannot save.
            eps = guided_output(x_t, t.clone(), class_labels.clone())[:, :channels]
            return (x_t - (1 - alpha_bar) ** 0.5 * eps) / alpha_bar**0.5

        state = StepState(
            x_t=x,
            x_prev=stepped.prev_sample,
            x0_hat=stepped.pred_original_sample,
            eps=output[:, :channels],
            sigma=step_std(noise_scheduler, timestep, output, channels),
            alpha_bar=alpha_bar,
            index=index,
            steps=len(timesteps),
            items=items,
            predict_x0=predict_x0,
        )
        x = steer(state)
    return x


def step_std(
    scheduler: DDPMScheduler | DDIMScheduler, timestep: int, output: torch.Tensor, channels: int
) -> torch.Tensor:
    """The standard deviation of the noise ``scheduler.step`` adds at ``timestep``, as the
    scheduler computes it: the learned one for a model with variance channels (DiT-XL/2),
    the posterior's otherwise; 0 at the last step and for DDIM (eta 0)."""
    if timestep == 0 or isinstance(scheduler, DDIMScheduler):
        return torch.zeros((), device=output.device)
    if scheduler.variance_type == "learned_range":
        log_variance = scheduler._get_variance(timestep, predicted_variance=output[:, channels:])
        return torch.exp(0.5 * log_variance)
    return scheduler._get_variance(timestep).to(output.device) ** 0.5
