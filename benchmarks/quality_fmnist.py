"""Quality benchmark on Fashion-MNIST: every method at every IPC, through the real pipeline.

Cells are (method, IPC): ``random``, ``herding``, ``kcenter``, ``dit`` (minimax weights 0),
``minimax`` with the published weights, ``minimax-swept`` with the best weights of the sweep
``sweeps/fashion_mnist.yaml``, and ``full`` (the whole training split); IPC 1, 10 and 50.
Every cell is ``experiments/fashion_mnist.yaml`` with overrides, evaluated by ConvNet-3 with
the DC protocol (last-epoch test accuracy), and recorded as one top-level MLflow run like
``mdd-run`` records it, so ``mdd report --experiment quality_fmnist`` shows the same numbers.
All cells run in this one process on one ``Core``: the dataset and the base model are loaded
once, and the stage cache shares what cells have in common (one fine-tuning serves every IPC).

It prints a markdown table (rows IPC, columns methods, cells "mean ± std (distillation wall
s)"), the total wall time and the hardware; ``--out`` also writes table.md and results.json.
``--quick`` runs the smoke experiment's sizes instead (CI keeps the script working with it).

    .venv/bin/python benchmarks/quality_fmnist.py [--quick] [--ipc 1 10 50] [--methods ...]
        [--repeats 3] [--full-epochs 20] [--best-weights LR LD] [--out FOLDER] [--set K=V ...]
        [--cached-only]

Each cell it finishes also writes a result file under ``benchmarks/results/fashion_mnist/``
(``mdd.results``, tabulated by ``mdd.grid``), which a rerun reads back instead of recomputing
the cell while the settings it depends on are unchanged; the README's table is rendered from
those files.

The stage cache makes it resumable as well: a cell computed by an earlier run (or by
``mdd-run`` with the same settings) is read back, not recomputed, so the hours of the full
grid can be spent in parts (``--ipc``, ``--methods``) and tabulated with ``--cached-only``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mdd.cells import (
    GRID_KEYS,
    NETWORK,
    PUBLISHED_WEIGHTS,
    QUICK,
    ROOT,
    STANDARD,
    Weights,
    cell_config,
    column_argument,
    result_hash,
    tuning,
)
from mdd.cli import add_set_argument, stop_on_sigterm
from mdd.config import GENERATIVE, Config
from mdd.core import Core
from mdd.errors import ConfigError, MddError, StageError
from mdd.eval.judge import judge_identity
from mdd.eval.protocols import protocol_for
from mdd.grid import COLUMNS, DETERMINISTIC, PLUGINS
from mdd.machine import hardware
from mdd.pipeline.execute import RunResult, run_with_core
from mdd.pipeline.plan import plan as stage_plan
from mdd.report import DIAGNOSTICS, mean_std
from mdd.results import read_result, set_path, write_result
from mdd.stats import set_level
from mdd.sweep import best_params
from mdd.tracking import Tracker, git_state, redact


@dataclass
class Cell:
    """One (method, IPC) cell: its numbers, or why it has none."""

    column: str
    ipc: int
    status: str = "to run"  # done, resumed (from its result file), skipped, failed, not run
    note: str = ""
    last_acc_mean: float | None = None
    last_acc_std: float | None = None
    distill_wall_s: float | None = None
    eval_epochs: int | None = None
    repeats: int | None = None
    cached_stages: list[str] = field(default_factory=list)
    # The networks' mean accuracy on each set drawn (--set-seeds), set 0 (this cell's) first.
    set_accs: list[float] = field(default_factory=list)
    set_failures: list[str] = field(default_factory=list)

    def text(self) -> str:
        if self.status not in ("done", "resumed"):
            return self.status
        if len(self.set_accs) > 1:
            level = set_level(self.set_accs)
            accuracy = f"{mean_std(level.mean, level.std)} over {level.sets} sets"
        else:
            accuracy = mean_std(self.last_acc_mean, self.last_acc_std)
        return f"{accuracy} ({self.distill_wall_s:.1f} s)"


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)


def swept_weights(args: argparse.Namespace, sweep: Path) -> tuple[Weights | None, str]:
    """The minimax-swept weights and where they come from; None (with why) when there are none."""
    if args.best_weights is not None:
        return tuple(args.best_weights), "given on the command line (--best-weights)"
    best = best_params(sweep, storage=args.storage)
    where = f"sweep {_shown(sweep)}"
    if best is None:
        return None, (
            f"skipped: {where} has no complete trial in "
            f"{redact(args.storage) if args.storage else 'its default Optuna storage'} and "
            "no --best-weights was given. Hint: run `mdd-sweep` first, or pass --best-weights."
        )
    keys = ("finetune.lambda_r", "finetune.lambda_d")
    if not all(key in best.params for key in keys):
        return None, f"skipped: {where} does not search {' and '.join(keys)}."
    values = ", ".join(f"{value:.4g}" for value in best.values)
    source = (
        f"the best trial (#{best.number}, objective {values}) of study {best.study} "
        f"in {redact(best.storage)}; only its weights are used"
    )
    return (float(best.params[keys[0]]), float(best.params[keys[1]])), source


def with_set_seed(config: Config, seed: int) -> Config:
    """``config`` drawing its set with ``seed`` (``sample.seed``), all else the same."""
    return config.model_copy(update={"sample": config.sample.model_copy(update={"seed": seed})})


def _machine(info: dict[str, Any]) -> dict[str, Any]:
    gpu = info["device_name"] if info["device"].startswith("cuda") else None
    return {
        "cpu": info["cpu_model"],
        "cores": info["usable_cores"],
        "gpu": gpu,
        "torch": info["torch_version"],
        "torch_threads": info["torch_threads"],
        "cpu_flags": info["cpu_flags"],
    }


def cell_record(
    cell: Cell, config: Config, core: Core, result: RunResult, weights: Weights | None
) -> dict[str, Any]:
    """The result file's content: what ran, what came out, what it cost, and where."""
    evaluated = json.loads((result.stages["evaluate"]["folder"] / "results.json").read_text())
    git = git_state()
    runs = evaluated["runs"][NETWORK]
    metrics = result.metrics
    return {
        "column": cell.column,
        "ipc": cell.ipc,
        "method": config.method,
        "composition": config.composition,
        "guidance": config.sample.guidance.model_dump() if config.sample.guidance else None,
        "selection": config.selection.model_dump() if config.selection else None,
        # Real images decoded from the base's latents (sample.through_autoencoder).
        "through_autoencoder": config.sample.through_autoencoder,
        "sampler": {  # the sampling settings of a generated set; None for real images
            "steps": config.sample.steps,
            "scheduler": config.sample.scheduler,
            "guidance_scale": config.sample.guidance_scale,
            # Where each sample begins (sample.start); None: pure noise.
            "start": config.sample.start.model_dump() if config.sample.start else None,
        }
        if config.method in GENERATIVE
        else None,
        # The weights the fine-tune ran with: a --set override comes after the cell's own.
        "lambda_r": config.finetune.lambda_r if weights else None,
        "lambda_d": config.finetune.lambda_d if weights else None,
        "protocol": config.eval.protocol,
        "network": NETWORK,
        "epochs": cell.eval_epochs,
        "repeats": cell.repeats,
        "last_acc": [run["last_acc"] for run in runs],
        "best_acc": [run["best_acc"] for run in runs],
        "last_acc_mean": metrics[f"test/{NETWORK}/last_acc_mean"],
        "last_acc_std": metrics[f"test/{NETWORK}/last_acc_std"],
        "best_acc_mean": metrics[f"test/{NETWORK}/best_acc_mean"],
        "best_acc_std": metrics[f"test/{NETWORK}/best_acc_std"],
        "diagnostics": {
            name: metrics[f"surrogate/{name}"]
            for name in DIAGNOSTICS
            if f"surrogate/{name}" in metrics
        },
        "set_seed": config.set_seed(),  # the sampling noise's (a random selection's) seed
        "distill_wall_s": metrics["distill_wall_s"],
        "eval_wall_s": result.stages["evaluate"]["wall_s"],
        # precision, compilation and processes as the evaluation resolved them (issue 29);
        # absent from files made before they existed (fp32, eager, one process).
        "eval_levers": evaluated.get("levers", {}).get(NETWORK),
        "machine": _machine(hardware(core.device)),
        # The judge's weights behind the diagnostics and any selection in its features.
        "judge": judge_identity(config.judge_spec, core.data.fingerprint),
        "base": base_record(config),
        "git_commit": git["mdd.git_commit"],
        # Whether tracked files differed from that commit ("true"): the code that ran is
        # then the commit plus changes the file cannot name.
        "git_dirty": git["mdd.git_dirty"],
        "config_hash": result_hash(config.to_dict(), core.data.fingerprint),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def base_record(config: Config) -> dict[str, Any] | None:
    """Which base a cell sampled or decoded with: its folder and the recipe it was pretrained
    by (its autoencoder's and DiT's epochs); None where the run pretrained its own (its
    settings are then the config's, in the hash)."""
    folder = config.pretrain.checkpoint
    if folder is None or not (folder / "base.json").is_file():
        return None
    made = json.loads((folder / "base.json").read_text())
    return {
        "checkpoint": _shown(folder),
        "autoencoder_epochs": made["autoencoder"]["epochs"],
        "pretrain_epochs": made["pretrain"]["epochs"],
    }


def run_cell(
    core: Core, tracker: Tracker, config: Config, cell: Cell, tags: dict[str, str]
) -> RunResult | None:
    """Run one cell on the shared core; a stage that fails marks the cell, not the benchmark."""
    try:
        result = run_with_core(core, config, tracker, tags)
    except StageError as exc:
        cell.status, cell.note = "failed", str(exc)
        return None
    cell.status = "done"
    cell.last_acc_mean = result.metrics[f"test/{NETWORK}/last_acc_mean"]
    cell.last_acc_std = result.metrics[f"test/{NETWORK}/last_acc_std"]
    cell.distill_wall_s = result.metrics["distill_wall_s"]
    cell.cached_stages = [name for name, info in result.stages.items() if info["cached"]]
    return result


def resume_from(path: Path, expected_hash: str, cell: Cell) -> bool:
    """Fill ``cell`` from its result file if that was made with the same config hash."""
    record = read_result(path)
    if record is None or record.get("config_hash") != expected_hash:
        return False
    cell.status, cell.note = "resumed", f"from {_shown(path)}"
    cell.last_acc_mean, cell.last_acc_std = record["last_acc_mean"], record["last_acc_std"]
    cell.distill_wall_s = record["distill_wall_s"]
    return True


def eta(spent_s: list[float], remaining: int) -> str:
    """The time left at the mean rate of the cells computed so far (none yet: unknown)."""
    if not spent_s:
        return "ETA unknown until a cell is computed"
    per_cell = sum(spent_s) / len(spent_s)
    minutes = per_cell * remaining / 60
    return f"about {minutes:.0f} min left: {remaining} cells at {per_cell / 60:.1f} min"


def format_table(cells: list[Cell], columns: list[str], ipcs: list[int]) -> str:
    by_key = {(cell.column, cell.ipc): cell for cell in cells}
    lines = ["| IPC | " + " | ".join(columns) + " |", "|" + "---|" * (len(columns) + 1)]
    for ipc in ipcs:
        texts = [by_key[(column, ipc)].text() for column in columns]
        lines.append(f"| {ipc} | " + " | ".join(texts) + " |")
    return "\n".join(lines)


def _listed(values: set[int]) -> str:
    return ", ".join(str(value) for value in sorted(values))


def format_notes(cells: list[Cell], settings: dict[str, Any]) -> str:
    """What the table's numbers are, how they were made, and the cells without numbers."""
    repeats = _listed({cell.repeats for cell in cells})
    epochs = _listed({cell.eval_epochs for cell in cells if cell.column != "full"})
    full_epochs = _listed({cell.eval_epochs for cell in cells if cell.column == "full"})
    notes = [
        f"Test accuracy (%) after the last epoch, mean ± std over {repeats} {NETWORK} "
        f"networks trained from scratch on each set, DC protocol with {epochs} epochs, each "
        "network tested once, after its last epoch; in "
        "brackets the distillation wall time in seconds (`distill_wall_s`: fine-tuning + "
        "sampling for dit and minimax, the selection for the others). A stage found in the "
        "cache reports the time it took when it was computed, so a fine-tuning shared by "
        "several IPCs counts in each of them.",
    ]
    if full_epochs:
        notes.append(
            f"full: the whole training split, trained for {full_epochs} epochs instead of the "
            "protocol's 1000 (a CPU budget): a lower bound on the upper bound."
        )
    for column, found in settings["weights"].items():
        if found["lambdas"] is None:
            notes.append(f"{column}: {found['source']}")
        else:
            lambda_r, lambda_d = found["lambdas"]
            notes.append(
                f"{column}: lambda_r {lambda_r:g}, lambda_d {lambda_d:g}, {found['source']}."
            )
    not_run = [f"{cell.column} at IPC {cell.ipc}" for cell in cells if cell.status == "not run"]
    if not_run:
        notes.append(
            f"not run: {', '.join(not_run)}: not in the stage cache, and this table was made "
            "with --cached-only (it reads what earlier runs computed). Run the same command "
            "without --cached-only to compute them."
        )
    notes += [
        f"{cell.column} at IPC {cell.ipc} failed: {cell.note}"
        for cell in cells
        if cell.status == "failed"
    ]
    notes += [
        f"{cell.column} at IPC {cell.ipc}, {failure}"
        for cell in cells
        for failure in cell.set_failures
    ]
    sets = {len(cell.set_accs) for cell in cells if len(cell.set_accs) > 1}
    if sets:
        notes.append(
            f"Cells marked 'over N sets' ({_listed(sets)} sets) give the mean ± std of the "
            "sets' accuracies, each set drawn with its own seed (the run's seed + k) and "
            "evaluated by the same networks' seeds; herding, k-center and full are one set."
        )
    info = settings["hardware"]
    notes.append(
        f"Total wall time {settings['total_wall_s']:.0f} s on {info['device_name']} "
        f"({info['usable_cores']} usable of {info['logical_cores']} cores, "
        f"{info['torch_threads']} torch threads, torch {info['torch_version']}, device "
        f"{info['device']}, load average {info['load_average_1min_at_start']:.2f} at start)."
    )
    return "\n".join(f"- {note}" for note in notes)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: at least 1")
    return value


def _weight(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value}: a criterion weight is at least 0")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (the smoke experiment)")
    parser.add_argument(
        "--ipc", type=_positive_int, nargs="+", help="default: 1 10 50 (quick: 1 2)"
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        type=column_argument,
        metavar="COLUMN",
        help=f"default: {' '.join(COLUMNS + PLUGINS)}; any composition such as dit+mode+kcenter "
        "or minimax-swept+mode",
    )
    parser.add_argument(
        "--repeats", type=_positive_int, help="networks per cell (default 3; quick 1)"
    )
    parser.add_argument(
        "--full-epochs", type=_positive_int, help="training epochs of `full` (default 20; quick 2)"
    )
    parser.add_argument(
        "--best-weights",
        type=_weight,
        nargs=2,
        metavar=("LR", "LD"),
        help="minimax-swept weights, instead of reading the sweep's study",
    )
    parser.add_argument("--sweep", type=Path, help="sweep file (default sweeps/fashion_mnist.yaml)")
    parser.add_argument("--storage", help="its Optuna storage URL (default: as mdd-sweep)")
    parser.add_argument("--experiment", help="MLflow experiment (default quality_fmnist)")
    parser.add_argument("--out", type=Path, help="also write table.md and results.json here")
    parser.add_argument(
        "--results",
        type=Path,
        help="folder of the per-cell result files (default benchmarks/results/fashion_mnist; "
        "quick: none)",
    )
    parser.add_argument(
        "--no-resume",
        dest="resume",
        action="store_false",
        help="recompute cells whose result file matches (by default they are read back)",
    )
    parser.add_argument(
        "--cached-only",
        action="store_true",
        help="compute nothing: report the cells earlier runs left in the stage cache, mark the "
        "others 'not run' (a long benchmark can be run in parts, then tabulated at once)",
    )
    parser.add_argument(
        "--set-seeds",
        type=_positive_int,
        default=1,
        metavar="N",
        help="draw each cell's set with N seeds (the run's seed, +1, ...), each evaluated by the "
        "same networks' seeds; cells report mean ± std over the sets (default 1; herding, "
        "k-center and full are one set)",
    )
    add_set_argument(parser)  # applied to every cell
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> tuple[list[Cell], dict[str, Any]]:
    """Every cell, in IPC order; returns the cells and the settings they ran under."""
    started = time.perf_counter()
    mode = QUICK if args.quick else STANDARD
    for text in args.overrides:
        if text.split("=", 1)[0].strip() in GRID_KEYS:
            raise ConfigError(
                f"--set {text!r}: the benchmark sets {', '.join(GRID_KEYS)} itself. "
                "Hint: use --methods and --ipc."
            )
    columns = list(args.methods or COLUMNS + PLUGINS)
    ipcs = sorted(set(args.ipc or mode.ipcs))
    weights: dict[str, tuple[Weights | None, str]] = {
        "minimax": (PUBLISHED_WEIGHTS, "the published defaults (METHOD.md section 2)")
    }
    if any(tuning(column) == "minimax-swept" for column in columns):
        weights["minimax-swept"] = swept_weights(args, args.sweep or mode.sweep)
    plan = []
    for ipc in ipcs:
        for column in columns:
            lambdas = weights[tuning(column)][0] if tuning(column) in weights else None
            config = cell_config(
                mode, column, ipc, lambdas, args.overrides, experiment=args.experiment,
                repeats=args.repeats, full_epochs=args.full_epochs,
            )  # fmt: skip
            plan.append((Cell(column, ipc), config))
    first = plan[0][1]
    core = Core.load(first.data, first.device)
    tracker = Tracker(first.tracking)
    results = args.results or mode.results
    spent: list[float] = []
    for index, (cell, config) in enumerate(plan, start=1):
        cell.repeats = config.eval.repeats
        cell.eval_epochs = protocol_for(config.eval, config.data.dataset, cell.ipc).epochs
        tuned = tuning(cell.column)
        lambdas = weights[tuned][0] if tuned in weights else None
        if tuned in weights and lambdas is None:
            cell.status = "skipped"
            continue
        tags = {"mdd.config_file": _shown(mode.experiment), "mdd.benchmark": "quality_fmnist"}
        if tuned == "minimax-swept":
            tags |= {"mdd.variant": "swept", "mdd.weights_source": weights[tuned][1]}
        sets = 1 if cell.column in DETERMINISTIC else args.set_seeds
        for set_index in range(sets):
            # Set k draws its set with seed + k; the networks keep the run's seed.
            drawn = config if set_index == 0 else with_set_seed(config, config.seed + set_index)
            measured = cell if set_index == 0 else Cell(cell.column, cell.ipc)
            path = set_path(results, cell.column, cell.ipc, set_index) if results else None
            expected = result_hash(drawn.to_dict(), core.data.fingerprint)
            label = f"{cell.column} at IPC {cell.ipc}" + (f", set {set_index}" if sets > 1 else "")
            if path is not None and args.resume and resume_from(path, expected, measured):
                print(f"[{index}/{len(plan)}] {label}: {measured.note}")
            elif args.cached_only and not all(
                s.cached for s in stage_plan(drawn, core.data.fingerprint)
            ):
                measured.status = "not run"
            else:
                # This cell's sets from this one on, and every set of the cells after it.
                later = [c for c, _ in plan[index:] if c.status == "to run"]
                left = (
                    sets
                    - set_index
                    + sum(1 if c.column in DETERMINISTIC else args.set_seeds for c in later)
                )
                print(f"[{index}/{len(plan)}] {label} ({eta(spent, left)})")
                started_cell = time.perf_counter()
                set_tags = tags | {"mdd.set_seed": str(drawn.set_seed())}
                result = run_cell(core, tracker, drawn, measured, set_tags)
                if result is not None and len(measured.cached_stages) < len(result.stages):
                    spent.append(time.perf_counter() - started_cell)  # computed, for the ETA
                if result is not None and path is not None:
                    write_result(path, cell_record(measured, drawn, core, result, lambdas))
            if measured.status == "failed" and measured is not cell:
                cell.set_failures.append(f"set {set_index}: {measured.note}")
            if measured.last_acc_mean is None:
                break  # a set failed or is not run: the sets stay a prefix of 0, 1, ...
            cell.set_accs.append(measured.last_acc_mean)
    settings = {
        "mode": mode.name,
        "experiment": _shown(mode.experiment),
        "mlflow_experiment": first.tracking.experiment,
        "tracking_uri": redact(tracker.uri),
        "columns": columns,
        "ipcs": ipcs,
        "weights": {
            column: {"lambdas": lambdas, "source": source}
            for column, (lambdas, source) in weights.items()
            if column in {tuning(c) for c in columns}
        },
        "cached_only": args.cached_only,
        "hardware": hardware(core.device),
        "total_wall_s": time.perf_counter() - started,
    }
    return [cell for cell, _ in plan], settings


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stop_on_sigterm()  # a stopped benchmark closes its MLflow runs as KILLED
    try:
        cells, settings = run(args)
    except MddError as exc:
        print(f"quality_fmnist.py: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        print(
            f"quality_fmnist.py: interrupted ({exc or 'Ctrl-C'}); cells done so far are "
            "in the stage cache and MLflow",
            file=sys.stderr,
        )
        return 130
    title = (
        f"# Fashion-MNIST quality ({settings['mode']}), MLflow `{settings['mlflow_experiment']}`"
    )
    table = format_table(cells, settings["columns"], settings["ipcs"])
    markdown = f"{title}\n\n{table}\n\n{format_notes(cells, settings)}\n"
    print(markdown, flush=True)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "table.md").write_text(markdown, encoding="utf-8")
        record = {**settings, "cells": [asdict(cell) for cell in cells], "table": markdown}
        (args.out / "results.json").write_text(json.dumps(record, indent=2) + "\n")
    failed = any(cell.status == "failed" or cell.set_failures for cell in cells)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
