"""Sampling the surrogate dataset: IPC images per class from the EMA weights, batched.

The reference code samples one image at a time; here each batch holds many
classes and images, and every image still owns its noise seed, so the result
does not depend on the batch size (METHOD.md section 3). With a selection the stage
samples the candidate pool instead (``oversample`` x IPC per class), and a guidance
plug-in (``mdd.methods``) may steer every step.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from mdd.config import Config, SampleConfig
from mdd.data.latents import LatentSet
from mdd.data.surrogate import write_surrogate
from mdd.diffusion.base import BaseModel
from mdd.diffusion.sampling import Steer, make_labels, sample_latents
from mdd.methods import GUIDANCES
from mdd.runtime import autocast_dtype
from mdd.stages import surrogate_manifest

COST_FILE = "sampling.json"


def generate_images(
    base: BaseModel,
    labels: torch.Tensor,
    cfg: SampleConfig,
    seed: int,
    device: torch.device,
    weights: Mapping[str, torch.Tensor] | None = None,
    steer: Steer | None = None,
) -> torch.Tensor:
    """Decoded uint8 images, one per dataset label, from the base with ``weights`` in place
    of its own trained tensors (the base as it is when None), ``steer`` adjusting each step."""
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
        steer=steer,
    )
    return base.autoencoder.decode_batched(latents, cfg.batch_size, device)


@dataclass(frozen=True)
class Sampled:
    """A sampled set (or candidate pool) and what making it cost."""

    path: Path
    metrics: dict[str, float]


def sample_surrogate(
    base: BaseModel,
    weights: Mapping[str, torch.Tensor] | None,
    source: Path | None,
    latents: LatentSet,
    class_names: list[str],
    config: Config,
    folder: Path,
    device: torch.device,
) -> Sampled:
    """Write ``folder/data``: IPC generated images per class (``oversample`` x IPC with a
    selection), sampled with ``weights`` (read from ``source``); ``latents`` are the real
    training latents a guidance plug-in reads (MGD3's modes)."""
    sample = config.sample
    per_class = sample.ipc * (config.selection.oversample if config.selection else 1)
    labels = make_labels(base.num_classes, per_class)
    started = time.perf_counter()
    steer = None
    if sample.guidance is not None:
        steer = GUIDANCES[sample.guidance.kind](sample.guidance, latents, labels, sample.ipc)
    setup_s = time.perf_counter() - started
    images = generate_images(base, labels, sample, config.seed, device, weights, steer)
    sampling_s = time.perf_counter() - started - setup_s
    manifest = surrogate_manifest(config, source, sample=sample.model_dump())
    write_surrogate(folder / "data", images, labels, class_names, manifest)
    cost = {
        "sample/images": float(len(labels)),
        "sample/images_per_s": len(labels) / max(sampling_s, 1e-9),
        "sample/guidance_setup_s": setup_s,
    }
    (folder / COST_FILE).write_text(json.dumps(cost, indent=2))
    return Sampled(folder / "data", cost)


def read_sampled(folder: Path) -> Sampled:
    """What ``sample_surrogate`` wrote (a set cached before costs were kept has none)."""
    cost = folder / COST_FILE
    return Sampled(folder / "data", json.loads(cost.read_text()) if cost.is_file() else {})
