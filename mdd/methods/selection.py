"""Selection plug-ins: keep IPC items of each class of a pool, by one registry for both uses.

A pool is either the training split (the real-image methods ``random``, ``herding``,
``kcenter`` and ``full``, METHOD.md section 6) or a generated candidate pool (``selection``
in a composition such as ``dit+kcenter``: ``oversample`` x IPC candidates per class). A rule
sees the pool through the judge (trained on the training split only): its features and its
class probabilities, each computed only when the rule asks, so ``random`` loads no judge.

Adding a rule is one function here (or in any module imported before the config is read)
under ``@selection("name")``; ``selection.kind`` and ``mdd.methods.composition_overrides``
accept every registered name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from mdd.baselines import (
    class_means,
    select_confident,
    select_herding,
    select_kcenter,
    select_random,
)


@dataclass(frozen=True)
class Pool:
    """What a selection picks from: class-labelled items, seen through the judge."""

    labels: torch.Tensor  # [n]
    features: Callable[[], torch.Tensor]  # the judge's features of the items [n, d]
    probabilities: Callable[[], torch.Tensor]  # its class probabilities [n, classes]
    # The training split, for a rule that matches the real images: its labels and the
    # judge's features of its images (the pool's own when the pool is the training split).
    real_labels: torch.Tensor
    real_features: Callable[[], torch.Tensor]
    seed: int  # a random rule's draw (the set's seed, ``Config.set_seed``)


Rule = Callable[[Pool, int], torch.Tensor]  # (pool, IPC) -> indices of the kept items
SELECTIONS: dict[str, Rule] = {}
# Rules that keep the whole pool whatever the IPC: a real-image method, not a selection of
# candidates (the set would be ``oversample`` x IPC).
WHOLE_POOL = ("full",)
# Rules that never look through the judge: a run of them plans no judge stage.
UNJUDGED: set[str] = set()


def selection(name: str, judged: bool = True) -> Callable[[Rule], Rule]:
    """Register ``rule`` under ``name`` (a ``selection.kind``); ``judged=False`` says it
    reads neither the pool's features nor its probabilities."""

    def register(rule: Rule) -> Rule:
        if name in SELECTIONS:
            raise ValueError(f"selection {name!r} is registered twice")
        SELECTIONS[name] = rule
        if not judged:
            UNJUDGED.add(name)
        return rule

    return register


def looks_through_the_judge(name: str) -> bool:
    """Whether the rule ``name`` reads the pool's features or probabilities."""
    return name not in UNJUDGED


def candidate_selections() -> list[str]:
    """The names ``selection.kind`` accepts: every rule that keeps IPC per class."""
    return [name for name in SELECTIONS if name not in WHOLE_POOL]


@selection("random", judged=False)
def _random(pool: Pool, ipc: int) -> torch.Tensor:
    return select_random(pool.labels, ipc, pool.seed)


@selection("herding")
def _herding(pool: Pool, ipc: int) -> torch.Tensor:
    return select_herding(pool.features(), pool.labels, ipc)


@selection("real-herding")
def _real_herding(pool: Pool, ipc: int) -> torch.Tensor:
    # The pool's own mean is what the sampler made; the training split's is what the set
    # should stand for (herding real images at IPC 1 keeps the one nearest that mean).
    num_classes = int(max(pool.real_labels.max(), pool.labels.max())) + 1
    means = class_means(pool.real_features(), pool.real_labels, num_classes)
    return select_herding(pool.features(), pool.labels, ipc, means)


@selection("kcenter")
def _kcenter(pool: Pool, ipc: int) -> torch.Tensor:
    return select_kcenter(pool.features(), pool.labels, ipc)


@selection("confidence")
def _confidence(pool: Pool, ipc: int) -> torch.Tensor:
    return select_confident(pool.probabilities(), pool.labels, ipc)


@selection("full", judged=False)
def _full(pool: Pool, ipc: int) -> torch.Tensor:
    return torch.arange(len(pool.labels))
