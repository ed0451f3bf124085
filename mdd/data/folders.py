"""ImageNet-style class-folder subsets (ImageWoof, ImageNette, ImageIDC) read into tensors.

A root holds one folder per ImageNet wnid. The wnids of each subset, in the paper's
class order, ship with the package in ``mdd/data/classes/<subset>.txt``. The paper uses
the ImageNet train folders themselves, not the fastai copies (METHOD.md section 3).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image

from mdd.errors import DataError

SUBSETS = ("woof", "nette", "idc")
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp"}


@dataclass(frozen=True)
class FolderImages:
    """Decoded images of one root; ``files`` are the images kept, in tensor order."""

    images: torch.Tensor  # uint8 [N, 3, S, S]
    labels: torch.Tensor  # int64 [N]
    files: list[Path]
    skipped: list[str]  # paths of the unreadable images that were skipped


def subset_wnids(subset: str) -> list[str]:
    """The ImageNet wnids of a subset, in class-index order."""
    if subset not in SUBSETS:
        raise DataError(f"data.subset={subset!r} is unknown. Fix: use one of {', '.join(SUBSETS)}.")
    text = resources.files("mdd.data").joinpath("classes", f"{subset}.txt").read_text()
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def list_class_files(root: Path, wnids: list[str]) -> tuple[list[Path], torch.Tensor]:
    """All image files under ``root/<wnid>/`` (sorted per class) and their class indices."""
    if not root.is_dir():
        raise DataError(
            f"{root}: no such folder. Fix: point the data root at a folder of wnid class folders."
        )
    missing = [wnid for wnid in wnids if not (root / wnid).is_dir()]
    if missing:
        raise DataError(
            f"{root}: missing {len(missing)} of {len(wnids)} class folders: {' '.join(missing)}. "
            "Fix: point the root at the ImageNet folder that holds all of them "
            "(one sub-folder per wnid)."
        )
    files: list[Path] = []
    counts = []
    for wnid in wnids:
        folder = root / wnid
        class_files = sorted(
            p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
        )
        if not class_files:
            raise DataError(f"{folder}: no images in this class folder. Fix: restore them.")
        files.extend(class_files)
        counts.append(len(class_files))
    labels = torch.repeat_interleave(torch.arange(len(wnids)), torch.tensor(counts))
    return files, labels


def _decode_into(path: Path, out: np.ndarray, image_size: int) -> str | None:
    """Centre-crop to a square, resize and write [3, S, S] into ``out``; the error if unreadable."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            side = min(width, height)
            left, top = (width - side) // 2, (height - side) // 2
            # crop before resizing: resize(box=...) would blend in pixels outside the square
            square = (
                image.convert("RGB")
                .crop((left, top, left + side, top + side))
                .resize((image_size, image_size), Image.Resampling.BICUBIC)
            )
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        return f"{type(exc).__name__}: {exc}"
    out[...] = np.asarray(square).transpose(2, 0, 1)
    return None


def load_folder(
    root: Path,
    wnids: list[str],
    image_size: int,
    on_corrupt: Literal["skip", "fail"],
    workers: int | None = None,
) -> FolderImages:
    """Decode every image of the classes ``wnids`` under ``root`` into a uint8 tensor."""
    files, labels = list_class_files(root, wnids)
    images = np.empty((len(files), 3, image_size, image_size), dtype=np.uint8)
    workers = workers or min(8, os.cpu_count() or 1)
    # PIL releases the GIL while decoding and resizing, so threads run in parallel here.
    with ThreadPoolExecutor(max_workers=workers) as pool:
        errors = list(pool.map(_decode_into, files, images, [image_size] * len(files)))
    failed = [(path, error) for path, error in zip(files, errors, strict=True) if error]
    if failed and on_corrupt == "fail":
        path, error = failed[0]
        others = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
        raise DataError(
            f"{path}: unreadable image ({error}){others}. Fix: delete or replace it, or set "
            "data.on_corrupt=skip to leave such files out."
        )
    keep = np.array([error is None for error in errors], dtype=bool)
    return FolderImages(
        images=torch.from_numpy(images[keep]) if failed else torch.from_numpy(images),
        labels=labels[torch.from_numpy(keep)],
        files=[path for path, ok in zip(files, keep, strict=True) if ok],
        skipped=[str(path) for path, _ in failed],
    )


# ImageNet-1k class indices (position in the sorted list of the 1000 wnids) of the
# ImageWoof and ImageNette classes, for class-conditional ImageNet models such as
# DiT-XL/2 when the data root holds only the subset's folders.
KNOWN_IMAGENET_INDEX = {
    "n02096294": 193, "n02093754": 182, "n02111889": 258, "n02088364": 162,
    "n02086240": 155, "n02089973": 167, "n02087394": 159, "n02115641": 273,
    "n02099601": 207, "n02105641": 229,
    "n01440764": 0, "n02102040": 217, "n02979186": 482, "n03000684": 491,
    "n03028079": 497, "n03394916": 566, "n03417042": 569, "n03425413": 571,
    "n03445777": 574, "n03888257": 701,
}  # fmt: skip


def imagenet_indices(root: Path, wnids: list[str]) -> list[int]:
    """The ImageNet-1k class index of each wnid: its rank among the 1000 class folders of a
    full ImageNet train root (as torchvision's ImageFolder numbers them), else the table above."""
    folders = sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
    if len(folders) == 1000:
        return [folders.index(wnid) for wnid in wnids]
    unknown = [wnid for wnid in wnids if wnid not in KNOWN_IMAGENET_INDEX]
    if unknown:
        raise DataError(
            f"{root}: holds {len(folders)} class folders, not the 1000 of ImageNet-1k, and the "
            f"ImageNet index of {' '.join(unknown)} is not known. Fix: point data.root at the "
            "full ImageNet train folder, so class indices match the pretrained model."
        )
    return [KNOWN_IMAGENET_INDEX[wnid] for wnid in wnids]
