"""The on-disk surrogate dataset: one format for every method, generated or selected.

The evaluation reads only this format, so it cannot tell a minimax set from random real images.
A surrogate folder holds:

- ``data.safetensors``: ``images`` uint8 [N, C, H, W] and ``labels`` int64 [N], what
  ``read_surrogate`` loads;
- ``images/<class_index>_<class_name>/<NNNNN>.png``: the same images as PNGs, to look at or to
  load with any ImageFolder reader (``NNNNN`` is the row in ``data.safetensors``; the class
  index is zero-padded so that folder order is class order);
- ``manifest.json``: what made the set (method, config hash, source checkpoint, seed, plus
  anything the writer adds) and what it holds (class names, ipc, image shape, count);
- ``grid.png``: one row per class, a glance at the set.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from mdd.errors import DataError

FORMAT = "mdd-surrogate/1"
DATA_FILE = "data.safetensors"
MANIFEST_FILE = "manifest.json"
GRID_FILE = "grid.png"
IMAGES_DIR = "images"
GRID_PADDING = 2

# What the writer must state about where the set came from (None where it does not apply,
# e.g. no source checkpoint for real images).
REQUIRED_MANIFEST_KEYS = ("method", "config_hash", "source_checkpoint", "seed")
# Derived from the data by write_surrogate, so a caller cannot contradict them.
DERIVED_MANIFEST_KEYS = (
    "format",
    "class_names",
    "ipc",
    "class_counts",
    "image_shape",
    "count",
    "created",
)


@dataclass(frozen=True)
class Surrogate:
    images: torch.Tensor  # uint8 [N, C, H, W]
    labels: torch.Tensor  # int64 [N]
    class_names: list[str]
    manifest: dict[str, Any]


def sanitise_class_name(name: str) -> str:
    """A folder-safe form of a class name: ``T-shirt/top`` -> ``T-shirt_top``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_.") or "class"


def class_folder_names(class_names: list[str]) -> list[str]:
    """``<index>_<sanitised name>`` per class, the index zero-padded so names sort by index."""
    width = len(str(max(len(class_names) - 1, 0)))
    return [
        f"{index:0{width}d}_{sanitise_class_name(name)}" for index, name in enumerate(class_names)
    ]


def write_surrogate(
    folder: Path,
    images: torch.Tensor,
    labels: torch.Tensor,
    class_names: list[str],
    manifest: dict[str, Any],
) -> Path:
    """Write a surrogate set to ``folder`` (replacing an earlier surrogate set there).

    The set is written to a sibling temporary folder and renamed into place, so a folder with
    a manifest is always complete. Returns ``folder``.
    """
    folder = Path(folder)
    labels = labels.to(torch.int64).cpu()
    images = images.cpu()
    _check_arrays(images, labels, len(class_names), where="write_surrogate")
    missing = [key for key in REQUIRED_MANIFEST_KEYS if key not in manifest]
    derived = [key for key in DERIVED_MANIFEST_KEYS if key in manifest]
    if missing or derived:
        raise ValueError(
            f"write_surrogate: manifest lacks {missing} / sets derived keys {derived}; "
            f"give {list(REQUIRED_MANIFEST_KEYS)} and leave {list(DERIVED_MANIFEST_KEYS)} out"
        )
    replaceable = not folder.exists() or (
        folder.is_dir() and (not any(folder.iterdir()) or (folder / MANIFEST_FILE).is_file())
    )
    if not replaceable:
        raise DataError(
            f"{folder}: exists and is not a surrogate dataset, so it is left alone. "
            "Hint: choose an empty or new output folder."
        )

    class_counts = torch.bincount(labels, minlength=len(class_names)).tolist()
    full_manifest = dict(manifest) | {
        "format": FORMAT,
        "class_names": list(class_names),
        # ipc is None when the classes are not equally represented; class_counts says how.
        "ipc": class_counts[0] if len(set(class_counts)) == 1 else None,
        "class_counts": class_counts,
        "image_shape": list(images.shape[1:]),
        "count": len(labels),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }

    staging = folder.with_name(folder.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    save_file({"images": images.contiguous(), "labels": labels.contiguous()}, staging / DATA_FILE)
    _write_pngs(staging / IMAGES_DIR, images, labels, class_names)
    save_grid(images, labels, staging / GRID_FILE)
    (staging / MANIFEST_FILE).write_text(json.dumps(full_manifest, indent=2) + "\n")
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)
    return folder


def read_surrogate(folder: Path) -> Surrogate:
    """Load a surrogate set written by ``write_surrogate``; DataError if it is missing or broken."""
    folder = Path(folder)
    hint = "Hint: run the stage that writes it (mdd-run) or check the path."
    if not folder.is_dir():
        raise DataError(f"{folder}: no surrogate dataset folder here. {hint}")
    for name in (DATA_FILE, MANIFEST_FILE):
        if not (folder / name).is_file():
            raise DataError(f"{folder}: {name} is missing, the set is incomplete. {hint}")
    try:
        manifest = json.loads((folder / MANIFEST_FILE).read_text())
        tensors = load_file(folder / DATA_FILE)
    except (json.JSONDecodeError, SafetensorError, OSError) as exc:
        raise DataError(f"{folder}: cannot read the surrogate set ({exc}). {hint}") from None
    if "images" not in tensors or "labels" not in tensors or "class_names" not in manifest:
        raise DataError(
            f"{folder}: {DATA_FILE} needs tensors 'images' and 'labels' and {MANIFEST_FILE} "
            f"'class_names'. {hint}"
        )
    images, labels, class_names = tensors["images"], tensors["labels"], manifest["class_names"]
    _check_arrays(images, labels, len(class_names), where=str(folder))
    if manifest.get("count") != len(labels) or manifest.get("image_shape") != list(
        images.shape[1:]
    ):
        raise DataError(
            f"{folder}: {MANIFEST_FILE} describes {manifest.get('count')} images of shape "
            f"{manifest.get('image_shape')} but {DATA_FILE} holds {len(labels)} of shape "
            f"{list(images.shape[1:])}. {hint}"
        )
    return Surrogate(images, labels, class_names, manifest)


def save_grid(images: torch.Tensor, labels: torch.Tensor, path: Path, per_class: int = 10) -> None:
    """A PNG with one row per class present, its first ``per_class`` images left to right.

    Rows of classes with fewer images are padded with black; the grid is as wide as the
    fullest row (at most ``per_class``), with ``GRID_PADDING`` black pixels around every image
    (the layout of torchvision's ``make_grid``). Grayscale stays grayscale.
    """
    classes = torch.unique(labels).tolist()
    rows = [torch.nonzero(labels == c).flatten()[:per_class] for c in classes]
    columns = max((len(row) for row in rows), default=0)
    if columns == 0:
        raise DataError(f"{path}: no images to put in a grid. Hint: the surrogate set is empty.")
    channels, height, width = images.shape[1:]
    tiles = images.new_zeros((len(classes), columns, channels, height, width))
    for row_index, row in enumerate(rows):
        tiles[row_index, : len(row)] = images[row]
    # Pad each tile on the top and left, lay the tiles out with one reshape (make_grid copies
    # tile by tile, about a second for 100 images of 256 px), then close the bottom and right.
    p = GRID_PADDING
    tiles = torch.nn.functional.pad(tiles, (p, 0, p, 0))
    grid = tiles.permute(0, 3, 1, 4, 2).reshape(len(classes) * (height + p), -1, channels)
    grid = torch.nn.functional.pad(grid, (0, 0, 0, p, 0, p)).numpy()
    Image.fromarray(grid[..., 0] if channels == 1 else grid).save(path, compress_level=1)


def _check_arrays(images: torch.Tensor, labels: torch.Tensor, num_classes: int, where: str) -> None:
    problems = [] if len(labels) else ["the set holds no images"]
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
        problems.append(
            f"images must be uint8 [N, 1 or 3, H, W], got {images.dtype} {list(images.shape)}"
        )
    if labels.dtype != torch.int64 or labels.ndim != 1:
        problems.append(f"labels must be int64 [N], got {labels.dtype} {list(labels.shape)}")
    elif len(labels) != len(images):
        problems.append(f"{len(images)} images but {len(labels)} labels")
    elif len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        problems.append(f"labels must lie in [0, {num_classes}) for {num_classes} class names")
    if problems:
        raise DataError(f"{where}: {'; '.join(problems)}.")


def _write_pngs(
    root: Path, images: torch.Tensor, labels: torch.Tensor, class_names: list[str]
) -> None:
    folders = [root / name for name in class_folder_names(class_names)]
    for class_folder in folders:
        class_folder.mkdir(parents=True)
    # One HWC copy for the whole set; PIL then only encodes (grayscale as mode "L").
    pixels = images.permute(0, 2, 3, 1).contiguous().numpy()
    if pixels.shape[-1] == 1:
        pixels = pixels[..., 0]
    width = max(5, len(str(len(labels) - 1)))
    paths = [
        folders[label] / f"{index:0{width}d}.png" for index, label in enumerate(labels.tolist())
    ]

    def write(index: int) -> None:
        # compress_level 1: 256 px RGB encodes in 2/3 of the time of PIL's default 6, for
        # files about 12 % larger.
        Image.fromarray(pixels[index]).save(paths[index], compress_level=1)

    # PIL releases the GIL while encoding, so threads spread the PNGs over the cores.
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        list(pool.map(write, range(len(paths))))
