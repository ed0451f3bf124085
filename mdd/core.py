"""What a process loads once and shares by every run and sweep trial: the data and the base.

A sweep worker runs many trials in one process; loading Fashion-MNIST, the base model and
its cached latents again for each would cost more than some trials' fine-tuning.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field

import torch

from mdd.cache import Claim
from mdd.config import BaseRecipe, DataConfig
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
from mdd.distributed import ALONE, World
from mdd.runtime import pick_device
from mdd.stages import MetricLogger
from mdd.stages.pretrain import pretrain_base


@dataclass(frozen=True)
class LoadedBase:
    """A base model, what fine-tuning trains of it, and the training split's latents."""

    model: BaseModel
    trainable: Trainable
    latents: LatentSet


def prepare_variant(
    model: BaseModel, latents: LatentSet, difffit: bool, compile_model: bool
) -> LoadedBase:
    """What one fine-tuning setting trains of ``model``, on a copy: ``model`` stays as loaded.

    DiffFit adds its gammas and freezes parameters, and compiling wraps the forward, both in
    place; on a copy, a later setting (a sweep trial without DiffFit) starts from the base as
    it was loaded, not from what an earlier trial's setting left in it.
    """
    transformer = copy.deepcopy(model.transformer)
    variant = dataclasses.replace(model, transformer=transformer)
    trainable = prepare_trainable(variant, difffit)
    if compile_model:
        transformer.compile()  # in place: parameter names (DiffFit's) stay the same
    return LoadedBase(variant, trainable, latents)


@dataclass
class Core:
    source: DataConfig  # the data section the splits were loaded by
    device: torch.device
    data: DatasetSplits
    world: World = ALONE  # the processes of a torchrun run
    loads: dict[str, int] = field(default_factory=dict)  # how often each part was loaded
    # The last base as loaded and its latents, by the pretrain stage's key and the latents'
    # flip (a shipped base's key does not hold it).
    _loaded: tuple[tuple[str, bool], BaseModel, LatentSet] | None = None
    # The last prepared variant, by the above and every setting that shapes the variant.
    _base: tuple[tuple[str, bool, bool, bool], LoadedBase] | None = None

    @classmethod
    def load(cls, source: DataConfig, device: str = "auto", world: World | None = None) -> Core:
        """The splits of ``source`` on ``device`` (``auto``: CUDA where there is one)."""
        core = cls(source, pick_device(device), load_dataset(source), world or ALONE)
        core.loads["data"] = 1
        return core

    def base(self, step: Claim, recipe: BaseRecipe, log: MetricLogger) -> LoadedBase:
        """The base of ``step`` (the pretrain stage), pretrained there by ``recipe`` first if
        it has to be, prepared for the fine-tune (DiffFit or not, compiled or not)."""
        loaded_key = (step.stage.key, recipe.autoencoder.flip)
        variant = (*loaded_key, recipe.difffit, recipe.model.compile)
        if self._base is not None and self._base[0] == variant:
            return self._base[1]
        self._base = None  # let the previous variant go before copying the next
        model, latents = self._load(loaded_key, step, recipe, log)
        loaded = prepare_variant(model, latents, recipe.difffit, recipe.model.compile)
        self._base = (variant, loaded)
        self.loads["variant"] = self.loads.get("variant", 0) + 1
        return loaded

    def _load(
        self, key: tuple[str, bool], step: Claim, recipe: BaseRecipe, log: MetricLogger
    ) -> tuple[BaseModel, LatentSet]:
        if self._loaded is not None and self._loaded[0] == key:
            return self._loaded[1], self._loaded[2]
        self._loaded = None
        if recipe.model.path is not None:
            model = self._brought_base(recipe)
        elif recipe.pretrain.checkpoint is not None:
            model = load_base(recipe.pretrain.checkpoint, self.device)
        else:
            train, names = self.data.train, self.data.class_names
            fingerprint = self.data.fingerprint

            def pretrain(folder):
                pretrain_base(train, names, fingerprint, recipe, folder, self.device, log)

            model = step.get(pretrain, lambda folder: load_base(folder, self.device))
        latents = cached_latents(
            self.data.train.images,
            self.data.train.labels,
            autoencoder=model.autoencoder,
            data_fingerprint=self.data.fingerprint,
            flip=recipe.autoencoder.flip,
            cache_dir=recipe.cache_dir / "latents",
            batch_size=512,
            device=self.device,
        )
        self._loaded = (key, model, latents)
        self.loads["base"] = self.loads.get("base", 0) + 1
        return model, latents

    def _brought_base(self, recipe: BaseRecipe) -> BaseModel:
        """DiT-XL/2 (or another ``model.path``) with the dataset's classes as its class ids."""
        ids = list(range(len(self.data.class_names)))
        if self.source.dataset == "imagenet_subset":
            assert self.source.root is not None  # the data loader checked it
            ids = imagenet_indices(self.source.root, self.data.class_names)
        shape = tuple(self.data.train.images.shape[1:])
        return load_pretrained_base(
            recipe.model,
            recipe.autoencoder,
            ids,
            shape,
            self.device,  # type: ignore[arg-type]
        )
