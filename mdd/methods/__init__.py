"""Distillation methods as plug-ins, composed with the fine-tune (none, dit or minimax).

A method is a composition (``Config.composition``, e.g. ``minimax+mode+kcenter``):

- *sampling guidance* (``sample.guidance``): a hook into every DDPM step of the sampler;
  ``mode`` is MGD3's mode guidance (``mode.py``), ``influence`` IGD's influence guidance
  (``influence.py``);
- *selection* (``selection``): ``oversample`` x IPC candidates are sampled per class and IPC
  of them kept by the judge (trained on the training split only): ``herding`` (toward the
  candidates' mean), ``real-herding`` (toward the training split's class mean) or ``kcenter``
  in its features, or ``confidence``, its probability of the intended class.

Each registry maps the name a config gives to the code that builds the part.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from mdd.baselines import class_means, select_confident, select_herding, select_kcenter
from mdd.config import GENERATIVE, Config, InfluenceGuidanceConfig, ModeGuidanceConfig
from mdd.data import DatasetSplits
from mdd.data.latents import LatentSet
from mdd.diffusion.sampling import Steer
from mdd.errors import ConfigError
from mdd.eval.judge import Judge
from mdd.methods.influence import InfluenceGuidance, load_trajectory
from mdd.methods.mode import ModeGuidance, class_modes, mode_targets

# The modes are a property of the data, not of a run: one k-means seed for every run.
MODE_SEED = 0


@dataclass(frozen=True)
class SamplingContext:
    """What a guidance plug-in may read to build its hook for one sampling call."""

    config: Config
    data: DatasetSplits  # the real splits (a plug-in reads the training split only)
    latents: LatentSet  # the real training latents
    labels: torch.Tensor  # the dataset labels of the call's items, in the call's order
    decode: Callable[[torch.Tensor], torch.Tensor]  # latents -> images in [-1, 1]
    device: torch.device


def _mode(cfg: ModeGuidanceConfig, context: SamplingContext) -> Steer:
    latents = context.latents
    num_classes = len(context.data.class_names)
    modes = class_modes(
        latents.mean, latents.labels, num_classes, context.config.sample.ipc, MODE_SEED
    )
    return ModeGuidance(mode_targets(modes, context.labels), cfg.weight, cfg.stop_step)


def _influence(cfg: InfluenceGuidanceConfig, context: SamplingContext) -> Steer:
    trajectory = load_trajectory(context.data, context.config, cfg, context.device)
    return InfluenceGuidance(
        trajectory, context.decode, context.labels, cfg.weight, cfg.deviation,
        cfg.window, cfg.memory_size,
    )  # fmt: skip


# Guidances that read the class's earlier samples: the sampler batches them in rounds.
ROUNDS = ("influence",)

# kind -> (its settings, what it may read) -> the hook of one sampling call
GUIDANCES: dict[str, Callable[[Any, SamplingContext], Steer]] = {
    "mode": _mode,
    "influence": _influence,
}


@dataclass(frozen=True)
class Candidates:
    """What a selection plug-in picks from: a class-labelled pool, judged by the judge."""

    judge: Judge  # trained on the training split only
    images: torch.Tensor  # uint8 [n, C, H, W]
    labels: torch.Tensor  # [n]
    # The training split, for a selection that matches the real images: its labels, and the
    # judge's features of its images, computed (or read from the cache) only when asked for.
    real_labels: torch.Tensor
    real_features: Callable[[], torch.Tensor]


def _herding(pool: Candidates, ipc: int) -> torch.Tensor:
    return select_herding(pool.judge.features(pool.images), pool.labels, ipc)


def _real_herding(pool: Candidates, ipc: int) -> torch.Tensor:
    # The pool's own mean is what the sampler made; the training split's is what the set
    # should stand for (herding real images at IPC 1 keeps the one nearest that mean).
    num_classes = int(max(pool.real_labels.max(), pool.labels.max())) + 1
    means = class_means(pool.real_features(), pool.real_labels, num_classes)
    return select_herding(pool.judge.features(pool.images), pool.labels, ipc, means)


def _kcenter(pool: Candidates, ipc: int) -> torch.Tensor:
    return select_kcenter(pool.judge.features(pool.images), pool.labels, ipc)


def _confidence(pool: Candidates, ipc: int) -> torch.Tensor:
    return select_confident(pool.judge.probabilities(pool.images), pool.labels, ipc)


# name -> (the candidate pool, IPC) -> indices of the kept candidates
SELECTIONS: dict[str, Callable[[Candidates, int], torch.Tensor]] = {
    "herding": _herding,
    "real-herding": _real_herding,
    "kcenter": _kcenter,
    "confidence": _confidence,
}


def composition_overrides(name: str) -> list[str]:
    """The ``--set`` overrides of a composition named as ``Config.composition`` names it
    (``dit+mode+kcenter``: method, then a guidance, then a selection, each at most once)."""
    method, *parts = name.split("+")
    hint = (
        f"composition {name!r}: expected METHOD[+GUIDANCE][+SELECTION], METHOD one of "
        f"{', '.join(GENERATIVE)}, GUIDANCE one of {', '.join(GUIDANCES)}, SELECTION one of "
        f"{', '.join(SELECTIONS)}"
    )
    if not method or (parts and method not in GENERATIVE):
        raise ConfigError(hint)
    overrides = [f"method={method}"]
    guidance = parts.pop(0) if parts and parts[0] in GUIDANCES else None
    selection = parts.pop(0) if parts and parts[0] in SELECTIONS else None
    if parts:
        raise ConfigError(hint)
    if guidance is not None:
        overrides.append(f"sample.guidance.kind={guidance}")
    if selection is not None:
        overrides.append(f"selection.kind={selection}")
    return overrides
