"""ImageNet-style class-folder subsets, and the dataset fingerprint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mdd.config import DataConfig
from mdd.data import load_dataset
from mdd.data.fingerprint import dataset_fingerprint, file_entries
from mdd.data.folders import load_folder, subset_wnids
from mdd.errors import DataError

WOOF = (
    "n02096294 n02093754 n02111889 n02088364 n02086240 "
    "n02089973 n02087394 n02115641 n02099601 n02105641"
).split()
NETTE = (
    "n01440764 n02102040 n02979186 n03000684 n03028079 "
    "n03394916 n03417042 n03425413 n03445777 n03888257"
).split()
IDC = (
    "n02869837 n01749939 n02488291 n02107142 n13037406 "
    "n02091831 n04517823 n04589890 n03062245 n01773797"
).split()
RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def banded(width: int, height: int) -> Image.Image:
    """Red, green, blue thirds along the long side: the centre square is all green."""
    pixels = np.zeros((height, width, 3), np.uint8)
    long_side = max(width, height)
    for third, colour in enumerate((RED, GREEN, BLUE)):
        band = slice(third * long_side // 3, (third + 1) * long_side // 3)
        if width >= height:
            pixels[:, band] = colour
        else:
            pixels[band, :] = colour
    return Image.fromarray(pixels)


def write_tree(root: Path, wnids: list[str], per_class: int) -> list[Path]:
    """Per class: a wide PNG, a tall PNG, then grey JPEGs of odd sizes (value 10 * class)."""
    paths = []
    for label, wnid in enumerate(wnids):
        folder = root / wnid
        folder.mkdir(parents=True)
        for index in range(per_class):
            if index == 0:
                path, image = folder / "a_wide.png", banded(30, 10)
            elif index == 1:
                path, image = folder / "b_tall.PNG", banded(12, 36)
            else:
                size = (17 + index, 11 + 2 * index)
                path, image = folder / f"c_{index}.JPEG", Image.new("L", size, 10 * label)
            image.save(path)
            paths.append(path)
        (folder / "readme.txt").write_text("not an image")
    return paths


@pytest.fixture
def woof_tree(tmp_path: Path) -> tuple[Path, Path]:
    write_tree(tmp_path / "train", WOOF, per_class=3)
    write_tree(tmp_path / "val", WOOF, per_class=1)
    return tmp_path / "train", tmp_path / "val"


def test_subset_class_files_hold_the_papers_wnids_in_order() -> None:
    assert subset_wnids("woof") == WOOF
    assert subset_wnids("nette") == NETTE
    assert subset_wnids("idc") == IDC


def test_unknown_subset_is_named() -> None:
    with pytest.raises(DataError, match="data.subset='woof2'"):
        subset_wnids("woof2")


def test_images_are_centre_cropped_and_resized(woof_tree: tuple[Path, Path]) -> None:
    loaded = load_folder(woof_tree[0], WOOF, image_size=8, on_corrupt="fail", workers=2)
    assert loaded.images.shape == (30, 3, 8, 8)
    assert loaded.images.dtype == torch.uint8
    assert loaded.labels.tolist() == [c for c in range(10) for _ in range(3)]
    green = torch.tensor(GREEN, dtype=torch.uint8).view(3, 1, 1).expand(3, 8, 8)
    # files sort as a_wide.png, b_tall.PNG, c_2.JPEG inside each class folder
    assert torch.equal(loaded.images[0], green)
    assert torch.equal(loaded.images[1], green)
    grey = loaded.images[29].int()  # class 9: grey JPEG of value 90, read as RGB
    assert int((grey - 90).abs().max()) <= 2
    assert [path.name for path in loaded.files[:3]] == ["a_wide.png", "b_tall.PNG", "c_2.JPEG"]
    assert loaded.skipped == []


def test_missing_class_folders_are_all_listed_with_the_root(tmp_path: Path) -> None:
    write_tree(tmp_path, WOOF[:8], per_class=1)
    with pytest.raises(DataError) as caught:
        load_folder(tmp_path, WOOF, image_size=8, on_corrupt="skip")
    message = str(caught.value)
    assert str(tmp_path) in message
    assert "missing 2 of 10" in message
    assert "n02099601" in message and "n02105641" in message
    assert "n02096294" not in message


def write_corrupt(root: Path) -> list[Path]:
    garbage = root / WOOF[0] / "d_garbage.JPEG"
    garbage.write_bytes(b"this is not a jpeg")
    truncated = root / WOOF[3] / "d_truncated.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(
        truncated
    )
    truncated.write_bytes(truncated.read_bytes()[:400])
    return [garbage, truncated]


def test_corrupt_images_are_skipped_and_reported(woof_tree: tuple[Path, Path]) -> None:
    corrupt = write_corrupt(woof_tree[0])
    loaded = load_folder(woof_tree[0], WOOF, image_size=8, on_corrupt="skip")
    assert loaded.skipped == [str(path) for path in corrupt]
    assert len(loaded.images) == len(loaded.labels) == len(loaded.files) == 30
    assert not set(corrupt) & set(loaded.files)
    assert torch.bincount(loaded.labels).tolist() == [3] * 10


def test_corrupt_image_fails_naming_the_file(woof_tree: tuple[Path, Path]) -> None:
    corrupt = write_corrupt(woof_tree[0])
    with pytest.raises(DataError) as caught:
        load_folder(woof_tree[0], WOOF, image_size=8, on_corrupt="fail")
    message = str(caught.value)
    assert str(corrupt[0]) in message
    assert "and 1 more" in message
    assert "data.on_corrupt=skip" in message


def test_load_dataset_reads_an_imagenet_subset(woof_tree: tuple[Path, Path]) -> None:
    train_root, val_root = woof_tree
    write_corrupt(train_root)
    cfg = DataConfig(
        dataset="imagenet_subset",
        subset="woof",
        root=train_root,
        val_root=val_root,
        image_size=8,
        val_per_class=1,
    )
    splits = load_dataset(cfg)
    assert splits.class_names == WOOF
    assert (len(splits.train), len(splits.val), len(splits.test)) == (20, 10, 10)
    assert splits.test.images.shape == (10, 3, 8, 8)
    assert splits.class_counts() == {"train": [2] * 10, "val": [1] * 10, "test": [1] * 10}
    assert splits.found_by == "config"
    assert str(train_root) in splits.source and str(val_root) in splits.source
    assert len(splits.skipped) == 2
    assert "skipped unreadable images: 2" in splits.summary()


def test_imagenet_subset_needs_both_roots(tmp_path: Path) -> None:
    cfg = DataConfig(dataset="imagenet_subset", subset="nette", root=tmp_path)
    with pytest.raises(DataError, match="data.val_root not set"):
        load_dataset(cfg)


def test_file_entries_are_relative_with_sizes(tmp_path: Path) -> None:
    (tmp_path / "n1").mkdir()
    (tmp_path / "n1" / "x.png").write_bytes(b"12345")
    entries = file_entries([tmp_path / "n1" / "x.png"], tmp_path, "train")
    assert entries == [("train/n1/x.png", 5)]


def test_fingerprint_depends_on_files_sizes_and_split_only() -> None:
    entries = [("train/n1/a.png", 100), ("train/n1/b.png", 200)]
    base = dataset_fingerprint(entries, split_seed=0, val_per_class=500)
    assert len(base) == 16 and int(base, 16) >= 0
    assert dataset_fingerprint(entries[::-1], split_seed=0, val_per_class=500) == base
    assert dataset_fingerprint(entries, split_seed=1, val_per_class=500) != base
    assert dataset_fingerprint(entries, split_seed=0, val_per_class=50) != base
    resized = [("train/n1/a.png", 101), ("train/n1/b.png", 200)]
    assert dataset_fingerprint(resized, split_seed=0, val_per_class=500) != base
    assert dataset_fingerprint(entries[:1], split_seed=0, val_per_class=500) != base


def test_load_dataset_fingerprint_follows_split_seed_and_file_sizes(
    woof_tree: tuple[Path, Path],
) -> None:
    train_root, val_root = woof_tree
    cfg = DataConfig(
        dataset="imagenet_subset",
        subset="woof",
        root=train_root,
        val_root=val_root,
        image_size=8,
        val_per_class=1,
    )
    base = load_dataset(cfg).fingerprint
    assert load_dataset(cfg).fingerprint == base
    assert load_dataset(cfg.model_copy(update={"split_seed": 7})).fingerprint != base
    banded(60, 20).save(train_root / WOOF[5] / "a_wide.png")  # same name, other size
    assert load_dataset(cfg).fingerprint != base
