"""The surrogate set's diagnostics beside the real data (``mdd.eval.diagnostics``).

A stage of its own, so that the distillation time leaves it out; its result is one small
JSON file of named values.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from mdd.config import JudgeSpec
from mdd.data import DatasetSplits
from mdd.data.surrogate import read_surrogate
from mdd.eval.diagnostics import diagnose, real_data
from mdd.eval.judge import load_judge

DIAGNOSTICS_FILE = "diagnostics.json"


def diagnose_surrogate(
    surrogate: Path, data: DatasetSplits, judge: JudgeSpec, folder: Path, device: torch.device
) -> dict[str, float]:
    """Judge the set in ``surrogate`` against the real data by the judge of ``judge``; write
    ``folder/diagnostics.json``."""
    dataset = read_surrogate(surrogate)
    measure = load_judge(data, judge, device)
    values = diagnose(dataset.images, dataset.labels, measure, real_data(data))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / DIAGNOSTICS_FILE).write_text(json.dumps(values, indent=2))
    return values


def read_diagnostics(folder: Path) -> dict[str, float]:
    return json.loads((folder / DIAGNOSTICS_FILE).read_text())
