"""What a measurement ran on: the CPU, its vector extensions, the cores, torch and the GPU.

Benchmarks and result files record it beside every number, because the machines this
project runs on differ (AVX512-BF16 or not, 2 or 16 cores) and a time means nothing
without the machine that gave it.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import diffusers
import torch

from mdd.eval.levers import cpu_flags


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo``; ``unknown`` where there is none."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown"


def hardware(device: torch.device) -> dict[str, Any]:
    """The machine and software that a measurement on ``device`` ran on."""
    model = cpu_model()
    usable = (
        os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 0)
    )
    return {
        "cpu_model": model,
        "cpu_flags": cpu_flags(),  # the extensions the levers of mdd/eval/levers.py read
        "logical_cores": os.cpu_count(),
        "usable_cores": len(usable),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "diffusers_version": diffusers.__version__,
        "python_version": platform.python_version(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else model,
        # Other work on the machine slows every arm; the load says whether there was any.
        "load_average_1min_at_start": os.getloadavg()[0],
    }
