"""DD-Ranking's HLR, IOR, LRS and ARS (mdd/ranking.py) against hand-computed values, and
their table in `mdd report --results`."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from mdd.errors import DataError
from mdd.ranking import augmentation_robust, fraction, label_robust, squash
from mdd.report import write_results_report
from mdd.results import result_path, write_result
from tests.test_report_results import cell_record


def test_squash_maps_minus_one_zero_and_one_to_zero_one_over_e_plus_one_and_one() -> None:
    assert squash(-1.0) == pytest.approx(0.0, abs=1e-12)
    assert squash(1.0) == pytest.approx(1.0)
    # (1 - 1/e) / (e - 1/e) = (e - 1) / (e^2 - 1) = 1 / (e + 1)
    assert squash(0.0) == pytest.approx(1.0 / (math.e + 1.0))


def test_label_robust_scores_of_the_grids_dit_cell_by_hand() -> None:
    # dit 72.61, random 74.25, full 91.72 (IPC 10): HLR = 0.9172 - 0.7261 = 0.1911,
    # IOR = 0.7261 - 0.7425 = -0.0164, x = 0.5 * -0.0164 - 0.5 * 0.1911 = -0.10375,
    # LRS = (e^-0.10375 - e^-1) / (e - e^-1) = (0.901454 - 0.367879) / 2.350402 = 0.227013.
    scores = label_robust(fraction(72.61), fraction(74.25), fraction(91.72))
    assert scores.hlr == pytest.approx(0.1911)
    assert scores.ior == pytest.approx(-0.0164)
    assert scores.lrs == pytest.approx(0.227013, abs=1e-6)


def test_percentages_would_leave_the_unit_interval_which_fractions_keep() -> None:
    # DD-Ranking's code on percent: x = 0.5 * -1.64 - 0.5 * 19.11 = -10.375, LRS = -0.1565.
    assert squash(0.5 * (72.61 - 74.25) - 0.5 * (91.72 - 72.61)) == pytest.approx(-0.1565, abs=1e-4)
    assert 0.0 <= label_robust(0.7261, 0.7425, 0.9172).lrs <= 1.0
    # The extremes: a set as good as the whole data and far above random, and the reverse.
    assert label_robust(1.0, 0.0, 1.0).lrs == pytest.approx(squash(0.5))
    assert label_robust(0.0, 1.0, 1.0).lrs == pytest.approx(0.0, abs=1e-12)


def test_the_weight_moves_lrs_between_recovery_and_improvement() -> None:
    # weight 1: x = IOR = 0.1; weight 0: x = -HLR = -0.2.
    assert label_robust(0.7, 0.6, 0.9, weight=1.0).lrs == pytest.approx(squash(0.1))
    assert label_robust(0.7, 0.6, 0.9, weight=0.0).lrs == pytest.approx(squash(-0.2))
    with pytest.raises(ValueError, match="weight"):
        label_robust(0.7, 0.6, 0.9, weight=1.5)


def test_augmentation_robust_score_by_hand() -> None:
    # x = 0.5 * (0.80 - 0.70) + 0.5 * (0.60 - 0.55) = 0.075,
    # ARS = (e^0.075 - e^-1) / (e - e^-1) = (1.077884 - 0.367879) / 2.350402 = 0.302078.
    assert augmentation_robust(0.80, 0.70, 0.60, 0.55) == pytest.approx(0.302078, abs=1e-6)


def test_an_accuracy_outside_zero_to_hundred_percent_is_refused() -> None:
    for bad in (-1.0, 100.5, float("nan")):
        with pytest.raises(DataError, match="outside"):
            fraction(bad)


def test_the_report_scores_each_set_against_random_of_its_ipc_and_full_of_any(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "fashion_mnist"
    for column, ipc, last in (
        ("dit", 10, 72.61),
        ("random", 10, 74.25),
        ("full", 1, 91.72),
        ("dit", 1, 61.69),  # no random row at IPC 1: no score
    ):
        write_result(result_path(folder, column, ipc), cell_record(column, ipc, last, last))
    markdown = write_results_report(folder, tmp_path / "report")
    section = markdown.split("## DD-Ranking scores", 1)[1].split("##", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| fashion_mnist")]
    assert rows == ["| fashion_mnist | dit | 10 | convnet3 | dc | 0.1911 | -0.0164 | 0.2270 |"]
