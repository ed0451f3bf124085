"""``sample.through_autoencoder``: a real selection decoded from the base's latents, the
ceiling of a generator that decodes through the same autoencoder."""

from __future__ import annotations

import pytest
import torch

from mdd.config import Config, build_config
from mdd.core import Core
from mdd.data.surrogate import read_surrogate
from mdd.diffusion.base import load_base
from mdd.errors import ConfigError
from mdd.pipeline.execute import run_with_core
from mdd.pipeline.plan import plan
from mdd.tracking import Tracker
from tests.conftest import tiny_config_data


def _config(tmp_path, tiny_fmnist, mlflow_store, method: str, decoded: bool) -> Config:
    data = tiny_config_data(tiny_fmnist, tmp_path, mlflow_store)
    data["method"] = method
    data["sample"]["through_autoencoder"] = decoded
    data["judge"] = {"epochs": 1, "diagnostics": False}
    return build_config(data)


def test_a_generative_method_cannot_be_put_through_the_autoencoder(
    tmp_path, tiny_fmnist, mlflow_store
) -> None:
    with pytest.raises(ConfigError, match="through_autoencoder"):
        _config(tmp_path, tiny_fmnist, mlflow_store, "minimax", True)


def test_the_decoded_selection_has_its_own_key_under_the_base_and_the_plain_one_keeps_its_own(
    tmp_path, tiny_fmnist, mlflow_store
) -> None:
    plain = plan(_config(tmp_path, tiny_fmnist, mlflow_store, "random", False), "fingerprint")
    decoded = plan(_config(tmp_path, tiny_fmnist, mlflow_store, "random", True), "fingerprint")
    assert [stage.name for stage in plain] == ["select", "evaluate"]
    assert [stage.name for stage in decoded] == ["pretrain", "select", "evaluate"]
    assert plain[0].key != decoded[1].key and plain[1].key != decoded[2].key


def test_the_decoded_set_is_the_autoencoders_reconstruction_of_the_same_selection(
    tmp_path, tiny_fmnist, mlflow_store
) -> None:
    sets = {}
    for decoded in (False, True):
        config = _config(tmp_path, tiny_fmnist, mlflow_store, "herding", decoded)
        core = Core.load(config.data, config.device)
        result = run_with_core(core, config, Tracker(config.tracking), {}, until="select")
        sets[decoded] = read_surrogate(result.stages["select"]["folder"] / "data")
    real, seen = sets[False], sets[True]
    assert torch.equal(real.labels, seen.labels)  # the same images chosen
    assert seen.manifest["through_autoencoder"].startswith("conv-")
    # Positive control: the round trip changed the pixels, by an autoencoder's error.
    difference = (real.images.float() - seen.images.float()).abs().mean()
    assert 0 < difference < 128
    # By hand: decode the autoencoder's encoding of the selected real images.
    model = load_base(result.stages["pretrain"]["folder"], torch.device("cpu"))
    latents = model.autoencoder.encode_batched(real.images, 64, "cpu")
    expected = model.autoencoder.decode_batched(latents, 64, "cpu")
    assert (expected.int() - seen.images.int()).abs().max() <= 1  # uint8 rounding
