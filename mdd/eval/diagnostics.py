"""What a surrogate set looks like beside the real data, whatever its accuracy says.

The paper's two criteria aim at representativeness (images like the class's real ones)
and diversity (images unlike each other). These diagnostics measure both, and what
guards them (class consistency, memorisation), for any surrogate set, generated or
selected, in the judge's feature space (``mdd.eval.judge``) and in pixels:

- ``class_consistency``: share of images the judge assigns to their label;
- ``intra_cosine_features`` / ``intra_cosine_pixels``: mean cosine similarity between two
  different images of one class (lower = more diverse), averaged over classes;
- ``nearest_real_cosine``: each image's highest cosine similarity to a real reference
  image of its class, in judge features, averaged (higher = closer to the real data);
- ``precision``, ``recall``, ``density``, ``coverage``: Naeem et al. 2020 ("Reliable
  fidelity and diversity metrics for generative models", k = 5), per class against the
  class's real reference images, averaged over classes;
- ``nearest_train_cosine`` / ``nearest_test_cosine``: each image's highest pixel cosine
  similarity to any training / test image, averaged (1.0 = a copy: memorisation for
  train; leakage for test; a selected real set's nearest-train is 1 by construction);
- ``frechet_features``: Fréchet distance between Gaussians fitted to the set's and the
  real reference's judge features (biased upwards for small sets: compare equal sizes).

The real reference is up to ``REFERENCE_PER_CLASS`` validation images per class (see
``RealData``), drawn with a fixed seed, so two sets of one dataset are always compared
with the same images.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mdd.data import DatasetSplits
from mdd.data.load import resize_images
from mdd.data.splits import per_class_index
from mdd.eval.judge import Judge

REFERENCE_PER_CLASS = 500
PRDC_K = 5  # Naeem et al.'s default
PIXEL_CHUNK = 512  # real images compared at once: 300 MB of float32 at 224 px RGB


@dataclass(frozen=True)
class RealData:
    """The real images the diagnostics compare with (uint8, [n, c, h, w]).

    ``reference`` is what "real images of the class" means for representativeness: the
    validation split, which no selected set can contain (a set drawn from the training
    split would otherwise find itself there), or the training split when there is none.
    """

    reference_images: torch.Tensor
    reference_labels: torch.Tensor
    train_images: torch.Tensor
    test_images: torch.Tensor


def real_data(data: DatasetSplits) -> RealData:
    """The comparison images of a dataset: validation split as reference when it has one."""
    reference = data.val if len(data.val) > 0 else data.train
    return RealData(reference.images, reference.labels, data.train.images, data.test.images)


def _unit_rows(x: torch.Tensor, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    x = x.flatten(1).to(dtype)
    return x / x.norm(dim=1, keepdim=True).clamp(min=1e-12)


def intra_class_cosine(x: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean cosine similarity of distinct pairs within a class, averaged over classes
    with at least two items."""
    unit = _unit_rows(x)
    means = []
    for c in torch.unique(labels).tolist():
        members = unit[labels == c]
        n = len(members)
        if n < 2:
            continue
        similarity = members @ members.T
        means.append((similarity.sum() - similarity.diagonal().sum()) / (n * (n - 1)))
    return float(torch.stack(means).mean()) if means else float("nan")


def nearest_cosine(x: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """For each row of ``x``, the highest cosine similarity to any row of ``real``
    (compared ``PIXEL_CHUNK`` real rows at a time)."""
    unit = _unit_rows(x, torch.float32)
    best = torch.full((len(x),), -1.0)
    for chunk in real.split(PIXEL_CHUNK):
        best = torch.maximum(best, (unit @ _unit_rows(chunk, torch.float32).T).max(dim=1).values)
    return best.double()


def prdc(real: torch.Tensor, fake: torch.Tensor, k: int = PRDC_K) -> dict[str, float]:
    """Precision, recall, density and coverage of Naeem et al. 2020 (their Algorithm 1).

    A real item's k-NN radius is its distance to its k-th nearest other real item (so too
    for fake items, used by recall). With fewer than ``k + 1`` items on a side, k shrinks
    to what that side allows; recall is NaN for a single fake item.
    """
    real, fake = real.double(), fake.double()
    real_to_real = torch.cdist(real, real)
    real_to_fake = torch.cdist(real, fake)  # [n_real, n_fake]
    k_real = min(k, len(real) - 1)
    real_radius = real_to_real.kthvalue(k_real + 1, dim=1).values  # +1 skips the item itself
    inside = real_to_fake <= real_radius[:, None]  # real j's ball holds fake i
    precision = inside.any(dim=0).double().mean()
    density = inside.double().sum(dim=0).mean() / k_real
    coverage = (real_to_fake.min(dim=1).values <= real_radius).double().mean()
    if len(fake) < 2:
        recall = torch.tensor(float("nan"))
    else:
        k_fake = min(k, len(fake) - 1)
        fake_radius = torch.cdist(fake, fake).kthvalue(k_fake + 1, dim=1).values
        recall = (real_to_fake <= fake_radius[None, :]).any(dim=1).double().mean()
    return {
        "precision": float(precision),
        "recall": float(recall),
        "density": float(density),
        "coverage": float(coverage),
    }


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """``|mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a S_b)^1/2)`` of two feature sets.

    With centred data ``A`` [n_a, d] and ``B`` [n_b, d], ``S_a S_b`` has the nonzero
    eigenvalues of ``(A B^T)(A B^T)^T / ((n_a - 1)(n_b - 1))``, an n x n matrix for the
    smaller n: no d x d covariance is formed, which keeps this exact and fast for a
    100-image set in 2048 features.
    """
    a, b = a.double(), b.double()
    mean_term = (a.mean(dim=0) - b.mean(dim=0)).square().sum()
    centred_a, centred_b = a - a.mean(dim=0), b - b.mean(dim=0)
    scale_a, scale_b = len(a) - 1, len(b) - 1
    cross = centred_a @ centred_b.T  # [n_a, n_b]
    gram = cross @ cross.T if len(a) <= len(b) else cross.T @ cross
    values = torch.linalg.eigvalsh(gram / (scale_a * scale_b))
    # Beyond the rank (n > d) the eigenvalues are rounding noise, whose square roots add up.
    values = values.masked_fill(values < values.max() * 1e-12, 0.0)
    roots = values.sqrt().sum()
    traces = centred_a.square().sum() / scale_a + centred_b.square().sum() / scale_b
    return float(mean_term + traces - 2 * roots)


def diagnose(
    images: torch.Tensor, labels: torch.Tensor, judge: Judge, real: RealData
) -> dict[str, float]:
    """Every diagnostic of a surrogate set (uint8 ``images`` [n, c, h, w], ``labels`` [n])."""
    labels = labels.long()
    reference = per_class_index(real.reference_labels, REFERENCE_PER_CLASS)
    real_labels = real.reference_labels[reference].long()
    real_features = judge.features(real.reference_images[reference]).double()
    features = judge.features(images).double()

    nearest_real, per_class_prdc = [], []
    for c in torch.unique(labels).tolist():
        own, theirs = features[labels == c], real_features[real_labels == c]
        nearest_real.append(nearest_cosine(own, theirs))
        per_class_prdc.append(prdc(theirs, own))
    prdc_means = {
        key: float(torch.tensor([p[key] for p in per_class_prdc]).nanmean())
        for key in per_class_prdc[0]
    }
    if images.shape[1:] != real.train_images.shape[1:]:
        images = resize_images(images, real.train_images.shape[-1])
    pixels = images.float()
    return {
        "class_consistency": float((judge.predict(images) == labels).double().mean()),
        "intra_cosine_features": intra_class_cosine(features, labels),
        "intra_cosine_pixels": intra_class_cosine(pixels, labels),
        "nearest_real_cosine": float(torch.cat(nearest_real).mean()),
        **prdc_means,
        "nearest_train_cosine": float(nearest_cosine(pixels, real.train_images).mean()),
        "nearest_test_cosine": float(nearest_cosine(pixels, real.test_images).mean()),
        "frechet_features": frechet_distance(features, real_features),
    }
