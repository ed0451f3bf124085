"""Evaluating a surrogate dataset: train fresh networks on it, test them on real images.

The surrogate folder is read through its on-disk format only, so generated and
selected sets are evaluated by exactly the same code (METHOD.md section 5).
Both last-epoch and best-epoch accuracy are reported, under names that say which.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on workers
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from mdd.cache import file_identity  # noqa: E402
from mdd.config import DataConfig, EvalConfig  # noqa: E402
from mdd.data import DatasetSplits, ImageSet  # noqa: E402
from mdd.data.folders import imagenet_indices  # noqa: E402
from mdd.data.load import resize_images  # noqa: E402
from mdd.data.surrogate import read_surrogate  # noqa: E402
from mdd.eval.protocols import NORMALISATION, Protocol, eval_overrides, protocol_for  # noqa: E402
from mdd.eval.softlabel import (  # noqa: E402
    EpochCallback,
    SoftProtocol,
    evaluate_students,
    resolve_soft_protocol,
)
from mdd.eval.teacher import load_teacher  # noqa: E402
from mdd.eval.train import RepeatedResult, evaluate_repeats  # noqa: E402
from mdd.stages import MetricLogger  # noqa: E402

RESULTS_FILE = "results.json"
AccuracyReport = Callable[[int, float], None]


def _plot_confusion(confusion: list[list[int]], class_names: list[str], title: str, path: Path):
    figure, axis = plt.subplots(figsize=(7, 6))
    counts = torch.tensor(confusion, dtype=torch.float32)
    rates = counts / counts.sum(dim=1, keepdim=True).clamp(min=1)
    image = axis.imshow(rates.numpy(), cmap="Blues", vmin=0, vmax=1)
    axis.set_xticks(range(len(class_names)), class_names, rotation=90, fontsize=7)
    axis.set_yticks(range(len(class_names)), class_names, fontsize=7)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    axis.set_title(title, fontsize=9)
    figure.colorbar(image)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _plot_curves(results: dict[str, RepeatedResult], split: str, path: Path) -> None:
    figure, axis = plt.subplots(figsize=(7, 4))
    for network, result in results.items():
        for index, run in enumerate(result.runs):
            epochs = [epoch for epoch, _, _ in run.history]
            accs = [acc for _, _, acc in run.history]
            axis.plot(epochs, accs, label=f"{network} #{index}", alpha=0.8)
    axis.set_xlabel("epoch")
    axis.set_ylabel(f"{split} accuracy %")
    axis.legend(fontsize=7)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _labels_from_teacher(
    dataset_images: torch.Tensor,
    target: ImageSet,
    data: DatasetSplits,
    job: EvaluationJob,
    ipc: int,
    device: torch.device,
    on_epoch: Callable[[str, int], EpochCallback],
) -> tuple[SoftProtocol, dict[str, RepeatedResult], dict[str, object]]:
    """The rded protocol: every network of ``eval.networks`` as students of the teacher."""
    settings, source = job.settings, job.data
    teacher_config = settings.teacher
    assert teacher_config is not None  # the config's validator requires it with rded
    num_classes = len(data.class_names)
    mean, std = NORMALISATION[source.dataset]
    protocol = resolve_soft_protocol(ipc, num_classes, mean, std, eval_overrides(settings))
    _, channels, size, _ = dataset_images.shape
    imagenet = None
    if source.dataset == "imagenet_subset" and source.root is not None:
        imagenet = imagenet_indices(source.root, data.class_names)
    teacher = load_teacher(teacher_config, num_classes, channels, size, device, imagenet)
    results = {}
    for index, network in enumerate(settings.networks):
        results[network] = evaluate_students(
            network, dataset_images, target.images, target.labels, teacher,
            protocol=protocol, num_classes=num_classes, repeats=settings.repeats,
            seed=job.seed, device=device, norm=settings.norm,
            on_epoch=on_epoch(network, index),
        )  # fmt: skip
    about = {
        "network": teacher_config.network,
        "weights": str(teacher_config.weights),
        "weights_sha256": file_identity(teacher_config.weights),
        "classes": teacher.index.tolist() if teacher.index is not None else None,
    }
    return protocol, results, about


def _labels_given(
    train_images: torch.Tensor,
    train_labels: torch.Tensor,
    target: ImageSet,
    data: DatasetSplits,
    job: EvaluationJob,
    protocol: Protocol,
    device: torch.device,
    on_epoch: Callable[[str, int], EpochCallback],
) -> dict[str, RepeatedResult]:
    """A hard-label protocol: every network of ``eval.networks`` on the set's own labels."""
    settings = job.settings
    results = {}
    for index, network in enumerate(settings.networks):
        results[network] = evaluate_repeats(
            network,
            train_images,
            train_labels,
            target.images,
            target.labels,
            protocol=protocol,
            num_classes=len(data.class_names),
            repeats=settings.repeats,
            seed=job.seed,
            device=device,
            norm=settings.norm,
            batch_repeats=settings.batch_repeats,
            precision=settings.precision,
            compile=settings.compile,
            workers=settings.workers,
            on_epoch=on_epoch(network, index),
            progress=True,
        )
    return results


@dataclass(frozen=True)
class EvaluationJob:
    """What an evaluation takes from a run's config: the ``eval`` section, the ``data``
    section (the dataset's normalisation, the ImageNet root a teacher's classes map to),
    the IPC a set without one in its manifest is evaluated at, and the networks' seed."""

    settings: EvalConfig
    data: DataConfig
    ipc: int
    seed: int


def evaluate_surrogate(
    surrogate: Path,
    data: DatasetSplits,
    job: EvaluationJob,
    folder: Path,
    device: torch.device,
    log: MetricLogger,
    report: AccuracyReport | None = None,
) -> dict[str, float]:
    """Train ``eval.repeats`` networks of each ``eval.networks`` on the surrogate set.

    Metrics are named ``<split>/<network>/<last|best>_acc_<mean|std>`` in percent, and
    ``soft/<split>/...`` under the soft-label protocol (``rded``), so a teacher-labelled
    accuracy never stands where a hard-label one is read.
    ``report(epoch, acc)`` receives the first network's evaluations as they happen
    (a sweep's pruner listens there). Writes them, with the per-class accuracies, confusion
    matrices and every network's history, to ``folder/results.json`` (``read_results``).
    """
    dataset = read_surrogate(surrogate)
    ipc = dataset.manifest.get("ipc") or job.ipc
    settings = job.settings
    soft = settings.protocol == "rded"
    split = settings.split or "test"
    if not soft:
        hard = protocol_for(settings, job.data.dataset, ipc)
        split = hard.eval_split
    target = data.val if split == "val" else data.test
    size = (None if soft else hard.image_size) or target.images.shape[-1]
    train_images = resize_images(dataset.images, size)
    target = ImageSet(resize_images(target.images, size), target.labels)

    def on_epoch(network: str, index: int) -> EpochCallback:
        def logged(repeat: int, epoch: int, values: dict[str, float]) -> None:
            log({f"eval/{network}/{repeat}/{k}": v for k, v in values.items()}, epoch)
            if report is not None and index == 0 and repeat == 0 and "acc" in values:
                report(epoch, values["acc"])

        return logged

    folder.mkdir(parents=True, exist_ok=True)
    record: dict[str, object] = {"labels": "soft" if soft else "hard"}
    if soft:
        protocol, results, record["teacher"] = _labels_from_teacher(
            train_images, target, data, job, ipc, device, on_epoch
        )
    else:
        protocol = hard
        results = _labels_given(
            train_images, dataset.labels, target, data, job, hard, device, on_epoch
        )
    metrics: dict[str, float] = {}
    for network, result in results.items():
        prefix = ("soft/" if soft else "") + f"{split}/{network}"
        metrics[f"{prefix}/last_acc_mean"] = result.last_acc_mean
        metrics[f"{prefix}/last_acc_std"] = result.last_acc_std
        metrics[f"{prefix}/best_acc_mean"] = result.best_acc_mean
        metrics[f"{prefix}/best_acc_std"] = result.best_acc_std
        title = f"{network} on {split}, {settings.repeats} networks summed"
        _plot_confusion(
            result.confusion, data.class_names, title, folder / f"confusion_{network}.png"
        )
    _plot_curves(results, split, folder / "curves.png")
    record |= {
        "metrics": metrics,
        "protocol": protocol.__dict__,
        "split": split,
        "ipc": ipc,
        "per_class_acc": {
            network: dict(zip(data.class_names, result.per_class_acc_mean, strict=True))
            for network, result in results.items()
        },
        "confusion": {network: result.confusion for network, result in results.items()},
        "levers": {network: result.levers for network, result in results.items()},
        "runs": {
            network: [
                {"last_acc": run.last_acc, "best_acc": run.best_acc, "best_epoch": run.best_epoch}
                for run in result.runs
            ]
            for network, result in results.items()
        },
    }
    (folder / RESULTS_FILE).write_text(json.dumps(record, indent=2, default=list))
    return metrics


def read_results(folder: Path) -> dict[str, float]:
    """The metrics ``evaluate_surrogate`` wrote into ``folder``."""
    return json.loads((folder / RESULTS_FILE).read_text())["metrics"]
