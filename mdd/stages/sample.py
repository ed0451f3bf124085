"""Sampling the surrogate dataset: IPC images per class from the EMA weights, batched.

The reference code samples one image at a time; here each batch holds many
classes and images, and every image still owns its noise seed, so the result
does not depend on the batch size (METHOD.md section 3).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mdd.config import SampleConfig
from mdd.data.surrogate import write_surrogate
from mdd.diffusion.sampling import make_labels, sample_latents
from mdd.runtime import autocast_dtype
from mdd.stages.pretrain import BaseModel


def generate_images(
    base: BaseModel,
    labels: torch.Tensor,
    label_map: torch.Tensor,
    cfg: SampleConfig,
    seed: int,
    device: torch.device,
) -> torch.Tensor:
    """Decoded uint8 images, one per dataset label, with the model's current weights."""
    latents = sample_latents(
        base.transformer,
        label_map[labels],
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
    )
    return base.autoencoder.decode_batched(latents, cfg.batch_size, device)


def sample_surrogate(
    base: BaseModel,
    label_map: torch.Tensor,
    class_names: list[str],
    cfg: SampleConfig,
    seed: int,
    folder: Path,
    device: torch.device,
    manifest: dict[str, Any],
) -> Path:
    """Write IPC generated images per class as a surrogate dataset folder."""
    labels = make_labels(base.num_classes, cfg.ipc)
    images = generate_images(base, labels, label_map, cfg, seed, device)
    manifest = {**manifest, "seed": seed, "sample": cfg.model_dump()}
    return write_surrogate(folder, images, labels, class_names, manifest)
