"""``sample.start``: each sample begins from its class's prototype noised (D4M-style
image-to-image), and runs the last ``strength`` of the sampling steps."""

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
from mdd.stages.sample import prototypes_of
from mdd.tracking import Tracker
from tests.conftest import tiny_config_data


def _config(tmp_path, tiny_fmnist, mlflow_store, method: str, start: dict | None) -> Config:
    data = tiny_config_data(tiny_fmnist, tmp_path, mlflow_store)
    data["method"] = method
    data["sample"]["start"] = start
    data["judge"] = {"epochs": 1, "diagnostics": False}
    return build_config(data)


def test_a_real_selection_cannot_start_from_prototypes(tmp_path, tiny_fmnist, mlflow_store):
    with pytest.raises(ConfigError, match="sample.start"):
        _config(tmp_path, tiny_fmnist, mlflow_store, "herding", {"strength": 0.5})


def test_a_start_changes_the_sample_key_and_none_keeps_the_plain_one(
    tmp_path, tiny_fmnist, mlflow_store
) -> None:
    def sample_key(start: dict | None) -> str:
        stages = plan(_config(tmp_path, tiny_fmnist, mlflow_store, "dit", start), "print")
        return next(stage.key for stage in stages if stage.name == "sample")

    plain = sample_key(None)
    assert sample_key({"strength": 0.5}) not in (plain, sample_key({"strength": 0.7}))
    data = tiny_config_data(tiny_fmnist, tmp_path, mlflow_store) | {"method": "dit"}
    assert sample_key(None) == next(
        stage.key for stage in plan(build_config(data), "print") if stage.name == "sample"
    )


def test_each_item_of_a_class_takes_its_own_prototype_of_that_class() -> None:
    generator = torch.Generator().manual_seed(0)
    # Two classes of three well-separated latents each: three centres are the points.
    points = torch.randn(6, 2, 1, 1, generator=generator) * 0.01
    points[:, 0, 0, 0] += torch.tensor([0.0, 10.0, 20.0, 100.0, 110.0, 120.0])
    classes = torch.tensor([0, 0, 0, 1, 1, 1])
    labels = torch.tensor([1, 0, 1, 0, 1, 0])
    starts = prototypes_of(points, classes, labels, num_classes=2, per_class=3)
    for c in (0, 1):
        mine = starts[labels == c].flatten(1)
        real = points[3 * c : 3 * c + 3].flatten(1)
        # Every item a different real latent of its own class (to k-means' float32 rounding).
        nearest = torch.cdist(mine, real).min(1)
        assert nearest.values.max() < 1e-4
        assert len(set(nearest.indices.tolist())) == 3


def test_the_smallest_strength_gives_the_decoded_prototypes_and_full_noise_does_not(
    tmp_path, tiny_fmnist, mlflow_store
) -> None:
    sets = {}
    for name, start in {"plain": None, "near": {"strength": 0.01}}.items():
        config = _config(tmp_path, tiny_fmnist, mlflow_store, "base", start)
        core = Core.load(config.data, config.device)
        result = run_with_core(core, config, Tracker(config.tracking), {}, until="sample")
        sets[name] = read_surrogate(result.stages["sample"]["folder"] / "data")
    # By hand: the k-means centres of the class's encoded training images, decoded.
    model = load_base(result.stages["pretrain"]["folder"], torch.device("cpu"))
    train = core.data.train
    encoded = model.autoencoder.encode_batched(train.images, 64, "cpu")
    labels = sets["near"].labels
    starts = prototypes_of(encoded, train.labels, labels, model.num_classes, config.sample.ipc)
    expected = model.autoencoder.decode_batched(starts, 64, "cpu").float()
    near = (sets["near"].images.float() - expected).abs().mean()
    plain = (sets["plain"].images.float() - expected).abs().mean()
    assert near < 4  # one denoising step at t = 0 moves a latent by about 1 %
    assert plain > 4 * near  # positive control: without a start the samples lie elsewhere
    assert sets["near"].manifest["sample"]["start"]["strength"] == 0.01
