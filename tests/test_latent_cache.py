"""The latent cache: encode once, reload without the encoder, miss on any changed input."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL

from mdd.data.latents import LatentSet, cached_latents
from mdd.diffusion.autoencoder import (
    Autoencoder,
    ConvAutoencoder,
    StableDiffusionVAE,
    uint8_to_unit,
)


def counting(autoencoder: Autoencoder) -> list[int]:
    """Count the images that pass through ``autoencoder.encode_distribution``."""
    calls: list[int] = []
    original = autoencoder.encode_distribution

    def encode_distribution(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        calls.append(images.shape[0])
        return original(images)

    autoencoder.encode_distribution = encode_distribution
    return calls


@pytest.fixture
def conv() -> ConvAutoencoder:
    torch.manual_seed(0)
    return ConvAutoencoder(in_channels=1, latent_channels=4)


@pytest.fixture
def data() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (10, 1, 28, 28), dtype=torch.uint8, generator=generator)
    return images, torch.arange(10) % 3


def load(images, labels, autoencoder, tmp_path: Path, **changes) -> LatentSet:
    settings = dict(
        autoencoder=autoencoder,
        data_fingerprint="abc",
        flip=False,
        cache_dir=tmp_path,
        batch_size=4,
        device="cpu",
    )
    settings.update(changes)
    return cached_latents(images, labels, **settings)


def test_second_use_loads_from_disk_without_encoding(conv, data, tmp_path: Path) -> None:
    images, labels = data
    calls = counting(conv)
    first = load(images, labels, conv, tmp_path)
    assert calls == [4, 4, 2] and not first.cache_hit
    second = load(images, labels, conv, tmp_path)
    assert calls == [4, 4, 2] and second.cache_hit
    assert second.path == first.path and second.path.is_file()
    assert torch.equal(second.mean, first.mean) and second.std is None
    assert torch.equal(second.labels, labels)
    with torch.no_grad():
        torch.testing.assert_close(second.mean, conv.encode(uint8_to_unit(images)))
    assert [p.name for p in tmp_path.iterdir()] == [first.path.name]


def test_changed_fingerprint_flip_or_weights_miss_the_cache(conv, data, tmp_path) -> None:
    images, labels = data
    first = load(images, labels, conv, tmp_path)
    other_data = load(images, labels, conv, tmp_path, data_fingerprint="abd")
    flipped = load(images, labels, conv, tmp_path, flip=True)
    conv.scaling_factor.fill_(0.5)
    rescaled = load(images, labels, conv, tmp_path)
    assert not (other_data.cache_hit or flipped.cache_hit or rescaled.cache_hit)
    assert len({first.path, other_data.path, flipped.path, rescaled.path}) == 4
    torch.testing.assert_close(rescaled.mean, first.mean * 0.5)


def test_flip_holds_mirrored_images_encoded_separately(conv, data, tmp_path) -> None:
    images, labels = data
    latents = load(images, labels, conv, tmp_path, flip=True)
    assert len(latents) == 20
    assert torch.equal(latents.labels, torch.cat([labels, labels]))
    with torch.no_grad():
        torch.testing.assert_close(latents.mean[:10], conv.encode(uint8_to_unit(images)))
        mirrored = conv.encode(uint8_to_unit(images.flip(-1)))
    torch.testing.assert_close(latents.mean[10:], mirrored)
    assert not torch.allclose(latents.mean[10:], latents.mean[:10].flip(-1))


def test_corrupt_cache_file_is_encoded_again_with_a_warning(conv, data, tmp_path) -> None:
    images, labels = data
    first = load(images, labels, conv, tmp_path)
    first.path.write_bytes(b"not a safetensors file")
    calls = counting(conv)
    with pytest.warns(UserWarning, match="unusable"):
        again = load(images, labels, conv, tmp_path)
    assert calls == [4, 4, 2] and not again.cache_hit
    assert torch.equal(again.mean, first.mean)
    assert load(images, labels, conv, tmp_path).cache_hit


def test_cache_file_with_other_labels_is_not_reused(conv, data, tmp_path) -> None:
    images, labels = data
    load(images, labels, conv, tmp_path)
    with pytest.warns(UserWarning, match="labels differ"):
        relabelled = load(images, (labels + 1) % 3, conv, tmp_path)
    assert not relabelled.cache_hit


def test_vae_cache_keeps_the_posterior_and_samples_fresh_latents(tmp_path: Path) -> None:
    torch.manual_seed(0)
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        latent_channels=4,
        norm_num_groups=4,
        sample_size=16,
    )
    ae = StableDiffusionVAE(vae)
    images = torch.randint(0, 256, (3, 3, 16, 16), dtype=torch.uint8)
    latents = load(images, torch.tensor([0, 1, 2]), ae, tmp_path, cache_dir=tmp_path / "c")
    assert latents.std is not None and latents.mean.shape == (3, 4, 8, 8)
    with torch.no_grad():
        posterior = vae.encode(uint8_to_unit(images)).latent_dist
    torch.testing.assert_close(latents.mean, posterior.mean * 0.18215)
    torch.testing.assert_close(latents.std, posterior.std * 0.18215)

    reloaded = load(images, torch.tensor([0, 1, 2]), ae, tmp_path, cache_dir=tmp_path / "c")
    assert reloaded.cache_hit and torch.equal(reloaded.std, latents.std)
    indices = torch.tensor([2, 0])
    drawn = reloaded.sample(indices, torch.Generator().manual_seed(5))
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(drawn, latents.mean[indices] + latents.std[indices] * noise)
    assert not torch.equal(drawn, reloaded.sample(indices, torch.Generator().manual_seed(6)))


def test_deterministic_sample_is_the_mean(conv, data, tmp_path) -> None:
    images, labels = data
    latents = load(images, labels, conv, tmp_path).to("cpu")
    assert torch.equal(latents.sample(torch.tensor([3, 1])), latents.mean[[3, 1]])
