"""Baselines that select real images instead of generating them (METHOD.md section 6).

``random``, ``herding`` and ``kcenter`` pick IPC training images per class; ``full``
takes the whole training split (the upper bound). The result is written in the same
surrogate format as generated sets, so the evaluation cannot tell them apart.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from mdd.baselines import select_herding, select_kcenter, select_random
from mdd.config import Config
from mdd.data import DatasetSplits
from mdd.data.surrogate import write_surrogate
from mdd.eval.judge import load_judge
from mdd.stages import surrogate_manifest


def _features(data: DatasetSplits, config: Config, device: torch.device) -> torch.Tensor:
    return load_judge(data, config, device).features(data.train.images)


def _random(data: DatasetSplits, config: Config, device: torch.device) -> torch.Tensor:
    return select_random(data.train.labels, config.sample.ipc, config.seed)


def _herding(data: DatasetSplits, config: Config, device: torch.device) -> torch.Tensor:
    return select_herding(_features(data, config, device), data.train.labels, config.sample.ipc)


def _kcenter(data: DatasetSplits, config: Config, device: torch.device) -> torch.Tensor:
    features = _features(data, config, device)
    return select_kcenter(features, data.train.labels, config.sample.ipc)


def _full(data: DatasetSplits, config: Config, device: torch.device) -> torch.Tensor:
    return torch.arange(len(data.train))


SELECTORS: dict[str, Callable[[DatasetSplits, Config, torch.device], torch.Tensor]] = {
    "random": _random,
    "herding": _herding,
    "kcenter": _kcenter,
    "full": _full,
}


def select_surrogate(
    data: DatasetSplits, config: Config, folder: Path, device: torch.device
) -> Path:
    index = SELECTORS[config.method](data, config, device)
    manifest = surrogate_manifest(config, None, data_fingerprint=data.fingerprint)
    train = data.train
    return write_surrogate(
        folder, train.images[index], train.labels[index], data.class_names, manifest
    )
