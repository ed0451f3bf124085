"""Evaluating a surrogate dataset: train fresh networks on it, test them on real images.

The surrogate folder is read through its on-disk format only, so generated and
selected sets are evaluated by exactly the same code (METHOD.md section 5).
Both last-epoch and best-epoch accuracy are reported, under names that say which.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on workers
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from mdd.config import Config  # noqa: E402
from mdd.data import DatasetSplits  # noqa: E402
from mdd.data.load import resize_images  # noqa: E402
from mdd.data.surrogate import read_surrogate  # noqa: E402
from mdd.eval.protocols import protocol_for  # noqa: E402
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


def evaluate_surrogate(
    surrogate: Path,
    data: DatasetSplits,
    config: Config,
    folder: Path,
    device: torch.device,
    log: MetricLogger,
    report: AccuracyReport | None = None,
) -> dict[str, float]:
    """Train ``eval.repeats`` networks of each ``eval.networks`` on the surrogate set.

    Metrics are named ``<split>/<network>/<last|best>_acc_<mean|std>`` in percent.
    ``report(epoch, acc)`` receives the first network's evaluations as they happen
    (a sweep's pruner listens there). Writes them, with the per-class accuracies, confusion
    matrices and every network's history, to ``folder/results.json`` (``read_results``).
    """
    dataset = read_surrogate(surrogate)
    ipc = dataset.manifest.get("ipc") or config.sample.ipc
    protocol = protocol_for(config, ipc)
    split = protocol.eval_split
    target = data.val if split == "val" else data.test
    size = protocol.image_size or target.images.shape[-1]
    train_images = resize_images(dataset.images, size)
    test_images = resize_images(target.images, size)
    num_classes = len(data.class_names)

    folder.mkdir(parents=True, exist_ok=True)
    metrics: dict[str, float] = {}
    results: dict[str, RepeatedResult] = {}
    for index, network in enumerate(config.eval.networks):

        def on_epoch(repeat: int, epoch: int, values: dict[str, float], net=network, i=index):
            log({f"eval/{net}/{repeat}/{k}": v for k, v in values.items()}, epoch)
            if report is not None and i == 0 and repeat == 0 and "acc" in values:
                report(epoch, values["acc"])

        result = evaluate_repeats(
            network,
            train_images,
            dataset.labels,
            test_images,
            target.labels,
            protocol=protocol,
            num_classes=num_classes,
            repeats=config.eval.repeats,
            seed=config.seed,
            device=device,
            norm=config.eval.norm,
            batch_repeats=config.eval.batch_repeats,
            precision=config.eval.precision,
            compile=config.eval.compile,
            workers=config.eval.workers,
            on_epoch=on_epoch,
            progress=True,
        )
        results[network] = result
        prefix = f"{split}/{network}"
        metrics[f"{prefix}/last_acc_mean"] = result.last_acc_mean
        metrics[f"{prefix}/last_acc_std"] = result.last_acc_std
        metrics[f"{prefix}/best_acc_mean"] = result.best_acc_mean
        metrics[f"{prefix}/best_acc_std"] = result.best_acc_std
        title = f"{network} on {split}, {config.eval.repeats} networks summed"
        _plot_confusion(
            result.confusion, data.class_names, title, folder / f"confusion_{network}.png"
        )

    folder.mkdir(parents=True, exist_ok=True)
    _plot_curves(results, split, folder / "curves.png")
    record = {
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
