"""The soft-label protocol's teacher read from local files, and rded runs through mdd-run:
metrics under soft/..., the teacher's bytes in the evaluation's key, its own report table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torchvision
from safetensors.torch import save_file

from mdd.cache import file_identity
from mdd.cli import run_main
from mdd.config import TeacherConfig, build_config, load_config
from mdd.core import Core
from mdd.errors import ConfigError
from mdd.eval.networks import create_network
from mdd.eval.teacher import load_teacher
from mdd.pipeline.plan import plan
from mdd.report import collect_rows, finished_runs
from mdd.stages.evaluate import RESULTS_FILE
from tests.conftest import tiny_config_data

CPU = torch.device("cpu")


def _logits(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return net.eval()(x)


def test_torchvision_resnet18_weights_load_from_a_wrapped_data_parallel_checkpoint(
    tmp_path: Path,
) -> None:
    net = torchvision.models.resnet18(num_classes=4)
    wrapped = {"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}
    path = tmp_path / "teacher.pth"
    torch.save(wrapped, path)
    teacher = load_teacher(TeacherConfig(weights=path), 4, 3, 32, CPU)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(_logits(teacher, x), _logits(net, x))
    teacher.train()  # a student's train() must not move the teacher's batch-norm statistics
    assert not teacher.net.training


def test_an_mdd_network_teacher_loads_from_safetensors(tmp_path: Path) -> None:
    net = create_network("convnet3", 5, 1, 16, "instance")
    path = tmp_path / "teacher.safetensors"
    save_file(net.state_dict(), str(path))
    config = TeacherConfig(weights=path, network="convnet3", norm="instance")
    teacher = load_teacher(config, 5, 1, 16, CPU)
    x = torch.randn(3, 1, 16, 16)
    assert torch.allclose(_logits(teacher, x), _logits(net, x))


def test_a_1000_way_teacher_of_an_imagenet_subset_answers_for_the_subsets_classes(
    tmp_path: Path,
) -> None:
    net = create_network("convnet3", 1000, 3, 16, "instance")
    path = tmp_path / "imagenet.pt"
    torch.save(net.state_dict(), path)
    config = TeacherConfig(weights=path, network="convnet3", norm="instance")
    teacher = load_teacher(config, 3, 3, 16, CPU, imagenet_classes=[193, 182, 258])
    x = torch.randn(2, 3, 16, 16)
    assert torch.allclose(_logits(teacher, x), _logits(net, x)[:, [193, 182, 258]])
    with pytest.raises(ConfigError, match="1000 outputs, the data 3 classes"):
        load_teacher(config, 3, 3, 16, CPU)  # no subset indices: say so


def test_teacher_files_that_cannot_serve_get_clear_messages(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is not a file"):
        load_teacher(TeacherConfig(weights=tmp_path / "absent.pth"), 4, 3, 32, CPU)
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="could not be read"):
        load_teacher(TeacherConfig(weights=corrupt), 4, 3, 32, CPU)
    convnet = tmp_path / "convnet.pt"
    torch.save(create_network("convnet3", 4, 3, 32, "instance").state_dict(), convnet)
    with pytest.raises(ConfigError, match="does not fit torchvision:resnet18"):
        load_teacher(TeacherConfig(weights=convnet), 4, 3, 32, CPU)
    with pytest.raises(ConfigError, match="takes RGB images"):
        load_teacher(TeacherConfig(weights=convnet), 4, 1, 32, CPU)
    with pytest.raises(ConfigError, match="eval.teacher.classes"):
        config = TeacherConfig(weights=convnet, network="convnet3", norm="instance", classes=[0, 9])
        load_teacher(config, 2, 3, 32, CPU)


def test_rded_without_a_teacher_and_a_teacher_without_rded_are_refused(
    tiny_fmnist: Path, tmp_path: Path, mlflow_store: str
) -> None:
    data = tiny_config_data(tiny_fmnist, tmp_path, mlflow_store)
    with pytest.raises(ConfigError, match="eval.teacher.weights"):
        build_config(data | {"eval": {"protocol": "rded"}})
    teacher = {"weights": str(tmp_path / "t.pt")}
    with pytest.raises(ConfigError, match="remove eval.teacher"):
        build_config(data | {"eval": {"protocol": "dc", "teacher": teacher}})


@pytest.fixture
def rded_config(tiny_fmnist: Path, tmp_path: Path, mlflow_store: str) -> Path:
    """A random real set of the tiny Fashion-MNIST, evaluated by students of a ConvNet-3."""
    teacher = tmp_path / "teacher.pt"
    torch.save(create_network("convnet3", 10, 1, 28, "instance").state_dict(), teacher)
    data = tiny_config_data(tiny_fmnist, tmp_path, mlflow_store)
    data |= {
        "method": "random",
        "tracking": data["tracking"] | {"experiment": "rded"},
        "eval": {
            "protocol": "rded", "repeats": 1, "epochs": 2,
            "teacher": {"weights": str(teacher), "network": "convnet3", "norm": "instance"},
        },
    }  # fmt: skip
    path = tmp_path / "rded.yaml"
    path.write_text(json.dumps(data))  # JSON is YAML
    return path


def test_an_rded_run_logs_soft_label_accuracies_apart_from_hard_label_ones(
    rded_config: Path,
) -> None:
    assert run_main([str(rded_config)]) == 0
    config = load_config(rded_config)
    stages = {
        s.name: s for s in plan(config, Core.load(config.data, config.device).data.fingerprint)
    }
    record = json.loads((stages["evaluate"].folder / RESULTS_FILE).read_text())
    assert record["labels"] == "soft"
    names = {f"{kind}_acc_{stat}" for kind in ("last", "best") for stat in ("mean", "std")}
    assert set(record["metrics"]) == {f"soft/test/convnet3/{name}" for name in names}
    assert record["teacher"]["weights_sha256"] == file_identity(config.eval.teacher.weights)
    assert record["protocol"]["temperature"] == 20.0 and record["protocol"]["batch_size"] == 20
    rows, _ = collect_rows(finished_runs(config.tracking))
    assert [(row.protocol, row.method) for row in rows] == [("rded (soft labels)", "random")]


def test_new_teacher_weights_at_the_same_path_make_a_new_evaluation_key(
    rded_config: Path,
) -> None:
    config = load_config(rded_config)
    fingerprint = Core.load(config.data, config.device).data.fingerprint
    before = {s.name: s.key for s in plan(config, fingerprint)}
    weights = config.eval.teacher.weights
    torch.save(create_network("convnet3", 10, 1, 28, "instance").state_dict(), weights)
    after = {s.name: s.key for s in plan(config, fingerprint)}
    assert after["evaluate"] != before["evaluate"]
    assert after["select"] == before["select"]  # upstream of the evaluation: unchanged
