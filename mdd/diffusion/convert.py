"""Load checkpoints of the original DiT code (facebookresearch/DiT) into diffusers' DiT.

The paper fine-tunes the DiT-XL/2 released as ``DiT-XL-2-256x256.pt`` (METHOD.md section 3).
That file uses the key names of the original ``models.py``; diffusers' ``DiTTransformer2DModel``
names and arranges the same weights differently:

- ``attn.qkv`` is one fused projection; diffusers has ``attn1.to_q``, ``to_k``, ``to_v``;
- the timestep and class embedders are shared by all blocks in the original, while diffusers
  gives every block its own copy in ``norm1.emb`` (the final layer reads block 0's copy);
- the final layer's adaLN projection is ``proj_out_1`` and its linear layer ``proj_out_2``;
  both codes chunk the modulation in the same order (shift, scale, gate for blocks;
  shift, scale for the final layer), so no reordering is needed;
- ``pos_embed`` is the fixed 2D sin-cos table, which diffusers rebuilds itself.

Two constants of diffusers' DiT also differ from the original and are set back by
``match_original_dit``: the timestep frequencies (diffusers divides the exponent by
``half - 1``, the original by ``half``) and the epsilon of the pre-MLP LayerNorm
(diffusers 1e-5, the original 1e-6 everywhere). Without the first, weights trained by the
original code see timestep embeddings off by up to a third of a radian.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch
from diffusers import DiTTransformer2DModel
from torch import Tensor

from mdd.errors import ConfigError, DataError

ORIGINAL_NORM_EPS = 1e-6

# One-to-one renames inside block N: original prefix -> diffusers prefix (weight and bias).
_BLOCK_RENAMES = {
    "attn.proj": "attn1.to_out.0",
    "mlp.fc1": "ff.net.0.proj",
    "mlp.fc2": "ff.net.2",
    "adaLN_modulation.1": "norm1.linear",
}
# Shared embedders of the original, copied into every diffusers block.
_EMBEDDER_RENAMES = {
    "t_embedder.mlp.0.weight": "norm1.emb.timestep_embedder.linear_1.weight",
    "t_embedder.mlp.0.bias": "norm1.emb.timestep_embedder.linear_1.bias",
    "t_embedder.mlp.2.weight": "norm1.emb.timestep_embedder.linear_2.weight",
    "t_embedder.mlp.2.bias": "norm1.emb.timestep_embedder.linear_2.bias",
    "y_embedder.embedding_table.weight": "norm1.emb.class_embedder.embedding_table.weight",
}
_TOP_RENAMES = {
    "x_embedder.proj": "pos_embed.proj",
    "final_layer.adaLN_modulation.1": "proj_out_1",
    "final_layer.linear": "proj_out_2",
}


def convert_original_dit(state_dict: dict[str, Tensor], depth: int) -> dict[str, Tensor]:
    """Rename an original DiT state dict (``depth`` blocks) to ``DiTTransformer2DModel`` keys.

    The per-block copies of the shared embedders are the same tensor objects (no extra
    memory); ``load_state_dict`` copies them into each block's own parameters.
    """
    remaining = dict(state_dict)
    remaining.pop("pos_embed", None)  # fixed sin-cos table; diffusers' PatchEmbed rebuilds it

    def take(key: str) -> Tensor:
        if key not in remaining:
            raise DataError(
                f"not an original DiT checkpoint with {depth} blocks: key '{key}' is missing. "
                "Hint: expected the key layout of facebookresearch/DiT models.py "
                "(e.g. DiT-XL-2-256x256.pt)."
            )
        return remaining.pop(key)

    converted: dict[str, Tensor] = {}
    for old, new in _TOP_RENAMES.items():
        for suffix in ("weight", "bias"):
            converted[f"{new}.{suffix}"] = take(f"{old}.{suffix}")

    shared = {new: take(old) for old, new in _EMBEDDER_RENAMES.items()}
    for n in range(depth):
        block = f"transformer_blocks.{n}"
        for new, tensor in shared.items():
            converted[f"{block}.{new}"] = tensor
        for suffix in ("weight", "bias"):
            # The fused projection stacks q, k, v along the output dimension, in that order.
            q, k, v = take(f"blocks.{n}.attn.qkv.{suffix}").chunk(3, dim=0)
            converted[f"{block}.attn1.to_q.{suffix}"] = q
            converted[f"{block}.attn1.to_k.{suffix}"] = k
            converted[f"{block}.attn1.to_v.{suffix}"] = v
            for old, new in _BLOCK_RENAMES.items():
                converted[f"{block}.{new}.{suffix}"] = take(f"blocks.{n}.{old}.{suffix}")

    if remaining:
        extra = ", ".join(sorted(remaining)[:5])
        raise DataError(
            f"original DiT checkpoint has keys a {depth}-block DiT does not use: {extra}. "
            "Hint: check the preset's depth; checkpoints with extra parameters "
            "(e.g. DiffFit gammas) are not original DiT checkpoints."
        )
    return converted


def match_original_dit(model: DiTTransformer2DModel) -> DiTTransformer2DModel:
    """Set the two constants where diffusers' DiT differs from facebookresearch/DiT.

    The LayerNorm epsilon is also written to the config so it is saved with the model; the
    timestep frequency shift is not a config field of ``DiTTransformer2DModel``, so it must
    be set again after every load (``mdd.diffusion.backbone.load_backbone`` does).
    """
    for block in model.transformer_blocks:
        block.norm1.emb.time_proj.downscale_freq_shift = 0
        block.norm3.eps = ORIGINAL_NORM_EPS
    model.register_to_config(norm_eps=ORIGINAL_NORM_EPS)
    return model


def _read_checkpoint(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise ConfigError(
            f"{path}: no such original DiT checkpoint. Hint: download DiT-XL-2-256x256.pt "
            "from the facebookresearch/DiT release, or give a diffusers folder instead."
        )
    try:
        # weights_only: a checkpoint is data, never code to run.
        content: Any = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as exc:
        raise DataError(
            f"{path}: cannot read as a weights-only PyTorch checkpoint ({exc}). "
            "Hint: save the model or EMA state dict alone with torch.save(state_dict, path)."
        ) from None
    if isinstance(content, dict):
        # Training checkpoints of the DiT code hold {'model', 'ema', 'opt', ...}; sampling
        # uses the EMA weights (METHOD.md section 3).
        for key in ("ema", "model"):
            if isinstance(content.get(key), dict):
                content = content[key]
                break
    if not isinstance(content, dict) or not all(isinstance(v, Tensor) for v in content.values()):
        raise DataError(
            f"{path}: expected a state dict of tensors (or one under 'ema'/'model'). "
            "Hint: this is not an original DiT checkpoint."
        )
    return content


def load_original_dit(path: str | Path, preset_config: dict[str, Any]) -> DiTTransformer2DModel:
    """Build a ``DiTTransformer2DModel`` from ``preset_config`` and load an original DiT file.

    ``preset_config`` is the diffusers config of the architecture (for example from
    ``mdd.diffusion.backbone.PRESETS['DiT-XL/2'].config()``); it must match the checkpoint's
    sizes (classes, channels, latent size), which the error message names when it does not.
    """
    path = Path(path)
    state_dict = _read_checkpoint(path)
    model = match_original_dit(DiTTransformer2DModel.from_config(preset_config))

    expected_pos = model.pos_embed.pos_embed.shape
    pos_embed = state_dict.get("pos_embed")
    if pos_embed is not None and pos_embed.shape != expected_pos:
        side = int(pos_embed.shape[1] ** 0.5) * model.config.patch_size
        raise DataError(
            f"{path}: checkpoint is for latents of {side}x{side}, the config says "
            f"{model.config.sample_size}. Hint: DiT-XL-2-256x256.pt needs sample_size 32, "
            "DiT-XL-2-512x512.pt needs 64."
        )

    converted = convert_original_dit(state_dict, depth=model.config.num_layers)
    try:
        model.load_state_dict(converted, strict=True)
    except RuntimeError as exc:
        raise DataError(
            f"{path}: weights do not fit the configured DiT ({exc}). Hint: check the "
            "preset's num_classes, in_channels and learned variance (out_channels)."
        ) from None
    return model
