"""OpenADR error tree.

Rules of this file:
- Every `AdrError` means the *peer* erred; it is answered with its OpenADR response code
  (OpenADR 2.0b profile spec, section 9.3 "Response codes").
- `LocalAdrError` means *we* erred (for example our own output failed the XSD). It is not an
  `AdrError`: it is a bug, logged, never sent as if the peer were at fault.
"""

from __future__ import annotations


class AdrError(Exception):
    """A peer error answered with an OpenADR response code (469 'other' by default)."""

    code: int = 469
    # HTTP status for errors raised before a message could be read (transport level)
    http_status: int = 200

    def __init__(self, description: str = "", *, request_id: str | None = None) -> None:
        super().__init__(description)
        self.description = description
        self.request_id = request_id


class OutOfSequence(AdrError):
    code = 450


class NotAllowed(AdrError):
    code = 451


class InvalidId(AdrError):
    code = 452


class NotRecognized(AdrError):
    code = 453


class InvalidData(AdrError):
    code = 454


class ComplianceError(AdrError):
    code = 459


class SignalNotSupported(AdrError):
    code = 460


class ReportNotSupported(AdrError):
    code = 461


class TargetMismatch(AdrError):
    code = 462


class NotRegisteredOrAuthorized(AdrError):
    code = 463


class MalformedMessage(InvalidData):
    """Bytes that are not a readable OpenADR payload: answered at HTTP level with 400."""

    http_status = 400


class BodyTooLarge(MalformedMessage):
    http_status = 413


class LocalAdrError(Exception):
    """Our own output violated the schema or a conformance rule: a bug, never sent."""


class UnknownMessage(MalformedMessage):
    """A well-formed oadrPayload whose signed object holds no OpenADR 2.0b payload we know."""
