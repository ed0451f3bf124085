"""Does the fine-tune reach the samples? Fine-tuning length against what the sets show.

For each fine-tuning length (epochs over the training split, EMA decay ``auto``) it
fine-tunes and samples ``dit`` (weights 0) and ``minimax`` at 1x, 10x and 100x the
published weights (0.002 / 0.008) with the same seeds, through the real pipeline up to
the surrogate set and its diagnostics (no evaluation), and tabulates per set: the base's
share of the EMA, the relative distance of the sampled weights from the base, the
fine-tuning time, the diagnostics (``mdd.eval.diagnostics``), and the mean absolute
pixel difference from the ``dit`` set of the same length (0 = the criteria changed
nothing). ``--old`` adds the former default (800 steps, EMA decay 0.9999); random real
images are the reference row. Every set is an MLflow run of experiment ``finetune_reach``.

    .venv/bin/python benchmarks/finetune_reach.py --epochs 1 2 [--old] [--json FILE]
        [--set K=V ...]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from mdd.cli import add_set_argument
from mdd.config import load_config
from mdd.core import Core
from mdd.data.surrogate import read_surrogate
from mdd.machine import hardware
from mdd.pipeline.execute import RunResult, run_with_core
from mdd.report import DIAGNOSTICS
from mdd.tracking import Tracker

ROOT = Path(__file__).resolve().parents[1]
PUBLISHED = (0.002, 0.008)
SCALES = {"dit": None, "minimax 1x": 1, "minimax 10x": 10, "minimax 100x": 100}
COLUMNS = (
    "finetune/ema_base_share",
    "finetune/weight_distance",
    "wall_s/finetune",
    *(f"surrogate/{name}" for name in DIAGNOSTICS),
)


def arm_overrides(scale: int | None, length: list[str]) -> list[str]:
    if scale is None:
        return ["method=dit", *length]
    lr, ld = (scale * w for w in PUBLISHED)
    return ["method=minimax", f"finetune.lambda_r={lr}", f"finetune.lambda_d={ld}", *length]


def surrogate_images(result: RunResult) -> Any:
    return read_surrogate(result.stages["sample"]["folder"] / "data").images.float() / 255


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=float, nargs="*", default=[1.0, 2.0])
    parser.add_argument(
        "--sets", nargs="+", choices=list(SCALES), default=list(SCALES), help="sets to make"
    )
    parser.add_argument("--old", action="store_true", help="add 800 steps, EMA decay 0.9999")
    parser.add_argument("--json", type=Path)
    add_set_argument(parser)
    args = parser.parse_args()
    if "dit" not in args.sets:
        parser.error("--sets must include dit: the pixel difference is measured against it")
    sets = [name for name in SCALES if name in args.sets]  # dit first

    lengths = {f"{e:g} epochs": [f"finetune.epochs={e}"] for e in args.epochs}
    if args.old:
        lengths["800 steps, EMA 0.9999"] = ["finetune.steps=800", "finetune.ema_decay=0.9999"]
    common = [*args.overrides, "tracking.experiment=finetune_reach"]
    base_config = load_config(ROOT / "experiments/fashion_mnist.yaml", common)
    core = Core.load(base_config.data, base_config.device)
    tracker = Tracker(base_config.tracking)
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []

    random_overrides = [*common, "method=random"]
    config = load_config(ROOT / "experiments/fashion_mnist.yaml", random_overrides)
    result = run_with_core(core, config, tracker, {"mdd.benchmark": "finetune_reach"}, "diagnose")
    rows.append({"length": "-", "set": "random real", **result.metrics})

    for length, length_overrides in lengths.items():
        reference = None
        for name in sets:
            scale = SCALES[name]
            overrides = [*common, *arm_overrides(scale, length_overrides)]
            config = load_config(ROOT / "experiments/fashion_mnist.yaml", overrides)
            tags = {"mdd.benchmark": "finetune_reach", "mdd.arm": f"{length} / {name}"}
            result = run_with_core(core, config, tracker, tags, "diagnose")
            images = surrogate_images(result)
            if reference is None:
                reference = images
            difference = float((images - reference).abs().mean())
            row = {"length": length, "set": name, **result.metrics, "pixel_mad_vs_dit": difference}
            rows.append(row)
            print(json.dumps(row), flush=True)

    header = ["length", "set", *COLUMNS, "pixel_mad_vs_dit"]
    print("| " + " | ".join(h.split("/")[-1] for h in header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        cells = [row["length"], row["set"]]
        cells += [f"{row[c]:.3f}" if c in row else "" for c in header[2:]]
        print("| " + " | ".join(cells) + " |")
    info = {"hardware": hardware(core.device), "wall_s": time.perf_counter() - started}
    print(json.dumps(info))
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, **info}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
