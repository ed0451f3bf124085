"""Fine-tuning and sampling never change the shared base model: fine-tuning trains its own
copies of the DiffFit tensors, and sampling is handed the weights it samples with."""

from __future__ import annotations

from pathlib import Path

import torch

from mdd.config import FinetuneConfig, SampleConfig
from mdd.data.latents import cached_latents
from mdd.diffusion.autoencoder import ConvAutoencoder
from mdd.diffusion.backbone import create_backbone
from mdd.diffusion.base import BaseModel, prepare_trainable
from mdd.diffusion.sampling import make_labels
from mdd.stages.finetune import finetune, read_finetuned
from mdd.stages.sample import generate_images

CPU = torch.device("cpu")


def _tiny_base() -> BaseModel:
    torch.manual_seed(0)
    autoencoder = ConvAutoencoder(1, 4).eval()
    return BaseModel(
        autoencoder=autoencoder,
        transformer=create_backbone("latent-tiny", 10, 4, 7),
        num_classes=10,
        latent_shape=(4, 7, 7),
        identity="test-tiny",
        class_ids=torch.arange(10),
    )


def test_finetuning_and_sampling_leave_the_shared_model_as_it_was(tmp_path: Path) -> None:
    base = _tiny_base()
    trainable = prepare_trainable(base, difffit=True)
    before = {k: v.clone() for k, v in base.transformer.state_dict().items()}
    images = torch.randint(0, 256, (40, 1, 28, 28), dtype=torch.uint8)
    latents = cached_latents(
        images,
        torch.arange(40) % 10,
        autoencoder=base.autoencoder,
        data_fingerprint="test-random",
        flip=False,
        cache_dir=tmp_path / "latents",
        batch_size=40,
        device=CPU,
    )
    # A high learning rate, so that a few steps move the trained tensors visibly.
    cfg = FinetuneConfig(steps=5, batch_size=8, lr=1e-2, lambda_r=0.1, lambda_d=0.1)
    finetune(trainable, latents, cfg, 0, tmp_path / "tuned", CPU, lambda m, s: None)
    tuned = read_finetuned(tmp_path / "tuned", CPU)
    assert set(tuned.weights) == set(trainable.initial)
    assert tuned.summary.weight_distance > 0

    sample = SampleConfig(ipc=1, steps=3, batch_size=10)
    labels = make_labels(10, 1)
    with_weights = generate_images(base, labels, sample, 0, CPU, tuned.weights)
    as_it_is = generate_images(base, labels, sample, 0, CPU)

    after = base.transformer.state_dict()
    assert all(torch.equal(before[name], after[name]) for name in before)
    # The weights reached the samples: the same seeds give other images with them.
    assert not torch.equal(with_weights, as_it_is)
    assert torch.equal(as_it_is, generate_images(base, labels, sample, 0, CPU))
