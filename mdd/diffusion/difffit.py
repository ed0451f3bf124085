"""DiffFit partial fine-tuning of diffusers' DiT (METHOD.md section 3).

DiffFit trains only biases, normalisation affine parameters, the class embedding and
learnable scales gamma (initialised to 1) on the first half of the blocks; everything else
stays frozen. Parameters are selected by *module type*, not by name: in diffusers,
``norm1.linear.weight`` is the adaLN modulation projection (about a third of DiT-XL), not a
normalisation affine, and must stay frozen.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from diffusers import DiTTransformer2DModel
from diffusers.models.embeddings import LabelEmbedding
from torch import Tensor, nn

GAMMA_ATTN = "difffit_gamma_attn"
GAMMA_FF = "difffit_gamma_ff"
_NORM_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)


@dataclass(frozen=True)
class DiffFitSelection:
    """What ``apply_difffit`` left trainable; ``by_group`` counts parameters per kind."""

    names: list[str]
    trainable_params: int
    total_params: int
    by_group: dict[str, int] = field(default_factory=dict)


class _ScaleByGamma:
    """Forward hook: multiply a sub-module's output by a gamma stored on its block.

    A class rather than a closure so that ``copy.deepcopy`` (the EMA copy) points the
    copied hook at the copied block's gamma, not the original's.
    """

    def __init__(self, block: nn.Module, name: str) -> None:
        self.block = block
        self.name = name

    def __call__(self, module: nn.Module, args: tuple, output: Tensor) -> Tensor:
        return output * getattr(self.block, self.name)


def _add_gammas(model: DiTTransformer2DModel) -> None:
    # DiffFit: gamma scales the attention and the MLP output of the first half of the blocks,
    # before the adaLN-Zero gate and the residual sum (gate * gamma * f(x), both per channel).
    blocks = model.transformer_blocks
    for block in blocks[: len(blocks) // 2]:
        if hasattr(block, GAMMA_ATTN):
            continue
        like = block.norm1.linear.weight  # same device and dtype as the block
        for name, sub in ((GAMMA_ATTN, block.attn1), (GAMMA_FF, block.ff)):
            gamma = torch.ones(block.dim, device=like.device, dtype=like.dtype)
            block.register_parameter(name, nn.Parameter(gamma))
            sub.register_forward_hook(_ScaleByGamma(block, name))


def _group(model: nn.Module) -> dict[str, str]:
    """Parameter name -> DiffFit group, for the parameters DiffFit trains."""
    class_tables = {id(m.embedding_table) for m in model.modules() if isinstance(m, LabelEmbedding)}
    groups: dict[str, str] = {}
    for module_name, module in model.named_modules():
        prefix = f"{module_name}." if module_name else ""
        for param_name, _ in module.named_parameters(recurse=False):
            name = prefix + param_name
            if param_name in (GAMMA_ATTN, GAMMA_FF):
                groups[name] = "gamma"
            elif id(module) in class_tables:
                groups[name] = "class_embedding"
            elif isinstance(module, _NORM_TYPES):
                groups[name] = "norm"
            elif param_name == "bias":
                groups[name] = "bias"
    return groups


def apply_difffit(model: DiTTransformer2DModel) -> DiffFitSelection:
    """Add the gammas and make only the DiffFit subset trainable (in place).

    The model's output is unchanged until training moves the gammas away from 1. Calling it
    again is harmless. Load a ``trainable_state_dict`` with
    ``model.load_state_dict(state, strict=False)`` after calling this on the base model.
    """
    _add_gammas(model)
    groups = _group(model)
    by_group = dict.fromkeys(("bias", "norm", "class_embedding", "gamma"), 0)
    names, trainable, total = [], 0, 0
    for name, param in model.named_parameters():
        selected = name in groups
        param.requires_grad_(selected)
        total += param.numel()
        if selected:
            names.append(name)
            trainable += param.numel()
            by_group[groups[name]] += param.numel()
    return DiffFitSelection(names, trainable, total, by_group)


def trainable_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The parameters that require grad, detached copies: a small fine-tuning checkpoint."""
    return {
        name: param.detach().clone()
        for name, param in model.named_parameters()
        if param.requires_grad
    }


@torch.no_grad()
def fold_difffit_gammas(model: DiTTransformer2DModel) -> DiTTransformer2DModel:
    """Multiply the gammas into the layers they scale and remove them (in place).

    Afterwards the model is a plain ``DiTTransformer2DModel`` with the same outputs, so
    ``save_pretrained`` writes a folder that diffusers loads without mdd (a model still
    holding gammas would load in plain diffusers with them silently dropped).
    """
    for block in model.transformer_blocks:
        if not hasattr(block, GAMMA_ATTN):
            continue
        # attn1's output is to_out[0] (Linear) then dropout; ff's is its last Linear.
        for name, sub, linear in (
            (GAMMA_ATTN, block.attn1, block.attn1.to_out[0]),
            (GAMMA_FF, block.ff, block.ff.net[-1]),
        ):
            gamma = getattr(block, name)
            linear.weight.mul_(gamma[:, None])
            if linear.bias is not None:
                linear.bias.mul_(gamma)
            for key, hook in list(sub._forward_hooks.items()):
                if isinstance(hook, _ScaleByGamma):
                    del sub._forward_hooks[key]
            delattr(block, name)
    return model
