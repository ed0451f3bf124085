"""Distillation methods as plug-ins, composed with the fine-tune (none, dit or minimax).

A method is a composition (``Config.composition``, e.g. ``minimax+mode+kcenter``):

- *sampling guidance* (``sample.guidance``): a hook into every DDPM step of the sampler;
  ``mode`` is MGD3's mode guidance (``mode.py``), ``influence`` IGD's influence guidance
  (``influence.py``);
- *selection* (``selection``): ``oversample`` x IPC candidates are sampled per class and IPC
  of them kept by a rule of ``selection.py`` (the registry the real-image methods use too).

Each kind of plug-in has one registry, filled by a decorator beside the plug-in's code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from mdd.config import GENERATIVE, InfluenceGuidanceConfig, JudgeSpec, ModeGuidanceConfig
from mdd.data import DatasetSplits
from mdd.data.latents import LatentSet
from mdd.diffusion.sampling import Steer
from mdd.errors import ConfigError
from mdd.methods.influence import InfluenceGuidance, load_trajectory
from mdd.methods.mode import ModeGuidance, class_modes, mode_targets
from mdd.methods.selection import candidate_selections

# The modes are a property of the data, not of a run: one k-means seed for every run.
MODE_SEED = 0
# The composition's part of a set sampled from class prototypes (``sample.start``).
START = "prototypes"


@dataclass(frozen=True)
class SamplingContext:
    """What a guidance plug-in may read to build its hook for one sampling call."""

    ipc: int  # the set's images per class
    judge: JudgeSpec  # the judge's architecture and protocol (IGD trains its trajectory on it)
    data: DatasetSplits  # the real splits (a plug-in reads the training split only)
    latents: LatentSet  # the real training latents
    labels: torch.Tensor  # the dataset labels of the call's items, in the call's order
    decode: Callable[[torch.Tensor], torch.Tensor]  # latents -> images in [-1, 1]
    device: torch.device


GuidanceBuilder = Callable[[Any, SamplingContext], Steer]


@dataclass(frozen=True)
class Guidance:
    """A registered guidance: what builds its hook for one sampling call, and whether it
    reads the class's earlier samples (IGD's memory), so the sampler must batch in rounds."""

    build: GuidanceBuilder
    rounds: bool = False


# kind -> the guidance (its settings, what it may read -> the hook of one sampling call)
GUIDANCES: dict[str, Guidance] = {}


def guidance(name: str, rounds: bool = False) -> Callable[[GuidanceBuilder], GuidanceBuilder]:
    """Register ``build`` as the guidance ``sample.guidance.kind: name``."""

    def register(build: GuidanceBuilder) -> GuidanceBuilder:
        if name in GUIDANCES:
            raise ValueError(f"guidance {name!r} is registered twice")
        GUIDANCES[name] = Guidance(build, rounds)
        return build

    return register


@guidance("mode")
def _mode(cfg: ModeGuidanceConfig, context: SamplingContext) -> Steer:
    latents = context.latents
    num_classes = len(context.data.class_names)
    modes = class_modes(latents.mean, latents.labels, num_classes, context.ipc, MODE_SEED)
    return ModeGuidance(mode_targets(modes, context.labels), cfg.weight, cfg.stop_step)


@guidance("influence", rounds=True)
def _influence(cfg: InfluenceGuidanceConfig, context: SamplingContext) -> Steer:
    trajectory = load_trajectory(context.data, context.judge, cfg, context.device)
    return InfluenceGuidance(
        trajectory, context.decode, context.labels, cfg.weight, cfg.deviation,
        cfg.window, cfg.memory_size,
    )  # fmt: skip


def composition_overrides(name: str) -> list[str]:
    """The ``--set`` overrides of a composition named as ``Config.composition`` names it
    (``dit+mode+kcenter``: method, then where sampling starts, a guidance, a selection, each
    at most once)."""
    method, *parts = name.split("+")
    hint = (
        f"composition {name!r}: expected METHOD[+{START}][+GUIDANCE][+SELECTION], METHOD one "
        f"of {', '.join(GENERATIVE)}, GUIDANCE one of {', '.join(GUIDANCES)}, SELECTION one "
        f"of {', '.join(candidate_selections())}"
    )
    if not method or (parts and method not in GENERATIVE):
        raise ConfigError(hint)
    overrides = [f"method={method}"]
    if parts and parts[0] == START:
        overrides.append(f"sample.start.kind={parts.pop(0)}")
    guidance = parts.pop(0) if parts and parts[0] in GUIDANCES else None
    selection = parts.pop(0) if parts and parts[0] in candidate_selections() else None
    if parts:
        raise ConfigError(hint)
    if guidance is not None:
        overrides.append(f"sample.guidance.kind={guidance}")
    if selection is not None:
        overrides.append(f"selection.kind={selection}")
    return overrides
