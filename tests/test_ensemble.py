"""Repeats trained as one batched computation are the runs they would be one at a time."""

import dataclasses

import pytest
import torch

import mdd.eval.train as train_module
from mdd.eval.ensemble import Ensemble
from mdd.eval.protocols import resolve_protocol
from mdd.eval.train import batched_on, evaluate_repeats, train_group


def _set(channels: int, size: int, n: int = 16, classes: int = 4) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8, generator=g)
    return images, torch.arange(n) % classes


def _weights(nets: list[torch.nn.Module]) -> list[dict[str, torch.Tensor]]:
    return [{k: v.detach().clone() for k, v in net.state_dict().items()} for net in nets]


CASES = [
    ("convnet3", "dc", "instance", 1, 28),
    ("convnet3", "dc", "batch", 1, 28),
    ("convnet6", "dc", "instance", 1, 28),
    ("resnet_ap10", "idc", "instance", 3, 16),
    ("resnet18", "idc", "instance", 3, 16),
    ("convnet3", "proxy", "none", 1, 28),
]


@pytest.fixture
def float64():
    # In float32 the two ways round differently and SGD amplifies it (up to ~1e-3 after a
    # few steps); in float64 they agree to ~1e-14, which shows the computation is the same.
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(torch.float32)


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize(("network", "protocol_name", "norm", "channels", "size"), CASES)
def test_batched_repeats_reach_the_weights_of_one_at_a_time_runs(
    network: str, protocol_name: str, norm: str, channels: int, size: int
) -> None:
    # Three epochs of two batches: several optimiser steps, augmentation draws, and for
    # DSA repeats that pick different transforms in the same step.
    protocol = dataclasses.replace(
        resolve_protocol(protocol_name, 1), epochs=3, batch_size=8, image_size=None
    )
    images, labels = _set(channels, size)
    kwargs = dict(protocol=protocol, num_classes=4, device="cpu", norm=norm)
    kwargs |= dict(evaluate=None, on_epoch=None, progress=False)
    together, _ = train_group(network, images, labels, seeds=[5, 6], **kwargs)
    apart = [train_group(network, images, labels, seeds=[s], **kwargs)[0][0] for s in (5, 6)]
    for batched, alone in zip(_weights(together), _weights(apart), strict=True):
        assert batched.keys() == alone.keys()
        for name in batched:
            torch.testing.assert_close(batched[name], alone[name], rtol=1e-9, atol=1e-11)
    # The two networks did not train the same way: the test compares two distinct runs.
    first, second = _weights(together)
    assert any(not torch.allclose(first[k], second[k]) for k in first)


@pytest.mark.usefixtures("float64")
def test_batched_evaluation_reports_the_accuracies_of_one_at_a_time_evaluation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sizes = []

    class CountingEnsemble(Ensemble):
        def __init__(self, nets: list[torch.nn.Module]) -> None:
            sizes.append(len(nets))
            super().__init__(nets)

    monkeypatch.setattr(train_module, "Ensemble", CountingEnsemble)
    protocol = dataclasses.replace(resolve_protocol("dc", 1), epochs=4, evaluations=2)
    images, labels = _set(1, 28)
    test_images, test_labels = _set(1, 28, n=40)
    kwargs = dict(protocol=protocol, num_classes=4, repeats=3, seed=2, device="cpu")
    together = evaluate_repeats(
        "convnet3", images, labels, test_images, test_labels, batch_repeats=True, **kwargs
    )
    apart = evaluate_repeats(
        "convnet3", images, labels, test_images, test_labels, batch_repeats=False, **kwargs
    )
    assert sizes == [3, 1, 1, 1]  # one batched group of three, then three alone
    for a, b in zip(together.runs, apart.runs, strict=True):
        assert [epoch for epoch, _, _ in a.history] == [2, 4]
        assert [acc for _, _, acc in a.history] == [acc for _, _, acc in b.history]
        assert [loss for _, loss, _ in a.history] == pytest.approx(
            [loss for _, loss, _ in b.history], rel=1e-9
        )
        assert a.confusion == b.confusion


def test_auto_batches_repeats_on_cuda_only() -> None:
    assert batched_on(torch.device("cuda"), "auto")
    assert not batched_on(torch.device("cpu"), "auto")
    assert batched_on(torch.device("cpu"), True)
    assert not batched_on(torch.device("cuda"), False)
