"""The quality grid's cells as ``mdd.cells`` configures them: a committed result file's
settings hash is what its column, IPC and overrides give today, so a rerun reads it back."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from mdd.cells import PUBLISHED_WEIGHTS, STANDARD, cell_config, column_argument, result_hash

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
FINGERPRINT = "376864d5061e4085"  # Fashion-MNIST's, as the shipped base's base.json records it
DECODED = ["sample.through_autoencoder=true"]


@pytest.mark.parametrize(
    ("folder", "column", "overrides"),
    [
        ("fashion_mnist_levers_bf16", "herding", []),
        ("fashion_mnist_sets", "minimax", []),
        ("fashion_mnist_autoencoded", "herding", DECODED),
        (
            "fashion_mnist_autoencoded_10ep",
            "herding",
            [*DECODED, "pretrain.checkpoint=null", "autoencoder.epochs=10", "pretrain.epochs=0.01"],
        ),
    ],
)
def test_a_committed_cell_hashes_as_its_column_and_overrides_configure_it_today(
    folder: str, column: str, overrides: list[str]
) -> None:
    record = json.loads((RESULTS / folder / f"{column}-ipc10.json").read_text())
    weights = PUBLISHED_WEIGHTS if column == "minimax" else None
    config = cell_config(STANDARD, column, 10, weights, overrides)
    assert result_hash(config.to_dict(), FINGERPRINT) == record["config_hash"]
    # The user's overrides come last and reach the config; another setting is another hash.
    other = cell_config(STANDARD, column, 10, weights, [*overrides, "eval.epochs=5"])
    assert (
        other.eval.epochs == 5
        and result_hash(other.to_dict(), FINGERPRINT) != record["config_hash"]
    )


def test_a_cell_takes_the_columns_weights_and_the_given_repeats() -> None:
    config = cell_config(STANDARD, "minimax+real-herding", 10, (0.1, 0.2), repeats=2)
    assert config.composition == "minimax+real-herding" and config.sample.ipc == 10
    assert (config.finetune.lambda_r, config.finetune.lambda_d, config.eval.repeats) == (
        0.1,
        0.2,
        2,
    )
    assert config.name == "quality_fmnist-minimax+real-herding-ipc10"


def test_an_unknown_column_is_an_argument_error_naming_the_grammar() -> None:
    assert column_argument("dit+prototypes+kcenter") == "dit+prototypes+kcenter"
    with pytest.raises(argparse.ArgumentTypeError, match="METHOD"):
        column_argument("dit+nonsense")
