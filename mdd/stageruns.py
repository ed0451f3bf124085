"""Around each stage of a run: its cache claim (``mdd.cache``) and its nested MLflow run.

``Stages.run(name)`` is what ``mdd.pipeline.execute.execute`` wraps every stage call in: the stage's
lock is held, a cached result is read back instead of recomputed, the stage's MLflow run
carries its key, whether it was cached and its wall time, and a failure is recorded as a
FAILED run before it reaches the command line as one message.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from mdd.cache import Claim, Stage, claim
from mdd.errors import MddError, StageError
from mdd.tracking import RunHandle, Tracker

T = TypeVar("T")


@dataclass
class Step:
    """One stage inside its claim and its MLflow run."""

    claim: Claim
    run: RunHandle
    metrics: dict[str, float]  # the run's, shared by its steps

    @property
    def folder(self) -> Path:
        return self.claim.folder

    def get(self, compute: Callable[[Path], Any], load: Callable[[Path], T]) -> T:
        return self.claim.get(compute, load)

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log_series(metrics, step)

    def record(self, metrics: dict[str, float]) -> None:
        """Results: on the stage's run now, and on the top-level run at its end."""
        self.run.log_metrics(metrics)
        self.metrics.update(metrics)


@dataclass
class RunResult:
    """A run's metrics and, per stage run, its key, cached flag, wall time and folder."""

    metrics: dict[str, float]
    stages: dict[str, dict[str, Any]]


class Stages:
    """The stages of one run, each run under its cache claim as a nested MLflow run."""

    def __init__(self, stages: list[Stage], tracker: Tracker, parent: RunHandle, until: str | None):
        self.plan = {stage.name: stage for stage in stages}
        self.tracker, self.parent = tracker, parent
        names = list(self.plan)
        self.last = names.index(until) if until in names else len(names) - 1
        self.result = RunResult({}, {})

    def wants(self, name: str) -> bool:
        """Whether this run has the stage and goes that far (``until`` names the last)."""
        names = list(self.plan)
        return name in names and names.index(name) <= self.last

    @contextmanager
    def run(self, name: str) -> Iterator[Step]:
        """A stage that fails is recorded as a FAILED nested run (and the parent too) before
        the error reaches the command line as one message."""
        stage = self.plan[name]
        with claim(stage) as held:
            started = time.perf_counter()
            tags = {"mdd.stage": name, "mdd.stage_key": stage.key, "mdd.cached": held.cached}
            tags["mdd.cache_folder"] = str(stage.folder.resolve())
            with self.tracker.run(name, tags=tags, parent=self.parent) as run:
                try:
                    yield Step(held, run, self.result.metrics)
                except MddError:
                    raise
                except Exception as exc:
                    raise StageError(f"stage {name} failed: {type(exc).__name__}: {exc}") from exc
                wall_s = time.perf_counter() - started
                run.log_metrics({"wall_s": wall_s})
        # The folder lets a caller read the stage's outputs without rebuilding the plan.
        self.result.stages[name] = {
            "key": stage.key,
            "cached": held.cached,
            "wall_s": wall_s,
            "folder": stage.folder,
        }
        # The compute time, the original one for a cached stage.
        self.result.metrics[f"wall_s/{name}"] = stage.wall_s
