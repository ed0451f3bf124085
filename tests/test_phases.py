"""Class phases (``data.phases``): the fine-tune and the sampling per group of classes,
each phase its own stages and keys, merged into one surrogate set."""

from __future__ import annotations

import json
import math

import pytest
import torch
from mlflow import MlflowClient

from mdd.config import Config, ConfigError, build_config
from mdd.core import Core
from mdd.data import load_dataset
from mdd.data.surrogate import read_surrogate
from mdd.errors import MddError
from mdd.phases import Phase
from mdd.pipeline.execute import run_with_core
from mdd.pipeline.experiment import run_experiment
from mdd.pipeline.plan import plan
from mdd.tracking import Tracker


@pytest.mark.parametrize("classes,count", [(10, 3), (4, 2), (10, 10)])
def test_phases_take_consecutive_classes_and_every_class_once(classes: int, count: int):
    parts = [Phase(index, count).classes(classes) for index in range(count)]
    assert [c for part in parts for c in part] == list(range(classes))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_one_phase_is_every_class_under_the_stage_names_of_a_run_without_phases() -> None:
    phase = Phase()
    assert phase.classes(10) is None
    assert (phase.finetune, phase.sample, phase.prefix) == ("finetune", "sample", "")


def test_more_phases_than_classes_is_a_clear_error() -> None:
    with pytest.raises(MddError, match="at most 10"):
        Phase(0, 11).classes(10)


def test_phases_are_refused_where_nothing_is_fine_tuned_or_sampled_or_a_guidance_reads_all(
    tiny_config: Config,
) -> None:
    data = tiny_config.to_dict()
    with pytest.raises(ConfigError, match="method random has neither"):
        build_config(data | {"method": "random", "data": data["data"] | {"phases": 2}})
    guided = data | {"sample": data["sample"] | {"guidance": {"kind": "mode"}}}
    with pytest.raises(ConfigError, match="a guidance reads every class"):
        build_config(guided | {"data": data["data"] | {"phases": 2}})


def test_a_phased_plan_has_each_phase_stages_with_keys_of_its_own_then_the_merge(
    tiny_config: Config,
) -> None:
    fingerprint = load_dataset(tiny_config.data).fingerprint
    whole = plan(tiny_config, fingerprint)
    phased = tiny_config.model_copy(deep=True)
    phased.data.phases = 2
    stages = plan(phased, fingerprint)
    assert [s.name for s in whole] == [
        *("pretrain", "judge", "finetune", "sample", "diagnose", "evaluate")
    ]
    assert [s.name for s in stages] == [
        *("pretrain", "judge"),
        *("finetune-phase0", "sample-phase0", "finetune-phase1", "sample-phase1"),
        *("sample", "diagnose", "evaluate"),
    ]
    keys = [s.key for s in stages]
    assert len(set(keys)) == len(keys)
    assert stages[0].key == whole[0].key  # the phases fine-tune one base
    assert stages[1].key == whole[1].key  # and look through one judge
    assert not {s.key for s in stages[2:]} & {s.key for s in whole[2:]}


def test_untuned_phases_merge_into_the_very_set_one_phase_samples(tiny_config: Config) -> None:
    # Without a fine-tune the phases differ from one run only in how the sampling is cut, so
    # the merge must give back each image with its own seed, in class-major order.
    config = tiny_config.model_copy(deep=True)
    config.method = "base"
    config.judge.diagnostics = False
    config.sample.batch_size = 3
    core = Core.load(config.data, config.device)
    whole = run_with_core(core, config, Tracker(config.tracking), {}, until="sample")
    phased = config.model_copy(deep=True)
    phased.data.phases = 3
    merged = run_with_core(core, phased, Tracker(config.tracking), {}, until="sample")
    one = read_surrogate(whole.stages["sample"]["folder"] / "data")
    parts = read_surrogate(merged.stages["sample"]["folder"] / "data")
    assert torch.equal(parts.labels, one.labels)
    assert torch.equal(parts.images, one.images)
    third = read_surrogate(merged.stages["sample-phase1"]["folder"] / "data")
    assert third.labels.unique().tolist() == [4, 5, 6]
    assert third.manifest["classes"] == [4, 7]


def test_a_phase_runs_alone_and_the_full_run_reuses_it_merges_and_evaluates(
    tiny_config: Config,
) -> None:
    config = tiny_config.model_copy(deep=True)
    config.data.phases = 3
    config.finetune = config.finetune.model_copy(update={"steps": None, "epochs": 0.5})
    config.judge.diagnostics = False

    assert run_experiment(config, "phases.yaml", phase=1) == 0
    stages = {s.name: s for s in plan(config, load_dataset(config.data).fingerprint)}
    done = {name for name, stage in stages.items() if stage.cached}
    assert done == {"pretrain", "finetune-phase1", "sample-phase1"}

    assert run_experiment(config, "phases.yaml") == 0
    assert all(stage.cached for stage in stages.values())
    # Each phase fine-tuned on its own classes' images: its epoch is that many steps.
    train = load_dataset(config.data).train.labels
    for index, classes in enumerate([range(0, 4), range(4, 7), range(7, 10)]):
        images = int(((train >= classes.start) & (train < classes.stop)).sum())
        summary = json.loads(
            (stages[f"finetune-phase{index}"].folder / "finetune.json").read_text()
        )
        assert summary["steps"] == math.ceil(0.5 * images / config.finetune.batch_size)
    merged = read_surrogate(stages["sample"].folder / "data")
    assert merged.labels.tolist() == [c for c in range(10) for _ in range(config.sample.ipc)]
    assert (stages["evaluate"].folder / "results.json").is_file()

    client = MlflowClient(tracking_uri=config.tracking.uri)
    experiment = client.get_experiment_by_name(config.tracking.experiment)
    alone, full = sorted(
        client.search_runs([experiment.experiment_id], "tags.`mdd.config_file` = 'phases.yaml'"),
        key=lambda run: run.info.start_time,
    )
    assert alone.data.tags["mdd.phase"] == "1"
    assert "phase1/finetune/steps" in alone.data.metrics
    assert {"phase0/finetune/steps", "phase2/finetune/steps"} <= set(full.data.metrics)
    assert full.data.metrics["distill_wall_s"] > 0


def test_a_phase_outside_the_configs_phases_is_refused(tiny_config: Config) -> None:
    with pytest.raises(MddError, match="data.phases 1"):
        run_experiment(tiny_config, "phases.yaml", phase=0)
