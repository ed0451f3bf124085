"""The base model mdd pretrained itself and ships for the demo: it loads and it samples."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from mdd.cli import main
from mdd.config import SampleConfig, load_config
from mdd.data.fashion_mnist import CLASS_NAMES
from mdd.diffusion.base import load_base
from mdd.stages.sample import generate_images

SHIPPED = Path("mdd/assets/fashion_mnist_base")
# The same recipe on an autoencoder trained 10 epochs instead of 3 (README: the base on the
# 10-epoch autoencoder); runs name it with --set pretrain.checkpoint=...
SHIPPED_AE10 = Path("mdd/assets/fashion_mnist_base_ae10")
# That recipe with the DiT pretrained 20 epochs instead of 10 (README: the base pretrained
# 20 DiT epochs).
SHIPPED_DIT20 = Path("mdd/assets/fashion_mnist_base_dit20")


def test_demo_experiment_points_at_the_shipped_base() -> None:
    config = load_config("experiments/fashion_mnist.yaml")
    assert config.pretrain.checkpoint == SHIPPED
    assert (SHIPPED / "base.json").is_file()


@pytest.mark.parametrize(
    ("folder", "autoencoder_epochs", "dit_epochs"),
    [(SHIPPED, 3, 10), (SHIPPED_AE10, 10, 10), (SHIPPED_DIT20, 10, 20)],
)
def test_shipped_base_loads_and_samples_every_class(
    folder: Path, autoencoder_epochs: int, dit_epochs: int
) -> None:
    base = load_base(folder, torch.device("cpu"))
    manifest = json.loads((folder / "base.json").read_text())
    assert manifest["autoencoder"]["epochs"] == autoencoder_epochs
    assert manifest["pretrain"]["epochs"] == dit_epochs
    assert manifest["class_names"] == list(CLASS_NAMES)
    assert base.latent_shape == (4, 7, 7)
    assert base.num_classes == 10 and base.null_class == 10
    weights = sum(f.stat().st_size for f in folder.rglob("*.safetensors"))
    assert weights < 16 * 2**20  # a few MB, fit for the repository
    labels = torch.arange(10)
    sample = SampleConfig(steps=2, guidance_scale=2.0, batch_size=10)
    images = generate_images(base, labels, sample, 0, torch.device("cpu"))
    assert images.shape == (10, 1, 28, 28) and images.dtype == torch.uint8
    assert images.float().std() > 0


def test_mdd_data_prints_classes_and_split_sizes_of_real_fashion_mnist(capsys) -> None:
    assert main(["data", "experiments/fashion_mnist.yaml"]) == 0
    out = capsys.readouterr().out
    assert "fingerprint:" in out
    for name in CLASS_NAMES:
        assert name in out
    assert re.search(r"^total\s+55000\s+5000\s+10000$", out, re.MULTILINE)
