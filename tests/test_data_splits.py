"""The stratified, seeded validation split held out from the training images."""

from __future__ import annotations

import pytest
import torch

from mdd.data.splits import stratified_split
from mdd.errors import DataError

NAMES = ["a", "b", "c"]


def unbalanced_labels() -> torch.Tensor:
    """3 classes with 7, 5 and 9 items, interleaved."""
    return torch.tensor([0] * 7 + [1] * 5 + [2] * 9)[torch.randperm(21, generator=gen(99))]


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_split_has_exactly_val_per_class_in_each_class() -> None:
    labels = unbalanced_labels()
    train, val = stratified_split(labels, 2, seed=0, class_names=NAMES)
    assert torch.bincount(labels[val], minlength=3).tolist() == [2, 2, 2]
    assert torch.bincount(labels[train], minlength=3).tolist() == [5, 3, 7]


def test_split_is_disjoint_and_covers_every_item() -> None:
    labels = unbalanced_labels()
    train, val = stratified_split(labels, 2, seed=0, class_names=NAMES)
    assert set(train.tolist()).isdisjoint(val.tolist())
    assert sorted(train.tolist() + val.tolist()) == list(range(21))
    assert torch.equal(train, train.sort().values) and torch.equal(val, val.sort().values)


def test_same_seed_gives_the_same_split() -> None:
    labels = unbalanced_labels()
    first = stratified_split(labels, 3, seed=5, class_names=NAMES)
    second = stratified_split(labels, 3, seed=5, class_names=NAMES)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


def test_other_seed_gives_another_split() -> None:
    labels = torch.arange(10).repeat_interleave(100)
    _, val_a = stratified_split(labels, 10, seed=0, class_names=list("abcdefghij"))
    _, val_b = stratified_split(labels, 10, seed=1, class_names=list("abcdefghij"))
    assert not torch.equal(val_a, val_b)
    assert torch.bincount(labels[val_b]).tolist() == [10] * 10


def test_val_draws_spread_over_the_whole_class() -> None:
    # Not just the first items of each class: over 2000 items the draws reach the far half.
    labels = torch.zeros(2000, dtype=torch.long)
    _, val = stratified_split(labels, 50, seed=0, class_names=["only"])
    assert int(val.min()) < 1000 < int(val.max())


def test_zero_val_per_class_keeps_everything_in_train() -> None:
    labels = unbalanced_labels()
    train, val = stratified_split(labels, 0, seed=0, class_names=NAMES)
    assert train.tolist() == list(range(21))
    assert val.numel() == 0


def test_class_too_small_for_val_per_class_is_named() -> None:
    labels = unbalanced_labels()
    with pytest.raises(DataError) as caught:
        stratified_split(labels, 5, seed=0, class_names=NAMES)
    message = str(caught.value)
    assert "b (5)" in message and "a (7)" not in message
    assert "lower data.val_per_class" in message
