"""Set-level statistics, against hand-computed values and Student's t table."""

from __future__ import annotations

import math

import pytest

from mdd.stats import compare, set_level, two_sided_t_p


@pytest.mark.parametrize(
    ("t", "df"), [(12.706, 1), (4.303, 2), (3.182, 3), (2.776, 4), (2.571, 5), (2.228, 10)]
)
def test_the_t_tables_5_percent_points_give_p_0_05(t: float, df: int) -> None:
    assert two_sided_t_p(t, df) == pytest.approx(0.05, abs=2e-4)
    assert two_sided_t_p(-t, df) == two_sided_t_p(t, df)


def test_t_zero_has_p_one_and_large_t_has_p_near_zero() -> None:
    assert two_sided_t_p(0.0, 3) == pytest.approx(1.0)
    assert two_sided_t_p(1e6, 4) < 1e-12


def test_set_level_is_the_mean_and_sample_std_of_the_sets() -> None:
    level = set_level([74.0, 74.4, 74.2])
    assert (level.mean, level.std, level.sets) == (pytest.approx(74.2), pytest.approx(0.2), 3)
    assert math.isnan(set_level([74.0]).std)


def test_a_paired_margin_beyond_two_set_stds_is_above_with_its_t_test() -> None:
    # differences 1.0, 0.8, 1.0: mean 0.9333, sd 0.11547, se 0.066667, t 14.0 on 2 df;
    # set stds 0.2 and 0.30551, so level below 0.61101.
    result = compare([74.0, 74.4, 74.2], [73.0, 73.6, 73.2])
    assert result.margin == pytest.approx(0.93333, abs=1e-4)
    assert result.t == pytest.approx(14.0, rel=1e-6)
    assert result.df == 2
    assert result.threshold == pytest.approx(0.61101, abs=1e-4)
    assert result.p == pytest.approx(0.00507, abs=5e-5)
    assert result.verdict == "above"


def test_a_margin_under_two_set_stds_is_level_against_one_deterministic_set() -> None:
    # 78, 79, 80 against 79.5: differences -1.5, -0.5, 0.5, t -0.866; threshold 2 x 1.0.
    result = compare([78.0, 79.0, 80.0], [79.5])
    assert result.margin == pytest.approx(-0.5)
    assert result.t == pytest.approx(-0.86603, abs=1e-4)
    assert result.threshold == pytest.approx(2.0)
    assert result.verdict == "level"
    assert compare([70.0, 71.0, 72.0], [79.5]).verdict == "below"


def test_one_set_cannot_be_compared() -> None:
    with pytest.raises(ValueError, match="two sets"):
        compare([74.0], [73.0, 73.5])
