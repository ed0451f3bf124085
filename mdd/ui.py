"""What the MLflow UI opens on for an mdd experiment, and the links `mdd ui` prints.

MLflow 3 opens an experiment whose kind it cannot infer on its GenAI pages, and its runs
table shows Source / Models / Dataset until someone picks columns by hand. mdd tags
each experiment as model training and stores a saved view (an experiment tag the UI
reads through ``?viewStateShareKey=``) whose columns are the headline of a run: the
method, IPC, the minimax weights, the test or validation accuracy and a sweep's
objective. Every run logs those accuracies under short names (``headline_metrics``).
"""

from __future__ import annotations

import json
import re
import urllib.parse
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mdd.config import RunRecord

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"
VIEW_KEY = "mdd-headline"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"
HEADLINE_PARAMS = (
    "composition",
    "method",
    "sample.ipc",
    "finetune.lambda_r",
    "finetune.lambda_d",
    "finetune.memory_size",
)
HEADLINE_METRICS = ("acc_test", "acc_val", "acc_soft_test", "objective/0")
_LAST_ACCURACY = re.compile(r"(soft/)?(test|val)/[^/]+/last_acc_mean")


def headline_params(record: RunRecord) -> dict[str, Any]:
    """The config's values of the headline params (a sweep trial logs only what it searches)."""
    values, data = {"composition": record.composition}, record.settings
    for key in HEADLINE_PARAMS[1:]:
        value: Any = data
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if value is not None:
            values[key] = value
    return values


def headline_metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    """``acc_test`` / ``acc_val`` (``acc_soft_test`` under the soft-label protocol): the first
    network's last-epoch accuracy of each split."""
    headline: dict[str, float] = {}
    for name, value in metrics.items():
        found = _LAST_ACCURACY.fullmatch(name)
        if found is None:
            continue
        # Soft-label accuracies (eval.protocol rded) get names of their own: acc_soft_test.
        short = "acc_" + ("soft_" if found.group(1) else "") + found.group(2)
        headline.setdefault(short, value)
    return headline


def _column(kind: str, key: str) -> str:
    return f"{kind}.`{key}`"  # the UI's canonical column key


def view_state() -> str:
    """The saved view's JSON: the headline columns. (MLflow 3.17 drops a shared view's
    unfolded rows, so a sweep's trials stay folded under their study until clicked.)"""
    columns = [_column("attributes", "Duration")]
    columns += [_column("params", key) for key in HEADLINE_PARAMS]
    columns += [_column("metrics", key) for key in HEADLINE_METRICS]
    return json.dumps({"selectedColumns": columns})


def experiment_tags() -> dict[str, str]:
    return {EXPERIMENT_KIND_TAG: MODEL_TRAINING, VIEW_TAG: view_state()}


def runs_url(base: str, experiment_id: str) -> str:
    # The runs tab itself: the experiment's root opens MLflow's GenAI overview.
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?viewStateShareKey={VIEW_KEY}"


def compare_url(base: str, experiment_id: str, run_ids: list[str]) -> str:
    query = urllib.parse.urlencode(
        {"runs": json.dumps(run_ids), "experiments": json.dumps([experiment_id])}
    )
    return f"{base.rstrip('/')}/#/compare-runs?{query}"


def links(base: str, experiment_id: str, runs: list[dict[str, Any]]) -> list[str]:
    """The runs table's URL, then one compare view per sweep study (its finished trials)."""
    lines = [f"runs: {runs_url(base, experiment_id)}"]
    studies: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        study = run["tags"].get("mdd.study")
        if study and "mdd.trial_number" in run["tags"]:
            studies.setdefault(study, []).append(run)
    for study, trials in sorted(studies.items()):
        trials.sort(key=lambda run: int(run["tags"]["mdd.trial_number"]))
        ids = [run["run_id"] for run in trials]
        lines.append(f"trials of {study}: {compare_url(base, experiment_id, ids)}")
    return lines
