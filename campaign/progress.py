"""Progress on stderr while cases run: one line rewritten in place on a terminal, one line per
case otherwise (CI logs, pipes), so stdout keeps only the summary."""

from __future__ import annotations

import shutil
from collections import Counter
from typing import TextIO

from .model import Case, Result, Verdict
from .report import first_problem, printable

_BAR_WIDTH = 24


class Progress:
    def __init__(self, total: int, stream: TextIO, *, tty: bool | None = None) -> None:
        self._total = total
        self._stream = stream
        self._tty = stream.isatty() if tty is None else tty
        self._done = 0
        self._counts: Counter[Verdict] = Counter()
        self._shown = False

    def started(self, case: Case) -> None:
        if self._tty:
            self._redraw(f"{case.case_id} running")

    def finished(self, result: Result) -> None:
        self._done += 1
        self._counts[result.verdict] += 1
        if self._tty:
            self._redraw(f"{result.case.case_id} {result.verdict.value}")
            return
        problem = printable(first_problem(result)).replace("\n", " ")
        self._stream.write(f"[{self._done}/{self._total}] {result.case.case_id} "
                           f"{result.verdict.value} {result.seconds:.1f}s"
                           f"{'  ' + problem if problem else ''}\n")
        self._stream.flush()

    def close(self) -> None:
        """End the rewritten line, so what follows starts on its own."""
        if self._tty and self._shown:
            self._stream.write("\n")
            self._stream.flush()

    def _redraw(self, current: str) -> None:
        filled = _BAR_WIDTH * self._done // max(self._total, 1)
        tally = " ".join(f"{n} {v.value}" for v, n in sorted(self._counts.items()))
        line = f"[{'#' * filled}{'.' * (_BAR_WIDTH - filled)}] {self._done}/{self._total} " \
               f"{current}{'  ' + tally if tally else ''}"
        width = shutil.get_terminal_size().columns - 1
        # \x1b[K clears what a longer previous line left beyond this one
        self._stream.write("\r" + line[:width] + "\x1b[K")
        self._stream.flush()
        self._shown = True
