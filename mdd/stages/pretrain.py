"""Pretraining the embedded default's base model: a small autoencoder, then a latent DiT.

METHOD.md section 4: no pretrained DiT can be downloaded on an offline machine,
so mdd trains its own on the Fashion-MNIST training split, once. A pixel-space
DiT small enough for a CPU produced noise; a convolutional autoencoder to 7x7x4
latents plus a latent DiT works, and mirrors the paper's VAE + DiT pipeline.

The result is a *base folder* that loads without this code
(``mdd.diffusion.base.load_base``): ``autoencoder/`` (config.json + model.safetensors),
``transformer/`` (diffusers ``save_pretrained``, EMA weights) and ``base.json``.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
from diffusers import DiTTransformer2DModel

from mdd.config import BaseRecipe
from mdd.data import ImageSet
from mdd.data.latents import LatentSet, cached_latents
from mdd.diffusion.autoencoder import (
    Autoencoder,
    build_autoencoder,
    load_autoencoder,
    save_autoencoder,
    train_conv_autoencoder,
)
from mdd.diffusion.backbone import create_backbone, predict
from mdd.diffusion.losses import diffusion_loss
from mdd.diffusion.schedule import NoiseSchedule
from mdd.diffusion.training import (
    TrainState,
    check_finite,
    disable_block_label_dropout,
    drop_labels,
    resume,
    save_checkpoint,
    update_ema,
    warmup_lr,
)
from mdd.progress import progress_bar
from mdd.stages import MetricLogger


def prepare_autoencoder(
    train: ImageSet, recipe: BaseRecipe, folder: Path, device: torch.device, log: MetricLogger
) -> Autoencoder:
    """Stage 1 of pretraining: the autoencoder, saved in (and reloaded from) ``folder``.

    A ``conv`` autoencoder is trained here on the training split; the other kinds
    (identity for pixel space, a given VAE) are built from the config.
    """
    if (folder / "config.json").is_file():
        return load_autoencoder(folder).to(device)
    settings = recipe.autoencoder
    if settings.kind != "conv":
        autoencoder = build_autoencoder(settings)
        save_autoencoder(autoencoder, folder)
        return autoencoder.to(device)
    autoencoder = train_conv_autoencoder(
        train.images,
        latent_channels=settings.latent_channels,
        widths=settings.widths,
        epochs=settings.epochs,
        batch_size=settings.batch_size,
        lr=settings.lr,
        seed=recipe.seed,
        device=device,
        progress=True,
        on_step=lambda step, metrics: (
            log({f"ae/{k}": v for k, v in metrics.items()}, step) if step % 50 == 0 else None
        ),
    )
    save_autoencoder(autoencoder, folder)
    return autoencoder


def pretrain_transformer(
    latents: LatentSet,
    num_classes: int,
    recipe: BaseRecipe,
    folder: Path,
    device: torch.device,
    log: MetricLogger,
) -> DiTTransformer2DModel:
    """Stage 2: the latent DiT from scratch, with periodic checkpoints and resume."""
    pre = recipe.pretrain
    channels, height, _ = latents.mean.shape[1:]
    model = create_backbone(recipe.model.preset, num_classes, channels, height).to(device)
    # Labels are dropped once per sample below; diffusers would also drop them
    # independently in every block (METHOD.md section 3).
    disable_block_label_dropout(model)
    null_class = int(model.config.num_embeds_ada_norm)
    params = {name: p for name, p in model.named_parameters()}
    ema = {name: p.detach().clone() for name, p in params.items()}
    optimizer = torch.optim.AdamW(params.values(), lr=pre.lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(recipe.seed)
    schedule = NoiseSchedule().to(device)

    count = latents.mean.shape[0]
    total_steps = math.ceil(pre.epochs * count / pre.batch_size)
    checkpoints = folder / "checkpoints"
    start = resume(checkpoints, params, ema, optimizer, generator)
    if start:
        print(f"resuming pretraining at step {start} of {total_steps}")

    model.train()
    last_time, last_step = time.perf_counter(), start
    progress = progress_bar(
        range(start, total_steps), desc="pretrain DiT", initial=start, total=total_steps
    )
    for step in progress:
        lr = warmup_lr(pre.lr, step, pre.warmup_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        index = torch.randint(count, (pre.batch_size,), generator=generator)
        x0 = latents.sample(index, generator).to(device)
        labels = drop_labels(latents.labels[index], null_class, pre.label_dropout, generator)
        t = schedule.sample_timesteps(pre.batch_size, generator)
        noise = torch.randn(x0.shape, generator=generator)
        t, noise, labels = t.to(device), noise.to(device), labels.to(device)
        x_t = schedule.add_noise(x0, t, noise)
        output = predict(model, x_t, t, labels)
        loss = diffusion_loss(output, x0, x_t, t, noise, schedule, learned_variance=False).total
        check_finite(loss, step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        update_ema(ema, params, pre.ema_decay)

        done = step + 1
        if done % 50 == 0 or done == total_steps:
            now = time.perf_counter()
            rate = (done - last_step) / (now - last_time)
            last_time, last_step = now, done
            log(
                {"pretrain/loss": loss.item(), "pretrain/lr": lr, "pretrain/steps_per_s": rate},
                done,
            )
            progress.set_postfix(loss=f"{loss.item():.4f}")
        if done % pre.checkpoint_every_steps == 0 and done < total_steps:
            state = TrainState(
                done,
                {k: v.detach() for k, v in params.items()},
                ema,
                optimizer.state_dict(),
                generator.get_state(),
            )
            save_checkpoint(checkpoints, state)

    with torch.no_grad():
        for name, tensor in ema.items():
            params[name].copy_(tensor)
    model.eval()
    return model


def pretrain_base(
    train: ImageSet,
    class_names: list[str],
    data_fingerprint: str,
    recipe: BaseRecipe,
    folder: Path,
    device: torch.device,
    log: MetricLogger,
) -> Path:
    """Autoencoder, cached latents, then the DiT; writes the base folder and returns it."""
    started = time.perf_counter()
    autoencoder = prepare_autoencoder(train, recipe, folder / "autoencoder", device, log)
    latents = cached_latents(
        train.images,
        train.labels,
        autoencoder=autoencoder,
        data_fingerprint=data_fingerprint,
        flip=False,
        cache_dir=recipe.cache_dir / "latents",
        batch_size=512,
        device=device,
    )
    model = pretrain_transformer(latents, len(class_names), recipe, folder, device, log)
    model.save_pretrained(folder / "transformer", safe_serialization=True)
    manifest = {
        "class_names": class_names,
        "data_fingerprint": data_fingerprint,
        "preset": recipe.model.preset,
        "pretrain": recipe.pretrain.model_dump(mode="json"),
        "autoencoder": recipe.autoencoder.model_dump(mode="json"),
        "seed": recipe.seed,
        "wall_s": round(time.perf_counter() - started, 1),
    }
    (folder / "base.json").write_text(json.dumps(manifest, indent=2))
    return folder
