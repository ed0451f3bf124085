"""The three autoencoders: identity, the trained conv one, and the SD VAE from a folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL

from mdd.config import AutoencoderConfig, build_config
from mdd.diffusion.autoencoder import (
    ConvAutoencoder,
    IdentityAutoencoder,
    StableDiffusionVAE,
    build_autoencoder,
    load_autoencoder,
    save_autoencoder,
    train_conv_autoencoder,
    uint8_to_unit,
)
from mdd.errors import ConfigError, DataError
from mdd.pipeline.plan import base_key


def tiny_vae(**overrides: object) -> AutoencoderKL:
    torch.manual_seed(0)
    settings = dict(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=16,
    )
    settings.update(overrides)
    return AutoencoderKL(**settings).eval()


def smooth_images(count: int, seed: int = 0) -> torch.Tensor:
    """uint8 28x28 images upsampled from 7x7 noise: structure an autoencoder can learn."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(count, 1, 7, 7, generator=generator)
    fine = torch.nn.functional.interpolate(coarse, size=28, mode="bilinear")
    return (fine * 255).round().to(torch.uint8)


@pytest.fixture(scope="module")
def trained_conv() -> tuple[ConvAutoencoder, torch.Tensor, list[float]]:
    images = smooth_images(256)
    losses: list[float] = []
    model = train_conv_autoencoder(
        images,
        latent_channels=4,
        epochs=8,
        batch_size=32,
        lr=2e-3,
        seed=0,
        device="cpu",
        on_step=lambda step, metrics: losses.append(metrics["loss"]),
    )
    return model, images, losses


def test_uint8_conversion_maps_0_and_255_to_minus_one_and_one() -> None:
    images = torch.tensor([0, 51, 255], dtype=torch.uint8)
    assert uint8_to_unit(images).tolist() == pytest.approx([-1.0, 51 / 127.5 - 1.0, 1.0])


def test_identity_autoencoder_returns_images_unchanged() -> None:
    ae = IdentityAutoencoder()
    images = torch.randint(0, 256, (5, 1, 4, 4), dtype=torch.uint8)
    latents = ae.encode_batched(images, batch_size=2, device="cpu")
    assert torch.equal(latents, uint8_to_unit(images))
    assert ae.latent_shape((1, 4, 4)) == (1, 4, 4)
    assert torch.equal(ae.decode_batched(latents, batch_size=3, device="cpu"), images)
    assert ae.decode(torch.tensor([-3.0, 0.5, 2.0])).tolist() == [-1.0, 0.5, 1.0]


def test_conv_autoencoder_maps_28x28x1_to_7x7x4_and_back() -> None:
    ae = ConvAutoencoder(in_channels=1, latent_channels=4)
    images = torch.rand(3, 1, 28, 28) * 2 - 1
    latents = ae.encode(images)
    assert latents.shape == (3, 4, 7, 7)
    assert ae.latent_shape((1, 28, 28)) == (4, 7, 7)
    decoded = ae.decode(latents)
    assert decoded.shape == (3, 1, 28, 28)
    assert decoded.min() >= -1.0 and decoded.max() <= 1.0


def test_conv_autoencoder_rejects_sides_not_divisible_by_4() -> None:
    with pytest.raises(ConfigError, match="divisible by 4"):
        ConvAutoencoder().latent_shape((1, 30, 30))


def test_conv_training_reduces_the_reconstruction_loss(trained_conv) -> None:
    _, _, losses = trained_conv
    assert len(losses) == 8 * 256 // 32
    assert sum(losses[-4:]) / 4 < 0.5 * sum(losses[:4]) / 4


def test_scaling_factor_makes_training_latents_unit_std(trained_conv) -> None:
    model, images, _ = trained_conv
    assert model.scaling_factor.item() != 1.0
    latents = model.encode_batched(images, batch_size=100, device="cpu")
    assert latents.std().item() == pytest.approx(1.0, abs=1e-4)


def test_conv_training_is_reproducible_from_the_seed() -> None:
    images = smooth_images(64)
    runs = [
        train_conv_autoencoder(
            images, latent_channels=2, epochs=1, batch_size=32, lr=1e-3, seed=3, device="cpu"
        )
        for _ in range(2)
    ]
    assert runs[0].identity == runs[1].identity


def test_autoencoder_widths_shape_the_trained_model_and_the_base_key(tmp_path: Path) -> None:
    images = smooth_images(64)
    wide = train_conv_autoencoder(
        images, latent_channels=2, widths=(8, 16, 24), epochs=1, batch_size=32, lr=1e-3,
        seed=3, device="cpu",
    )  # fmt: skip
    assert wide.encoder[0].out_channels == 8 and wide.encoder[6].out_channels == 24
    save_autoencoder(wide, tmp_path / "ae")
    assert load_autoencoder(tmp_path / "ae").widths == (8, 16, 24)
    default, given = (
        build_config({"autoencoder": {"widths": widths}}) for widths in (None, [16, 32, 64])
    )
    # None keeps the keys made before the setting; any given widths are part of the key.
    assert base_key(default.base_recipe, "fp") == base_key(build_config({}).base_recipe, "fp")
    assert base_key(given.base_recipe, "fp") != base_key(default.base_recipe, "fp")


def test_conv_save_load_round_trips_bit_exactly(trained_conv, tmp_path: Path) -> None:
    model, images, _ = trained_conv
    save_autoencoder(model, tmp_path / "ae")
    assert sorted(p.name for p in (tmp_path / "ae").iterdir()) == [
        "config.json",
        "model.safetensors",
    ]
    loaded = load_autoencoder(tmp_path / "ae")
    assert isinstance(loaded, ConvAutoencoder)
    assert loaded.scaling_factor.item() == model.scaling_factor.item()
    for (name, want), (_, got) in zip(
        model.state_dict().items(), loaded.state_dict().items(), strict=True
    ):
        assert torch.equal(want, got), name
    assert loaded.identity == model.identity
    batch = uint8_to_unit(images[:8])
    assert torch.equal(loaded.encode(batch), model.encode(batch))


def test_identity_changes_when_weights_or_scaling_change() -> None:
    model = ConvAutoencoder()
    before = model.identity
    model.scaling_factor.fill_(0.5)
    scaled = model.identity
    with torch.no_grad():
        model.decoder[0].bias.add_(1e-3)
    assert len({before, scaled, model.identity}) == 3
    assert before.startswith("conv-")


def test_load_autoencoder_names_a_folder_without_config(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no config.json"):
        load_autoencoder(tmp_path)


def test_identity_autoencoder_save_load(tmp_path: Path) -> None:
    save_autoencoder(IdentityAutoencoder(), tmp_path)
    assert json.loads((tmp_path / "config.json").read_text()) == {"kind": "identity"}
    assert isinstance(load_autoencoder(tmp_path), IdentityAutoencoder)


def test_vae_latents_are_the_scaled_posterior(tmp_path: Path) -> None:
    vae = tiny_vae()
    vae.save_pretrained(tmp_path / "vae_only")
    ae = StableDiffusionVAE.from_path(tmp_path / "vae_only")
    assert ae.scaling_factor == 0.18215
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        posterior = vae.encode(images).latent_dist
        mean, std = ae.encode_distribution(images)
        torch.testing.assert_close(mean, posterior.mean * 0.18215)
        torch.testing.assert_close(std, posterior.std * 0.18215)
        sampled = ae.encode(images, generator=torch.Generator().manual_seed(1))
        expected = posterior.sample(generator=torch.Generator().manual_seed(1)) * 0.18215
        torch.testing.assert_close(sampled, expected)
        decoded = ae.decode(expected)
        torch.testing.assert_close(decoded, vae.decode(expected / 0.18215).sample.clamp(-1, 1))
    assert sampled.shape == (2, 4, 8, 8)
    assert ae.latent_shape((3, 16, 16)) == (4, 8, 8)


def test_vae_loads_from_a_pipeline_folder_with_a_vae_subfolder(tmp_path: Path) -> None:
    tiny_vae().save_pretrained(tmp_path / "dit" / "vae")
    tiny_vae().save_pretrained(tmp_path / "alone")
    from_pipeline = StableDiffusionVAE.from_path(tmp_path / "dit")
    assert from_pipeline.identity == StableDiffusionVAE.from_path(tmp_path / "alone").identity
    assert from_pipeline.identity.startswith("sd_vae-")


def test_vae_scaling_factor_comes_from_its_config_or_the_override(tmp_path: Path) -> None:
    tiny_vae(scaling_factor=0.5).save_pretrained(tmp_path / "vae")
    assert StableDiffusionVAE.from_path(tmp_path / "vae").scaling_factor == 0.5
    cfg = AutoencoderConfig(kind="sd_vae", path=str(tmp_path / "vae"), scaling_factor=0.25)
    overridden = build_autoencoder(cfg)
    assert overridden.scaling_factor == 0.25
    save_autoencoder(overridden, tmp_path / "saved")
    assert load_autoencoder(tmp_path / "saved").scaling_factor == 0.25


def test_missing_vae_path_names_the_expected_layout(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="vae/"):
        StableDiffusionVAE.from_path(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="AutoencoderKL"):
        StableDiffusionVAE.from_path(tmp_path / "empty")


def test_build_autoencoder_checks_the_vae_latent_channels(tmp_path: Path) -> None:
    tiny_vae().save_pretrained(tmp_path / "vae")
    cfg = AutoencoderConfig(kind="sd_vae", path=str(tmp_path / "vae"), latent_channels=8)
    with pytest.raises(ConfigError, match="latent_channels=4"):
        build_autoencoder(cfg)
    with pytest.raises(ConfigError, match="autoencoder.path is required"):
        build_autoencoder(AutoencoderConfig(kind="sd_vae"))


def test_build_autoencoder_loads_a_trained_conv_with_its_scaling(tmp_path: Path) -> None:
    model = ConvAutoencoder()
    model.scaling_factor.fill_(0.3)
    save_autoencoder(model, tmp_path)
    assert build_autoencoder(AutoencoderConfig(kind="conv"), tmp_path).identity == model.identity
    overridden = build_autoencoder(AutoencoderConfig(kind="conv", scaling_factor=2.0), tmp_path)
    assert overridden.scaling_factor.item() == 2.0
    assert isinstance(build_autoencoder(AutoencoderConfig(kind="identity")), IdentityAutoencoder)
