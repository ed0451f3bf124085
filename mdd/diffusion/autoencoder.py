"""The autoencoder between images and the space the diffusion model works in.

The paper runs its DiT on Stable Diffusion VAE latents scaled by 0.18215 (METHOD.md
section 3); the embedded Fashion-MNIST default runs a latent DiT on 7x7x4 latents of a
small convolutional autoencoder that mdd trains itself (METHOD.md section 4); a pixel
space model uses the identity. All three share one interface, ``Autoencoder``: images
in [-1, 1] go in, *scaled* latents (unit-scale, ready for diffusion) come out.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from mdd.config import AutoencoderConfig
from mdd.errors import ConfigError, DataError, StageError
from mdd.progress import progress_bar

if TYPE_CHECKING:
    from diffusers import AutoencoderKL

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
# The conv autoencoder's channels at full, half and quarter resolution (the shipped base's).
DEFAULT_WIDTHS = (16, 32, 64)


def uint8_to_unit(images_uint8: Tensor) -> Tensor:
    """uint8 images in [0, 255] -> float32 in [-1, 1], the range every autoencoder takes."""
    if images_uint8.dtype != torch.uint8:
        raise TypeError(f"expected uint8 images, got {images_uint8.dtype}")
    return images_uint8.float().div_(127.5).sub_(1.0)


def unit_to_uint8(images: Tensor) -> Tensor:
    """float images in [-1, 1] -> uint8 in [0, 255], rounded to the nearest level."""
    return images.float().add(1.0).mul_(127.5).round_().clamp_(0, 255).to(torch.uint8)


def _weights_digest(module: nn.Module, settings: dict[str, Any]) -> str:
    """sha256 (16 hex digits) of every tensor in the state dict plus the settings."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        # Raw bytes of any dtype (bfloat16 has no numpy equivalent).
        raw = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
        digest.update(raw.numpy().tobytes())
    return digest.hexdigest()[:16]


@contextmanager
def _evaluating_on(module: nn.Module, device: torch.device | str) -> Iterator[None]:
    """Move ``module`` to ``device`` in eval mode, no autograd; restore train mode after."""
    was_training = module.training
    module.to(device).eval()
    try:
        with torch.no_grad():
            yield
    finally:
        module.train(was_training)


class Autoencoder(nn.Module, ABC):
    """Images in [-1, 1], ``[N, C, H, W]`` <-> scaled latents for the diffusion model.

    Subclasses give the latent distribution (``encode_distribution``); a deterministic
    encoder returns no standard deviation. ``identity`` names the exact encoder (kind,
    weights, scaling) so that cached latents are never reused across encoders.
    """

    kind: ClassVar[str]

    @abstractmethod
    def encode_distribution(self, images: Tensor) -> tuple[Tensor, Tensor | None]:
        """Scaled latent mean and standard deviation (None when deterministic)."""

    @abstractmethod
    def decode(self, latents: Tensor) -> Tensor:
        """Scaled latents -> images clamped to [-1, 1]."""

    @abstractmethod
    def latent_shape(self, image_shape: tuple[int, ...]) -> tuple[int, ...]:
        """``(C, H, W)`` of one image -> ``(c, h, w)`` of its latent."""

    @abstractmethod
    def settings(self) -> dict[str, Any]:
        """The plain values that rebuild this autoencoder around its weights."""

    def encode(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Scaled latents; a stochastic encoder draws one sample, as the DiT training code does."""
        mean, std = self.encode_distribution(images)
        if std is None:
            return mean
        noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return mean + std * noise

    @property
    def identity(self) -> str:
        """``kind-<hash of weights and settings>``: the autoencoder's part of a cache key."""
        return f"{self.kind}-{_weights_digest(self, self.settings())}"

    def encode_distribution_batched(
        self,
        images_uint8: Tensor,
        batch_size: int,
        device: torch.device | str,
        *,
        hflip: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """Encode uint8 images batch by batch on ``device`` (the module moves there).

        Returns CPU float32 mean and std (std None when deterministic). ``hflip`` mirrors
        each batch before encoding, so flipped copies never need a second image tensor.
        """
        count = images_uint8.shape[0]
        shape = (count, *self.latent_shape(tuple(images_uint8.shape[1:])))
        # Filled in place: no list of batches plus a concatenated copy at the end.
        mean = torch.empty(shape, dtype=torch.float32)
        std: Tensor | None = None
        with _evaluating_on(self, device):
            for start in range(0, count, batch_size):
                batch = images_uint8[start : start + batch_size].to(device, non_blocking=True)
                if hflip:
                    batch = batch.flip(-1)
                batch_mean, batch_std = self.encode_distribution(uint8_to_unit(batch))
                stop = start + batch.shape[0]
                mean[start:stop] = batch_mean.float().cpu()
                if batch_std is not None:
                    std = torch.empty(shape, dtype=torch.float32) if std is None else std
                    std[start:stop] = batch_std.float().cpu()
        return mean, std

    def encode_batched(
        self, images_uint8: Tensor, batch_size: int, device: torch.device | str
    ) -> Tensor:
        """CPU float32 scaled latents of uint8 images (one sample for a stochastic encoder)."""
        mean, std = self.encode_distribution_batched(images_uint8, batch_size, device)
        return mean if std is None else mean.add_(std * torch.randn_like(std))

    def decode_batched(
        self, latents: Tensor, batch_size: int, device: torch.device | str
    ) -> Tensor:
        """Decode scaled latents batch by batch on ``device``; CPU uint8 images."""
        batches = []
        with _evaluating_on(self, device):
            for start in range(0, latents.shape[0], batch_size):
                batch = latents[start : start + batch_size].to(device, torch.float32)
                batches.append(unit_to_uint8(self.decode(batch)).cpu())
        return torch.cat(batches)


class IdentityAutoencoder(Autoencoder):
    """Pixel space: the latents are the images themselves."""

    kind = "identity"

    def encode_distribution(self, images: Tensor) -> tuple[Tensor, Tensor | None]:
        return images, None

    def decode(self, latents: Tensor) -> Tensor:
        return latents.clamp(-1.0, 1.0)

    def latent_shape(self, image_shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(image_shape)

    def settings(self) -> dict[str, Any]:
        return {}


def _with_silu(*layers: nn.Module) -> nn.Sequential:
    """``layers`` in order with a SiLU between each two."""
    chain: list[nn.Module] = []
    for layer in layers:
        chain += [layer, nn.SiLU()]
    return nn.Sequential(*chain[:-1])


class ConvAutoencoder(Autoencoder):
    """A small convolutional autoencoder, ``C x H x W -> latent_channels x H/4 x W/4``.

    The embedded default's autoencoder (METHOD.md section 4): Fashion-MNIST 28x28x1 ->
    7x7x4. Widths are kept small and the decoder upsamples with transposed convolutions
    (cheaper than nearest upsampling + conv at full resolution) so that training runs at
    about 1500 images/s on one CPU core. ``scaling_factor`` (1/std of the training
    latents) is a buffer, so it is saved and hashed with the weights.
    """

    kind = "conv"

    def __init__(
        self,
        in_channels: int = 1,
        latent_channels: int = 4,
        widths: tuple[int, int, int] = DEFAULT_WIDTHS,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.latent_channels = latent_channels
        self.widths = tuple(widths)
        full, half, quarter = self.widths
        conv, up = nn.Conv2d, nn.ConvTranspose2d
        # Two stride-2 steps: 28 -> 14 -> 7. Layer indices are the saved weights' names.
        self.encoder = _with_silu(
            conv(in_channels, full, 3, padding=1),
            conv(full, half, 3, stride=2, padding=1),
            conv(half, half, 3, padding=1),
            conv(half, quarter, 3, stride=2, padding=1),
            conv(quarter, latent_channels, 1),
        )
        self.decoder = _with_silu(
            conv(latent_channels, quarter, 1),
            conv(quarter, quarter, 3, padding=1),
            up(quarter, half, 4, stride=2, padding=1),
            conv(half, half, 3, padding=1),
            up(half, full, 4, stride=2, padding=1),
            conv(full, in_channels, 3, padding=1),
        ).append(nn.Tanh())
        self.register_buffer("scaling_factor", torch.tensor(1.0))

    def encode_distribution(self, images: Tensor) -> tuple[Tensor, Tensor | None]:
        return self.encoder(images) * self.scaling_factor, None

    def decode(self, latents: Tensor) -> Tensor:
        return self.decoder(latents / self.scaling_factor).clamp(-1.0, 1.0)

    def latent_shape(self, image_shape: tuple[int, ...]) -> tuple[int, ...]:
        channels, height, width = image_shape
        if channels != self.in_channels or height % 4 or width % 4:
            raise ConfigError(
                f"the conv autoencoder takes {self.in_channels}-channel images with sides "
                f"divisible by 4, got {channels}x{height}x{width}. Hint: set data.image_size "
                "to a multiple of 4, or autoencoder.kind to identity."
            )
        return (self.latent_channels, height // 4, width // 4)

    def settings(self) -> dict[str, Any]:
        return {
            "in_channels": self.in_channels,
            "latent_channels": self.latent_channels,
            "widths": list(self.widths),
        }


def train_conv_autoencoder(
    images_uint8: Tensor,
    *,
    latent_channels: int,
    widths: tuple[int, int, int] | None = None,
    epochs: float,
    batch_size: int,
    lr: float,
    seed: int,
    device: torch.device | str,
    progress: bool = False,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
) -> ConvAutoencoder:
    """Train a ``ConvAutoencoder`` on uint8 images ``[N, C, H, W]`` and set its scaling.

    Adam on the pixel MSE, learning rate decayed to zero by a cosine over the run (the
    run is only a few epochs, METHOD.md section 4). ``on_step(step, {"loss", "lr"})``
    is called after every optimiser step, ``step`` counting from 1. Afterwards the
    latents of the training images are divided by their standard deviation, so that
    the diffusion model sees unit-scale data, as the 0.18215 of the SD VAE does.
    """
    images = images_uint8.to(device)
    # Seed the initialisation without touching the caller's global random state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ConvAutoencoder(images.shape[1], latent_channels, widths or DEFAULT_WIDTHS)
        model = model.to(device)
    model.latent_shape(tuple(images.shape[1:]))
    shuffler = torch.Generator().manual_seed(seed)
    steps_per_epoch = math.ceil(images.shape[0] / batch_size)
    # Fractional epochs let smoke runs train on part of the data.
    total_steps = max(1, math.ceil(epochs * steps_per_epoch))
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(total_steps, 1))
    model.train()
    step = 0
    with progress_bar(total=total_steps, desc="autoencoder", disable=not progress) as bar:
        while step < total_steps:
            order = torch.randperm(images.shape[0], generator=shuffler).to(device)
            for batch_indices in order.split(batch_size)[: total_steps - step]:
                batch = uint8_to_unit(images[batch_indices])
                loss = nn.functional.mse_loss(model.decode(model.encode(batch)), batch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                current_lr = schedule.get_last_lr()[0]
                schedule.step()
                step += 1
                loss_value = loss.item()
                if not math.isfinite(loss_value):
                    raise StageError(
                        f"autoencoder training diverged at step {step} (loss {loss_value}). "
                        "Hint: lower autoencoder.lr."
                    )
                bar.update()
                bar.set_postfix(loss=f"{loss_value:.4f}")
                if on_step is not None:
                    on_step(step, {"loss": loss_value, "lr": current_lr})
    latents = model.encode_batched(images, batch_size * 4, device)
    model.scaling_factor.fill_(1.0 / latents.double().std().item())
    return model.eval()


def _looks_like_hub_id(path: str) -> bool:
    return re.fullmatch(r"[\w.-]+/[\w.-]+", path) is not None and not Path(path).exists()


_VAE_LAYOUT = (
    "expected a diffusers AutoencoderKL folder (config.json + "
    "diffusion_pytorch_model.safetensors), a pipeline folder holding one in vae/ "
    "(the facebook/DiT-XL-2-256 layout), or a hub id when online"
)


class StableDiffusionVAE(Autoencoder):
    """The Stable Diffusion VAE (diffusers ``AutoencoderKL``), the paper's latent space.

    Latents are ``(z - shift_factor) * scaling_factor`` with ``z`` from the posterior;
    0.18215 for the SD VAE (METHOD.md section 3), read from the VAE's config.
    """

    kind = "sd_vae"

    def __init__(self, vae: AutoencoderKL, scaling_factor: float | None = None) -> None:
        super().__init__()
        self.vae = vae
        if scaling_factor is not None:
            # Stored in the VAE's own config, so save_pretrained keeps the override.
            vae.register_to_config(scaling_factor=scaling_factor)
        self.scaling_factor = float(vae.config.scaling_factor)
        self.shift_factor = float(vae.config.shift_factor or 0.0)

    @classmethod
    def from_path(cls, path: str | Path, scaling_factor: float | None = None) -> StableDiffusionVAE:
        """Load from a local folder (the VAE itself, or a pipeline with ``vae/``) or a hub id."""
        from diffusers import AutoencoderKL

        text = str(path)
        folder = Path(text).expanduser()
        if folder.is_dir():
            subfolder = "vae" if (folder / "vae").is_dir() else None
            source = str(folder)
        elif _looks_like_hub_id(text):
            source, subfolder = text, "vae"
        else:
            raise ConfigError(f"autoencoder.path {text!r} does not exist: {_VAE_LAYOUT}.")
        try:
            vae = AutoencoderKL.from_pretrained(source, subfolder=subfolder)
        except OSError as first_error:
            if not _looks_like_hub_id(text):
                raise ConfigError(
                    f"autoencoder.path {text!r} holds no loadable VAE ({first_error}): "
                    f"{_VAE_LAYOUT}."
                ) from None
            try:  # a hub id may name the VAE itself (e.g. stabilityai/sd-vae-ft-ema)
                vae = AutoencoderKL.from_pretrained(source)
            except OSError as error:
                raise ConfigError(
                    f"autoencoder.path {text!r}: could not load a VAE ({error}): {_VAE_LAYOUT}."
                ) from None
        return cls(vae, scaling_factor)

    def encode_distribution(self, images: Tensor) -> tuple[Tensor, Tensor | None]:
        posterior = self.vae.encode(images).latent_dist
        mean = (posterior.mean - self.shift_factor) * self.scaling_factor
        return mean, posterior.std * self.scaling_factor

    def decode(self, latents: Tensor) -> Tensor:
        latents = latents / self.scaling_factor + self.shift_factor
        return self.vae.decode(latents).sample.clamp(-1.0, 1.0)

    def latent_shape(self, image_shape: tuple[int, ...]) -> tuple[int, ...]:
        _, height, width = image_shape
        factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        return (self.vae.config.latent_channels, height // factor, width // factor)

    def settings(self) -> dict[str, Any]:
        return {"scaling_factor": self.scaling_factor, "shift_factor": self.shift_factor}


def save_autoencoder(autoencoder: Autoencoder, folder: Path) -> None:
    """Write ``config.json`` (+ ``model.safetensors``); the VAE in the diffusers format."""
    folder.mkdir(parents=True, exist_ok=True)
    if isinstance(autoencoder, StableDiffusionVAE):
        autoencoder.vae.save_pretrained(folder)
        return
    state = {name: tensor.contiguous() for name, tensor in autoencoder.state_dict().items()}
    if state:
        save_file(state, folder / WEIGHTS_FILE)
    # config.json last: its presence marks a complete folder.
    config = {"kind": autoencoder.kind, **autoencoder.settings()}
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")


def load_autoencoder(folder: Path) -> Autoencoder:
    """Load what ``save_autoencoder`` wrote (weights from safetensors, nothing unpickled)."""
    config_path = folder / CONFIG_FILE
    if not config_path.is_file():
        raise DataError(
            f"{folder}: no {CONFIG_FILE}, so no saved autoencoder. Hint: delete the folder "
            "and rerun to train it again."
        )
    config = json.loads(config_path.read_text())
    if config.get("_class_name") == "AutoencoderKL":
        return StableDiffusionVAE.from_path(folder)
    kind = config.pop("kind", None)
    if kind == IdentityAutoencoder.kind:
        return IdentityAutoencoder()
    if kind != ConvAutoencoder.kind:
        raise DataError(f"{config_path}: unknown autoencoder kind {kind!r}.")
    model = ConvAutoencoder(**config)
    try:
        model.load_state_dict(load_file(folder / WEIGHTS_FILE))
    except (OSError, RuntimeError) as error:
        raise DataError(
            f"{folder / WEIGHTS_FILE}: unreadable autoencoder weights ({error}). Hint: delete "
            f"{folder} and rerun to train it again."
        ) from None
    return model.eval()


def _build_identity(cfg: AutoencoderConfig, conv_folder: Path | None) -> Autoencoder:
    return IdentityAutoencoder()


def _build_sd_vae(cfg: AutoencoderConfig, conv_folder: Path | None) -> Autoencoder:
    if cfg.path is None:
        raise ConfigError(
            "autoencoder.path is required for autoencoder.kind=sd_vae. Hint: a diffusers "
            "folder such as a local copy of facebook/DiT-XL-2-256, or a hub id."
        )
    vae = StableDiffusionVAE.from_path(cfg.path, cfg.scaling_factor)
    if vae.vae.config.latent_channels != cfg.latent_channels:
        raise ConfigError(
            f"autoencoder.latent_channels is {cfg.latent_channels} but the VAE at "
            f"{cfg.path} has {vae.vae.config.latent_channels}. Hint: set "
            f"autoencoder.latent_channels={vae.vae.config.latent_channels}."
        )
    return vae


def _load_trained_conv(cfg: AutoencoderConfig, conv_folder: Path | None) -> Autoencoder:
    if conv_folder is None:
        raise ValueError("autoencoder.kind=conv needs the folder its training stage wrote")
    model = load_autoencoder(conv_folder)
    if not isinstance(model, ConvAutoencoder):
        raise DataError(f"{conv_folder}: holds a {model.kind} autoencoder, not a conv one.")
    if cfg.scaling_factor is not None:
        model.scaling_factor.fill_(cfg.scaling_factor)
    return model


_BUILDERS: dict[str, Callable[[AutoencoderConfig, Path | None], Autoencoder]] = {
    "identity": _build_identity,
    "sd_vae": _build_sd_vae,
    "conv": _load_trained_conv,
}


def build_autoencoder(cfg: AutoencoderConfig, conv_folder: Path | None = None) -> Autoencoder:
    """The autoencoder ``cfg`` names; a conv one is loaded from ``conv_folder``, where the
    stage that trains it (``train_conv_autoencoder`` + ``save_autoencoder``) put it."""
    return _BUILDERS[cfg.kind](cfg, conv_folder)
