"""The quality grid: its columns, and its tables rendered from result files (``mdd.results``).

Each finished cell of ``benchmarks/quality_fmnist.py`` leaves
``benchmarks/results/<dataset>/<column>-ipc<N>.json``; the README's tables are rendered
from those files (``benchmarks/render_results.py``), never typed.
"""

from __future__ import annotations

import math
from functools import cache
from pathlib import Path
from typing import Any

from mdd.cells import ROOT, STANDARD
from mdd.config import FinetuneConfig, SampleConfig, load_config
from mdd.results import read_results, read_sets
from mdd.stats import compare, set_level

COLUMNS = ("random", "herding", "kcenter", "dit", "minimax", "minimax-swept", "full")
# Plug-in compositions (``mdd.methods``) of the grid, in a table of their own: MGD3's mode
# guidance, IGD's influence guidance and generate-then-select by the judge's confidence.
PLUGINS = (
    "base+mode",
    "dit+mode",
    "minimax+mode",
    "dit+influence",
    "dit+confidence",
    "minimax+confidence",
)


def load_results(folder: Path) -> list[dict[str, Any]]:
    """Every result file in ``folder``, sorted by IPC then column."""
    records = read_results(folder)
    order = {column: index for index, column in enumerate(COLUMNS + PLUGINS)}
    return sorted(records, key=lambda r: (r["ipc"], order.get(r["column"], len(order))))


def _cell(record: dict[str, Any] | None) -> str:
    if record is None:
        return "not run"
    return f"{record['last_acc_mean']:.2f} ± {record['last_acc_std']:.2f}"


def render_table(records: list[dict[str, Any]], published: dict[int, str]) -> str:
    """Rows IPC, columns the grid's methods, then the published DC / DSA / KIP figures."""
    by_cell = {(r["column"], r["ipc"]): r for r in records}
    ipcs = sorted({r["ipc"] for r in records} | set(published))
    lines = [
        "| IPC | " + " | ".join(COLUMNS) + " | DC / DSA / KIP, published |",
        "|" + "---|" * (len(COLUMNS) + 2),
    ]
    for ipc in ipcs:
        cells = [_cell(by_cell.get((column, ipc))) for column in COLUMNS]
        lines.append(f"| {ipc} | " + " | ".join(cells) + f" | {published.get(ipc, '')} |")
    return "\n".join(lines)


def render_plugins(records: list[dict[str, Any]], grid_columns: bool = False) -> str:
    """Rows IPC, columns the plug-in compositions (the grid's, then any other measured), with
    each cell's intra-class cosine (judge features) beside its accuracy; ``grid_columns``
    keeps the grid's columns too (a study folder of one setting holds any column)."""
    plugins = [r for r in records if grid_columns or r["column"] not in COLUMNS]
    if not plugins:
        return "No plug-in composition has a result file yet."
    measured = {r["column"] for r in plugins}
    known = [*COLUMNS, *PLUGINS]
    columns = [c for c in known if c in measured] + sorted(measured - set(known))
    by_cell = {(r["column"], r["ipc"]): r for r in plugins}
    lines = ["| IPC | " + " | ".join(columns) + " |", "|" + "---|" * (len(columns) + 1)]
    for ipc in sorted({r["ipc"] for r in plugins}):
        cells = []
        for column in columns:
            record = by_cell.get((column, ipc))
            cosine = (record or {}).get("diagnostics", {}).get("intra_cosine_features")
            text = _cell(record)
            # IPC 1 has no pair within a class: its intra-class cosine is NaN.
            shown = cosine is not None and math.isfinite(cosine)
            cells.append(f"{text} (cos {cosine:.3f})" if shown else text)
        lines.append(f"| {ipc} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# Columns whose set no seed changes (herding and k-center of real images, the whole split):
# one set, whatever --set-seeds asks.
DETERMINISTIC = ("herding", "kcenter", "full")
# What a set-level reading is compared with at its IPC: the real-image baselines.
REFERENCES = ("herding", "random")


def render_sets(folder: Path) -> str:
    """Cells drawn with several set seeds: mean ± std over the sets, and each against the
    real-image baselines at its IPC (paired by set, or against herding's one set); empty
    when no cell of ``folder`` has a second set."""
    sets = read_sets(folder)
    if not sets:
        return ""
    accuracies = {cell: [r["last_acc_mean"] for r in records] for cell, records in sets.items()}
    singles = {(r["column"], r["ipc"]): [r["last_acc_mean"]] for r in read_results(folder)}
    lines = [
        "| IPC | column | sets | mean ± std over sets | "
        + " | ".join(f"vs {ref}" for ref in REFERENCES)
        + " |",
        "|" + "---|" * (4 + len(REFERENCES)),
    ]
    for column, ipc in sorted(accuracies, key=lambda cell: (cell[1], cell[0])):
        values = accuracies[(column, ipc)]
        level = set_level(values)
        versus = []
        for reference in REFERENCES:
            other = accuracies.get((reference, ipc)) or singles.get((reference, ipc))
            # One set stands for a column only where no seed changes it (herding's).
            usable = other is not None and (len(other) > 1 or reference in DETERMINISTIC)
            versus.append(compare(values, other).text() if usable and reference != column else "")
        lines.append(
            f"| {ipc} | {column} | {level.sets} | {level.mean:.2f} ± {level.std:.2f} | "
            + " | ".join(versus)
            + " |"
        )
    return "\n".join(lines)


def render_sources(records: list[dict[str, Any]]) -> str:
    """One line per cell: where and when it was measured, and what it cost."""
    lines = []
    for r in records:
        machine = r["machine"]
        gpu = f", {machine['gpu']}" if machine.get("gpu") else ""
        # Files from before the flag have none; "unknown" is a copy without git.
        dirty = " with uncommitted changes" if r.get("git_dirty") == "true" else ""
        lines.append(
            f"- {r['column']} at IPC {r['ipc']}{_settings(r)}: {machine['cpu']} "
            f"({machine['cores']} cores{gpu}), torch {machine['torch']}, commit "
            f"{r['git_commit'][:7]}{dirty}, distillation {r['distill_wall_s']:.0f} s, evaluation "
            f"{r['eval_wall_s']:.0f} s{_levers(r)}."
        )
    return "\n".join(lines)


def _levers(record: dict[str, Any]) -> str:
    """How the evaluation computed (files from before the levers have none: fp32, eager)."""
    levers = record.get("eval_levers")
    if not levers:
        return ""
    compiled = "compiled" if levers["compiled"] else "eager"
    processes = levers["processes"]
    where = f"{processes} worker processes" if processes > 1 else "one process"
    return f" ({levers['precision']}, {compiled}, {where})"


@cache
def embedded_base() -> str:
    """The embedded default's base folder (``experiments/fashion_mnist.yaml``) as result
    files name a cell's base: relative to the checkout."""
    checkpoint = load_config(STANDARD.experiment).pretrain.checkpoint
    assert checkpoint is not None  # the embedded default ships its base
    return str(checkpoint.relative_to(ROOT) if checkpoint.is_absolute() else checkpoint)


def _settings(record: dict[str, Any]) -> str:
    """A cell's settings, in brackets: a plug-in's, and minimax weights and sampler settings
    other than the published ones and the embedded default's (which the notes name once)."""
    parts = []
    weights = (record.get("lambda_r"), record.get("lambda_d"))
    published = (FinetuneConfig().lambda_r, FinetuneConfig().lambda_d)
    if weights[0] is not None and ("+" in record["column"] or weights != published):
        parts.append(f"lambda_r {record['lambda_r']:g}, lambda_d {record['lambda_d']:g}")
    defaults = SampleConfig()
    if sampler := record.get("sampler"):  # only where it is not the embedded default's
        if (sampler["steps"], sampler["scheduler"]) != (defaults.steps, defaults.scheduler):
            parts.append(f"{sampler['steps']} {sampler['scheduler'].upper()} steps")
        if sampler["guidance_scale"] != defaults.guidance_scale:
            parts.append(f"guidance scale {sampler['guidance_scale']:g}")
        if start := sampler.get("start"):
            parts.append(f"from {start['kind']}, strength {start['strength']:g}")
    base = record.get("base")
    if base and base["checkpoint"] != embedded_base():  # the notes name the default's once
        parts.append(
            f"base {base['checkpoint']}: autoencoder {base['autoencoder_epochs']:g} epochs, "
            f"DiT {base['pretrain_epochs']:g}"
        )
    if guidance := record.get("guidance"):
        settings = {k: v for k, v in guidance.items() if k != "kind"}
        parts.append(f"{guidance['kind']} " + ", ".join(f"{k} {v}" for k, v in settings.items()))
    if record.get("through_autoencoder"):
        parts.append("decoded by the base's autoencoder")
    if selection := record.get("selection"):
        parts.append(f"{selection['kind']} of {selection['oversample']} x IPC candidates")
    return f" ({'; '.join(parts)})" if parts else ""


def replace_block(text: str, name: str, body: str) -> str:
    """``text`` with the lines between ``<!-- name -->`` and ``<!-- /name -->`` set to ``body``."""
    start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    if text.count(start) != 1 or text.count(end) != 1:
        raise ValueError(f"expected one '{start}' ... '{end}' block")
    head, rest = text.split(start)
    _, tail = rest.split(end)
    return f"{head}{start}\n{body}\n{end}{tail}"


# METHOD.md section 6: DC / DSA / KIP (network-transferred) on Fashion-MNIST, ConvNet-3.
PUBLISHED = {
    "fashion_mnist": {1: "70.5 / 70.6 / 73.8", 10: "82.3 / 84.6 / 86.8", 50: "83.6 / 88.7 / 87.8"}
}
WHOLE_SET = {"fashion_mnist": "about 93.5"}


def render(dataset: str, results: Path, folder: Path | None = None) -> str:
    """The grid of ``dataset``'s own folder under ``results`` (benchmarks/results), or the
    plug-in table of another folder (a study of one setting)."""
    grid = folder is None or folder.resolve() == (results / dataset).resolve()
    records = load_results(folder or results / dataset)
    sources = render_sources(records) or "- no cell has a result file yet."
    sets = render_sets(folder or results / dataset)
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
