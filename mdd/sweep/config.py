"""The sweep file: which experiment to tune, over what, for how long, judged by what.

Validated like experiment files (unknown keys, wrong types, a bad search space:
one message naming the file and field). IPC is a grid axis, never a searched
parameter: accuracy always rises with IPC, so a study would just maximise it.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from mdd.config import (
    GENERATIVE,
    Config,
    Section,
    TrackingConfig,
    apply_overrides,
    build_config,
    describe_error,
    read_yaml,
)
from mdd.errors import ConfigError


class ParamSpec(Section):
    type: Literal["float", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: list[Any] | None = None

    @model_validator(mode="after")
    def _bounds(self) -> ParamSpec:
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("a categorical parameter needs a non-empty 'choices' list")
            return self
        if self.low is None or self.high is None:
            raise ValueError(f"a {self.type} parameter needs 'low' and 'high'")
        if self.low >= self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"a log-scale range must be positive (low is {self.low})")
        return self

    def example(self) -> Any:
        """A value of the right type, to check the parameter's key against the config."""
        if self.type == "categorical":
            return self.choices[0]  # type: ignore[index]
        return int(self.low) if self.type == "int" else self.low  # type: ignore[arg-type]


class ObjectiveSpec(Section):
    # Metrics of a trial's run: validation accuracy (`val/<network>/<last|best>_acc_mean`)
    # or a cost such as `distill_wall_s`. Never a test-split metric.
    metric: str = "val/convnet3/last_acc_mean"
    direction: Literal["maximize", "minimize"] = "maximize"


class SamplerSpec(Section):
    name: Literal["tpe", "gp", "random", "nsga2"] = "tpe"
    seed: int = 0
    startup_trials: int = Field(5, ge=0)


class PrunerSpec(Section):
    # median: stop a trial below the median of earlier ones at the same epoch;
    # threshold: stop a trial whose validation accuracy is below `lower` (a collapsed run).
    name: Literal["median", "threshold", "none"] = "median"
    startup_trials: int = Field(3, ge=0)
    warmup_epochs: int = Field(0, ge=0)
    lower: float | None = None  # threshold: minimum validation accuracy, %

    @model_validator(mode="after")
    def _threshold_has_bound(self) -> PrunerSpec:
        if self.name == "threshold" and self.lower is None:
            raise ValueError("the threshold pruner needs 'lower' (a validation accuracy in %)")
        return self


class BudgetSpec(Section):
    n_trials: int = Field(20, ge=1)  # per IPC, across all workers
    timeout_s: float | None = Field(None, gt=0)  # per worker


class TrialSpec(Section):
    """A trial's protocol: the final protocol (its normalisation, augmentation and resolution)
    shortened to ``epochs``, tested ``evaluations`` times on the validation split so a pruner
    can act. For ``final.protocol: dc`` this is the DC protocol at 200 epochs (``proxy``)."""

    epochs: int = Field(200, ge=1)
    evaluations: int = Field(10, ge=1)


class FinalSpec(Section):
    """The best configuration of each IPC, rerun once with the full protocol on the test set."""

    enabled: bool = True
    protocol: Literal["dc", "idc"] = "dc"
    repeats: int = Field(3, ge=1)
    epochs: int | None = Field(None, ge=1)


class SweepConfig(Section):
    name: str
    base: Path  # the experiment file, relative to the sweep file
    storage: str | None = None  # default: sqlite under runs/ (several local workers share it)
    tracking: TrackingConfig | None = None  # default: the base experiment's
    objectives: list[ObjectiveSpec] = Field(default_factory=lambda: [ObjectiveSpec()])
    sampler: SamplerSpec = Field(default_factory=SamplerSpec)
    pruner: PrunerSpec = Field(default_factory=PrunerSpec)
    budget: BudgetSpec = Field(default_factory=BudgetSpec)
    fixed: dict[str, Any] = Field(default_factory=dict)  # dotted overrides for every trial
    space: dict[str, ParamSpec]
    ipc: list[int] = Field(default_factory=lambda: [10])
    heartbeat_s: int = Field(30, ge=1)  # a trial silent for 2x this is failed and retried
    max_retries: int = Field(2, ge=0)
    trial: TrialSpec = Field(default_factory=TrialSpec)
    final: FinalSpec = Field(default_factory=FinalSpec)

    @model_validator(mode="after")
    def _consistent(self) -> SweepConfig:
        if not self.objectives:
            raise ValueError("objectives: give at least one metric")
        if len(self.objectives) > 1 and self.pruner.name != "none":
            raise ValueError("a multi-objective study cannot be pruned: set pruner.name: none")
        if not self.ipc or min(self.ipc) < 1:
            raise ValueError("ipc: a list of images-per-class values, each at least 1")
        if self.pruner.name != "none" and self.pruner.warmup_epochs >= self.trial.epochs:
            raise ValueError(
                f"pruner.warmup_epochs ({self.pruner.warmup_epochs}) is not below the trial's "
                f"epochs ({self.trial.epochs}): the pruner could never stop a trial. Hint: "
                "lower the warm-up, raise trial.epochs, or set pruner.name: none"
            )
        return self


def _grid_and_test_guards(sweep: SweepConfig, source: str) -> None:
    for key in (*sweep.space, *sweep.fixed):
        if key == "sample.ipc":
            raise ConfigError(
                f"{source}: '{key}' cannot be searched or fixed in a sweep. Hint: IPC is a grid "
                "axis (list it under 'ipc:'), and accuracy always rises with IPC."
            )
    # A sweep may choose the fine-tune a composition builds on (dit, minimax, base), never a
    # selection of real images: those have nothing to tune and would win on their own terms.
    methods = list(sweep.space["method"].choices or []) if "method" in sweep.space else []
    if "method" in sweep.fixed:
        methods.append(sweep.fixed["method"])
    if any(method not in GENERATIVE for method in methods):
        raise ConfigError(
            f"{source}: 'method' may only take the generative methods {', '.join(GENERATIVE)} "
            f"in a sweep, not {', '.join(m for m in methods if m not in GENERATIVE)}."
        )
    for key in (*sweep.space, *sweep.fixed):
        if key in ("eval.protocol", "eval.split", "eval.epochs", "eval.evaluations"):
            raise ConfigError(
                f"{source}: '{key}': trials use the final protocol shortened to trial.epochs, "
                "on the validation split, so the test split never guides tuning. Hint: set "
                "the trials' length under 'trial:' and the final rerun under 'final:'."
            )
    for objective in sweep.objectives:
        if objective.metric.startswith("test/"):
            raise ConfigError(
                f"{source}: objective '{objective.metric}' is a test-split metric. Hint: tune "
                "on 'val/...' metrics; the test split is for the final rerun only."
            )


def trial_data(base: dict[str, Any], sweep: SweepConfig, params: dict[str, Any], ipc: int):
    """The raw config data of one trial: base + fixed + the trial's values + IPC + the
    final protocol shortened to the trial's length, on the validation split."""
    data = apply_overrides(
        copy.deepcopy(base), [f"{key}={_yaml(value)}" for key, value in sweep.fixed.items()]
    )
    data = apply_overrides(data, [f"{key}={_yaml(value)}" for key, value in params.items()])
    protocol = [
        f"eval.protocol={sweep.final.protocol}",
        f"eval.epochs={sweep.trial.epochs}",
        f"eval.evaluations={sweep.trial.evaluations}",
        "eval.split=val",
    ]
    return apply_overrides(data, [f"sample.ipc={ipc}", *protocol])


def _yaml(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def load_sweep(path: str | Path) -> tuple[SweepConfig, dict[str, Any]]:
    """The validated sweep and the raw data of its base experiment (checked with each key)."""
    path = Path(path)
    source = str(path)
    try:
        sweep = SweepConfig.model_validate(read_yaml(path))
    except ValidationError as exc:
        raise ConfigError("\n".join(describe_error(err, source) for err in exc.errors())) from None
    base_path = (path.parent / sweep.base).resolve()
    base = read_yaml(base_path)
    _grid_and_test_guards(sweep, source)
    build_config(trial_data(base, sweep, {}, sweep.ipc[0]), source=str(base_path))
    for key, spec in sweep.space.items():
        # A plug-in's setting (sample.guidance.weight) fits if it fits one of the kinds the
        # space searches beside it (sample.guidance.kind); not "none", which ignores them.
        kind = f"{key.rsplit('.', 1)[0]}.kind"
        kinds = sweep.space[kind].choices or [] if kind in sweep.space and kind != key else []
        tries = [{kind: k} for k in kinds if k != "none"] or [{}]
        errors = []
        for other in tries:
            try:
                build_config(trial_data(base, sweep, {**other, key: spec.example()}, sweep.ipc[0]))
                break
            except ConfigError as exc:
                errors.append(exc)
        else:
            raise ConfigError(
                f"{source}: search space key '{key}' does not fit the experiment config "
                f"({errors[0]}). Hint: use dotted config fields such as finetune.lambda_r."
            ) from None
    return sweep, base


def trial_config(base: dict[str, Any], sweep: SweepConfig, params: dict[str, Any], ipc: int):
    """The validated ``Config`` of one trial."""
    return build_config(trial_data(base, sweep, params, ipc), source=f"sweep {sweep.name}")


def final_config(
    base: dict[str, Any], sweep: SweepConfig, params: dict[str, Any], ipc: int
) -> Config:
    """The best trial's settings with the full protocol, evaluated on the test split."""
    data = trial_data(base, sweep, params, ipc)
    final = sweep.final
    overrides = [f"eval.protocol={final.protocol}", f"eval.repeats={final.repeats}"]
    overrides.append(f"eval.epochs={final.epochs if final.epochs else 'null'}")
    overrides += ["eval.evaluations=null", "eval.split=test"]
    return build_config(apply_overrides(data, overrides), source=f"sweep {sweep.name} final")
