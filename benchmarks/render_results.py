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

from quality_results import (
    RESULTS,
    load_results,
    render_plugins,
    render_sets,
    render_sources,
    render_table,
    replace_block,
)

# METHOD.md section 6: DC / DSA / KIP (network-transferred) on Fashion-MNIST, ConvNet-3.
PUBLISHED = {
    "fashion_mnist": {1: "70.5 / 70.6 / 73.8", 10: "82.3 / 84.6 / 86.8", 50: "83.6 / 88.7 / 87.8"}
}
WHOLE_SET = {"fashion_mnist": "about 93.5"}


def render(dataset: str, folder: Path | None = None) -> str:
    """The grid of ``dataset``'s own result folder, or the plug-in table of another one."""
    grid = folder is None or folder.resolve() == (RESULTS / dataset).resolve()
    records = load_results(folder or RESULTS / dataset)
    sources = render_sources(records) or "- no cell has a result file yet."
    sets = render_sets(folder or RESULTS / dataset)
    sets_text = (
        "Set-level readings: each set drawn with its own seed and evaluated by the same "
        "networks' seeds; a margin under two set-level stds is level "
        f"(`mdd/stats.py`):\n\n{sets}\n\n"
        if sets
        else ""
    )
    if not grid:
        return f"{render_plugins(records, grid_columns=True)}\n\n{sets_text}{sources}"
    table = render_table(records, PUBLISHED.get(dataset, {}))
    notes = "Last-epoch test accuracy %, mean ± std over the networks of each cell"
    if dataset in WHOLE_SET:
        # `full` is trained for fewer epochs than the protocol's 1000; the files say how many.
        epochs = sorted({r["epochs"] for r in records if r["column"] == "full"})
        length = f" for {' / '.join(map(str, epochs))} epochs" if epochs else ""
        notes += (
            f" (ConvNet-3, DC protocol); `full` trains on the whole training split{length} "
            f"(published: {WHOLE_SET[dataset]})."
        )
    else:
        notes += "."
    plugins = render_plugins(records)
    body = f"{table}\n\n{notes}\n\nPlug-in compositions (`mdd.methods`):\n\n{plugins}"
    return f"{body}\n\n{sets_text}{sources}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion_mnist")
    parser.add_argument("--results", type=Path, help="result folder (default: the dataset's)")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--write", type=Path, metavar="README", help="replace the block there")
    action.add_argument("--check", type=Path, metavar="README", help="exit 1 if it differs")
    args = parser.parse_args(argv)
    body = render(args.dataset, args.results)
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
