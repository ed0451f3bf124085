"""The validation split (a seeded, stratified hold-out of the training images) and other
seeded per-class draws.

Sweeps tune on this split and never on the test set (METHOD.md section 5).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mdd.errors import DataError


def stratified_split(
    labels: torch.Tensor, val_per_class: int, seed: int, class_names: Sequence[str]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (train, val), each sorted ascending, with exactly ``val_per_class`` per class in val.

    The same labels and seed always give the same split. Every class must keep at least
    one training image.
    """
    num_classes = len(class_names)
    counts = torch.bincount(labels, minlength=num_classes)
    too_small = (counts <= val_per_class).nonzero().flatten().tolist()
    if too_small:
        listed = ", ".join(f"{class_names[c]} ({int(counts[c])})" for c in too_small)
        raise DataError(
            f"data.val_per_class={val_per_class} leaves no training images for: {listed}. "
            "Fix: lower data.val_per_class below the size of the smallest class."
        )
    generator = torch.Generator().manual_seed(seed)
    shuffled = torch.randperm(len(labels), generator=generator)
    # A stable sort by label groups each class while keeping the random order inside it,
    # so the first val_per_class of each group are a uniform draw from that class.
    grouped = shuffled[torch.sort(labels[shuffled], stable=True).indices]
    class_start = torch.cumsum(counts, 0) - counts
    rank_in_class = torch.arange(len(labels)) - class_start[labels[grouped]]
    is_val = rank_in_class < val_per_class
    val = torch.sort(grouped[is_val]).values
    train = torch.sort(grouped[~is_val]).values
    return train, val


def per_class_index(labels: torch.Tensor, per_class: int, seed: int = 0) -> torch.Tensor:
    """Up to ``per_class`` seeded indices of each class, classes in ascending order: the same
    labels and seed always give the same images (a judge's training set, a reference set)."""
    generator = torch.Generator().manual_seed(seed)
    picks = []
    for c in torch.unique(labels).tolist():
        members = torch.nonzero(labels == c).flatten()
        picks.append(members[torch.randperm(len(members), generator=generator)[:per_class]])
    return torch.cat(picks)
