"""One run on several processes (``torchrun``): the world a process belongs to, and the few
collective operations the fine-tune and the sampling need.

``torchrun --nproc_per_node=N -m mdd.run CONFIG`` (or ``mdd-run CONFIG --nproc N``) starts N
processes with ``RANK``/``WORLD_SIZE`` in their environment. Rank 0 leads: it runs the
pipeline, holds every stage's cache claim and every MLflow run. The other ranks follow
(``mdd.pipeline.follow``): they load the same data and base, and join the stages that are split over
the world, the fine-tune (each rank one shard of the global batch, gradients averaged as
DDP does) and the sampling (each rank a shard of the classes).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist


def share(items: int, index: int, parts: int) -> slice:
    """Part ``index`` of ``items`` cut into ``parts`` contiguous parts: the first
    ``items % parts`` take one more, so every item has one part."""
    base, extra = divmod(items, parts)
    start = index * base + min(index, extra)
    return slice(start, start + base + (index < extra))


@dataclass(frozen=True)
class World:
    """This process's place among the run's processes; ``World()`` is a run on its own."""

    rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def split(self) -> bool:
        return self.size > 1

    def shard(self, items: int) -> slice:
        """This rank's contiguous part of ``items`` (a global batch, a list of classes)."""
        return share(items, self.rank, self.size)

    def average_gradients(self, tensors: Iterable[torch.Tensor]) -> None:
        """Every tensor's ``.grad`` replaced by its mean over the ranks, in one all-reduce
        (what DDP's bucketed all-reduce does, on the fine-tune's own parameter dict)."""
        if not self.split:
            return
        grads = [t.grad for t in tensors if t.grad is not None]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.size
        offset = 0
        for grad in grads:
            grad.copy_(flat[offset : offset + grad.numel()].view_as(grad))
            offset += grad.numel()

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        """Scalars averaged over the ranks (the metrics rank 0 logs of a split batch)."""
        if not self.split:
            return values
        names = sorted(values)
        flat = torch.tensor([float(values[n]) for n in names], dtype=torch.float64)
        dist.all_reduce(flat)
        return {n: float(v) / self.size for n, v in zip(names, flat, strict=True)}

    def mean_tensor(self, value: torch.Tensor) -> torch.Tensor:
        """A tensor averaged over the ranks (a copy; ``value`` itself alone)."""
        if not self.split:
            return value
        total = value.detach().clone()
        dist.all_reduce(total)
        return total / self.size

    def lead(self, task: str, *args: Any) -> None:
        """Rank 0 tells the followers (``mdd.pipeline.follow``) which split stage to join next."""
        if self.split:
            self.broadcast((task, args))

    def broadcast(self, value: Any = None) -> Any:
        """Rank 0's ``value`` on every rank (a picklable object)."""
        if not self.split:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value: Any) -> list[Any] | None:
        """Every rank's ``value`` in rank order on rank 0; None on the others."""
        if not self.split:
            return [value]
        found: list[Any] | None = [None] * self.size if self.main else None
        dist.gather_object(value, found, dst=0)
        return found

    def barrier(self) -> None:
        if self.split:
            dist.barrier()


ALONE = World()  # a run in one process


def join_world(timeout_s: float = 86400.0) -> World:
    """The world ``torchrun`` started this process in (``World()`` outside torchrun).

    CUDA ranks take the GPU of their ``LOCAL_RANK`` and talk over NCCL; CPU ranks over gloo
    (the tests run 2 CPU processes). The timeout is how long a rank waits for the others at
    a collective: the followers wait through every stage rank 0 runs alone (an evaluation of
    hours on ImageWoof), and torchrun stops the whole world when one process dies.
    """
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return ALONE
    rank = int(os.environ["RANK"])
    if not dist.is_initialized():
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(seconds=timeout_s))
    return World(rank, size)


def leave_world() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
