"""A finished study, written onto the sweep's parent MLflow run: summary, trials, plots."""

from __future__ import annotations

import json
import tempfile
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only
import matplotlib.pyplot as plt  # noqa: E402
import optuna  # noqa: E402
from optuna.trial import FrozenTrial, TrialState  # noqa: E402
from optuna.visualization import matplotlib as optuna_plots  # noqa: E402

from mdd.sweep.config import SweepConfig  # noqa: E402
from mdd.tracking import RunHandle  # noqa: E402


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    """The best complete trial; for several objectives, the Pareto trial best on the first."""
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    if not complete:
        return None
    if len(study.directions) == 1:
        return study.best_trial
    first = study.directions[0] == optuna.study.StudyDirection.MAXIMIZE
    front = study.best_trials
    return max(front, key=lambda t: t.values[0] if first else -t.values[0])


def _plots(study: optuna.Study, sweep: SweepConfig) -> dict[str, object]:
    """Optuna's plots that apply to this study, by file name (each built lazily)."""
    multi = len(sweep.objectives) > 1
    target = None if not multi else (lambda t: t.values[0])
    name = sweep.objectives[0].metric if multi else None
    plots: dict[str, object] = {
        "optimization_history.png": lambda: optuna_plots.plot_optimization_history(
            study, target=target, target_name=name or "objective"
        ),
        "param_importances.png": lambda: optuna_plots.plot_param_importances(
            study, target=target, target_name=name or "objective"
        ),
        "parallel_coordinate.png": lambda: optuna_plots.plot_parallel_coordinate(
            study, target=target, target_name=name or "objective"
        ),
    }
    if {"finetune.lambda_r", "finetune.lambda_d"} <= set(sweep.space):
        plots["contour_lambda_r_lambda_d.png"] = lambda: optuna_plots.plot_contour(
            study,
            params=["finetune.lambda_r", "finetune.lambda_d"],
            target=target,
            target_name=name or "objective",
        )
    if multi:
        plots["pareto_front.png"] = lambda: optuna_plots.plot_pareto_front(study)
    return plots


def sharing_counts(trials: list[FrozenTrial]) -> dict[str, float]:
    """What the shared core and the stage cache saved: loads and fine-tunings not repeated."""
    loads_by_worker: dict[str, int] = {}
    ran = reused = 0
    for trial in trials:
        core = trial.user_attrs.get("core")
        if core is None:
            continue
        ran += 1
        reused += int(trial.user_attrs.get("finetune_cached", False))
        worker = trial.user_attrs.get("worker", "?")
        loads_by_worker[worker] = max(loads_by_worker.get(worker, 0), core["core/base_loads"])
    loads = sum(loads_by_worker.values())
    return {
        "sharing/trials_evaluated": ran,
        "sharing/workers": len(loads_by_worker),
        "sharing/base_loads": loads,
        "sharing/base_loads_saved": ran - loads,
        "sharing/finetunes_reused": reused,
    }


def log_study_summary(
    study: optuna.Study, sweep: SweepConfig, parent: RunHandle
) -> FrozenTrial | None:
    """Counts, the best trial, every trial's row and the plots; returns the best trial."""
    trials = study.get_trials(deepcopy=False)
    counts = {state.name.lower(): 0 for state in TrialState}
    for trial in trials:
        counts[trial.state.name.lower()] += 1
    best = best_trial(study)
    summary = {
        "study": study.study_name,
        "objectives": [o.model_dump() for o in sweep.objectives],
        "trials_by_state": counts,
        "best_trial": None if best is None else best.number,
        "best_values": None if best is None else best.values,
        "best_params": None if best is None else best.params,
        "trials": [
            {
                "number": t.number,
                "state": t.state.name.lower(),
                "values": t.values,
                "params": t.params,
                "mlflow_run_id": t.user_attrs.get("mlflow_run_id"),
                "fail_reason": t.user_attrs.get("fail_reason"),
                "note": t.user_attrs.get("note"),
                "core": t.user_attrs.get("core"),
            }
            for t in trials
        ],
    }
    parent.log_text(json.dumps(summary, indent=2, default=str), "study_summary.json")
    parent.log_metrics({f"trials/{state}": count for state, count in counts.items()})
    if best is not None:
        parent.log_metrics({f"best/objective_{i}": value for i, value in enumerate(best.values)})
        # Under the trials' name too, so the study's row in the runs table shows its best.
        parent.log_metrics({f"objective/{i}": value for i, value in enumerate(best.values)})
        parent.set_tags({"mdd.best_trial": best.number})
        parent.log_params({f"best.{key}": value for key, value in best.params.items()})
    parent.log_metrics(sharing_counts(trials))

    with tempfile.TemporaryDirectory() as folder:
        for file_name, build in _plots(study, sweep).items():
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # Optuna marks these plots experimental
                    axes = build()
            except (ValueError, RuntimeError) as exc:
                # e.g. importances need two complete trials; say so instead of failing.
                parent.log_text(f"{file_name} not drawn: {exc}\n", f"plots/{file_name}.txt")
                continue
            figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
            path = Path(folder) / file_name
            figure.savefig(path, dpi=100, bbox_inches="tight")
            plt.close(figure)
            parent.log_artifact(path, "plots")
    return best
