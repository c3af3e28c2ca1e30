"""Retry backoff: growing, jittered, capped.

b(1) is drawn in [min, min x factor), b(n+1) in [b(n), b(n) x factor), never
above max. A factor below 1 counts as 1, which makes every delay exactly min
(drawing from an empty range would otherwise crash).
"""

from __future__ import annotations

import random as _random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

Uniform = Callable[[float, float], float]


@dataclass(frozen=True)
class Backoff:
    min_delay: timedelta
    max_delay: timedelta
    factor: float
    uniform: Uniform = _random.uniform

    def next(self, previous: timedelta | None) -> timedelta:
        """The delay after a failed attempt, given the delay before it (None for attempt 1)."""
        factor = max(self.factor, 1.0)
        low = (previous if previous is not None else self.min_delay).total_seconds()
        low = min(max(low, self.min_delay.total_seconds()), self.max_delay.total_seconds())
        high = low * factor
        drawn = low if high <= low else self.uniform(low, high)
        drawn = max(low, min(drawn, high))  # a uniform source may return the upper end
        return min(timedelta(seconds=drawn), self.max_delay)
