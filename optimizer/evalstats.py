"""Small statistics for eval reports: rates with bootstrap intervals, paired comparisons, repetition.

Pure Python (eval sets are hundreds of items, not millions) and seeded, so the same answers
always give the same report.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

BOOTSTRAP_RESAMPLES = 2000
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Interval:
    value: float
    low: float
    high: float
    n: int

    def as_dict(self) -> dict[str, Any]:
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(self).items()}


def _percentiles(samples: list[float]) -> tuple[float, float]:
    samples.sort()
    tail = (1 - CONFIDENCE) / 2
    low = samples[math.floor(tail * (len(samples) - 1))]
    high = samples[math.ceil((1 - tail) * (len(samples) - 1))]
    return low, high


def mean_interval(values: Sequence[float], seed: int = 0) -> Interval:
    """The mean with a percentile-bootstrap 95 % interval (degenerate for n ≤ 1)."""
    n = len(values)
    if n == 0:
        return Interval(0.0, 0.0, 0.0, 0)
    mean = sum(values) / n
    if n == 1:
        return Interval(mean, mean, mean, 1)
    rng = random.Random(seed)
    means = [sum(rng.choices(values, k=n)) / n for _ in range(BOOTSTRAP_RESAMPLES)]
    low, high = _percentiles(means)
    return Interval(mean, low, high, n)


def rate_interval(flags: Sequence[bool], seed: int = 0) -> Interval:
    return mean_interval([1.0 if f else 0.0 for f in flags], seed)


@dataclass(frozen=True)
class PairedComparison:
    """B minus A on the same items: the difference, its interval, and McNemar's exact test."""

    difference: Interval
    a_only: int  # items where only A's flag is set
    b_only: int  # items where only B's flag is set
    p_value: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "difference": self.difference.as_dict(),
            "a_only": self.a_only,
            "b_only": self.b_only,
            "p_value": float(f"{self.p_value:.3g}"),  # three significant digits: tiny p-values stay visible
        }


def mcnemar_exact(a_only: int, b_only: int) -> float:
    """Two-sided exact McNemar p-value (a binomial test on the discordant pairs)."""
    n = a_only + b_only
    if n == 0:
        return 1.0
    k = min(a_only, b_only)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / float(2**n)
    return min(1.0, 2 * tail)


def paired_rates(a: Sequence[bool], b: Sequence[bool], seed: int = 0) -> PairedComparison:
    if len(a) != len(b):
        raise ValueError("a paired comparison needs the same items on both sides")
    diffs = [float(y) - float(x) for x, y in zip(a, b, strict=True)]
    a_only = sum(1 for x, y in zip(a, b, strict=True) if x and not y)
    b_only = sum(1 for x, y in zip(a, b, strict=True) if y and not x)
    return PairedComparison(mean_interval(diffs, seed), a_only, b_only, mcnemar_exact(a_only, b_only))


def repetition_rate(text: str, n: int = 4) -> float:
    """Share of word n-grams that repeat an earlier one (0 for varied text, → 1 for loops)."""
    words = text.lower().split()
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    if not grams:
        return 0.0
    return 1 - len(set(grams)) / len(grams)
