"""Where one evaluation training step spends its time: ``torch.profiler`` over DC steps.

The step is the one ``mdd.eval.train`` runs (ConvNet-3, DC protocol with DSA, batch 100 =
IPC 10 of 10 classes, 28 px, SGD with momentum), on the CPU, in fp32 or under bf16
autocast, in four scopes: the DSA augmentation (with the uint8 -> normalised conversion),
the forward pass with the loss, the backward pass and the optimiser step. The first table
is each scope's inclusive CPU time; the second groups every operator's self CPU time by
kind (convolution, instance norm, pooling, ...), across the scopes; ``--ops N`` also
prints the N most expensive operators as the profiler names them.

    .venv/bin/python benchmarks/eval_profile.py [--steps 30] [--bf16] [--threads N] [--ops 15]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from mdd.eval.augment import Draws, dsa_augment
from mdd.eval.networks import create_network
from mdd.eval.protocols import resolve_protocol
from mdd.eval.train import Normalise

BATCH = 100
CLASSES = 10
SCOPES = ("augment", "forward", "backward", "optimiser")
# Operator name fragments -> the kind of work they are; the first match wins.
PARTS = (
    ("optimiser", ("sgd", "_foreach")),
    ("convolution", ("conv", "mkldnn")),
    ("instance norm", ("group_norm",)),
    ("DSA resampling", ("grid_sampler", "affine_grid")),
    ("pooling", ("avg_pool",)),
    ("loss", ("cross_entropy", "log_softmax", "nll_loss")),
    ("activation", ("relu", "threshold")),
    ("linear", ("addmm", "mm", "linear")),
)


def part_of(name: str) -> str:
    lowered = name.lower()
    for part, fragments in PARTS:
        if any(fragment in lowered for fragment in fragments):
            return part
    return "other"


Profile = tuple[dict[str, float], dict[str, float], list[tuple[str, float]]]


def profile_steps(steps: int, bf16: bool, compiled: bool = False) -> Profile:
    """CPU seconds over ``steps`` steps: per scope (inclusive), per kind and per operator
    (self time)."""
    protocol = resolve_protocol("dc", 10)
    torch.manual_seed(0)
    net = create_network("convnet3", CLASSES, 1, 28)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    forward = torch.compile(net, dynamic=False) if compiled else net
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (BATCH, 1, 28, 28), dtype=torch.uint8, generator=g)
    labels = torch.arange(BATCH) % CLASSES
    draws = Draws([torch.Generator().manual_seed(0)])
    normalise = Normalise(protocol, torch.device("cpu"))

    def step() -> None:
        # The DSA branch of mdd.eval.train.batch_losses, split into its scopes.
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            with record_function("augment"):
                x = normalise(images.float().div_(255.0))
                x = dsa_augment(x, draws, protocol.dsa_strategy, protocol.dsa_per_sample)
            with record_function("forward"):
                loss = torch.nn.functional.cross_entropy(forward(x), labels)
        optimizer.zero_grad(set_to_none=True)
        with record_function("backward"):
            loss.backward()
        with record_function("optimiser"):
            optimizer.step()

    for _ in range(5):
        step()  # warm-up: oneDNN primitives are created on the first calls
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    events = prof.key_averages()
    scopes = {e.key: e.cpu_time_total / 1e6 for e in events if e.key in SCOPES}
    ops = sorted(
        (
            (e.key, e.self_cpu_time_total / 1e6)
            for e in events
            if e.self_cpu_time_total > 0 and e.key not in SCOPES
        ),
        key=lambda item: -item[1],
    )
    parts: dict[str, float] = defaultdict(float)
    for name, seconds in ops:
        parts[part_of(name)] += seconds
    return scopes, dict(parts), ops


def _table(title: str, rows: dict[str, float], steps: int) -> None:
    total = sum(rows.values())
    print(f"\n| {title} | ms / step | share |\n|---|---:|---:|")
    for name, seconds in sorted(rows.items(), key=lambda item: -item[1]):
        print(f"| {name} | {1000 * seconds / steps:.2f} | {100 * seconds / total:.1f} % |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (AVX512-BF16/AMX)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the network")
    parser.add_argument("--threads", type=int, help="torch CPU threads (torch's choice: unset)")
    parser.add_argument("--ops", type=int, default=15, help="also print the N top operators")
    parser.add_argument("--json", type=Path, metavar="OUT")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    scopes, parts, ops = profile_steps(args.steps, args.bf16, args.compile)
    dtype = ("bf16 autocast" if args.bf16 else "fp32") + (", compiled" if args.compile else "")
    print(
        f"DC step, ConvNet-3, DSA, batch {BATCH}, {dtype}, {torch.get_num_threads()} threads, "
        f"{args.steps} steps, torch {torch.__version__}"
    )
    _table("scope", scopes, args.steps)
    _table("kind of operator (self time)", parts, args.steps)
    if args.ops:
        print("\n| operator | ms / step | kind |\n|---|---:|---|")
        for name, seconds in ops[: args.ops]:
            print(f"| `{name}` | {1000 * seconds / args.steps:.2f} | {part_of(name)} |")
    if args.json is not None:
        record = {"scopes_s": scopes, "parts_s": parts, "ops_s": dict(ops), "steps": args.steps}
        args.json.write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
