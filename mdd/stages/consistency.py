"""Class consistency of a base model: is it good enough to distill from?

METHOD.md section 4: the share of the model's class-conditional samples (default
sampler and guidance) that a ConvNet-3 trained on the real training split assigns
to the intended class. A usable base reaches at least 90 %.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from mdd.config import JudgeSpec, SampleConfig
from mdd.data import DatasetSplits
from mdd.data.surrogate import save_grid
from mdd.diffusion.base import BaseModel
from mdd.diffusion.sampling import make_labels
from mdd.eval.judge import Judge, load_judge
from mdd.stages.sample import generate_images


@dataclass
class ConsistencyResult:
    consistency: float  # share of samples classified as their intended class, 0..1
    per_class: list[float]
    judge_test_acc: float  # the judge's own accuracy on the real test split, %
    samples_per_class: int
    grid: Path
    wall_s: float

    def describe(self) -> str:
        per_class = " ".join(f"{100 * value:.0f}" for value in self.per_class)
        return (
            f"class consistency {100 * self.consistency:.1f} % "
            f"({self.samples_per_class} samples per class; per class %: {per_class}); "
            f"judge ConvNet-3 test accuracy {self.judge_test_acc:.1f} %; {self.wall_s:.0f} s"
        )


def consistency_of(
    judge: Judge, images: torch.Tensor, labels: torch.Tensor
) -> tuple[float, list[float]]:
    """Overall and per-class share of ``images`` the judge assigns to ``labels``."""
    predicted = judge.predict(images)
    hits = (predicted == labels).float()
    num_classes = int(labels.max()) + 1
    per_class = torch.zeros(num_classes).index_add_(0, labels, hits)
    per_class /= torch.bincount(labels, minlength=num_classes).clamp(min=1)
    return float(hits.mean()), per_class.tolist()


def class_consistency(
    data: DatasetSplits,
    base: BaseModel,
    sample: SampleConfig,
    seed: int,
    judge_spec: JudgeSpec,
    per_class: int,
    folder: Path,
    device: torch.device,
) -> ConsistencyResult:
    """Sample ``per_class`` images per class from ``base`` by ``sample`` with ``seed``, and
    judge them by the judge of ``judge_spec``."""
    started = time.perf_counter()
    num_classes = len(data.class_names)
    judge = load_judge(data, judge_spec, device)
    test_predictions = judge.predict(data.test.images)
    judge_acc = 100.0 * float((test_predictions == data.test.labels).float().mean())

    labels = make_labels(num_classes, per_class)
    images = generate_images(base, labels, sample, seed, device)
    consistency, per_class_share = consistency_of(judge, images, labels)

    folder.mkdir(parents=True, exist_ok=True)
    grid = folder / "consistency_grid.png"
    save_grid(images, labels, grid)
    result = ConsistencyResult(
        consistency=consistency,
        per_class=per_class_share,
        judge_test_acc=judge_acc,
        samples_per_class=per_class,
        grid=grid,
        wall_s=time.perf_counter() - started,
    )
    record = {**dataclasses.asdict(result), "grid": str(grid)}
    record["sample"] = sample.model_dump()
    (folder / "consistency.json").write_text(json.dumps(record, indent=2))
    return result
