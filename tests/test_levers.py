"""Each ``auto`` of the evaluation levers is decided by the device, the CPU and the run's length."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import mdd.eval.levers as levers
from mdd.errors import ConfigError
from mdd.eval.levers import COMPILE_MIN_STEPS, resolve_levers
from mdd.eval.networks import create_network
from mdd.eval.protocols import resolve_protocol
from mdd.eval.train import RepeatJob, train_group

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
LONG, SHORT = COMPILE_MIN_STEPS, COMPILE_MIN_STEPS - 1


def _auto(device: torch.device = CPU, steps: int = LONG, repeats: int = 3, batched: bool = False):
    return resolve_levers(
        precision="auto", compile="auto", workers="auto", device=device, repeats=repeats,
        steps=steps, batched=batched,
    )  # fmt: skip


@pytest.fixture
def two_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(levers.torch, "get_num_threads", lambda: 2)


@pytest.mark.parametrize(
    ("fast_bf16", "flags", "compiled"),
    [(True, ["avx2", "avx512f", "avx512_bf16"], True), (False, ["avx2", "avx512f"], False),
     (False, ["avx2"], True)],
)  # fmt: skip
def test_a_long_cpu_run_compiles_and_spreads_its_repeats_where_that_was_measured_to_pay(
    two_threads: None,
    monkeypatch: pytest.MonkeyPatch,
    fast_bf16: bool,
    flags: list[str],
    compiled: bool,
) -> None:
    monkeypatch.setattr(levers, "cpu_has_fast_bf16", lambda: fast_bf16)
    monkeypatch.setattr(levers, "cpu_flags", lambda: flags)
    monkeypatch.setattr(levers, "can_compile", lambda: True)
    chosen = _auto()
    # bf16 with fast bf16; fp32 compiled without AVX-512 (AVX2 only); eager fp32 otherwise.
    assert (chosen.compiled, chosen.bf16) == (compiled, fast_bf16)
    if compiled:
        assert (chosen.processes, chosen.threads) == (3, 1)  # 3 repeats, up to 2 per core
        assert _auto(repeats=7).processes == 4
    else:
        assert (chosen.processes, chosen.threads) == (1, 2)


def test_a_short_run_stays_eager_fp32_and_in_this_process(
    two_threads: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(levers, "cpu_has_fast_bf16", lambda: True)
    chosen = _auto(steps=SHORT)
    assert (chosen.bf16, chosen.compiled, chosen.processes, chosen.threads) == (False, False, 1, 2)


def test_cuda_keeps_fp32_eager_and_one_process(two_threads: None) -> None:
    chosen = _auto(device=CUDA, batched=True)
    assert (chosen.bf16, chosen.compiled, chosen.processes) == (False, False, 1)


def test_one_core_or_one_repeat_trains_in_this_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(levers, "cpu_has_fast_bf16", lambda: True)
    monkeypatch.setattr(levers, "can_compile", lambda: True)
    monkeypatch.setattr(levers.torch, "get_num_threads", lambda: 1)
    assert _auto().processes == 1
    monkeypatch.setattr(levers.torch, "get_num_threads", lambda: 2)
    assert _auto(repeats=1).processes == 1


def test_settings_that_cannot_work_are_refused_with_a_hint(
    two_threads: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(levers, "cpu_has_fast_bf16", lambda: False)
    base = dict(precision="fp32", compile=False, workers=1, device=CPU, repeats=3, steps=LONG,
                batched=False)  # fmt: skip
    for change, message in [
        ({"precision": "bf16"}, "neither AVX512-BF16 nor AMX"),
        ({"workers": 0}, "at least 1"),
        ({"workers": 2, "device": CUDA}, "for CPUs"),
        ({"workers": 2, "batched": True}, "both ask for the repeats"),
        ({"compile": True, "batched": True}, "compile single networks"),
    ]:
        with pytest.raises(ConfigError, match=message):
            resolve_levers(**{**base, **change})


def test_a_job_counts_its_training_steps() -> None:
    protocol = dataclasses.replace(resolve_protocol("dc", 10), epochs=1000, batch_size=256)
    images = torch.zeros(500, 1, 28, 28, dtype=torch.uint8)
    job = RepeatJob("convnet3", images, torch.zeros(500), images, torch.zeros(500), protocol,
                    10, CPU, "instance")  # fmt: skip
    assert job.steps == 2000  # 500 images in batches of 256: 2 steps an epoch


def _trained(**kwargs) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (16, 1, 28, 28), dtype=torch.uint8, generator=g)
    protocol = dataclasses.replace(resolve_protocol("dc", 10), epochs=3)
    nets, _ = train_group(
        "convnet3", images, torch.arange(16) % 4, protocol=protocol, num_classes=4, seeds=[0],
        device=CPU, norm="instance", evaluate=None, on_epoch=None, progress=False, **kwargs,
    )  # fmt: skip
    return {k: v.detach().clone() for k, v in nets[0].state_dict().items()}


def _gap(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """L2 distance between two sets of weights."""
    return sum(float((a[k] - b[k]).square().sum()) for k in a) ** 0.5


def test_compiled_and_bf16_training_reach_the_weights_and_stay_near_fp32_eager() -> None:
    torch.manual_seed(0)  # train_group seeds the initialisation with seeds[0] = 0 alike
    initial = create_network("convnet3", 4, 1, 28).state_dict()
    eager = _trained()
    moved = _gap(eager, initial)  # how far 3 epochs carried the weights
    # Compiled fp32 fuses the elementwise work: the same arithmetic up to rounding
    # (measured: 0.5 % of the distance travelled).
    compiled_gap = _gap(_trained(compiled=True), eager)
    assert compiled_gap < 0.02 * moved
    # bf16 changed the arithmetic by more than rounding (the positive control: it reached
    # the weights), not where the training went (measured: 7.5 %).
    bf16_gap = _gap(_trained(bf16=True), eager)
    assert compiled_gap < bf16_gap < 0.25 * moved
