"""The stages of a run. Each is a plain function over what it needs; none imports MLflow.

Shared here: the ``log(metrics, step)`` callable a stage is given for its series, and the
provenance every surrogate set's manifest states, generated or selected.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

MetricLogger = Callable[[dict[str, float], int], None]


def surrogate_manifest(
    made_by: Mapping[str, Any], source_checkpoint: Path | None, **extra: Any
) -> dict:
    """What made a surrogate set (``write_surrogate`` adds what the set holds): the run's
    ``Config.made_by()`` (method, config hash, seed) and the weights it was sampled with."""
    return {
        "method": made_by["method"],
        "config_hash": made_by["config_hash"],
        "source_checkpoint": None if source_checkpoint is None else str(source_checkpoint),
        "seed": made_by["seed"],
        **extra,
    }
