"""One run over several processes: ``mdd-run --nproc 2`` starts real torchrun ranks (gloo)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient
from safetensors.torch import load_file

from mdd.cli import torchrun_command
from mdd.config import Config
from mdd.data import load_dataset
from mdd.data.surrogate import read_surrogate
from mdd.distributed import World
from mdd.pipeline.plan import plan

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("items,size", [(8, 2), (10, 3), (2, 4)])
def test_world_shards_give_every_item_to_exactly_one_rank_in_order(items: int, size: int):
    shards = [World(rank, size).shard(items) for rank in range(size)]
    covered = [i for part in shards for i in range(items)[part]]
    assert covered == list(range(items))
    lengths = [len(range(items)[part]) for part in shards]
    assert max(lengths) - min(lengths) <= 1


def test_nproc_becomes_a_torchrun_of_the_same_arguments_without_it() -> None:
    command = torchrun_command(2, ["exp.yaml", "--nproc", "2", "--set", "seed=1", "--nproc=2"])
    assert command[1:4] == ["-m", "torch.distributed.run", "--standalone"]
    assert command[4:] == ["--nproc_per_node=2", "-m", "mdd.run", "exp.yaml", "--set", "seed=1"]


def _mdd_run(config: Config, folder: Path, *extra: str) -> subprocess.CompletedProcess:
    path = folder / "experiment.yaml"
    path.write_text(config.to_yaml())
    command = [sys.executable, "-m", "mdd", "run", str(path), *extra]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)


def test_two_ranks_fine_tune_and_sample_what_one_process_does_with_the_same_global_batch(
    tiny_config: Config, tmp_path: Path
) -> None:
    # Without the minimax terms the per-rank memories play no part, so the two-rank step is
    # the one-process step of the same global batch, up to the order of float sums.
    config = tiny_config.model_copy(deep=True)
    config.finetune.lambda_r = config.finetune.lambda_d = 0.0
    config.finetune.batch_size = 8
    config.sample.batch_size = 3  # batches that straddle the ranks' class shards
    stages = {s.name: s for s in plan(config, load_dataset(config.data).fingerprint)}

    alone = _mdd_run(config, tmp_path)
    assert alone.returncode == 0, alone.stderr[-3000:]
    weights = load_file(stages["finetune"].folder / "ema.safetensors")
    alone_set = read_surrogate(stages["sample"].folder / "data")
    for name in ("finetune", "sample", "diagnose", "evaluate"):
        shutil.rmtree(stages[name].folder)  # the base stays: both runs tune the same one

    split = _mdd_run(config, tmp_path, "--nproc", "2")
    assert split.returncode == 0, split.stderr[-12000:]
    split_weights = load_file(stages["finetune"].folder / "ema.safetensors")
    assert split_weights.keys() == weights.keys()
    for name, tensor in weights.items():
        torch.testing.assert_close(split_weights[name], tensor, rtol=1e-4, atol=1e-5)
    split_set = read_surrogate(stages["sample"].folder / "data")
    assert torch.equal(split_set.labels, alone_set.labels)
    assert (split_set.images.int() - alone_set.images.int()).abs().max() <= 2

    # One parent run, rank 0's, with the stage runs under it; the fine-tune's series is the
    # world's mean loss.
    client = MlflowClient(tracking_uri=config.tracking.uri)
    experiment = client.get_experiment_by_name(config.tracking.experiment)
    (parent,) = client.search_runs([experiment.experiment_id], "tags.`mdd.world_size` = '2'")
    assert parent.info.status == "FINISHED"
    children = client.search_runs(
        [experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
    )
    tuning = next(run for run in children if run.data.tags["mdd.stage"] == "finetune")
    assert tuning.data.tags["mdd.cached"] == "False"
    assert client.get_metric_history(tuning.info.run_id, "finetune/loss")
