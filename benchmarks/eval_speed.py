"""Benchmark 6: the evaluation stage as it was (two reference arms) against mdd's.

Each arm of each case runs in a fresh process, because the allocator is chosen when
``mdd`` is imported:

- ``reference``: glibc's malloc defaults (``MDD_MALLOC=system``), the test schedule the
  protocol had (DC: 10 tests of the test set in 1000 epochs), every epoch's metrics written
  to the MLflow store as they come (``log_metrics``), the repeats one at a time;
- ``a88e2ab``: mdd as it was at commit a88e2ab, reproduced by configuration: the
  allocator of ``mdd/allocator.py``, one test after the last epoch, buffered metrics
  (``log_series``), the repeats as ``eval.batch_repeats: auto`` picks, and every lever of
  ``mdd/eval/levers.py`` off (fp32, eager, one process);
- ``mdd``: the same with the levers that ``auto`` picks on this machine for the full
  protocol's length (bf16 where the CPU has AVX512-BF16 or AMX, ``torch.compile``, the
  repeats in worker processes).

The training loop itself is the same code in every arm (``mdd.eval.train``).

A full DC evaluation is 1000 epochs. Each arm runs two shortened evaluations (``epochs``
and twice that), each with one test at the end, and times one more test pass on its own.
The time of a run is a fixed start (compilation, worker processes) plus a part linear in
the epochs, so the two runs give both, and the full protocol's time is projected as
``start + per_epoch * 1000 + tests * test``; the ratios of the projections are the ones
reported against the targets. The measured times of the longer shortened run are printed
beside them.

    .venv/bin/python benchmarks/eval_speed.py [--quick] [--cases dc-ipc10 ...] [--json OUT]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mdd.config import TrackingConfig
from mdd.eval.levers import Levers, resolve_levers
from mdd.eval.networks import create_network
from mdd.eval.protocols import resolve_protocol
from mdd.eval.train import batched_on, evaluate_repeats, predict, training_steps
from mdd.tracking import Tracker


@dataclass(frozen=True)
class Case:
    """One evaluation: a network and protocol on a set of a given size."""

    network: str
    protocol: str
    ipc: int
    channels: int
    image_size: int
    test_images: int
    epochs: int  # run by each arm (a full evaluation's epochs come from the protocol)
    reference_tests: int  # tests in a full evaluation before issue 13 (DC: 10)
    target: float  # the ratio reference / mdd the issue asks for
    levers_target: float | None = None  # the ratio a88e2ab / mdd asked for (issue 29)


CLASSES = 10
CASES = {
    "dc-ipc10": Case("convnet3", "dc", 10, 1, 28, 10_000, 60, 10, 4.0, 2.5),  # Fashion-MNIST
    "dc-ipc50": Case("convnet3", "dc", 50, 1, 28, 10_000, 12, 10, 2.0),
    # A 224 px stand-in for ImageWoof: ImageNet-sized images, IDC's protocol (its test
    # schedule is unchanged: IDC reports the best of 100 tests).
    "idc-resnet_ap10": Case("resnet_ap10", "idc", 10, 3, 224, 500, 2, 100, 2.0),
}
QUICK_EPOCHS = 2
QUICK_TEST_IMAGES = 200
REPEATS = 3
ARMS = ("reference", "a88e2ab", "mdd")


def _images(count: int, case: Case, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    shape = (count, case.channels, case.image_size, case.image_size)
    return torch.randint(0, 256, shape, dtype=torch.uint8, generator=g)


def arm_levers(arm: str, case: Case, device: torch.device) -> Levers:
    """The levers of ``arm``: off for the references, as ``auto`` picks for the full run."""
    steps = training_steps(resolve_protocol(case.protocol, case.ipc), case.ipc * CLASSES)
    on = arm == "mdd"
    batched = batched_on(device, "auto" if arm != "reference" else False)
    return resolve_levers(
        precision="auto" if on else "fp32", compile="auto" if on else False,
        workers="auto" if on else 1, device=device, repeats=REPEATS, steps=steps,
        batched=batched,
    )  # fmt: skip


def run_arm(arm: str, case: Case, epochs: int, workdir: Path) -> dict[str, Any]:
    """One arm in this process: train ``REPEATS`` networks for ``epochs``, test once."""
    protocol = resolve_protocol(case.protocol, case.ipc)
    full_epochs = protocol.epochs
    protocol = dataclasses.replace(protocol, epochs=epochs, evaluations=1)
    train = _images(case.ipc * CLASSES, case, seed=0)
    labels = torch.arange(CLASSES).repeat_interleave(case.ipc)
    test = _images(case.test_images, case, seed=1)
    test_labels = torch.arange(case.test_images) % CLASSES
    device = torch.device("cpu")
    tracker = Tracker(TrackingConfig(uri=f"sqlite:///{workdir / 'mlflow.db'}", experiment=arm))
    batch = False if arm == "reference" else "auto"
    levers = arm_levers(arm, case, device)
    start = time.perf_counter()
    with tracker.run(f"{arm}-{case.network}") as run:
        log = run.log_metrics if arm == "reference" else run.log_series

        def on_epoch(repeat: int, epoch: int, values: dict[str, float]) -> None:
            log({f"eval/{case.network}/{repeat}/{k}": v for k, v in values.items()}, epoch)

        result = evaluate_repeats(
            case.network,
            train,
            labels,
            test,
            test_labels,
            protocol=protocol,
            num_classes=CLASSES,
            repeats=REPEATS,
            seed=0,
            device=device,
            batch_repeats=batch,
            precision="bf16" if levers.bf16 else "fp32",
            compile=levers.compiled,
            workers=levers.processes,
            on_epoch=on_epoch,
        )
    run_s = time.perf_counter() - start
    assert len(result.runs) == REPEATS
    # One test pass per network, timed alone (any weights: the work does not depend on them).
    net = create_network(case.network, CLASSES, case.channels, case.image_size)
    start = time.perf_counter()
    for _ in range(REPEATS):
        predict(net, test, protocol, device)
    test_s = time.perf_counter() - start
    tests = case.reference_tests if arm == "reference" else resolve_tests(case)
    return {
        "arm": arm,
        "epochs": epochs,
        "run_s": run_s,
        "test_pass_s": test_s,
        "train_s": max(run_s - test_s, 0.0),
        "full_epochs": full_epochs,
        "full_tests": tests,
        "test_images": case.test_images,
        "batched": batched_on(device, batch),
        "levers": levers.describe(),
        "allocator": os.environ.get("MDD_MALLOC") or "mdd",
        "torch_threads": torch.get_num_threads(),
    }


def project(short: dict[str, Any], long: dict[str, Any]) -> dict[str, float]:
    """Fixed start and per-epoch time from two run lengths; the full protocol's time."""
    per_epoch = (long["train_s"] - short["train_s"]) / (long["epochs"] - short["epochs"])
    per_epoch = max(per_epoch, 0.0)
    start = max(short["train_s"] - per_epoch * short["epochs"], 0.0)
    full = start + per_epoch * short["full_epochs"] + short["full_tests"] * short["test_pass_s"]
    return {"start_s": start, "per_epoch_s": per_epoch, "projected_full_s": full}


def resolve_tests(case: Case) -> int:
    return resolve_protocol(case.protocol, case.ipc).evaluations


def bench_eval(cases: list[str], quick: bool) -> dict[str, Any]:
    """Both arms of every case, each in its own process; the numbers and ratios."""
    results: dict[str, Any] = {}
    for name in cases:
        case = CASES[name]
        epochs = QUICK_EPOCHS if quick else case.epochs
        if quick:
            case = dataclasses.replace(case, test_images=min(case.test_images, QUICK_TEST_IMAGES))
        arms = {}
        for arm in ARMS:
            runs = [_run_in_process(arm, name, case, length) for length in (epochs, 2 * epochs)]
            arms[arm] = {**runs[1], **project(*runs), "short_run": runs[0]}
        full = {arm: arms[arm]["projected_full_s"] for arm in ARMS}
        results[name] = {
            "case": dataclasses.asdict(case),
            "arms": arms,
            "ratio_projected": full["reference"] / full["mdd"],
            "ratio_levers_projected": full["a88e2ab"] / full["mdd"],
            "ratio_measured_short_run": arms["reference"]["run_s"] / arms["mdd"]["run_s"],
        }
    return results


def _run_in_process(arm: str, name: str, case: Case, epochs: int) -> dict[str, Any]:
    env = {**os.environ, "MDD_MALLOC": "system" if arm == "reference" else ""}
    with tempfile.TemporaryDirectory(prefix="mdd-eval-speed-") as tmp:
        # An empty inductor cache for every run: the longer run would otherwise load the
        # kernels the shorter one compiled, start faster, and make the per-epoch time (and
        # the projection of a compiled arm) look smaller than it is.
        env["TORCHINDUCTOR_CACHE_DIR"] = str(Path(tmp) / "inductor")
        out = Path(tmp) / "arm.json"
        command = [sys.executable, __file__, "--arm", arm, "--case", name]
        command += ["--test-images", str(case.test_images)]
        command += ["--epochs", str(epochs), "--json", str(out), "--workdir", tmp]
        subprocess.run(command, env=env, check=True)
        return json.loads(out.read_text())


def report_lines(results: dict[str, Any]) -> list[str]:
    lines = [
        "6. evaluation stage, reference and a88e2ab / mdd (3 networks; full protocol "
        "projected from the measured start, per-epoch and test times)",
        f"   {'case':<16} {'epochs':>6} {'ref s':>7} {'a88e2ab s':>9} {'mdd s':>7} "
        f"{'ref full':>8} {'a88 full':>8} {'mdd full':>8}  ratios",
    ]
    for name, r in results.items():
        ref, old, new = (r["arms"][arm] for arm in ARMS)
        target, levers_target = r["case"]["target"], r["case"]["levers_target"]
        met = "met" if r["ratio_projected"] >= target else "MISSED"
        ratios = f"ref {r['ratio_projected']:.2f}x (>= {target:.1f}x {met})"
        ratios += f", a88e2ab {r['ratio_levers_projected']:.2f}x"
        if levers_target is not None:
            met = "met" if r["ratio_levers_projected"] >= levers_target else "MISSED"
            ratios += f" (>= {levers_target:.1f}x {met})"
        lines.append(
            f"   {name:<16} {ref['epochs']:>6} {ref['run_s']:>7.1f} {old['run_s']:>9.1f} "
            f"{new['run_s']:>7.1f} {ref['projected_full_s']:>8.0f} {old['projected_full_s']:>8.0f} "
            f"{new['projected_full_s']:>8.0f}  {ratios}"
        )
        lines.append(f"   {'':<16} mdd's levers: {new['levers']}, start {new['start_s']:.1f} s")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_EPOCHS} epochs per arm")
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    parser.add_argument("--json", type=Path, metavar="OUT")
    parser.add_argument("--report", type=Path, metavar="OUT", help="the printed lines, as text")
    # One arm in this process (what bench_eval starts).
    parser.add_argument("--arm", choices=ARMS, help=argparse.SUPPRESS)
    parser.add_argument("--case", choices=list(CASES), help=argparse.SUPPRESS)
    parser.add_argument("--epochs", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--test-images", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.arm is not None:
        case = CASES[args.case]
        if args.test_images is not None:
            case = dataclasses.replace(case, test_images=args.test_images)
        result = run_arm(args.arm, case, args.epochs, args.workdir)
    else:
        result = bench_eval(args.cases, args.quick)
        lines = "\n".join(report_lines(result))
        print(lines, flush=True)
        if args.report is not None:  # speed.py puts them in its table
            args.report.write_text(lines + "\n")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
