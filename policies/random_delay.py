"""The random delay a device waits before it acts on a plan (domain.md section 7).

Synchronous switching of many loads is the threat this guards against: routine DSR spreads each
device's start uniformly over a window; response DSR is dispatched for a grid-service window and
must start on time, so it takes none (SI 2021/1467, PAS 1879).
"""

from __future__ import annotations

import random
from datetime import timedelta
from typing import Final

from ven.records import Purpose

DEFAULT_LIMIT: Final = timedelta(seconds=600)  # GB smart charge point default
MAX_LIMIT: Final = timedelta(seconds=1800)  # the most SI 2021/1467 lets an owner configure


def random_delay(purpose: Purpose, rng: random.Random, *,
                 limit: timedelta = DEFAULT_LIMIT) -> timedelta:
    """A delay drawn uniformly from 0..`limit` in whole seconds for routine DSR; zero for
    response DSR. `rng` is the only source of randomness, so a seeded one repeats its draws.

    Raises:
        ValueError: `limit` is negative or above 1800 s.
    """
    if not timedelta(0) <= limit <= MAX_LIMIT:
        raise ValueError(f"random delay limit {limit} outside 0..{MAX_LIMIT}")
    if purpose is Purpose.RESPONSE:
        return timedelta(0)
    return timedelta(seconds=rng.randint(0, int(limit.total_seconds())))
