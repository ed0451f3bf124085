"""Training-time augmentation of evaluation networks (METHOD.md section 5), as batched tensor ops.

Two families:

- DSA (Zhao & Bilen 2021; ``DiffAugment``/``ParamDiffAug`` of VICO-UoE/DatasetCondensation
  utils.py), the Fashion-MNIST protocol: of the strategy's transforms, ONE is picked at
  random for the batch (ParamDiffAug's single mode 'S') and applied with ONE random
  draw of its parameters shared by the whole batch (``per_sample=False``, the batch mode
  the issue asks for). ``per_sample=True`` draws the parameters per image instead, which
  is what the DSA code does when it evaluates (``seed=-1``). Applied to normalised images.
- IDC's ImageNet augmentation (snu-mllab/Efficient-Dataset-Condensation data.py,
  misc/utils.py): RandomResizedCrop(scale 0.5-1), horizontal flip, colour jitter 0.4,
  PCA lighting noise 0.1, all per image and applied to [0, 1] images; then CutMix
  (beta 1) on the normalised batch.

All randomness comes from CPU ``torch.Generator``s, so a seed reproduces the augmentation
exactly on any device. A batch may be made of R equal parts, the batches of R networks
trained together (``mdd/eval/train.py``): ``Draws`` gives each part its own generator and
draws for it in the order a lone run with that generator would, so the R networks see the
augmentations of R independent runs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from mdd.errors import ConfigError

DSA_STRATEGY = "color_crop_cutout_flip_scale_rotate"

# ParamDiffAug's constants.
DSA_FLIP_PROB = 0.5
DSA_SCALE_RATIO = 1.2
DSA_ROTATE_DEG = 15.0
DSA_CROP_PAD_RATIO = 0.125
DSA_CUTOUT_RATIO = 0.5
DSA_BRIGHTNESS = 1.0
DSA_SATURATION = 2.0
DSA_CONTRAST = 0.5

# IDC's ImageNet augmentation constants (AlexNet PCA lighting on ImageNet RGB).
RRC_SCALE = (0.5, 1.0)
RRC_RATIO = (3.0 / 4.0, 4.0 / 3.0)
JITTER = 0.4
LIGHTING_STD = 0.1
IMAGENET_EIGVAL = (0.2175, 0.0188, 0.0045)
IMAGENET_EIGVEC = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)


class Draws:
    """The random draws of a batch made of ``len(generators)`` equal parts, one per generator.

    Every method returns the parts' draws concatenated along the batch dimension; part r
    draws only from ``generators[r]``, so a part gets exactly what a batch of its own would
    get from that generator. One generator is the ordinary, unbatched case.
    """

    def __init__(self, generators: Sequence[torch.Generator]) -> None:
        self.generators = list(generators)

    @property
    def parts(self) -> int:
        return len(self.generators)

    def _part(self, batch: int) -> int:
        if batch % self.parts:
            raise ValueError(f"a batch of {batch} images is not {self.parts} equal parts")
        return batch // self.parts

    def rand(self, batch: int, *shape: int, per_sample: bool = True) -> torch.Tensor:
        """U(0, 1) of shape [batch, *shape]: per image, or one draw shared by each part."""
        part = self._part(batch)
        n = part if per_sample else 1
        return torch.cat(
            [torch.rand(n, *shape, generator=g).expand(part, *shape) for g in self.generators]
        )

    def randn(self, batch: int, *shape: int) -> torch.Tensor:
        """N(0, 1) of shape [batch, *shape], per image."""
        part = self._part(batch)
        return torch.cat([torch.randn(part, *shape, generator=g) for g in self.generators])

    def randint(self, high: int) -> list[int]:
        """One integer in [0, high) per part."""
        return [int(torch.randint(high, (1,), generator=g)) for g in self.generators]

    def subset(self, parts: Sequence[int]) -> Draws:
        return Draws([self.generators[r] for r in parts])


RandomSource = torch.Generator | Draws


def as_draws(source: RandomSource) -> Draws:
    return source if isinstance(source, Draws) else Draws([source])


def _draws(x: torch.Tensor, g: Draws, per_sample: bool) -> torch.Tensor:
    """U(0, 1) per image, or one value repeated over each part of the batch."""
    return g.rand(x.shape[0], per_sample=per_sample).to(x.device, x.dtype)


def _affine(x: torch.Tensor, theta: torch.Tensor, padding_mode: str = "zeros") -> torch.Tensor:
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, padding_mode=padding_mode, align_corners=False)


def _dsa_scale(x: torch.Tensor, g: Draws, per_sample: bool) -> torch.Tensor:
    ratio = DSA_SCALE_RATIO
    sx = _draws(x, g, per_sample) * (ratio - 1.0 / ratio) + 1.0 / ratio
    sy = _draws(x, g, per_sample) * (ratio - 1.0 / ratio) + 1.0 / ratio
    theta = torch.zeros(x.shape[0], 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0], theta[:, 1, 1] = sx, sy
    return _affine(x, theta)


def _dsa_rotate(x: torch.Tensor, g: Draws, per_sample: bool) -> torch.Tensor:
    angle = (_draws(x, g, per_sample) - 0.5) * 2 * DSA_ROTATE_DEG / 180 * math.pi
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.zeros(x.shape[0], 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0], theta[:, 0, 1] = cos, -sin
    theta[:, 1, 0], theta[:, 1, 1] = sin, cos
    return _affine(x, theta)


def _dsa_flip(x: torch.Tensor, g: Draws, per_sample: bool) -> torch.Tensor:
    flip = _draws(x, g, per_sample) < DSA_FLIP_PROB
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def _dsa_color(x: torch.Tensor, g: Draws, per_sample: bool) -> torch.Tensor:
    # DSA's 'color' is brightness, then saturation, then contrast, each with its own draw.
    x = x + (_draws(x, g, per_sample)[:, None, None, None] - 0.5) * DSA_BRIGHTNESS
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * (_draws(x, g, per_sample)[:, None, None, None] * DSA_SATURATION) + mean
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (_draws(x, g, per_sample)[:, None, None, None] + DSA_CONTRAST) + mean


def _randint(x: torch.Tensor, g: Draws, per_sample: bool, low: int, high: int) -> torch.Tensor:
    """Integers in [low, high), per image or shared."""
    return low + (_draws(x, g, per_sample) * (high - low)).long().clamp_(max=high - low - 1)


def _dsa_crop(x: torch.Tensor, g: Draws, per_sample: bool) -> torch.Tensor:
    # A translation by up to 1/8 of the side with zero fill (DSA pads by one zero pixel and
    # clamps the shifted indices into that border).
    b, _, h, w = x.shape
    shift_h, shift_w = int(h * DSA_CROP_PAD_RATIO + 0.5), int(w * DSA_CROP_PAD_RATIO + 0.5)
    dy = _randint(x, g, per_sample, -shift_h, shift_h + 1)
    dx = _randint(x, g, per_sample, -shift_w, shift_w + 1)
    rows = (torch.arange(h, device=x.device)[None, :] + dy[:, None] + 1).clamp_(0, h + 1)
    cols = (torch.arange(w, device=x.device)[None, :] + dx[:, None] + 1).clamp_(0, w + 1)
    padded = F.pad(x, (1, 1, 1, 1))
    batch = torch.arange(b, device=x.device)[:, None, None]
    # Advanced indices around a slice put their dims first: [B, H, W, C].
    return padded[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def _dsa_cutout(x: torch.Tensor, g: Draws, per_sample: bool) -> torch.Tensor:
    _, _, h, w = x.shape
    size_h, size_w = int(h * DSA_CUTOUT_RATIO + 0.5), int(w * DSA_CUTOUT_RATIO + 0.5)
    top = _randint(x, g, per_sample, 0, h + (1 - size_h % 2)) - size_h // 2
    left = _randint(x, g, per_sample, 0, w + (1 - size_w % 2)) - size_w // 2
    r = torch.arange(h, device=x.device)[None, :]
    c = torch.arange(w, device=x.device)[None, :]
    in_rows = (r >= top[:, None]) & (r < top[:, None] + size_h)
    in_cols = (c >= left[:, None]) & (c < left[:, None] + size_w)
    keep = ~(in_rows[:, :, None] & in_cols[:, None, :])
    return x * keep[:, None].to(x.dtype)


DSA_TRANSFORMS = {
    "color": _dsa_color,
    "crop": _dsa_crop,
    "cutout": _dsa_cutout,
    "flip": _dsa_flip,
    "scale": _dsa_scale,
    "rotate": _dsa_rotate,
}


def parse_dsa_strategy(strategy: str) -> list[str]:
    """The transform names of an underscore-joined DSA strategy, checked."""
    names = [name for name in strategy.split("_") if name]
    unknown = [name for name in names if name not in DSA_TRANSFORMS]
    if not names or unknown:
        raise ConfigError(
            f"DSA strategy {strategy!r}: unknown transform(s) {unknown or '(none given)'}. "
            f"Hint: join names from {', '.join(DSA_TRANSFORMS)} with '_'."
        )
    return names


def dsa_augment(
    x: torch.Tensor,
    source: RandomSource,
    strategy: str = DSA_STRATEGY,
    per_sample: bool = False,
) -> torch.Tensor:
    """One DSA transform of ``strategy``, picked at random per part, applied to ``x``."""
    names = parse_dsa_strategy(strategy)
    draws = as_draws(source)
    picks = draws.randint(len(names))
    if len(set(picks)) == 1:
        return DSA_TRANSFORMS[names[picks[0]]](x, draws, per_sample).contiguous()
    # Parts that picked different transforms: one call per transform over its parts.
    parts = x.view(draws.parts, -1, *x.shape[1:])
    out = torch.empty_like(parts)
    for pick in sorted(set(picks)):
        chosen = [r for r, p in enumerate(picks) if p == pick]
        rows = parts[chosen].flatten(0, 1)
        done = DSA_TRANSFORMS[names[pick]](rows, draws.subset(chosen), per_sample)
        out[chosen] = done.view(len(chosen), -1, *x.shape[1:])
    return out.view_as(x)


def random_resized_crop(
    x: torch.Tensor,
    source: RandomSource,
    scale: tuple[float, float] = RRC_SCALE,
    attempts: int = 10,
) -> torch.Tensor:
    """torchvision's RandomResizedCrop(size, scale) per image, as one grid_sample.

    As torchvision, try ``attempts`` boxes per image and keep the first that fits; images
    with none fall back to the whole image. Output keeps the input size.
    """
    g = as_draws(source)
    b, _, h, w = x.shape
    area = h * w * (scale[0] + (scale[1] - scale[0]) * g.rand(b, attempts))
    log_lo, log_hi = math.log(RRC_RATIO[0]), math.log(RRC_RATIO[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * g.rand(b, attempts))
    crop_w = torch.sqrt(area * aspect).round()
    crop_h = torch.sqrt(area / aspect).round()
    fits = (crop_w >= 1) & (crop_w <= w) & (crop_h >= 1) & (crop_h <= h)
    first = fits.float().argmax(dim=1)  # first fitting attempt (0 when none fits)
    any_fit = fits.any(dim=1)
    rows = torch.arange(b)
    crop_w = torch.where(any_fit, crop_w[rows, first], torch.tensor(float(w)))
    crop_h = torch.where(any_fit, crop_h[rows, first], torch.tensor(float(h)))
    top = (g.rand(b) * (h - crop_h + 1)).floor().clamp(max=h - crop_h)
    left = (g.rand(b) * (w - crop_w + 1)).floor().clamp(max=w - crop_w)
    # Map the output's normalised coordinates onto the crop box (align_corners=False).
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = crop_w / w
    theta[:, 0, 2] = (2 * left + crop_w) / w - 1
    theta[:, 1, 1] = crop_h / h
    theta[:, 1, 2] = (2 * top + crop_h) / h - 1
    # Upsampling a crop that touches the image edge samples up to half a pixel beyond it;
    # border padding repeats the edge there, as torchvision's resize does, instead of
    # blending in black (DSA's own warps keep zero padding).
    return _affine(x, theta.to(device=x.device, dtype=x.dtype), padding_mode="border")


def _grayscale(x: torch.Tensor) -> torch.Tensor:
    weights = torch.tensor([0.299, 0.587, 0.114], device=x.device, dtype=x.dtype)
    return (x * weights[:, None, None]).sum(dim=1, keepdim=True)


def _color_jitter(x: torch.Tensor, g: Draws) -> torch.Tensor:
    """IDC's ColorJitter: brightness, contrast and saturation lerps with factors in
    [-0.4, 0.4], in a random order per image."""
    b = x.shape[0]
    alphas = ((g.rand(b, 3) * 2 - 1) * JITTER).to(x.device, x.dtype)
    order = torch.argsort(g.rand(b, 3), dim=1).to(x.device)
    for position in range(3):
        # An op whose factor is masked to 0 is the identity, so each position applies the
        # op that image drew there and leaves the other two out.
        a = alphas * (order[:, position, None] == torch.arange(3, device=x.device)).to(x.dtype)
        x = x * (1 - a[:, 0, None, None, None])  # brightness: towards black
        gray_mean = _grayscale(x).mean(dim=(1, 2, 3), keepdim=True)
        x = x + a[:, 1, None, None, None] * (gray_mean - x)  # contrast
        x = x + a[:, 2, None, None, None] * (_grayscale(x) - x)  # saturation
    return x


def _lighting(x: torch.Tensor, g: Draws) -> torch.Tensor:
    """AlexNet-style PCA lighting noise with ImageNet's RGB eigenvalues/vectors."""
    alpha = g.randn(x.shape[0], 3) * LIGHTING_STD
    eigvec = torch.tensor(IMAGENET_EIGVEC)
    rgb = (eigvec[None] * (alpha * torch.tensor(IMAGENET_EIGVAL))[:, None, :]).sum(dim=2)
    return x + rgb.to(x.device, x.dtype)[:, :, None, None]


def idc_augment(x: torch.Tensor, source: RandomSource) -> torch.Tensor:
    """IDC's ImageNet training augmentation of [0, 1] RGB images [B, 3, H, W], per image:
    RandomResizedCrop(scale 0.5-1) to the same size, flip, colour jitter, lighting."""
    if x.shape[1] != 3:
        raise ConfigError(
            f"the idc augmentation needs RGB images, got {x.shape[1]} channel(s). "
            "Hint: use eval.protocol=dc (DSA) for grayscale data."
        )
    draws = as_draws(source)
    x = random_resized_crop(x, draws)
    flip = draws.rand(x.shape[0]).to(x.device) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    return _lighting(_color_jitter(x, draws), draws)


def cutmix(
    x: torch.Tensor, labels: torch.Tensor, source: RandomSource, beta: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """CutMix as in IDC's training loop: paste one box of a shuffled batch into the batch.

    Each part of the batch draws its own box and shuffles only its own images. Returns the
    mixed images, the labels of the pasted images and, per part, the share of each image
    that kept its own label (float64 [parts]; the loss is ``r * CE(y) + (1 - r) *
    CE(y_pasted)``).
    """
    draws = as_draws(source)
    _, _, h, w = x.shape
    b = x.shape[0] // draws.parts
    mixed, pasted = x.clone(), labels.clone()
    kept = torch.empty(draws.parts, dtype=torch.float64)
    for r, g in enumerate(draws.generators):  # a few parts (repeats), never images
        # torch has no seeded Beta sampler; numpy's, seeded from the generator, keeps one seed.
        seed = int(torch.randint(2**62, (1,), generator=g))
        lam = float(np.random.default_rng(seed).beta(beta, beta))
        perm = torch.randperm(b, generator=g).to(x.device) + r * b
        cut = math.sqrt(1.0 - lam)
        cut_h, cut_w = int(h * cut), int(w * cut)
        cy = int(torch.randint(h, (1,), generator=g))
        cx = int(torch.randint(w, (1,), generator=g))
        top, bottom = min(max(cy - cut_h // 2, 0), h), min(max(cy + cut_h // 2, 0), h)
        left, right = min(max(cx - cut_w // 2, 0), w), min(max(cx + cut_w // 2, 0), w)
        rows = slice(r * b, (r + 1) * b)
        mixed[rows, :, top:bottom, left:right] = x[perm, :, top:bottom, left:right]
        pasted[rows] = labels[perm]
        kept[r] = 1.0 - (bottom - top) * (right - left) / (h * w)
    return mixed, pasted, kept
