"""How the evaluation networks are computed on this machine: precision, compilation, processes.

None of these changes what is trained (protocol, seeds, data order, augmentation); they
change how fast, and bf16 and compilation the last bits of the arithmetic. Each ``auto``
follows a measurement of ``benchmarks/`` (``eval_variants.py``, benchmark 7, and
``eval_profile.py``; the numbers are in benchmarks/README.md):

- bf16 autocast pays only on CPUs with AVX512-BF16 or AMX, and only compiled: in eager
  mode the convolutions get faster but instance norm's backward slower (1.08x in all on an
  AMD EPYC Zen 5), compiled the norm, ReLU and pooling are fused and the step runs 1.8x
  faster. On CUDA ``auto`` keeps fp32 (the GPU's evaluation numbers were measured so).
- ``torch.compile`` costs 10-30 s per network and process (less from inductor's on-disk
  cache) and a C++ compiler, so ``auto`` compiles on a CPU that has one, and only when a
  network trains at least ``COMPILE_MIN_STEPS`` steps; the compiled network runs in
  channels-last layout. ``auto`` compiles where it was measured to pay (``compile_pays``):
  in bf16 on a CPU with fast bf16, in fp32 on a CPU without AVX-512; a whole DC evaluation
  compiled in fp32 on an AVX-512 CPU was not faster than eager fp32 in one process.
- Worker processes with one thread each beat one process with all threads by about 1.1x
  on 2 cores (less synchronisation per operator); each costs a few seconds to start, so
  ``auto`` starts one per repeat, at most two per core, on a CPU with at least two cores
  (torch threads), with the compiled path (the combination measured whole). A script
  that evaluates with them needs the ``if __name__ == "__main__":`` guard of spawned
  processes.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from mdd.errors import ConfigError

COMPILE_MIN_STEPS = 500
Precision = Literal["auto", "fp32", "bf16"]


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX tiles)."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    found = [getattr(torch.cpu, name, None) for name in probes]
    if all(probe is not None for probe in found):
        return any(probe() for probe in found)
    flags = cpu_flags()  # older torch: read the flags
    return "avx512_bf16" in flags or "amx_bf16" in flags


def cpu_flags() -> list[str]:
    """The vector extensions of this CPU that decide a lever (for benchmark records)."""
    wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16")
    cpuinfo = Path("/proc/cpuinfo")
    flags = set(cpuinfo.read_text().split()) if cpuinfo.is_file() else set()
    return [flag for flag in wanted if flag in flags]


def can_compile() -> bool:
    """Whether inductor can build CPU kernels here: it needs a C++ compiler."""
    return any(shutil.which(name) for name in ("g++", "c++", "clang++"))


def compile_pays() -> bool:
    """Whether a compiled evaluation beat the eager one on a CPU like this one.

    With bf16 (AVX512-BF16 or AMX): the whole DC evaluation took 396 s compiled in bf16 with
    worker processes on an AMD EPYC Zen 5 (README, "The evaluation levers"). Without AVX-512
    (AVX2 only), on an AMD EPYC Zen 3, benchmark 6 projects the whole DC IPC 10 evaluation
    at 885 s compiled in fp32 with worker processes against 1082 s eager in one process
    (a88e2ab's path). A CPU with AVX-512 but no fast bf16 has no such whole-evaluation
    comparison yet (compiled fp32 was 1.26x a step on the Zen 5), so it keeps the eager path.
    """
    return cpu_has_fast_bf16() or "avx512f" not in cpu_flags()


@dataclass(frozen=True)
class Levers:
    """The resolved settings of one evaluation: every ``auto`` decided."""

    bf16: bool
    compiled: bool
    processes: int  # 1: the repeats train in this process
    threads: int  # torch threads of each worker process

    def describe(self) -> dict[str, str | int]:
        return {
            "precision": "bf16" if self.bf16 else "fp32",
            "compiled": int(self.compiled),
            "processes": self.processes,
            "threads_per_process": self.threads,
        }


def resolve_levers(
    *,
    precision: Precision,
    compile: Literal["auto"] | bool,
    workers: Literal["auto"] | int,
    device: torch.device,
    repeats: int,
    steps: int,
    batched: bool,
) -> Levers:
    """Decide each ``auto`` for a network that trains ``steps`` steps, ``repeats`` times."""
    cpu = device.type == "cpu"
    if workers != "auto" and workers < 1:
        raise ConfigError(f"eval.workers: {workers}. Hint: use at least 1, or auto.")
    if precision == "bf16" and cpu and not cpu_has_fast_bf16():
        raise ConfigError(
            "eval.precision: bf16 was asked for but this CPU has neither AVX512-BF16 nor AMX, "
            "where bf16 runs emulated and slower. Hint: use eval.precision=auto."
        )
    if compile is True and batched:
        raise ConfigError(
            "eval.compile: true with eval.batch_repeats: true. Hint: the vmapped ensemble "
            "compiled ran slower than eager (benchmark 7); compile single networks."
        )
    if isinstance(compile, bool):
        compiled = compile
    else:
        long = steps >= COMPILE_MIN_STEPS
        compiled = cpu and not batched and long and can_compile() and compile_pays()
    # Eager bf16 gained 1.08x where compiled bf16 gained 1.8x: auto takes it compiled only.
    bf16 = precision == "bf16" or (precision == "auto" and compiled and cpu_has_fast_bf16())
    cores = torch.get_num_threads()
    if workers == "auto":
        # With the compiled bf16 path, the one measured whole (above).
        processes = min(repeats, 2 * cores) if compiled and cores >= 2 else 1
    else:
        processes = min(workers, repeats)
    if processes > 1 and not cpu:
        raise ConfigError(
            f"eval.workers: {workers} processes on {device.type}. Hint: worker processes "
            "are for CPUs; on a GPU the repeats train batched (eval.batch_repeats)."
        )
    if processes > 1 and batched:
        raise ConfigError(
            "eval.workers and eval.batch_repeats: true both ask for the repeats. "
            "Hint: keep one of them (eval.workers=1 or eval.batch_repeats=false)."
        )
    threads = max(1, cores // processes)
    return Levers(bf16=bf16, compiled=bool(compiled), processes=processes, threads=threads)
