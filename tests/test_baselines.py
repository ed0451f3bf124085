"""Real-image baselines: random, herding and k-center pick IPC distinct images per class."""

import pytest
import torch

from mdd.baselines import (
    kcenter_order,
    select_herding,
    select_kcenter,
    select_random,
)
from mdd.errors import DataError


def _interleaved(class0: list[list[float]], class1: list[list[float]]):
    """Features with class 0 at even and class 1 at odd indices."""
    feats = torch.tensor([row for pair in zip(class0, class1, strict=True) for row in pair])
    labels = torch.tensor([0, 1] * len(class0))
    return feats, labels


def _assert_ipc_distinct_per_class(index: torch.Tensor, labels: torch.Tensor, ipc: int) -> None:
    assert len(set(index.tolist())) == len(index)
    counts = torch.bincount(labels[index], minlength=int(labels.max()) + 1)
    assert counts.tolist() == [ipc] * len(counts)


@pytest.mark.parametrize("method", ["random", "herding", "kcenter", "kcenter_seeded"])
def test_each_baseline_picks_exactly_ipc_distinct_images_per_class(method: str) -> None:
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(3, (90,), generator=g)
    labels[:30] = torch.arange(30) % 3  # at least 10 per class
    feats = torch.randn(90, 5, generator=g)
    pick = {
        "random": lambda: select_random(labels, 7, seed=1),
        "herding": lambda: select_herding(feats, labels, 7),
        "kcenter": lambda: select_kcenter(feats, labels, 7),
        "kcenter_seeded": lambda: select_kcenter(feats, labels, 7, seed=3),
    }[method]
    _assert_ipc_distinct_per_class(pick(), labels, 7)


def test_random_selection_depends_on_the_seed_only() -> None:
    labels = torch.arange(100) % 4
    assert torch.equal(select_random(labels, 5, seed=2), select_random(labels, 5, seed=2))
    assert not torch.equal(select_random(labels, 5, seed=2), select_random(labels, 5, seed=3))


def test_herding_follows_greedy_mean_matching_order() -> None:
    # Class 0: values 10, 0, 3, 1, 2 (mean 3.2). Step 1 takes 3 (closest to 3.2); step 2
    # wants x = 2 * 3.2 - 3 = 3.4 -> 2; step 3 wants 3 * 3.2 - 5 = 4.6 -> 1; step 4 wants
    # 6.8 -> 10 (before 0); step 5 takes 0. Local order [2, 4, 3, 0, 1].
    # Class 1: values 5, 5.5, 9, 6, 20 (mean 9.1): 9, then 9.2 -> 6, then 12.3 -> 5.5,
    # then 15.9 -> 20, then 5. Local order [2, 3, 1, 4, 0].
    feats, labels = _interleaved(
        [[10.0], [0.0], [3.0], [1.0], [2.0]], [[5.0], [5.5], [9.0], [6.0], [20.0]]
    )
    # Local index i is global 2i in class 0 and 2i + 1 in class 1.
    assert select_herding(feats, labels, 5).tolist() == [4, 8, 6, 0, 2, 5, 7, 3, 9, 1]
    assert select_herding(feats, labels, 3).tolist() == [4, 8, 6, 5, 7, 3]


def test_kcenter_starts_near_the_mean_and_adds_the_farthest_point() -> None:
    # Points (0,0) (4,0) (0,3) (1,1) (10,10), mean (3, 2.8): (1,1) is closest (7.24).
    # Farthest from {(1,1)}: (10,10). Squared distances to the picked set are then
    # (0,0): 2, (4,0): 10, (0,3): 5 -> (4,0); then (0,0): 2, (0,3): 5 -> (0,3); then (0,0).
    points = [[0.0, 0.0], [4.0, 0.0], [0.0, 3.0], [1.0, 1.0], [10.0, 10.0]]
    feats, labels = _interleaved(points, points)
    local = [3, 4, 1, 2, 0]
    expected = [2 * i for i in local] + [2 * i + 1 for i in local]
    assert select_kcenter(feats, labels, 5).tolist() == expected


def test_seeded_kcenter_is_a_farthest_point_order_from_a_random_start() -> None:
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(40, 3, generator=g)
    labels = torch.zeros(40, dtype=torch.long)
    starts = set()
    for seed in range(4):
        order = select_kcenter(feats, labels, 6, seed=seed).tolist()
        starts.add(order[0])
        x = feats.double().numpy()
        for k in range(1, 6):
            dist = ((x[:, None, :] - x[None, order[:k], :]) ** 2).sum(-1).min(axis=1)
            assert dist[order[k]] == pytest.approx(dist.max())
    assert len(starts) > 1


def test_kcenter_order_never_repeats_even_with_duplicate_points() -> None:
    feats = torch.tensor([[0.0], [0.0], [1.0], [1.0]])
    assert sorted(kcenter_order(feats, 4, start=0).tolist()) == [0, 1, 2, 3]


def test_too_few_images_in_a_class_is_a_data_error() -> None:
    labels = torch.tensor([0, 0, 0, 1])
    with pytest.raises(DataError, match="class 1 has 1"):
        select_random(labels, 2, seed=0)
