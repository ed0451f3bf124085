"""One entry point from a data config to train / val / test image tensors.

``load_dataset`` picks the reader by ``data.dataset``, holds out the validation split
from the training images (METHOD.md section 5: tuning never sees the test set) and
fingerprints what it read.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mdd.config import DataConfig
from mdd.data import fashion_mnist
from mdd.data.fingerprint import dataset_fingerprint, file_entries
from mdd.data.folders import load_folder, subset_wnids
from mdd.data.splits import stratified_split
from mdd.errors import DataError

# Images resized per chunk so that the float copy stays small (60k x 1 x 64 x 64 floats = 1 GB).
_RESIZE_CHUNK = 8192


@dataclass(frozen=True)
class ImageSet:
    images: torch.Tensor  # uint8 [N, C, H, W]
    labels: torch.Tensor  # int64 [N]

    def __len__(self) -> int:
        return len(self.labels)

    def select(self, index: torch.Tensor) -> ImageSet:
        return ImageSet(self.images[index], self.labels[index])

    def class_counts(self, num_classes: int) -> list[int]:
        return torch.bincount(self.labels, minlength=num_classes).tolist()


@dataclass(frozen=True)
class DatasetSplits:
    train: ImageSet
    val: ImageSet
    test: ImageSet
    class_names: list[str]
    source: str  # the folder(s) the images were read from
    found_by: str  # 'config', 'MDD_DATA_DIR', 'debian package' or 'download'
    fingerprint: str
    skipped: list[str]  # unreadable images left out (data.on_corrupt=skip)

    def class_counts(self) -> dict[str, list[int]]:
        """Images per class for each split, in class-index order."""
        num_classes = len(self.class_names)
        return {
            name: split.class_counts(num_classes)
            for name, split in (("train", self.train), ("val", self.val), ("test", self.test))
        }

    def summary(self) -> str:
        """Where the data came from, its fingerprint and a per-class table of split sizes."""
        counts = self.class_counts()
        channels, height, width = self.train.images.shape[1:]
        width_name = max(len("total"), *(len(name) for name in self.class_names))
        lines = [
            f"source: {self.source} (found by: {self.found_by})",
            f"fingerprint: {self.fingerprint}",
            f"images: {channels}x{height}x{width} uint8",
            f"skipped unreadable images: {len(self.skipped)}",
            *(f"  {path}" for path in self.skipped),
            f"{'class':<{width_name}} {'train':>7} {'val':>7} {'test':>7}",
        ]
        for index, name in enumerate(self.class_names):
            row = (counts[split][index] for split in ("train", "val", "test"))
            lines.append(f"{name:<{width_name}} " + " ".join(f"{n:>7}" for n in row))
        totals = (len(self.train), len(self.val), len(self.test))
        lines.append(f"{'total':<{width_name}} " + " ".join(f"{n:>7}" for n in totals))
        return "\n".join(lines)


def resize_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear, antialiased resize of uint8 [N, C, H, W] images to [N, C, size, size]."""
    if images.shape[-2:] == (size, size):
        return images
    chunks = [
        F.interpolate(chunk.float(), size=(size, size), mode="bilinear", antialias=True)
        .round_()
        .clamp_(0, 255)
        .to(torch.uint8)
        for chunk in images.split(_RESIZE_CHUNK)
    ]
    return torch.cat(chunks)


def _split_train(
    full_train: ImageSet, cfg: DataConfig, class_names: list[str]
) -> tuple[ImageSet, ImageSet]:
    train_index, val_index = stratified_split(
        full_train.labels, cfg.val_per_class, cfg.split_seed, class_names
    )
    return full_train.select(train_index), full_train.select(val_index)


def _load_fashion_mnist(cfg: DataConfig) -> DatasetSplits:
    arrays = fashion_mnist.load_arrays(cfg.root, cfg.download_dir)

    def image_set(images: torch.Tensor, labels: torch.Tensor) -> ImageSet:
        images = images.unsqueeze(1)  # [N, 28, 28] -> [N, 1, 28, 28]
        if cfg.image_size != images.shape[-1]:
            images = resize_images(images, cfg.image_size)
        return ImageSet(images, labels.long())

    full_train = image_set(
        torch.from_numpy(arrays.train_images), torch.from_numpy(arrays.train_labels)
    )
    test = image_set(torch.from_numpy(arrays.test_images), torch.from_numpy(arrays.test_labels))
    class_names = list(fashion_mnist.CLASS_NAMES)
    train, val = _split_train(full_train, cfg, class_names)
    entries = file_entries(arrays.files, arrays.folder, "fashion_mnist")
    return DatasetSplits(
        train=train,
        val=val,
        test=test,
        class_names=class_names,
        source=str(arrays.folder),
        found_by=arrays.found_by,
        fingerprint=dataset_fingerprint(entries, cfg.split_seed, cfg.val_per_class),
        skipped=[],
    )


def _load_imagenet_subset(cfg: DataConfig) -> DatasetSplits:
    unset = [name for name in ("root", "val_root") if getattr(cfg, name) is None]
    if unset:
        raise DataError(
            f"data.{' and data.'.join(unset)} not set: imagenet_subset needs data.root (the "
            "ImageNet train folder) and data.val_root (the ImageNet val folder, used as the "
            "test split), each holding one sub-folder per wnid."
        )
    wnids = subset_wnids(cfg.subset)  # DataConfig guarantees a subset for this dataset
    train_folder = load_folder(cfg.root, wnids, cfg.image_size, cfg.on_corrupt)
    test_folder = load_folder(cfg.val_root, wnids, cfg.image_size, cfg.on_corrupt)
    train, val = _split_train(ImageSet(train_folder.images, train_folder.labels), cfg, wnids)
    entries = file_entries(train_folder.files, cfg.root, "train") + file_entries(
        test_folder.files, cfg.val_root, "test"
    )
    return DatasetSplits(
        train=train,
        val=val,
        test=ImageSet(test_folder.images, test_folder.labels),
        class_names=wnids,
        source=f"{cfg.root} (train, val), {cfg.val_root} (test)",
        found_by="config",
        fingerprint=dataset_fingerprint(entries, cfg.split_seed, cfg.val_per_class),
        skipped=train_folder.skipped + test_folder.skipped,
    )


_LOADERS: dict[str, Callable[[DataConfig], DatasetSplits]] = {
    "fashion_mnist": _load_fashion_mnist,
    "imagenet_subset": _load_imagenet_subset,
}


def load_dataset(cfg: DataConfig) -> DatasetSplits:
    """Read the dataset named by ``cfg.dataset`` into train / val / test uint8 tensors."""
    return _LOADERS[cfg.dataset](cfg)
