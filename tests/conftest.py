"""Shared fixtures: a tiny learnable Fashion-MNIST stand-in and a config that runs in seconds."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from mdd.config import Config, build_config

# Small thread counts keep the suite's timings steady on a busy 2-core machine.
torch.set_num_threads(2)


def write_idx_file(path: Path, array: np.ndarray) -> None:
    dtype = ">u1" if array.dtype == np.uint8 else ">i4"
    code = 0x08 if array.dtype == np.uint8 else 0x0C
    header = bytes([0, 0, code, array.ndim]) + np.array(array.shape, ">u4").tobytes()
    path.write_bytes(gzip.compress(header + array.astype(dtype).tobytes()))


def write_tiny_fashion_mnist(folder: Path, train_per_class: int, test_per_class: int) -> Path:
    """IDX files of 28x28 images whose class is a bright horizontal band at row 2 * class."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for split, per_class in (("train", train_per_class), ("t10k", test_per_class)):
        labels = np.repeat(np.arange(10, dtype=np.uint8), per_class)
        images = rng.integers(0, 60, size=(len(labels), 28, 28)).astype(np.uint8)
        rows = 2 * labels.astype(int) + 4
        for offset in range(3):
            images[np.arange(len(labels)), rows + offset, 4:24] = 230
        write_idx_file(folder / f"{split}-images-idx3-ubyte.gz", images)
        write_idx_file(folder / f"{split}-labels-idx1-ubyte.gz", labels)
    return folder


@pytest.fixture(scope="session")
def tiny_fmnist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_fashion_mnist(tmp_path_factory.mktemp("fmnist"), 40, 10)


@pytest.fixture(scope="session")
def mlflow_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One sqlite store for the session: creating MLflow's tables takes seconds each time."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def tiny_config_data(data_root: Path, work: Path, store: str) -> dict:
    """Every stage with the smallest sizes that still exercise it."""
    return {
        "name": "tiny",
        "method": "minimax",
        "device": "cpu",
        "cache_dir": str(work / "cache"),
        "data": {"root": str(data_root), "val_per_class": 5},
        "autoencoder": {"kind": "conv", "epochs": 1, "batch_size": 64},
        "model": {"preset": "latent-tiny"},
        "pretrain": {"epochs": 2, "batch_size": 32, "warmup_steps": 5},
        "finetune": {"steps": 6, "batch_size": 8, "checkpoint_every_steps": 2},
        "sample": {"ipc": 2, "steps": 4, "batch_size": 16},
        "eval": {"protocol": "proxy", "repeats": 1, "epochs": 2},
        "tracking": {"uri": store, "experiment": "tiny", "artifact_root": str(work / "artifacts")},
    }


@pytest.fixture
def tiny_config(tiny_fmnist: Path, tmp_path: Path, mlflow_store: str) -> Config:
    return build_config(tiny_config_data(tiny_fmnist, tmp_path, mlflow_store))
