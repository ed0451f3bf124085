"""The surrogate dataset format: write, read back, PNG tree, grid and errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from mdd.data.surrogate import read_surrogate, save_grid, write_surrogate
from mdd.diffusion.autoencoder import unit_to_uint8
from mdd.errors import DataError

CLASS_NAMES = ["T-shirt/top", "Trouser", "Ankle boot"]
PROVENANCE = {"method": "minimax", "config_hash": "abc123", "source_checkpoint": "ckpt/ema"}


def _images(count: int, channels: int = 1, size: int = 6) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randint(
        0, 256, (count, channels, size, size), dtype=torch.uint8, generator=generator
    )


def _write(folder: Path, images: torch.Tensor, labels: torch.Tensor, **extra) -> Path:
    manifest = PROVENANCE | {"seed": [0, 1]} | extra
    return write_surrogate(folder, images, labels, CLASS_NAMES, manifest)


def test_unit_to_uint8_maps_unit_range_to_rounded_clamped_levels() -> None:
    images = torch.tensor([-1.5, -1.0, -0.5, 0.0, 0.3, 1.0, 2.0])
    # (x + 1) * 127.5 = -63.75, 0, 63.75, 127.5, 165.75, 255, 382.5; round half to even at 127.5.
    assert unit_to_uint8(images).tolist() == [0, 0, 64, 128, 166, 255, 255]
    assert unit_to_uint8(images).dtype == torch.uint8


def test_written_surrogate_reads_back_equal(tmp_path: Path) -> None:
    images = _images(6, channels=3)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    _write(tmp_path / "set", images, labels, guidance_scale=2.0)

    surrogate = read_surrogate(tmp_path / "set")
    assert torch.equal(surrogate.images, images)
    assert torch.equal(surrogate.labels, labels)
    assert surrogate.labels.dtype == torch.int64
    assert surrogate.class_names == CLASS_NAMES
    manifest = surrogate.manifest
    assert manifest == json.loads((tmp_path / "set" / "manifest.json").read_text())
    assert {key: manifest[key] for key in PROVENANCE} == PROVENANCE
    assert manifest["seed"] == [0, 1]
    assert manifest["guidance_scale"] == 2.0
    assert manifest["class_names"] == CLASS_NAMES
    assert manifest["ipc"] == 2
    assert manifest["class_counts"] == [2, 2, 2]
    assert manifest["image_shape"] == [3, 6, 6]
    assert manifest["count"] == 6
    assert manifest["created"].endswith("+00:00")


def test_png_tree_holds_every_image_under_its_class_folder(tmp_path: Path) -> None:
    images = _images(4)
    labels = torch.tensor([2, 0, 2, 1])
    folder = _write(tmp_path / "set", images, labels)

    class_folders = sorted(p.name for p in (folder / "images").iterdir())
    assert class_folders == ["0_T-shirt_top", "1_Trouser", "2_Ankle_boot"]
    expected = {
        "0_T-shirt_top/00001.png": 1,
        "1_Trouser/00003.png": 3,
        "2_Ankle_boot/00000.png": 0,
        "2_Ankle_boot/00002.png": 2,
    }
    tree = folder / "images"
    assert sorted(str(p.relative_to(tree)) for p in tree.rglob("*.png")) == sorted(expected)
    for relative, row in expected.items():
        pixels = np.asarray(Image.open(folder / "images" / relative))
        assert np.array_equal(pixels, images[row, 0].numpy())


def test_unequal_class_counts_leave_ipc_empty(tmp_path: Path) -> None:
    _write(tmp_path / "set", _images(4), torch.tensor([0, 0, 1, 2]))
    manifest = read_surrogate(tmp_path / "set").manifest
    assert manifest["ipc"] is None
    assert manifest["class_counts"] == [2, 1, 1]


def test_grid_has_one_row_per_class_and_the_expected_size(tmp_path: Path) -> None:
    images = _images(9, channels=3, size=5)
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2, 2])
    folder = _write(tmp_path / "set", images, labels)
    # 3 classes x min(per_class 10, fullest class 4) tiles of 5 px, 2 px padding around each.
    assert Image.open(folder / "grid.png").size == (4 * 7 + 2, 3 * 7 + 2)

    save_grid(images, labels, tmp_path / "grid.png", per_class=2)
    grid = np.asarray(Image.open(tmp_path / "grid.png"))
    assert grid.shape == (3 * 7 + 2, 2 * 7 + 2, 3)
    # Row 1, column 1 shows the second image of class 1 (item 5), at offset (2 + 7, 2 + 7).
    assert np.array_equal(grid[9:14, 9:14], images[5].permute(1, 2, 0).numpy())
    # The padding is black.
    assert (grid[:2] == 0).all() and (grid[:, 7:9] == 0).all()


def test_grid_of_grayscale_images_is_grayscale_with_blank_tiles_for_short_rows(
    tmp_path: Path,
) -> None:
    images = _images(3, channels=1, size=4) | 1  # no black pixels inside images
    labels = torch.tensor([0, 0, 1])
    save_grid(images, labels, tmp_path / "grid.png")
    grid = np.asarray(Image.open(tmp_path / "grid.png"))
    assert grid.shape == (2 * 6 + 2, 2 * 6 + 2)
    assert np.array_equal(grid[8:12, 2:6], images[2, 0].numpy())
    assert (grid[8:12, 8:12] == 0).all()


def test_rewriting_replaces_an_earlier_surrogate(tmp_path: Path) -> None:
    _write(tmp_path / "set", _images(6), torch.tensor([0, 0, 1, 1, 2, 2]))
    _write(tmp_path / "set", _images(3), torch.tensor([0, 1, 2]))
    assert read_surrogate(tmp_path / "set").manifest["count"] == 3
    assert len(list((tmp_path / "set").rglob("*.png"))) == 3 + 1  # images and grid
    assert [p.name for p in tmp_path.iterdir()] == ["set"]


def test_writing_into_an_empty_folder_works(tmp_path: Path) -> None:
    (tmp_path / "set").mkdir()
    _write(tmp_path / "set", _images(3), torch.tensor([0, 1, 2]))
    assert read_surrogate(tmp_path / "set").manifest["count"] == 3


def test_writing_over_a_folder_that_is_not_a_surrogate_raises(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="not a surrogate dataset"):
        _write(tmp_path / "mine", _images(3), torch.tensor([0, 1, 2]))
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_manifest_without_provenance_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="source_checkpoint"):
        write_surrogate(
            tmp_path / "set", _images(3), torch.tensor([0, 1, 2]), CLASS_NAMES, {"method": "x"}
        )


def test_mismatched_images_and_labels_raise_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="3 images but 2 labels"):
        _write(tmp_path / "set", _images(3), torch.tensor([0, 1]))
    with pytest.raises(DataError, match=r"labels must lie in \[0, 3\)"):
        _write(tmp_path / "set", _images(2), torch.tensor([0, 3]))
    assert not (tmp_path / "set").exists()


def test_missing_folder_or_files_raise_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no surrogate dataset folder"):
        read_surrogate(tmp_path / "absent")
    folder = _write(tmp_path / "set", _images(3), torch.tensor([0, 1, 2]))
    (folder / "data.safetensors").unlink()
    with pytest.raises(DataError, match="data.safetensors is missing"):
        read_surrogate(folder)


def test_data_that_disagrees_with_the_manifest_raises_data_error(tmp_path: Path) -> None:
    folder = _write(tmp_path / "set", _images(3), torch.tensor([0, 1, 2]))
    save_file(
        {"images": _images(2), "labels": torch.tensor([0, 1, 2])}, folder / "data.safetensors"
    )
    with pytest.raises(DataError, match="2 images but 3 labels"):
        read_surrogate(folder)
    save_file({"images": _images(2), "labels": torch.tensor([0, 1])}, folder / "data.safetensors")
    with pytest.raises(DataError, match="describes 3 images"):
        read_surrogate(folder)
