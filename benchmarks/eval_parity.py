"""Same numbers before and after: one evaluation run by this tree's code and by an older commit's.

Both trees train 3 ConvNet-3 with the DC protocol (tested once, after the last epoch) on
the same random real Fashion-MNIST set (IPC 10, seed 0), each in its own process with its
own ``mdd`` on ``PYTHONPATH``, and print each repeat's last accuracy and final training
loss. A speed-up that changes no arithmetic gives equal numbers, digit for digit.

    .venv/bin/python benchmarks/eval_parity.py [--ref REV] [--epochs 40]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Runs in each tree; only APIs both trees have.
PROBE = """
import json, sys, time
import mdd
from mdd.baselines import select_random
from mdd.config import DataConfig
from mdd.data.load import load_dataset
from mdd.eval.protocols import resolve_protocol
from mdd.eval.train import evaluate_repeats
data = load_dataset(DataConfig())
idx = select_random(data.train.labels, 10, 0)
protocol = resolve_protocol("dc", 10, {"epochs": int(sys.argv[1]), "evaluations": 1})
start = time.perf_counter()
result = evaluate_repeats(
    "convnet3", data.train.images[idx], data.train.labels[idx], data.test.images,
    data.test.labels, protocol=protocol, num_classes=10, repeats=3, seed=0, device="cpu",
)
print(json.dumps({
    "code": mdd.__file__,
    "last_acc": [run.last_acc for run in result.runs],
    "final_train_loss": [run.history[-1][1] for run in result.runs],
    "seconds": time.perf_counter() - start,
}))
"""


def run_tree(tree: Path, epochs: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(epochs)],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref", default="1a37eec", help="the older commit (default: before #13)")
    parser.add_argument("--epochs", type=int, default=40)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="mdd-parity-") as tmp:
        old_tree = Path(tmp) / "ref"
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(old_tree), args.ref],
            check=True,
            capture_output=True,
        )
        try:
            results = {"this tree": run_tree(ROOT, args.epochs)}
            results[args.ref] = run_tree(old_tree, args.epochs)
        finally:
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old_tree)],
                check=False,
            )
    for name, result in results.items():
        print(
            f"{name:<10} last acc {result['last_acc']}  final loss "
            f"{result['final_train_loss']}  ({result['seconds']:.0f} s, {result['code']})"
        )
    same = len({json.dumps([r["last_acc"], r["final_train_loss"]]) for r in results.values()})
    print("same numbers" if same == 1 else "DIFFERENT numbers")
    return 0 if same == 1 else 1


if __name__ == "__main__":
    sys.exit(main())
