"""Run cases one after another, each bounded in time; a bad peer never stops the campaign."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager

from .context import Context
from .model import Case, CaseStopped, Result, Verdict

log = logging.getLogger("adrgate.campaign")

ContextFactory = Callable[[Case], AbstractAsyncContextManager[Context]]


async def run_case(case: Case, contexts: ContextFactory, *, timeout_s: float) -> Result:
    started = time.monotonic()
    note = ""
    context: Context | None = None
    try:
        async with contexts(case) as context:
            await asyncio.wait_for(case.run(context), timeout_s)
    except CaseStopped:
        pass
    except TimeoutError:
        note = f"no conclusion within {timeout_s:g} s"
    except Exception as exc:  # the peer's garbage or silence must not end the campaign
        log.debug("case %s raised", case.case_id, exc_info=True)
        note = f"{type(exc).__name__}: {exc}"
    failures = context.failures if context is not None else []
    verdict = Verdict.FAIL if failures else Verdict.ERROR if note else Verdict.PASS
    return Result(case=case, verdict=verdict, failures=list(failures),
                  transcript=list(context.transcript) if context is not None else [],
                  seconds=time.monotonic() - started, note=note)


async def run_cases(cases: Sequence[Case], contexts: ContextFactory, *, timeout_s: float = 60.0,
                    available: frozenset[str] = frozenset(),
                    on_result: Callable[[Result], None] | None = None) -> list[Result]:
    """Run `cases` in order. A case needing a capability not in `available` ("hook", "tls",
    "signing", "push") is NOT_RUN, with the missing capabilities as its note."""
    results = []
    for case in cases:
        missing = case.needs - available
        result = Result(case=case, verdict=Verdict.NOT_RUN,
                        note="needs " + ", ".join(sorted(missing))) if missing \
            else await run_case(case, contexts, timeout_s=timeout_s)
        results.append(result)
        if on_result is not None:
            on_result(result)
    return results
