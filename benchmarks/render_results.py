"""Render the quality grid's table from its result files, into the README or to stdout.

    .venv/bin/python benchmarks/render_results.py                  # print the table
    .venv/bin/python benchmarks/render_results.py --write README.md
    .venv/bin/python benchmarks/render_results.py --check README.md  # exit 1 if it differs
    .venv/bin/python benchmarks/render_results.py \
        --results benchmarks/results/fashion_mnist_pools --write README.md

The README holds the table between ``<!-- quality-fashion_mnist -->`` and
``<!-- /quality-fashion_mnist -->``; ``tests/test_quality_results.py`` checks that it is what
the committed files render, so no number there is typed by hand. Another folder of result
files (a study of one setting, such as the candidate pool's size, kept apart from the grid
because its cells share the grid's column names) renders into the block named after the
folder, ``<!-- quality-fashion_mnist_pools -->``: its plug-in table and sources only.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mdd.grid import render, replace_block

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion_mnist")
    parser.add_argument("--results", type=Path, help="result folder (default: the dataset's)")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--write", type=Path, metavar="README", help="replace the block there")
    action.add_argument("--check", type=Path, metavar="README", help="exit 1 if it differs")
    args = parser.parse_args(argv)
    body = render(args.dataset, RESULTS, args.results)
    block = f"quality-{args.results.resolve().name if args.results else args.dataset}"
    if args.write is None and args.check is None:
        print(body)
        return 0
    path = args.write or args.check
    text = path.read_text(encoding="utf-8")
    updated = replace_block(text, block, body)
    if args.check is not None:
        if updated != text:
            print(
                f"{path}: the quality table differs from the result files; run --write",
                file=sys.stderr,
            )
            return 1
        return 0
    path.write_text(updated, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
