"""The repeats of one evaluation trained side by side in worker processes (CPU).

Each worker is a fresh (spawned) process with its own torch thread count; it trains its
repeats with exactly the code a lone run uses (``mdd.eval.train.train_and_test``), so a
repeat's numbers do not depend on where it ran, as long as the thread count is the same
(``tests/test_eval_workers.py``). Epoch metrics come back through a queue while training
runs, so MLflow logging and a sweep's pruner see them as they would in one process; an
exception in ``on_epoch`` (a pruner's) stops the workers and propagates. A worker that
fails or dies ends the evaluation with a ``StageError`` that names it.
"""

from __future__ import annotations

import queue as queues
import traceback
from typing import TYPE_CHECKING, Any

import torch
import torch.multiprocessing as mp

from mdd.errors import StageError

if TYPE_CHECKING:  # mdd.eval.train imports this module
    from mdd.eval.train import Outcome, RepeatCallback, RepeatJob

POLL_S = 1.0  # how often the parent looks at its workers while no message comes


def _work(job: RepeatJob, items: list[tuple[int, int]], threads: int, out: Any) -> None:
    """Worker body: train each (repeat index, seed) of ``items``, report to ``out``."""
    from mdd.eval.train import train_and_test

    torch.set_num_threads(threads)
    for index, seed in items:
        try:

            def on_epoch(_: int, epoch: int, metrics: dict[str, float], index: int = index):
                out.put(("epoch", index, epoch, metrics))

            (outcome,) = train_and_test(job, [seed], on_epoch)
            # numpy, not a tensor: a shared tensor would need this process alive to be read.
            out.put(("done", index, (outcome.preds.numpy(), outcome.history, outcome.wall_s)))
        except BaseException:
            out.put(("error", index, traceback.format_exc()))
            return


def train_in_processes(
    job: RepeatJob,
    seeds: list[int],
    processes: int,
    threads: int,
    on_epoch: RepeatCallback | None,
) -> list[Outcome]:
    """Train repeat r (seed ``seeds[r]``) in worker ``r % processes``; outcomes in order."""
    from mdd.eval.train import Outcome

    context = mp.get_context("spawn")  # fork would copy OpenMP's threads in a broken state
    out = context.Queue()
    workers = [
        context.Process(
            target=_work,
            args=(job, [(r, seeds[r]) for r in range(w, len(seeds), processes)], threads, out),
            daemon=True,
        )
        for w in range(processes)
    ]
    for worker in workers:
        worker.start()
    outcomes: dict[int, Outcome] = {}
    quiet_after_exit = 0
    try:
        while len(outcomes) < len(seeds):
            try:
                message = out.get(timeout=POLL_S)
            except queues.Empty:
                exited = _check_alive(workers, processes, len(seeds) - len(outcomes))
                # A worker's last messages may still be in the pipe when it has exited.
                quiet_after_exit = quiet_after_exit + 1 if exited else 0
                if quiet_after_exit > 1:
                    raise StageError(
                        "every evaluation worker exited with "
                        f"{len(seeds) - len(outcomes)} repeat(s) unreported"
                    ) from None
                continue
            kind, index = message[0], message[1]
            if kind == "epoch" and on_epoch is not None:
                on_epoch(index, message[2], message[3])
            elif kind == "done":
                preds, history, wall_s = message[2]
                outcomes[index] = Outcome(torch.from_numpy(preds), history, wall_s)
            elif kind == "error":
                raise StageError(
                    f"evaluation worker of repeat {index} (seed {seeds[index]}) failed:\n"
                    f"{message[2]}"
                )
    finally:
        for worker in workers:
            if worker.is_alive():
                worker.terminate()
            worker.join()
    return [outcomes[r] for r in range(len(seeds))]


def _check_alive(workers: list[Any], processes: int, missing: int) -> bool:
    """Raise when a worker failed; whether every worker has exited."""
    for w, worker in enumerate(workers):
        if worker.exitcode is not None and worker.exitcode != 0:
            raise StageError(
                f"evaluation worker {w} of {processes} ended with exit code {worker.exitcode} "
                f"(killed, or out of memory?) with {missing} repeat(s) unreported. Hint: "
                "set eval.workers=1 to train the repeats in this process."
            )
    return all(worker.exitcode == 0 for worker in workers)
