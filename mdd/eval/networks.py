"""Evaluation networks created by name (METHOD.md section 5): ConvNet-D, ResNetAP-10, ResNet-18.

Every network has ``features(x)`` (the penultimate activations, used by herding and
k-center), a linear ``classifier`` and ``forward(x) == classifier(features(x))``.
``create_network`` is the registry, timm-style: ``create_network("resnet_ap10",
num_classes=10, in_channels=3, image_size=224)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import timm
import torch
import torch.nn.functional as F
from torch import nn

from mdd.errors import ConfigError

NORMS = ("instance", "batch", "none")


def norm_layer(norm: str, channels: int) -> nn.Module:
    """Instance norm is GroupNorm with one channel per group, as in the DC and IDC code."""
    if norm == "instance":
        return nn.GroupNorm(channels, channels, affine=True)
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    return nn.Identity()


class ConvNet(nn.Module):
    """ConvNet-D of the DC/DSA papers: D x [conv3x3 -> width, norm, ReLU, avgpool 2], linear.

    Size rules. From the DC code (VICO-UoE/DatasetCondensation networks.py): at 28 px the
    first convolution pads by 3 so that the maps are 32 -> 16 -> 8 -> 4 (DC pads 1-channel
    28 px inputs this way and sizes its classifier for 32 px; here the rule follows the
    size, so 3-channel 28 px inputs work too). Added here: a block pools only while the
    pooled map keeps at least 2 x 2 pixels. DC's ConvNet-6 at 32 px would pool to 0 px;
    stopping at 1 x 1 is not enough either, because instance norm over a single pixel
    outputs its bias whatever the input. So ConvNet-6 at 28/32 px ends at 128 x 2 x 2
    (four pools) and at 224 px at 128 x 3 x 3 (six pools, as in IDC).
    """

    def __init__(
        self,
        depth: int,
        num_classes: int,
        in_channels: int,
        image_size: int,
        norm: str,
        width: int = 128,
    ) -> None:
        super().__init__()
        first_padding = 3 if image_size == 28 else 1
        size = image_size + 2 * first_padding - 2
        layers: list[nn.Module] = []
        channels = in_channels
        for d in range(depth):
            padding = first_padding if d == 0 else 1
            layers += [
                nn.Conv2d(channels, width, kernel_size=3, padding=padding),
                norm_layer(norm, width),
                nn.ReLU(inplace=True),
            ]
            if size >= 4:
                layers.append(nn.AvgPool2d(kernel_size=2, stride=2))
                size //= 2
            channels = width
        self.body = nn.Sequential(*layers)
        self.classifier = nn.Linear(width * size * size, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class BasicBlockAP(nn.Module):
    """IDC's BasicBlock: a stride-1 conv followed by 2x2 average pooling replaces the
    strided conv; the shortcut is 1x1 conv -> avgpool -> norm."""

    def __init__(self, in_planes: int, planes: int, stride: int, norm: str) -> None:
        super().__init__()
        bias = norm == "none"  # IDC keeps conv biases only when there is no norm after them
        self.stride = stride
        self.conv1 = nn.Conv2d(in_planes, planes, 3, padding=1, bias=bias)
        self.norm1 = norm_layer(norm, planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=bias)
        self.norm2 = norm_layer(norm, planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, bias=bias),
                nn.AvgPool2d(kernel_size=stride, stride=stride),
                norm_layer(norm, planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.norm1(self.conv1(x)))
        if self.stride != 1:
            out = F.avg_pool2d(out, kernel_size=self.stride, stride=self.stride)
        out = self.norm2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(out + shortcut)


class ResNetAP(nn.Module):
    """ResNetAP of IDC (snu-mllab/Efficient-Dataset-Condensation models/resnet_ap.py).

    The stem follows IDC's size classes: up to 64 px a 3x3 conv with no pooling; up to
    128 px a 3x3 conv and 2x2 average pooling; above that (224 px) a 7x7 stride-1 conv
    and 4x4 average pooling. Then one stage per width (64/128/256/512), global average
    pooling and a linear classifier.
    """

    def __init__(
        self,
        blocks_per_stage: tuple[int, int, int, int],
        num_classes: int,
        in_channels: int,
        image_size: int,
        norm: str,
    ) -> None:
        super().__init__()
        bias = norm == "none"
        if image_size <= 64:
            stem_kernel, stem_pool = 3, 1
        elif image_size <= 128:
            stem_kernel, stem_pool = 3, 2
        else:
            stem_kernel, stem_pool = 7, 4
        stem: list[nn.Module] = [
            nn.Conv2d(in_channels, 64, stem_kernel, padding=stem_kernel // 2, bias=bias),
            norm_layer(norm, 64),
            nn.ReLU(inplace=True),
        ]
        if stem_pool > 1:
            stem.append(nn.AvgPool2d(kernel_size=stem_pool, stride=stem_pool))
        self.stem = nn.Sequential(*stem)
        stages: list[nn.Module] = []
        in_planes = 64
        for i, (planes, count) in enumerate(
            zip((64, 128, 256, 512), blocks_per_stage, strict=True)
        ):
            blocks = []
            for b in range(count):
                stride = 2 if i > 0 and b == 0 else 1
                blocks.append(BasicBlockAP(in_planes, planes, stride, norm))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.classifier = nn.Linear(in_planes, num_classes)
        # IDC's initialisation: He normal with fan-out for convs, unit/zero norm affines.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.GroupNorm | nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(self.stages(self.stem(x)), 1).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def _timm_norm(norm: str) -> Callable[..., nn.Module]:
    # timm calls norm_layer(num_channels, **factory_kwargs); a plain function passes its checks.
    def make(num_channels: int, **kwargs: object) -> nn.Module:
        if norm == "instance":
            return nn.GroupNorm(num_channels, num_channels, affine=True, **kwargs)
        if norm == "batch":
            return nn.BatchNorm2d(num_channels, **kwargs)
        return nn.Identity()

    return make


class TimmResNet18(nn.Module):
    """timm's ResNet-18 with the chosen norm; at 32 px or less a 3x3 stride-1 stem and no
    max-pool (the CIFAR variant used by the DC literature), so small maps are not lost."""

    def __init__(self, num_classes: int, in_channels: int, image_size: int, norm: str) -> None:
        super().__init__()
        self.body = timm.create_model(
            "resnet18", num_classes=num_classes, in_chans=in_channels, norm_layer=_timm_norm(norm)
        )
        if image_size <= 32:
            self.body.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
            nn.init.kaiming_normal_(self.body.conv1.weight, mode="fan_out", nonlinearity="relu")
            self.body.maxpool = nn.Identity()

    @property
    def classifier(self) -> nn.Module:
        return self.body.fc

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body.forward_head(self.body.forward_features(x), pre_logits=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


NetworkBuilder = Callable[[int, int, int, str], nn.Module]

NETWORKS: dict[str, NetworkBuilder] = {
    "convnet3": lambda classes, chans, size, norm: ConvNet(3, classes, chans, size, norm),
    "convnet6": lambda classes, chans, size, norm: ConvNet(6, classes, chans, size, norm),
    "resnet_ap10": lambda classes, chans, size, norm: ResNetAP(
        (1, 1, 1, 1), classes, chans, size, norm
    ),
    "resnet18": TimmResNet18,
}


def create_network(
    name: str, num_classes: int, in_channels: int, image_size: int, norm: str = "instance"
) -> nn.Module:
    """A freshly initialised evaluation network (uses the global torch RNG for its weights)."""
    if name not in NETWORKS:
        raise ConfigError(
            f"eval.networks: unknown network {name!r}. Hint: known networks are "
            f"{', '.join(NETWORKS)}."
        )
    if norm not in NORMS:
        raise ConfigError(f"eval.norm: unknown norm {norm!r}. Hint: use one of {', '.join(NORMS)}.")
    return NETWORKS[name](num_classes, in_channels, image_size, norm)
