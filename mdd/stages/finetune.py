"""Minimax fine-tuning of a pretrained DiT (METHOD.md sections 2 and 3).

The loop reads top to bottom: draw a batch of cached latents, noise it, predict,
add the diffusion loss and the two minimax criteria, step AdamW on the DiffFit
subset, update the EMA. Only the trainable subset and its EMA are saved: the
frozen weights are the base model's and are not copied.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from mdd.config import FinetuneConfig
from mdd.data.latents import LatentSet
from mdd.diffusion.difffit import apply_difffit, disable_block_label_dropout, drop_labels
from mdd.diffusion.losses import diffusion_loss
from mdd.diffusion.schedule import NoiseSchedule
from mdd.diffusion.training import (
    TrainState,
    check_finite,
    load_checkpoint,
    save_checkpoint,
    update_ema,
)
from mdd.minimax import MinimaxCriteria
from mdd.progress import progress_bar
from mdd.runtime import autocast
from mdd.stages.pretrain import BaseModel

MetricLogger = Callable[[dict[str, float], int], None]


@dataclass
class Trainable:
    """The fine-tunable view of a base model, prepared once and shared by many fine-tunings.

    ``initial`` holds the trainable tensors as they were before any fine-tuning,
    so every run (or sweep trial) starts from the same point without reloading
    the base model.
    """

    base: BaseModel
    params: dict[str, torch.nn.Parameter]
    initial: dict[str, torch.Tensor]
    selection: dict[str, int]  # counts by group, for logging

    def reset(self) -> None:
        with torch.no_grad():
            for name, tensor in self.initial.items():
                self.params[name].copy_(tensor)

    def load(self, tensors: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for name, tensor in tensors.items():
                self.params[name].copy_(tensor)


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
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    initial = {name: p.detach().clone() for name, p in params.items()}
    return Trainable(base, params, initial, counts)


@dataclass(frozen=True)
class FinetuneSummary:
    """How far the fine-tune moved the sampled model from the base (written as finetune.json)."""

    steps: int
    epochs: float  # over the training split
    ema_decay: float
    # The base weights' share of the EMA after ``steps``: decay ** steps (paper: 0.30).
    ema_base_share: float
    # ||sampled - base|| / ||base|| over the trained tensors: 0 means sampling sees the base.
    weight_distance: float

    def metrics(self) -> dict[str, float]:
        return {f"finetune/{key}": float(value) for key, value in self.__dict__.items()}


def relative_distance(
    tensors: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]
) -> float:
    """``||tensors - reference|| / ||reference||`` over all named tensors together."""
    moved = sum(
        float((tensors[n].detach().double() - r.double()).square().sum())
        for n, r in reference.items()
    )
    scale = sum(float(r.double().square().sum()) for r in reference.values())
    return (moved / max(scale, 1e-24)) ** 0.5


def finetune(
    trainable: Trainable,
    latents: LatentSet,
    label_map: torch.Tensor,
    cfg: FinetuneConfig,
    seed: int,
    folder: Path,
    device: torch.device,
    log: MetricLogger,
) -> FinetuneSummary:
    """Fine-tune from the base's initial weights; write ``folder/ema.safetensors``.

    ``label_map`` maps dataset class indices to the backbone's class ids (identity
    for a base pretrained by mdd; ImageNet indices for DiT-XL/2). The length is
    ``cfg.steps`` or ``cfg.epochs`` over the cached latents; ``ema_decay: auto``
    gives the base the paper's share of the EMA at the end.
    """
    count = latents.labels.shape[0]
    total = cfg.total_steps(count)
    decay = cfg.decay_for(total)
    trainable.reset()
    base = trainable.base
    model = base.transformer
    params = trainable.params
    ema = {name: p.detach().clone() for name, p in params.items()}
    optimizer = torch.optim.AdamW(params.values(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    criteria = MinimaxCriteria(base.num_classes, cfg.memory_size, cfg.lambda_r, cfg.lambda_d)
    schedule = NoiseSchedule().to(device)
    generator = torch.Generator().manual_seed(seed)
    label_map = label_map.to(device)
    channels = base.latent_shape[0]

    checkpoints = folder / "checkpoints"
    start = 0
    if (state := load_checkpoint(checkpoints)) is not None:
        # Memories are not checkpointed: they refill within a few steps, as in the paper's code.
        trainable.load(state.params)
        ema = {name: tensor.to(device) for name, tensor in state.ema.items()}
        optimizer.load_state_dict(state.optimizer)
        generator.set_state(state.generator)
        start = state.step

    model.train()
    last_time, last_step = time.perf_counter(), start
    for step in progress_bar(range(start, total), desc="fine-tune", initial=start, total=total):
        index = torch.randint(count, (cfg.batch_size,), generator=generator)
        x0 = latents.sample(index, generator).to(device)
        classes = latents.labels[index].to(device)
        t = torch.randint(0, schedule.num_timesteps, (cfg.batch_size,), generator=generator)
        noise = torch.randn(x0.shape, generator=generator).to(device)
        dropped = drop_labels(
            label_map[classes].cpu(), base.null_class, cfg.label_dropout, generator
        )
        t, dropped = t.to(device), dropped.to(device)
        x_t = schedule.add_noise(x0, t, noise)
        with autocast(device):
            output = model(hidden_states=x_t, timestep=t, class_labels=dropped).sample
        output = output.float()
        terms = diffusion_loss(output, x0, x_t, t, noise, schedule, base.learned_variance)
        # The predicted clean latent keeps its gradient (METHOD.md section 2).
        predicted = schedule.predict_x0(x_t, t, output[:, :channels])
        minimax = criteria(predicted, x0, classes)
        loss = terms.total + minimax.representativeness + minimax.diversity
        check_finite(loss, step)

        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        update_ema(ema, params, decay)

        done = step + 1
        if done % 10 == 0 or done == total:
            now = time.perf_counter()
            rate = (done - last_step) / max(now - last_time, 1e-9)
            last_time, last_step = now, done
            metrics = {
                "finetune/loss": loss.item(),
                "finetune/diffusion_loss": terms.total.item(),
                "finetune/mse": terms.mse.item(),
                "finetune/vb": terms.vb.item(),
                "finetune/representativeness": minimax.representativeness.item(),
                "finetune/diversity": minimax.diversity.item(),
                "finetune/lr": cfg.lr,
                "finetune/steps_per_s": rate,
                "finetune/ema_base_share": decay**done,
            }
            log(metrics, done)
        if done % cfg.checkpoint_every_steps == 0 and done < total:
            trained = {k: v.detach() for k, v in params.items()}
            state = TrainState(done, trained, ema, optimizer.state_dict(), generator.get_state())
            save_checkpoint(checkpoints, state)

    model.eval()
    folder.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.detach().cpu().contiguous() for k, v in ema.items()}, folder / "ema.safetensors"
    )
    summary = FinetuneSummary(
        steps=total,
        epochs=total * cfg.batch_size / count,
        ema_decay=decay,
        ema_base_share=decay**total,
        weight_distance=relative_distance(ema, trainable.initial),
    )
    (folder / "finetune.json").write_text(json.dumps(summary.__dict__, indent=2))
    trainable.reset()
    return summary


def read_summary(folder: Path) -> FinetuneSummary:
    """The summary a finished fine-tune wrote into its folder."""
    return FinetuneSummary(**json.loads((folder / "finetune.json").read_text()))


def load_finetuned(trainable: Trainable, path: Path) -> None:
    """Put fine-tuned EMA weights into the shared model (``trainable.reset()`` undoes it)."""
    trainable.load(load_file(str(path)))
