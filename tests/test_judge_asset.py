"""The judge is shipped like the base: a fresh clone reads it instead of training it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import mdd.eval.judge as judge_module
from mdd.config import Config, load_config
from mdd.data.load import load_dataset
from mdd.eval.judge import judge_cache_path, judge_identity, load_judge, shipped_judge
from mdd.pipeline.standalone import judge_only

ROOT = Path(__file__).resolve().parents[1]
REAL_DIR = Path("/usr/share/datasets/fashion-mnist")


def test_an_exported_judge_is_read_on_a_cache_miss_without_training(
    tiny_config: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shipped = tmp_path / "shipped"
    exported = judge_only(tiny_config, export=str(shipped))
    data = load_dataset(tiny_config.data)
    note = json.loads(exported.with_suffix(".json").read_text())
    assert note["file"] == exported.name and note["data_fingerprint"] == data.fingerprint
    assert 0 <= note["test_acc"] <= 100
    judge_cache_path(
        tiny_config.judge_spec, data.fingerprint
    ).unlink()  # a fresh clone's empty cache
    monkeypatch.setattr(judge_module, "SHIPPED_JUDGES", shipped)

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("the judge was trained although a shipped one matches")

    monkeypatch.setattr(judge_module, "train_network", no_training)
    judge = load_judge(data, tiny_config.judge_spec, torch.device("cpu"))
    expected = load_file(str(exported))
    for name, tensor in judge.network.state_dict().items():
        assert torch.equal(tensor, expected[name])


def test_a_judge_of_other_settings_is_not_taken_from_the_shipped_folder(
    tiny_config: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shipped = tmp_path / "shipped"
    judge_only(tiny_config, export=str(shipped))
    monkeypatch.setattr(judge_module, "SHIPPED_JUDGES", shipped)
    fingerprint = load_dataset(tiny_config.data).fingerprint
    assert shipped_judge(tiny_config.judge_spec, fingerprint) is not None
    longer = tiny_config.model_copy(
        update={"judge": tiny_config.judge.model_copy(update={"epochs": 3})}
    )
    assert shipped_judge(longer.judge_spec, fingerprint) is None  # 3 epochs: another judge
    assert shipped_judge(tiny_config.judge_spec, "0123456789abcdef") is None  # other data


@pytest.mark.skipif(not REAL_DIR.is_dir(), reason=f"{REAL_DIR} not installed")
def test_the_demo_reads_the_shipped_fashion_mnist_judge() -> None:
    config = load_config(str(ROOT / "experiments" / "fashion_mnist.yaml"))
    fingerprint = load_dataset(config.data).fingerprint
    path = shipped_judge(config.judge_spec, fingerprint)
    assert path is not None, "the shipped judge does not match the demo's data or settings"
    note = json.loads(path.with_suffix(".json").read_text())
    assert note["data_fingerprint"] == fingerprint


def test_the_judge_identity_names_the_weights_load_judge_reads_and_hashes_their_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = Config(cache_dir=tmp_path / "cache")
    monkeypatch.setattr(judge_module, "SHIPPED_JUDGES", tmp_path / "shipped")
    assert judge_identity(config.judge_spec, "fp") is None  # no judge anywhere yet

    shipped = tmp_path / "shipped" / judge_cache_path(config.judge_spec, "fp").name
    shipped.parent.mkdir()
    shipped.write_bytes(b"shipped weights")
    assert judge_identity(config.judge_spec, "fp") == {
        "file": shipped.name,
        "source": "shipped",
        "sha256": hashlib.sha256(b"shipped weights").hexdigest()[:16],
    }

    cache = judge_cache_path(config.judge_spec, "fp")  # a judge trained here wins, as in load_judge
    cache.parent.mkdir(parents=True)
    cache.write_bytes(b"weights trained on another machine")
    identity = judge_identity(config.judge_spec, "fp")
    assert identity is not None and identity["source"] == "cache"
    assert identity["sha256"] == hashlib.sha256(cache.read_bytes()).hexdigest()[:16]
