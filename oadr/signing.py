"""XML signatures over OpenADR 2.0b payloads, and the certificate fingerprint.

Rules of this file:
- A signed payload is `oadr:oadrPayload` holding `ds:Signature` then `oadr:oadrSignedObject`
  (oadr_20b.xsd, element oadrPayload). The signature is *detached* with exactly two references:
  `#oadrSignedObject` and the `ds:Object` whose SignatureProperty carries `dsp:ReplayProtect`
  (timestamp + nonce) (OpenADR 2.0b profile specification, Security: XML signatures;
  oadr_xmldsig-properties-schema.xsd).
- Algorithms are the ones OpenADR names and openleadr uses: RSA-SHA256 or ECDSA-SHA256 (chosen
  from the key type), SHA-256 digests, inclusive C14N 1.0. The `ds:Signature` declares the `oadr`
  prefix, as openleadr's signer does, so that SignedInfo canonicalises the same inside and outside
  the envelope. Both directions are tested against openleadr 0.5.36 as shipped.
- Keys are parsed once (`SigningKey.load`), not per message: openleadr parses the PEM twice per
  message (~87 ms with RSA).
- Pure: the clock (`now`) and the nonce are parameters and the replay cache is passed in.
- `verify` raises only `NotRegisteredOrAuthorized` (463): every signxml, lxml and cryptography
  failure maps to it. It trusts only what was signed ("see what is signed", W3C XMLDSig best
  practices): the signed reference must be the payload's own oadrSignedObject child, and the
  ReplayProtect is read from the verified reference, never searched for in the raw document.
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
from signxml.algorithms import (
    CanonicalizationMethod,
    DigestAlgorithm,
    SignatureConstructionMethod,
    SignatureMethod,
)
from signxml.exceptions import SignXMLException
from signxml.signer import XMLSigner
from signxml.verifier import SignatureConfiguration, XMLVerifier

from .errors import NotRegisteredOrAuthorized
from .schema import DS, DSP, OADR

SIGNED_OBJECT_ID: Final = "oadrSignedObject"
C14N: Final = CanonicalizationMethod.CANONICAL_XML_1_0  # REC-xml-c14n-20010315
DEFAULT_MAX_AGE: Final = timedelta(minutes=5)
DEFAULT_MAX_FUTURE: Final = timedelta(minutes=1)

_PAYLOAD: Final = f"{{{OADR}}}oadrPayload"
_SIGNED_OBJECT: Final = f"{{{OADR}}}oadrSignedObject"
_OADR_ID: Final = f"{{{OADR}}}Id"
_SIGNATURE: Final = f"{{{DS}}}Signature"
_REPLAY_PROTECT: Final = f"{{{DSP}}}ReplayProtect"
_TIMESTAMP_FORMAT: Final = "%Y-%m-%dT%H:%M:%S.%fZ"
_PEM_CERT: Final = re.compile(rb"-----BEGIN CERTIFICATE-----(.+?)-----END CERTIFICATE-----", re.S)

# The profile allows these two signature methods and SHA-256 digests; anything else is refused
# before any key is used.
_VERIFY_CONFIG: Final = SignatureConfiguration(
    location="./",
    expect_references=True,  # counted below, to name the missing ReplayProtect precisely
    signature_methods=frozenset({SignatureMethod.RSA_SHA256, SignatureMethod.ECDSA_SHA256}),
    digest_algorithms=frozenset({DigestAlgorithm.SHA256}),
)

# signxml reports failures with its own exceptions, but malformed input also surfaces as
# ValueError (bad base64, bad DER), TypeError/AttributeError (an element without text) or lxml
# errors (the embedded xmldsig schema check). Any of them means "not authorized".
_VERIFY_FAILURES: Final = (
    SignXMLException, cryptography.exceptions.InvalidSignature, etree.LxmlError,
    ValueError, TypeError, AttributeError, KeyError, IndexError,
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
    """A private key parsed once, with its certificate and the signer built for it.

    Build it with `SigningKey.load`; every field is derived from the key and the certificate.
    """

    private_key: PrivateKey
    cert_pem: bytes
    method: SignatureMethod
    fingerprint: str
    _signer: XMLSigner = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        cert = x509.load_pem_x509_certificate(self.cert_pem)
        spki = serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        if cert.public_key().public_bytes(*spki) != self.private_key.public_key().public_bytes(*spki):
            raise ValueError("the private key does not belong to the certificate")
        signer = XMLSigner(
            method=SignatureConstructionMethod.detached,
            signature_algorithm=self.method,
            digest_algorithm=DigestAlgorithm.SHA256,
            c14n_algorithm=C14N,
        )
        # As openleadr does: inside oadrPayload, SignedInfo has `oadr` in scope, and inclusive
        # C14N emits it; declaring it here gives the same canonical SignedInfo when signing.
        signer.namespaces["oadr"] = OADR
        object.__setattr__(self, "_signer", signer)

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
    # Signed inside the envelope, so the reference is canonicalised in the same context in which
    # the verifier resolves it.
    signature = key._signer.sign(
        payload,
        key=key.private_key,
        cert=key.cert_pem.decode("ascii"),
        reference_uri="#" + SIGNED_OBJECT_ID,
        signature_properties=_replay_protect(now, nonce),
    )
    payload.insert(0, signature)
    return payload


def _replay_protect(now: datetime, nonce: str) -> etree._Element:
    if now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    element = etree.Element(_REPLAY_PROTECT, nsmap={"dsp": DSP})
    etree.SubElement(element, f"{{{DSP}}}timestamp").text = (
        now.astimezone(timezone.utc).strftime(_TIMESTAMP_FORMAT))
    etree.SubElement(element, f"{{{DSP}}}nonce").text = nonce
    return element


class ReplayCache(Protocol):
    def seen(self, key: str, ttl: timedelta) -> bool:
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

    def seen(self, key: str, ttl: timedelta) -> bool:
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


def verify(payload: etree._Element, *, expected_fingerprint: str | None, replay: ReplayCache,
           now: datetime, max_age: timedelta = DEFAULT_MAX_AGE,
           max_future: timedelta = DEFAULT_MAX_FUTURE) -> str:
    """Check the signature and ReplayProtect of an `oadr:oadrPayload`; return the signer's fingerprint.

    `expected_fingerprint` None accepts any signer (the caller then checks the returned value).
    The nonce is recorded in `replay` only once everything else has passed.

    Raises:
        NotRegisteredOrAuthorized: unsigned payload, invalid signature, fingerprint mismatch,
            ReplayProtect missing, older than `max_age`, later than `now + max_future`, or replayed.
        ValueError: `now` is naive (our bug, not the peer's).
    """
    if now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    signature = payload.find(_SIGNATURE) if payload.tag == _PAYLOAD else None
    if signature is None:
        raise NotRegisteredOrAuthorized("unsigned message but signatures are required here")
    try:
        signer, replay_protect = _verified_parts(payload, signature, expected_fingerprint)
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
    if replay.seen(key, timestamp + max_age - now + timedelta(seconds=1)):
        raise NotRegisteredOrAuthorized(f"nonce {nonce[:64]!r} was already used")
    return signer


def _verified_parts(payload: etree._Element, signature: etree._Element,
                    expected_fingerprint: str | None) -> tuple[str, etree._Element]:
    """Verify the signature; return the signer's fingerprint and the signed ReplayProtect."""
    objects = payload.findall(_SIGNED_OBJECT)
    if len(objects) != 1 or _element_id(objects[0]) != SIGNED_OBJECT_ID:
        raise NotRegisteredOrAuthorized(f"payload must hold one oadrSignedObject with "
                                        f"Id={SIGNED_OBJECT_ID!r}")
    cert_text = signature.findtext(f"{{{DS}}}KeyInfo/{{{DS}}}X509Data/{{{DS}}}X509Certificate")
    if not cert_text:
        raise NotRegisteredOrAuthorized("signature carries no X509Certificate")
    der = base64.b64decode(cert_text)
    signer = _fingerprint_der(der)
    if expected_fingerprint is not None and signer != expected_fingerprint.upper():
        raise NotRegisteredOrAuthorized(f"signed with certificate {signer}, expected "
                                        f"{expected_fingerprint}")
    results = XMLVerifier().verify(
        payload, x509_cert=x509.load_der_x509_certificate(der), expect_config=_VERIFY_CONFIG)
    assert isinstance(results, list)  # expect_references=True always returns a list
    uris = [ref.get("URI") for ref in signature.iterfind(f"{{{DS}}}SignedInfo/{{{DS}}}Reference")]
    if len(results) != 2 or len(uris) != 2 or "#" + SIGNED_OBJECT_ID not in uris:
        raise NotRegisteredOrAuthorized(f"expected references to #{SIGNED_OBJECT_ID} and to the "
                                        f"ReplayProtect property, got {uris}")
    # signxml resolves "#oadrSignedObject" uniquely (it refuses ambiguous Ids), and the payload's
    # own child carries that Id, so the signed reference *is* the child the codec will read.
    props = results[1 - uris.index("#" + SIGNED_OBJECT_ID)].signed_xml
    replay_protect = None if props is None else props.find(f".//{_REPLAY_PROTECT}")
    if replay_protect is None:
        raise NotRegisteredOrAuthorized("signature has no dsp:ReplayProtect property")
    return signer, replay_protect


def _element_id(element: etree._Element) -> str | None:
    # oadr_20b.xsd qualifies the attribute (oadr:Id); signxml matches any attribute named Id.
    return element.get(_OADR_ID) or element.get("Id")


def _parse_timestamp(text: str) -> datetime:
    """xs:dateTime with a zone (Z or offset); a zoneless timestamp is refused as ambiguous."""
    value = datetime.fromisoformat(text.strip())
    if value.utcoffset() is None:
        raise ValueError(f"ReplayProtect timestamp {text!r} has no time zone")
    return value


def verifier(*, replay: ReplayCache, now: datetime, required: bool
             ) -> Callable[[etree._Element], str | None]:
    """The `verify` step for `codec.parse`: check a signature when one is present, and demand
    one when `required`. Returns the signer's fingerprint, or None for an accepted unsigned
    payload."""

    def check(payload: etree._Element) -> str | None:
        if not required and payload.find(_SIGNATURE) is None:
            return None
        return verify(payload, expected_fingerprint=None, replay=replay, now=now)

    return check
