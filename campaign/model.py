"""The campaign's typed vocabulary: cases, what a case observed, and its verdict.

A case is an async function of a `Context`; it talks to the peer through the role's harness
(`campaign.asven` plays the VEN against a VTN under test, `campaign.asvtn` plays the VTN for a
VEN under test), records every message in the transcript, and judges with `Context.expect`.
A failed expectation is recorded and the case goes on where it can (`Context.require` stops
it); an exception from the peer's side (timeout, refused connection, garbage) ends the case as
ERROR, never the campaign.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any


class Role(StrEnum):
    """The role of the system under test."""

    VTN = "vtn"
    VEN = "ven"


class Family(StrEnum):
    """Test-case families of the public 2.0b certification test plan."""

    N = "N"  # registration
    E = "E"  # events
    A_E = "A_E"  # events, advanced (overlap, priority, randomisation)
    R = "R"  # reports
    P = "P"  # opt
    G = "G"  # general and security


class Transport(StrEnum):
    PULL = "pull"
    PUSH = "push"

    @property
    def digit(self) -> str:
        """The test plan's digit: 1 = pull, 0 = push."""
        return "1" if self is Transport.PULL else "0"


class Verdict(StrEnum):
    PASS = "pass"
    FAIL = "fail"  # the peer broke a rule or missed the case's intent
    ERROR = "error"  # the case could not be judged (peer unreachable, timeout, harness error)
    NOT_RUN = "not-run"  # needs something this run does not have (push, TLS, a hook): says what


class Direction(StrEnum):
    SENT = "sent"  # harness -> peer
    RECEIVED = "received"  # peer -> harness


@dataclass(frozen=True, slots=True)
class Exchange:
    """One HTTP message on the wire, as sent or received."""

    at: datetime
    direction: Direction
    endpoint: str  # e.g. "EiEvent", "OadrPoll", or the push URL's path
    body: bytes
    status: int | None = None  # HTTP status of a response


@dataclass(frozen=True, slots=True)
class Failure:
    rule: str  # a stable rule id: a conformance Violation.rule, or a campaign rule id
    expectation: str  # what the case expected, in words
    observed: str  # what happened instead


@dataclass(frozen=True, slots=True, kw_only=True)
class Case:
    case_id: str  # e.g. "E1_0120": family, transport digit, number (our own numbering)
    family: Family
    role: Role
    transport: Transport
    title: str
    intent: str  # one sentence: what the case proves about the peer
    run: Callable[[Any], Awaitable[None]]  # receives the role's Context subclass
    needs: frozenset[str] = frozenset()  # capabilities: "pull", "push", "hook", "tls", "signing"


def twins(role: Role, family: Family, number: int, title: str, intent: str,
          run: Callable[[Any], Awaitable[None]], *, transports: tuple[Transport, ...],
          needs: frozenset[str] = frozenset()) -> Iterator[Case]:
    """The cases of one case function, one per transport: the test plan's digit in the id, and
    the transport among what the case needs (a run has "pull" or "push" when it can use it)."""
    for t in transports:
        yield Case(case_id=f"{family.value}{t.digit}_{number:04d}", family=family, role=role,
                   transport=t, title=title + (" (push)" if t is Transport.PUSH else ""),
                   intent=intent, run=run, needs=needs | {t.value})


@dataclass(slots=True)
class Result:
    case: Case
    verdict: Verdict
    failures: list[Failure] = field(default_factory=list)
    transcript: list[Exchange] = field(default_factory=list)
    seconds: float = 0.0
    note: str = ""  # why ERROR or NOT_RUN, in words


class CaseStopped(Exception):
    """Raised by `Context.require` when a failed expectation makes the rest of a case moot."""
