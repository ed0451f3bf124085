"""DD-Ranking's scores of a distilled set (Li et al., 2025), on accuracies as fractions.

DD-Ranking separates what a set teaches from what its evaluation adds (soft labels,
augmentation) by comparing the set with a random real subset of the same size and with the
whole training set, each trained under the same protocol:

- HLR, hard-label recovery: full-data accuracy minus the set's, both with hard labels
  (lower is better);
- IOR, improvement over random: the set's accuracy minus the random subset's, under the
  set's own protocol (higher is better);
- LRS, label-robust score: ``squash(w * IOR - (1 - w) * HLR)``;
- ARS, augmentation-robust score: ``squash(g * (syn_aug - rdm_aug) + (1 - g) * (syn_plain -
  rdm_plain))``, the improvement over random with and without the protocol's augmentation;

where ``squash(x) = (e^x - e^-1) / (e - e^-1)`` maps [-1, 1] onto [0, 1]. DD-Ranking's
released code feeds accuracies in percent into ``e^x``, so its scores leave [0, 1] for any
gap over one point (they floor at about -0.157 and grow without bound); here accuracies are
fractions, which keeps every score in [0, 1] as its documentation states. mdd's protocols use
hard labels, so the set's "own protocol" accuracy is its hard-label accuracy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mdd.errors import DataError

_LOW, _HIGH = math.exp(-1.0), math.exp(1.0)


def squash(x: float) -> float:
    """DD-Ranking's normalisation: -1 -> 0, 0 -> 1 / (e + 1), 1 -> 1."""
    return (math.exp(x) - _LOW) / (_HIGH - _LOW)


def fraction(percent: float) -> float:
    """An accuracy in percent (as mdd logs it) as a fraction, refusing what is not one."""
    if not 0.0 <= percent <= 100.0 or math.isnan(percent):
        raise DataError(f"an accuracy of {percent} % is outside [0, 100]")
    return percent / 100.0


@dataclass(frozen=True)
class LabelRobust:
    """HLR, IOR and LRS of one set, all from fractions."""

    hlr: float
    ior: float
    lrs: float


def label_robust(
    syn_hard: float, random_hard: float, full_hard: float, weight: float = 0.5
) -> LabelRobust:
    """HLR, IOR and LRS from the hard-label accuracies (fractions) of set, random and full."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"the LRS weight must lie in [0, 1], got {weight}")
    hlr = full_hard - syn_hard
    ior = syn_hard - random_hard
    return LabelRobust(hlr=hlr, ior=ior, lrs=squash(weight * ior - (1.0 - weight) * hlr))


def augmentation_robust(
    syn_aug: float, random_aug: float, syn_plain: float, random_plain: float, weight: float = 0.5
) -> float:
    """ARS from the accuracies (fractions) of set and random subset, with and without
    the protocol's augmentation."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"the ARS weight must lie in [0, 1], got {weight}")
    return squash(weight * (syn_aug - random_aug) + (1.0 - weight) * (syn_plain - random_plain))
