"""The judge is a planned stage: trained once before the stages that look through it, timed
and recorded as its own nested run, and read back by selection and diagnostics."""

from __future__ import annotations

import pytest
import torch
from mlflow import MlflowClient

from mdd.cache import DONE_FILE
from mdd.config import Config
from mdd.core import Core
from mdd.eval.judge import judge_cache_path, judge_stage
from mdd.methods import selection as selection_registry
from mdd.pipeline.execute import run_with_core
from mdd.pipeline.plan import plan
from mdd.tracking import Tracker


def _names(config: Config) -> list[str]:
    return [stage.name for stage in plan(config, "fingerprint")]


def test_the_judge_is_planned_before_the_stages_that_look_through_it() -> None:
    assert _names(Config(method="minimax")) == [
        *("pretrain", "judge", "finetune", "sample", "diagnose", "evaluate")
    ]
    assert _names(Config(method="herding")) == ["judge", "select", "diagnose", "evaluate"]
    unmeasured = {"judge": {"diagnostics": False}}
    assert _names(Config.model_validate({"method": "herding", **unmeasured}))[0] == "judge"
    picked = {"method": "dit", "selection": {"kind": "kcenter"}, **unmeasured}
    assert "judge" in _names(Config.model_validate(picked))


def test_a_run_that_never_looks_through_the_judge_plans_none() -> None:
    unmeasured = {"judge": {"diagnostics": False}}
    assert "judge" not in _names(Config.model_validate({"method": "minimax", **unmeasured}))
    assert "judge" not in _names(Config.model_validate({"method": "random", **unmeasured}))
    drawn = {"method": "dit", "selection": {"kind": "random"}, **unmeasured}
    assert "judge" not in _names(Config.model_validate(drawn))


def test_a_rule_registered_as_unjudged_plans_no_judge(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(selection_registry, "SELECTIONS", dict(selection_registry.SELECTIONS))
    monkeypatch.setattr(selection_registry, "UNJUDGED", set(selection_registry.UNJUDGED))

    @selection_registry.selection("first-of-each-class", judged=False)
    def first(pool: selection_registry.Pool, ipc: int) -> torch.Tensor:
        return selection_registry.select_random(pool.labels, ipc, 0)

    config = Config.model_validate(
        {
            "method": "dit",
            "selection": {"kind": "first-of-each-class"},
            "judge": {"diagnostics": False},
        }
    )
    assert "judge" not in _names(config)


def test_a_run_trains_the_judge_in_its_stage_and_the_next_run_reads_it(
    tiny_config: Config,
) -> None:
    core = Core.load(tiny_config.data, tiny_config.device)
    tracker = Tracker(tiny_config.tracking)
    first = run_with_core(core, tiny_config, tracker, {})
    stage = judge_stage(tiny_config.judge_spec, core.data.fingerprint)
    weights = judge_cache_path(tiny_config.judge_spec, core.data.fingerprint)
    assert first.stages["judge"] == {
        "key": stage.key,
        "cached": False,
        "wall_s": first.stages["judge"]["wall_s"],
        "folder": stage.folder,
    }
    assert (stage.folder / DONE_FILE).is_file() and weights.parent == stage.folder
    trained = weights.stat().st_mtime_ns
    # The diagnostics read the judge the stage made: their time leaves its training out.
    assert first.metrics["wall_s/judge"] > 0 and "wall_s/diagnose" in first.metrics
    herding = tiny_config.model_copy(deep=True)
    herding.method = "herding"
    second = run_with_core(core, herding, tracker, {})
    assert second.stages["judge"]["cached"] is True
    assert weights.stat().st_mtime_ns == trained  # read, not trained again
    client = MlflowClient(tiny_config.tracking.uri)
    experiment = client.get_experiment_by_name(tiny_config.tracking.experiment)
    runs = client.search_runs([experiment.experiment_id], "tags.`mdd.stage` = 'judge'")
    assert sorted(run.data.tags["mdd.cached"] for run in runs) == ["False", "True"]
