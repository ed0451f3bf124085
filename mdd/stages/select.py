"""Selection: real images instead of generated ones (METHOD.md section 6), or the best of
a generated candidate pool, by the one registry of selection rules (``mdd.methods.selection``).

``random``, ``herding`` and ``kcenter`` pick IPC training images per class; ``full``
takes the whole training split (the upper bound). ``select_candidates`` keeps IPC of each
class's generated candidates by the rule ``selection.kind`` names. The result is written in
the same surrogate format as generated sets, so the evaluation cannot tell them apart.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from pathlib import Path

import torch

from mdd.config import SampleConfig, SetOrigin
from mdd.core import LoadedBase
from mdd.data import DatasetSplits
from mdd.data.surrogate import read_surrogate, write_surrogate
from mdd.eval.judge import Judge, load_judge, train_features
from mdd.methods.selection import SELECTIONS, Pool
from mdd.stages import surrogate_manifest


def _pool(
    labels: torch.Tensor, images: torch.Tensor | None, data: DatasetSplits, set_for: SetOrigin,
    device: torch.device,
) -> Pool:  # fmt: skip
    """``images`` (None: the training split) as a pool; the judge is loaded when first asked."""
    judge: Callable[[], Judge] = cache(lambda: load_judge(data, set_for.judge, device))
    real = cache(lambda: train_features(judge, data, set_for.judge))
    shown = data.train.images if images is None else images
    return Pool(
        labels,
        real if images is None else cache(lambda: judge().features(shown)),
        cache(lambda: judge().probabilities(shown)),
        data.train.labels,
        real,
        set_for.seed,
    )


def select_surrogate(
    data: DatasetSplits,
    rule: str,
    sample: SampleConfig,
    set_for: SetOrigin,
    folder: Path,
    device: torch.device,
    decoded: LoadedBase | None = None,
) -> Path:
    """The ``sample.ipc`` training images per class that the selection ``rule`` (the
    method) picks, or with ``decoded`` (``sample.through_autoencoder``) the base's
    autoencoder's decoding of their cached latents, as the sampler's images are made."""
    train = data.train
    index = SELECTIONS[rule](_pool(train.labels, None, data, set_for, device), sample.ipc)
    images = train.images[index]
    extra: dict[str, str] = {}
    if decoded is not None:
        autoencoder = decoded.model.autoencoder
        latents = decoded.latents.mean[index]  # the first len(train) items are unflipped
        images = autoencoder.decode_batched(latents, sample.batch_size, device)
        extra["through_autoencoder"] = autoencoder.identity
    manifest = surrogate_manifest(set_for.made_by, None, data_fingerprint=data.fingerprint, **extra)
    return write_surrogate(folder, images, train.labels[index], data.class_names, manifest)


def select_candidates(
    pool: Path,
    data: DatasetSplits,
    rule: str,
    ipc: int,
    set_for: SetOrigin,
    folder: Path,
    device: torch.device,
) -> Path:
    """Keep ``ipc`` of each class's candidates in ``pool`` by the selection ``rule``
    (``selection.kind``), as judged by the judge (trained on the training split only)."""
    candidates = read_surrogate(pool)
    offered = _pool(candidates.labels, candidates.images, data, set_for, device)
    index = SELECTIONS[rule](offered, ipc)
    source = candidates.manifest["source_checkpoint"]
    manifest = surrogate_manifest(
        set_for.made_by,
        None if source is None else Path(source),
        sample=candidates.manifest.get("sample"),
        pool=str(pool),
        candidates=len(candidates.labels),
    )
    images, labels = candidates.images[index], candidates.labels[index]
    return write_surrogate(folder, images, labels, data.class_names, manifest)
