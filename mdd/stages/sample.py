"""Sampling the surrogate dataset: IPC images per class from the EMA weights, batched.

The reference code samples one image at a time; here each batch holds many
classes and images, and every image still owns its noise seed, so the result
does not depend on the batch size (METHOD.md section 3).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from mdd.config import Config, SampleConfig
from mdd.data.surrogate import write_surrogate
from mdd.diffusion.base import BaseModel
from mdd.diffusion.sampling import make_labels, sample_latents
from mdd.runtime import autocast_dtype
from mdd.stages import surrogate_manifest


def generate_images(
    base: BaseModel,
    labels: torch.Tensor,
    cfg: SampleConfig,
    seed: int,
    device: torch.device,
    weights: Mapping[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Decoded uint8 images, one per dataset label, from the base with ``weights`` in place
    of its own trained tensors (the base as it is when None)."""
    latents = sample_latents(
        base.transformer,
        base.class_ids[labels],
        base.latent_shape,
        guidance_scale=cfg.guidance_scale,
        guided_channels=cfg.guided_channels,
        steps=cfg.steps,
        scheduler=cfg.scheduler,
        seed=seed,
        batch_size=cfg.batch_size,
        device=device,
        autocast_dtype=autocast_dtype(device),
        progress=True,
        weights=weights,
    )
    return base.autoencoder.decode_batched(latents, cfg.batch_size, device)


def sample_surrogate(
    base: BaseModel,
    weights: Mapping[str, torch.Tensor],
    source: Path,
    class_names: list[str],
    config: Config,
    folder: Path,
    device: torch.device,
) -> Path:
    """Write IPC generated images per class, sampled with ``weights`` (read from ``source``),
    as a surrogate dataset folder."""
    labels = make_labels(base.num_classes, config.sample.ipc)
    images = generate_images(base, labels, config.sample, config.seed, device, weights)
    manifest = surrogate_manifest(config, source, sample=config.sample.model_dump())
    return write_surrogate(folder, images, labels, class_names, manifest)
