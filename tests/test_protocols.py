"""Protocol presets (epochs by IPC, learning-rate milestones, overrides) and training under them."""

from pathlib import Path

import numpy as np
import pytest
import torch

from mdd.config import load_config
from mdd.errors import ConfigError, DataError
from mdd.eval.protocols import lr_milestones, protocol_for, resolve_protocol
from mdd.eval.train import EvalResult, evaluate_repeats


def train_and_evaluate(network: str, *sets: torch.Tensor, on_epoch=None, **kwargs) -> EvalResult:
    """One network through ``evaluate_repeats``, as a run trains each of its repeats."""
    callback = None if on_epoch is None else lambda r, epoch, metrics: on_epoch(epoch, metrics)
    repeated = evaluate_repeats(
        network, *sets, repeats=1, batch_repeats=False, on_epoch=callback, **kwargs
    )
    return repeated.runs[0]


def test_dc_protocol_is_the_dc_dsa_fashion_mnist_setting() -> None:
    p = resolve_protocol("dc", ipc=10)
    assert (p.epochs, p.batch_size, p.lr, p.momentum, p.weight_decay) == (
        1000,
        256,
        0.01,
        0.9,
        5e-4,
    )
    assert (p.mean, p.std, p.augmentation, p.lr_decay) == ((0.2861,), (0.3530,), "dsa", 0.1)
    assert lr_milestones(p) == [500]
    assert (p.evaluations, p.eval_every) == (1, 1000)  # tested after the last epoch, as DC


@pytest.mark.parametrize(
    ("ipc", "epochs", "milestones", "eval_every"),
    [
        (1, 2000, [1333, 1666], 20),
        (10, 2000, [1333, 1666], 20),
        (20, 1500, [1000, 1250], 15),
        (50, 1500, [1000, 1250], 15),
        (100, 1000, [666, 833], 10),
    ],
)
def test_idc_epochs_and_milestones_follow_the_ipc(
    ipc: int, epochs: int, milestones: list[int], eval_every: int
) -> None:
    p = resolve_protocol("idc", ipc=ipc)
    assert p.epochs == epochs
    assert lr_milestones(p) == milestones  # 2/3 and 5/6 of training, floored as IDC does
    assert p.lr_decay == 0.2
    assert p.eval_every == eval_every  # every 1/100 of training
    assert (p.batch_size, p.image_size, p.augmentation) == (64, 224, "idc")


def test_proxy_protocol_is_short_and_evaluates_often_on_the_validation_split() -> None:
    p = resolve_protocol("proxy", ipc=10)
    assert (p.epochs, p.eval_every, p.eval_split) == (200, 20, "val")
    assert lr_milestones(p) == [100]


def test_overrides_replace_only_the_values_given() -> None:
    p = resolve_protocol("dc", ipc=10, overrides={"epochs": 300, "batch_size": None, "lr": 0.05})
    assert (p.epochs, p.batch_size, p.lr) == (300, 256, 0.05)
    assert lr_milestones(p) == [150]
    assert p.eval_every == 300  # dc tests once, after the last epoch


def test_milestones_scale_with_overridden_epochs() -> None:
    p = resolve_protocol("idc", ipc=10, overrides={"epochs": 300})
    assert lr_milestones(p) == [200, 250]
    assert p.eval_every == 3


def test_unknown_protocol_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="dc, idc, proxy"):
        resolve_protocol("kip", ipc=10)


def test_unknown_override_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="momentum"):
        resolve_protocol("dc", ipc=10, overrides={"momentum": 0.5})


# Training under a protocol (mdd.eval.train): tiny 8 px sets, a few epochs.


def _tiny_sets(n_train: int = 20, n_test: int = 30, classes: int = 4, channels: int = 1):
    g = torch.Generator().manual_seed(0)
    train = torch.randint(0, 256, (n_train, channels, 8, 8), generator=g, dtype=torch.uint8)
    test = torch.randint(0, 256, (n_test, channels, 8, 8), generator=g, dtype=torch.uint8)
    return train, torch.arange(n_train) % classes, test, torch.arange(n_test) % classes


def _tiny_protocol(epochs: int = 2):
    overrides = {"epochs": epochs, "batch_size": 8, "evaluations": epochs}
    return resolve_protocol("dc", ipc=5, overrides=overrides)


def test_train_and_evaluate_returns_a_consistent_result() -> None:
    train, train_labels, test, test_labels = _tiny_sets()
    seen = []
    result = train_and_evaluate(
        "convnet3",
        train,
        train_labels,
        test,
        test_labels,
        protocol=_tiny_protocol(),
        num_classes=4,
        seed=0,
        device="cpu",
        on_epoch=lambda epoch, metrics: seen.append((epoch, dict(metrics))),
    )
    confusion = np.array(result.confusion)
    assert confusion.sum() == 30
    assert confusion.sum(axis=1).tolist() == [8, 8, 7, 7]  # test images per true class
    per_class = 100.0 * np.diag(confusion) / confusion.sum(axis=1)
    np.testing.assert_allclose(result.per_class_acc, per_class)
    assert result.last_acc == pytest.approx(100.0 * np.trace(confusion) / 30)
    assert [epoch for epoch, _, _ in result.history] == [1, 2]  # evaluated every epoch
    assert result.last_acc == result.history[-1][2]
    assert result.best_acc == max(acc for _, _, acc in result.history)
    assert result.best_acc == dict((e, a) for e, _, a in result.history)[result.best_epoch]
    # The callback sees every epoch; the lr drops x0.1 after the milestone (epoch 1 of 2).
    assert [epoch for epoch, _ in seen] == [1, 2]
    assert [m["lr"] for _, m in seen] == pytest.approx([0.01, 0.001])
    assert [m["acc"] for _, m in seen] == [acc for _, _, acc in result.history]
    assert [m["train_loss"] for _, m in seen] == [loss for _, loss, _ in result.history]


def test_training_is_reproducible_from_the_seed() -> None:
    sets = _tiny_sets()
    kwargs = dict(protocol=_tiny_protocol(), num_classes=4, device="cpu")
    a = train_and_evaluate("convnet3", *sets, seed=3, **kwargs)
    b = train_and_evaluate("convnet3", *sets, seed=3, **kwargs)
    c = train_and_evaluate("convnet3", *sets, seed=4, **kwargs)
    assert a.history == b.history
    assert a.history != c.history


def test_one_evaluation_tests_only_after_the_last_epoch_and_changes_no_number() -> None:
    sets = _tiny_sets()
    often = resolve_protocol(
        "dc", ipc=5, overrides={"epochs": 4, "batch_size": 8, "evaluations": 4}
    )
    once = resolve_protocol("dc", ipc=5, overrides={"epochs": 4, "batch_size": 8, "evaluations": 1})
    assert (often.eval_every, once.eval_every) == (1, 4)
    kwargs = dict(num_classes=4, seed=2, device="cpu")
    a = train_and_evaluate("convnet3", *sets, protocol=often, **kwargs)
    b = train_and_evaluate("convnet3", *sets, protocol=once, **kwargs)
    assert [epoch for epoch, _, _ in a.history] == [1, 2, 3, 4]
    assert b.history == [a.history[-1]]  # testing in between draws no randomness
    assert (b.last_acc, b.best_acc, b.best_epoch) == (a.last_acc, a.last_acc, 4)
    assert b.confusion == a.confusion


def test_an_exception_from_the_epoch_callback_stops_training() -> None:
    class Pruned(Exception):
        pass

    calls = []

    def prune(epoch: int, metrics: dict) -> None:
        calls.append(epoch)
        raise Pruned

    with pytest.raises(Pruned):
        train_and_evaluate(
            "convnet3",
            *_tiny_sets(),
            protocol=_tiny_protocol(epochs=5),
            num_classes=4,
            seed=0,
            device="cpu",
            on_epoch=prune,
        )
    assert calls == [1]


def test_a_network_learns_a_separable_toy_task() -> None:
    # Class 0 is bright in the top half, class 1 in the bottom half: DSA's horizontal flip,
    # small crops and rotations keep that, so the test set should be classified perfectly.
    images = torch.zeros(16, 1, 8, 8, dtype=torch.uint8)
    labels = torch.arange(16) % 2
    images[labels == 0, :, :4] = 255
    images[labels == 1, :, 4:] = 255
    protocol = resolve_protocol("dc", ipc=8, overrides={"epochs": 30, "lr": 0.05})
    result = train_and_evaluate(
        "convnet3",
        images,
        labels,
        images,
        labels,
        protocol=protocol,
        num_classes=2,
        seed=0,
        device="cpu",
    )
    assert result.last_acc == 100.0


def test_evaluate_repeats_reports_numpy_mean_and_std_over_seeded_runs() -> None:
    sets = _tiny_sets()
    kwargs = dict(protocol=_tiny_protocol(), num_classes=4, device="cpu")
    repeated = evaluate_repeats("convnet3", *sets, repeats=3, seed=10, **kwargs)
    last = [run.last_acc for run in repeated.runs]
    best = [run.best_acc for run in repeated.runs]
    assert repeated.last_acc_mean == pytest.approx(np.mean(last))
    assert repeated.last_acc_std == pytest.approx(np.std(last))
    assert repeated.best_acc_mean == pytest.approx(np.mean(best))
    assert repeated.best_acc_std == pytest.approx(np.std(best))
    np.testing.assert_allclose(
        repeated.per_class_acc_mean, np.mean([run.per_class_acc for run in repeated.runs], 0)
    )
    assert np.array(repeated.confusion).sum() == 3 * 30
    # Run r is the single run with seed 10 + r.
    single = train_and_evaluate("convnet3", *sets, seed=11, **kwargs)
    assert repeated.runs[1].history == single.history


def test_float_images_are_a_data_error() -> None:
    train, train_labels, test, test_labels = _tiny_sets()
    with pytest.raises(DataError, match="uint8"):
        train_and_evaluate(
            "convnet3",
            train.float(),
            train_labels,
            test,
            test_labels,
            protocol=_tiny_protocol(),
            num_classes=4,
            seed=0,
            device="cpu",
        )


def test_idc_protocol_refuses_images_of_another_size() -> None:
    with pytest.raises(ConfigError, match="224 px"):
        train_and_evaluate(
            "convnet3",
            *_tiny_sets(channels=3),
            protocol=resolve_protocol("idc", ipc=10),
            num_classes=4,
            seed=0,
            device="cpu",
        )


def test_protocol_normalisation_must_fit_the_channels() -> None:
    with pytest.raises(ConfigError, match="normalises 3 channel"):
        train_and_evaluate(
            "convnet3",
            *_tiny_sets(),
            protocol=resolve_protocol("idc", ipc=10),
            num_classes=4,
            seed=0,
            device="cpu",
        )


def test_the_eval_section_sets_the_number_of_evaluations() -> None:
    experiment = Path(__file__).resolve().parents[1] / "experiments" / "fashion_mnist.yaml"
    config = load_config(experiment, ["eval.evaluations=10"])
    assert protocol_for(config.eval, config.data.dataset, ipc=10).eval_every == 100
    default = load_config(experiment)
    assert protocol_for(default.eval, default.data.dataset, ipc=10).eval_every == 1000
