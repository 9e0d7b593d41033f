"""The XML-signature profile of OpenADR 2.0b, and nothing else, on lxml's C14N and `cryptography`.

The profile is what openleadr 0.5.36 produces (through signxml) and what `oadr.signing.sign`
produces:

    oadr:oadrPayload
      ds:Signature
        ds:SignedInfo
          ds:CanonicalizationMethod    REC-xml-c14n-20010315 (inclusive C14N 1.0, no comments)
          ds:SignatureMethod           xmldsig-more#rsa-sha256 or xmldsig-more#ecdsa-sha256
          ds:Reference URI="#oadrSignedObject"   } in either order, each holding
          ds:Reference URI="#<ds:Object's Id>"   } Transforms/Transform (C14N 1.0),
                                                   DigestMethod (xmlenc#sha256), DigestValue
        ds:SignatureValue              RSA: PKCS#1 v1.5. ECDSA: r||s, each padded to the curve's
                                       size (XMLDSig 1.1, ECDSA; RFC 4050), not DER
        ds:KeyInfo/ds:X509Data/ds:X509Certificate+   the first one is the signer's
        ds:Object Id=...
          ds:SignatureProperties/ds:SignatureProperty/dsp:ReplayProtect (timestamp, nonce)
      oadr:oadrSignedObject oadr:Id="oadrSignedObject"   (or an unqualified Id)

Rules of this file:
- Anything outside the profile is refused (`SignatureError`): other algorithms, transforms,
  references, KeyInfo contents, more or fewer elements than shown.
- References are resolved by position, never by searching the document for an Id (signature
  wrapping): "#oadrSignedObject" is the payload's own oadrSignedObject child, which must carry
  that Id, and the other reference must name the Id of the Signature's own ds:Object.
- A referenced element's digest is SHA-256 over `etree.tostring(element, method="c14n")`: inclusive
  C14N 1.0 of its subtree where it stands, so the namespaces in scope from its ancestors are
  rendered on it. That is byte for byte what signxml digests (it re-serialises the element with
  lxml, which copies the ancestors' namespaces, and canonicalises the copy); tests/test_signing.py
  checks it differentially. Like signxml, xml:* attributes of ancestors are not inherited (the
  profile has none).
- Comments, processing instructions and entity references anywhere in the payload are refused:
  C14N leaves them out of the digest, so what a reader sees could differ from what was signed (a
  comment inside the nonce changes the nonce lxml reads, not the digest).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from copy import deepcopy
from dataclasses import dataclass
from enum import Enum
from typing import Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from cryptography.x509 import load_der_x509_certificate
from lxml import etree

from .schema import DS, DSP, OADR

C14N: Final = "http://www.w3.org/TR/2001/REC-xml-c14n-20010315"
SHA256: Final = "http://www.w3.org/2001/04/xmlenc#sha256"
SIGNED_OBJECT_ID: Final = "oadrSignedObject"
PROPERTIES_ID: Final = "prop"  # signxml's Id for the ds:Object, which openleadr keeps

PAYLOAD: Final = f"{{{OADR}}}oadrPayload"
SIGNED_OBJECT: Final = f"{{{OADR}}}oadrSignedObject"
SIGNATURE: Final = f"{{{DS}}}Signature"
REPLAY_PROTECT: Final = f"{{{DSP}}}ReplayProtect"
_OADR_ID: Final = f"{{{OADR}}}Id"
_SIGNED_INFO, _C14N_METHOD, _SIGNATURE_METHOD = (
    f"{{{DS}}}SignedInfo", f"{{{DS}}}CanonicalizationMethod", f"{{{DS}}}SignatureMethod")
_REFERENCE, _TRANSFORMS, _TRANSFORM = (
    f"{{{DS}}}Reference", f"{{{DS}}}Transforms", f"{{{DS}}}Transform")
_DIGEST_METHOD, _DIGEST_VALUE, _SIGNATURE_VALUE = (
    f"{{{DS}}}DigestMethod", f"{{{DS}}}DigestValue", f"{{{DS}}}SignatureValue")
_KEY_INFO, _X509_DATA, _X509_CERTIFICATE = (
    f"{{{DS}}}KeyInfo", f"{{{DS}}}X509Data", f"{{{DS}}}X509Certificate")
_OBJECT, _PROPERTIES, _PROPERTY = (
    f"{{{DS}}}Object", f"{{{DS}}}SignatureProperties", f"{{{DS}}}SignatureProperty")
_TIMESTAMP, _NONCE = f"{{{DSP}}}timestamp", f"{{{DSP}}}nonce"
_PEM_BODY: Final = re.compile(
    r"-----BEGIN CERTIFICATE-----\r?\n(.+?)-----END CERTIFICATE-----", re.S)
_UNSIGNABLE: Final = (etree.Comment, etree.ProcessingInstruction, etree.Entity)

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey


class SignatureError(ValueError):
    """The payload's signature is outside the profile, or does not verify."""


class SignatureMethod(Enum):
    """The two signature methods of the profile; the value is the algorithm URI."""

    RSA_SHA256 = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"
    ECDSA_SHA256 = "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha256"

    @classmethod
    def for_key(cls, key: PrivateKey | PublicKey) -> SignatureMethod:
        if isinstance(key, (rsa.RSAPrivateKey, rsa.RSAPublicKey)):
            return cls.RSA_SHA256
        return cls.ECDSA_SHA256


def canonical(element: etree._Element) -> bytes:
    """Inclusive C14N 1.0, without comments, of `element`'s subtree in its document context."""
    return etree.tostring(element, method="c14n")


def digest(element: etree._Element) -> bytes:
    return hashlib.sha256(canonical(element)).digest()


def certificate_texts(cert_pem: bytes) -> tuple[str, ...]:
    """The X509Certificate texts for a PEM chain, spelt as signxml spells them (PEM lines)."""
    texts = tuple(m.replace("\r", "") for m in _PEM_BODY.findall(cert_pem.decode("ascii")))
    if not texts:
        raise ValueError("no PEM certificate block found")
    return texts


def signature_template(key: PrivateKey, certificates: tuple[str, ...]) -> etree._Element:
    """The profile's ds:Signature for `key` with empty DigestValues, SignatureValue, timestamp and
    nonce: built once per key, then copied and filled in by `sign_payload` (a copy costs a quarter
    of building it)."""
    sub = etree.SubElement
    signature = etree.Element(SIGNATURE, nsmap={"ds": DS})
    signed_info = sub(signature, _SIGNED_INFO)
    sub(signed_info, _C14N_METHOD, Algorithm=C14N)
    sub(signed_info, _SIGNATURE_METHOD, Algorithm=SignatureMethod.for_key(key).value)
    for uri in (SIGNED_OBJECT_ID, PROPERTIES_ID):
        reference = sub(signed_info, _REFERENCE, URI="#" + uri)
        sub(sub(reference, _TRANSFORMS), _TRANSFORM, Algorithm=C14N)
        sub(reference, _DIGEST_METHOD, Algorithm=SHA256)
        sub(reference, _DIGEST_VALUE)
    sub(signature, _SIGNATURE_VALUE)
    x509_data = sub(sub(signature, _KEY_INFO), _X509_DATA)
    for text in certificates:
        sub(x509_data, _X509_CERTIFICATE).text = text
    prop = sub(sub(sub(signature, _OBJECT, Id=PROPERTIES_ID), _PROPERTIES), _PROPERTY,
               Id="sigprop0", Target="#sigproptarget0")
    replay_protect = sub(prop, REPLAY_PROTECT, nsmap={"dsp": DSP})
    sub(replay_protect, _TIMESTAMP)
    sub(replay_protect, _NONCE)
    return signature


def sign_payload(payload: etree._Element, key: PrivateKey, template: etree._Element,
                 timestamp: str, nonce: str) -> None:
    """Insert a copy of `template` (from `signature_template` for `key`), filled in and signed,
    as the first child of `payload`: an oadrPayload holding only its oadrSignedObject."""
    signature = deepcopy(template)
    payload.insert(0, signature)
    signed_info, value, _, obj = signature
    replay_protect = obj[0][0][0]
    replay_protect[0].text = timestamp
    replay_protect[1].text = nonce
    signed_info[2][2].text = base64.b64encode(digest(payload[1])).decode("ascii")
    signed_info[3][2].text = base64.b64encode(digest(obj)).decode("ascii")
    value.text = base64.b64encode(_raw_signature(key, canonical(signed_info))).decode("ascii")


def _raw_signature(key: PrivateKey, data: bytes) -> bytes:
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
    size = (key.curve.key_size + 7) // 8
    return r.to_bytes(size, "big") + s.to_bytes(size, "big")


@dataclass(frozen=True)
class SignatureParts:
    """A payload's signature, read by `parse` but not yet checked by `check`."""

    signed_info: etree._Element
    method: SignatureMethod
    value: bytes
    certificate: bytes  # DER of the first X509Certificate: the signer's
    references: tuple[tuple[etree._Element, bytes], ...]  # (referenced element, DigestValue)
    replay_protect: etree._Element  # inside the referenced ds:Object


def parse(payload: etree._Element) -> SignatureParts:
    """Read the signature of an oadrPayload, checking only that it is the profile's.

    Raises:
        SignatureError: anything outside the profile.
        ValueError: base64 that does not decode (binascii.Error).
    """
    if next(payload.iter(*_UNSIGNABLE), None) is not None:
        raise SignatureError("comments, processing instructions and entity references are not "
                             "allowed in a signed payload")
    if payload.tag != PAYLOAD:
        raise SignatureError("not an oadrPayload")
    signature, signed_object = _children(payload, [SIGNATURE, SIGNED_OBJECT],
                                         "oadrPayload must hold ds:Signature, oadrSignedObject")
    if (signed_object.get(_OADR_ID) or signed_object.get("Id")) != SIGNED_OBJECT_ID:
        raise SignatureError(f"the oadrSignedObject must have Id={SIGNED_OBJECT_ID!r}")
    tags = [child.tag for child in signature]
    if tags == [_SIGNED_INFO, _SIGNATURE_VALUE, _KEY_INFO]:
        raise SignatureError("signature has no ds:Object with the dsp:ReplayProtect property")
    signed_info, value, key_info, obj = _children(
        signature, [_SIGNED_INFO, _SIGNATURE_VALUE, _KEY_INFO, _OBJECT],
        "ds:Signature must hold SignedInfo, SignatureValue, KeyInfo and the Object holding "
        "dsp:ReplayProtect")
    c14n, method_element, *references = _children(
        signed_info, [_C14N_METHOD, _SIGNATURE_METHOD, _REFERENCE, _REFERENCE],
        "SignedInfo must hold CanonicalizationMethod, SignatureMethod and two References "
        f"(#{SIGNED_OBJECT_ID} and the dsp:ReplayProtect object)")
    _algorithm(c14n, {C14N})
    method = SignatureMethod(_algorithm(method_element, {m.value for m in SignatureMethod}))
    object_id = obj.get("Id")
    targets = {"#" + SIGNED_OBJECT_ID: signed_object}
    if object_id and object_id != SIGNED_OBJECT_ID:
        targets["#" + object_id] = obj
    uris = [reference.get("URI") for reference in references]
    if sorted(uris, key=str) != sorted(targets):
        raise SignatureError(f"expected references to #{SIGNED_OBJECT_ID} and to the "
                             f"ds:Object holding dsp:ReplayProtect, got {uris}")
    resolved = tuple((targets[str(uri)], _digest_value(reference))
                     for uri, reference in zip(uris, references))
    (x509_data,) = _children(key_info, [_X509_DATA], "KeyInfo must hold only X509Data")
    certificates = list(x509_data)
    if not certificates or any(c.tag != _X509_CERTIFICATE for c in certificates):
        raise SignatureError("X509Data must hold X509Certificate elements only")
    (properties,) = _children(obj, [_PROPERTIES], "ds:Object must hold SignatureProperties")
    (prop,) = _children(properties, [_PROPERTY], "SignatureProperties must hold one "
                        "SignatureProperty")
    (replay_protect,) = _children(prop, [REPLAY_PROTECT], "SignatureProperty must hold "
                                  "dsp:ReplayProtect")
    for element in _children(replay_protect, [_TIMESTAMP, _NONCE],
                             "dsp:ReplayProtect must hold timestamp and nonce"):
        _children(element, [], "ReplayProtect values have no child elements")
    return SignatureParts(signed_info=signed_info, method=method, value=_base64(value),
                          certificate=_base64(certificates[0]), references=resolved,
                          replay_protect=replay_protect)


def check(parts: SignatureParts, public_key: PublicKey) -> None:
    """Verify the SignatureValue over the canonical SignedInfo with `public_key`, then every
    reference's digest.

    Raises:
        SignatureError: a wrong key type for the method, a wrong digest.
        cryptography.exceptions.InvalidSignature: the signature value does not verify.
    """
    data = canonical(parts.signed_info)
    if parts.method is SignatureMethod.RSA_SHA256:
        if not isinstance(public_key, rsa.RSAPublicKey):
            raise SignatureError("rsa-sha256 signature with a non-RSA certificate")
        public_key.verify(parts.value, data, padding.PKCS1v15(), hashes.SHA256())
    else:
        if not isinstance(public_key, ec.EllipticCurvePublicKey):
            raise SignatureError("ecdsa-sha256 signature with a non-EC certificate")
        size = (public_key.curve.key_size + 7) // 8
        if len(parts.value) != 2 * size:
            raise InvalidSignature(f"expected a {2 * size}-byte r||s ECDSA signature value")
        r, s = (int.from_bytes(parts.value[:size], "big"),
                int.from_bytes(parts.value[size:], "big"))
        public_key.verify(encode_dss_signature(r, s), data, ec.ECDSA(hashes.SHA256()))
    for element, expected in parts.references:
        if not hmac.compare_digest(digest(element), expected):
            raise SignatureError(f"digest mismatch for {etree.QName(element).localname}")


def public_key(certificate_der: bytes) -> PublicKey:
    key = load_der_x509_certificate(certificate_der).public_key()
    if not isinstance(key, (rsa.RSAPublicKey, ec.EllipticCurvePublicKey)):
        raise SignatureError(f"certificate key type {type(key).__name__} is not RSA or EC")
    return key


def _children(parent: etree._Element, tags: list[str], message: str) -> list[etree._Element]:
    children = list(parent)
    if [child.tag for child in children] != tags:
        raise SignatureError(message)
    return children


def _algorithm(element: etree._Element, allowed: set[str]) -> str:
    algorithm = element.get("Algorithm")
    if algorithm not in allowed or len(element):
        raise SignatureError(f"{etree.QName(element).localname} {algorithm!r} is not the "
                             f"profile's ({' or '.join(sorted(allowed))})")
    return algorithm


def _digest_value(reference: etree._Element) -> bytes:
    transforms, digest_method, digest_value = _children(
        reference, [_TRANSFORMS, _DIGEST_METHOD, _DIGEST_VALUE],
        "Reference must hold Transforms, DigestMethod and DigestValue")
    (transform,) = _children(transforms, [_TRANSFORM], "Transforms must hold one Transform")
    _algorithm(transform, {C14N})
    _algorithm(digest_method, {SHA256})
    value = _base64(digest_value)
    if len(value) != hashlib.sha256().digest_size:
        raise SignatureError("a SHA-256 DigestValue is 32 bytes")
    return value


def _base64(element: etree._Element) -> bytes:
    if len(element):
        raise SignatureError(f"{etree.QName(element).localname} must hold only base64 text")
    return base64.b64decode("".join((element.text or "").split()), validate=True)
