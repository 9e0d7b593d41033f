"""Work from many concurrent requests done together: one transaction for many."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Batch(Generic[T, R]):
    """Work from many concurrent requests done by one `run` (one transaction): the first item
    waits up to `wait` seconds for company, at most `size` items share a run. `run` returns one
    result per item; should it raise, every item of that run gets the exception."""

    def __init__(self, run: Callable[[list[T]], Sequence[R]], *, size: int = 200,
                 wait: float = 0.002) -> None:
        self.run, self.size, self.wait = run, size, wait
        self._items: list[tuple[T, asyncio.Future[R]]] = []
        self._timer: asyncio.TimerHandle | None = None

    async def __call__(self, item: T) -> R:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[R] = loop.create_future()
        self._items.append((item, done))
        if len(self._items) >= self.size:
            self.flush()
        elif self._timer is None:
            self._timer = loop.call_later(self.wait, self.flush)
        return await done

    def flush(self) -> None:
        """Run what waits now (also when shutting down)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        items, self._items = self._items, []
        if not items:
            return
        try:
            results = self.run([item for item, _ in items])
        except Exception as exc:  # noqa: BLE001 - every waiting request gets the failure
            for _, done in items:
                if not done.done():
                    done.set_exception(exc)
            return
        for (_, done), result in zip(items, results, strict=True):
            if not done.done():
                done.set_result(result)
