"""Surrogate-set diagnostics against hand-computed values, and on sets whose answer is known."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch

from mdd.data import load_dataset
from mdd.data.splits import per_class_index
from mdd.eval.diagnostics import (
    RealData,
    diagnose,
    frechet_distance,
    intra_class_cosine,
    nearest_cosine,
    prdc,
    real_data,
)
from mdd.eval.judge import Judge
from mdd.eval.networks import create_network
from mdd.eval.protocols import resolve_protocol


def test_intra_class_cosine_averages_distinct_pairs_then_classes() -> None:
    x = torch.tensor([[1.0, 0], [2, 0], [0, 3], [1, 1], [1, -1]])
    labels = torch.tensor([0, 0, 0, 1, 1])
    # class 0: pairs (a,b)=1, (a,c)=0, (b,c)=0 -> 1/3; class 1: orthogonal -> 0.
    assert intra_class_cosine(x, labels) == pytest.approx((1 / 3 + 0) / 2)


def test_intra_class_cosine_skips_single_item_classes() -> None:
    x = torch.tensor([[1.0, 0], [1, 0], [0, 1]])
    assert intra_class_cosine(x, torch.tensor([0, 0, 1])) == pytest.approx(1.0)


def test_nearest_cosine_finds_the_best_match_across_chunks(monkeypatch) -> None:
    monkeypatch.setattr("mdd.eval.diagnostics.PIXEL_CHUNK", 2)
    real = torch.tensor([[0.0, 1], [1, 1], [5, 1], [0, 2], [1, 0.1]])
    x = torch.tensor([[3.0, 0], [0, 1]])
    expected = [1 / math.sqrt(1.01), 1.0]
    assert nearest_cosine(x, real).tolist() == pytest.approx(expected)


def test_prdc_matches_the_hand_computed_example() -> None:
    real = torch.tensor([[0.0], [1.0], [2.0], [3.0]])
    fake = torch.tensor([[0.5], [5.0]])
    # k = 1: every real radius is 1. Fake 0.5 lies in the balls of reals 0 and 1, fake 5
    # in none: precision 1/2, density (2 + 0) / 2 / 1 = 1. Reals 0 and 1 have a fake within
    # their radius, 2 and 3 do not: coverage 1/2. Fake radii are 4.5, which reach every
    # real: recall 1.
    assert prdc(real, fake, k=1) == pytest.approx(
        {"precision": 0.5, "recall": 1.0, "density": 1.0, "coverage": 0.5}
    )


def test_prdc_of_a_set_against_itself_is_perfect_and_recall_needs_two_items() -> None:
    points = torch.randn(30, 4, generator=torch.Generator().manual_seed(0))
    same = prdc(points, points)
    assert same["precision"] == same["recall"] == same["coverage"] == 1.0
    assert math.isnan(prdc(points, points[:1])["recall"])


def test_frechet_distance_of_one_dimensional_gaussians() -> None:
    a = torch.tensor([[0.0], [2.0]])  # mean 1, unbiased variance 2
    b = torch.tensor([[3.0], [3.0], [5.0], [5.0]])  # mean 4, variance 4/3
    expected = 9 + 2 + 4 / 3 - 2 * math.sqrt(2 * 4 / 3)
    assert frechet_distance(a, b) == pytest.approx(expected)


def test_frechet_distance_matches_scipy_sqrtm_and_is_zero_for_equal_sets() -> None:
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(200, 6, generator=g), 2 * torch.randn(300, 6, generator=g) + 1
    ca, cb = np.cov(a.numpy().T), np.cov(b.numpy().T)
    cross = scipy.linalg.sqrtm(ca @ cb).real
    mean_gap = ((a.mean(0) - b.mean(0)) ** 2).sum().item()
    expected = mean_gap + np.trace(ca) + np.trace(cb) - 2 * np.trace(cross)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-6)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)


def test_reference_draws_the_same_images_per_class_every_time() -> None:
    labels = torch.tensor([0, 1] * 10)
    first = per_class_index(labels, 3)
    assert torch.equal(first, per_class_index(labels, 3))
    assert labels[first].tolist() == [0, 0, 0, 1, 1, 1]


def _judge() -> Judge:
    torch.manual_seed(0)
    network = create_network("convnet3", 2, 1, 28).eval()
    return Judge(network, resolve_protocol("dc", 1), torch.device("cpu"))


def _real() -> RealData:
    """Random images of two classes; the training split is also the reference (no val)."""
    g = torch.Generator().manual_seed(0)
    train = torch.randint(0, 256, (40, 1, 28, 28), generator=g, dtype=torch.uint8)
    test = torch.randint(0, 256, (10, 1, 28, 28), generator=g, dtype=torch.uint8)
    return RealData(train, torch.arange(40) % 2, train, test)


def test_copies_of_training_images_are_flagged_as_memorised() -> None:
    real = _real()
    values = diagnose(real.train_images[:6], real.reference_labels[:6], _judge(), real)
    assert values["nearest_train_cosine"] == pytest.approx(1.0)
    assert values["nearest_test_cosine"] < 0.9
    assert values["nearest_real_cosine"] == pytest.approx(1.0)
    assert set(values) >= {"precision", "recall", "density", "coverage", "frechet_features"}


def test_one_image_repeated_per_class_has_no_diversity() -> None:
    real = _real()
    images = real.train_images[:2].repeat(3, 1, 1, 1)  # classes 0, 1, 0, 1, 0, 1
    values = diagnose(images, torch.tensor([0, 1] * 3), _judge(), real)
    assert values["intra_cosine_pixels"] == pytest.approx(1.0)
    assert values["intra_cosine_features"] == pytest.approx(1.0)


def test_the_real_reference_is_the_validation_split_which_no_selected_set_contains(
    tiny_config,
) -> None:
    data = load_dataset(tiny_config.data)
    real = real_data(data)
    assert real.reference_images is data.val.images
    assert real.train_images is data.train.images
    no_val = load_dataset(tiny_config.data.model_copy(update={"val_per_class": 0}))
    assert real_data(no_val).reference_images is no_val.train.images
