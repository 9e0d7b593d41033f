"""What every case gets: the transcript, the judgement helpers and the run's options."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from oadr import conformance

from .model import CaseStopped, Direction, Exchange, Failure


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(slots=True)
class Context:
    """Base of the role contexts (`campaign.asven.VenContext`, `campaign.asvtn.VtnContext`)."""

    clock: Callable[[], datetime] = utcnow
    transcript: list[Exchange] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)

    def record(self, direction: Direction, endpoint: str, body: bytes,
               status: int | None = None) -> None:
        self.transcript.append(Exchange(self.clock(), direction, endpoint, body, status))

    def expect(self, ok: bool, rule: str, expectation: str, observed: str = "") -> bool:
        """Record a failure unless `ok`; return `ok` so a case can branch on it."""
        if not ok:
            self.failures.append(Failure(rule, expectation, observed))
        return ok

    def require(self, ok: bool, rule: str, expectation: str, observed: str = "") -> None:
        """As `expect`, and stop the case when not `ok`.

        Raises:
            CaseStopped: `ok` is false.
        """
        if not self.expect(ok, rule, expectation, observed):
            raise CaseStopped(rule)

    def conformant(self, body: bytes) -> bool:
        """Judge one message from the peer against the 2.0b XSD and the single-message rules of
        domain.md section 2 (`oadr.conformance`); every violation becomes a failure."""
        violations = conformance.check(body, now=self.clock())
        for v in violations:
            self.failures.append(Failure(v.rule, "the message conforms to the 2.0b XSD and "
                                                 "the certification rules", v.message))
        return not violations
