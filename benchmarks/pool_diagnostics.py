"""Diagnostics of a generate-then-select cell's candidate pool beside those of the set it kept.

A selection plug-in can only keep what the sampler offered: whether a fine-tune (``minimax``
against ``dit``) widened the pool, and what the selection then kept of it, are two
questions the cell's own diagnostics (of the kept set alone) cannot tell apart. For each
``--methods`` column this reads the cell's pool (and its kept set, where that is cached
too) from the stage cache, where ``quality_fmnist.py`` left them when it ran the cell with
the same settings, and prints one markdown row each, in the judge's features and pixels,
against the real images.

    .venv/bin/python benchmarks/pool_diagnostics.py --ipc 1 --methods dit+kcenter
        minimax+kcenter [--quick] [--best-weights LR LD] [--set selection.oversample=128 ...]
"""

from __future__ import annotations

import argparse
import sys

from mdd.cells import (
    PUBLISHED_WEIGHTS,
    QUICK,
    STANDARD,
    Weights,
    cell_config,
    column_argument,
    tuning,
)
from mdd.cli import add_set_argument
from mdd.core import Core
from mdd.data.surrogate import read_surrogate
from mdd.errors import MddError
from mdd.eval.diagnostics import diagnose, real_data
from mdd.eval.judge import load_judge
from mdd.pipeline.plan import plan

SHOWN = (
    "intra_cosine_features",
    "intra_cosine_pixels",
    "recall",
    "coverage",
    "precision",
    "frechet_features",
    "nearest_real_cosine",
)


def _weights(column: str, best: list[float] | None) -> Weights | None:
    tuned = tuning(column)
    if tuned == "minimax":
        return PUBLISHED_WEIGHTS
    if tuned == "minimax-swept":
        if best is None:
            raise MddError(f"{column}: give the swept weights with --best-weights LR LD")
        return best[0], best[1]
    return None


def rows(args: argparse.Namespace) -> list[str]:
    """One table row for each column's pool and one for its kept set."""
    lines = [
        "| set | images | " + " | ".join(SHOWN) + " |",
        "|" + "---|" * (len(SHOWN) + 2),
    ]
    mode = QUICK if args.quick else STANDARD
    core: Core | None = None
    for column in args.methods:
        weights = _weights(column, args.best_weights)
        config = cell_config(mode, column, args.ipc, weights, args.overrides)
        if config.selection is None:
            raise MddError(f"{column}: no selection, so no candidate pool to diagnose")
        if core is None:  # the data, the judge and the real images are every column's
            core = Core.load(config.data, config.device)
            judge = load_judge(core.data, config.judge_spec, core.device)
            real = real_data(core.data)
        stages = {stage.name: stage for stage in plan(config, core.data.fingerprint)}
        if not stages["sample"].cached:
            raise MddError(
                f"{column} at IPC {args.ipc}: its candidate pool is not in the cache "
                f"{config.cache_dir}. Hint: run benchmarks/quality_fmnist.py with the same "
                "--ipc, --methods and --set first."
            )
        for part, stage in (("pool", "sample"), ("kept", "select")):
            if not stages[stage].cached:  # a cell read back from its result file
                lines.append(f"| {column} {part} | not in the cache |" + " |" * len(SHOWN))
                continue
            found = read_surrogate(stages[stage].folder / "data")
            values = diagnose(found.images, found.labels, judge, real)
            cells = " | ".join(f"{values[name]:.4f}" for name in SHOWN)
            lines.append(f"| {column} {part} | {len(found.labels)} | {cells} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="cells of quality_fmnist.py --quick")
    parser.add_argument("--ipc", type=int, required=True)
    parser.add_argument(
        "--methods", nargs="+", type=column_argument, required=True, metavar="COLUMN"
    )
    parser.add_argument("--best-weights", type=float, nargs=2, metavar=("LR", "LD"))
    add_set_argument(parser)
    args = parser.parse_args(argv)
    try:
        print("\n".join(rows(args)))
    except MddError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
