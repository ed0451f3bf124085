"""Benchmark 7: one evaluation training step under each candidate speed-up, images per second.

The training step of ``mdd.eval.train`` (ConvNet-3, DC protocol with DSA, batch 100 =
IPC 10 of 10 classes, 28 px) timed in one process, the variants interleaved after warm-up,
median over rounds:

- ``plain``: float32, NCHW, eager (what runs);
- ``channels_last``: the network and its input in oneDNN's preferred NHWC layout;
- ``compile``: ``torch.compile`` of the network (inductor; its compile time is printed);
- ``bf16``: ``torch.autocast("cpu", bfloat16)``, fast only on CPUs with AVX512-BF16/AMX;
- ``batched3``: three networks as one vmapped ``Ensemble`` (``eval.batch_repeats: true``),
  per image, against three plain steps;
- any of them joined by ``+`` (``compile+bf16``: the compiled network under bf16 autocast).

A variant is worth adopting only if it is faster here and leaves the accuracy unchanged;
``eval.batch_repeats: auto`` reads this benchmark's CPU result.

    .venv/bin/python benchmarks/eval_variants.py [--rounds 5] [--steps 20] [--json OUT]
        [--variants plain compile bf16 compile+bf16 ...]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from mdd.eval.augment import Draws
from mdd.eval.ensemble import Ensemble
from mdd.eval.networks import create_network
from mdd.eval.protocols import resolve_protocol
from mdd.eval.train import Normalise, batch_losses

BATCH = 100
CLASSES = 10
PARTS = ("channels_last", "compile", "bf16", "batched3")
VARIANTS = ("plain", "channels_last", "compile", "bf16", "batched3", "compile+bf16")


def _step_fn(variant: str) -> tuple[Callable[[], None], int]:
    """A closure running one training step of ``variant``, and the images it trains on."""
    parts = set() if variant == "plain" else set(variant.split("+"))
    if not parts <= set(PARTS):
        raise SystemExit(f"unknown variant {variant!r}: join any of {', '.join(PARTS)} with +")
    protocol = resolve_protocol("dc", 10)
    repeats = 3 if "batched3" in parts else 1
    nets = []
    for seed in range(repeats):
        torch.manual_seed(seed)
        nets.append(create_network("convnet3", CLASSES, 1, 28))
    ensemble = Ensemble(nets)
    forward: Callable[[torch.Tensor], torch.Tensor] = ensemble
    if "compile" in parts:
        forward = torch.compile(nets[0] if repeats == 1 else ensemble)
    if "channels_last" in parts:
        nets[0].to(memory_format=torch.channels_last)
        inner = forward
        forward = lambda x: inner(x.contiguous(memory_format=torch.channels_last))  # noqa: E731
    optimizer = torch.optim.SGD(ensemble.params, lr=0.01, momentum=0.9, weight_decay=5e-4)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (repeats * BATCH, 1, 28, 28), dtype=torch.uint8, generator=g)
    labels = torch.arange(repeats * BATCH) % CLASSES
    draws = Draws([torch.Generator().manual_seed(s) for s in range(repeats)])
    normalise = Normalise(protocol, torch.device("cpu"))
    enabled = "bf16" in parts

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled):
            losses = batch_losses(forward, images, labels, protocol, normalise, draws)
        optimizer.zero_grad(set_to_none=True)
        losses.sum().backward()
        optimizer.step()

    return step, repeats * BATCH


def bench_variants(
    rounds: int, steps: int, variants: tuple[str, ...] = VARIANTS
) -> dict[str, dict[str, float]]:
    variants = ("plain", *[v for v in variants if v != "plain"])  # the ratios' reference
    fns, compile_s = {}, {}
    for variant in variants:
        start = time.perf_counter()
        fns[variant] = _step_fn(variant)
        fns[variant][0]()  # warm-up (compiles the compiled variants)
        fns[variant][0]()
        if "compile" in variant:
            compile_s[variant] = time.perf_counter() - start
    rates: dict[str, list[float]] = {variant: [] for variant in variants}
    for _ in range(rounds):
        for variant, (step, images) in fns.items():
            start = time.perf_counter()
            for _ in range(steps):
                step()
            rates[variant].append(steps * images / (time.perf_counter() - start))
    plain = statistics.median(rates["plain"])
    return {
        variant: {
            "images_per_s": statistics.median(values),
            "over_plain": statistics.median(values) / plain,
            **({"compile_s": compile_s[variant]} if variant in compile_s else {}),
        }
        for variant, values in rates.items()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--json", type=Path, metavar="OUT")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    args = parser.parse_args(argv)
    results = bench_variants(args.rounds, args.steps, tuple(args.variants))
    print(
        f"7. evaluation training step, ConvNet-3, DSA, batch {BATCH}, {torch.get_num_threads()}"
        f" threads, median of {args.rounds} rounds of {args.steps} steps"
    )
    for variant, r in results.items():
        extra = f" (compiled in {r['compile_s']:.0f} s)" if "compile_s" in r else ""
        print(f"   {variant:<14} {r['images_per_s']:8.1f} images/s  {r['over_plain']:5.2f}x{extra}")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
