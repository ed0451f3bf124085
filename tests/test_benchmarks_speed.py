"""benchmarks/speed.py keeps working: its --quick run writes every ratio it promises.

Speed targets are measured and printed by the benchmark itself, never asserted here:
a timed unit test on a shared CI machine would fail by chance.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mdd.eval.levers import can_compile, compile_pays

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "speed.py"
RATIOS = {
    "finetune_with_over_without_criteria",
    "criteria_loop_over_ring_buffer_d196",
    "criteria_loop_over_ring_buffer_d4096",
    "finetune_encoding_over_cached",
    "sampling_batched_over_one_at_a_time",
    "sweep_fresh_processes_over_shared_core",
    "eval_reference_over_mdd_dc-ipc10",
    "eval_a88e2ab_over_mdd_dc-ipc10",
}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory, tiny_fmnist: Path) -> tuple[dict, str]:
    out = tmp_path_factory.mktemp("speed") / "speed.json"
    command = [sys.executable, str(SCRIPT), "--quick", "--device", "cpu", "--json", str(out)]
    # Benchmark 5 runs real sweep trials: on the tiny stand-in, with a small validation split.
    command += ["--set", f"data.root={tiny_fmnist}", "--set", "data.val_per_class=5"]
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=1500,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text()), done.stdout


def test_quick_run_writes_all_ratios_as_positive_finite_numbers(quick_run):
    results, _ = quick_run
    assert set(results["ratios"]) == RATIOS
    for name, value in results["ratios"].items():
        assert isinstance(value, float) and math.isfinite(value) and value > 0, name


def test_ratios_are_computed_from_the_reported_absolute_numbers(quick_run):
    results, _ = quick_run
    ratios, finetune, sampling = results["ratios"], results["finetune"], results["sampling"]
    assert ratios["finetune_with_over_without_criteria"] == pytest.approx(
        finetune["with_criteria"]["ms_per_step"] / finetune["without_criteria"]["ms_per_step"]
    )
    assert ratios["finetune_encoding_over_cached"] == pytest.approx(
        finetune["with_criteria_encoding_each_batch"]["ms_per_step"]
        / finetune["with_criteria"]["ms_per_step"]
    )
    for name in ("d196", "d4096"):
        criteria = results["criteria"][name]
        assert ratios[f"criteria_loop_over_ring_buffer_{name}"] == pytest.approx(
            criteria["loop_ms_per_step"] / criteria["ring_buffer_ms_per_step"]
        )
    assert ratios["sampling_batched_over_one_at_a_time"] == pytest.approx(
        sampling["batched"]["images_per_s"] / sampling["one_at_a_time"]["images_per_s"]
    )
    sweep = results["sweep"]
    assert ratios["sweep_fresh_processes_over_shared_core"] == pytest.approx(
        sweep["fresh"]["seconds"] / sweep["shared"]["seconds"]
    )
    assert sweep["fresh"]["seconds"] == pytest.approx(sum(sweep["fresh"]["seconds_per_trial"]))
    evaluation = results["evaluation"]["dc-ipc10"]
    assert ratios["eval_reference_over_mdd_dc-ipc10"] == pytest.approx(
        evaluation["arms"]["reference"]["projected_full_s"]
        / evaluation["arms"]["mdd"]["projected_full_s"]
    )
    assert ratios["eval_a88e2ab_over_mdd_dc-ipc10"] == pytest.approx(
        evaluation["arms"]["a88e2ab"]["projected_full_s"]
        / evaluation["arms"]["mdd"]["projected_full_s"]
    )


def test_evaluation_arms_differ_in_allocator_and_test_schedule_only(quick_run):
    results, _ = quick_run
    arms = results["evaluation"]["dc-ipc10"]["arms"]
    assert (arms["reference"]["allocator"], arms["mdd"]["allocator"]) == ("system", "mdd")
    # The DC protocol tested 10 times in 1000 epochs before; now once, after the last.
    assert (arms["reference"]["full_tests"], arms["mdd"]["full_tests"]) == (10, 1)
    assert arms["reference"]["epochs"] == arms["mdd"]["epochs"]
    assert arms["reference"]["full_epochs"] == arms["mdd"]["full_epochs"] == 1000
    assert not arms["reference"]["batched"] and not arms["mdd"]["batched"]  # a CPU: apart
    # The a88e2ab arm is mdd with every lever off; mdd's arm takes what auto picks for the
    # full protocol (1000 epochs: long enough to compile), whatever the shortened length.
    off = {"precision": "fp32", "compiled": 0, "processes": 1}
    assert {k: arms["a88e2ab"]["levers"][k] for k in off} == off
    assert arms["a88e2ab"]["allocator"] == "mdd" and arms["a88e2ab"]["full_tests"] == 1
    assert arms["mdd"]["levers"]["compiled"] == int(can_compile() and compile_pays())
    for arm in arms.values():  # two lengths give the start and the per-epoch time
        assert arm["short_run"]["epochs"] * 2 == arm["epochs"]
        assert arm["projected_full_s"] >= arm["per_epoch_s"] * 1000


def test_sweep_arms_run_the_same_trials_and_the_shared_one_loads_once(quick_run):
    results, _ = quick_run
    grid, sweep = results["settings"]["sweep"], results["sweep"]
    trials = len(grid["ipc"]) * len(grid["lambda_r"]) * len(grid["guidance"])
    assert sweep["shared"]["trials"] == sweep["fresh"]["trials"] == trials
    assert (sweep["shared"]["data_loads"], sweep["shared"]["base_loads"]) == (1, 1)
    # One fine-tuning per lambda_r value; every other trial reuses one (IPC, guidance differ).
    assert sweep["shared"]["finetunes_reused"] == trials - len(grid["lambda_r"])


def test_benchmark_runs_the_experiment_sizes_and_the_default_sample_batch(quick_run):
    results, _ = quick_run
    settings = results["settings"]
    assert settings["preset"] == "latent-s"
    assert settings["latent_shape"] == [4, 7, 7]
    assert settings["batch_size"] == 32
    assert (settings["lambda_r"], settings["lambda_d"], settings["memory_size"]) == (
        0.002,
        0.008,
        64,
    )
    assert results["criteria"]["d196"]["dim"] == 196
    assert results["criteria"]["d4096"]["dim"] == 4096
    assert results["sampling"]["batched"]["batch_size"] == 250
    assert results["sampling"]["one_at_a_time"]["batch_size"] == 1


def test_printed_table_names_the_hardware_and_every_ratio(quick_run):
    results, stdout = quick_run
    assert f"torch   {torch.__version__}" in stdout
    assert results["hardware"]["torch_version"] == torch.__version__
    assert results["hardware"]["device"] == "cpu"
    for label in (
        "fine-tune step time, with / without criteria",
        "criteria time, loop / ring buffer, D = 4096",
        "fine-tune step time, encoding / cached",
        "sampling images/s, batched / one at a time",
        "sweep wall time, fresh processes / shared",
        "evaluation, reference / mdd, dc-ipc10",
    ):
        assert label in stdout
