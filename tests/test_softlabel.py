"""The soft-label protocol (eval.protocol: rded): RDED's schedule, loss, augmentation and
batch sizes against hand-computed values, and students that learn the teacher's labels."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mdd.errors import ConfigError
from mdd.eval.augment import Draws
from mdd.eval.networks import create_network
from mdd.eval.softlabel import (
    SoftProtocol,
    evaluate_students,
    lr_factor,
    parameter_groups,
    rded_batch_size,
    resolve_soft_protocol,
    shuffle_patches,
    soft_loss,
    validation_view,
)
from mdd.eval.teacher import TeacherNet


def test_learning_rate_falls_along_rdeds_quarter_cosine_from_one_to_a_half() -> None:
    factor = lr_factor(300)
    assert factor(0) == 1.0
    assert factor(150) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))  # 0.853553...
    assert factor(150) == pytest.approx(0.8535534)
    assert factor(300) == pytest.approx(0.5)
    assert factor(301) == 0.0


@pytest.mark.parametrize(
    ("ipc", "classes", "batch"),
    [(1, 10, 10), (10, 10, 50), (50, 10, 100), (10, 1000, 100), (50, 100, 200), (1, 1000, 20),
     (10, 2, 20), (2, 10, 20), (20, 10, 100)],
)  # fmt: skip
def test_batch_size_follows_rdeds_rule(ipc: int, classes: int, batch: int) -> None:
    assert rded_batch_size(ipc, classes) == batch


def test_students_are_tested_every_ten_epochs_in_the_last_fifth_and_after_the_last() -> None:
    protocol = SoftProtocol(mean=(0.5,), std=(0.5,), batch_size=10)
    # RDED's `epoch % 10 == 9 and epoch > 240` over epochs 0..299 is 250, ..., 300 from 1.
    assert [e for e in range(1, 301) if protocol.tested(e)] == [250, 260, 270, 280, 290, 300]
    spread = SoftProtocol(mean=(0.5,), std=(0.5,), batch_size=10, epochs=20, evaluations=4)
    assert [e for e in range(1, 21) if spread.tested(e)] == [5, 10, 15, 20]


def test_soft_loss_is_the_batch_mean_kl_of_the_softened_outputs() -> None:
    # Teacher [2 ln 3, 0] at T = 2 gives (3/4, 1/4); a student of [0, 0] gives (1/2, 1/2):
    # KL = 3/4 ln(3/2) + 1/4 ln(1/2) = 0.1308120; the second row agrees, so the mean halves it.
    teacher = torch.tensor([[2 * math.log(3.0), 0.0], [1.0, 1.0]])
    student = torch.tensor([[0.0, 0.0], [5.0, 5.0]])
    expected = (0.75 * math.log(1.5) + 0.25 * math.log(0.5)) / 2
    assert float(soft_loss(student, teacher, 2.0)) == pytest.approx(expected, abs=1e-6)
    assert expected == pytest.approx(0.0654060, abs=1e-6)


def test_shuffle_patches_moves_whole_strips_and_draws_per_image() -> None:
    image = torch.arange(16.0).view(1, 1, 4, 4)
    batch = image.expand(64, 1, 4, 4).contiguous()
    out = shuffle_patches(batch, 2, Draws([torch.Generator().manual_seed(0)]))
    swap = [2, 3, 0, 1]  # the two strips of two pixels exchanged
    # Column strips swapped or not, then row strips swapped or not: four arrangements.
    candidates = {
        (rows, cols): image[0, 0][swap if rows else slice(None)][:, swap if cols else slice(None)]
        for rows in (0, 1)
        for cols in (0, 1)
    }
    found = [
        next(key for key, candidate in candidates.items() if torch.equal(shuffled, candidate))
        for shuffled in out[:, 0]
    ]  # StopIteration: an output that is not a strip shuffle of the image
    assert set(found) == set(candidates)  # each image draws its own


def test_shuffle_patches_refuses_a_size_that_is_not_a_multiple_of_the_factor() -> None:
    with pytest.raises(ConfigError, match="multiple of 2"):
        shuffle_patches(torch.zeros(1, 1, 5, 5), 2, Draws([torch.Generator()]))


def test_weight_decay_falls_on_matrices_and_kernels_only() -> None:
    net = create_network("convnet3", 3, 1, 16, "instance")
    decayed, plain = parameter_groups(net)
    assert all(p.dim() > 1 for p in decayed["params"])
    assert all(p.dim() == 1 for p in plain["params"])
    assert plain["weight_decay"] == 0.0
    assert len(decayed["params"]) + len(plain["params"]) == len(list(net.parameters()))


def test_validation_view_zooms_by_eight_sevenths_and_keeps_the_size() -> None:
    images = torch.zeros(2, 3, 14, 14, dtype=torch.uint8)
    images[:, :, 6:8, 6:8] = 255  # a bright centre grows under the zoom
    view = validation_view(images)
    assert view.shape == images.shape and view.dtype == torch.uint8
    # 14 px -> 16 px and back to 14: the centre's brightness grows by about (16 / 14)^2.
    grown = float(view.float().sum() / images.float().sum())
    assert 1.2 < grown < 1.6


def test_only_the_protocols_own_values_can_be_overridden() -> None:
    protocol = resolve_soft_protocol(10, 10, (0.5,), (0.5,), {"epochs": 5, "lr": None})
    assert (protocol.epochs, protocol.lr, protocol.batch_size) == (5, 0.001, 50)
    with pytest.raises(ConfigError, match="cannot override"):
        resolve_soft_protocol(10, 10, (0.5,), (0.5,), {"momentum": 0.9})


class ColourTeacher(nn.Module):
    """Logits from the mean of each channel: class c is the image whose channel c is bright."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 8.0 * x.mean(dim=(2, 3))


def _colour_set(per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(3).repeat_interleave(per_class)
    images = torch.randint(0, 60, (len(labels), 3, 8, 8), generator=g, dtype=torch.uint8)
    images[torch.arange(len(labels)), labels] += 150
    return images, labels


def test_students_learn_the_teachers_labels_and_not_the_sets_own() -> None:
    """The positive control: a teacher whose classes are rotated makes students that predict
    the rotated classes, so the soft labels (not the set's labels) are what they learn."""
    train, _ = _colour_set(4, 0)
    test_images, test_labels = _colour_set(10, 1)
    protocol = SoftProtocol(
        mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), batch_size=12, epochs=30, lr=0.01,
        temperature=1.0,
    )  # fmt: skip
    results = {}
    for name, classes in (("faithful", None), ("rotated", [1, 2, 0])):
        teacher = TeacherNet(ColourTeacher(), classes)
        results[name] = evaluate_students(
            "convnet3", train, test_images, test_labels, teacher, protocol=protocol,
            num_classes=3, repeats=1, seed=0, device=torch.device("cpu"), norm="instance",
        )  # fmt: skip
    assert results["faithful"].last_acc_mean >= 90.0
    assert results["rotated"].last_acc_mean <= 10.0
    confusion = torch.tensor(results["rotated"].confusion)
    # True class c is predicted as the class whose teacher output is c's: c - 1 (mod 3).
    assert int(confusion[0, 2] + confusion[1, 0] + confusion[2, 1]) >= 27
