"""Set-level statistics: is one method's surrogate set better than another's, or level?

A cell's "mean ± std" over its evaluation networks measures the networks' noise on one set;
it says nothing of how much another draw of the set (other sampling noise, another random
selection) would move the number. With several sets per cell, each evaluated by the same
networks' seeds, set k of one column and set k of another form a pair, and the margin
between the columns is judged against the spread of the sets themselves: a margin under two
set-level stds is called level, whatever its sign.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

LEVEL_STDS = 2.0  # a margin under this many set-level stds is "level"


def two_sided_t_p(t: float, df: int) -> float:
    """P(|T| >= |t|) for Student's t with ``df`` degrees of freedom.

    Abramowitz & Stegun 26.7.3 (odd df) and 26.7.4 (even df): finite sums in
    theta = atan(|t| / sqrt(df)), exact for integer df.
    """
    if df < 1:
        raise ValueError(f"df {df}: at least 1")
    theta = math.atan(abs(t) / math.sqrt(df))
    cos2, sin = math.cos(theta) ** 2, math.sin(theta)
    if df % 2 == 1:
        total = term = math.cos(theta) if df > 1 else 0.0
        for power in range(3, df - 1, 2):  # cos^1 ... cos^(df-2)
            term *= cos2 * (power - 1) / power
            total += term
        inside = 2 / math.pi * (theta + sin * total)
    else:
        total = term = 1.0
        for power in range(2, df - 1, 2):  # cos^0 ... cos^(df-2)
            term *= cos2 * (power - 1) / power
            total += term
        inside = sin * total
    return max(0.0, 1.0 - inside)


@dataclass(frozen=True)
class SetLevel:
    """A cell over its sets: the mean and sample std of the per-set accuracies."""

    mean: float
    std: float
    sets: int


def set_level(accuracies: list[float]) -> SetLevel:
    """Mean and sample std (n - 1) of one accuracy per set; one set has std NaN."""
    std = statistics.stdev(accuracies) if len(accuracies) > 1 else math.nan
    return SetLevel(statistics.fmean(accuracies), std, len(accuracies))


@dataclass(frozen=True)
class Comparison:
    """Column a against column b at one IPC, over their sets."""

    margin: float  # mean of a minus mean of b, over the sets compared
    threshold: float  # LEVEL_STDS x the larger set-level std
    t: float
    df: int
    p: float  # two-sided
    verdict: str  # above, below or level

    def text(self) -> str:
        sign = "+" if self.margin >= 0 else ""
        return (
            f"{sign}{self.margin:.2f} (level below {self.threshold:.2f}; t {self.t:.2f}, "
            f"df {self.df}, p {self.p:.3f}): {self.verdict}"
        )


def compare(a: list[float], b: list[float]) -> Comparison:
    """Set k of ``a`` against set k of ``b`` (paired t-test over the common sets), or, when
    ``b`` is one deterministic set (herding of real images), ``a``'s sets against its value
    (one-sample t-test). ``a`` needs two sets or more."""
    if len(a) < 2:
        raise ValueError("compare needs two sets or more of the first column")
    if len(b) == 1:
        differences = [value - b[0] for value in a]
        spread = statistics.stdev(a)
    else:
        n = min(len(a), len(b))
        if n < 2:
            raise ValueError("a paired comparison needs two common sets or more")
        differences = [x - y for x, y in zip(a[:n], b[:n], strict=True)]
        spread = max(statistics.stdev(a[:n]), statistics.stdev(b[:n]))
    margin = statistics.fmean(differences)
    error = statistics.stdev(differences) / math.sqrt(len(differences))
    t = math.copysign(math.inf, margin) if error == 0 else margin / error
    df = len(differences) - 1
    p = 0.0 if math.isinf(t) else two_sided_t_p(t, df)
    threshold = LEVEL_STDS * spread
    level = margin == 0 or abs(margin) < threshold
    verdict = "level" if level else ("above" if margin > 0 else "below")
    return Comparison(margin, threshold, t, df, p, verdict)
