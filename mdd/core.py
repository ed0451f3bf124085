"""What a process loads once and shares by every run and sweep trial: the data and the base.

A sweep worker runs many trials in one process; loading Fashion-MNIST, the base model and
its cached latents again for each would cost more than some trials' fine-tuning.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from mdd.cache import Claim
from mdd.config import Config
from mdd.data import DatasetSplits, load_dataset
from mdd.data.folders import imagenet_indices
from mdd.data.latents import LatentSet, cached_latents
from mdd.diffusion.base import (
    BaseModel,
    Trainable,
    load_base,
    load_pretrained_base,
    prepare_trainable,
)
from mdd.runtime import pick_device
from mdd.stages import MetricLogger
from mdd.stages.pretrain import pretrain_base


@dataclass(frozen=True)
class LoadedBase:
    """A base model, what fine-tuning trains of it, and the training split's latents."""

    model: BaseModel
    trainable: Trainable
    latents: LatentSet


@dataclass
class Core:
    config: Config
    device: torch.device
    data: DatasetSplits
    loads: dict[str, int] = field(default_factory=dict)  # how often each part was loaded
    _base: tuple[str, LoadedBase] | None = None  # the last base, by its stage key

    @classmethod
    def load(cls, config: Config) -> Core:
        core = cls(config, pick_device(config.device), load_dataset(config.data))
        core.loads["data"] = 1
        return core

    def base(self, step: Claim, config: Config, log: MetricLogger) -> LoadedBase:
        """The base of ``step`` (the pretrain stage), pretrained there first if it has to be."""
        if self._base is not None and self._base[0] == step.stage.key:
            return self._base[1]
        if config.model.path is not None:
            model = self._brought_base(config)
        elif config.pretrain.checkpoint is not None:
            model = load_base(config.pretrain.checkpoint, self.device)
        else:
            train, names = self.data.train, self.data.class_names
            fingerprint = self.data.fingerprint

            def pretrain(folder):
                pretrain_base(train, names, fingerprint, config, folder, self.device, log)

            model = step.get(pretrain, lambda folder: load_base(folder, self.device))
        latents = cached_latents(
            self.data.train.images,
            self.data.train.labels,
            autoencoder=model.autoencoder,
            data_fingerprint=self.data.fingerprint,
            flip=config.autoencoder.flip,
            cache_dir=config.cache_dir / "latents",
            batch_size=512,
            device=self.device,
        )
        trainable = prepare_trainable(model, config.finetune.difffit)
        if config.model.compile:
            model.transformer.compile()  # in place: parameter names (DiffFit's) stay the same
        loaded = LoadedBase(model, trainable, latents)
        self._base = (step.stage.key, loaded)
        self.loads["base"] = self.loads.get("base", 0) + 1
        return loaded

    def _brought_base(self, config: Config) -> BaseModel:
        """DiT-XL/2 (or another ``model.path``) with the dataset's classes as its class ids."""
        ids = list(range(len(self.data.class_names)))
        if config.data.dataset == "imagenet_subset":
            assert config.data.root is not None  # the data loader checked it
            ids = imagenet_indices(config.data.root, self.data.class_names)
        shape = tuple(self.data.train.images.shape[1:])
        return load_pretrained_base(config, ids, shape, self.device)  # type: ignore[arg-type]
