"""``sample.seed`` draws another surrogate set of the same run: new sampling noise (or a new
random selection) under the same fine-tune and the same evaluation networks' seeds."""

from __future__ import annotations

import torch

from mdd.config import Config, build_config
from mdd.data import load_dataset
from mdd.data.surrogate import read_surrogate
from mdd.pipeline.plan import plan
from mdd.stages.select import select_surrogate
from tests.conftest import tiny_config_data


def _keys(config: Config) -> dict[str, str]:
    return {stage.name: stage.key for stage in plan(config, "fingerprint")}


def _config(tmp_path, tiny_fmnist, mlflow_store, **changes: object) -> Config:
    data = tiny_config_data(tiny_fmnist, tmp_path, mlflow_store)
    for dotted, value in changes.items():
        section, key = dotted.split("__")
        data.setdefault(section, {})[key] = value
    return build_config(data)


def test_a_set_seed_makes_a_new_sample_under_the_same_fine_tune(
    tmp_path, tiny_fmnist, mlflow_store
) -> None:
    run = _config(tmp_path, tiny_fmnist, mlflow_store)
    drawn = _config(tmp_path, tiny_fmnist, mlflow_store, sample__seed=1)
    assert (run.set_seed(), drawn.set_seed()) == (0, 1)
    keys, drawn_keys = _keys(run), _keys(drawn)
    assert drawn_keys["pretrain"] == keys["pretrain"]
    assert drawn_keys["finetune"] == keys["finetune"]  # one fine-tune serves every set
    assert drawn_keys["sample"] != keys["sample"]
    assert drawn_keys["evaluate"] != keys["evaluate"]  # another set, so its own evaluation
    # None, the default, leaves every key as it was before sample.seed existed.
    assert "seed" not in run.sample.model_dump(exclude_none=True)


def test_a_random_selection_draws_its_images_with_the_set_seed(
    tmp_path, tiny_fmnist, mlflow_store
) -> None:
    picked = {}
    for seed in (None, 0, 1):
        changes = {"sample__seed": seed} if seed is not None else {}
        config = _config(tmp_path, tiny_fmnist, mlflow_store, **changes)
        config = config.model_copy(update={"method": "random"})
        folder = tmp_path / f"set-{seed}"
        select_surrogate(
            load_dataset(config.data),
            config.method,
            config.sample,
            config.set_origin,
            folder,
            torch.device("cpu"),
        )
        picked[seed] = read_surrogate(folder).images
    assert (picked[None] == picked[0]).all()  # the run's seed is set 0
    assert not (picked[None] == picked[1]).all()
