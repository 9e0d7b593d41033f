"""The sans-IO OpenADR 2.0b codec: `parse(bytes) -> Received` and `serialize(Message) -> bytes`.

Rules of this file:
- No I/O, no clock. Bytes in, typed frozen dataclasses out, and back; no lxml element or dict
  leaves this module family (codec*.py).
- `parse` blames the peer and raises only `AdrError`s, in this order:
  1. `schema.parse_xml`: size limit, well-formedness, no DTD/entities, depth (`MalformedMessage`,
     `BodyTooLarge`; HTTP 400/413).
  2. Envelope (oadr_20b.xsd): root `oadr:oadrPayload`, holding `oadr:oadrSignedObject` with
     exactly one payload element (`MalformedMessage`); a payload that is not in `MESSAGE_TYPES`
     raises `UnknownMessage` (400).
  3. XSD validation of the whole document: `InvalidData` (454) naming the first schema errors and
     the requestID when one can be found, so the answer can echo it.
  4. `verify(root)`, when given: it checks the XML signature and returns it as
     `signing.Verified` (None when it lets an unsigned message through); it raises its own
     `AdrError`s. Recording the nonce in a replay cache is I/O, left to the caller
     (`signing.admit`).
  5. Decoding into the dataclass. A `ValueError`/`KeyError`/lxml error here, or an invariant
     broken in a message's `__post_init__`, is `InvalidData` (454), never a bare exception.
- `serialize` blames us: it builds the tree with lxml (no templates), wraps it in `oadrPayload`
  (or lets `sign` build the signed envelope), validates its own output against the XSD and raises
  `LocalAdrError` (not an `AdrError`: a bug, never sent) when it is invalid.
- One encoder and one decoder per message class, in two tables keyed by class, assembled from the
  per-service modules; import fails if a class in `MESSAGE_TYPES` has no codec.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from lxml import etree

from . import codec_events, codec_opt, codec_registration, codec_reports
from .codec_common import SIGNED_NSMAP, Element, local
from .errors import AdrError, InvalidData, LocalAdrError, MalformedMessage, UnknownMessage
from .messages import MESSAGE_TYPES, TAG_OF, Message
from .schema import DEFAULT_MAX_BYTES, OADR, PYLD, parse_xml, schema_errors
from .signing import Verified

__all__ = ["DEFAULT_MAX_BYTES", "Received", "parse", "serialize", "ENCODERS", "DECODERS"]

_MODULES: Final = (codec_events, codec_registration, codec_reports, codec_opt)
ENCODERS: Final[dict[type, Callable[[Element, Any], None]]] = {
    cls: enc for module in _MODULES for cls, enc in module.ENCODERS.items()
}
DECODERS: Final[dict[type, Callable[[Element], Any]]] = {
    cls: dec for module in _MODULES for cls, dec in module.DECODERS.items()
}
_missing = set(MESSAGE_TYPES.values()) - (ENCODERS.keys() & DECODERS.keys())
if _missing:  # pragma: no cover - a wiring bug, caught at import
    raise ImportError(f"codec lacks encoders/decoders for {sorted(c.__name__ for c in _missing)}")

_PAYLOAD: Final = f"{{{OADR}}}oadrPayload"
_SIGNED: Final = f"{{{OADR}}}oadrSignedObject"
# The XML signature's Reference URI is #oadrSignedObject.
_SIGNED_ID: Final = "oadrSignedObject"
_SCHEMA_VERSION: Final = "2.0b"
_MAX_SCHEMA_ERRORS: Final = 3
_MAX_DETAIL: Final = 300  # characters of one error echoed back: values in it are the peer's
_DECLARATION: Final = b'<?xml version="1.0" encoding="UTF-8"?>\n'
# Exceptions a decoder may hit on schema-valid but nonsensical data (numbers out of range, bad
# enum values, dates that do not exist...). Anything else is a bug in the decoder and propagates.
_DECODE_ERRORS: Final = (ValueError, KeyError, TypeError, AttributeError, IndexError,
                         ArithmeticError, etree.LxmlError)


@dataclass(frozen=True, slots=True)
class Received:
    """A parsed message and, when a `verify` callable was given and the message was signed, its
    checked signature (signer's fingerprint and replay key; the nonce is not yet recorded: the
    caller `signing.admit`s it)."""

    message: Message
    signature: Verified | None


def parse(
    data: bytes,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    verify: Callable[[etree._Element], Verified | None] | None = None,
) -> Received:
    """Parse one oadrPayload document from a peer.

    Raises:
        BodyTooLarge: more than `max_bytes`.
        MalformedMessage: not well-formed, a DTD, too deep, or not an oadrPayload envelope.
        UnknownMessage: the signed object holds an element that is not an OpenADR 2.0b payload.
        InvalidData: schema-invalid, or values that cannot be read.
        AdrError: whatever `verify` raises for a bad signature.
    """
    root = parse_xml(data, max_bytes=max_bytes)
    payload = _payload_element(root)
    cls = MESSAGE_TYPES[etree.QName(payload).localname]
    request_id = _request_id(payload)
    errors = schema_errors(root)
    if errors:
        shown = "; ".join(e[:_MAX_DETAIL] for e in errors[:_MAX_SCHEMA_ERRORS])
        extra = len(errors) - _MAX_SCHEMA_ERRORS
        more = f" (+{extra} more)" if extra > 0 else ""
        raise InvalidData(f"schema: {shown}{more}", request_id=request_id)
    signature = verify(root) if verify is not None else None
    try:
        message = DECODERS[cls](payload)
    except AdrError as exc:
        if exc.request_id is None:
            exc.request_id = request_id
        raise
    except _DECODE_ERRORS as exc:
        raise InvalidData(f"{local(payload.tag)}: {str(exc)[:_MAX_DETAIL]}",
                          request_id=request_id) from None
    return Received(message=message, signature=signature)


def _payload_element(root: Element) -> Element:
    # oadr_20b.xsd: oadrPayload = (ds:Signature?, oadrSignedObject),
    # oadrSignedObject = a choice of exactly one payload element.
    if root.tag != _PAYLOAD:
        raise MalformedMessage(f"root element is {root.tag!r}, not oadr:oadrPayload")
    signed = root.find(_SIGNED)
    if signed is None:
        raise MalformedMessage("oadrPayload has no oadr:oadrSignedObject")
    payloads = [child for child in signed if isinstance(child.tag, str)]
    if len(payloads) != 1:
        raise MalformedMessage(f"oadrSignedObject holds {len(payloads)} elements, need exactly one")
    qname = etree.QName(payloads[0])
    if qname.namespace != OADR or qname.localname not in MESSAGE_TYPES:
        raise UnknownMessage(f"unknown OpenADR payload {payloads[0].tag!r}")
    return payloads[0]


def _request_id(payload: Element) -> str | None:
    """The first pyld:requestID in the payload (the message's own, or its eiResponse's)."""
    found = next(payload.iter(f"{{{PYLD}}}requestID"), None)
    return None if found is None else (found.text or "").strip() or None


def serialize(
    msg: Message,
    *,
    sign: Callable[[etree._Element], etree._Element] | None = None,
) -> bytes:
    """Serialize a message as a UTF-8 oadrPayload document with an XML declaration.

    `sign`, when given, receives the standalone oadrSignedObject element and returns the complete
    oadrPayload element with its ds:Signature.

    Raises:
        LocalAdrError: the message cannot be written or the output fails the XSD (our bug).
    """
    encode = ENCODERS.get(type(msg))
    if encode is None:
        raise LocalAdrError(f"not an OpenADR message: {type(msg).__name__}")
    if sign is None:
        root = etree.Element(_PAYLOAD, nsmap=SIGNED_NSMAP)
        signed = etree.SubElement(root, _SIGNED)
    else:
        signed = etree.Element(_SIGNED, nsmap=SIGNED_NSMAP)
    signed.set(f"{{{OADR}}}Id", _SIGNED_ID)
    try:
        encode(signed, msg)
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        raise LocalAdrError(f"cannot serialize {type(msg).__name__}: {exc}") from exc
    signed[0].set(f"{{{SIGNED_NSMAP['ei']}}}schemaVersion", _SCHEMA_VERSION)
    if sign is not None:
        root = sign(signed)
    errors = schema_errors(root)
    if errors:
        raise LocalAdrError(
            f"our {TAG_OF[type(msg)]} fails the XSD: {'; '.join(errors[:_MAX_SCHEMA_ERRORS])}")
    return _DECLARATION + etree.tostring(root, encoding="utf-8")
