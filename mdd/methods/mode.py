"""Mode guidance (MGD3, Chan-Santiago et al., ICML 2025): steer each sample toward a mode of
its class in the early sampling steps, then let the model finish on its own.

The modes of a class are the k-means centres of its real training latents, one per image of
the surrogate set (k = IPC); sample ``i`` of a class is guided toward mode ``i mod IPC``, so
an oversampled pool gives each mode the same number of candidates. At every DDPM step whose
respaced index (``steps - 1`` down to 0) is above ``stop_step``, after classifier-free
guidance and the scheduler's step:

    x_{t-1} = mu_theta(x_t) + sigma_t z + weight * sigma_t * (mode - x0_hat)

with ``x0_hat`` the clean latent the guided model output predicts and ``sigma_t`` the
standard deviation of that step's noise (the learned one for DiT-XL/2). MGD3's defaults:
weight 0.1, stop step 25 of 50 (the first 24 steps are guided).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mdd.diffusion.sampling import StepState


def kmeans(points: Tensor, k: int, seed: int, iterations: int = 300, tol: float = 1e-4) -> Tensor:
    """``k`` centres of ``points`` ``[N, D]``: k-means++ seeding, then Lloyd's iterations.

    Deterministic for a seed (a CPU generator draws the seeding). A cluster left empty is
    re-seeded with the point farthest from its centre. Stops when no centre moves by more
    than ``tol`` times the points' mean squared norm, or after ``iterations``.
    """
    points = points.double()
    count = points.shape[0]
    if not 1 <= k <= count:
        raise ValueError(f"k-means: k = {k} centres need between 1 and {count} points")
    generator = torch.Generator().manual_seed(seed)
    first = int(torch.randint(count, (1,), generator=generator))
    centres = [points[first]]
    nearest = (points - points[first]).square().sum(1)
    for _ in range(1, k):
        # k-means++: the next centre with probability proportional to the squared distance.
        weights = nearest / nearest.sum() if nearest.sum() > 0 else torch.full_like(nearest, 1)
        pick = int(torch.multinomial(weights.cpu(), 1, generator=generator))
        centres.append(points[pick])
        nearest = torch.minimum(nearest, (points - points[pick]).square().sum(1))
    centre = torch.stack(centres)
    scale = float(points.square().sum(1).mean()) or 1.0
    for _ in range(iterations):
        assign = torch.cdist(points, centre).argmin(1)
        sums = torch.zeros_like(centre).index_add_(0, assign, points)
        sizes = torch.bincount(assign, minlength=k)
        moved = sums / sizes.clamp(min=1).unsqueeze(1).to(sums)
        for empty in torch.nonzero(sizes == 0).flatten().tolist():
            far = (points - moved[assign]).square().sum(1).argmax()
            moved[empty] = points[far]
        shift = float((moved - centre).square().sum(1).max())
        centre = moved
        if shift <= tol * scale:
            break
    return centre.float()


def class_modes(latents: Tensor, labels: Tensor, num_classes: int, k: int, seed: int) -> Tensor:
    """``[num_classes, k, *latent]``: the k-means modes of each class's latents."""
    shape = latents.shape[1:]
    flat = latents.reshape(len(latents), -1).cpu()
    labels = labels.cpu()
    modes = [kmeans(flat[labels == c], k, seed) for c in range(num_classes)]
    return torch.stack(modes).reshape(num_classes, k, *shape)


def mode_targets(modes: Tensor, labels: Tensor) -> Tensor:
    """Each sample's mode: sample ``i`` of its class (in label order) takes mode ``i mod k``."""
    k = modes.shape[1]
    rank = torch.zeros_like(labels)
    for c in labels.unique().tolist():
        where = labels == c
        rank[where] = torch.arange(int(where.sum()))
    return modes[labels, rank % k]


@dataclass(frozen=True)
class ModeGuidance:
    """The MGD3 term for the samples of one sampling call (``targets[i]`` is item i's mode)."""

    targets: Tensor
    weight: float
    stop_step: int

    def active(self, index: int, steps: int) -> bool:
        """Whether step ``index`` of the loop (0 first) is guided: respaced index above stop."""
        return steps - 1 - index > self.stop_step

    def __call__(self, step: StepState) -> Tensor:
        if not self.active(step.index, step.steps):
            return step.x_prev
        target = self.targets[step.items].to(step.x_prev)
        return step.x_prev + self.weight * step.sigma * (target - step.x0_hat)
