"""The allocator settings applied when mdd is imported keep freed tensor memory mapped."""

import os
import subprocess
import sys

# Allocate and free a 40 MB tensor, as a training step does with its activations, and
# count the page faults of the last rounds (the first rounds grow the heap either way).
PROBE = """
import resource
import torch
import mdd
faults = []
for _ in range(30):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.ones(10_000_000)
    del x
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(sum(faults[-10:]))
"""


def _late_faults(**env: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", PROBE],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    return int(done.stdout.strip())


def test_importing_mdd_stops_freed_tensors_from_being_faulted_in_again() -> None:
    tuned = _late_faults(MDD_MALLOC="")
    system = _late_faults(MDD_MALLOC="system")
    # glibc's defaults map and fault in all 9,766 pages of the tensor every round.
    assert system > 10 * 9_000
    assert tuned < system / 10
