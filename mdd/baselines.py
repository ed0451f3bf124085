"""Real-image baselines: pick IPC training images per class (METHOD.md section 6: Random, Herding).

- ``select_random``: a seeded uniform draw per class.
- ``select_herding``: greedy mean matching (Welling 2009; Rebuffi et al. 2017, as in IDC's
  coreset.py): step k takes the unpicked item x minimising
  ``|| mu - (sum of the picked + x) / k ||`` for the class mean ``mu``.
  ``real-herding`` (``mdd.methods``) runs the same greedy steps over generated candidates
  toward the real class mean instead of the candidates' own.
- ``select_kcenter``: greedy k-center (farthest-point) selection: start from one item and
  repeatedly add the item farthest from everything picked so far.

Herding and k-center work on features: the penultimate layer of a ConvNet-3 trained
briefly on the training split (``mdd.eval.judge``).
Indices come back class by class (ascending), in selection order within a class. The
loop over steps is Python; every step is one tensor operation over the class's items.
"""

from __future__ import annotations

import torch

from mdd.data.splits import per_class_index
from mdd.errors import DataError


def _class_members(labels: torch.Tensor, ipc: int) -> list[torch.Tensor]:
    """Indices of each class present in ``labels``, checked to hold at least ``ipc`` items."""
    if ipc < 1:
        raise DataError(f"sample.ipc: {ipc} images per class. Hint: use at least 1.")
    members = []
    for c in torch.unique(labels).tolist():
        index = torch.nonzero(labels == c).flatten()
        if len(index) < ipc:
            raise DataError(
                f"class {c} has {len(index)} training images, fewer than ipc={ipc}. "
                "Hint: lower sample.ipc or use a larger training split."
            )
        members.append(index)
    return members


def select_random(labels: torch.Tensor, ipc: int, seed: int) -> torch.Tensor:
    _class_members(labels.cpu(), ipc)  # every class must hold ipc images
    return per_class_index(labels.cpu(), ipc, seed)


def herding_order(
    features: torch.Tensor, count: int, target: torch.Tensor | None = None
) -> torch.Tensor:
    """The first ``count`` picks of greedy mean matching among ``features`` [n, d], toward
    ``target`` [d] (default: their own mean)."""
    x = features.double()
    n = len(x)
    mean = x.mean(dim=0) if target is None else target.double().cpu()
    sq_norms = (x * x).sum(dim=1)
    picked_sum = torch.zeros_like(mean)
    taken = torch.zeros(n, dtype=torch.bool)
    order = torch.empty(count, dtype=torch.long)
    for k in range(1, count + 1):
        # k^2 || mu - (s + x) / k ||^2 = ||x||^2 + 2 x.(s - k mu) + const: one mat-vec a step.
        score = sq_norms + 2 * (x @ (picked_sum - k * mean))
        score[taken] = float("inf")
        pick = int(torch.argmin(score))
        order[k - 1] = pick
        taken[pick] = True
        picked_sum += x[pick]
    return order


def kcenter_order(features: torch.Tensor, count: int, start: int) -> torch.Tensor:
    """The first ``count`` picks of farthest-point selection among ``features`` from ``start``."""
    x = features.double()
    taken = torch.zeros(len(x), dtype=torch.bool)
    nearest = torch.full((len(x),), float("inf"), dtype=torch.float64)
    order = torch.empty(count, dtype=torch.long)
    pick = start
    for k in range(count):
        order[k] = pick
        taken[pick] = True
        nearest = torch.minimum(nearest, ((x - x[pick]) ** 2).sum(dim=1))
        pick = int(torch.argmax(nearest.masked_fill(taken, -1.0)))
    return order


def select_herding(
    features: torch.Tensor, labels: torch.Tensor, ipc: int, targets: torch.Tensor | None = None
) -> torch.Tensor:
    """Herding per class, toward each class's own mean, or toward ``targets[c]`` [classes, d]
    (the real class means, when the items are generated candidates)."""
    labels = labels.cpu()
    picks = []
    for m in _class_members(labels, ipc):
        target = None if targets is None else targets[int(labels[m[0]])]
        picks.append(m[herding_order(features[m].cpu(), ipc, target)])
    return torch.cat(picks)


def class_means(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The mean feature of each class [classes, d], float64; a class with no item is NaN."""
    x = features.double().cpu()
    labels = labels.cpu()
    sums = torch.zeros(num_classes, x.shape[1], dtype=torch.float64).index_add_(0, labels, x)
    counts = torch.bincount(labels, minlength=num_classes).double()
    return sums / counts.unsqueeze(1)


def select_kcenter(
    features: torch.Tensor, labels: torch.Tensor, ipc: int, seed: int | None = None
) -> torch.Tensor:
    """k-center per class. ``seed=None`` starts from the item closest to the class mean
    (deterministic); an int starts from a seeded random item of each class."""
    labels = labels.cpu()
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    picks = []
    for m in _class_members(labels, ipc):
        x = features[m].cpu().double()
        if generator is None:
            start = int(torch.argmin(((x - x.mean(dim=0)) ** 2).sum(dim=1)))
        else:
            start = int(torch.randint(len(m), (1,), generator=generator))
        picks.append(m[kcenter_order(x, ipc, start)])
    return torch.cat(picks)


def select_confident(probabilities: torch.Tensor, labels: torch.Tensor, ipc: int) -> torch.Tensor:
    """Per class, the ``ipc`` items a classifier gives the highest probability of their own
    class (``probabilities`` [n, classes]); ties keep the earlier item."""
    labels = labels.cpu()
    own = probabilities.cpu().double().gather(1, labels.unsqueeze(1)).squeeze(1)
    picks = []
    for m in _class_members(labels, ipc):
        order = torch.sort(own[m], descending=True, stable=True).indices
        picks.append(m[order[:ipc]])
    return torch.cat(picks)
