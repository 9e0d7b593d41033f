"""XML signatures over OpenADR 2.0b payloads, and the certificate fingerprint.

Rules of this file:
- A signed payload is `oadr:oadrPayload` holding `ds:Signature` then `oadr:oadrSignedObject`
  (oadr_20b.xsd, element oadrPayload). The signature is *detached* with exactly two references:
  `#oadrSignedObject` and the `ds:Object` whose SignatureProperty carries `dsp:ReplayProtect`
  (timestamp + nonce) (OpenADR 2.0b profile specification, Security: XML signatures;
  oadr_xmldsig-properties-schema.xsd).
- Algorithms are the ones OpenADR names and openleadr uses: RSA-SHA256 or ECDSA-SHA256 (chosen
  from the key type), SHA-256 digests, inclusive C14N 1.0. The signature itself is built and
  checked by `oadr.xmldsig`, which implements exactly this profile (no signxml on the hot path;
  signxml and openleadr are the reference in the tests). Both directions are tested against
  openleadr 0.5.36 as shipped.
- Keys are parsed once (`SigningKey.load`), not per message: openleadr parses the PEM twice per
  message (~87 ms with RSA). Signing builds the signature in place: nothing is re-parsed.
- Pure: the clock (`now`) and the nonce are parameters and the replay cache is passed in.
  Verification is two steps: `check_signature` (pure, synchronous, CPU only) and `admit`, which
  awaits the replay cache (a shared cache is a network round trip: it must not block an event
  loop). `verify` is both. Nothing here imports asyncio: the caller owns the loop.
- `check_signature` and `verify` raise only `NotRegisteredOrAuthorized` (463): every profile,
  lxml and cryptography failure maps to it. The check trusts only what was signed ("see what is signed", W3C XMLDSig best
  practices): the references are resolved by position (the payload's own oadrSignedObject child,
  the Signature's own ds:Object), never by searching the document for an Id, and the
  ReplayProtect is read from the digested ds:Object.
- A VEN's identity is its certificate fingerprint: the last 10 bytes of SHA-256 over the DER
  certificate, upper-case colon-separated hex, spelt exactly as
  `openleadr.utils.certificate_fingerprint` spells it (OpenADR 2.0b profile specification,
  Security: VEN identity).
"""

from __future__ import annotations

import base64
import hashlib
import heapq
import re
from collections.abc import Callable
from copy import deepcopy
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Final, Protocol

import cryptography.exceptions
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from lxml import etree

from . import xmldsig
from .errors import NotRegisteredOrAuthorized
from .schema import DSP, OADR
from .xmldsig import SIGNED_OBJECT_ID, SignatureMethod

DEFAULT_MAX_AGE: Final = timedelta(minutes=5)
DEFAULT_MAX_FUTURE: Final = timedelta(minutes=1)

_PAYLOAD: Final = xmldsig.PAYLOAD
_SIGNED_OBJECT: Final = xmldsig.SIGNED_OBJECT
_OADR_ID: Final = f"{{{OADR}}}Id"
_SIGNATURE: Final = xmldsig.SIGNATURE
_TIMESTAMP_FORMAT: Final = "%Y-%m-%dT%H:%M:%S.%fZ"
_PEM_CERT: Final = re.compile(rb"-----BEGIN CERTIFICATE-----(.+?)-----END CERTIFICATE-----", re.S)

# xmldsig reports the profile's failures as SignatureError (a ValueError); malformed input also
# surfaces as ValueError (bad base64, bad DER, bad timestamp), cryptography's InvalidSignature or
# UnsupportedAlgorithm (an exotic certificate key), or lxml errors. Any of them means "not
# authorized"; the others are kept as a safety net.
_VERIFY_FAILURES: Final = (
    cryptography.exceptions.InvalidSignature, cryptography.exceptions.UnsupportedAlgorithm,
    etree.LxmlError, ValueError, TypeError, AttributeError, KeyError, IndexError,
)

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def fingerprint(cert_pem_or_der: bytes) -> str:
    """Return the OpenADR fingerprint of a certificate given as PEM (first block) or DER.

    Raises:
        ValueError: PEM input without a readable certificate block.
    """
    if not cert_pem_or_der.lstrip().startswith(b"-----"):
        return _fingerprint_der(cert_pem_or_der)  # DER: never strip, any byte may end it
    match = _PEM_CERT.search(cert_pem_or_der)
    if match is None:
        raise ValueError("no PEM certificate block found")
    return _fingerprint_der(base64.b64decode(match.group(1)))


def _fingerprint_der(der: bytes) -> str:
    return ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest()[-10:])


@dataclass(frozen=True)
class SigningKey:
    """A private key parsed once, with its certificate and the ds:Signature template built for
    them (method, KeyInfo), which `sign` copies and fills in.

    Build it with `SigningKey.load`; every field is derived from the key and the certificate.
    `method` may also be given by its algorithm URI or as signxml's enum of the same name (the
    benchmark builds keys directly); it must match the key type.
    """

    private_key: PrivateKey
    cert_pem: bytes
    method: SignatureMethod
    fingerprint: str
    _template: etree._Element = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        cert = x509.load_pem_x509_certificate(self.cert_pem)
        spki = serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        if cert.public_key().public_bytes(*spki) != self.private_key.public_key().public_bytes(*spki):
            raise ValueError("the private key does not belong to the certificate")
        method = SignatureMethod.for_key(self.private_key)
        if getattr(self.method, "value", self.method) != method.value:
            raise ValueError(f"a {type(self.private_key).__name__} signs with {method.name}")
        object.__setattr__(self, "method", method)
        object.__setattr__(self, "_template", xmldsig.signature_template(
            self.private_key, xmldsig.certificate_texts(self.cert_pem)))

    @classmethod
    def load(cls, cert_pem: bytes, key_pem: bytes, passphrase: bytes | None = None) -> SigningKey:
        """Parse a PEM certificate and PEM private key (RSA or EC) once.

        Raises:
            ValueError: unreadable key or certificate, wrong passphrase, a key type other than
                RSA or EC, or a key that does not match the certificate.
        """
        try:
            key = serialization.load_pem_private_key(key_pem, passphrase)
        except TypeError as exc:  # passphrase missing or given for an unencrypted key
            raise ValueError(str(exc)) from None
        if isinstance(key, rsa.RSAPrivateKey):
            method = SignatureMethod.RSA_SHA256
        elif isinstance(key, ec.EllipticCurvePrivateKey):
            method = SignatureMethod.ECDSA_SHA256
        else:
            raise ValueError(f"OpenADR signs with RSA or EC keys, not {type(key).__name__}")
        return cls(private_key=key, cert_pem=cert_pem, method=method,
                   fingerprint=fingerprint(cert_pem))


def envelope(signed_object: etree._Element) -> etree._Element:
    """Wrap a copy of `signed_object` in an unsigned `oadr:oadrPayload`.

    Raises:
        ValueError: `signed_object` is not an `oadr:oadrSignedObject`.
    """
    if signed_object.tag != _SIGNED_OBJECT:
        raise ValueError(f"expected oadr:oadrSignedObject, got {signed_object.tag!r}")
    # Only `oadr` is declared on the envelope: an extra in-scope namespace would change the
    # inclusive canonical form of the signed object between signer and verifier.
    payload = etree.Element(_PAYLOAD, nsmap={"oadr": OADR})
    obj = deepcopy(signed_object)
    obj.set(_OADR_ID, SIGNED_OBJECT_ID)
    payload.append(obj)
    return payload


def sign(signed_object: etree._Element, key: SigningKey, *, now: datetime,
         nonce: str) -> etree._Element:
    """Return a signed `oadr:oadrPayload` around a copy of `signed_object`.

    Raises:
        ValueError: `signed_object` is not an oadrSignedObject, `now` is naive, `nonce` is empty.
    """
    if not nonce:
        raise ValueError("the ReplayProtect nonce must not be empty")
    payload = envelope(signed_object)
    # Signed inside the envelope, so every reference is canonicalised in the same context in
    # which the verifier resolves it.
    xmldsig.sign_payload(payload, key.private_key, key._template, _timestamp(now), nonce)
    return payload


def _timestamp(now: datetime) -> str:
    if now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    return now.astimezone(timezone.utc).strftime(_TIMESTAMP_FORMAT)


class ReplayCache(Protocol):
    async def seen(self, key: str, ttl: timedelta) -> bool:
        """Return True if `key` was recorded and has not expired; otherwise record it for `ttl`."""
        ...


class InMemoryReplayCache:
    """A per-process ReplayCache, bounded to `max_entries`, expiring by the injected clock.

    When full, the entry closest to expiry is dropped first (it is the one least likely to be
    replayed within its validity window).
    """

    def __init__(self, clock: Callable[[], datetime], *, max_entries: int = 100_000) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be positive")
        self._clock = clock
        self._max_entries = max_entries
        self._expiry: dict[str, datetime] = {}
        self._heap: list[tuple[datetime, str]] = []

    @property
    def size(self) -> int:
        """Live and not yet purged entries."""
        return len(self._expiry)

    async def seen(self, key: str, ttl: timedelta) -> bool:
        now = self._clock()
        self._drop_expired(now)
        if key in self._expiry:
            return True
        while len(self._expiry) >= self._max_entries:
            self._pop()
        expiry = now + ttl
        self._expiry[key] = expiry
        heapq.heappush(self._heap, (expiry, key))
        return False

    def _drop_expired(self, now: datetime) -> None:
        while self._heap and self._heap[0][0] <= now:
            self._pop()

    def _pop(self) -> None:
        expiry, key = heapq.heappop(self._heap)
        if self._expiry.get(key) == expiry:
            del self._expiry[key]


@dataclass(frozen=True, slots=True)
class Verified:
    """A payload whose signature and ReplayProtect timestamp passed `check_signature`; its nonce
    is not yet recorded (`admit` does that)."""

    signer: str  # the signing certificate's fingerprint
    replay_key: str  # hashed signer and nonce, the ReplayCache key
    replay_ttl: timedelta  # how long the nonce must be remembered


def check_signature(payload: etree._Element, *, expected_fingerprint: str | None, now: datetime,
                    max_age: timedelta = DEFAULT_MAX_AGE,
                    max_future: timedelta = DEFAULT_MAX_FUTURE) -> Verified:
    """Check the signature and ReplayProtect timestamp of an `oadr:oadrPayload`, but not whether
    its nonce was seen (pure: no replay cache). `admit` is the second step.

    `expected_fingerprint` None accepts any signer (the caller then checks the returned signer).

    Raises:
        NotRegisteredOrAuthorized: unsigned payload, invalid signature, fingerprint mismatch,
            ReplayProtect missing, older than `max_age` or later than `now + max_future`.
        ValueError: `now` is naive (our bug, not the peer's).
    """
    if now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    if payload.tag != _PAYLOAD or payload.find(_SIGNATURE) is None:
        raise NotRegisteredOrAuthorized("unsigned message but signatures are required here")
    try:
        signer, replay_protect = _verified_parts(payload, expected_fingerprint)
        timestamp_text = replay_protect.findtext(f"{{{DSP}}}timestamp")
        nonce = replay_protect.findtext(f"{{{DSP}}}nonce")
        timestamp = _parse_timestamp(timestamp_text or "")
    except _VERIFY_FAILURES as exc:
        raise NotRegisteredOrAuthorized(f"invalid XML signature: {exc}") from None
    if not nonce:
        raise NotRegisteredOrAuthorized("ReplayProtect has no nonce")
    if timestamp < now - max_age:
        raise NotRegisteredOrAuthorized(f"message signed at {timestamp_text}, more than "
                                        f"{max_age} ago")
    if timestamp > now + max_future:
        raise NotRegisteredOrAuthorized(f"message signed at {timestamp_text}, in the future")
    # Keyed by signer and nonce (hashed: the nonce length is the peer's choice); kept until the
    # timestamp check alone would refuse the message.
    key = "oadr:nonce:" + hashlib.sha256(f"{signer}\n{nonce}".encode()).hexdigest()
    return Verified(signer=signer, replay_key=key,
                    replay_ttl=timestamp + max_age - now + timedelta(seconds=1))


async def admit(verified: Verified, replay: ReplayCache) -> str:
    """Record the nonce of a checked payload in `replay`; return the signer's fingerprint.

    Raises:
        NotRegisteredOrAuthorized: the nonce was already used by this signer.
        Whatever `replay.seen` raises (a shared cache that cannot be reached fails closed).
    """
    if await replay.seen(verified.replay_key, verified.replay_ttl):
        raise NotRegisteredOrAuthorized("nonce was already used")
    return verified.signer


async def verify(payload: etree._Element, *, expected_fingerprint: str | None,
                 replay: ReplayCache, now: datetime, max_age: timedelta = DEFAULT_MAX_AGE,
                 max_future: timedelta = DEFAULT_MAX_FUTURE) -> str:
    """`check_signature`, then `admit`: return the signer's fingerprint.

    The nonce is recorded in `replay` only once everything else has passed.

    Raises:
        NotRegisteredOrAuthorized: unsigned payload, invalid signature, fingerprint mismatch,
            ReplayProtect missing, older than `max_age`, later than `now + max_future`, or replayed.
        ValueError: `now` is naive (our bug, not the peer's).
    """
    verified = check_signature(payload, expected_fingerprint=expected_fingerprint, now=now,
                               max_age=max_age, max_future=max_future)
    return await admit(verified, replay)


def _verified_parts(payload: etree._Element,
                    expected_fingerprint: str | None) -> tuple[str, etree._Element]:
    """Verify the signature; return the signer's fingerprint and the signed ReplayProtect."""
    parts = xmldsig.parse(payload)
    signer = _fingerprint_der(parts.certificate)
    # Checked before any cryptography: a registered VEN signing with another certificate is
    # refused cheaply.
    if expected_fingerprint is not None and signer != expected_fingerprint.upper():
        raise NotRegisteredOrAuthorized(f"signed with certificate {signer}, expected "
                                        f"{expected_fingerprint}")
    xmldsig.check(parts, xmldsig.public_key(parts.certificate))
    return signer, parts.replay_protect


def _parse_timestamp(text: str) -> datetime:
    """xs:dateTime with a zone (Z or offset); a zoneless timestamp is refused as ambiguous."""
    value = datetime.fromisoformat(text.strip())
    if value.utcoffset() is None:
        raise ValueError(f"ReplayProtect timestamp {text!r} has no time zone")
    return value


def verifier(*, now: datetime, required: bool
             ) -> Callable[[etree._Element], Verified | None]:
    """The `verify` step for `codec.parse`: check a signature when one is present, and demand
    one when `required`. Returns the `Verified` signature (its nonce still to be `admit`ted), or
    None for an accepted unsigned payload."""

    def check(payload: etree._Element) -> Verified | None:
        if not required and payload.find(_SIGNATURE) is None:
            return None
        return check_signature(payload, expected_fingerprint=None, now=now)

    return check
