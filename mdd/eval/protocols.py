"""Evaluation protocol presets (METHOD.md section 5): how a fresh network is trained and tested.

A protocol is plain values. ``resolve_protocol`` picks a preset by name, fills in what
depends on the IPC (the IDC epochs) and applies the ``eval`` section's overrides.

- ``dc``: the DC/DSA Fashion-MNIST protocol; last-epoch accuracy is the number to report,
  and as in the DC code the networks are tested once, after the last epoch.
- ``idc``: the IDC ImageWoof protocol used by the paper; it reports the best accuracy
  over training (evaluated every 1/100 of it), report both.
- ``proxy``: a short DC-like protocol for sweeps, meant to be evaluated on the validation
  split (``eval_split``), with evaluations every 1/10 of training so a pruner can act.
  Sized for about a minute on 2 CPU cores at IPC 10 on 28 px (200 epochs of 100 images,
  10 evaluations of the validation split).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from mdd.config import EvalConfig
from mdd.errors import ConfigError

FASHION_MNIST_MEAN = (0.2861,)
FASHION_MNIST_STD = (0.3530,)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Protocol:
    name: str
    epochs: int
    batch_size: int
    lr: float
    momentum: float
    weight_decay: float
    lr_decay: float  # the factor applied at each milestone
    # Milestones as fractions (numerator, denominator) of the epochs, computed in integers
    # exactly as the reference code does (IDC: ``2 * epochs // 3``, ``5 * epochs // 6``).
    milestone_fractions: tuple[tuple[int, int], ...]
    augmentation: Literal["dsa", "idc", "none"]
    mean: tuple[float, ...]  # per-channel normalisation of [0, 1] images
    std: tuple[float, ...]
    evaluations: int  # test-set evaluations spread over training (the last one at the end)
    eval_split: Literal["test", "val"]  # which split the caller should evaluate on
    dsa_strategy: str = "color_crop_cutout_flip_scale_rotate"
    dsa_per_sample: bool = False  # True: per-image DSA draws, as the DSA code evaluates
    cutmix_beta: float = 1.0  # used by the idc augmentation
    image_size: int | None = None  # the resolution the protocol expects; None: any

    @property
    def eval_every(self) -> int:
        return max(1, self.epochs // self.evaluations)


def lr_milestones(protocol: Protocol) -> list[int]:
    """Epochs after which the learning rate is multiplied by ``lr_decay``."""
    return [protocol.epochs * num // den for num, den in protocol.milestone_fractions]


def idc_epochs(ipc: int) -> int:
    """IDC's training length by images per class (METHOD.md section 5)."""
    if ipc <= 10:
        return 2000
    if ipc <= 50:
        return 1500
    return 1000


def _dc(ipc: int) -> Protocol:
    return Protocol(
        name="dc",
        epochs=1000,
        batch_size=256,
        lr=0.01,
        momentum=0.9,
        weight_decay=5e-4,
        lr_decay=0.1,
        milestone_fractions=((1, 2),),
        augmentation="dsa",
        mean=FASHION_MNIST_MEAN,
        std=FASHION_MNIST_STD,
        evaluations=1,  # DC's evaluate_synset tests after the last epoch only
        eval_split="test",
    )


def _idc(ipc: int) -> Protocol:
    return Protocol(
        name="idc",
        epochs=idc_epochs(ipc),
        batch_size=64,
        lr=0.01,
        momentum=0.9,
        weight_decay=5e-4,
        lr_decay=0.2,
        milestone_fractions=((2, 3), (5, 6)),
        augmentation="idc",
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        evaluations=100,
        eval_split="test",
        image_size=224,
    )


def _proxy(ipc: int) -> Protocol:
    return dataclasses.replace(_dc(ipc), name="proxy", epochs=200, evaluations=10, eval_split="val")


PROTOCOLS: dict[str, Callable[[int], Protocol]] = {"dc": _dc, "idc": _idc, "proxy": _proxy}
OVERRIDABLE = ("epochs", "batch_size", "lr", "evaluations", "eval_split")


def given_overrides(overrides: dict[str, object] | None, what: str) -> dict[str, object]:
    """The non-None ``eval`` overrides of ``what`` (a protocol), refused unless overridable."""
    given = {key: value for key, value in (overrides or {}).items() if value is not None}
    unknown = sorted(set(given) - set(OVERRIDABLE))
    if unknown:
        raise ConfigError(
            f"eval: cannot override {', '.join(unknown)} of {what}. "
            f"Hint: only {', '.join(OVERRIDABLE)} can be set."
        )
    return given


# Every protocol normalises a dataset by that dataset's statistics (as the DC and IDC code
# do), whichever preset supplies the optimiser and augmentation.
NORMALISATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "fashion_mnist": (FASHION_MNIST_MEAN, FASHION_MNIST_STD),
    "imagenet_subset": (IMAGENET_MEAN, IMAGENET_STD),
}


def resolve_protocol(name: str, ipc: int, overrides: dict[str, Any] | None = None) -> Protocol:
    """The preset ``name`` for ``ipc`` images per class, with non-None overrides applied.

    ``overrides`` takes the ``eval`` section's ``epochs``, ``batch_size``, ``lr``,
    ``evaluations`` and ``eval_split``.
    """
    if name not in PROTOCOLS:
        raise ConfigError(
            f"eval.protocol: unknown protocol {name!r}. Hint: use one of {', '.join(PROTOCOLS)}."
        )
    if ipc < 1:
        raise ConfigError(f"sample.ipc: {ipc} images per class. Hint: use at least 1.")
    given = given_overrides(overrides, "a protocol")
    return dataclasses.replace(PROTOCOLS[name](ipc), **given)


def eval_overrides(settings: EvalConfig) -> dict[str, Any]:
    """The ``eval`` section's values that override a protocol's (None: the preset's)."""
    return {
        "epochs": settings.epochs,
        "batch_size": settings.batch_size,
        "lr": settings.lr,
        "evaluations": settings.evaluations,
        "eval_split": settings.split,
    }


def evaluation_image_size(protocol: str, ipc: int) -> int | None:
    """The resolution protocol ``protocol`` trains at for ``ipc`` (None: the set's own)."""
    if protocol not in PROTOCOLS:
        return None  # the soft-label protocol (mdd.eval.softlabel) takes any size
    return resolve_protocol(protocol, ipc).image_size


def protocol_for(settings: EvalConfig, dataset: str, ipc: int) -> Protocol:
    """The protocol of a run: its preset, its ``eval`` overrides, its dataset's normalisation."""
    protocol = resolve_protocol(settings.protocol, ipc, eval_overrides(settings))
    mean, std = NORMALISATION[dataset]
    return dataclasses.replace(protocol, mean=mean, std=std)
