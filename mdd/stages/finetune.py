"""Minimax fine-tuning of a pretrained DiT (METHOD.md sections 2 and 3).

The loop reads top to bottom: draw a batch of cached latents, noise it, predict,
add the diffusion loss and the two minimax criteria, step AdamW on the DiffFit
subset, update the EMA. Only the trainable subset and its EMA are saved: the
frozen weights are the base model's and are not copied. The loop trains its own
copies of the subset (``backbone.predict`` with ``weights``), so the shared base
model is the same before and after.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from mdd.config import FinetuneConfig
from mdd.data.latents import LatentSet
from mdd.diffusion.backbone import predict
from mdd.diffusion.base import Trainable
from mdd.diffusion.losses import diffusion_loss, predicted_x0
from mdd.diffusion.schedule import NoiseSchedule
from mdd.diffusion.training import (
    TrainState,
    check_finite,
    drop_labels,
    resume,
    save_checkpoint,
    update_ema,
)
from mdd.distributed import ALONE, World
from mdd.minimax import MinimaxCriteria
from mdd.progress import progress_bar
from mdd.runtime import autocast
from mdd.stages import MetricLogger


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
    cfg: FinetuneConfig,
    seed: int,
    folder: Path,
    device: torch.device,
    log: MetricLogger,
    world: World = ALONE,
) -> FinetuneSummary | None:
    """Fine-tune from the base's initial weights; write ``folder/ema.safetensors``.

    Split over a ``world`` (torchrun), every rank draws the same global batch of
    ``cfg.batch_size`` (one generator, one seed) and trains on its shard; gradients are
    averaged over the ranks, so the step is the one-process step of the global batch. Each
    rank keeps its own minimax memories of its shards, as the reference code's DDP ranks
    do. Rank 0 keeps the EMA, logs, checkpoints and writes the result; the others return
    None.

    Dataset labels reach the backbone as its class ids (``base.class_ids``: the identity
    for a base pretrained by mdd; ImageNet indices for DiT-XL/2). The length is
    ``cfg.steps`` or ``cfg.epochs`` over the cached latents; ``ema_decay: auto``
    gives the base the paper's share of the EMA at the end.
    """
    count = latents.labels.shape[0]
    total = cfg.total_steps(count)
    decay = cfg.decay_for(total)
    base = trainable.base
    model = base.transformer
    params = {name: t.clone().requires_grad_(True) for name, t in trainable.initial.items()}
    ema = {name: p.detach().clone() for name, p in params.items()}
    local = world.shard(cfg.batch_size)
    optimizer = torch.optim.AdamW(params.values(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    criteria = MinimaxCriteria(base.num_classes, cfg.memory_size, cfg.lambda_r, cfg.lambda_d)
    schedule = NoiseSchedule().to(device)
    generator = torch.Generator().manual_seed(seed)
    label_map = base.class_ids.to(device)

    checkpoints = folder / "checkpoints"
    # Memories are not checkpointed: they refill within a few steps, as in the paper's code.
    start = resume(checkpoints, params, ema, optimizer, generator)

    model.train()
    last_time, last_step = time.perf_counter(), start
    for step in progress_bar(range(start, total), desc="fine-tune", initial=start, total=total):
        index = torch.randint(count, (cfg.batch_size,), generator=generator)
        x0 = latents.sample(index, generator)
        classes = latents.labels[index]
        t = schedule.sample_timesteps(cfg.batch_size, generator)
        noise = torch.randn(x0.shape, generator=generator)
        dropped = drop_labels(label_map[classes.to(device)].cpu(), base.null_class,
                              cfg.label_dropout, generator)  # fmt: skip
        x0, classes, t, noise, dropped = (
            v[local].to(device) for v in (x0, classes, t, noise, dropped)
        )
        x_t = schedule.add_noise(x0, t, noise)
        with autocast(device):
            output = predict(model, x_t, t, dropped, params)
        output = output.float()
        terms = diffusion_loss(output, x0, x_t, t, noise, schedule, base.learned_variance)
        # The predicted clean latent keeps its gradient (METHOD.md section 2).
        predicted = predicted_x0(output, x_t, t, schedule)
        minimax = criteria(predicted, x0, classes)
        loss = terms.total + minimax.representativeness + minimax.diversity

        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        world.average_gradients(params.values())
        # Over the world, so that a NaN on one rank stops every rank at the same step.
        check_finite(world.mean_tensor(loss.detach()), step)
        optimizer.step()
        if world.main:
            update_ema(ema, params, decay)

        done = step + 1
        if done % 10 == 0 or done == total:
            now = time.perf_counter()
            rate = (done - last_step) / max(now - last_time, 1e-9)
            last_time, last_step = now, done
            losses = {
                "finetune/loss": loss.item(),
                "finetune/diffusion_loss": terms.total.item(),
                "finetune/mse": terms.mse.item(),
                "finetune/vb": terms.vb.item(),
                "finetune/representativeness": minimax.representativeness.item(),
                "finetune/diversity": minimax.diversity.item(),
            }
            metrics = world.mean(losses) | {
                "finetune/lr": cfg.lr,
                "finetune/steps_per_s": rate,
                "finetune/ema_base_share": decay**done,
            }
            if world.main:
                log(metrics, done)
        if done % cfg.checkpoint_every_steps == 0 and done < total and world.main:
            trained = {k: v.detach() for k, v in params.items()}
            state = TrainState(done, trained, ema, optimizer.state_dict(), generator.get_state())
            save_checkpoint(checkpoints, state)

    model.eval()
    if not world.main:
        return None
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
    return summary


@dataclass(frozen=True)
class FineTuned:
    """A finished fine-tune: the EMA weights sampling uses, where they lie, its summary."""

    weights: dict[str, torch.Tensor]
    path: Path
    summary: FinetuneSummary


def read_finetuned(folder: Path, device: torch.device) -> FineTuned:
    """What ``finetune`` wrote into ``folder``, the weights on ``device``."""
    path = folder / "ema.safetensors"
    summary = FinetuneSummary(**json.loads((folder / "finetune.json").read_text()))
    return FineTuned(load_file(str(path), device=str(device)), path, summary)
