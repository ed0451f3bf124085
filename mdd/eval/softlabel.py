"""The soft-label evaluation protocol of RDED (Sun et al., CVPR 2024; LINs-lab/RDED
validation/), the one the field uses for ImageNet-1K: a frozen teacher labels every
augmented batch, and a fresh student learns the teacher's softened outputs.

Per batch, as RDED's ``validation/main.py`` and ``argument.py`` with its ImageNet-1K
script's settings (``--factor 2``, ``--re-epochs 300``):

- augmentation per image: the image cut into ``factor`` x ``factor`` patches, its column
  strips and then its row strips shuffled (``ShufflePatches``); RandomResizedCrop back to
  the image size with scale (1 / factor, 1); a horizontal flip with probability 1/2; the
  dataset's normalisation; then one CutMix box (Beta(1, 1)) for the whole batch;
- the teacher's logits on those images, softened: ``softmax(t / T)``, T = 20 (RDED's value
  with CutMix); the loss ``KL(softmax(t / T) || softmax(s / T))`` averaged over the batch
  (``KLDivLoss(reduction="batchmean")``, no T^2 factor, as RDED);
- AdamW (lr 0.001, betas 0.9 / 0.999, weight decay 0.01 on weight matrices and kernels
  only), its learning rate scaled per epoch by ``0.5 * (1 + cos(pi * epoch / epochs / 2))``
  (RDED's quarter cosine: from 1 down to 0.5);
- batch size by RDED's rule: 10 at IPC 1, 50 at IPC 10, 100 at IPC 50, twice that with 100
  classes or more, never above the set's size;
- tests every 10 epochs in the last fifth of training and after the last epoch, on test
  images resized to 8/7 of the size and centre-cropped back (RDED's validation transform).
  RDED reports the best of those tests; mdd reports the last and the best, named as such.

The numbers are soft-label accuracies: ``evaluate_surrogate`` logs them under ``soft/...``,
apart from every hard-label protocol's.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mdd.errors import ConfigError
from mdd.eval.augment import Draws, cutmix, random_resized_crop
from mdd.eval.networks import create_network
from mdd.eval.protocols import given_overrides
from mdd.eval.train import (
    EvalResult,
    Normalise,
    RepeatedResult,
    check_set,
    confusion_matrix,
    predict,
    summarize_runs,
)
from mdd.progress import progress_bar
from mdd.runtime import seed_everything


@dataclass(frozen=True)
class SoftProtocol:
    """RDED's student training; ``mean``/``std`` are the dataset's normalisation."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    batch_size: int
    epochs: int = 300
    lr: float = 0.001
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.01
    temperature: float = 20.0
    factor: int = 2  # patches per side, and the smallest crop is 1 / factor of the area
    max_scale: float = 1.0
    cutmix_beta: float = 1.0
    evaluations: int | None = None  # None: RDED's schedule (``tested``)
    eval_split: str = "test"
    name: str = "rded"
    image_size: int | None = None  # any: the protocol trains at the set's resolution

    def tested(self, epoch: int) -> bool:
        """Whether the student is tested after ``epoch`` (1-based)."""
        if epoch == self.epochs:
            return True
        if self.evaluations is not None:
            return epoch % max(1, self.epochs // self.evaluations) == 0
        # RDED: `epoch % 10 == 9 and epoch > 0.8 * epochs` with its epochs counted from 0.
        return epoch % 10 == 0 and epoch - 1 > 0.8 * self.epochs


def rded_batch_size(ipc: int, num_classes: int) -> int:
    """RDED's batch size: 10 / 50 / 100 at IPC 1 / 10 / 50 (an IPC in between takes the next
    larger one's), doubled with 100 classes or more, at most the set's size."""
    size = 10 if ipc <= 1 else 50 if ipc <= 10 else 100
    if num_classes >= 100:
        size *= 2
    return min(size, ipc * num_classes)


def resolve_soft_protocol(
    ipc: int,
    num_classes: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    overrides: dict[str, object] | None = None,
) -> SoftProtocol:
    """RDED's protocol for a set of ``ipc`` images per class, with non-None overrides."""
    given = given_overrides(overrides, "the rded protocol")
    return SoftProtocol(mean=mean, std=std, batch_size=rded_batch_size(ipc, num_classes), **given)


def lr_factor(epochs: int) -> Callable[[int], float]:
    """RDED's learning-rate factor after ``step`` epochs (LambdaLR, stepped each epoch)."""

    def factor(step: int) -> float:
        return 0.5 * (1.0 + math.cos(math.pi * step / epochs / 2)) if step <= epochs else 0.0

    return factor


def parameter_groups(net: nn.Module) -> list[dict[str, object]]:
    """RDED's ``get_parameters``: weight decay on weights of two or more dimensions only."""
    decayed, plain = [], []
    for name, parameter in net.named_parameters():
        (decayed if "weight" in name and parameter.dim() > 1 else plain).append(parameter)
    return [{"params": decayed}, {"params": plain, "weight_decay": 0.0}]


def shuffle_patches(x: torch.Tensor, factor: int, draws: Draws) -> torch.Tensor:
    """RDED's ShufflePatches per image: the ``factor`` column strips in a random order, then
    the ``factor`` row strips in another; [B, C, H, W] with H and W multiples of ``factor``."""
    b, c, h, w = x.shape
    if h % factor or w % factor:
        raise ConfigError(
            f"the rded protocol cuts images into {factor} x {factor} patches, but they are "
            f"{h} x {w} px. Hint: use an image size that is a multiple of {factor}."
        )
    for dim, size in ((3, w), (2, h)):
        order = torch.argsort(draws.rand(b, factor), dim=1)  # a permutation per image
        strip = size // factor
        position = torch.arange(size)
        source = order[:, position // strip] * strip + position % strip  # [B, size]
        source = source.to(x.device)
        shape = [b, 1, 1, 1]
        shape[dim] = size
        x = x.gather(dim, source.view(shape).expand(b, c, h, w))
    return x


def soft_augment(x: torch.Tensor, protocol: SoftProtocol, draws: Draws) -> torch.Tensor:
    """The student's and teacher's input: [0, 1] images, shuffled, cropped, flipped and
    normalised per image, then CutMix over the batch."""
    x = shuffle_patches(x, protocol.factor, draws)
    x = random_resized_crop(x, draws, scale=(1 / protocol.factor, protocol.max_scale))
    flip = draws.rand(x.shape[0]).to(x.device) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    x = Normalise(protocol, x.device)(x)
    labels = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)  # the teacher labels
    mixed, _, _ = cutmix(x, labels, draws, protocol.cutmix_beta)
    return mixed


def soft_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """RDED's loss: KL(softmax(teacher / T) || softmax(student / T)), mean over the batch."""
    target = F.softmax(teacher.float() / temperature, dim=1)
    log_student = F.log_softmax(student.float() / temperature, dim=1)
    return F.kl_div(log_student, target, reduction="batchmean")


def validation_view(images: torch.Tensor) -> torch.Tensor:
    """RDED's test transform on images already at the size: resize to 8/7, centre-crop back."""
    size = images.shape[-1]
    larger = size // 7 * 8
    if larger <= size:
        return images
    scaled = F.interpolate(
        images.float(), size=(larger, larger), mode="bilinear", antialias=True, align_corners=False
    )
    top = (larger - size) // 2
    return scaled[..., top : top + size, top : top + size].round().clamp(0, 255).to(torch.uint8)


Teacher = Callable[[torch.Tensor], torch.Tensor]  # normalised images -> logits per class
EpochCallback = Callable[[int, int, dict[str, float]], None]  # (repeat, epoch, metrics)


@dataclass(frozen=True)
class StudentJob:
    network: str
    images: torch.Tensor  # uint8 [N, C, H, W], the set
    test_images: torch.Tensor  # uint8, already in RDED's validation view
    test_labels: torch.Tensor
    protocol: SoftProtocol
    num_classes: int
    device: torch.device
    norm: str


def train_student(
    job: StudentJob, teacher: Teacher, seed: int, repeat: int, on_epoch: EpochCallback | None
) -> EvalResult:
    """One fresh student, initialised, shuffled and augmented from ``seed`` alone."""
    start = time.perf_counter()
    protocol, device = job.protocol, job.device
    seed_everything(seed)  # the student's weights come from the global RNG
    _, channels, size, _ = job.images.shape
    student = create_network(job.network, job.num_classes, channels, size, job.norm).to(device)
    draws = Draws([torch.Generator().manual_seed(seed)])
    optimizer = torch.optim.AdamW(
        parameter_groups(student),
        lr=protocol.lr,
        betas=protocol.betas,
        weight_decay=protocol.weight_decay,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(protocol.epochs))
    images = job.images.to(device)
    n = len(images)
    batch_size = min(protocol.batch_size, n)
    history: list[tuple[int, float, float]] = []
    preds = torch.empty(0, dtype=torch.long)
    for epoch in progress_bar(range(1, protocol.epochs + 1), desc=job.network, leave=False):
        student.train()
        order = torch.randperm(n, generator=draws.generators[0]).to(device)
        loss_sum = 0.0
        for first in range(0, n, batch_size):
            batch = images[order[first : first + batch_size]].float().div_(255.0)
            x = soft_augment(batch, protocol, draws)
            with torch.no_grad():
                target = teacher(x)
            loss = soft_loss(student(x), target, protocol.temperature)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += float(loss.detach()) * len(x)
        metrics = {"train_loss": loss_sum / n, "lr": optimizer.param_groups[0]["lr"]}
        scheduler.step()
        if protocol.tested(epoch):
            preds = predict(student, job.test_images, protocol, device)
            metrics["acc"] = 100.0 * int((preds == job.test_labels).sum()) / len(job.test_labels)
            history.append((epoch, metrics["train_loss"], metrics["acc"]))
        if on_epoch is not None:
            on_epoch(repeat, epoch, metrics)
    confusion = confusion_matrix(job.test_labels, preds, job.num_classes)
    per_class = 100.0 * confusion.diag().double() / confusion.sum(dim=1).clamp(min=1)
    best = max(history, key=lambda entry: entry[2])  # the earliest of equal bests
    return EvalResult(
        last_acc=history[-1][2],
        best_acc=best[2],
        best_epoch=best[0],
        history=history,
        per_class_acc=per_class.tolist(),
        confusion=confusion.tolist(),
        wall_s=time.perf_counter() - start,
    )


def evaluate_students(
    network: str,
    images: torch.Tensor,
    test_images: torch.Tensor,
    test_labels: torch.Tensor,
    teacher: Teacher,
    *,
    protocol: SoftProtocol,
    num_classes: int,
    repeats: int,
    seed: int,
    device: torch.device,
    norm: str,
    on_epoch: EpochCallback | None = None,
) -> RepeatedResult:
    """``repeats`` students with seeds ``seed .. seed + repeats - 1``, one after another.

    The set's own labels are not used: the teacher labels every batch."""
    if repeats < 1:
        raise ConfigError(f"eval.repeats: {repeats}. Hint: use at least 1.")
    check_set(test_images, test_labels, num_classes, "test")
    if images.dtype != torch.uint8 or images.dim() != 4 or len(images) == 0:
        raise ConfigError(f"the rded protocol needs uint8 [N, C, H, W] images, got {images.dtype}")
    job = StudentJob(
        network, images, validation_view(test_images), test_labels.long().cpu(), protocol,
        num_classes, device, norm,
    )  # fmt: skip
    runs = [train_student(job, teacher, seed + r, r, on_epoch) for r in range(repeats)]
    levers: dict[str, str | int] = {"precision": "fp32", "compiled": 0, "processes": 1}
    return summarize_runs(network, runs, levers | {"labels": "soft"})
