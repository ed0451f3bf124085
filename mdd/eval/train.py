"""Train a fresh evaluation network on a (surrogate) set and test it (METHOD.md section 5).

``evaluate_repeats`` runs R freshly initialised networks through a protocol (SGD with a
step schedule, the protocol's augmentation, and a test evaluation every
``protocol.eval_every`` epochs and at the end) and reports mean and standard deviation of
both the last and the best accuracy (the DC protocol reports the last, the paper's IDC
protocol the best). Accuracies are in percent.

The whole training set lives on the device as uint8; a batch is indexed, normalised and
augmented as one tensor, so nothing in the loop runs per image in Python. The R repeats
can train as one batched computation (``mdd/eval/ensemble.py``), each with its own
initialisation, data order and augmentation draws, so the results are those of R
independent runs.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mdd.errors import ConfigError, DataError
from mdd.eval.augment import Draws, cutmix, dsa_augment, idc_augment
from mdd.eval.ensemble import Ensemble
from mdd.eval.levers import Precision, resolve_levers
from mdd.eval.networks import create_network
from mdd.eval.protocols import Protocol, lr_milestones
from mdd.eval.workers import train_in_processes
from mdd.progress import progress_bar
from mdd.runtime import seed_everything

TEST_BATCH = 1024


@dataclass
class EvalResult:
    last_acc: float  # % on the test tensors after the last epoch
    best_acc: float  # % best over the evaluations made during training
    best_epoch: int
    history: list[tuple[int, float, float]]  # (epoch, mean train loss, test acc %)
    per_class_acc: list[float]  # % per class, last epoch
    confusion: list[list[int]]  # [true class][predicted class], last epoch
    wall_s: float


@dataclass
class RepeatedResult:
    network: str
    last_acc_mean: float
    last_acc_std: float  # population std (numpy's default), as the DC code reports
    best_acc_mean: float
    best_acc_std: float
    per_class_acc_mean: list[float]
    confusion: list[list[int]]  # summed over the repeats
    runs: list[EvalResult] = field(default_factory=list)
    levers: dict[str, str | int] = field(default_factory=dict)  # how it was computed


def summarize_runs(
    network: str, runs: list[EvalResult], levers: dict[str, str | int]
) -> RepeatedResult:
    """The repeats of one network as one result: mean and population std of the last and
    best accuracies, per-class accuracy averaged, confusion matrices summed."""
    last = np.array([run.last_acc for run in runs])
    best = np.array([run.best_acc for run in runs])
    return RepeatedResult(
        network=network,
        last_acc_mean=float(last.mean()),
        last_acc_std=float(last.std()),
        best_acc_mean=float(best.mean()),
        best_acc_std=float(best.std()),
        per_class_acc_mean=np.mean([run.per_class_acc for run in runs], axis=0).tolist(),
        confusion=np.sum([run.confusion for run in runs], axis=0).tolist(),
        runs=runs,
        levers=levers,
    )


def check_set(images: torch.Tensor, labels: torch.Tensor, num_classes: int, what: str) -> None:
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise DataError(
            f"{what} images: expected uint8 [N, C, H, W], got {images.dtype} "
            f"{list(images.shape)}. Hint: pass images as stored, before normalisation."
        )
    if labels.dim() != 1 or len(labels) != len(images) or len(images) == 0:
        raise DataError(
            f"{what}: {len(images)} images but labels of shape {list(labels.shape)}. "
            "Hint: one int64 label per image, at least one image."
        )
    if int(labels.min()) < 0 or int(labels.max()) >= num_classes:
        raise DataError(
            f"{what} labels: range [{int(labels.min())}, {int(labels.max())}] is outside "
            f"[0, {num_classes - 1}]. Hint: check num_classes."
        )


def _check_training(
    images: torch.Tensor, labels: torch.Tensor, protocol: Protocol, num_classes: int
) -> None:
    check_set(images, labels, num_classes, "training")
    channels, height = images.shape[1], images.shape[2]
    if len(protocol.mean) not in (1, channels):
        raise ConfigError(
            f"protocol {protocol.name!r} normalises {len(protocol.mean)} channel(s) but the "
            f"images have {channels}. Hint: pick the protocol made for this dataset."
        )
    if protocol.image_size is not None and height != protocol.image_size:
        raise ConfigError(
            f"protocol {protocol.name!r} expects {protocol.image_size} px images, got "
            f"{height} px. Hint: set data.image_size={protocol.image_size} or pick another "
            "protocol."
        )


class Normalise:
    def __init__(self, protocol: Protocol, device: torch.device) -> None:
        self.mean = torch.tensor(protocol.mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(protocol.std, device=device).view(1, -1, 1, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def _to_unit(images: torch.Tensor) -> torch.Tensor:
    # The default dtype (float32 unless a caller changed it, as the float64 tests do).
    return images.to(torch.get_default_dtype()).div_(255.0)


def _part_cross_entropy(out: torch.Tensor, y: torch.Tensor, parts: int) -> torch.Tensor:
    """Mean cross-entropy of each of ``parts`` equal parts of the batch: [parts]."""
    if parts == 1:
        return F.cross_entropy(out, y).reshape(1)
    return F.cross_entropy(out, y, reduction="none").view(parts, -1).mean(dim=1)


def batch_losses(
    forward: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    protocol: Protocol,
    normalise: Normalise,
    draws: Draws,
) -> torch.Tensor:
    """The training loss of each network on its part of a batch of uint8 images: [parts]."""
    parts = draws.parts
    if protocol.augmentation == "dsa":
        # DSA works on normalised images, as in the DC code.
        x = dsa_augment(
            normalise(_to_unit(x)), draws, protocol.dsa_strategy, protocol.dsa_per_sample
        )
        return _part_cross_entropy(forward(x), y, parts)
    if protocol.augmentation == "idc":
        x = normalise(idc_augment(_to_unit(x), draws))
        x, y_pasted, kept = cutmix(x, y, draws, protocol.cutmix_beta)
        out = forward(x)
        kept = kept.to(out.device, out.dtype)
        own = _part_cross_entropy(out, y, parts)
        return kept * own + (1 - kept) * _part_cross_entropy(out, y_pasted, parts)
    return _part_cross_entropy(forward(normalise(_to_unit(x))), y, parts)


@torch.inference_mode()
def _in_batches(
    fn: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    protocol: Protocol,
    device: torch.device,
) -> torch.Tensor:
    normalise = Normalise(protocol, device)
    outs = [fn(normalise(_to_unit(chunk.to(device)))).cpu() for chunk in images.split(TEST_BATCH)]
    return torch.cat(outs)


def predict(
    net: nn.Module, images: torch.Tensor, protocol: Protocol, device: torch.device
) -> torch.Tensor:
    """Predicted classes of uint8 images, in batches of ``TEST_BATCH``, on the CPU."""
    net.eval()
    return _in_batches(lambda x: net(x).argmax(dim=1), images, protocol, device)


def class_probabilities(
    net: nn.Module, images: torch.Tensor, protocol: Protocol, device: torch.device
) -> torch.Tensor:
    """Softmax class probabilities of uint8 images, in batches, float32 on the CPU."""
    net.eval()
    return _in_batches(lambda x: net(x).float().softmax(dim=1), images, protocol, device)


def extract_features(
    net: nn.Module, images: torch.Tensor, protocol: Protocol, device: torch.device
) -> torch.Tensor:
    """Penultimate features ``net.features`` of uint8 images, in batches, float32 on the CPU."""
    net.eval()
    return _in_batches(lambda x: net.features(x).float(), images, protocol, device)


def confusion_matrix(labels: torch.Tensor, preds: torch.Tensor, num_classes: int) -> torch.Tensor:
    flat = labels.long() * num_classes + preds.long()
    return torch.bincount(flat, minlength=num_classes**2).view(num_classes, num_classes)


def _compiled_forward(nets: list[nn.Module]) -> Callable[[torch.Tensor], torch.Tensor]:
    """One network compiled, in channels-last layout (oneDNN's preferred for convolutions).

    ``dynamic=False``: a set whose size is not a multiple of the batch has two batch sizes,
    and two static graphs run faster than one with a symbolic batch dimension."""
    if len(nets) != 1:
        raise ConfigError("a compiled evaluation trains one network at a time")
    net = nets[0].to(memory_format=torch.channels_last)
    graph = torch.compile(net, dynamic=False)
    return lambda x: graph(x.contiguous(memory_format=torch.channels_last))


RepeatEvaluate = Callable[[int, nn.Module], float]  # (repeat, net) -> acc %
RepeatCallback = Callable[[int, int, dict[str, float]], None]  # (repeat, epoch, metrics)


def train_group(
    network: str,
    train_images: torch.Tensor,
    train_labels: torch.Tensor,
    *,
    protocol: Protocol,
    num_classes: int,
    seeds: list[int],
    device: torch.device,
    norm: str,
    evaluate: RepeatEvaluate | None,
    on_epoch: RepeatCallback | None,
    progress: bool,
    snapshot: Callable[[int, list[nn.Module]], None] | None = None,
    snapshot_epochs: Collection[int] = (),
    bf16: bool = False,
    compiled: bool = False,
) -> tuple[list[nn.Module], list[list[tuple[int, float, float]]]]:
    """Train one fresh network per seed, all in one batched computation (an ``Ensemble``).

    Network r is initialised, shuffled and augmented from ``seeds[r]`` alone, exactly as a
    lone run with that seed: its weights from the global RNG seeded with it, its data
    order and augmentation from a generator seeded with it. ``bf16`` runs the forward pass
    under bf16 autocast; ``compiled`` (one seed only) trains a ``torch.compile``d copy of
    the graph in channels-last layout (``mdd/eval/levers.py`` says when either pays).
    """
    nets = []
    for seed in seeds:
        seed_everything(seed)  # the weights come from the global RNG, seeded here
        _, channels, height, _ = train_images.shape
        nets.append(create_network(network, num_classes, channels, height, norm).to(device))
    draws = Draws([torch.Generator().manual_seed(seed) for seed in seeds])
    graph = _compiled_forward(nets) if compiled else None  # before the optimiser takes them
    ensemble = Ensemble(nets)
    forward = graph or ensemble
    optimizer = torch.optim.SGD(
        ensemble.params,
        lr=protocol.lr,
        momentum=protocol.momentum,
        weight_decay=protocol.weight_decay,
    )
    scheduler = torch.optim.lr_scheduler.MultiStepLR(
        optimizer, milestones=lr_milestones(protocol), gamma=protocol.lr_decay
    )
    images = train_images.to(device)
    labels = train_labels.to(device=device, dtype=torch.long)
    normalise = Normalise(protocol, device)
    n = len(labels)
    batch_size = min(protocol.batch_size, n)  # a tiny surrogate set is one whole batch
    histories: list[list[tuple[int, float, float]]] = [[] for _ in seeds]
    epochs = range(1, protocol.epochs + 1)
    if snapshot is not None and 0 in snapshot_epochs:
        snapshot(0, ensemble.sync())  # the initialisation
    for epoch in progress_bar(epochs, desc=network, disable=not progress, leave=False):
        ensemble.train()
        orders = torch.stack([torch.randperm(n, generator=g) for g in draws.generators])
        orders = orders.to(device)
        loss_sum = torch.zeros(len(seeds), device=device)
        for start in range(0, n, batch_size):
            index = orders[:, start : start + batch_size]  # [R, b]: each network's own batch
            x, y = images[index].flatten(0, 1), labels[index].flatten()
            with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bf16):
                losses = batch_losses(forward, x, y, protocol, normalise, draws)
            optimizer.zero_grad(set_to_none=True)
            losses.sum().backward()  # the networks share no weight: each gets its own gradient
            optimizer.step()
            loss_sum += losses.detach() * index.shape[1]
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        tested = evaluate is not None and (epoch % protocol.eval_every == 0 or epoch == epochs[-1])
        trained = ensemble.sync() if tested else nets
        for r in range(len(seeds)):
            metrics = {"train_loss": float(loss_sum[r]) / n, "lr": lr}
            if tested:
                assert evaluate is not None
                metrics["acc"] = evaluate(r, trained[r])
                histories[r].append((epoch, metrics["train_loss"], metrics["acc"]))
            if on_epoch is not None:
                on_epoch(r, epoch, metrics)
        if snapshot is not None and epoch in snapshot_epochs:
            snapshot(epoch, ensemble.sync())
    return ensemble.sync(), histories


def train_network(
    network: str,
    train_images: torch.Tensor,
    train_labels: torch.Tensor,
    *,
    protocol: Protocol,
    num_classes: int,
    seed: int,
    device: torch.device | str,
    norm: str = "instance",
    progress: bool = False,
    snapshot: Callable[[int, list[nn.Module]], None] | None = None,
    snapshot_epochs: Collection[int] = (),
) -> nn.Module:
    """A freshly initialised ``network`` trained with ``protocol`` (no testing);
    ``snapshot(epoch, [network])`` is called at each of ``snapshot_epochs`` (0: before
    training)."""
    device = torch.device(device)
    _check_training(train_images, train_labels, protocol, num_classes)
    nets, _ = train_group(
        network,
        train_images,
        train_labels,
        protocol=protocol,
        num_classes=num_classes,
        seeds=[seed],
        device=device,
        norm=norm,
        evaluate=None,
        on_epoch=None,
        progress=progress,
        snapshot=snapshot,
        snapshot_epochs=snapshot_epochs,
    )
    return nets[0]


def train_trajectory(
    network: str,
    train_images: torch.Tensor,
    train_labels: torch.Tensor,
    *,
    protocol: Protocol,
    num_classes: int,
    seed: int,
    device: torch.device,
    epochs: Collection[int],
    progress: bool = False,
) -> list[dict[str, torch.Tensor]]:
    """The parameters of one network trained with ``protocol`` for ``max(epochs)`` epochs,
    as they were after each of ``epochs`` (0: the initialisation), on the CPU."""
    kept: list[dict[str, torch.Tensor]] = []

    def keep(_: int, nets: list[nn.Module]) -> None:
        kept.append({k: v.detach().cpu().clone() for k, v in nets[0].named_parameters()})

    train_network(
        network, train_images, train_labels,
        protocol=dataclasses.replace(protocol, epochs=max(epochs)), num_classes=num_classes,
        seed=seed, device=device, progress=progress, snapshot=keep, snapshot_epochs=set(epochs),
    )  # fmt: skip
    return kept


def batched_on(device: torch.device, batch_repeats: bool | str) -> bool:
    """Whether repeats train as one computation: ``auto`` batches them on CUDA only.

    On a CPU the vmapped (grouped) convolutions ran slower than one network at a time in
    ``benchmarks/speed.py`` (benchmark 6), so ``auto`` keeps them apart there.
    """
    if batch_repeats == "auto":
        return device.type == "cuda"
    return bool(batch_repeats)


@dataclass(frozen=True)
class RepeatJob:
    """What every repeat of one evaluation shares; picklable, for worker processes."""

    network: str
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor  # int64, CPU
    protocol: Protocol
    num_classes: int
    device: torch.device
    norm: str
    bf16: bool = False
    compiled: bool = False

    @property
    def steps(self) -> int:
        """Training steps of one network."""
        return training_steps(self.protocol, len(self.train_labels))


def training_steps(protocol: Protocol, images: int) -> int:
    """Optimiser steps one network takes on a set of ``images`` under ``protocol``."""
    return protocol.epochs * math.ceil(images / min(protocol.batch_size, images))


@dataclass
class Outcome:
    """One repeat's record: its last test predictions, history and wall time."""

    preds: torch.Tensor
    history: list[tuple[int, float, float]]
    wall_s: float


def train_and_test(
    job: RepeatJob, seeds: list[int], on_epoch: RepeatCallback | None, progress: bool = False
) -> list[Outcome]:
    """Train the networks of ``seeds`` as one group and test them as the protocol says."""
    start = time.perf_counter()
    last_preds = [torch.empty(0, dtype=torch.long) for _ in seeds]

    def evaluate(r: int, net: nn.Module) -> float:
        last_preds[r] = predict(net, job.test_images, job.protocol, job.device)
        return 100.0 * int((last_preds[r] == job.test_labels).sum()) / len(job.test_labels)

    _, histories = train_group(
        job.network,
        job.train_images,
        job.train_labels,
        protocol=job.protocol,
        num_classes=job.num_classes,
        seeds=seeds,
        device=job.device,
        norm=job.norm,
        evaluate=evaluate,
        on_epoch=on_epoch,
        progress=progress,
        bf16=job.bf16,
        compiled=job.compiled,
    )
    wall_s = (time.perf_counter() - start) / len(seeds)  # a batched run's share
    return [Outcome(p, h, wall_s) for p, h in zip(last_preds, histories, strict=True)]


def _in_this_process(
    job: RepeatJob,
    seeds: list[int],
    batched: bool,
    on_epoch: RepeatCallback | None,
    progress: bool,
) -> list[Outcome]:
    groups = [seeds] if batched else [[s] for s in seeds]
    outcomes: list[Outcome] = []
    for group in groups:
        offset = len(outcomes)

        def callback(r: int, epoch: int, metrics: dict[str, float], offset: int = offset) -> None:
            if on_epoch is not None:
                on_epoch(offset + r, epoch, metrics)

        outcomes += train_and_test(job, group, callback, progress)
    return outcomes


def evaluate_repeats(
    network: str,
    train_images: torch.Tensor,
    train_labels: torch.Tensor,
    test_images: torch.Tensor,
    test_labels: torch.Tensor,
    *,
    protocol: Protocol,
    num_classes: int,
    repeats: int,
    seed: int,
    device: torch.device | str,
    norm: str = "instance",
    batch_repeats: bool | str = "auto",
    precision: Precision = "fp32",
    compile: Literal["auto"] | bool = False,
    workers: Literal["auto"] | int = 1,
    on_epoch: RepeatCallback | None = None,
    progress: bool = False,
) -> RepeatedResult:
    """``repeats`` fresh networks with seeds ``seed .. seed + repeats - 1``.

    ``batch_repeats`` trains them as one batched computation (``True``), one after the
    other (``False``), or picks by device (``"auto"``, see ``batched_on``); ``workers``
    trains them in that many worker processes (CPU); ``precision`` and ``compile`` say how
    each network computes (``mdd.eval.levers.resolve_levers`` decides each ``auto``). The
    results are those of independent runs either way. The test runs every
    ``protocol.eval_every`` epochs and after the last; ``on_epoch(repeat, epoch, metrics)``
    runs after every epoch (1-based) of each repeat (0-based) with ``train_loss``, ``lr``
    and, when tested, ``acc``; an exception it raises (a pruner's) propagates.
    """
    if repeats < 1:
        raise ConfigError(f"eval.repeats: {repeats}. Hint: use at least 1.")
    device = torch.device(device)
    _check_training(train_images, train_labels, protocol, num_classes)
    check_set(test_images, test_labels, num_classes, "test")
    if train_images.shape[1:] != test_images.shape[1:]:
        raise DataError(
            f"training images are {list(train_images.shape[1:])} but test images are "
            f"{list(test_images.shape[1:])}. Hint: resize the surrogate set to the test size."
        )
    job = RepeatJob(
        network, train_images, train_labels, test_images, test_labels.long().cpu(),
        protocol, num_classes, device, norm,
    )  # fmt: skip
    batched = batched_on(device, batch_repeats) and repeats > 1
    levers = resolve_levers(
        precision=precision, compile=compile, workers=workers, device=device,
        repeats=repeats, steps=job.steps, batched=batched,
    )  # fmt: skip
    job = dataclasses.replace(job, bf16=levers.bf16, compiled=levers.compiled)
    seeds = [seed + r for r in range(repeats)]
    if levers.processes > 1:
        outcomes = train_in_processes(job, seeds, levers.processes, levers.threads, on_epoch)
    else:
        outcomes = _in_this_process(job, seeds, batched, on_epoch, progress)
    runs: list[EvalResult] = []
    for outcome in outcomes:
        confusion = confusion_matrix(job.test_labels, outcome.preds, num_classes)
        per_class = 100.0 * confusion.diag().double() / confusion.sum(dim=1).clamp(min=1)
        best = max(outcome.history, key=lambda entry: entry[2])  # the earliest of equal bests
        runs.append(
            EvalResult(
                last_acc=outcome.history[-1][2],
                best_acc=best[2],
                best_epoch=best[0],
                history=outcome.history,
                per_class_acc=per_class.double().tolist(),
                confusion=confusion.tolist(),
                wall_s=outcome.wall_s,
            )
        )
    return summarize_runs(network, runs, levers.describe())
