"""The VEN-role campaign: the harness plays the VTN for a VEN under test.

`adrgate campaign run --role ven --listen HOST:PORT` serves the OpenADR 2.0b simpleHttp VTN
endpoints there; the VEN under test is pointed at it, registers once, and every case of `CASES`
then asks it something (events, report requests, re-registration...) on its polls or by push,
and judges its answers. The pieces:
- `asvtn_core`: the harness VTN's decisions, sans-IO;
- `asvtn_harness`: the listener, pushes and the `VtnContext` the cases run in;
- `asvtn_cases`: the cases; `ven_rules`: the rules across messages they apply.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from typing import TextIO

from .asvtn_cases import CASES, NotApplicable
from .asvtn_harness import Harness, VenPrompt, VenUnderTest, VtnContext

__all__ = ["CASES", "Harness", "NotApplicable", "PromptVen", "VenPrompt", "VenUnderTest",
           "VtnContext"]


class PromptVen:
    """Prompt mode: shows the VEN's operator what to make the VEN do, and waits for Enter."""

    def __init__(self, *, out: TextIO = sys.stdout,
                 read: Callable[[], str] = sys.stdin.readline) -> None:
        self.out = out
        self.read = read

    async def ask(self, instruction: str) -> None:
        print(f"\n>>> {instruction}\n    Press Enter once the VEN has done it.", file=self.out,
              flush=True)
        await asyncio.to_thread(self.read)
