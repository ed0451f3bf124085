"""A base model (autoencoder + class-conditional DiT) and the part of it fine-tuning trains.

Two kinds of base: a *base folder* that mdd pretrained (``mdd.stages.pretrain``) or ships,
and a base the user brings (DiT-XL/2 and the SD VAE, METHOD.md section 3). Both load into
``BaseModel``; ``prepare_trainable`` then picks what fine-tuning trains. The shared model is
never changed afterwards: fine-tuning trains copies of those tensors and sampling is given
the weights it samples with (``mdd.diffusion.backbone.predict``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import DiTTransformer2DModel

from mdd.config import AutoencoderConfig, ModelConfig
from mdd.diffusion.autoencoder import Autoencoder, build_autoencoder, load_autoencoder
from mdd.diffusion.backbone import backbone_info, load_backbone
from mdd.diffusion.difffit import apply_difffit
from mdd.diffusion.training import disable_block_label_dropout


@dataclass
class BaseModel:
    """A class-conditional diffusion model and its autoencoder, ready to fine-tune."""

    autoencoder: Autoencoder
    transformer: DiTTransformer2DModel
    num_classes: int  # classes of the dataset (labels 0..num_classes-1)
    latent_shape: tuple[int, int, int]
    identity: str  # what the base is, for cache keys and provenance
    # Dataset class index -> the backbone's class id: the identity for a base mdd
    # pretrained, ImageNet indices for DiT-XL/2 (METHOD.md section 3).
    class_ids: torch.Tensor

    @property
    def null_class(self) -> int:
        return backbone_info(self.transformer).null_class

    @property
    def learned_variance(self) -> bool:
        return backbone_info(self.transformer).learned_variance


def load_base(folder: Path, device: torch.device) -> BaseModel:
    """Load a base folder written by ``pretrain_base`` (or shipped with mdd)."""
    manifest = json.loads((folder / "base.json").read_text())
    autoencoder = load_autoencoder(folder / "autoencoder").to(device)
    transformer = DiTTransformer2DModel.from_pretrained(folder / "transformer").to(device)
    num_classes = len(manifest["class_names"])
    return BaseModel(
        autoencoder=autoencoder,
        transformer=transformer.eval(),
        num_classes=num_classes,
        latent_shape=backbone_info(transformer).latent_shape,
        identity=f"base:{folder.name}",
        class_ids=torch.arange(num_classes),
    )


def load_pretrained_base(
    model: ModelConfig,
    autoencoder_settings: AutoencoderConfig,
    class_ids: list[int],
    image_shape: tuple[int, int, int],
    device: torch.device,
) -> BaseModel:
    """A base the user brings (DiT-XL/2 and the SD VAE, METHOD.md section 3), not trained here."""
    transformer = load_backbone(model.preset, model.path).to(device).eval()
    autoencoder = build_autoencoder(autoencoder_settings).to(device)
    shape = tuple(autoencoder.latent_shape(image_shape))
    return BaseModel(
        autoencoder=autoencoder,
        transformer=transformer,
        num_classes=len(class_ids),
        latent_shape=shape,  # type: ignore[arg-type]
        identity=f"{model.preset}:{model.path}",
        class_ids=torch.tensor(class_ids),
    )


@dataclass(frozen=True)
class Trainable:
    """What fine-tuning trains of a base: those tensors' names and values before any run.

    Every fine-tune (or sweep trial) trains its own copies of ``initial``, so all start from
    the same point and the shared model never needs a reset.
    """

    base: BaseModel
    initial: dict[str, torch.Tensor]
    selection: dict[str, int]  # counts by group, for logging


def prepare_trainable(base: BaseModel, difffit: bool) -> Trainable:
    """Select what fine-tuning trains (DiffFit subset, or everything) and remember its start."""
    model = base.transformer
    disable_block_label_dropout(model)
    if difffit:
        selection = apply_difffit(model)
        counts = {**selection.by_group, "trainable": selection.trainable_params}
        counts["total"] = selection.total_params
    else:
        model.requires_grad_(True)
        counts = {"all": sum(p.numel() for p in model.parameters())}
    initial = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    return Trainable(base, initial, counts)
