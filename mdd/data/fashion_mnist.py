"""Fashion-MNIST: find its IDX files, read them, and say exactly how to get them if absent.

The embedded default dataset (METHOD.md section 4). The files are looked for in a
fixed order: ``data.root`` from the config, ``$MDD_DATA_DIR``, the Debian package
``dataset-fashion-mnist``, then ``data.download_dir`` (downloading with torchvision
when the files are not there yet).
"""

from __future__ import annotations

import gzip
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mdd.errors import DataError

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

# Role -> file name without the optional ".gz".
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
ENV_VAR = "MDD_DATA_DIR"

# IDX type codes (third byte of the magic number) -> big-endian numpy dtype.
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_REINSTALL_HINT = (
    "Fix: re-download the file, or reinstall the package "
    "(`sudo apt-get install --reinstall dataset-fashion-mnist`)."
)


@dataclass(frozen=True)
class FashionMnistArrays:
    """The four IDX arrays and where they came from."""

    train_images: np.ndarray  # uint8 [60000, 28, 28]
    train_labels: np.ndarray  # uint8 [60000]
    test_images: np.ndarray  # uint8 [10000, 28, 28]
    test_labels: np.ndarray  # uint8 [10000]
    folder: Path
    found_by: str  # 'config', 'MDD_DATA_DIR', 'debian package' or 'download'
    files: list[Path]


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (gzip-compressed or raw) into an array in native byte order."""
    try:
        with open(path, "rb") as handle:
            blob = handle.read()
        if blob[:2] == b"\x1f\x8b":
            blob = gzip.decompress(blob)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: truncated or corrupt file ({exc}). {_REINSTALL_HINT}") from None
    if len(blob) < 4 or blob[:2] != b"\x00\x00" or blob[2] not in _IDX_DTYPES:
        raise DataError(
            f"{path}: not an IDX file (magic number {blob[:4].hex() or 'missing'}). "
            f"{_REINSTALL_HINT}"
        )
    dtype, ndim = _IDX_DTYPES[blob[2]], blob[3]
    header_bytes = 4 + 4 * ndim
    if len(blob) < header_bytes:
        raise DataError(f"{path}: truncated or corrupt IDX header. {_REINSTALL_HINT}")
    dims = tuple(int(d) for d in np.frombuffer(blob, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    found = len(blob) - header_bytes
    if found != expected:
        raise DataError(
            f"{path}: truncated or corrupt IDX file (the header promises {dims} = {expected} "
            f"bytes of data, the file holds {found}). {_REINSTALL_HINT}"
        )
    array = np.frombuffer(blob, dtype=dtype, offset=header_bytes).reshape(dims)
    # astype copies, which gives a writable array (torch.from_numpy warns on read-only ones).
    return array.astype(dtype.newbyteorder("="))


def _idx_set(folder: Path) -> dict[str, Path] | None:
    """The four IDX files in ``folder`` (raw preferred, else .gz), or None if any is missing."""
    found = {}
    for role, name in IDX_FILES.items():
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                found[role] = candidate
                break
        else:
            return None
    return found


def _find_in(folder: Path) -> tuple[Path, dict[str, Path]] | None:
    # Also accept a general data folder holding fashion-mnist/, and torchvision's layout.
    for candidate in (folder, folder / "fashion-mnist", folder / "FashionMNIST" / "raw"):
        files = _idx_set(candidate)
        if files is not None:
            return candidate, files
    return None


def _expected_files() -> str:
    return ", ".join(f"{name}[.gz]" for name in IDX_FILES.values())


def _download(download_dir: Path) -> None:
    """Fetch Fashion-MNIST with torchvision into ``download_dir/FashionMNIST/raw``."""
    # Imported here: torchvision is only needed on this rare path and is slow to import.
    from torchvision.datasets import FashionMNIST

    for train in (True, False):
        FashionMNIST(str(download_dir), train=train, download=True)


def locate(root: Path | None, download_dir: Path) -> tuple[Path, dict[str, Path], str]:
    """Find the IDX files: returns (folder, role -> path, found_by).

    A folder the user named explicitly (``data.root`` or ``$MDD_DATA_DIR``) must hold the
    files: silently taking the data from somewhere else would hide a wrong path.
    """
    named = [(root, "config", "data.root")]
    env_value = os.environ.get(ENV_VAR)
    if env_value:
        named.append((Path(env_value), ENV_VAR, f"${ENV_VAR}"))
    for folder, found_by, setting in named:
        if folder is None:
            continue
        hit = _find_in(folder)
        if hit is None:
            raise DataError(
                f"{setting}={folder}: no Fashion-MNIST IDX files there (expected "
                f"{_expected_files()}, directly, under fashion-mnist/ or under "
                f"FashionMNIST/raw/). Fix: point {setting} at the folder that holds them, "
                f"or unset it to use {DEBIAN_DIR} or a download."
            )
        return hit[0], hit[1], found_by

    hit = _find_in(DEBIAN_DIR)
    if hit is not None:
        return hit[0], hit[1], "debian package"

    hit = _find_in(download_dir)
    if hit is None:
        try:
            _download(download_dir)
        except (OSError, RuntimeError) as exc:
            raise DataError(
                f"Fashion-MNIST not found and the download into {download_dir} failed ({exc}). "
                "Fix, any one of: set data.root to a folder with "
                f"{_expected_files()}; set {ENV_VAR} to such a folder; "
                "`sudo apt-get install dataset-fashion-mnist` (installs them into "
                f"{DEBIAN_DIR}); or allow network access so torchvision can download them."
            ) from None
        hit = _find_in(download_dir)
        if hit is None:
            raise DataError(
                f"torchvision reported a download into {download_dir} but the IDX files are "
                f"not under {download_dir / 'FashionMNIST' / 'raw'}. Fix: delete that folder "
                "and run again, or install `dataset-fashion-mnist`."
            )
    return hit[0], hit[1], "download"


def _check_pair(images: np.ndarray, labels: np.ndarray, files: dict[str, Path], split: str) -> None:
    image_path, label_path = files[f"{split}_images"], files[f"{split}_labels"]
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataError(
            f"{image_path}: expected uint8 images [N, H, W], got {images.dtype} "
            f"{list(images.shape)}. {_REINSTALL_HINT}"
        )
    if labels.ndim != 1 or len(labels) != len(images):
        raise DataError(
            f"{label_path}: {list(labels.shape)} labels for {len(images)} images in "
            f"{image_path}. {_REINSTALL_HINT}"
        )
    if labels.size and int(labels.max()) >= len(CLASS_NAMES):
        raise DataError(
            f"{label_path}: label {int(labels.max())} is out of range for "
            f"{len(CLASS_NAMES)} classes. {_REINSTALL_HINT}"
        )


def load_arrays(root: Path | None, download_dir: Path) -> FashionMnistArrays:
    """Locate and read all four files, checking images and labels agree."""
    folder, files, found_by = locate(root, download_dir)
    arrays = {role: read_idx(path) for role, path in files.items()}
    for split in ("train", "test"):
        _check_pair(arrays[f"{split}_images"], arrays[f"{split}_labels"], files, split)
    return FashionMnistArrays(
        **arrays, folder=folder, found_by=found_by, files=sorted(files.values())
    )
