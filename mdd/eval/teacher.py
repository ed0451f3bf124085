"""The soft-label protocol's teacher: a trained network read from a local state dict.

Nothing is downloaded: ``eval.teacher.weights`` names the file, for instance torchvision's
ImageNet-1K ResNet-18 (``resnet18-f37072fd.pth``) fetched once by the user, or a network
mdd trained (``torch.save(net.state_dict(), path)``). The architecture is built first and
the weights must fit it exactly; the number of classes comes from the weights.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from torch import nn

from mdd.config import TeacherConfig
from mdd.errors import ConfigError
from mdd.eval.networks import NETWORKS, create_network

TORCHVISION = "torchvision:"
# Wrappers training scripts put around a state dict, and DataParallel's key prefix.
WRAPPER_KEYS = ("state_dict", "model", "model_state_dict")
PARALLEL_PREFIX = "module."
IMAGENET_CLASSES = 1000


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a state-dict file (torch.save or safetensors), unwrapped."""
    if not path.is_file():
        raise ConfigError(
            f"eval.teacher.weights: {path} is not a file. Hint: download the teacher's weights "
            "once and give their local path; nothing is fetched at run time."
        )
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a truncated or foreign file: say which
        raise ConfigError(
            f"eval.teacher.weights: {path} could not be read as a state dict ({error}). "
            "Hint: save it with torch.save(net.state_dict(), path) or as .safetensors."
        ) from error
    for key in WRAPPER_KEYS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"eval.teacher.weights: {path} holds no tensors by name.")
    return {k.removeprefix(PARALLEL_PREFIX): v for k, v in state.items()}


def _outputs(state: dict[str, torch.Tensor]) -> int:
    """The classifier's output count: the rows of the last matrix (fc, head) in the dict."""
    matrices = [tensor for tensor in state.values() if tensor.dim() == 2]
    if not matrices:
        raise ConfigError("eval.teacher.weights: no classifier matrix in the state dict.")
    return int(matrices[-1].shape[0])


def _architecture(config: TeacherConfig, outputs: int, channels: int, size: int) -> nn.Module:
    name = config.network
    if name.startswith(TORCHVISION):
        arch = name.removeprefix(TORCHVISION)
        if arch not in torchvision.models.list_models(module=torchvision.models):
            raise ConfigError(
                f"eval.teacher.network: torchvision has no classification model {arch!r}. "
                "Hint: e.g. torchvision:resnet18."
            )
        if channels != 3:
            raise ConfigError(
                f"eval.teacher.network: {name} takes RGB images, the data have {channels} "
                f"channel(s). Hint: use one of mdd's networks ({', '.join(NETWORKS)})."
            )
        return torchvision.models.get_model(arch, weights=None, num_classes=outputs)
    if name not in NETWORKS:
        raise ConfigError(
            f"eval.teacher.network: unknown network {name!r}. Hint: torchvision:<model> or "
            f"one of {', '.join(NETWORKS)}."
        )
    return create_network(name, outputs, channels, size, config.norm)


class TeacherNet(nn.Module):
    """The frozen teacher's logits for the dataset's classes, in the dataset's order."""

    def __init__(self, net: nn.Module, classes: list[int] | None) -> None:
        super().__init__()
        self.net = net.eval().requires_grad_(False)
        self.register_buffer("index", None if classes is None else torch.tensor(classes))

    def train(self, mode: bool = True) -> TeacherNet:
        return self  # always in inference mode: its batch norms keep their statistics

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.net(x)
        return logits if self.index is None else logits[:, self.index]


def load_teacher(
    config: TeacherConfig,
    num_classes: int,
    channels: int,
    size: int,
    device: torch.device,
    imagenet_classes: list[int] | None = None,
) -> TeacherNet:
    """The teacher of ``config`` on ``device``, its outputs those of the ``num_classes`` dataset
    classes: ``config.classes`` picks them, else a 1000-way (ImageNet-1K) teacher of an
    ImageNet subset gives the subset's ``imagenet_classes``."""
    state = read_state_dict(config.weights)
    outputs = _outputs(state)
    net = _architecture(config, outputs, channels, size)
    missing, unexpected = net.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ConfigError(
            f"eval.teacher.weights: {config.weights} does not fit {config.network} "
            f"(missing {', '.join(missing[:4]) or 'none'}; unexpected "
            f"{', '.join(unexpected[:4]) or 'none'}). Hint: set eval.teacher.network to the "
            "architecture the weights were trained with."
        )
    index = config.classes
    if index is None and outputs == IMAGENET_CLASSES != num_classes:
        index = imagenet_classes
    if index is None and outputs != num_classes:
        raise ConfigError(
            f"eval.teacher: the teacher has {outputs} outputs, the data {num_classes} classes. "
            "Hint: set eval.teacher.classes to the teacher's output of each class."
        )
    if index is not None:
        if len(index) != num_classes or not all(0 <= c < outputs for c in index):
            raise ConfigError(
                f"eval.teacher.classes: {len(index)} indices for {num_classes} classes, each "
                f"in [0, {outputs - 1}] expected."
            )
    return TeacherNet(net, None if index is None else list(index)).to(device)
