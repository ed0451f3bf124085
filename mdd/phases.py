"""Class phases: the fine-tune and the sampling in groups of consecutive classes.

The reference code fine-tunes one DiT per phase of 10-20 classes (``--phase``) and samples
each phase's classes with it, so ImageNet-1K's fine-tune is many jobs of about a GPU-hour.
Here a phase is a pair of planned stages, ``finetune-phase<i>`` and ``sample-phase<i>``, with
keys of their own: phases resume one by one and run on different workers or array tasks
(``mdd-run CONFIG --phase I``), and the ``sample`` stage merges their sets into one.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mdd.config import SampleConfig
from mdd.data import DatasetSplits
from mdd.data.latents import LatentSet
from mdd.data.surrogate import read_surrogate, write_surrogate
from mdd.distributed import share
from mdd.errors import MddError
from mdd.stages import surrogate_manifest
from mdd.stages.sample import COST_FILE, Sampled


@dataclass(frozen=True)
class Phase:
    """Phase ``index`` of ``count``; one phase of one is every class at once."""

    index: int = 0
    count: int = 1

    @property
    def whole(self) -> bool:
        return self.count == 1

    @property
    def finetune(self) -> str:
        return "finetune" if self.whole else f"finetune-phase{self.index}"

    @property
    def sample(self) -> str:
        return "sample" if self.whole else f"sample-phase{self.index}"

    @property
    def prefix(self) -> str:
        """Of the phase's metrics on the run, so that phases do not overwrite each other's."""
        return "" if self.whole else f"phase{self.index}/"

    def classes(self, num_classes: int) -> range | None:
        """The phase's classes (None: every class)."""
        if self.whole:
            return None
        if self.count > num_classes:
            raise MddError(
                f"data.phases: {self.count} phases of {num_classes} classes leave a phase "
                f"without a class. Hint: set data.phases to at most {num_classes}."
            )
        return range(num_classes)[share(num_classes, self.index, self.count)]

    def latents(self, latents: LatentSet, num_classes: int) -> LatentSet:
        """What the phase fine-tunes on: its classes' latents."""
        classes = self.classes(num_classes)
        return latents if classes is None else latents.of_classes(classes)


def class_phases(count: int) -> list[Phase]:
    """The ``data.phases`` phases of a run, in order."""
    return [Phase(index, count) for index in range(count)]


def merge_phases(
    parts: list[Sampled],
    data: DatasetSplits,
    sample: SampleConfig,
    made_by: Mapping[str, Any],
    folder: Path,
) -> Sampled:
    """Write ``folder/data``: the phases' sets as one, in phase order (so class-major)."""
    sets = [read_surrogate(part.path) for part in parts]
    images = torch.cat([s.images for s in sets])
    labels = torch.cat([s.labels for s in sets])
    made = [str(part.path) for part in parts]  # each phase's manifest names its fine-tune
    manifest = surrogate_manifest(made_by, None, sample=sample.model_dump(), phases=made)
    write_surrogate(folder / "data", images, labels, data.class_names, manifest)
    count = sum(part.metrics.get("sample/images", 0.0) for part in parts)
    seconds = sum(
        part.metrics["sample/images"] / part.metrics["sample/images_per_s"]
        for part in parts
        if part.metrics.get("sample/images_per_s")
    )
    cost = {"sample/images": count, "sample/images_per_s": count / max(seconds, 1e-9)}
    (folder / COST_FILE).write_text(json.dumps(cost, indent=2))
    return Sampled(folder / "data", cost)
