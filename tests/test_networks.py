"""Evaluation networks: shapes at 28/32/224 px, published parameter counts, registry errors."""

import pytest
import torch
from torch import nn

from mdd.errors import ConfigError
from mdd.eval.networks import NETWORKS, create_network

# (name, image size) -> width of features(x)
FEATURE_DIMS = {
    ("convnet3", 28): 128 * 4 * 4,  # 28 px padded to 32 by the first conv: 32 -> 16 -> 8 -> 4
    ("convnet3", 32): 128 * 4 * 4,
    ("convnet6", 28): 128 * 2 * 2,  # pooling stops at 2 x 2 after four pools
    ("convnet6", 32): 128 * 2 * 2,
    ("convnet6", 224): 128 * 3 * 3,  # 224 / 2^6 = 3
    ("resnet_ap10", 28): 512,
    ("resnet_ap10", 32): 512,
    ("resnet_ap10", 224): 512,
    ("resnet18", 28): 512,
    ("resnet18", 32): 512,
    ("resnet18", 224): 512,
}


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize(("name", "size"), list(FEATURE_DIMS))
def test_network_output_and_feature_shapes(name: str, size: int, channels: int) -> None:
    torch.manual_seed(0)
    net = create_network(name, num_classes=7, in_channels=channels, image_size=size)
    batch = 1 if size == 224 else 2
    with torch.inference_mode():
        feats = net.features(torch.randn(batch, channels, size, size))
        logits = net.classifier(feats)
    assert feats.shape == (batch, FEATURE_DIMS[(name, size)])
    assert logits.shape == (batch, 7)


@pytest.mark.parametrize("name", list(NETWORKS))
def test_forward_is_classifier_of_features(name: str) -> None:
    torch.manual_seed(0)
    net = create_network(name, num_classes=5, in_channels=1, image_size=28)
    x = torch.randn(2, 1, 28, 28)
    with torch.inference_mode():
        torch.testing.assert_close(net(x), net.classifier(net.features(x)))


def _count(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def test_convnet3_parameter_count_matches_hand_count() -> None:
    expected = (
        (1 * 128 * 9 + 128)  # conv 1 -> 128
        + 256  # GroupNorm(128, 128) weight + bias
        + (128 * 128 * 9 + 128)  # conv 128 -> 128
        + 256
        + (128 * 128 * 9 + 128)
        + 256
        + (128 * 4 * 4 * 10 + 10)  # linear on 128 x 4 x 4 (28 px padded to 32, three pools)
    )
    assert expected == 317_706
    assert _count(create_network("convnet3", 10, 1, 28)) == expected


def test_resnet_ap10_parameter_count_matches_idc_definition() -> None:
    def block(cin: int, cout: int) -> int:
        convs = cin * cout * 9 + cout * cout * 9  # no conv biases before a norm
        norms = 2 * 2 * cout
        shortcut = cin * cout + 2 * cout if cin != cout else 0  # 1x1 conv, avgpool, norm
        return convs + norms + shortcut

    stages = block(64, 64) + block(64, 128) + block(128, 256) + block(256, 512)
    fc = 512 * 10 + 10
    small_stem = 3 * 64 * 9 + 2 * 64  # 3x3 conv + norm (<= 64 px)
    large_stem = 3 * 64 * 49 + 2 * 64  # 7x7 conv + norm (224 px)
    assert small_stem + stages + fc == 4_903_242
    assert _count(create_network("resnet_ap10", 10, 3, 32)) == small_stem + stages + fc
    assert _count(create_network("resnet_ap10", 10, 3, 224)) == large_stem + stages + fc


def test_convnet6_keeps_maps_of_at_least_two_pixels_for_instance_norm() -> None:
    def pools(size: int) -> int:
        net = create_network("convnet6", 10, 3, size)
        return sum(isinstance(m, nn.AvgPool2d) for m in net.modules())

    assert pools(32) == 4
    assert pools(224) == 6
    # Every instance norm sees more than one pixel, so the features still depend on the input.
    net = create_network("convnet6", 10, 1, 28)
    with torch.inference_mode():
        feats = net.features(torch.randn(2, 1, 28, 28))
    assert not torch.allclose(feats[0], feats[1])


def test_resnet18_small_inputs_get_a_3x3_stride1_stem_without_maxpool() -> None:
    small = create_network("resnet18", 10, 3, 32).body
    assert (small.conv1.kernel_size, small.conv1.stride) == ((3, 3), (1, 1))
    assert isinstance(small.maxpool, nn.Identity)
    large = create_network("resnet18", 10, 3, 224).body
    assert (large.conv1.kernel_size, large.conv1.stride) == ((7, 7), (2, 2))
    assert isinstance(large.maxpool, nn.MaxPool2d)


@pytest.mark.parametrize("name", list(NETWORKS))
def test_norm_option_selects_instance_batch_or_no_normalisation(name: str) -> None:
    def norms(norm: str) -> set[type]:
        net = create_network(name, 10, 1, 28, norm=norm)
        return {type(m) for m in net.modules() if isinstance(m, nn.GroupNorm | nn.BatchNorm2d)}

    instance = create_network(name, 10, 1, 28, norm="instance")
    assert all(
        m.num_groups == m.num_channels for m in instance.modules() if isinstance(m, nn.GroupNorm)
    )
    assert norms("instance") == {nn.GroupNorm}
    assert norms("batch") == {nn.BatchNorm2d}
    assert norms("none") == set()


def test_unknown_network_name_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="convnet3, convnet6, resnet_ap10, resnet18"):
        create_network("vgg11", 10, 3, 32)


def test_unknown_norm_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="layer"):
        create_network("convnet3", 10, 3, 32, norm="layer")
