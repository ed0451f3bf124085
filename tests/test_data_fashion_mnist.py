"""Fashion-MNIST: the IDX reader, the search order for the files, and load_dataset on them."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from mdd.config import DataConfig
from mdd.data import fashion_mnist, load_dataset
from mdd.errors import DataError

REAL_DIR = Path("/usr/share/datasets/fashion-mnist")
TRAIN_PER_CLASS = 4
CLASS_NAMES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]


def write_idx(path: Path, array: np.ndarray, type_code: int = 0x08) -> Path:
    dtype = {0x08: ">u1", 0x0C: ">i4"}[type_code]
    header = bytes([0, 0, type_code, array.ndim]) + np.array(array.shape, ">u4").tobytes()
    blob = header + array.astype(dtype).tobytes()
    path.write_bytes(gzip.compress(blob) if path.suffix == ".gz" else blob)
    return path


def write_fashion(folder: Path, gz: bool = True, pixel: int | None = None) -> Path:
    """A tiny Fashion-MNIST: every image is constant, 20 * its label (or ``pixel``)."""
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    for split, per_class in (("train", TRAIN_PER_CLASS), ("t10k", 1)):
        labels = np.tile(np.arange(10, dtype=np.uint8), per_class)
        values = labels * 20 if pixel is None else np.full_like(labels, pixel)
        images = np.broadcast_to(values[:, None, None], (len(labels), 28, 28))
        write_idx(folder / f"{split}-images-idx3-ubyte{suffix}", images)
        write_idx(folder / f"{split}-labels-idx1-ubyte{suffix}", labels)
    return folder


def refuse_download(download_dir: Path) -> None:
    raise OSError("network is unreachable")


@pytest.fixture(autouse=True)
def isolated_search(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No real Debian files, no $MDD_DATA_DIR and no network unless a test asks for them."""
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", tmp_path / "no-debian")
    monkeypatch.delenv("MDD_DATA_DIR", raising=False)
    monkeypatch.setattr(fashion_mnist, "_download", refuse_download)


@pytest.mark.parametrize("name", ["labels.idx", "labels.idx.gz"])
def test_read_idx_reads_raw_and_gzip_files(tmp_path: Path, name: str) -> None:
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    array = fashion_mnist.read_idx(write_idx(tmp_path / name, images))
    assert array.dtype == np.uint8
    assert array.shape == (2, 3, 4)
    np.testing.assert_array_equal(array, images)


def test_read_idx_decodes_big_endian_int32(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "ints.idx", np.array([1, 256, -2]), type_code=0x0C)
    array = fashion_mnist.read_idx(path)
    assert array.dtype == np.int32
    assert array.tolist() == [1, 256, -2]


def test_read_idx_rejects_truncated_raw_file_naming_it(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((3, 28, 28), np.uint8))
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DataError) as caught:
        fashion_mnist.read_idx(path)
    message = str(caught.value)
    assert str(path) in message
    assert "truncated" in message
    assert "2352 bytes" in message and "2342" in message  # 3 * 28 * 28 promised, 10 cut
    assert "re-download" in message and "reinstall" in message


def test_read_idx_rejects_truncated_gzip_file(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", np.ones((5, 28, 28), np.uint8))
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError, match="truncated or corrupt") as caught:
        fashion_mnist.read_idx(path)
    assert str(path) in str(caught.value)


def test_read_idx_rejects_wrong_magic_number(tmp_path: Path) -> None:
    path = tmp_path / "notes.idx"
    path.write_bytes(b"PK\x03\x04 not an idx file")
    with pytest.raises(DataError, match="not an IDX file"):
        fashion_mnist.read_idx(path)


def test_config_root_wins_over_env_and_debian(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config_dir = write_fashion(tmp_path / "config", pixel=1)
    monkeypatch.setenv("MDD_DATA_DIR", str(write_fashion(tmp_path / "env", pixel=2)))
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", write_fashion(tmp_path / "deb", pixel=3))
    splits = load_dataset(DataConfig(root=config_dir, val_per_class=1))
    assert splits.found_by == "config"
    assert splits.source == str(config_dir)
    assert int(splits.train.images.max()) == 1


def test_env_dir_wins_over_debian_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # $MDD_DATA_DIR may be a general data folder holding fashion-mnist/.
    write_fashion(tmp_path / "env" / "fashion-mnist", pixel=2)
    monkeypatch.setenv("MDD_DATA_DIR", str(tmp_path / "env"))
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", write_fashion(tmp_path / "deb", pixel=3))
    splits = load_dataset(DataConfig(val_per_class=1))
    assert splits.found_by == "MDD_DATA_DIR"
    assert splits.source == str(tmp_path / "env" / "fashion-mnist")
    assert int(splits.train.images.max()) == 2


def test_debian_package_wins_over_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", write_fashion(tmp_path / "deb", pixel=3))
    write_fashion(tmp_path / "dl" / "FashionMNIST" / "raw", pixel=4)
    splits = load_dataset(DataConfig(val_per_class=1, download_dir=tmp_path / "dl"))
    assert splits.found_by == "debian package"
    assert int(splits.train.images.max()) == 3


def test_download_is_the_last_resort_and_read_from_torchvision_layout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []

    def fake_download(download_dir: Path) -> None:
        calls.append(download_dir)
        write_fashion(download_dir / "FashionMNIST" / "raw", gz=False, pixel=4)

    monkeypatch.setattr(fashion_mnist, "_download", fake_download)
    cfg = DataConfig(val_per_class=1, download_dir=tmp_path / "dl")
    first = load_dataset(cfg)
    assert first.found_by == "download"
    assert first.source == str(tmp_path / "dl" / "FashionMNIST" / "raw")
    assert int(first.train.images.max()) == 4
    load_dataset(cfg)  # files already downloaded: no second download
    assert calls == [tmp_path / "dl"]


def test_missing_everywhere_names_every_fix(tmp_path: Path) -> None:
    with pytest.raises(DataError) as caught:
        load_dataset(DataConfig(download_dir=tmp_path / "dl"))
    message = str(caught.value)
    assert "network is unreachable" in message
    for fix in ("data.root", "MDD_DATA_DIR", "sudo apt-get install dataset-fashion-mnist"):
        assert fix in message
    assert "allow network access" in message


def test_config_root_without_files_is_an_error_not_a_fallback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", write_fashion(tmp_path / "deb"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError) as caught:
        load_dataset(DataConfig(root=empty))
    assert f"data.root={empty}" in str(caught.value)
    assert "t10k-labels-idx1-ubyte" in str(caught.value)


def test_load_dataset_splits_train_into_train_and_val(tmp_path: Path) -> None:
    splits = load_dataset(DataConfig(root=write_fashion(tmp_path / "fm"), val_per_class=1))
    assert splits.class_names == CLASS_NAMES
    assert (len(splits.train), len(splits.val), len(splits.test)) == (30, 10, 10)
    assert splits.train.images.shape == (30, 1, 28, 28)
    assert splits.train.images.dtype == torch.uint8
    assert splits.train.labels.dtype == torch.int64
    assert splits.val.labels.sort().values.tolist() == list(range(10))
    for part in (splits.train, splits.val, splits.test):
        # every image is constant 20 * label: images and labels stayed aligned
        assert torch.equal(part.images[:, 0, 0, 0].long(), part.labels * 20)
    assert len(splits.fingerprint) == 16 and int(splits.fingerprint, 16) >= 0
    assert splits.skipped == []


def test_resize_to_32_keeps_constant_images_constant(tmp_path: Path) -> None:
    cfg = DataConfig(root=write_fashion(tmp_path / "fm"), val_per_class=1, image_size=32)
    splits = load_dataset(cfg)
    assert splits.train.images.shape == (30, 1, 32, 32)
    assert splits.test.images.dtype == torch.uint8
    expected = (splits.test.labels * 20).view(-1, 1, 1, 1).expand(-1, 1, 32, 32)
    assert torch.equal(splits.test.images.long(), expected)


def test_summary_lists_source_fingerprint_and_counts_per_class(tmp_path: Path) -> None:
    splits = load_dataset(DataConfig(root=write_fashion(tmp_path / "fm"), val_per_class=1))
    text = splits.summary()
    assert f"source: {tmp_path / 'fm'} (found by: config)" in text
    assert splits.fingerprint in text
    assert splits.class_counts()["train"] == [3] * 10
    assert "Ankle boot" in text
    assert text.splitlines()[-1].split() == ["total", "30", "10", "10"]


def test_real_debian_fashion_mnist(monkeypatch: pytest.MonkeyPatch) -> None:
    if not REAL_DIR.is_dir():
        pytest.skip(f"{REAL_DIR} not installed (apt-get install dataset-fashion-mnist)")
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", REAL_DIR)
    splits = load_dataset(DataConfig())
    assert splits.found_by == "debian package"
    assert len(splits.train) + len(splits.val) == 60000
    assert len(splits.test) == 10000
    assert splits.class_names == CLASS_NAMES
    counts = splits.class_counts()
    assert counts["val"] == [500] * 10
    assert counts["train"] == [5500] * 10
    assert counts["test"] == [1000] * 10
