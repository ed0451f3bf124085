"""Positive control: on the shipped base and real Fashion-MNIST, the criteria reach the samples.

A fine-tune with a strong diversity weight must make the sampled set measurably less
uniform than the same fine-tune without the criteria (same seeds, same steps). With the
former EMA (decay 0.9999 over a short run, so the sampled weights were 98 % base) the
two sets were nearly the same images; ``ema_decay: auto`` is what lets the criteria act.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mdd.config import load_config
from mdd.data import load_dataset
from mdd.data.latents import cached_latents
from mdd.diffusion.base import load_base, prepare_trainable
from mdd.diffusion.sampling import make_labels
from mdd.eval.diagnostics import intra_class_cosine
from mdd.stages.finetune import finetune, read_finetuned
from mdd.stages.sample import generate_images

STEPS = 100
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def shipped(tmp_path_factory: pytest.TempPathFactory):
    config = load_config(
        "experiments/fashion_mnist.yaml",
        [f"finetune.steps={STEPS}", "sample.steps=10", "sample.ipc=10"],
    )
    data = load_dataset(config.data)
    assert config.pretrain.checkpoint is not None
    base = load_base(config.pretrain.checkpoint, CPU)
    latents = cached_latents(
        data.train.images,
        data.train.labels,
        autoencoder=base.autoencoder,
        data_fingerprint=data.fingerprint,
        flip=False,
        cache_dir=tmp_path_factory.mktemp("latents"),
        batch_size=512,
        device=CPU,
    )
    return config, base, prepare_trainable(base, difffit=True), latents


def _sampled_set(shipped, tmp_path: Path, **weights: float) -> tuple[torch.Tensor, float]:
    config, base, trainable, latents = shipped
    tuned = config.finetune.model_copy(update=weights)
    folder = tmp_path / "-".join(f"{k}{v}" for k, v in weights.items())
    summary = finetune(trainable, latents, tuned, 0, folder, CPU, lambda m, s: None)
    weights = read_finetuned(folder, CPU).weights
    labels = make_labels(base.num_classes, config.sample.ipc)
    images = generate_images(base, labels, config.sample, 0, CPU, weights)
    return images, summary.weight_distance


def test_strong_diversity_lowers_intra_class_similarity_of_the_samples(
    shipped, tmp_path: Path
) -> None:
    labels = make_labels(10, 10)
    plain, plain_distance = _sampled_set(shipped, tmp_path, lambda_r=0.0, lambda_d=0.0)
    diverse, diverse_distance = _sampled_set(shipped, tmp_path, lambda_r=0.0, lambda_d=1.0)
    assert plain_distance > 0 and diverse_distance > plain_distance
    moved = (diverse.float() - plain.float()).abs().mean() / 255
    similarity_plain = intra_class_cosine(plain.float(), labels)
    similarity_diverse = intra_class_cosine(diverse.float(), labels)
    print(
        f"pixel MAD {moved:.4f}; intra-class cosine {similarity_plain:.4f} -> "
        f"{similarity_diverse:.4f}"
    )
    assert moved > 0.05
    assert similarity_diverse < similarity_plain - 0.02
