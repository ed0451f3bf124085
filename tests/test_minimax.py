"""The minimax criteria and class memories (METHOD.md section 2): hand-computed values,
FIFO eviction, gradients, and the fast ring buffer against plain loop implementations."""

from __future__ import annotations

import math

import pytest
import torch

from mdd.minimax import LoopMinimaxCriteria, MinimaxCriteria

IMPLEMENTATIONS = [MinimaxCriteria, LoopMinimaxCriteria]


def _t(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


def _labels(values: list[int]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.long)


def _unit(rows: list[list[float]]) -> torch.Tensor:
    return torch.nn.functional.normalize(_t(rows), dim=1)


@pytest.mark.parametrize("criteria_class", IMPLEMENTATIONS)
def test_first_step_scores_zero_and_fills_memories(criteria_class):
    criteria = criteria_class(num_classes=2, memory_size=3, lambda_r=1.0, lambda_d=1.0)
    terms = criteria(_t([[1, 0], [0, 1]]), _t([[1, 1], [2, 0]]), _labels([0, 1]))
    assert terms.representativeness.item() == 0.0
    assert terms.diversity.item() == 0.0
    if isinstance(criteria, MinimaxCriteria):
        real, pseudo = criteria.memory_of(0)
        torch.testing.assert_close(real, _unit([[1, 1]]))
        torch.testing.assert_close(pseudo, _unit([[1, 0]]))
        real, pseudo = criteria.memory_of(1)
        torch.testing.assert_close(real, _unit([[2, 0]]))
        torch.testing.assert_close(pseudo, _unit([[0, 1]]))
    else:
        assert [len(criteria.real_memory[c]) for c in (0, 1)] == [1, 1]


@pytest.mark.parametrize("criteria_class", IMPLEMENTATIONS)
def test_two_classes_of_unequal_counts_match_hand_computed_values(criteria_class):
    criteria = criteria_class(num_classes=2, memory_size=4, lambda_r=2.0, lambda_d=3.0)
    # Step 1 fills: real[0] = {(1,0)}, pseudo[0] = {(0,1)}, real[1] = {(0,1)}, pseudo[1] = {(1,0)}.
    criteria(_t([[0, 1], [1, 0]]), _t([[1, 0], [0, 1]]), _labels([0, 1]))
    # Step 2: class 0 predicts (3,4) and (1,0), class 1 predicts (1,1).
    terms = criteria(_t([[3, 4], [1, 0], [1, 1]]), _t([[5, 5], [6, 6], [7, 7]]), _labels([0, 0, 1]))
    # class 0: cos to real (1,0) are 0.6 and 1 -> min 0.6; to pseudo (0,1) 0.8 and 0 -> max 0.8.
    # class 1: cos((1,1), (0,1)) = cos((1,1), (1,0)) = 1/sqrt(2). K = 2.
    # L_r = 2 * ((1 - 0.6) + (1 - 1/sqrt(2))) / 2 = 1.4 - 0.70710678 = 0.69289322
    # L_d = 3 * (0.8 + 1/sqrt(2)) / 2 = 1.5 * 1.50710678 = 2.26066017
    assert terms.representativeness.item() == pytest.approx(0.6928932188134524, abs=1e-12)
    assert terms.diversity.item() == pytest.approx(2.2606601717798214, abs=1e-12)


@pytest.mark.parametrize("criteria_class", IMPLEMENTATIONS)
def test_division_by_all_classes_of_the_batch_including_unscored_ones(criteria_class):
    criteria = criteria_class(num_classes=3, memory_size=4, lambda_r=1.0, lambda_d=1.0)
    criteria(_t([[0, 1]]), _t([[1, 0]]), _labels([0]))
    # Only class 0 has a memory; classes 1 and 2 are new but still count: K = 3.
    terms = criteria(_t([[3, 4], [1, 0], [0, 1]]), _t([[1, 0]] * 3), _labels([0, 1, 2]))
    # class 0: 1 - cos((3,4), (1,0)) = 0.4; cos((3,4), (0,1)) = 0.8.
    assert terms.representativeness.item() == pytest.approx(0.4 / 3, abs=1e-12)
    assert terms.diversity.item() == pytest.approx(0.8 / 3, abs=1e-12)


def _angle(degrees: float) -> list[float]:
    return [math.cos(math.radians(degrees)), math.sin(math.radians(degrees))]


def test_fifo_keeps_the_newest_memory_size_items():
    criteria = MinimaxCriteria(num_classes=2, memory_size=3, lambda_r=1.0, lambda_d=1.0)
    for step in range(5):  # M + 2 single items of class 1
        criteria(_t([_angle(10 * step)]), _t([_angle(10 * step + 5)]), _labels([1]))
    real, pseudo = criteria.memory_of(1)
    torch.testing.assert_close(real, _t([_angle(25), _angle(35), _angle(45)]))
    torch.testing.assert_close(pseudo, _t([_angle(20), _angle(30), _angle(40)]))
    assert criteria.memory_of(0)[0].shape[0] == 0


def test_fifo_evicts_by_loss_value_too():
    criteria = MinimaxCriteria(num_classes=1, memory_size=2, lambda_r=1.0, lambda_d=1.0)
    # real memory after three pushes: (0,1) evicted, (1,0) and (1,1) remain.
    for real in ([0, 1], [1, 0], [1, 1]):
        criteria(_t([[1, 0]]), _t([real]), _labels([0]))
    terms = criteria(_t([[1, 0]]), _t([[1, 0]]), _labels([0]))
    # min cos((1,0), {(1,0), (1,1)}) = 1/sqrt(2); with (0,1) still held it would be 0.
    assert terms.representativeness.item() == pytest.approx(1 - 1 / math.sqrt(2), abs=1e-12)


def test_batch_with_more_items_than_memory_keeps_its_last_ones():
    criteria = MinimaxCriteria(num_classes=3, memory_size=3, lambda_r=1.0, lambda_d=1.0)
    criteria(_t([_angle(1)]), _t([_angle(2)]), _labels([2]))
    angles = [10, 20, 30, 40, 50]
    # Class 2 gets five items interleaved with one item of class 0.
    criteria(
        _t([_angle(a) for a in angles[:2]] + [_angle(90)] + [_angle(a) for a in angles[2:]]),
        _t(
            [_angle(a + 5) for a in angles[:2]] + [_angle(95)] + [_angle(a + 5) for a in angles[2:]]
        ),
        _labels([2, 2, 0, 2, 2, 2]),
    )
    real, pseudo = criteria.memory_of(2)
    torch.testing.assert_close(pseudo, _t([_angle(30), _angle(40), _angle(50)]))
    torch.testing.assert_close(real, _t([_angle(35), _angle(45), _angle(55)]))
    torch.testing.assert_close(criteria.memory_of(0)[1], _t([_angle(90)]))
    # One more item of class 2 evicts the oldest survivor, 30 degrees.
    criteria(_t([_angle(60)]), _t([_angle(65)]), _labels([2]))
    torch.testing.assert_close(criteria.memory_of(2)[1], _t([_angle(40), _angle(50), _angle(60)]))


@pytest.mark.parametrize("criteria_class", IMPLEMENTATIONS)
def test_gradient_flows_to_predictions_only(criteria_class):
    criteria = criteria_class(num_classes=1, memory_size=4, lambda_r=0.0, lambda_d=1.0)
    criteria(_t([[0, 1]]), _t([[1, 0]]), _labels([0]))
    pred = _t([[3, 4]]).requires_grad_()
    real = _t([[1, 1]]).requires_grad_()
    terms = criteria(pred, real, _labels([0]))
    (terms.representativeness + terms.diversity).backward()
    # d cos(p, m) / dp = m / |p| - (p.m) p / |p|^3 = (0, 1)/5 - 4 (3, 4)/125 = (-0.096, 0.072)
    torch.testing.assert_close(pred.grad, _t([[-0.096, 0.072]]))
    assert real.grad is None
    memories = (
        [criteria.real_memory, criteria.pseudo_memory]
        if isinstance(criteria, MinimaxCriteria)
        else criteria.real_memory[0] + criteria.pseudo_memory[0]
    )
    assert not any(memory.requires_grad for memory in memories)


@pytest.mark.parametrize("criteria_class", IMPLEMENTATIONS)
def test_zero_weights_cost_nothing(criteria_class):
    criteria = criteria_class(num_classes=2, memory_size=4, lambda_r=0.0, lambda_d=0.0)
    pred = torch.randn(3, 2, 4, 4, requires_grad=True)
    terms = criteria(pred, torch.randn(3, 2, 4, 4), _labels([0, 1, 1]))
    assert terms.representativeness.item() == 0.0 and terms.diversity.item() == 0.0
    if isinstance(criteria, MinimaxCriteria):
        assert criteria.real_memory.numel() == 0
        assert int(criteria.memory_fill.sum()) == 0
    else:
        assert not any(criteria.real_memory.values())


def test_memories_stay_out_of_the_state_dict_and_reset_empties_them():
    criteria = MinimaxCriteria(num_classes=2, memory_size=4, lambda_r=1.0, lambda_d=1.0)
    criteria(torch.randn(2, 3), torch.randn(2, 3), _labels([0, 1]))
    assert criteria.state_dict() == {}
    assert int(criteria.memory_fill.sum()) == 2
    criteria.reset()
    assert int(criteria.memory_fill.sum()) == 0
    terms = criteria(torch.randn(2, 3), torch.randn(2, 3), _labels([0, 1]))
    assert terms.diversity.item() == 0.0


def test_labels_outside_the_classes_are_rejected():
    criteria = MinimaxCriteria(num_classes=2, memory_size=4, lambda_r=1.0, lambda_d=1.0)
    with pytest.raises(ValueError, match="before label dropout"):
        criteria(torch.randn(2, 3), torch.randn(2, 3), _labels([0, 2]))


def _paper_loop(memories, pred, real, labels, memory_size, lambda_r, lambda_d):
    """The reference code's step, written independently: lists per class, torch.cat, loop."""
    real_memory, pseudo_memory = memories
    loss_r = loss_d = torch.zeros((), dtype=pred.dtype)
    classes = set(labels.tolist())
    for c in classes:
        rows = labels == c
        p = pred[rows].flatten(1)
        if len(pseudo_memory.setdefault(c, [])):
            pos = torch.cat(real_memory[c]).flatten(1)
            neg = torch.cat(pseudo_memory[c]).flatten(1)
            cos_pos = (p @ pos.T) / torch.outer(p.norm(dim=1), pos.norm(dim=1))
            cos_neg = (p @ neg.T) / torch.outer(p.norm(dim=1), neg.norm(dim=1))
            loss_r = loss_r + (1 - cos_pos.min()) * lambda_r / len(classes)
            loss_d = loss_d + cos_neg.max() * lambda_d / len(classes)
        real_memory.setdefault(c, []).extend(real[rows].detach().split(1))
        pseudo_memory[c].extend(pred[rows].detach().split(1))
        while len(real_memory[c]) > memory_size:
            real_memory[c].pop(0)
        while len(pseudo_memory[c]) > memory_size:
            pseudo_memory[c].pop(0)
    return loss_r, loss_d


DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    ),
]


@pytest.mark.parametrize("device", DEVICES)
def test_ring_buffer_matches_loop_implementations_over_many_steps(device):
    # On CUDA, colliding ring-buffer writes would land in any order: this also checks that
    # a batch with more than M items of a class writes each slot once.
    generator = torch.Generator().manual_seed(0)
    num_classes, memory_size, lambda_r, lambda_d = 6, 5, 0.3, 0.7
    fast = MinimaxCriteria(num_classes, memory_size, lambda_r, lambda_d)
    loop = LoopMinimaxCriteria(num_classes, memory_size, lambda_r, lambda_d)
    memories: tuple[dict, dict] = ({}, {})
    scored_steps = 0
    for step in range(50):
        batch = 8
        high = 3 if step % 7 == 0 else num_classes  # some steps see few classes
        labels = torch.randint(0, high, (batch,), generator=generator)
        if step % 11 == 5:
            labels[:] = 1  # more than M items of one class in one batch
        pred = torch.randn(batch, 2, 3, 2, generator=generator, dtype=torch.float64)
        real = torch.randn(batch, 2, 3, 2, generator=generator, dtype=torch.float64)
        results = []
        for run in (fast, loop, None):
            leaf = pred.clone().requires_grad_()
            if run is None:
                terms = _paper_loop(memories, leaf, real, labels, memory_size, lambda_r, lambda_d)
            elif run is fast:
                terms = run(leaf.to(device), real.to(device), labels.to(device))
            else:
                terms = run(leaf, real, labels)
            total = terms[0] + terms[1]
            grad = torch.autograd.grad(total, leaf)[0] if total.requires_grad else None
            results.append((terms[0].detach().cpu(), terms[1].detach().cpu(), grad))
        reference = results[2]
        scored_steps += int(reference[0].item() != 0.0)
        for result in results[:2]:
            torch.testing.assert_close(result[0], reference[0], atol=1e-6, rtol=0)
            torch.testing.assert_close(result[1], reference[1], atol=1e-6, rtol=0)
            if reference[2] is None:
                assert result[2] is None or bool((result[2] == 0).all())
            else:
                torch.testing.assert_close(result[2], reference[2], atol=1e-6, rtol=0)
    assert scored_steps > 40
    for c in range(num_classes):
        real_fast, pseudo_fast = (memory.cpu() for memory in fast.memory_of(c))
        expected_real = torch.nn.functional.normalize(torch.cat(memories[0][c]).flatten(1))
        expected_pseudo = torch.nn.functional.normalize(torch.cat(memories[1][c]).flatten(1))
        torch.testing.assert_close(real_fast, expected_real)
        torch.testing.assert_close(pseudo_fast, expected_pseudo)
