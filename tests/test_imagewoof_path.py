"""The paper's path (ImageNet class folders, SD VAE, DiT-XL/2 design) on a tiny stand-in.

The real weights and ImageNet cannot be fetched here, so the test writes a tiny
AutoencoderKL and a tiny learned-variance DiT in the facebook/DiT-XL-2-256 folder
layout, and a tree of ImageWoof wnid folders, then runs every stage through mdd-run.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
import yaml
from PIL import Image

from mdd.baselines import class_means, select_herding
from mdd.cache import Stage, claim
from mdd.cli import run_main
from mdd.config import Config, load_config
from mdd.core import Core
from mdd.data.folders import KNOWN_IMAGENET_INDEX, subset_wnids
from mdd.data.surrogate import read_surrogate
from mdd.diffusion.backbone import create_backbone
from mdd.eval.judge import judge_cache_path, load_judge
from mdd.eval.networks import ResNetAP
from mdd.eval.protocols import IMAGENET_MEAN, IMAGENET_STD
from mdd.pipeline.plan import plan
from mdd.stages.evaluate import RESULTS_FILE
from mdd.stages.select import select_candidates, select_surrogate
from tests.test_autoencoder import tiny_vae


def write_class_tree(root: Path, wnids: list[str], per_class: int) -> None:
    rng = np.random.default_rng(0)
    for index, wnid in enumerate(wnids):
        (root / wnid).mkdir(parents=True)
        for item in range(per_class):
            pixels = rng.integers(0, 80, size=(40, 48, 3), dtype=np.uint8)
            pixels[:, :, index % 3] += 120  # a class-dependent colour
            Image.fromarray(pixels).save(root / wnid / f"{wnid}_{item}.JPEG")


def write_pretrained_layout(folder: Path) -> None:
    """transformer/ and vae/ as in facebook/DiT-XL-2-256, tiny and randomly initialised."""
    vae = tiny_vae(sample_size=32)
    vae.save_pretrained(folder / "vae")
    transformer = create_backbone("DiT-tiny/2", 1000, 4, 16)
    with torch.no_grad():  # adaLN-zero makes a fresh DiT output zeros; give it some signal
        for parameter in transformer.parameters():
            parameter.add_(0.02 * torch.randn_like(parameter))
    transformer.save_pretrained(folder / "transformer")


@pytest.fixture
def woof_config(tmp_path: Path, mlflow_store: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The ImageWoof experiment on tiny class folders and a tiny DiT-XL/2 layout."""
    monkeypatch.setenv("MDD_IMAGENET_TRAIN", str(tmp_path / "train"))
    monkeypatch.setenv("MDD_IMAGENET_VAL", str(tmp_path / "val"))
    monkeypatch.setenv("MDD_DIT_XL_2", str(tmp_path / "dit"))
    wnids = subset_wnids("woof")
    write_class_tree(tmp_path / "train", wnids, 8)
    write_class_tree(tmp_path / "val", wnids, 2)
    write_pretrained_layout(tmp_path / "dit")
    config = {
        "extends": str(Path("experiments/imagewoof/base.yaml").resolve()),
        "name": "woof-standin",
        "device": "cpu",
        "cache_dir": str(tmp_path / "cache"),
        "data": {"image_size": 32, "val_per_class": 2},
        "model": {"preset": "DiT-tiny/2"},
        "finetune": {"steps": 4, "batch_size": 4, "checkpoint_every_steps": 2},
        "sample": {"ipc": 2, "steps": 3, "batch_size": 8},
        "eval": {"protocol": "proxy", "networks": ["convnet3"], "repeats": 1, "epochs": 2},
        "tracking": {"uri": mlflow_store, "experiment": "woof-standin"},
    }
    path = tmp_path / "woof.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_imagewoof_path_runs_every_stage_with_vae_and_learned_variance(woof_config: Path) -> None:
    assert run_main([str(woof_config)]) == 0

    config = load_config(woof_config)
    core = Core.load(config.data, config.device)
    stages = {stage.name: stage for stage in plan(config, core.data.fingerprint)}
    surrogate = read_surrogate(stages["sample"].folder / "data")
    assert surrogate.images.shape == (20, 3, 32, 32)  # decoded by the VAE, RGB
    assert surrogate.labels.bincount().tolist() == [2] * 10
    with claim(stages["pretrain"]) as step:
        loaded = core.base(step, config.base_recipe, lambda metrics, step: None)
    base, trainable = loaded.model, loaded.trainable
    assert base.learned_variance
    assert base.latent_shape == (4, 16, 16)
    woof = subset_wnids("woof")
    assert base.class_ids.tolist() == [KNOWN_IMAGENET_INDEX[wnid] for wnid in woof]
    assert base.class_ids.tolist()[:3] == [193, 182, 258]  # Australian, Border terrier, Samoyed
    assert trainable.selection["gamma"] > 0  # DiffFit on the DiT-XL/2 design
    # The latents were cached with flips (the paper's augmentation): 2 x training images.
    assert len(loaded.latents) == 2 * len(core.data.train)


def test_an_imagenet_subsets_judge_sees_its_normalisation_at_the_evaluation_resolution(
    woof_config: Path, tmp_path: Path
) -> None:
    overrides = ["eval.protocol=idc", "eval.epochs=null", "method=herding", "sample.ipc=2"]
    config = load_config(woof_config, overrides)
    data = Core.load(config.data, config.device).data
    judge = load_judge(data, config.judge_spec, torch.device("cpu"))
    assert isinstance(judge.network, ResNetAP)
    assert (judge.protocol.mean, judge.protocol.std) == (IMAGENET_MEAN, IMAGENET_STD)
    assert judge.protocol.image_size == 224  # IDC's, though the data is 32 px
    assert judge_cache_path(config.judge_spec, data.fingerprint).is_file()
    # Herding picks in this judge's pooled feature space, fed at 224 px.
    features = judge.features(data.train.images[:3])
    assert features.shape == (3, 512)
    folder = select_surrogate(
        data,
        config.method,
        config.sample,
        config.set_origin,
        tmp_path / "herding",
        torch.device("cpu"),
    )
    expected = select_herding(judge.features(data.train.images), data.train.labels, 2)
    assert torch.equal(read_surrogate(folder).images, data.train.images[expected])


def _run_with(woof_config: Path, overrides: list[str]) -> tuple[Config, dict[str, Stage]]:
    """``mdd-run`` of the stand-in with ``overrides``; its config and stages by name."""
    assert run_main([str(woof_config), *[f"--set={o}" for o in overrides]]) == 0
    config = load_config(woof_config, overrides)
    return config, {
        s.name: s for s in plan(config, Core.load(config.data, config.device).data.fingerprint)
    }


def test_a_plugin_composition_runs_on_the_dit_xl_path(woof_config: Path, tmp_path: Path) -> None:
    overrides = [
        "sample.guidance.kind=mode",
        "sample.guidance.stop_step=0",
        "selection.kind=herding",
        "selection.oversample=2",
    ]
    config, stages = _run_with(woof_config, overrides)
    assert config.composition == "minimax+mode+herding"
    pool = read_surrogate(stages["sample"].folder / "data")
    assert pool.images.shape == (40, 3, 32, 32)  # 2 x IPC 2 candidates per class, RGB
    kept = read_surrogate(stages["select"].folder / "data")
    assert kept.labels.bincount().tolist() == [2] * 10
    # Herding keeps candidates of the pool itself.
    assert all(any(torch.equal(image, other) for other in pool.images) for image in kept.images)
    # real-herding herds the same pool toward the training split's class means, in the
    # ResNetAP-10 judge's features at 224 px.
    real = load_config(woof_config, [*overrides, "selection.kind=real-herding"])
    core = Core.load(real.data, real.device)
    pool_folder = stages["sample"].folder / "data"
    assert real.selection is not None
    folder = select_candidates(
        pool_folder, core.data, real.selection.kind, real.sample.ipc, real.set_origin,
        tmp_path / "real", core.device,
    )  # fmt: skip
    judge = load_judge(core.data, real.judge_spec, core.device)
    train = core.data.train
    means = class_means(judge.features(train.images), train.labels, 10)
    expected = select_herding(judge.features(pool.images), pool.labels, 2, means)
    assert torch.equal(read_surrogate(folder).images, pool.images[expected])


def test_influence_guidance_runs_on_the_dit_xl_path_with_the_vae(woof_config: Path) -> None:
    overrides = [
        "method=base",
        "sample.guidance.kind=influence",
        "sample.guidance.window=[0, 2]",
        "sample.guidance.checkpoints=[0, 1]",
        "sample.guidance.real_per_class=2",
        "judge.epochs=1",
    ]
    config, stages = _run_with(woof_config, overrides)
    assert config.composition == "base+influence"
    surrogate = read_surrogate(stages["sample"].folder / "data")
    assert surrogate.images.shape == (20, 3, 32, 32)
    assert surrogate.labels.bincount().tolist() == [2] * 10


def test_the_soft_label_protocol_runs_on_the_stand_in_with_an_imagenet_resnet18_teacher(
    woof_config: Path, tmp_path: Path
) -> None:
    """torchvision's ResNet-18 with 1000 outputs from a local file labels the ten ImageWoof
    classes through their ImageNet indices; the accuracies are logged as soft-label ones."""
    teacher = torchvision.models.resnet18()  # torchvision's ImageNet-1K layout, 1000 classes
    weights = tmp_path / "resnet18-imagenet.pth"
    torch.save(teacher.state_dict(), weights)
    overrides = ["method=base", "eval.protocol=rded", f"eval.teacher.weights={weights}"]
    config, stages = _run_with(woof_config, overrides)
    record = json.loads((stages["evaluate"].folder / RESULTS_FILE).read_text())
    woof = subset_wnids("woof")
    assert record["teacher"]["classes"] == [KNOWN_IMAGENET_INDEX[wnid] for wnid in woof]
    assert record["labels"] == "soft"
    assert all(name.startswith("soft/test/convnet3/") for name in record["metrics"])
    assert config.eval.teacher is not None and config.eval.teacher.network == "torchvision:resnet18"
