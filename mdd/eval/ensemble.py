"""R evaluation networks of one architecture trained as one computation.

``Ensemble`` holds the R networks' weights stacked along a new first dimension and runs
them with ``torch.func.vmap`` over ``functional_call``: one forward and one backward for
all R, where every network sees only its own part of the batch. The optimiser steps the
stacked tensors; SGD with momentum and weight decay acts on each element alone, so every
network follows the trajectory it would follow alone (the test in tests/test_ensemble.py
trains both ways and compares the weights).

With one network it is a thin wrapper that calls the module directly, so the unbatched
path runs exactly the arithmetic of a lone ``nn.Module``.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap


class Ensemble:
    """Networks ``nets`` (same architecture, own weights) behind one forward over R parts."""

    def __init__(self, nets: list[nn.Module]) -> None:
        self.nets = nets
        if len(nets) == 1:
            self.params = list(nets[0].parameters())
            return
        # Stacked copies; ``sync`` writes them back into ``nets`` for testing and returning.
        self.stacked_params, self.stacked_buffers = stack_module_state(nets)
        self.params = list(self.stacked_params.values())
        self.template = copy.deepcopy(nets[0]).to("meta")

        def one(params: dict, buffers: dict, x: torch.Tensor) -> torch.Tensor:
            return functional_call(self.template, (params, buffers), (x,))

        self._vmapped = vmap(one)

    @property
    def size(self) -> int:
        return len(self.nets)

    def train(self, mode: bool = True) -> None:
        self.nets[0].train(mode)
        if self.size > 1:
            self.template.train(mode)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of ``x`` [R * b, ...], part r through network r: [R * b, classes]."""
        if self.size == 1:
            return self.nets[0](x)
        parts = x.view(self.size, -1, *x.shape[1:])
        return self._vmapped(self.stacked_params, self.stacked_buffers, parts).flatten(0, 1)

    @torch.no_grad()
    def sync(self) -> list[nn.Module]:
        """The R networks with the trained weights (and norm statistics) written back."""
        if self.size > 1:
            for r, net in enumerate(self.nets):
                for name, tensor in [*net.named_parameters(), *net.named_buffers()]:
                    stacked = self.stacked_params.get(name, self.stacked_buffers.get(name))
                    tensor.copy_(stacked[r])
        return self.nets
