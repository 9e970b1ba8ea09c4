"""Splitting viewers into experiment arms, and per-arm results with confidence intervals.

``assign`` puts a viewer in an arm by a stable hash of ``(experiment, user id)``: the same viewer
always lands in the same arm of an experiment, different experiments split independently, and
nothing needs storing (every server process computes the same answer). Arms get traffic in
proportion to their weights.

``ArmResults`` collects one number per viewer-event (a watch time, a finish as 0/1) per arm and
reports each arm's mean with a 95 % confidence interval: Wilson's score interval when every
value is 0 or 1 (a rate), the normal interval of the mean otherwise. ``difference`` gives the
difference of two arms' means with Welch's normal interval, which is what "B beats A" should be
read from.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from fyp.errors import InvalidInput

Z95: Final = 1.959963984540054
_SPACE: Final = float(2**64)


@dataclass(frozen=True)
class Experiment:
    name: str
    arms: Mapping[str, float]
    """Arm name -> relative weight (positive)."""

    def __post_init__(self) -> None:
        if not self.name or not self.arms:
            raise InvalidInput("an experiment needs a name and at least one arm")
        if any(not (w > 0 and math.isfinite(w)) for w in self.arms.values()):
            raise InvalidInput(f"arm weights must be positive numbers: {dict(self.arms)}")


def bucket(experiment: str, user_id: str) -> float:
    """The viewer's stable, uniform position in [0, 1) for this experiment."""
    digest = hashlib.blake2b(f"{experiment}\x00{user_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / _SPACE


def assign(experiment: Experiment, user_id: str) -> str:
    """The arm this viewer is in (arms cover [0, 1) in their given order, by weight)."""
    position = bucket(experiment.name, user_id) * sum(experiment.arms.values())
    edge = 0.0
    last = ""
    for arm, weight in experiment.arms.items():
        edge += weight
        last = arm
        if position < edge:
            return arm
    return last  # float rounding at the very top edge


@dataclass(frozen=True)
class Estimate:
    n: int
    mean: float
    low: float
    high: float


def wilson(successes: float, n: int, z: float = Z95) -> Estimate:
    if n == 0:
        return Estimate(0, math.nan, math.nan, math.nan)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return Estimate(n, p, max(0.0, centre - half), min(1.0, centre + half))


@dataclass
class _Moments:
    n: int = 0
    total: float = 0.0
    total_sq: float = 0.0
    binary: bool = True

    def add(self, value: float) -> None:
        self.n += 1
        self.total += value
        self.total_sq += value * value
        if value not in (0.0, 1.0):
            self.binary = False

    @property
    def mean(self) -> float:
        return self.total / self.n if self.n else math.nan

    @property
    def variance(self) -> float:
        if self.n < 2:
            return math.nan
        return max(self.total_sq - self.n * self.mean**2, 0.0) / (self.n - 1)


@dataclass
class ArmResults:
    """One metric, per arm."""

    metric: str
    _arms: dict[str, _Moments] = field(default_factory=dict)

    def add(self, arm: str, value: float) -> None:
        if not math.isfinite(value):
            raise InvalidInput(f"{self.metric}: value must be finite, got {value}")
        self._arms.setdefault(arm, _Moments()).add(float(value))

    def estimate(self, arm: str) -> Estimate:
        m = self._arms.get(arm, _Moments())
        if m.binary:
            return wilson(m.total, m.n)
        half = Z95 * math.sqrt(m.variance / m.n) if m.n >= 2 else math.nan
        return Estimate(m.n, m.mean, m.mean - half, m.mean + half)

    def summary(self) -> dict[str, Estimate]:
        return {arm: self.estimate(arm) for arm in sorted(self._arms)}

    def difference(self, treatment: str, control: str) -> Estimate:
        """``mean(treatment) - mean(control)`` with Welch's 95 % normal interval."""
        a, b = self._arms.get(treatment, _Moments()), self._arms.get(control, _Moments())
        if a.n < 2 or b.n < 2:
            return Estimate(min(a.n, b.n), math.nan, math.nan, math.nan)
        diff = a.mean - b.mean
        half = Z95 * math.sqrt(a.variance / a.n + b.variance / b.n)
        return Estimate(min(a.n, b.n), diff, diff - half, diff + half)
