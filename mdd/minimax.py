"""The paper's idea: the minimax criteria and the per-class memories they compare against.

METHOD.md section 2. At every fine-tuning step the model's predicted clean latents
``p = x0_hat`` (with gradient) are compared, class by class, with two FIFO memories of at
most M items per class, filled from earlier steps:

- representativeness ``L_r = lambda_r * (1 - min cos(p_i, real_j)) / K``: raise the
  smallest similarity to the real latents seen before;
- diversity ``L_d = lambda_d * max cos(p_i, pseudo_j) / K``: lower the largest similarity
  to the predictions made before;

summed over the K distinct classes of the batch, scored only for classes whose memory
already holds items. Then every class of the batch pushes its real latents and (detached)
predictions, the oldest items dropping out beyond M.

``MinimaxCriteria`` is the implementation used for training: preallocated ring buffers
and one batched similarity computation, no Python loop over items or classes.
``LoopMinimaxCriteria`` does it as the reference code does and is the readable definition.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class MinimaxTerms(NamedTuple):
    """The two criteria of one step, scalars already weighted by lambda and divided by K."""

    representativeness: Tensor
    diversity: Tensor


def _check_inputs(pred_x0: Tensor, real_x0: Tensor, labels: Tensor, num_classes: int) -> None:
    if pred_x0.shape != real_x0.shape:
        raise ValueError(
            f"pred_x0 {tuple(pred_x0.shape)} and real_x0 {tuple(real_x0.shape)} differ in shape"
        )
    if labels.shape != (pred_x0.shape[0],):
        raise ValueError(f"labels must have shape ({pred_x0.shape[0]},), got {tuple(labels.shape)}")
    if bool(((labels < 0) | (labels >= num_classes)).any()):
        raise ValueError(
            f"labels must lie in [0, {num_classes}); pass the class labels from before "
            "label dropout (the null class has no memory)"
        )


def _check_settings(num_classes: int, memory_size: int, lambda_r: float, lambda_d: float) -> None:
    if num_classes < 1 or memory_size < 1:
        raise ValueError(
            f"num_classes ({num_classes}) and memory_size ({memory_size}) must be at least 1"
        )
    if lambda_r < 0 or lambda_d < 0:
        raise ValueError(f"lambda_r ({lambda_r}) and lambda_d ({lambda_d}) must be >= 0")


class _Settings(nn.Module):
    """What both implementations hold: the sizes and the two weights; each defines ``reset``."""

    def __init__(self, num_classes: int, memory_size: int, lambda_r: float, lambda_d: float):
        super().__init__()
        _check_settings(num_classes, memory_size, lambda_r, lambda_d)
        self.num_classes = num_classes
        self.memory_size = memory_size
        self.lambda_r = lambda_r
        self.lambda_d = lambda_d
        self.reset()

    @property
    def enabled(self) -> bool:
        return self.lambda_r > 0 or self.lambda_d > 0


class MinimaxCriteria(_Settings):
    """The minimax criteria of METHOD.md section 2 over per-class ring-buffer memories.

    The memories are plain tensor attributes, not buffers or parameters: they are the
    state of one fine-tuning run's data stream, not part of the model, so they never
    appear in ``state_dict()`` (checkpoints hold weights only) and ``.to()`` / ``.half()``
    leave them alone. They are allocated on the first call, once the flattened size D
    is known (until then D is 0), on the device of ``pred_x0`` and in its dtype but at
    least float32, so that half-precision predictions get full-precision similarities:

    - ``real_memory``, ``pseudo_memory``: [num_classes, M, D] unit vectors. Only cosine
      similarities are ever taken of them, so each item is normalised once, when pushed;
    - ``memory_fill``: [num_classes] items held per class (real and pseudo are pushed
      together, so one count serves both);
    - ``write_slot``: [num_classes] the ring slot written next, the oldest item once full.

    With ``lambda_r == lambda_d == 0`` (the plain "dit" baseline) a call returns zeros and
    neither computes nor stores anything.
    """

    def reset(self) -> None:
        """Forget everything: the next call starts from empty memories."""
        self.real_memory = torch.empty(self.num_classes, self.memory_size, 0)
        self.pseudo_memory = torch.empty(self.num_classes, self.memory_size, 0)
        self.memory_fill = torch.zeros(self.num_classes, dtype=torch.long)
        self.write_slot = torch.zeros(self.num_classes, dtype=torch.long)

    def memory_of(self, class_index: int) -> tuple[Tensor, Tensor]:
        """The (real, pseudo) unit vectors held for one class, oldest first."""
        fill = int(self.memory_fill[class_index])
        start = int(self.write_slot[class_index]) - fill
        slots = torch.arange(start, start + fill, device=self.real_memory.device)
        slots = slots % self.memory_size
        return self.real_memory[class_index, slots], self.pseudo_memory[class_index, slots]

    def forward(self, pred_x0: Tensor, real_x0: Tensor, labels: Tensor) -> MinimaxTerms:
        """Score this batch against the memories of earlier steps, then push it.

        ``pred_x0`` keeps its gradient; ``real_x0`` is only stored. ``labels`` are the
        class indices in [0, num_classes), taken before label dropout.
        """
        if not self.enabled:
            zero = pred_x0.new_zeros(())
            return MinimaxTerms(zero, zero)
        _check_inputs(pred_x0, real_x0, labels, self.num_classes)
        self._allocate(pred_x0)
        pred = F.normalize(pred_x0.flatten(1).to(self.real_memory.dtype), dim=1)
        counts = torch.bincount(labels, minlength=self.num_classes)
        terms = self._criteria(pred, labels, counts)
        with torch.no_grad():
            real = F.normalize(real_x0.detach().flatten(1).to(pred.dtype), dim=1)
            self._push(real, pred.detach(), labels, counts)
        return terms

    def _allocate(self, pred_x0: Tensor) -> None:
        dim = pred_x0[0].numel()
        memory = self.real_memory
        if memory.shape[-1] != 0:
            if memory.shape[-1] != dim or memory.device != pred_x0.device:
                raise ValueError(
                    f"the memories hold items of size {memory.shape[-1]} on {memory.device}, "
                    f"got size {dim} on {pred_x0.device}; call reset() to start afresh"
                )
            return
        shape = (self.num_classes, self.memory_size, dim)
        dtype = torch.promote_types(pred_x0.dtype, torch.float32)
        self.real_memory = pred_x0.new_zeros(shape, dtype=dtype)
        self.pseudo_memory = pred_x0.new_zeros(shape, dtype=dtype)
        self.memory_fill = torch.zeros(self.num_classes, dtype=torch.long, device=pred_x0.device)
        self.write_slot = torch.zeros_like(self.memory_fill)

    def _criteria(self, pred: Tensor, labels: Tensor, counts: Tensor) -> MinimaxTerms:
        num_classes, size = self.num_classes, self.memory_size
        items = torch.arange(labels.numel(), device=pred.device)
        slots = torch.arange(size, device=pred.device)
        empty_slot = slots >= self.memory_fill[labels].unsqueeze(1)
        with torch.no_grad():
            # Which (item, slot) pair attains each class's min / max. A min or max passes
            # its gradient to that one element only, so only those cosines are recomputed
            # with gradient below. Scoring all slots in one matmul, without gradient, avoids
            # gathering memory[labels] (B x M x D copies kept for backward: 3.6x slower than
            # the reference loop at DiT-XL/2's D = 4096).
            shape = (-1, num_classes, size)
            real_sim = (pred @ self.real_memory.flatten(0, 1).T).view(shape)[items, labels]
            pseudo_sim = (pred @ self.pseudo_memory.flatten(0, 1).T).view(shape)[items, labels]
            item_min, slot_min = real_sim.masked_fill(empty_slot, float("inf")).min(dim=1)
            item_max, slot_max = pseudo_sim.masked_fill(empty_slot, float("-inf")).max(dim=1)
            # min over (i in P_c, j in real[c]) = min over the items i of class c of their minima.
            class_min = pred.new_full((num_classes,), float("inf"))
            class_min = class_min.scatter_reduce(0, labels, item_min, reduce="amin")
            class_max = pred.new_full((num_classes,), float("-inf"))
            class_max = class_max.scatter_reduce(0, labels, item_max, reduce="amax")
            arg_min = _item_attaining(item_min == class_min[labels], items, labels, num_classes)
            arg_max = _item_attaining(item_max == class_max[labels], items, labels, num_classes)
        # K counts every class of the batch, also those not scored yet (empty memory).
        num_present = (counts > 0).sum()
        scored = torch.nonzero((counts > 0) & (self.memory_fill > 0)).squeeze(1)
        i_min, i_max = arg_min[scored], arg_max[scored]
        min_cos = (pred[i_min] * self.real_memory[scored, slot_min[i_min]]).sum(dim=1)
        max_cos = (pred[i_max] * self.pseudo_memory[scored, slot_max[i_max]]).sum(dim=1)
        return MinimaxTerms(
            representativeness=self.lambda_r * (1.0 - min_cos).sum() / num_present,
            diversity=self.lambda_d * max_cos.sum() / num_present,
        )

    def _push(self, real: Tensor, pred: Tensor, labels: Tensor, counts: Tensor) -> None:
        size = self.memory_size
        # Rank of each item among the items of its class in this batch, in batch order.
        order = torch.argsort(labels, stable=True)
        class_start = torch.cumsum(counts, dim=0) - counts
        rank = torch.empty_like(labels)
        positions = torch.arange(labels.numel(), device=labels.device)
        rank[order] = positions - class_start[labels[order]]
        # FIFO: of more than M new items of a class only the last M survive.
        keep = rank >= counts[labels] - size
        slot = (self.write_slot[labels] + rank) % size
        self.real_memory[labels[keep], slot[keep]] = real[keep]
        self.pseudo_memory[labels[keep], slot[keep]] = pred[keep]
        self.write_slot = (self.write_slot + counts) % size
        self.memory_fill = torch.clamp(self.memory_fill + counts, max=size)


def _item_attaining(hit: Tensor, items: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """Per class, the (last) batch item whose value attains the class's extreme."""
    chosen = torch.where(hit, items, -1)
    return items.new_full((num_classes,), -1).scatter_reduce(0, labels, chosen, reduce="amax")


def _cosine_matrix(a: Tensor, b: Tensor) -> Tensor:
    """cos(a_i, b_j) for all rows, as the reference code computes it."""
    return (a @ b.T) / (a.norm(dim=1).unsqueeze(1) * b.norm(dim=1).unsqueeze(0))


class LoopMinimaxCriteria(_Settings):
    """The same criteria as the reference code computes them (METHOD.md section 2).

    Per-class Python lists of items, concatenated anew every step, and a loop over the
    classes of the batch. Kept as the readable definition and for the speed benchmark;
    same interface and numbers as ``MinimaxCriteria``.
    """

    def reset(self) -> None:
        """Forget everything: the next call starts from empty memories."""
        self.real_memory: dict[int, list[Tensor]] = {c: [] for c in range(self.num_classes)}
        self.pseudo_memory: dict[int, list[Tensor]] = {c: [] for c in range(self.num_classes)}

    def forward(self, pred_x0: Tensor, real_x0: Tensor, labels: Tensor) -> MinimaxTerms:
        """Score this batch against the memories of earlier steps, then push it."""
        representativeness = diversity = pred_x0.new_zeros(())
        if not self.enabled:
            return MinimaxTerms(representativeness, diversity)
        _check_inputs(pred_x0, real_x0, labels, self.num_classes)
        classes = sorted(set(labels.tolist()))
        num_present = len(classes)
        for c in classes:
            pred_c = pred_x0[labels == c].flatten(1)
            if self.pseudo_memory[c]:
                real_memory = torch.cat(self.real_memory[c])
                pseudo_memory = torch.cat(self.pseudo_memory[c])
                min_real = _cosine_matrix(pred_c, real_memory).min()
                max_pseudo = _cosine_matrix(pred_c, pseudo_memory).max()
                representativeness = (
                    representativeness + self.lambda_r * (1 - min_real) / num_present
                )
                diversity = diversity + self.lambda_d * max_pseudo / num_present
            real_c = real_x0[labels == c].detach().flatten(1).to(pred_c.dtype)
            self.real_memory[c].extend(real_c.split(1))
            self.pseudo_memory[c].extend(pred_c.detach().split(1))
            del self.real_memory[c][: -self.memory_size]
            del self.pseudo_memory[c][: -self.memory_size]
        return MinimaxTerms(representativeness, diversity)
