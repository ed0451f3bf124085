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

from mdd.config import SampleConfig, SetOrigin
from mdd.data import DatasetSplits
from mdd.data.latents import LatentSet
from mdd.data.surrogate import write_surrogate
from mdd.diffusion.base import BaseModel
from mdd.diffusion.sampling import Steer, make_labels, sample_latents
from mdd.distributed import ALONE, World
from mdd.methods import GUIDANCES, MODE_SEED, SamplingContext
from mdd.methods.mode import class_modes, mode_targets
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
    first_index: int = 0,
    start: torch.Tensor | None = None,
) -> torch.Tensor:
    """Decoded uint8 images, one per dataset label, from the base with ``weights`` in place
    of its own trained tensors (the base as it is when None), ``steer`` adjusting each step;
    ``labels`` are the call's items from ``first_index`` on (a rank's shard), ``start``
    their latents to begin from (``sample.start``; pure noise when None)."""
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
        first_index=first_index,
        start=start,
        strength=1.0 if cfg.start is None else cfg.start.strength,
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
    data: DatasetSplits,
    sample: SampleConfig,
    set_for: SetOrigin,
    folder: Path,
    device: torch.device,
    world: World = ALONE,
    classes: range | None = None,
) -> Sampled | None:
    """Write ``folder/data``: ``set_for.per_class`` generated images per class (IPC, or
    ``oversample`` x IPC for a selection's pool), sampled by ``sample`` with ``weights``
    (read from ``source``); ``latents`` (the real training latents), ``data`` and the judge
    are what a guidance plug-in may read.

    Split over a ``world`` (torchrun), each rank samples a shard of the classes with the
    items' own seeds, and rank 0 writes the set the one-process call writes; the others
    return None. A guidance samples on rank 0 alone: it may read every class's samples.
    A class phase (``classes``) samples its classes' items of the whole set, each with the
    seed it has there.
    """
    per_class = set_for.per_class
    labels = make_labels(base.num_classes, per_class)
    first, phase = 0, {}
    if classes is not None:
        keep = (labels >= classes.start) & (labels < classes.stop)
        first, labels = int(torch.nonzero(keep)[0]), labels[keep]
        phase = {"classes": [classes.start, classes.stop]}
    started = time.perf_counter()
    steer, batch_size = None, sample.batch_size
    if sample.guidance is not None:
        # A guidance that reads the class's earlier samples (IGD's memory) samples in rounds
        # of one image per class, so each round sees every earlier one, whatever batch_size.
        plugin = GUIDANCES[sample.guidance.kind]
        if plugin.rounds:
            labels = round_major(labels)
            batch_size = base.num_classes
        context = SamplingContext(
            sample.ipc, set_for.judge, data, latents, labels, base.autoencoder.decode, device
        )
        steer = plugin.build(sample.guidance, context)
    start = None
    if sample.start is not None:
        start = prototypes_of(latents.mean, latents.labels, labels, base.num_classes, per_class)
    setup_s = time.perf_counter() - started
    settings = sample.model_copy(update={"batch_size": batch_size})
    seed = set_for.seed
    if steer is None and world.split:
        images = _sample_shards(base, labels, settings, seed, device, weights, world, first, start)
        if images is None:
            return None
    elif world.main:
        images = generate_images(base, labels, settings, seed, device, weights, steer, first, start)
    else:
        return None
    sampling_s = time.perf_counter() - started - setup_s
    order = torch.argsort(labels, stable=True)  # the set is written class-major
    images, labels = images[order], labels[order]
    manifest = surrogate_manifest(set_for.made_by, source, sample=sample.model_dump(), **phase)
    write_surrogate(folder / "data", images, labels, data.class_names, manifest)
    cost = {
        "sample/images": float(len(labels)),
        "sample/images_per_s": len(labels) / max(sampling_s, 1e-9),
        "sample/guidance_setup_s": setup_s,
    }
    (folder / COST_FILE).write_text(json.dumps(cost, indent=2))
    return Sampled(folder / "data", cost)


def _sample_shards(
    base: BaseModel,
    labels: torch.Tensor,
    cfg: SampleConfig,
    seed: int,
    device: torch.device,
    weights: Mapping[str, torch.Tensor] | None,
    world: World,
    first: int,
    start: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """This rank's classes of the class-major ``labels`` (items ``first`` on of the whole
    set) sampled, all ranks' images on rank 0 in label order (None on the others)."""
    present = torch.unique(labels)
    items = torch.nonzero(torch.isin(labels, present[world.shard(len(present))])).flatten()
    mine = None  # a world of more ranks than classes leaves some ranks without one
    if len(items):
        begin = None if start is None else start[items]
        mine = generate_images(
            base,
            labels[items],
            cfg,
            seed,
            device,
            weights,
            first_index=first + int(items[0]),
            start=begin,
        )
    shards = world.gather(None if mine is None else mine.cpu())
    return None if shards is None else torch.cat([s for s in shards if s is not None])


def prototypes_of(
    latents: torch.Tensor,
    classes: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    per_class: int,
) -> torch.Tensor:
    """Each item's prototype (``sample.start``): ``per_class`` k-means centres of its class
    among ``latents`` ``[N, C, H, W]`` (labelled ``classes``), item ``i`` of a class (in
    ``labels``' order) taking centre ``i``."""
    prototypes = class_modes(latents, classes, num_classes, per_class, MODE_SEED)
    return mode_targets(prototypes, labels)


def round_major(labels: torch.Tensor) -> torch.Tensor:
    """Class-major labels reordered as rounds: the first item of every class, then the
    second, ... (``0 0 1 1`` -> ``0 1 0 1``)."""
    rank = torch.zeros_like(labels)
    order = torch.argsort(labels, stable=True)
    starts = torch.searchsorted(labels[order], labels[order])
    rank[order] = torch.arange(len(labels)) - starts
    return labels[torch.argsort(rank * (int(labels.max()) + 1) + labels, stable=True)]


def read_sampled(folder: Path) -> Sampled:
    """What ``sample_surrogate`` wrote (a set cached before costs were kept has none)."""
    cost = folder / COST_FILE
    return Sampled(folder / "data", json.loads(cost.read_text()) if cost.is_file() else {})
