"""The judge: a network trained briefly on the real training split, cached on disk.

It decides class consistency (METHOD.md section 4), gives the feature space in which
herding and k-center pick real images (section 6) and in which the surrogate-set
diagnostics compare generated and real images. It sees images as the evaluation does:
normalised by the dataset's own statistics, at the evaluation protocol's resolution.
Fashion-MNIST's judge is the ConvNet-3 of METHOD.md; an ImageNet subset's is a
ResNetAP-10, whose pooled 512-d features keep distances and covariances tractable at
224 px (a ConvNet-3 there has 100,352 features per image).

The judge is a stage (``judge_stage``): one folder per judge in the cache, named by every
setting its weights depend on (the data fingerprint included), claimed under its lock, so
sweep workers that miss it together train it once, and planned before the stages that look
through it (selection, diagnostics) so a run times and records it apart from them. Every
user (selection, diagnostics, class consistency, ``mdd judge``) gets it from ``load_judge``.

The Fashion-MNIST judge of the default split is shipped in ``mdd/assets/fashion_mnist_judge``
(``mdd judge experiments/fashion_mnist.yaml --export mdd/assets/fashion_mnist_judge``
reproduces it), so a fresh clone does not spend the judge's training time: where the
shipped file of the weights' name exists, the stage trains nothing and the judge is read
from it.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from mdd.cache import Stage, claim, save_tensors_atomically
from mdd.config import JudgeSpec
from mdd.data import DatasetSplits
from mdd.data.load import resize_images
from mdd.data.splits import per_class_index
from mdd.errors import MddError
from mdd.eval.networks import create_network
from mdd.eval.protocols import NORMALISATION, Protocol, evaluation_image_size, resolve_protocol
from mdd.eval.train import class_probabilities, extract_features, predict, train_network

JUDGE_NETWORKS = {"fashion_mnist": "convnet3", "imagenet_subset": "resnet_ap10"}
# One judge per dataset and resolution, whatever a run's seed: it is the measuring instrument
# every run of the dataset is compared with.
JUDGE_SEED = 0
SHIPPED_JUDGES = Path(__file__).resolve().parents[1] / "assets" / "fashion_mnist_judge"


def judge_protocol(spec: JudgeSpec) -> Protocol:
    """DC's optimiser, ``judge.epochs`` (METHOD.md section 4: 2, about 88 % on Fashion-MNIST's
    test split) without augmentation; the dataset's normalisation and the evaluation
    protocol's resolution."""
    mean, std = NORMALISATION[spec.dataset]
    return dataclasses.replace(
        resolve_protocol("dc", 1),
        epochs=spec.settings.epochs,
        augmentation="none",
        milestone_fractions=(),
        evaluations=1,
        mean=mean,
        std=std,
        image_size=evaluation_image_size(spec.protocol, spec.ipc),
    )


@dataclass
class Judge:
    network: torch.nn.Module
    protocol: Protocol
    device: torch.device

    def _sized(self, images: torch.Tensor) -> torch.Tensor:
        size = self.protocol.image_size
        return images if size is None else resize_images(images, size)

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Predicted classes of uint8 images."""
        return predict(self.network, self._sized(images), self.protocol, self.device)

    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """Class probabilities of uint8 images, float32 on the CPU."""
        return class_probabilities(self.network, self._sized(images), self.protocol, self.device)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Penultimate features of uint8 images, float32 on the CPU."""
        return extract_features(self.network, self._sized(images), self.protocol, self.device)


def judge_name(spec: JudgeSpec, fingerprint: str) -> str:
    """Every setting the judge's weights depend on, as a name: its stage key and file name."""
    protocol = judge_protocol(spec)
    network = JUDGE_NETWORKS[spec.dataset]
    size = protocol.image_size or "native"
    judge = spec.settings
    per_class = f"-{judge.per_class}pc" if judge.per_class else ""
    return f"{fingerprint}-{network}-{size}-{judge.epochs}ep{per_class}-seed{JUDGE_SEED}"


def judge_stage(spec: JudgeSpec, fingerprint: str) -> Stage:
    name = judge_name(spec, fingerprint)
    return Stage("judge", name, spec.cache_dir / "judge" / name)


def judge_cache_path(spec: JudgeSpec, fingerprint: str) -> Path:
    """Where the judge's stage keeps the weights it trained (none when it read shipped ones)."""
    stage = judge_stage(spec, fingerprint)
    return stage.folder / f"{stage.key}.safetensors"


def shipped_judge(spec: JudgeSpec, fingerprint: str) -> Path | None:
    """The shipped weights of exactly this judge (same file name as its cache file), if any."""
    path = SHIPPED_JUDGES / judge_cache_path(spec, fingerprint).name
    return path if path.is_file() else None


def judge_weights(spec: JudgeSpec, fingerprint: str) -> Path | None:
    """The weights the judge of ``spec`` is read from: those its stage trained, else the
    shipped ones of its settings; None before either exists."""
    cache = judge_cache_path(spec, fingerprint)
    return cache if cache.is_file() else shipped_judge(spec, fingerprint)


def judge_identity(spec: JudgeSpec, fingerprint: str) -> dict[str, str] | None:
    """Which weights ``load_judge`` reads for ``spec`` (the cache before the shipped
    file) and a hash of their bytes, so a result file says which judge scored it (one
    trained on another machine has other weights); None before any judge exists."""
    weights = judge_weights(spec, fingerprint)
    if weights is None:
        return None
    cache = judge_cache_path(spec, fingerprint)
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()[:16]
    return {
        "file": weights.name,
        "source": "cache" if weights == cache else "shipped",
        "sha256": digest,
    }


def load_judge(data: DatasetSplits, spec: JudgeSpec, device: torch.device) -> Judge:
    """The judge of ``spec``, its stage computed first when it is not done yet."""
    with claim(judge_stage(spec, data.fingerprint)) as held:
        held.get(lambda folder: make_judge(data, spec, device), lambda folder: None)
    return read_judge(data, spec, device)


def make_judge(data: DatasetSplits, spec: JudgeSpec, device: torch.device) -> None:
    """The judge stage's work, under its claim: train the judge and keep its weights, unless
    the shipped judge of these settings stands for it."""
    if shipped_judge(spec, data.fingerprint) is not None:
        return
    network = _train_judge(data, spec, device)
    save_tensors_atomically(network.state_dict(), judge_cache_path(spec, data.fingerprint))


def read_judge(data: DatasetSplits, spec: JudgeSpec, device: torch.device) -> Judge:
    """The judge its stage made: the weights it trained, else the shipped ones."""
    weights = judge_weights(spec, data.fingerprint)
    if weights is None:
        stage = judge_stage(spec, data.fingerprint)
        raise MddError(
            f"the judge's stage {stage.folder} is marked done but holds no weights and no "
            "shipped judge has its settings. Hint: delete that folder to train it again."
        )
    network = judge_network(data, spec).to(device)
    network.load_state_dict(load_file(str(weights)))
    return Judge(network.eval(), judge_protocol(spec), device)


def judge_network(data: DatasetSplits, spec: JudgeSpec) -> torch.nn.Module:
    """An untrained network of the judge's architecture for ``data`` (influence guidance
    trains its trajectory on the same one)."""
    images = data.train.images
    size = judge_protocol(spec).image_size or images.shape[-1]
    name = JUDGE_NETWORKS[spec.dataset]
    return create_network(name, len(data.class_names), images.shape[1], size)


def _train_judge(data: DatasetSplits, spec: JudgeSpec, device: torch.device) -> torch.nn.Module:
    protocol = judge_protocol(spec)
    train = data.train
    if spec.settings.per_class is not None:
        train = train.select(per_class_index(train.labels, spec.settings.per_class, JUDGE_SEED))
    size = protocol.image_size or train.images.shape[-1]
    return train_network(
        JUDGE_NETWORKS[spec.dataset],
        resize_images(train.images, size),
        train.labels,
        protocol=protocol,
        num_classes=len(data.class_names),
        seed=JUDGE_SEED,
        device=device,
        progress=True,
    )


def train_features(
    judge: Callable[[], Judge], data: DatasetSplits, spec: JudgeSpec
) -> torch.Tensor:
    """The judge's features of the whole training split [n, d], float32: read from beside the
    judge's weights, or computed once and kept there. Herding and k-center over real images
    and real-herding read them at every selection, and on an ImageNet subset at 224 px they
    are a pass of ResNetAP-10 over every training image. ``judge`` gives the judge, called
    only when the features are not kept yet (a hit reads no weights)."""
    images = data.train.images
    judge_file = judge_cache_path(spec, data.fingerprint)
    size = "x".join(str(n) for n in images.shape)
    path = judge_file.with_name(f"{judge_file.stem}-train-{size}-features.safetensors")
    if path.is_file():
        return load_file(str(path))["features"]
    features = judge().features(images)
    save_tensors_atomically({"features": features}, path)
    return features
