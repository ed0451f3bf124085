"""Pieces shared by the pretraining and fine-tuning loops: label dropout, EMA, checkpoints,
NaN guard.

diffusers' ``DiTTransformer2DModel`` gives every block its own class embedder, and each one
drops labels independently while in train mode. Classifier-free guidance training needs one
draw per sample, so ``disable_block_label_dropout`` switches that off and ``drop_labels``
drops once, before the forward pass (METHOD.md section 3).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers.models.embeddings import LabelEmbedding
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from mdd.errors import StageError


def disable_block_label_dropout(model: nn.Module) -> None:
    """Stop every block's class embedder from dropping labels on its own in train mode.

    The embedding tables keep their null-class row (diffusers sizes them at construction),
    so labels replaced by ``drop_labels`` still embed.
    """
    for module in model.modules():
        if isinstance(module, LabelEmbedding):
            module.dropout_prob = 0.0


def drop_labels(
    labels: Tensor, null_class: int, p: float, generator: torch.Generator | None = None
) -> Tensor:
    """Replace each label by ``null_class`` with probability ``p``, one draw per sample.

    This is the label dropout that trains the unconditional model for classifier-free
    guidance (METHOD.md section 3, p = 0.1). The generator may live on another device than
    the labels (a CPU generator keeps runs reproducible across devices).
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"label dropout probability must be in [0, 1], got {p}")
    device = labels.device if generator is None else generator.device
    draws = torch.rand(labels.shape, generator=generator, device=device).to(labels.device)
    return torch.where(draws < p, torch.full_like(labels, null_class), labels)


@torch.no_grad()
def update_ema(ema: Mapping[str, torch.Tensor], params: Mapping[str, torch.Tensor], decay: float):
    """``ema = decay * ema + (1 - decay) * param`` for every named tensor (DiT's update_ema)."""
    names = list(ema)
    ema_tensors = [ema[name] for name in names]
    new_tensors = [params[name].detach() for name in names]
    torch._foreach_lerp_(ema_tensors, new_tensors, 1.0 - decay)


def check_finite(loss: torch.Tensor, step: int, what: str = "loss") -> None:
    """Stop at the first NaN or infinite loss, naming the step; earlier checkpoints stay intact."""
    if not math.isfinite(loss.item()):
        raise StageError(
            f"{what} became {loss.item()} at step {step}. The last good checkpoint is kept. "
            "Hint: lower the learning rate or the minimax weights."
        )


def warmup_lr(base_lr: float, step: int, warmup_steps: int) -> float:
    if warmup_steps <= 0:
        return base_lr
    return base_lr * min(1.0, (step + 1) / warmup_steps)


@dataclass
class TrainState:
    """What a resumed loop needs: step, trainable tensors, their EMA, optimiser, RNG."""

    step: int
    params: dict[str, torch.Tensor]
    ema: dict[str, torch.Tensor]
    optimizer: dict
    generator: torch.Tensor


def save_checkpoint(folder: Path, state: TrainState) -> None:
    """Write ``folder/step-N/`` then point ``folder/latest`` at it atomically.

    A process killed mid-write leaves the previous checkpoint as the latest one,
    never half a file. Weights go to safetensors; the optimiser state is saved
    with ``torch.save`` and read back with ``weights_only=True`` (tensors and
    numbers only, no pickled code).
    """
    target = folder / f"step-{state.step}"
    target.mkdir(parents=True, exist_ok=True)
    tensors = {f"params/{k}": v.detach().cpu().contiguous() for k, v in state.params.items()}
    tensors |= {f"ema/{k}": v.detach().cpu().contiguous() for k, v in state.ema.items()}
    tensors["rng"] = state.generator
    save_file(tensors, str(target / "state.safetensors"))
    torch.save(state.optimizer, target / "optimizer.pt")
    pointer = folder / "latest.tmp"
    pointer.write_text(json.dumps({"step": state.step, "folder": target.name}))
    previous = _latest(folder)
    os.replace(pointer, folder / "latest")
    if previous is not None and previous != target:
        shutil.rmtree(previous, ignore_errors=True)


def _latest(folder: Path) -> Path | None:
    pointer = folder / "latest"
    if not pointer.is_file():
        return None
    return folder / json.loads(pointer.read_text())["folder"]


def load_checkpoint(folder: Path) -> TrainState | None:
    """The latest checkpoint under ``folder``, or None when there is none."""
    latest = _latest(folder)
    if latest is None:
        return None
    tensors = load_file(str(latest / "state.safetensors"))
    params = {k[len("params/") :]: v for k, v in tensors.items() if k.startswith("params/")}
    ema = {k[len("ema/") :]: v for k, v in tensors.items() if k.startswith("ema/")}
    optimizer = torch.load(latest / "optimizer.pt", weights_only=True)
    step = json.loads((folder / "latest").read_text())["step"]
    return TrainState(step, params, ema, optimizer, tensors["rng"])


def resume(
    folder: Path,
    params: Mapping[str, torch.Tensor],
    ema: Mapping[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
) -> int:
    """Restore a loop from its latest checkpoint under ``folder``, in place; the step to go
    on from (0 when there is no checkpoint)."""
    state = load_checkpoint(folder)
    if state is None:
        return 0
    with torch.no_grad():
        for name, tensor in state.params.items():
            params[name].copy_(tensor)
        for name, tensor in state.ema.items():
            ema[name].copy_(tensor)
    optimizer.load_state_dict(state.optimizer)
    generator.set_state(state.generator)
    return state.step
