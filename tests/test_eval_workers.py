"""Evaluation repeats in worker processes: the numbers of one process, errors that say so."""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import signal
import time

import pytest
import torch

from mdd.errors import Pruned, StageError
from mdd.eval.protocols import resolve_protocol
from mdd.eval.train import evaluate_repeats

DEADLINE_S = 120  # spawned workers import torch: slow on a loaded machine, never this slow


def _sets(classes: int = 4) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (24, 1, 28, 28), dtype=torch.uint8, generator=g)
    test = torch.randint(0, 256, (40, 1, 28, 28), dtype=torch.uint8, generator=g)
    return images, torch.arange(24) % classes, test, torch.arange(40) % classes


def _evaluate(workers: int, network: str = "convnet3", **kwargs) -> object:
    protocol = dataclasses.replace(resolve_protocol("dc", 10), epochs=4, evaluations=2)
    return evaluate_repeats(
        network, *_sets(), protocol=protocol, num_classes=4, repeats=3, seed=5,
        device="cpu", workers=workers, **kwargs,
    )  # fmt: skip


@pytest.fixture
def one_thread():
    # Workers run with the parent's threads shared out (here 1 each); the comparison in this
    # process uses the same count, so both sum in the same order.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _no_workers_left() -> bool:
    deadline = time.monotonic() + DEADLINE_S
    while multiprocessing.active_children() and time.monotonic() < deadline:
        time.sleep(0.1)
    return not multiprocessing.active_children()


def test_repeats_in_worker_processes_are_the_runs_of_one_process(one_thread: None) -> None:
    seen: list[tuple[int, int]] = []
    apart = _evaluate(1)
    together = _evaluate(3, on_epoch=lambda r, epoch, metrics: seen.append((r, epoch)))
    assert together.levers["processes"] == 3 and apart.levers["processes"] == 1
    for a, b in zip(apart.runs, together.runs, strict=True):
        assert a.history == b.history  # train losses and accuracies, bit for bit
        assert a.confusion == b.confusion
    # Every epoch of every repeat reached the parent's callback.
    assert sorted(seen) == [(r, e) for r in range(3) for e in range(1, 5)]
    assert _no_workers_left()


def test_an_exception_in_on_epoch_stops_the_workers_and_propagates(one_thread: None) -> None:
    def prune(repeat: int, epoch: int, metrics: dict[str, float]) -> None:
        raise Pruned("pruned at the first epoch")

    with pytest.raises(Pruned):
        _evaluate(2, on_epoch=prune)
    assert _no_workers_left()


def test_a_failing_worker_ends_the_evaluation_with_its_message(one_thread: None) -> None:
    # The network name is checked where the network is built, inside the worker.
    with pytest.raises(StageError, match="unknown network 'convnet99'"):
        _evaluate(2, network="convnet99")
    assert _no_workers_left()


def test_a_killed_worker_ends_the_evaluation_with_its_exit_code(one_thread: None) -> None:
    def kill_workers(repeat: int, epoch: int, metrics: dict[str, float]) -> None:
        for child in multiprocessing.active_children():
            os.kill(child.pid, signal.SIGKILL)

    with pytest.raises(StageError, match="exit code -9"):
        _evaluate(2, on_epoch=kill_workers)
    assert _no_workers_left()
