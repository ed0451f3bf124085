"""The denoising network: diffusers' ``DiTTransformer2DModel`` built or loaded by preset name.

Presets (METHOD.md sections 3 and 4):

- ``latent-s``: the embedded default, a DiT on 7x7x4 autoencoder latents (patch 1,
  6 layers, 4 heads x 32 = width 128), predicting eps only;
- ``latent-tiny``: the same shape at 2 layers, 2 heads x 16, for tests and smoke runs;
- ``pixel-s``: a pixel-space DiT for 28 or 32 px images (patch 4, 4 layers, 4 heads x 32);
- ``DiT-XL/2``: the paper's backbone (28 layers, 16 heads x 72, patch 2, 32x32x4 SD-VAE
  latents for 256 px, learned variance: 8 output channels, 1000 ImageNet classes).
  It is loaded from a diffusers folder or hub id in the ``facebook/DiT-XL-2-256`` layout
  (weights in ``transformer/``) or from the original ``DiT-XL-2-256x256.pt``.

Class labels: the model embeds ``num_embeds_ada_norm`` classes plus a null class (index
``num_embeds_ada_norm``) for classifier-free guidance. Fine-tuning DiT-XL/2 on an ImageNet
subset such as ImageWoof keeps all 1000 ImageNet classes: the labels given to the model are
the ImageNet indices of the subset's classes, and the null class stays 1000. Read the sizes
of a built or loaded model with ``backbone_info``.

Every model from here has the per-block label dropout of diffusers switched off; label
dropout for guidance is done once per sample with ``mdd.diffusion.training.drop_labels``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import DiTTransformer2DModel
from torch import Tensor, nn

from mdd.diffusion.convert import load_original_dit, match_original_dit
from mdd.diffusion.training import disable_block_label_dropout
from mdd.errors import ConfigError

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_LAYOUT_HINT = (
    "expected a diffusers folder in the facebook/DiT-XL-2-256 layout (transformer/config.json "
    "and weights), a folder written by save_pretrained, a hub id, or an original DiT "
    "checkpoint file (.pt/.pth, e.g. DiT-XL-2-256x256.pt)"
)


@dataclass(frozen=True)
class Preset:
    """A DiT architecture; the sizes below it are the defaults of the setting it is meant for."""

    num_layers: int
    num_attention_heads: int
    attention_head_dim: int
    # The defaults: the embedded default's family (eps only, 7x7x4 latents, 10 classes).
    patch_size: int = 1
    learned_variance: bool = False
    num_classes: int = 10
    in_channels: int = 4
    sample_size: int = 7
    # Weights come from facebookresearch/DiT: reproduce its constants (see convert.py).
    original_dit: bool = False

    def config(
        self,
        num_classes: int | None = None,
        in_channels: int | None = None,
        sample_size: int | None = None,
    ) -> dict[str, Any]:
        """The ``DiTTransformer2DModel`` config, with the preset's defaults for sizes not given."""
        in_channels = self.in_channels if in_channels is None else in_channels
        return {
            "num_layers": self.num_layers,
            "num_attention_heads": self.num_attention_heads,
            "attention_head_dim": self.attention_head_dim,
            "patch_size": self.patch_size,
            "in_channels": in_channels,
            "out_channels": 2 * in_channels if self.learned_variance else in_channels,
            "sample_size": self.sample_size if sample_size is None else sample_size,
            "num_embeds_ada_norm": self.num_classes if num_classes is None else num_classes,
        }


# DiT-XL/2's design: patch 2, learned variance (eps and v), 1000 ImageNet classes, and the
# original code's constants.
_ORIGINAL_DIT: dict[str, Any] = {
    "patch_size": 2,
    "learned_variance": True,
    "num_classes": 1000,
    "in_channels": 4,
    "original_dit": True,
}
PRESETS: dict[str, Preset] = {
    "latent-s": Preset(num_layers=6, num_attention_heads=4, attention_head_dim=32),
    "latent-tiny": Preset(num_layers=2, num_attention_heads=2, attention_head_dim=16),
    "pixel-s": Preset(
        num_layers=4,
        num_attention_heads=4,
        attention_head_dim=32,
        patch_size=4,
        in_channels=1,
        sample_size=28,
    ),
    "DiT-XL/2": Preset(28, 16, 72, sample_size=32, **_ORIGINAL_DIT),
    # The same design at a size that runs in a test: the stand-in for the ImageWoof path on
    # machines without a GPU.
    "DiT-tiny/2": Preset(2, 2, 16, sample_size=16, **_ORIGINAL_DIT),
}


@dataclass(frozen=True)
class BackboneInfo:
    """Sizes of a DiT as the rest of mdd needs them."""

    num_classes: int  # config.num_embeds_ada_norm; 1000 for DiT-XL/2 even on a subset
    in_channels: int
    out_channels: int
    sample_size: int
    patch_size: int

    @property
    def learned_variance(self) -> bool:
        """The output holds eps and the variance interpolation v (improved DDPM)."""
        return self.out_channels == 2 * self.in_channels

    @property
    def null_class(self) -> int:
        """The label that selects the unconditional model (classifier-free guidance)."""
        return self.num_classes

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return (self.in_channels, self.sample_size, self.sample_size)


def backbone_info(model: DiTTransformer2DModel) -> BackboneInfo:
    """The sizes of a built or loaded DiT, read from its diffusers config."""
    config = model.config
    return BackboneInfo(
        num_classes=config.num_embeds_ada_norm,
        in_channels=config.in_channels,
        out_channels=config.out_channels or config.in_channels,
        sample_size=config.sample_size,
        patch_size=config.patch_size,
    )


def _preset(name: str) -> Preset:
    if name not in PRESETS:
        known = ", ".join(PRESETS)
        raise ConfigError(f"model.preset: unknown preset '{name}'. Hint: one of {known}.")
    return PRESETS[name]


@torch.no_grad()
def _initialize_like_dit(model: DiTTransformer2DModel) -> None:
    """DiT's initialisation (Peebles & Xie, models.py), which diffusers does not apply.

    Xavier linear layers, small embeddings, and adaLN-Zero: every modulation and the output
    layer start at zero, so each block starts as the identity and the output as 0.
    """
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            nn.init.zeros_(module.bias)
    proj = model.pos_embed.proj
    nn.init.xavier_uniform_(proj.weight.view(proj.weight.shape[0], -1))
    nn.init.zeros_(proj.bias)
    first = model.transformer_blocks[0].norm1.emb
    nn.init.normal_(first.class_embedder.embedding_table.weight, std=0.02)
    nn.init.normal_(first.timestep_embedder.linear_1.weight, std=0.02)
    nn.init.normal_(first.timestep_embedder.linear_2.weight, std=0.02)
    for block in model.transformer_blocks:
        # The original shares one conditioning embedder; start every block's copy equal to it.
        block.norm1.emb.load_state_dict(first.state_dict())
        nn.init.zeros_(block.norm1.linear.weight)
        nn.init.zeros_(block.norm1.linear.bias)
    for layer in (model.proj_out_1, model.proj_out_2):
        nn.init.zeros_(layer.weight)
        nn.init.zeros_(layer.bias)


def create_backbone(
    preset: str, num_classes: int, in_channels: int, sample_size: int
) -> DiTTransformer2DModel:
    """A freshly initialised DiT of the named preset (for pretraining)."""
    spec = _preset(preset)
    if sample_size % spec.patch_size:
        raise ConfigError(
            f"model.preset '{preset}' uses patches of {spec.patch_size}, which do not tile "
            f"an input of {sample_size}. Hint: choose a preset whose patch size divides it."
        )
    model = DiTTransformer2DModel.from_config(spec.config(num_classes, in_channels, sample_size))
    _initialize_like_dit(model)
    return _finish(model, spec)


def load_backbone(
    preset: str,
    path: str | Path,
    *,
    num_classes: int | None = None,
    in_channels: int | None = None,
    sample_size: int | None = None,
) -> DiTTransformer2DModel:
    """Load a DiT of the named preset from a diffusers folder, a hub id or an original .pt.

    Folders and hub ids carry their own config (the sizes given here are ignored); an
    original DiT checkpoint has none, so it is built with the sizes given or the preset's
    defaults (DiT-XL/2: 1000 classes, 4 channels, 32x32 latents). Weights are read with
    safetensors or ``torch.load(weights_only=True)``, never by unpickling objects.
    """
    spec = _preset(preset)
    text = str(path)
    local = Path(path).expanduser()
    if local.suffix in (".pt", ".pth"):
        if not local.is_file():
            raise ConfigError(f"model.path: no such file {local}. Hint: {_LAYOUT_HINT}.")
        model = load_original_dit(local, spec.config(num_classes, in_channels, sample_size))
    elif local.is_dir():
        if (local / "transformer" / "config.json").is_file():
            model = _from_pretrained(str(local), "transformer")
        elif (local / "config.json").is_file():
            model = _from_pretrained(str(local), None)
        else:
            raise ConfigError(f"model.path: {local} holds no DiT config. Hint: {_LAYOUT_HINT}.")
    elif _HUB_ID.match(text) and not local.exists():
        model = _from_pretrained(text, "transformer")
    else:
        raise ConfigError(f"model.path: no such folder or file {local}. Hint: {_LAYOUT_HINT}.")
    _check_architecture(model, preset, spec, text)
    if spec.original_dit:
        share_block_embeddings(model)
    return _finish(model, spec)


def _from_pretrained(location: str, subfolder: str | None) -> DiTTransformer2DModel:
    try:
        # diffusers prefers safetensors and reads .bin weights with weights_only=True.
        return DiTTransformer2DModel.from_pretrained(location, subfolder=subfolder)
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"model.path: cannot load a DiT from {location} ({exc}). Hint: {_LAYOUT_HINT}; "
            "a hub id needs network access or the local Hugging Face cache."
        ) from None


def _check_architecture(
    model: DiTTransformer2DModel, preset: str, spec: Preset, location: str
) -> None:
    fields = ("num_layers", "num_attention_heads", "attention_head_dim", "patch_size")
    found = {name: model.config[name] for name in fields}
    wanted = {name: getattr(spec, name) for name in fields}
    if found != wanted:
        raise ConfigError(
            f"model.path: {location} holds a DiT with {found}, but model.preset '{preset}' "
            f"is {wanted}. Hint: set model.preset to the architecture of the checkpoint."
        )


def share_block_embeddings(model: DiTTransformer2DModel) -> bool:
    """Make every block use block 0's timestep + class embedder when all copies are equal.

    The original DiT has one ``t_embedder`` and one ``y_embedder``; diffusers copies them
    into every block, so DiffFit would train 28 separate class tables and bias sets on
    DiT-XL/2 (about 33 M parameters instead of the paper's ~2 M). Sharing the module
    restores the original model exactly (the copies are equal after loading). Returns
    whether the embedders were shared.
    """
    blocks = model.transformer_blocks
    first = blocks[0].norm1.emb.state_dict()
    for block in blocks[1:]:
        other = block.norm1.emb.state_dict()
        if any(not torch.equal(first[key], other[key]) for key in first):
            return False
    for block in blocks[1:]:
        block.norm1.emb = blocks[0].norm1.emb
    return True


def _finish(model: DiTTransformer2DModel, spec: Preset) -> DiTTransformer2DModel:
    if spec.original_dit:
        match_original_dit(model)
    disable_block_label_dropout(model)
    return model


def predict(
    model: DiTTransformer2DModel,
    x_t: Tensor,
    t: Tensor,
    labels: Tensor,
    weights: Mapping[str, Tensor] | None = None,
) -> Tensor:
    """The network output for noisy inputs ``x_t`` at timesteps ``t`` (one per item or one).

    With learned variance the first ``in_channels`` channels are eps and the rest the
    variance interpolation values; otherwise the output is eps. ``weights`` (named like
    the model's parameters) stand in for those parameters in this call only: fine-tuning
    trains them and sampling uses them without ever changing the shared model.
    """
    if t.ndim == 0:
        t = t.expand(x_t.shape[0])
    inputs = {"hidden_states": x_t, "timestep": t, "class_labels": labels}
    if not weights:
        return model(**inputs).sample
    return torch.func.functional_call(model, dict(weights), args=(), kwargs=inputs).sample
