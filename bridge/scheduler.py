"""Plan steps fired at their start times, for devices that take no time-limited plan: each
step is enqueued as its own `Dispatch` when it starts (domain.md section 4, seed use case 1).

One APScheduler date job per step, with the job id the dispatch's idempotency key: scheduling
the same plan again replaces its jobs with identical ones, and a step fired twice (before and
after a restart) is delivered once, because the stream worker skips a key already done.

The jobs live in memory: after a restart `rebuild` re-creates them from the plans the database
holds. Steps that ended are skipped; the step in progress fires at once; later ones at their start.

Misfire policy: a step's job may run late (the loop was busy, the process was suspended) for as
long as the step lasts, `misfire_grace_time` = the time from its run time to the step's end: a
late step still applies for the rest of its window, one that is over is never sent (the device
would get a mode for a time already past). APScheduler's grace is whole seconds, so a step may be
sent up to a second after its end. `coalesce` is on: a date job has one run time anyway, and
if several were missed only one dispatch could be right.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from apscheduler.jobstores.base import JobLookupError  # type: ignore[import-untyped]
from apscheduler.schedulers.asyncio import AsyncIOScheduler  # type: ignore[import-untyped]

from .channel import Dispatch
from .models import Device, Plan


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class _Scheduled:
    sequence: int
    job_ids: tuple[str, ...]


class StepScheduler:
    """`enqueue` (e.g. `DispatchQueue.enqueue`) receives each step's dispatch at its start.

    `clock` says what time it is for the plans; a job waits the real time until its step's start
    by that clock (in production both are the wall clock; tests move the plans' "now").
    `start()` on the running event loop, `shutdown()` when done.
    """

    def __init__(self, enqueue: Callable[[Dispatch], Awaitable[object]],
                 clock: Callable[[], datetime] = _utcnow) -> None:
        self._enqueue = enqueue
        self._clock = clock
        self._scheduler = AsyncIOScheduler(timezone=UTC)
        self._by_device: dict[str, _Scheduled] = {}

    def start(self) -> None:
        self._scheduler.start()

    def shutdown(self) -> None:
        """Stop firing (the database still holds the plans: `rebuild` after a restart)."""
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)

    def schedule(self, plan: Plan, device: Device) -> list[str]:
        """Add a job per step not yet ended; returns their ids.

        Replaces the device's pending jobs from the same or an older plan sequence; a plan older
        than the one already scheduled is ignored (returns []).
        """
        known = self._by_device.get(device.device_id)
        if known is not None and known.sequence > plan.sequence:
            return []
        now = self._clock()
        wall_offset = _utcnow() - now
        job_ids: list[str] = []
        for index, step in enumerate(plan.steps):
            if step.end <= now:
                continue
            dispatch = Dispatch(plan=plan, device=device, step=index)
            fire_at = max(step.start, now)  # the step in progress: at once
            self._scheduler.add_job(
                self._fire, trigger="date", run_date=fire_at + wall_offset, args=(dispatch,),
                id=dispatch.key, name=f"{device.device_id} step {index}", replace_existing=True,
                misfire_grace_time=max(1, math.ceil((step.end - fire_at).total_seconds())),
                coalesce=True)
            job_ids.append(dispatch.key)
        if known is not None:
            self._remove(set(known.job_ids) - set(job_ids))
        self._by_device[device.device_id] = _Scheduled(plan.sequence, tuple(job_ids))
        return job_ids

    def rebuild(self, pairs: Iterable[tuple[Plan, Device]]) -> int:
        """Replace every job with those of `pairs` (the plans in force, from the database);
        returns the number of jobs."""
        self._scheduler.remove_all_jobs()
        self._by_device.clear()
        return sum(len(self.schedule(plan, device)) for plan, device in pairs)

    def cancel(self, device_id: str) -> int:
        """Drop the device's pending jobs; returns how many were pending."""
        known = self._by_device.pop(device_id, None)
        return 0 if known is None else self._remove(set(known.job_ids))

    def pending(self) -> list[tuple[str, datetime]]:
        """(job id, the start of the step it sends), earliest first."""
        found: list[tuple[str, datetime]] = []
        for job in self._scheduler.get_jobs():
            dispatch: Dispatch = job.args[0]
            assert dispatch.step is not None
            found.append((job.id, dispatch.plan.steps[dispatch.step].start))
        return sorted(found, key=lambda pair: (pair[1], pair[0]))

    def _remove(self, job_ids: set[str]) -> int:
        removed = 0
        for job_id in job_ids:
            try:
                self._scheduler.remove_job(job_id)
                removed += 1
            except JobLookupError:
                pass  # it already fired
        return removed

    async def _fire(self, dispatch: Dispatch) -> None:
        await self._enqueue(dispatch)
