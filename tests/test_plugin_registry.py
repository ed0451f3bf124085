"""A plug-in is one function under a decorator: a toy selection defined in this file alone is
accepted by the config and runs end to end through the pipeline."""

from __future__ import annotations

import pytest
import torch

from mdd.config import Config, SelectionConfig, build_config
from mdd.core import Core
from mdd.data.surrogate import read_surrogate
from mdd.errors import ConfigError
from mdd.methods import GUIDANCES, composition_overrides
from mdd.methods.selection import SELECTIONS, Pool, selection
from mdd.pipeline.execute import run_with_core
from mdd.tracking import Tracker
from tests.conftest import tiny_config_data


@pytest.fixture
def toy_plugins():
    """Registers the toys for one test and takes them out again."""

    @selection("toy-last")
    def _last(pool: Pool, ipc: int) -> torch.Tensor:  # each class's last IPC candidates
        return torch.cat(
            [torch.nonzero(pool.labels == c).flatten()[-ipc:] for c in pool.labels.unique()]
        )

    yield
    del SELECTIONS["toy-last"]


def _config(tmp_path, tiny_fmnist, mlflow_store, selection_kind: str) -> Config:
    data = tiny_config_data(tiny_fmnist, tmp_path, mlflow_store)
    data |= {"method": "base", "selection": {"kind": selection_kind, "oversample": 2}}
    data["judge"] = {"epochs": 1, "diagnostics": False}
    return build_config(data)


def test_a_selection_registered_in_a_test_runs_end_to_end(
    toy_plugins, tmp_path, tiny_fmnist, mlflow_store
) -> None:
    config = _config(tmp_path, tiny_fmnist, mlflow_store, "toy-last")
    assert composition_overrides("base+toy-last")[-1] == "selection.kind=toy-last"
    core = Core.load(config.data, config.device)
    result = run_with_core(core, config, Tracker(config.tracking), {}, until="select")
    pool = read_surrogate(result.stages["sample"]["folder"] / "data")
    kept = read_surrogate(result.stages["select"]["folder"] / "data")
    # The pool is class-major with 4 candidates a class: the toy keeps the 3rd and 4th.
    assert pool.labels.bincount().tolist() == [4] * 10
    assert torch.equal(kept.images, pool.images.view(10, 4, *pool.images.shape[1:])[:, 2:]
                       .reshape(kept.images.shape))  # fmt: skip


def test_a_guidance_says_itself_whether_the_sampler_must_batch_in_rounds() -> None:
    # IGD's deviation reads the class's earlier samples; mode guidance reads none.
    assert GUIDANCES["influence"].rounds and not GUIDANCES["mode"].rounds


def test_an_unregistered_selection_is_refused_with_the_known_names(
    tmp_path, tiny_fmnist, mlflow_store
) -> None:
    with pytest.raises(ConfigError, match="unknown selection 'toy-last'.*kcenter"):
        _config(tmp_path, tiny_fmnist, mlflow_store, "toy-last")
    with pytest.raises(ValueError, match="full"):  # keeps the whole pool, whatever the IPC
        SelectionConfig(kind="full")
