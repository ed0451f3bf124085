"""The stages of a run. Each is a plain function over what it needs; none imports MLflow.

Shared here: the ``log(metrics, step)`` callable a stage is given for its series, and the
provenance every surrogate set's manifest states, generated or selected.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from mdd.config import Config

MetricLogger = Callable[[dict[str, float], int], None]


def surrogate_manifest(config: Config, source_checkpoint: Path | None, **extra: Any) -> dict:
    """What made a surrogate set (``write_surrogate`` adds what the set holds)."""
    return {
        "method": config.method,
        "config_hash": config.section_hash(),
        "source_checkpoint": None if source_checkpoint is None else str(source_checkpoint),
        "seed": config.seed,
        **extra,
    }
