"""The VEN's transition rules, as data: the registration conversation and the retry backoff."""

from __future__ import annotations

import random
from datetime import timedelta
from typing import Final

from oadr.messages import (
    CreatedPartyRegistration, CreatePartyRegistration, QueryRegistration, RegisteredReport,
    RegisterReport,
)

from .records import RegState

BACKOFF_BASE: Final = timedelta(seconds=1)
BACKOFF_CAP: Final = timedelta(minutes=5)

# Registration is a short conversation: in each state, what we send and what the reply moves us to.
REG_NEXT: Final = {RegState.UNREGISTERED: QueryRegistration,
                   RegState.QUERIED: CreatePartyRegistration,
                   RegState.REGISTERED: RegisterReport}
REG_AFTER: Final = {QueryRegistration: (CreatedPartyRegistration, RegState.QUERIED),
                    CreatePartyRegistration: (CreatedPartyRegistration, RegState.REGISTERED),
                    RegisterReport: (RegisteredReport, RegState.READY)}


def backoff(failures: int, rng: random.Random) -> timedelta:
    """Exponential backoff with full jitter: uniform in [0.5, 1] of min(cap, base * 2^n)."""
    ceiling = min(BACKOFF_CAP, BACKOFF_BASE * (1 << min(failures, 20)))
    return ceiling * rng.uniform(0.5, 1.0)
