"""Selection: real images instead of generated ones (METHOD.md section 6), or the best of
a generated candidate pool.

``random``, ``herding`` and ``kcenter`` pick IPC training images per class; ``full``
takes the whole training split (the upper bound). ``select_candidates`` keeps IPC of each
class's generated candidates by a selection plug-in (``mdd.methods``). The result is
written in the same surrogate format as generated sets, so the evaluation cannot tell
them apart.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from mdd.baselines import select_herding, select_kcenter, select_random
from mdd.config import Config
from mdd.data import DatasetSplits
from mdd.data.surrogate import read_surrogate, write_surrogate
from mdd.eval.judge import load_judge, train_features
from mdd.methods import SELECTIONS, Candidates
from mdd.stages import surrogate_manifest


def _features(data: DatasetSplits, config: Config, device: torch.device) -> torch.Tensor:
    return train_features(lambda: load_judge(data, config, device), data, config)


def _random(data: DatasetSplits, config: Config, device: torch.device) -> torch.Tensor:
    return select_random(data.train.labels, config.sample.ipc, config.set_seed())


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


def select_candidates(
    pool: Path, data: DatasetSplits, config: Config, folder: Path, device: torch.device
) -> Path:
    """Keep ``sample.ipc`` of each class's candidates in ``pool`` by ``selection.kind``, as
    judged by the judge (trained on the training split only)."""
    assert config.selection is not None  # the plan has this stage only with a selection
    candidates = read_surrogate(pool)
    judge = load_judge(data, config, device)
    pick = SELECTIONS[config.selection.kind]
    offered = Candidates(
        judge,
        candidates.images,
        candidates.labels,
        data.train.labels,
        lambda: train_features(lambda: judge, data, config),
    )
    index = pick(offered, config.sample.ipc)
    source = candidates.manifest["source_checkpoint"]
    manifest = surrogate_manifest(
        config,
        None if source is None else Path(source),
        sample=candidates.manifest.get("sample"),
        pool=str(pool),
        candidates=len(candidates.labels),
    )
    images, labels = candidates.images[index], candidates.labels[index]
    return write_surrogate(folder, images, labels, data.class_names, manifest)
