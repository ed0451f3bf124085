"""The latent cache: training images are encoded once and their latents kept on disk.

The reference code encodes every batch with the VAE at every fine-tuning step; here the
encoder runs once per (data, autoencoder, resolution, flip) and every later run, trial
and step reads the safetensors file. For a stochastic encoder (the SD VAE) the cache
holds the posterior's mean and standard deviation, so each step still draws a fresh
latent sample, as ``latent_dist.sample()`` in the DiT training code does (METHOD.md
section 3), without running the encoder.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from mdd.atomic import write_atomically
from mdd.diffusion.autoencoder import Autoencoder

# Bumped when the file layout changes, so old files are simply not found.
CACHE_FORMAT = 1


@dataclass(frozen=True)
class LatentSet:
    """Cached latents of a training set, ``mean[i]`` the latent of item ``i``.

    With ``flip`` the set has 2N items: the N originals, then their horizontal mirrors
    (encoded from the mirrored images), with ``labels`` repeated to match. ``std`` is
    None for a deterministic encoder. ``cache_hit`` says whether the file already existed.
    """

    mean: Tensor
    std: Tensor | None
    labels: Tensor
    path: Path
    cache_hit: bool

    def __len__(self) -> int:
        return self.mean.shape[0]

    def sample(self, indices: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Latents of ``indices``: ``mean + std * noise``, or the mean when deterministic."""
        mean = self.mean[indices]
        if self.std is None:
            return mean
        noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return torch.addcmul(mean, self.std[indices], noise)

    def of_classes(self, classes: range) -> LatentSet:
        """The items whose label is in ``classes`` (a class phase's latents), in order."""
        keep = (self.labels >= classes.start) & (self.labels < classes.stop)
        std = None if self.std is None else self.std[keep]
        return replace(self, mean=self.mean[keep], std=std, labels=self.labels[keep])

    def to(self, device: torch.device | str) -> LatentSet:
        """The same set on ``device`` (e.g. kept on the GPU for the whole fine-tuning)."""
        std = None if self.std is None else self.std.to(device)
        return replace(self, mean=self.mean.to(device), std=std, labels=self.labels.to(device))


def cache_key(
    images_uint8: Tensor, *, autoencoder: Autoencoder, data_fingerprint: str, flip: bool
) -> dict[str, object]:
    """Everything the cached latents depend on; its hash names the file."""
    return {
        "format": CACHE_FORMAT,
        "data": data_fingerprint,
        "autoencoder": autoencoder.identity,
        "image_shape": list(images_uint8.shape[1:]),
        "count": images_uint8.shape[0],
        "flip": flip,
    }


def cached_latents(
    images_uint8: Tensor,
    labels: Tensor,
    *,
    autoencoder: Autoencoder,
    data_fingerprint: str,
    flip: bool,
    cache_dir: Path,
    batch_size: int,
    device: torch.device | str,
) -> LatentSet:
    """Latents of ``images_uint8`` ``[N, C, H, W]``, from ``cache_dir`` or encoded and saved.

    ``data_fingerprint`` must identify exactly these images (the dataset and the split).
    An unreadable or mismatched cache file is encoded again, with a warning.
    """
    key = cache_key(
        images_uint8, autoencoder=autoencoder, data_fingerprint=data_fingerprint, flip=flip
    )
    key_text = json.dumps(key, sort_keys=True)
    path = cache_dir / f"latents-{hashlib.sha256(key_text.encode()).hexdigest()[:16]}.safetensors"
    all_labels = labels.long().repeat(2) if flip else labels.long()
    shape = (all_labels.shape[0], *autoencoder.latent_shape(tuple(images_uint8.shape[1:])))

    if path.exists():
        try:
            mean, std = _read(path, key_text, all_labels, shape)
            return LatentSet(mean, std, all_labels, path, cache_hit=True)
        except (SafetensorError, OSError, ValueError, KeyError) as error:
            warnings.warn(
                f"latent cache {path} is unusable ({error}); encoding the images again",
                stacklevel=2,
            )

    mean, std = autoencoder.encode_distribution_batched(images_uint8, batch_size, device)
    if flip:
        # Mirrors are encoded from mirrored images: a VAE latent is not equivariant to flips.
        flip_mean, flip_std = autoencoder.encode_distribution_batched(
            images_uint8, batch_size, device, hflip=True
        )
        mean = torch.cat([mean, flip_mean])
        if std is not None and flip_std is not None:
            std = torch.cat([std, flip_std])
    tensors = {"mean": mean, "labels": all_labels}
    if std is not None:
        tensors["std"] = std
    _write_atomically(path, tensors, key_text)
    return LatentSet(mean, std, all_labels, path, cache_hit=False)


def _read(
    path: Path, key_text: str, labels: Tensor, shape: tuple[int, ...]
) -> tuple[Tensor, Tensor | None]:
    """The cached mean and std; ValueError when the file is not the one asked for."""
    with safe_open(path, framework="pt") as handle:
        if (handle.metadata() or {}).get("key") != key_text:
            raise ValueError("its key does not match")
        names = set(handle.keys())
        mean = handle.get_tensor("mean")
        stored_labels = handle.get_tensor("labels")
        std = handle.get_tensor("std") if "std" in names else None
    if tuple(mean.shape) != shape or (std is not None and std.shape != mean.shape):
        raise ValueError(f"latents of shape {tuple(mean.shape)}, expected {shape}")
    if not torch.equal(stored_labels, labels):
        raise ValueError("its labels differ from the given ones")
    return mean, std


def _write_atomically(path: Path, tensors: dict[str, Tensor], key_text: str) -> None:
    """The latents with their key as metadata, written so readers never see half a file."""
    contiguous = {name: tensor.contiguous() for name, tensor in tensors.items()}

    def write(temporary: Path) -> None:
        save_file(contiguous, str(temporary), metadata={"key": key_text})

    write_atomically(path, write)
