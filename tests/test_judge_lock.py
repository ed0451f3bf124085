"""Processes that miss the judge's cache together train it once: the others wait on its lock
and read what the first wrote (sweep workers started at once all need the judge)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

from safetensors.torch import load_file, save_file

from mdd.cache import claim
from mdd.config import Config
from mdd.data.load import load_dataset
from mdd.eval.judge import judge_cache_path, judge_stage
from mdd.pipeline.standalone import judge_only

# Loads the judge as a stage does and prints its first weight tensor's name and sum.
LOAD_JUDGE = """
import sys, torch
from mdd.config import load_config
from mdd.data.load import load_dataset
from mdd.eval.judge import load_judge
config = load_config(sys.argv[1])
judge = load_judge(load_dataset(config.data), config.judge_spec, torch.device("cpu"))
name, tensor = next(iter(judge.network.state_dict().items()))
print(name, tensor.sum().item())
"""


def waits_on_a_lock(pid: int) -> bool:
    """Whether ``pid`` is queued on a flock held by another process (``/proc/locks``)."""
    return any(
        "->" in line and line.split()[5] == str(pid)
        for line in Path("/proc/locks").read_text().splitlines()
    )


def test_a_process_that_misses_the_judge_while_another_trains_it_reads_its_weights(
    tiny_config: Config, tmp_path: Path
) -> None:
    trained = judge_only(tiny_config)  # a judge's weights, to stand for the first trainer's
    weights = {name: tensor * 2 for name, tensor in load_file(str(trained)).items()}
    fingerprint = load_dataset(tiny_config.data).fingerprint
    stage = judge_stage(tiny_config.judge_spec, fingerprint)
    cache = judge_cache_path(tiny_config.judge_spec, fingerprint)
    shutil.rmtree(stage.folder)  # no judge yet
    config_file = tmp_path / "experiment.yaml"
    config_file.write_text(tiny_config.to_yaml())
    with claim(stage):  # this process is "training" the judge
        waiter = subprocess.Popen(
            [sys.executable, "-c", LOAD_JUDGE, str(config_file)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 300  # a loaded machine imports torch slowly
        while not waits_on_a_lock(waiter.pid):
            assert waiter.poll() is None, "load_judge did not wait: " + waiter.stderr.read()
            assert time.monotonic() < deadline, "load_judge never queued on the judge's lock"
            time.sleep(0.05)
        cache.parent.mkdir(parents=True)
        save_file(weights, str(cache))  # what the first trainer writes before it lets go
    out, err = waiter.communicate(timeout=300)
    assert waiter.returncode == 0, err
    name, total = out.split()[-2:]
    assert float(total) == weights[name].sum().item()  # the waiter trained nothing itself
