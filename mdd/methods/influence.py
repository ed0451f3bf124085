"""Influence guidance (IGD, Chen et al., ICLR 2025): steer sampling toward images whose
training gradient agrees with the real data's, and away from what the class already holds.

A surrogate classifier is trained on the real training split and its parameters kept at a
few epochs of its training (the *trajectory*, K checkpoints). For each checkpoint k and
class c, ``real[k, c]`` is the mean cross-entropy gradient (all parameters, flattened) of
the first ``real_per_class`` training images of c. For a sample x_t of class c with
predicted clean latent x0_hat(x_t) (through the guided model) and decoded image D(x0_hat):

    L(x_t) = 1/K sum_k (1 - cos(grad_theta_k CE(f_theta_k(D(x0_hat)), c), real[k, c]))

In the steps whose respaced index lies in the window [low, high] (IGD: 30 to 45 of 49..0),
after the DDPM step x_{t-1} = mu + sigma_t z (IGD's code, ``p_sample``):

    rho_t   = 0.0015 * rms(eps_hat) * sqrt(1 - abar_t) / rms(grad_{x_t} L)   (per sample)
    x_{t-1} = x_{t-1} - deviation * grad_{x_t} cos(x_t, m*) - weight * rho_t * grad_{x_t} L

where m* is the latent most cosine-similar to x_t among the class's earlier samples (their
final latents, a FIFO memory of ``memory_size``; no term for a class's first sample).
IGD generates one image at a time; here each batch holds one image of every class (a
*round*), so a sample's memory holds the earlier rounds of its class exactly as there, and
the result does not depend on ``sample.batch_size``. IGD's defaults on ImageWoof: weight
(``gm-scale``) 5 and deviation 50 on DiT, 10 and 50 on Minimax at IPC 10.

The surrogate here is the dataset's judge network (ConvNet-3 on Fashion-MNIST, ResNetAP-10
on ImageNet subsets; IGD trains a ConvNet-6 for 50 epochs) trained with the judge's
protocol and seed for ``max(checkpoints)`` epochs on the training split only, cached.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from mdd.cache import computed_once, digest, save_tensors_atomically
from mdd.config import InfluenceGuidanceConfig, JudgeSpec
from mdd.data import DatasetSplits
from mdd.data.load import resize_images
from mdd.diffusion.sampling import StepState
from mdd.errors import DataError
from mdd.eval.judge import JUDGE_NETWORKS, JUDGE_SEED, judge_network, judge_protocol
from mdd.eval.protocols import Protocol
from mdd.eval.train import train_trajectory

RHO_SCALE = 0.0015  # IGD's constant in rho_t
COSINE_EPS = 1e-6


@dataclass(frozen=True)
class Trajectory:
    """The surrogate's checkpoints and each class's real gradient at each of them."""

    network: nn.Module  # the architecture; its own parameters are not used
    checkpoints: list[dict[str, Tensor]]
    real: Tensor  # [K, classes, P]
    protocol: Protocol  # normalisation and resolution the surrogate sees

    def inputs(self, images: Tensor) -> Tensor:
        """Decoded images in [-1, 1] -> the surrogate's normalised input (differentiable)."""
        x = (images + 1) / 2
        size = self.protocol.image_size
        if size is not None and x.shape[-1] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
        mean = torch.tensor(self.protocol.mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        std = torch.tensor(self.protocol.std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        return (x - mean) / std


def _loss(network: nn.Module) -> Callable[[dict[str, Tensor], Tensor, Tensor], Tensor]:
    def cross_entropy(params: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(functional_call(network, params, (x.unsqueeze(0),)), y.view(1))

    return cross_entropy


def _flat(gradients: dict[str, Tensor], names: list[str]) -> Tensor:
    return torch.cat([gradients[name].flatten(1) for name in names], dim=1)


def class_gradients(
    network: nn.Module,
    params: dict[str, Tensor],
    inputs: Tensor,
    labels: Tensor,
    classes: int,
    batch_size: int = 50,
) -> Tensor:
    """``[classes, P]``: each class's mean cross-entropy gradient over its ``inputs``, the
    mean of its batches' (of ``batch_size``, as IGD) mean-loss gradients."""
    names = list(params)

    def batch_loss(p: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(functional_call(network, p, (x,)), y)

    rows = []
    for c in range(classes):  # setup, once per checkpoint: a few dozen batches in all
        members = inputs[labels == c]
        if not len(members):
            raise DataError(f"influence guidance: class {c} has no real training image")
        target = torch.full((len(members),), c, dtype=torch.int64, device=inputs.device)
        batches = [
            grad(batch_loss)(params, x, y)
            for x, y in zip(members.split(batch_size), target.split(batch_size), strict=True)
        ]
        rows.append(torch.stack([_flat_one(g, names) for g in batches]).mean(dim=0))
    return torch.stack(rows)


def _flat_one(gradients: dict[str, Tensor], names: list[str]) -> Tensor:
    return torch.cat([gradients[name].flatten() for name in names])


def influence_loss(trajectory: Trajectory, images: Tensor, labels: Tensor) -> Tensor:
    """``[n]``: 1/K sum_k (1 - cos(g_k(image_i), real[k, label_i])), differentiable in images."""
    inputs = trajectory.inputs(images)
    per_sample = vmap(grad(_loss(trajectory.network)), in_dims=(None, 0, 0))
    terms = []
    for k, params in enumerate(trajectory.checkpoints):  # K checkpoints, a handful
        flat = _flat(per_sample(params, inputs, labels), list(params))
        real = trajectory.real[k].to(flat)[labels]
        terms.append(1 - F.cosine_similarity(flat, real, dim=1, eps=COSINE_EPS))
    return torch.stack(terms).mean(dim=0)


def deviation_gradient(x: Tensor, memory: Tensor) -> Tensor:
    """grad_x cos(x, m*) per row of ``x`` ``[n, ...]``, m* its most cosine-similar row of
    ``memory`` ``[n, M, ...]`` (rows of NaN are empty slots; all empty: 0)."""
    flat, bank = x.flatten(1), memory.flatten(2)
    filled = ~bank.isnan().any(dim=2)  # [n, M]
    unit_x = F.normalize(flat, dim=1)
    unit_bank = F.normalize(bank.nan_to_num(0.0), dim=2)
    cosines = torch.einsum("nd,nmd->nm", unit_x, unit_bank).masked_fill(~filled, -2.0)
    best = cosines.argmax(dim=1)
    m = unit_bank[torch.arange(len(x)), best]
    cos = cosines[torch.arange(len(x)), best].unsqueeze(1)
    # d/dx (x . m / |x| |m|) = (m / |m| - cos x / |x|) / |x|
    norm = flat.norm(dim=1, keepdim=True).clamp(min=1e-12)
    gradient = (m - cos * unit_x) / norm
    return (gradient * filled.any(dim=1, keepdim=True)).view_as(x)


@dataclass
class InfluenceGuidance:
    """The IGD terms for one sampling call, whose batches are rounds (one item per class)."""

    trajectory: Trajectory
    decode: Callable[[Tensor], Tensor]  # latents -> images in [-1, 1], differentiable
    labels: Tensor  # the dataset labels of the call's items
    weight: float
    deviation: float
    window: tuple[int, int]  # respaced step indices (steps - 1 down to 0), both ends guided
    memory_size: int
    # [classes, memory_size, *latent]: each class's last final latents, oldest first, NaN
    # where a class has fewer; made at the first final step.
    memory: Tensor | None = None

    def active(self, index: int, steps: int) -> bool:
        low, high = self.window
        return low <= steps - 1 - index <= high

    def __call__(self, step: StepState) -> Tensor:
        x, labels = step.x_prev, self.labels[step.items]
        if len(labels.unique()) != len(labels):
            raise ValueError("influence guidance samples in rounds: one item per class a batch")
        if self.memory is None:
            classes = int(self.labels.max()) + 1
            self.memory = torch.full((classes, self.memory_size, *x.shape[1:]), float("nan"))
        if self.active(step.index, step.steps):
            bank = self.memory[labels.cpu()].to(x)
            x = x - self.deviation * deviation_gradient(step.x_t, bank)
            x = x - self.weight * self.influence_step(step, labels)
        if step.index == step.steps - 1:  # the final latents join their class's memory
            rows = labels.cpu()
            kept = self.memory[rows, 1:]
            self.memory[rows] = torch.cat([kept, x.detach().cpu().unsqueeze(1)], dim=1)
        return x

    def influence_step(self, step: StepState, labels: Tensor) -> Tensor:
        """rho_t * grad_{x_t} L, per sample."""
        with torch.inference_mode(False), torch.enable_grad():
            x_t = step.x_t.clone().requires_grad_()
            images = self.decode(step.predict_x0(x_t))
            loss = influence_loss(self.trajectory, images, labels.clone().to(x_t.device))
            (gradient,) = torch.autograd.grad(loss.sum(), x_t)
        return rho(step.eps, step.alpha_bar, gradient) * gradient


def rho(eps: Tensor, alpha_bar: float, gradient: Tensor) -> Tensor:
    """IGD's step size per sample: 0.0015 rms(eps) sqrt(1 - abar_t) / rms(gradient)."""

    def rms(t: Tensor) -> Tensor:
        return t.flatten(1).square().mean(dim=1).sqrt().view(-1, *[1] * (t.dim() - 1))

    return RHO_SCALE * rms(eps) * (1 - alpha_bar) ** 0.5 / rms(gradient).clamp(min=1e-12)


def trajectory_path(spec: JudgeSpec, cfg: InfluenceGuidanceConfig, fingerprint: str) -> Path:
    protocol = judge_protocol(spec)
    name = digest(
        fingerprint, JUDGE_NETWORKS[spec.dataset], protocol.image_size,
        list(cfg.checkpoints), cfg.real_per_class, JUDGE_SEED, "trajectory",
    )  # fmt: skip
    return spec.cache_dir / "influence" / f"{name}.safetensors"


def load_trajectory(
    data: DatasetSplits, spec: JudgeSpec, cfg: InfluenceGuidanceConfig, device: torch.device
) -> Trajectory:
    """The surrogate trajectory of the judge's dataset: from the cache, or trained on the
    training split once and cached (with its real gradients)."""
    protocol = judge_protocol(spec)
    network = judge_network(data, spec).to(device).eval()  # the judge's architecture
    path = trajectory_path(spec, cfg, data.fingerprint)

    def read() -> Trajectory:
        stored = load_file(str(path), device=str(device))
        checkpoints = [
            {k.split(".", 1)[1]: v for k, v in stored.items() if k.startswith(f"{i}.")}
            for i in range(len(cfg.checkpoints))
        ]
        return Trajectory(network, checkpoints, stored["real"], protocol)

    def compute() -> Trajectory:
        return _train_trajectory(network, data, spec, cfg, device, path)

    return computed_once(path, read, compute)


def _train_trajectory(
    network: nn.Module,
    data: DatasetSplits,
    spec: JudgeSpec,
    cfg: InfluenceGuidanceConfig,
    device: torch.device,
    path: Path,
) -> Trajectory:
    """Train the trajectory's checkpoints, take the real gradients at each, write ``path``."""
    protocol = judge_protocol(spec)
    train = data.train
    classes = len(data.class_names)
    size = protocol.image_size or train.images.shape[-1]
    checkpoints = train_trajectory(
        JUDGE_NETWORKS[spec.dataset],
        resize_images(train.images, size),
        train.labels,
        protocol=protocol,
        num_classes=classes,
        seed=JUDGE_SEED,
        device=device,
        epochs=cfg.checkpoints,
        progress=True,
    )
    checkpoints = [{k: v.to(device) for k, v in params.items()} for params in checkpoints]
    index = _first_of_each_class(train.labels, cfg.real_per_class)
    images = train.images[index].to(device).float().div(127.5).sub(1)  # as decoded: [-1, 1]
    labels = train.labels[index].to(device)
    trajectory = Trajectory(network, checkpoints, torch.empty(0), protocol)
    inputs = trajectory.inputs(images)
    real = torch.stack(
        [class_gradients(network, params, inputs, labels, classes) for params in checkpoints]
    )
    stored = {f"{i}.{k}": v for i, params in enumerate(checkpoints) for k, v in params.items()}
    save_tensors_atomically({**stored, "real": real}, path)
    return Trajectory(network, checkpoints, real, protocol)


def _first_of_each_class(labels: Tensor, per_class: int) -> Tensor:
    """The first ``per_class`` items of each class in split order (IGD takes file order)."""
    order = torch.argsort(labels, stable=True)
    rank = torch.arange(len(labels)) - torch.searchsorted(labels[order], labels[order])
    return order[rank < per_class]
