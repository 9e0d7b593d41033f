"""A fleet of 1,000 VENs in one process registering with and polling our VTN, bounded in time."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

from tests.venkit import running_fleet, ven_spec
from tests.vtnkit import running_vtn, wait_for

VENS = 1000
DEADLINE_S = 240.0  # a bound that fails a stuck fleet, not a performance target


async def test_thousand_vens_register_and_poll() -> None:
    async with running_vtn(poll_freq=timedelta(seconds=10),
                           report_granularity=timedelta(minutes=5)) as vtn:
        specs = [ven_spec(vtn.oadr_url, f"agg-{i:04d}") for i in range(VENS)]
        started = time.monotonic()
        async with running_fleet(specs, concurrency=100) as f:
            def polled() -> bool:
                return all(a.last_poll is not None for a in f.fleet.agents.values())

            await wait_for(polled, timeout=DEADLINE_S, what=f"{VENS} VENs polling")
            elapsed = time.monotonic() - started
            registered = [v for v in vtn.store.list_vens() if v.is_registered]
            assert len(registered) == VENS
            assert len({v.ven_name for v in registered}) == VENS
            # polling goes on: every VEN polls again within two poll periods
            first = {name: a.last_poll for name, a in f.fleet.agents.items()}
            await asyncio.sleep(0)
            await wait_for(lambda: all(a.last_poll != first[n]
                                       for n, a in f.fleet.agents.items()),
                           timeout=60, what="a second poll from every VEN")
            assert all(a.last_error is None for a in f.fleet.agents.values()), \
                [a.last_error for a in f.fleet.agents.values() if a.last_error][:3]
    print(f"{VENS} VENs registered and polling after {elapsed:.1f} s")
