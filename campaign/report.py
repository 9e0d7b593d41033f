"""What a campaign run produced, in words: the terminal summary and the pieces every report shares.

Everything a peer sent is untrusted: a report shows it, never obeys it. Text for a terminal
loses its control characters (an escape sequence in an error message must not drive the
operator's terminal), text for XML loses the characters XML 1.0 cannot carry, and message bodies
are parsed only by the hardened parser (`oadr.schema.parse_xml`: no DTD, no entities).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from lxml import etree

from oadr.errors import MalformedMessage
from oadr.schema import parse_xml

from .model import Exchange, Family, Result, Role, Verdict

# A report shows this much of one body: a hostile peer's 100 MB answer must not become a
# 100 MB report.
BODY_DISPLAY_LIMIT: Final = 256 * 1024

FAMILY_NAMES: Final = {
    Family.N: "registration", Family.E: "events", Family.A_E: "events, advanced",
    Family.R: "reports", Family.P: "opt", Family.G: "general and security",
}

_NOT_XML_CHAR: Final = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


@dataclass(frozen=True, slots=True)
class CampaignRun:
    """One run: against whom, when, and each selected case's result, in the order run."""

    role: Role  # the role of the system under test
    peer: str  # the VTN's URL, or the address the VEN under test was pointed at
    started: datetime
    finished: datetime
    results: tuple[Result, ...]

    @property
    def subject(self) -> str:
        """Who was tested, in words."""
        return f"the VTN at {self.peer}" if self.role is Role.VTN \
            else f"the VEN pointed at {self.peer}"


def passed(results: Iterable[Result]) -> bool:
    """True when no case failed or erred; NOT_RUN cases do not count against the peer."""
    return all(r.verdict in (Verdict.PASS, Verdict.NOT_RUN) for r in results)


def totals(results: Iterable[Result]) -> dict[Family, Counter[Verdict]]:
    """Verdict counts per family, families in the test plan's order."""
    counts: dict[Family, Counter[Verdict]] = {}
    for r in results:
        counts.setdefault(r.case.family, Counter())[r.verdict] += 1
    return {f: counts[f] for f in Family if f in counts}


def first_problem(result: Result) -> str:
    """The first failing rule, else why the case erred or did not run."""
    return result.failures[0].rule if result.failures else result.note


def printable(text: str) -> str:
    """`text` with every non-printable character written as an escape, for a terminal."""
    return "".join(c if c.isprintable() or c == "\n" else ascii(c)[1:-1] for c in text)


def xml_safe(text: str) -> str:
    """`text` with the characters XML 1.0 cannot hold written as escapes (escaping markup is
    the serializer's job)."""
    return _NOT_XML_CHAR.sub(lambda m: ascii(m.group())[1:-1], text)


def pretty_body(body: bytes) -> str:
    """A message body for reading: indented XML when it parses, else the bytes as text."""
    shown = body[:BODY_DISPLAY_LIMIT]
    cut = f"\n[... {len(body) - len(shown)} more bytes not shown]" if len(shown) < len(body) else ""
    try:
        text = etree.tostring(parse_xml(shown), pretty_print=True, encoding="unicode")
    except MalformedMessage:
        text = shown.decode("utf-8", errors="replace")
    return xml_safe(text.rstrip("\n") + cut)


def exchange_heading(ex: Exchange) -> str:
    arrow = "harness -> peer" if ex.direction == "sent" else "peer -> harness"
    status = f" HTTP {ex.status}" if ex.status is not None else ""
    return f"{ex.at.isoformat(timespec='milliseconds')} {ex.direction} ({arrow}) " \
           f"{xml_safe(ex.endpoint)}{status}"


def transcript_text(exchanges: Sequence[Exchange]) -> str:
    """The transcript as plain text: one heading and one indented-XML body per message."""
    if not exchanges:
        return "(no message exchanged)"
    return "\n\n".join(f"--- {i}. {exchange_heading(ex)}\n{pretty_body(ex.body)}"
                       for i, ex in enumerate(exchanges, 1))


def failure_text(result: Result) -> str:
    """Each failed expectation, and the note of an ERROR or NOT_RUN, as plain text."""
    lines = [f"[{f.rule}] expected: {f.expectation}\n    observed: {f.observed or '-'}"
             for f in result.failures]
    if result.note:
        lines.append(f"note: {result.note}")
    return xml_safe("\n".join(lines))


def text_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows)]
    def line(cells: Sequence[str]) -> str:
        return "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()
    return [line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)]


def summary(run: CampaignRun) -> str:
    """The terminal summary: one row per case, then verdict totals per family, then the cases
    that did not run and why."""
    rows = [[r.case.case_id, r.case.family.value, r.case.transport.value, r.verdict.value,
             f"{r.seconds:.1f}", printable(first_problem(r)).replace("\n", " ")]
            for r in run.results]
    seconds = (run.finished - run.started).total_seconds()
    lines = [f"campaign against {printable(run.subject)}: {len(run.results)} cases, {seconds:.1f} s",
             "", *text_table(["case", "family", "transport", "verdict", "seconds",
                              "first failing rule / note"], rows), ""]
    counts = totals(run.results)
    grand: Counter[Verdict] = sum(counts.values(), Counter())
    verdicts = list(Verdict)
    lines += text_table(
        ["family", *(v.value for v in verdicts), "total"],
        [[name, *(str(c[v]) for v in verdicts), str(c.total())]
         for name, c in [*((f.value, c) for f, c in counts.items()), ("all", grand)]])
    not_run = [r for r in run.results if r.verdict is Verdict.NOT_RUN]
    if not_run:
        lines += ["", "not run:", *(f"  {r.case.case_id}: {printable(r.note)}" for r in not_run)]
    lines += ["", "PASSED" if passed(run.results) else "FAILED"]
    return "\n".join(lines)
