"""Speed benchmarks: mdd against the reference code's way of doing the same work, in one run.

Five comparisons on one machine, at the sizes of ``experiments/fashion_mnist.yaml``
(latent-s DiT on 7x7x4 latents, 10 classes, DiffFit, fine-tuning batch 32):

1. fine-tuning step time with the minimax criteria against without them (lambda 0/0);
2. the criteria alone, ``MinimaxCriteria`` (ring buffers, one batched similarity) against
   ``LoopMinimaxCriteria`` (the reference code's per-class loop), at D = 4x7x7 and 4x32x32;
3. fine-tuning from cached latents against encoding every batch with the autoencoder;
4. sampling images per second, the default batch size against one image at a time;
5. a sweep's trials in one worker (shared core, fine-tune reuse) against one fresh process
   per trial with empty caches (``benchmarks/sweep_speed.py``; needs Fashion-MNIST);
6. the evaluation stage as it was against mdd's (``benchmarks/eval_speed.py``): allocator,
   test schedule, metric logging and batched repeats, per network and protocol.

It prints the hardware, absolute numbers and ratios; ``--json OUT`` writes them as well.
benchmarks/README.md says what each benchmark measures and how to run it.

    .venv/bin/python benchmarks/speed.py [--quick] [--device auto|cpu|cuda] [--json OUT]
        [--skip-sweep] [--skip-eval] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, redirect_stderr
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mdd.cli import add_set_argument
from mdd.config import Config, FinetuneConfig, SampleConfig, load_config
from mdd.data.latents import LatentSet, cached_latents
from mdd.diffusion.autoencoder import Autoencoder, ConvAutoencoder, uint8_to_unit
from mdd.diffusion.backbone import create_backbone
from mdd.diffusion.base import BaseModel, Trainable, prepare_trainable
from mdd.diffusion.sampling import make_labels
from mdd.errors import MddError
from mdd.machine import hardware
from mdd.minimax import LoopMinimaxCriteria, MinimaxCriteria
from mdd.runtime import pick_device, seed_everything
from mdd.stages.finetune import finetune
from mdd.stages.sample import generate_images

HERE = Path(__file__).resolve().parent
EXPERIMENT = Path(__file__).resolve().parents[1] / "experiments" / "fashion_mnist.yaml"
IMAGE_SHAPE = (1, 28, 28)  # Fashion-MNIST
LOG_EVERY_STEPS = 10  # finetune() reports its steps/s over windows of this many steps
CRITERIA_SHAPES = {"d196": (4, 7, 7), "d4096": (4, 32, 32)}  # embedded default, DiT-XL/2

# Targets of the project's brief; measured and printed here, never asserted in tests.
TARGETS: dict[str, tuple[str, float]] = {
    "finetune_with_over_without_criteria": ("<=", 1.10),
    "sampling_batched_over_one_at_a_time": (">=", 10.0),
    "sweep_fresh_processes_over_shared_core": (">=", 2.0),
}  # benchmark 6's targets are its cases' own (eval_speed.py's CASES), read from its output
RATIO_LABELS = {
    "finetune_with_over_without_criteria": "1. fine-tune step time, with / without criteria",
    "criteria_loop_over_ring_buffer_d196": "2. criteria time, loop / ring buffer, D = 196",
    "criteria_loop_over_ring_buffer_d4096": "2. criteria time, loop / ring buffer, D = 4096",
    "finetune_encoding_over_cached": "3. fine-tune step time, encoding / cached",
    "sampling_batched_over_one_at_a_time": "4. sampling images/s, batched / one at a time",
    "sweep_fresh_processes_over_shared_core": "5. sweep wall time, fresh processes / shared",
}
EVAL_LABELS = {  # by ratio name's prefix; the case's name follows
    "eval_reference_over_mdd_": "6. evaluation, reference / mdd, ",
    "eval_a88e2ab_over_mdd_": "6. evaluation, a88e2ab / mdd (levers), ",
}


@dataclass(frozen=True)
class Sizes:
    """How much work each benchmark times; ``--quick`` keeps the script tested in CI."""

    images: int  # random training images behind the latent set
    finetune_steps: int  # per fine-tuning run
    finetune_warmup_steps: int  # windows before this step are dropped: memories still filling
    finetune_repeats: int  # runs per arm, the arms interleaved
    criteria_warmup_steps: int  # fills every class memory (M = 64 at 3.2 items per step)
    criteria_steps: int  # per timed block
    criteria_repeats: int
    sample_ipc: int  # images per class sampled by each arm
    sample_repeats: int


FULL = Sizes(
    images=2000,
    finetune_steps=80,
    finetune_warmup_steps=30,
    finetune_repeats=3,
    criteria_warmup_steps=40,
    criteria_steps=100,
    criteria_repeats=5,
    sample_ipc=10,
    sample_repeats=2,
)
QUICK = Sizes(
    images=200,
    finetune_steps=20,
    finetune_warmup_steps=10,
    finetune_repeats=1,
    criteria_warmup_steps=25,
    criteria_steps=10,
    criteria_repeats=2,
    sample_ipc=1,
    sample_repeats=1,
)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def progress_bars_hidden() -> Iterator[None]:
    """The stages draw tqdm bars on stderr; dozens of short runs would bury the table."""
    with open(os.devnull, "w") as sink, redirect_stderr(sink):
        yield


@dataclass(frozen=True)
class EncodingLatentSet(LatentSet):
    """Latents encoded from the images at every draw, as the reference code does each step.

    ``mean`` still holds the cached latents of the same images, so both arms of the
    comparison draw the same items; ``sample`` ignores it and runs the encoder instead.
    """

    images_uint8: Tensor
    autoencoder: Autoencoder
    device: torch.device

    def sample(self, indices: Tensor, generator: torch.Generator | None = None) -> Tensor:
        with torch.no_grad():
            images = uint8_to_unit(self.images_uint8[indices].to(self.device))
            return self.autoencoder.encode(images, generator)


def build_base(cfg: Config, device: torch.device) -> BaseModel:
    """The experiment's architecture with fresh weights: step times do not depend on them."""
    autoencoder = ConvAutoencoder(IMAGE_SHAPE[0], cfg.autoencoder.latent_channels).to(device)
    latent_shape = autoencoder.latent_shape(IMAGE_SHAPE)
    num_classes = 10  # Fashion-MNIST
    transformer = create_backbone(cfg.model.preset, num_classes, latent_shape[0], latent_shape[1])
    return BaseModel(
        autoencoder=autoencoder.eval(),
        transformer=transformer.to(device),
        num_classes=num_classes,
        latent_shape=latent_shape,
        identity=f"benchmark-{cfg.model.preset}-random-weights",
        class_ids=torch.arange(num_classes),
    )


def random_training_set(
    base: BaseModel, count: int, device: torch.device, cache_dir: Path
) -> tuple[LatentSet, EncodingLatentSet]:
    """Random uint8 images through the real latent cache, and the same images encoded per draw."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (count, *IMAGE_SHAPE), dtype=torch.uint8, generator=generator)
    labels = torch.arange(count) % base.num_classes
    latents = cached_latents(
        images,
        labels,
        autoencoder=base.autoencoder,
        data_fingerprint=f"benchmark-random-images-{count}",
        flip=False,
        cache_dir=cache_dir,
        batch_size=256,
        device=device,
    )
    encoding = EncodingLatentSet(
        mean=latents.mean,
        std=latents.std,
        labels=latents.labels,
        path=latents.path,
        cache_hit=False,
        images_uint8=images,
        autoencoder=base.autoencoder,
        device=device,
    )
    return latents, encoding


def finetune_ms_per_step(
    trainable: Trainable,
    latents: LatentSet,
    cfg: FinetuneConfig,
    sizes: Sizes,
    folder: Path,
    device: torch.device,
) -> list[float]:
    """One run of the real ``finetune``; its own steps/s windows, as ms per step."""
    windows: list[tuple[int, float]] = []

    def log(metrics: dict[str, float], step: int) -> None:
        windows.append((step, metrics["finetune/steps_per_s"]))

    run_cfg = cfg.model_copy(
        update={"steps": sizes.finetune_steps, "checkpoint_every_steps": sizes.finetune_steps}
    )
    with progress_bars_hidden():
        finetune(trainable, latents, run_cfg, 0, folder, device, log)
    return [
        1000.0 / rate
        for step, rate in windows
        if step - LOG_EVERY_STEPS >= sizes.finetune_warmup_steps
    ]


def bench_finetune(
    trainable: Trainable,
    latents: LatentSet,
    encoding: EncodingLatentSet,
    cfg: FinetuneConfig,
    sizes: Sizes,
    workdir: Path,
    device: torch.device,
) -> dict[str, dict[str, float]]:
    """Benchmarks 1 and 3: three arms of the real fine-tuning loop, interleaved run by run."""
    arms: dict[str, tuple[FinetuneConfig, LatentSet]] = {
        "without_criteria": (cfg.model_copy(update={"lambda_r": 0.0, "lambda_d": 0.0}), latents),
        "with_criteria": (cfg, latents),
        "with_criteria_encoding_each_batch": (cfg, encoding),
    }
    samples: dict[str, list[float]] = {name: [] for name in arms}
    for repeat in range(sizes.finetune_repeats):
        for name, (arm_cfg, data) in arms.items():
            folder = workdir / f"finetune-{name}-{repeat}"
            samples[name] += finetune_ms_per_step(trainable, data, arm_cfg, sizes, folder, device)
    results = {}
    for name, times in samples.items():
        ms = statistics.median(times)
        results[name] = {"ms_per_step": ms, "steps_per_s": 1000.0 / ms, "windows": len(times)}
    return results


def bench_criteria(
    shape: tuple[int, ...],
    cfg: FinetuneConfig,
    num_classes: int,
    sizes: Sizes,
    device: torch.device,
) -> dict[str, float]:
    """Benchmark 2: forward + backward of the criteria alone, full memories, ms per step."""
    generator = torch.Generator().manual_seed(0)
    pool = [
        (
            torch.randn(cfg.batch_size, *shape, generator=generator).to(device),
            torch.randn(cfg.batch_size, *shape, generator=generator).to(device),
            torch.randint(num_classes, (cfg.batch_size,), generator=generator).to(device),
        )
        for _ in range(8)
    ]
    settings = (num_classes, cfg.memory_size, cfg.lambda_r, cfg.lambda_d)
    implementations = {
        "ring_buffer": MinimaxCriteria(*settings),
        "loop": LoopMinimaxCriteria(*settings),
    }

    def run(criteria: Callable[..., Any], steps: int) -> None:
        for step in range(steps):
            pred, real, labels = pool[step % len(pool)]
            # A fresh leaf each step, like the predicted x0 of a new forward pass.
            pred = pred.detach().requires_grad_()
            terms = criteria(pred, real, labels)
            loss = terms.representativeness + terms.diversity
            # The loop's first step scores nothing yet and returns constants.
            if loss.requires_grad:
                loss.backward()
        synchronize(device)

    for criteria in implementations.values():
        run(criteria, sizes.criteria_warmup_steps)
    samples: dict[str, list[float]] = {name: [] for name in implementations}
    for _ in range(sizes.criteria_repeats):
        for name, criteria in implementations.items():
            start = time.perf_counter()
            run(criteria, sizes.criteria_steps)
            samples[name].append(1000.0 * (time.perf_counter() - start) / sizes.criteria_steps)
    result: dict[str, float] = {"dim": float(math.prod(shape))}
    for name, times in samples.items():
        result[f"{name}_ms_per_step"] = statistics.median(times)
    return result


def bench_sampling(
    base: BaseModel, cfg: SampleConfig, sizes: Sizes, device: torch.device
) -> dict[str, dict[str, float]]:
    """Benchmark 4: images per second of the real sampling stage, latents decoded to images."""
    labels = make_labels(base.num_classes, sizes.sample_ipc)
    arms = {"batched": cfg, "one_at_a_time": cfg.model_copy(update={"batch_size": 1})}
    with progress_bars_hidden():
        for arm_cfg in arms.values():
            generate_images(base, labels[:2], arm_cfg, 0, device)
        samples: dict[str, list[float]] = {name: [] for name in arms}
        for _ in range(sizes.sample_repeats):
            for name, arm_cfg in arms.items():
                start = time.perf_counter()
                generate_images(base, labels, arm_cfg, 0, device)
                samples[name].append(time.perf_counter() - start)
    results = {}
    for name, seconds in samples.items():
        median_s = statistics.median(seconds)
        results[name] = {
            "batch_size": float(arms[name].batch_size),
            "images": float(len(labels)),
            "seconds": median_s,
            "images_per_s": len(labels) / median_s,
        }
    return results


def run_all(
    device: torch.device,
    sizes: Sizes,
    mode: str,
    sweep_overrides: list[str] | None,
    eval_cases: list[str] | None,
) -> dict[str, Any]:
    """Every benchmark at the experiment's sizes; the numbers as a JSON-ready dict.

    ``sweep_overrides`` (e.g. ``data.root=...``) apply to every trial of benchmark 5; None
    skips it. ``eval_cases`` are benchmark 6's cases (empty: all of them); None skips it.
    Benchmarks 5 and 6 run as their own scripts, each in a process of its own.
    """
    cfg = load_config(EXPERIMENT)
    seed_everything(cfg.seed)
    info = hardware(device)
    base = build_base(cfg, device)
    trainable = prepare_trainable(base, difffit=cfg.finetune.difffit)
    with tempfile.TemporaryDirectory(prefix="mdd-speed-") as tmp:
        workdir = Path(tmp)
        latents, encoding = random_training_set(base, sizes.images, device, workdir / "cache")
        finetune_results = bench_finetune(
            trainable, latents, encoding, cfg.finetune, sizes, workdir, device
        )
    criteria_results = {
        name: bench_criteria(shape, cfg.finetune, base.num_classes, sizes, device)
        for name, shape in CRITERIA_SHAPES.items()
    }
    sampling_results = bench_sampling(base, cfg.sample, sizes, device)
    quick = ["--quick"] if mode == "quick" else []
    sweep, sweep_lines = None, []
    if sweep_overrides is not None:
        sets = [arg for item in sweep_overrides for arg in ("--set", item)]
        sweep, sweep_lines = _sibling("sweep_speed.py", [*quick, *sets])
    sweep_results = None if sweep is None else sweep["result"]
    eval_results, eval_lines = None, []
    if eval_cases is not None:
        cases = ["--cases", *eval_cases] if eval_cases else []
        eval_results, eval_lines = _sibling("eval_speed.py", [*quick, *cases])

    ft = {name: arm["ms_per_step"] for name, arm in finetune_results.items()}
    ratios = {
        "finetune_with_over_without_criteria": ft["with_criteria"] / ft["without_criteria"],
        **{
            f"criteria_loop_over_ring_buffer_{name}": (
                result["loop_ms_per_step"] / result["ring_buffer_ms_per_step"]
            )
            for name, result in criteria_results.items()
        },
        "finetune_encoding_over_cached": ft["with_criteria_encoding_each_batch"]
        / ft["with_criteria"],
        "sampling_batched_over_one_at_a_time": (
            sampling_results["batched"]["images_per_s"]
            / sampling_results["one_at_a_time"]["images_per_s"]
        ),
    }
    if sweep_results is not None:
        ratios["sweep_fresh_processes_over_shared_core"] = sweep_results["ratio"]
    for name, result in (eval_results or {}).items():
        ratios[f"eval_reference_over_mdd_{name}"] = result["ratio_projected"]
        ratios[f"eval_a88e2ab_over_mdd_{name}"] = result["ratio_levers_projected"]
    settings = {
        "mode": mode,
        "experiment": str(EXPERIMENT.relative_to(EXPERIMENT.parents[1])),
        "preset": cfg.model.preset,
        "latent_shape": list(base.latent_shape),
        "num_classes": base.num_classes,
        "difffit": cfg.finetune.difffit,
        "trainable_params": trainable.selection.get("trainable"),
        "batch_size": cfg.finetune.batch_size,
        "lambda_r": cfg.finetune.lambda_r,
        "lambda_d": cfg.finetune.lambda_d,
        "memory_size": cfg.finetune.memory_size,
        "sample_steps": cfg.sample.steps,
        "sample_scheduler": cfg.sample.scheduler,
        "guidance_scale": cfg.sample.guidance_scale,
        **{f"sizes_{key}": value for key, value in vars(sizes).items()},
        "sweep": None if sweep is None else sweep["grid"],
    }
    return {
        "hardware": info,
        "settings": settings,
        "finetune": finetune_results,
        "criteria": criteria_results,
        "sampling": sampling_results,
        "sweep": sweep_results,
        "evaluation": eval_results,
        "ratios": ratios,
        "targets": {**TARGETS, **_eval_targets(eval_results or {})},
        "report_lines": {"sweep": sweep_lines, "evaluation": eval_lines},
    }


def _sibling(script: str, args: list[str]) -> tuple[Any, list[str]]:
    """Run benchmark ``script`` (one of this folder's) in its own process: its JSON output
    and its report lines. Its progress goes to this process's output as it comes."""
    with tempfile.TemporaryDirectory(prefix="mdd-speed-part-") as tmp:
        out, lines = Path(tmp) / "out.json", Path(tmp) / "report.txt"
        command = [sys.executable, str(HERE / script), *args]
        subprocess.run([*command, "--json", str(out), "--report", str(lines)], check=True)
        return json.loads(out.read_text()), lines.read_text().splitlines()


def _eval_targets(evaluation: dict[str, Any]) -> dict[str, tuple[str, float]]:
    """Benchmark 6's targets, as each case of ``eval_speed.py`` states them."""
    targets = {}
    for name, result in evaluation.items():
        case = result["case"]
        targets[f"eval_reference_over_mdd_{name}"] = (">=", case["target"])
        if case["levers_target"] is not None:
            targets[f"eval_a88e2ab_over_mdd_{name}"] = (">=", case["levers_target"])
    return targets


def _target(targets: dict[str, Any], name: str, value: float) -> str:
    if name not in targets:
        return ""
    sense, bound = targets[name]
    met = value <= bound if sense == "<=" else value >= bound
    return f"{sense} {bound:g}  {'met' if met else 'MISSED'}"


def _label(ratio: str) -> str:
    for prefix, label in EVAL_LABELS.items():
        if ratio.startswith(prefix):
            return label + ratio[len(prefix) :]
    return RATIO_LABELS[ratio]


def report(results: dict[str, Any]) -> str:
    """The printed table: hardware, each benchmark's absolute numbers, then the ratios."""
    hw, st = results["hardware"], results["settings"]
    ft, cr, sa = results["finetune"], results["criteria"], results["sampling"]
    subset = (
        f"DiffFit subset of {st['trainable_params']} parameters"
        if st["difffit"]
        else "all parameters"
    )
    lines = [
        f"mdd speed benchmark, {st['mode']} run ({st['experiment']} sizes, random weights)",
        f"  cpu     {hw['cpu_model']}, {hw['logical_cores']} logical cores "
        f"({hw['usable_cores']} usable), load average {hw['load_average_1min_at_start']:.2f} "
        "at start",
        f"  torch   {hw['torch_version']}, {hw['torch_threads']} threads; diffusers "
        f"{hw['diffusers_version']}; python {hw['python_version']}",
        f"  device  {hw['device']} ({hw['device_name']})",
        f"  model   {st['preset']} on {'x'.join(map(str, st['latent_shape']))} latents, "
        f"{st['num_classes']} classes, training the {subset}",
        "",
        f"1. Fine-tuning step, batch {st['batch_size']}: the real finetune(), median over "
        f"{ft['without_criteria']['windows']} windows of {LOG_EVERY_STEPS} steps per arm",
    ]

    def step_line(label: str, arm: dict[str, float]) -> str:
        return f"   {label:<48} {arm['steps_per_s']:8.2f} steps/s {arm['ms_per_step']:9.2f} ms/step"

    lines += [
        step_line("without criteria (lambda 0 / 0)", ft["without_criteria"]),
        step_line(
            f"with criteria (lambda {st['lambda_r']:g} / {st['lambda_d']:g}, "
            f"M {st['memory_size']})",
            ft["with_criteria"],
        ),
        "",
        f"2. Minimax criteria alone, forward + backward, batch {st['batch_size']}, "
        f"{st['num_classes']} classes, M {st['memory_size']}, full memories: median over "
        f"{st['sizes_criteria_repeats']} blocks of {st['sizes_criteria_steps']} steps",
    ]
    for result in cr.values():
        dim = int(result["dim"])
        lines += [
            f"   {f'D = {dim}, ring buffer (MinimaxCriteria)':<48} "
            f"{result['ring_buffer_ms_per_step']:9.3f} ms/step",
            f"   {f'D = {dim}, per-class loop (LoopMinimaxCriteria)':<48} "
            f"{result['loop_ms_per_step']:9.3f} ms/step",
        ]
    lines += [
        "",
        "3. Fine-tuning step with criteria: cached latents against encoding every batch",
        step_line("cached latents (LatentSet.sample)", ft["with_criteria"]),
        step_line(
            "uint8 images through ConvAutoencoder each step",
            ft["with_criteria_encoding_each_batch"],
        ),
        "",
        f"4. Sampling: {st['sample_steps']}-step {st['sample_scheduler'].upper()}, guidance "
        f"{st['guidance_scale']:g}, decoded to images; median over "
        f"{st['sizes_sample_repeats']} runs",
    ]
    for arm in sa.values():
        batches = math.ceil(arm["images"] / arm["batch_size"])
        label = f"batch size {int(arm['batch_size'])} ({batches} batches)"
        lines.append(
            f"   {label:<48} {arm['images_per_s']:8.2f} images/s "
            f"({int(arm['images'])} images in {arm['seconds']:.2f} s)"
        )
    for part in ("sweep", "evaluation"):
        if results[part] is not None:
            lines += ["", *results["report_lines"][part]]
    lines += ["", f"   {'ratio':<48} {'value':>8}   target"]
    for name, value in results["ratios"].items():
        target = _target(results["targets"], name, value)
        lines.append(f"   {_label(name):<48} {value:8.3f}   {target}".rstrip())
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (about 30 s), for CI")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write the numbers here")
    parser.add_argument(
        "--threads", type=int, metavar="N", help="torch CPU threads (default: torch's own choice)"
    )
    parser.add_argument(
        "--skip-sweep", action="store_true", help="leave out benchmark 5 (it needs Fashion-MNIST)"
    )
    parser.add_argument(
        "--skip-eval", action="store_true", help="leave out benchmark 6 (the evaluation stage)"
    )
    add_set_argument(parser)  # benchmark 5's trials, e.g. --set data.root=/path/to/fmnist
    args = parser.parse_args(argv)
    try:
        device = pick_device(args.device)
    except MddError as exc:
        print(f"speed.py: error: {exc}", file=sys.stderr)
        return exc.exit_code
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    sweep_overrides = None if args.skip_sweep else [f"device={args.device}", *args.overrides]
    sizes, mode = (QUICK, "quick") if args.quick else (FULL, "full")
    # CI's quick run keeps one case of benchmark 6: the 224 px one takes minutes even short.
    eval_cases = ["dc-ipc10"] if args.quick else []  # []: every case eval_speed.py has
    results = run_all(device, sizes, mode, sweep_overrides, None if args.skip_eval else eval_cases)
    print(report(results), flush=True)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
