"""The VTN role: the harness plays the VEN against a VTN under test.

`async with Harness(target) as h:` opens the session (one HTTP client, the push listener when
`target.push_listen` is set: https with `target.push_ssl`, reached at `target.push_base`);
`h.context(case)` gives each case a fresh VEN (`VenContext`), and
`campaign.runner.run_cases(CASES, h.context, available=h.available())` runs them. The wire is in
`asven_wire`, the cases in `asven_cases`, the TLS probes in `asven_tls`, the rules across
messages in `vtn_rules`.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from types import TracebackType
from typing import Self

import aiohttp

from .asven_cases import all_cases
from .asven_wire import PushListener, VenContext, VtnTarget
from .hooks import ReportHook
from .model import Case

__all__ = ["CASES", "Harness", "VenContext", "VtnTarget"]

CASES: tuple[Case, ...] = all_cases()


class Harness:
    def __init__(self, target: VtnTarget) -> None:
        self.target = target
        self._session: aiohttp.ClientSession | None = None
        self._listener: PushListener | None = None

    async def __aenter__(self) -> Self:
        self._session = aiohttp.ClientSession()
        if self.target.push_listen is not None:
            listener = PushListener(self.target)
            try:
                await listener.start()
            except BaseException:
                await self._session.close()
                raise
            self._listener = listener
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._listener is not None:
            await self._listener.stop()
        if self._session is not None:
            await self._session.close()

    def available(self) -> frozenset[str]:
        """Capabilities this run has: "pull" (always), "push" (a listener), "hook" (and
        "report-hook" when the hook can cancel report requests), "signing", "tls" (an https
        target)."""
        hook = self.target.hook
        present = {"pull": True, "hook": hook is not None, "report-hook": isinstance(hook, ReportHook),
                   "signing": self.target.signing_key is not None,
                   "push": self._listener is not None,
                   "tls": self.target.url.lower().startswith("https://")}
        return frozenset(name for name, yes in present.items() if yes)

    def context(self, case: Case) -> AbstractAsyncContextManager[VenContext]:
        return self._context(case)

    @asynccontextmanager
    async def _context(self, case: Case) -> AsyncIterator[VenContext]:
        assert self._session is not None, "use the Harness as `async with Harness(...)`"
        ctx = VenContext(target=self.target, case=case, session=self._session,
                         listener=self._listener,
                         ven_name=f"{self.target.ven_name}-{case.case_id}-{uuid.uuid4().hex[:6]}")
        try:
            yield ctx
        finally:
            await ctx.unregister_quietly()
