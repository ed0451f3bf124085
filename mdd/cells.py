"""How the quality benchmark configures a cell of the Fashion-MNIST grid (method, IPC):
the experiment and protocol every cell shares, the column's composition and minimax
weights, and the hash of what a cell's numbers depend on.

``benchmarks/quality_fmnist.py`` runs the cells and ``benchmarks/pool_diagnostics.py``
diagnoses their candidate pools; both configure them here, so they cannot drift apart.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mdd.config import Config, load_config
from mdd.errors import ConfigError
from mdd.methods import composition_overrides

ROOT = Path(__file__).resolve().parents[1]  # the checkout: experiments/, sweeps/, benchmarks/
RESULTS = ROOT / "benchmarks" / "results"  # the committed result files, a folder a dataset
NETWORK = "convnet3"
PUBLISHED_WEIGHTS = (0.002, 0.008)  # lambda_r, lambda_d (METHOD.md section 2)
# Settings that say where, not what: they stay out of a result file's config hash.
WHERE_KEYS = ("name", "device", "cache_dir", "tracking")
WHERE_DATA_KEYS = ("root", "val_root", "download_dir")
# Set by the benchmark itself: the grid (method, IPC) and the protocol every cell shares.
GRID_KEYS = ("method", "sample.ipc", "eval.protocol", "eval.networks", "sample.seed")


@dataclass(frozen=True)
class Mode:
    """What a benchmark run starts from; ``--quick`` swaps in tiny sizes."""

    name: str
    experiment: Path
    sweep: Path
    ipcs: tuple[int, ...]
    repeats: int
    full_epochs: int  # the DC protocol's 1000 epochs on 55,000 images is days on a CPU
    overrides: tuple[str, ...]
    mlflow_experiment: str
    results: Path | None  # where finished cells leave their result files


STANDARD = Mode(
    name="standard",
    experiment=ROOT / "experiments" / "fashion_mnist.yaml",
    sweep=ROOT / "sweeps" / "fashion_mnist.yaml",
    ipcs=(1, 10, 50),
    repeats=3,
    full_epochs=20,
    # The table reports the last epoch only, so each network is tested once, after its last
    # epoch, as the DC code does: the protocol's nine earlier passes over the 10,000 test
    # images are 90,000 forward passes, against 10,000 training images (IPC 1 x 10 classes
    # x 1000 epochs), and change no number.
    overrides=("eval.protocol=dc", f"eval.networks=[{NETWORK}]", "eval.evaluations=1"),
    mlflow_experiment="quality_fmnist",
    results=RESULTS / "fashion_mnist",
)
# A separate MLflow experiment: the report keeps the newest run of a cell, and quick
# numbers must never stand in for real ones.
QUICK = Mode(
    name="quick",
    experiment=ROOT / "experiments" / "smoke.yaml",
    sweep=ROOT / "sweeps" / "smoke.yaml",
    ipcs=(1, 2),
    repeats=1,
    full_epochs=2,
    overrides=(
        "eval.protocol=dc",
        f"eval.networks=[{NETWORK}]",
        "eval.evaluations=1",
        "eval.epochs=2",
        "finetune.steps=10",
    ),
    mlflow_experiment="quality_fmnist_quick",
    results=None,  # quick numbers are never results; --results gives a folder for tests
)


Weights = tuple[float, float]  # lambda_r, lambda_d


def tuning(column: str) -> str:
    """Which fine-tune a column's cells use: its first part (``minimax-swept+mode``: swept)."""
    return column.split("+", 1)[0]


def column_overrides(column: str) -> list[str]:
    """The method and plug-ins of a column: ``minimax-swept`` is minimax (with the swept
    weights, set apart), ``dit+mode+confidence`` a composition (``mdd.methods``)."""
    tuning, *plugins = column.split("+")
    method = "minimax" if tuning == "minimax-swept" else tuning
    return composition_overrides("+".join([method, *plugins]))


def column_argument(text: str) -> str:
    """A column as a command line gives it (``argparse`` type): a composition mdd knows."""
    try:
        column_overrides(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def cell_config(
    mode: Mode,
    column: str,
    ipc: int,
    lambdas: Weights | None,
    overrides: Sequence[str] = (),
    *,
    experiment: str | None = None,
    repeats: int | None = None,
    full_epochs: int | None = None,
) -> Config:
    """The experiment file with the mode's, the cell's and the user's ``overrides``, in that
    order; ``experiment``, ``repeats`` and ``full_epochs`` replace the mode's when given."""
    experiment = experiment or mode.mlflow_experiment
    settings = [
        *mode.overrides,
        f"name={experiment}-{column}-ipc{ipc}",
        *column_overrides(column),
        f"sample.ipc={ipc}",
        f"eval.repeats={repeats or mode.repeats}",
        f"tracking.experiment={experiment}",
    ]
    if lambdas is not None:
        settings += [f"finetune.lambda_r={lambdas[0]}", f"finetune.lambda_d={lambdas[1]}"]
    if column == "full":
        settings.append(f"eval.epochs={full_epochs or mode.full_epochs}")
    return load_config(mode.experiment, [*settings, *overrides])


def result_hash(settings: Mapping[str, Any], fingerprint: str) -> str:
    """What a cell's numbers depend on: the config's values (``Config.to_dict``) less where it
    ran, and the data's content."""
    data = settings
    picked = {key: value for key, value in data.items() if key not in WHERE_KEYS}
    picked["data"] = {k: v for k, v in data["data"].items() if k not in WHERE_DATA_KEYS}
    if picked["sample"].get("seed") is None:  # files from before sample.seed keep their hash
        picked["sample"].pop("seed", None)
    if picked["data"].get("phases") == 1:  # nor those from before data.phases
        picked["data"].pop("phases")
    if picked["eval"].get("teacher", "absent") is None:  # nor those from before eval.teacher
        picked["eval"].pop("teacher")
    if picked["sample"].get("through_autoencoder") is False:  # nor sample.through_autoencoder
        picked["sample"].pop("through_autoencoder")
    if picked["autoencoder"].get("widths", "absent") is None:  # nor autoencoder.widths
        picked["autoencoder"].pop("widths")
    if picked["sample"].get("start", "absent") is None:  # nor sample.start
        picked["sample"].pop("start")
    blob = json.dumps({"config": picked, "data": fingerprint}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
