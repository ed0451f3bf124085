"""Benchmark 5 of speed.py: one sweep's trials, run by one worker against one process each.

The same trials (a grid of fine-tuning settings x sampling settings x IPC, enqueued so both
arms run exactly the same configurations) are run twice:

- *shared*: one ``mdd sweep`` worker process; the dataset, base model and cached latents load
  once (the worker's ``Core``), and a fine-tuning is reused by every trial whose fine-tuning
  settings are equal (the stage cache), here those that differ only in guidance or IPC;
- *fresh*: one ``mdd run`` process per trial with its own empty cache folder, so each trial
  imports the libraries, loads the data and base model, encodes the latents and fine-tunes
  again, as the reference code does (one script run per configuration).

Each arm is timed from process launch to exit. Both arms write to their own MLflow and Optuna
stores under a temporary folder, so the user's ``runs/`` is never touched.

    .venv/bin/python benchmarks/sweep_speed.py [--quick] [--set KEY=VALUE ...] [--json OUT]
        [--report OUT]

``--json`` writes the trial grid (``grid``) and both arms' numbers (``result``); ``--report``
the printed lines (``benchmarks/speed.py`` runs it so and puts them in its table).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import yaml

from mdd.cli import add_set_argument
from mdd.config import TrackingConfig, parse_override
from mdd.sweep.config import SweepConfig, load_sweep, trial_config
from mdd.sweep.worker import study_name
from mdd.tracking import finished_runs

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = ROOT / "experiments" / "fashion_mnist.yaml"
OBJECTIVE = "val/convnet3/last_acc_mean"


@dataclass(frozen=True)
class SweepSizes:
    """The trial grid: every (IPC, lambda_r, guidance) triple is one trial."""

    ipc: tuple[int, ...]  # the sweep's grid axis, one study each
    lambda_r: tuple[float, ...]  # fine-tuning settings: each is fine-tuned once when shared
    guidance: tuple[float, ...]  # sampling settings: trials that can reuse a fine-tuning
    overrides: tuple[str, ...]  # fixed for every trial, as a sweep's ``fixed:``
    trial_epochs: int = 200  # the sweep's ``trial.epochs``: the DC protocol's length in trials

    @property
    def trials(self) -> list[tuple[int, dict[str, float]]]:
        grid = itertools.product(self.ipc, self.lambda_r, self.guidance)
        return [(ipc, {"finetune.lambda_r": lr, "sample.guidance_scale": g}) for ipc, lr, g in grid]


# The per-trial settings of sweeps/fashion_mnist.yaml (400 fine-tuning steps, the proxy
# protocol on the validation split, one network) over IPC 1 and 10: 8 trials, 2 fine-tunings.
FULL = SweepSizes(
    ipc=(1, 10),
    lambda_r=(0.002, 0.02),
    guidance=(2.0, 4.0),
    overrides=("finetune.steps=400", "eval.repeats=1"),
)
QUICK = SweepSizes(
    ipc=(1, 2),
    lambda_r=(0.002,),
    guidance=(2.0, 4.0),
    overrides=(
        "finetune.steps=4",
        "finetune.checkpoint_every_steps=2",
        "sample.steps=2",
        "eval.repeats=1",
        "judge.epochs=1",  # a quick judge for the diagnostics (the full one: minutes)
        "judge.per_class=100",
    ),
    trial_epochs=2,
)


def _fixed(overrides: tuple[str, ...]) -> dict[str, Any]:
    parsed = (parse_override(override) for override in overrides)
    return {".".join(path): value for path, value in parsed}


def write_sweep(sizes: SweepSizes, extra: list[str], work: Path) -> Path:
    """The sweep file of the shared arm, with its stores and cache under ``work``."""
    fixed = _fixed((*sizes.overrides, *extra)) | {"cache_dir": str(work / "shared-cache")}
    sweep = {
        "name": "speed",
        "base": str(EXPERIMENT),
        "storage": f"sqlite:///{work / 'optuna.db'}",
        "tracking": {
            "uri": f"sqlite:///{work / 'mlflow.db'}",
            "experiment": "speed_shared",
            "artifact_root": str(work / "artifacts"),
        },
        "objectives": [{"metric": OBJECTIVE, "direction": "maximize"}],
        "sampler": {"name": "random", "seed": 0},
        "pruner": {"name": "none"},  # a pruned trial would make the arms do different work
        "budget": {"n_trials": len(sizes.lambda_r) * len(sizes.guidance)},
        "fixed": fixed,
        "space": {
            "finetune.lambda_r": {"type": "categorical", "choices": list(sizes.lambda_r)},
            "sample.guidance_scale": {"type": "categorical", "choices": list(sizes.guidance)},
        },
        "ipc": list(sizes.ipc),
        "trial": {"epochs": sizes.trial_epochs},
        "final": {"enabled": False},
    }
    path = work / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    return path


def _timed(command: list[str], log: Path) -> float:
    started = time.perf_counter()
    with log.open("w") as out:
        done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        tail = log.read_text()[-2000:]
        raise RuntimeError(f"{' '.join(command)} exited {done.returncode}:\n{tail}")
    return seconds


def run_shared(
    sizes: SweepSizes, sweep: SweepConfig, sweep_path: Path, work: Path
) -> dict[str, Any]:
    """Enqueue the grid's trials, then run them all in one ``mdd sweep`` worker process."""
    by_ipc: dict[int, list[dict[str, float]]] = {}
    for ipc, params in sizes.trials:
        by_ipc.setdefault(ipc, []).append(params)
    for ipc, trials in by_ipc.items():
        study = optuna.create_study(
            study_name=study_name(sweep, ipc), storage=sweep.storage, direction="maximize"
        )
        for params in trials:
            study.enqueue_trial(params)
    seconds = _timed([sys.executable, "-m", "mdd", "sweep", str(sweep_path)], work / "shared.log")
    finished = [
        trial
        for ipc in by_ipc
        for trial in optuna.load_study(
            study_name=study_name(sweep, ipc), storage=sweep.storage
        ).get_trials(deepcopy=False)
    ]
    states = {trial.state.name for trial in finished}
    if len(finished) != len(sizes.trials) or states != {"COMPLETE"}:
        raise RuntimeError(f"the shared sweep ended with trial states {sorted(states)}")
    counters = [trial.user_attrs["core"] for trial in finished]
    return {
        "seconds": seconds,
        "trials": len(finished),
        "finetunes_reused": sum(bool(t.user_attrs["finetune_cached"]) for t in finished),
        "data_loads": max(c["core/data_loads"] for c in counters),
        "base_loads": max(c["core/base_loads"] for c in counters),
    }


def run_fresh(
    sizes: SweepSizes, sweep: SweepConfig, base: dict[str, Any], work: Path
) -> dict[str, Any]:
    """Each trial's exact configuration in its own ``mdd run`` process, with an empty cache."""
    tracking = TrackingConfig(
        uri=f"sqlite:///{work / 'mlflow.db'}",
        experiment="speed_fresh",
        artifact_root=str(work / "artifacts"),
    )
    seconds = []
    for index, (ipc, params) in enumerate(sizes.trials):
        config = trial_config(base, sweep, params, ipc).model_copy(
            update={"cache_dir": work / f"fresh-cache-{index}", "tracking": tracking}
        )
        path = work / f"fresh-{index}.yaml"
        path.write_text(config.to_yaml())
        command = [sys.executable, "-m", "mdd", "run", str(path)]
        seconds.append(_timed(command, work / f"fresh-{index}.log"))
    runs = [run for run in finished_runs(tracking) if run["parent_run_id"] is None]
    finetune_s = [run["metrics"]["wall_s/finetune"] for run in runs]  # not the stage runs
    return {
        "seconds": sum(seconds),
        "trials": len(seconds),
        "seconds_per_trial": seconds,
        "finetune_s_mean": statistics.fmean(finetune_s),
    }


def bench_sweep(sizes: SweepSizes, extra: list[str], work: Path) -> dict[str, Any]:
    """Both arms on the same trials; ``extra`` overrides every trial (e.g. ``data.root=...``)."""
    sweep_path = write_sweep(sizes, extra, work)
    sweep, base = load_sweep(sweep_path)
    shared = run_shared(sizes, sweep, sweep_path, work)
    fresh = run_fresh(sizes, sweep, base, work)
    saved = fresh["seconds"] - shared["seconds"]
    by_reuse = shared["finetunes_reused"] * fresh["finetune_s_mean"]
    return {
        "shared": shared,
        "fresh": fresh,
        "saved_s": saved,
        # The fine-tunings the shared arm skipped, at the fresh arm's mean fine-tuning time;
        # the rest of the saving is the shared core (imports, data, base model, latents).
        "saved_by_finetune_reuse_s": by_reuse,
        "saved_by_shared_core_s": saved - by_reuse,
        "ratio": fresh["seconds"] / shared["seconds"],
    }


def _listed(values: list[Any]) -> str:
    return ", ".join(map(str, values))


def report_lines(result: dict[str, Any], grid: dict[str, Any]) -> list[str]:
    """Benchmark 5's lines of speed.py's table; ``grid`` is the ``SweepSizes`` as a dict."""
    shared, fresh = result["shared"], result["fresh"]
    per_trial = statistics.fmean(fresh["seconds_per_trial"])
    return [
        f"5. A sweep of {shared['trials']} trials (IPC {_listed(grid['ipc'])} x lambda_r "
        f"{_listed(grid['lambda_r'])} x guidance {_listed(grid['guidance'])}; "
        f"{', '.join(grid['overrides'])}; proxy protocol)",
        f"   {'one mdd sweep worker (shared core, reuse)':<48} {shared['seconds']:8.1f} s "
        f"({shared['data_loads']} data load, {shared['base_loads']} base load, "
        f"{shared['finetunes_reused']} fine-tunings reused)",
        f"   {'one fresh mdd run per trial, empty caches':<48} {fresh['seconds']:8.1f} s "
        f"({per_trial:.1f} s per trial, fine-tuning {fresh['finetune_s_mean']:.1f} s of it)",
        f"   saved {result['saved_s']:.1f} s: about {result['saved_by_finetune_reuse_s']:.1f} s "
        f"by fine-tune reuse, {result['saved_by_shared_core_s']:.1f} s by the shared core",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the quick grid (CI's)")
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write the numbers here")
    parser.add_argument("--report", type=Path, metavar="OUT", help="the printed lines, as text")
    add_set_argument(parser)  # every trial's, e.g. --set data.root=/path/to/fmnist
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    with tempfile.TemporaryDirectory(prefix="mdd-sweep-speed-") as tmp:
        result = bench_sweep(sizes, args.overrides, Path(tmp))
    grid = dataclasses.asdict(sizes)
    lines = "\n".join(report_lines(result, grid))
    print(lines, flush=True)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"grid": grid, "result": result}, indent=2) + "\n")
    if args.report is not None:
        args.report.write_text(lines + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
