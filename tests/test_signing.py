"""oadr.signing: interop with openleadr 0.5.36 both ways, refusals, and the replay caches.

oadr.xmldsig implements the OpenADR signature profile without signxml; signxml (what openleadr
signs and verifies with, and what oadr.signing used before) is the reference here: both verifiers
accept each other's signatures, and canonical forms and digests are compared byte for byte.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import time
from collections.abc import AsyncIterator, Callable, Iterator
from copy import deepcopy
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from itertools import count

import pytest
import redis
import redis.asyncio
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from lxml import etree
from openleadr import messaging as ol_messaging  # type: ignore[import-untyped]
from openleadr import utils as ol_utils
from signxml import XMLSigner, XMLVerifier
from signxml.algorithms import DigestAlgorithm, SignatureConstructionMethod
from signxml import SignatureMethod as SignxmlMethod
from signxml.verifier import SignatureConfiguration, VerifyResult

from adrgate.replay import RedisReplayCache
from adrgate.services import free_port
from oadr.errors import NotRegisteredOrAuthorized
from oadr import xmldsig
from oadr.schema import DS, DSP, EI, NSMAP, OADR, parse_xml, schema_errors
from oadr.signing import (
    InMemoryReplayCache,
    SigningKey,
    admit,
    check_signature,
    envelope,
    fingerprint,
    sign,
    verifier,
    verify,
)
from tests.certs import Leaf, Pki, write_pki
from tests.services import RedisServer, start_redis

T0 = datetime(2025, 1, 6, 9, 0, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return write_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module", params=["rsa", "ecc"])
def leaf(request: pytest.FixtureRequest, pki: Pki) -> Leaf:
    return {"rsa": pki.ven_rsa, "ecc": pki.ven_ecc}[request.param]


@pytest.fixture(scope="module")
def key(leaf: Leaf) -> SigningKey:
    return SigningKey.load(leaf.cert_pem, leaf.key_pem)


_nonces = count()


def nonce() -> str:
    return f"nonce-{next(_nonces)}-{time.time_ns()}"


@dataclass
class Clock:
    now: datetime = T0

    def __call__(self) -> datetime:
        return self.now


def poll_object(ven_id: str = "ven123") -> etree._Element:
    obj = etree.Element(f"{{{OADR}}}oadrSignedObject", nsmap=NSMAP)
    poll = etree.SubElement(obj, f"{{{OADR}}}oadrPoll", {f"{{{EI}}}schemaVersion": "2.0b"})
    etree.SubElement(poll, f"{{{EI}}}venID").text = ven_id
    return obj


def distribute_event_object() -> etree._Element:
    """A realistic oadrSignedObject (whitespace, many namespaces) rendered by openleadr."""
    xml = ol_messaging.create_message(
        "oadrDistributeEvent", request_id="req1", vtn_id="vtn1", response={
            "response_code": 200, "response_description": "OK", "request_id": "req1"},
        events=[{
            "event_descriptor": {
                "event_id": "ev1", "modification_number": 0, "priority": 0,
                "market_context": "http://mc", "event_status": "far", "test_event": False,
                "created_date_time": T0},
            "active_period": {"dtstart": T0 + timedelta(hours=1),
                              "duration": timedelta(hours=1)},
            "event_signals": [{
                "signal_name": "simple", "signal_type": "level", "signal_id": "s1",
                "intervals": [{"duration": timedelta(minutes=30), "uid": 0,
                               "signal_payload": 1.0},
                              {"duration": timedelta(minutes=30), "uid": 1,
                               "signal_payload": 2.0}]}],
            "targets": [{"ven_id": "ven123"}],
            "response_required": "always"}])
    root = etree.fromstring(xml.encode())
    obj = root.find(f"{{{OADR}}}oadrSignedObject")
    assert obj is not None
    return obj


def _openleadr_object(message_type: str, **fields: object) -> etree._Element:
    root = etree.fromstring(ol_messaging.create_message(message_type, **fields).encode())
    obj = root.find(f"{{{OADR}}}oadrSignedObject")
    assert obj is not None
    return obj


RESPONSE_FIELDS: dict[str, object] = {"ven_id": "ven123", "response": {
    "response_code": 200, "response_description": "OK", "request_id": "req1"}}
# openleadr's templates do not escape, so its non-ASCII text is free of markup characters.
NON_ASCII_FIELDS: dict[str, object] = {"ven_id": "vén-東京", "response": {
    "response_code": 200, "response_description": "Überlast – 東京 ⚡ café", "request_id": "ré"}}


def response_object() -> etree._Element:
    """An oadrResponse as openleadr renders it: indentation, a default namespace on requestID."""
    return _openleadr_object("oadrResponse", **RESPONSE_FIELDS)


def non_ascii_object() -> etree._Element:
    """Non-ASCII text and markup characters (escaped by lxml), in an oadrResponse."""
    obj = response_object()
    description = obj.find(f".//{{{EI}}}responseDescription")
    assert description is not None
    description.text = "Überlast – 東京 ⚡ <&> \"quoted\" 'single' \t tab, €, 𝄞"
    return obj


OBJECTS = [poll_object, response_object, distribute_event_object, non_ascii_object]
OBJECT_IDS = ["poll", "response", "distribute_event", "non_ascii"]


def roundtrip(payload: etree._Element) -> etree._Element:
    """What the peer sees: bytes through the hardened parser."""
    return parse_xml(etree.tostring(payload, xml_declaration=True, encoding="utf-8"))


async def our_verify(payload: etree._Element, key: SigningKey, *, now: datetime | None = None,
                     replay: InMemoryReplayCache | None = None,
                     expected: str | None = None) -> str:
    now = now or datetime.now(timezone.utc)
    if replay is None:
        replay = InMemoryReplayCache(lambda: now)
    return await verify(payload, expected_fingerprint=expected or key.fingerprint, replay=replay,
                        now=now)


# --- fingerprint and key loading ---------------------------------------------------------------


def test_fingerprint_matches_openleadr(leaf: Leaf) -> None:
    expected = ol_utils.certificate_fingerprint(leaf.cert_pem.decode())
    der = ol_utils.ssl.PEM_cert_to_DER_cert(leaf.cert_pem.decode())
    assert fingerprint(leaf.cert_pem) == expected
    assert fingerprint(der) == expected
    assert len(expected.split(":")) == 10 and expected == expected.upper()


@pytest.mark.parametrize("der", [b"0\x03\x02\x01\n", b"0\x03\x02\x01 ", b"0\x03\x02\x01\x00"],
                         ids=["ends_newline", "ends_space", "ends_nul"])
def test_fingerprint_keeps_der_bytes_intact(der: bytes) -> None:
    # Regression: DER is binary; stripping "whitespace" changed ~1 certificate in 30.
    assert fingerprint(der) == ol_utils.certificate_fingerprint_from_der(der)


def test_fingerprint_rejects_pem_without_certificate() -> None:
    with pytest.raises(ValueError):
        fingerprint(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")


def test_load_picks_method_and_refuses_a_foreign_key(pki: Pki) -> None:
    rsa_key = SigningKey.load(pki.ven_rsa.cert_pem, pki.ven_rsa.key_pem)
    ecc_key = SigningKey.load(pki.ven_ecc.cert_pem, pki.ven_ecc.key_pem)
    assert rsa_key.method.name == "RSA_SHA256"
    assert ecc_key.method.name == "ECDSA_SHA256"
    with pytest.raises(ValueError, match="does not belong"):
        SigningKey.load(pki.ven_rsa.cert_pem, pki.vtn_rsa.key_pem)


def test_method_may_be_given_as_signxmls_enum_or_uri(pki: Pki) -> None:
    # bench/pki.py builds SigningKey directly with signxml's enum.
    loaded = SigningKey.load(pki.ven_ecc.cert_pem, pki.ven_ecc.key_pem)
    for method in (SignxmlMethod.ECDSA_SHA256, SignxmlMethod.ECDSA_SHA256.value):
        key = SigningKey(private_key=loaded.private_key, cert_pem=loaded.cert_pem,
                         method=method, fingerprint=loaded.fingerprint)  # type: ignore[arg-type]
        assert key.method is xmldsig.SignatureMethod.ECDSA_SHA256
    with pytest.raises(ValueError, match="ECDSA_SHA256"):
        SigningKey(private_key=loaded.private_key, cert_pem=loaded.cert_pem,
                   method=xmldsig.SignatureMethod.RSA_SHA256, fingerprint=loaded.fingerprint)


# --- what we sign: schema and openleadr ---------------------------------------------------------


@pytest.mark.parametrize("make_object", OBJECTS, ids=OBJECT_IDS)
async def test_signed_payload_is_valid_and_signxml_and_openleadr_accept_it(
        key: SigningKey, make_object: Callable[[], etree._Element]) -> None:
    payload = sign(make_object(), key, now=datetime.now(timezone.utc), nonce=nonce())
    data = etree.tostring(payload, xml_declaration=True, encoding="utf-8")

    assert schema_errors(parse_xml(data)) == []
    assert len(signxml_verify(data, key)) == 2
    # Exactly what openleadr's OpenADRClient does with a VTN response (client.py, _perform_request)
    tree = ol_messaging.validate_xml_schema(data)
    ol_messaging.validate_xml_signature(tree, cert_fingerprint=key.fingerprint)
    assert await our_verify(parse_xml(data), key) == key.fingerprint


async def test_sign_does_not_depend_on_the_objects_original_context(key: SigningKey) -> None:
    # A signed object built inside another tree with extra in-scope namespaces, and one without
    # an Id: both come out verifiable, and the input is left untouched.
    holder = etree.Element("holder", nsmap={"x": "urn:x", **NSMAP})
    obj = etree.SubElement(holder, f"{{{OADR}}}oadrSignedObject")
    obj.append(poll_object()[0])
    before = etree.tostring(holder)
    payload = sign(obj, key, now=datetime.now(timezone.utc), nonce=nonce())
    assert etree.tostring(holder) == before
    data = etree.tostring(payload)
    ol_messaging.validate_xml_signature(ol_messaging.validate_xml_schema(data),
                                        cert_fingerprint=key.fingerprint)
    assert await our_verify(parse_xml(data), key) == key.fingerprint


def test_envelope_is_unsigned_and_valid() -> None:
    payload = envelope(poll_object())
    assert payload.find(f"{{{DS}}}Signature") is None
    assert schema_errors(roundtrip(payload)) == []
    with pytest.raises(ValueError):
        envelope(poll_object()[0])


def test_sign_rejects_naive_clock_and_empty_nonce(key: SigningKey) -> None:
    with pytest.raises(ValueError):
        sign(poll_object(), key, now=datetime(2025, 1, 1), nonce="n")
    with pytest.raises(ValueError):
        sign(poll_object(), key, now=T0, nonce="")


# --- what openleadr signs: we accept it ---------------------------------------------------------


OPENLEADR_MESSAGES: list[tuple[str, dict[str, object]]] = [
    ("oadrPoll", {"ven_id": "ven123"}),
    ("oadrResponse", RESPONSE_FIELDS),
    ("oadrResponse", NON_ASCII_FIELDS),
    ("oadrCreatePartyRegistration", {
        "ven_name": "Wärmepumpe 東京", "http_pull_model": True, "xml_signature": True,
        "report_only": False, "profile_name": "2.0b", "transport_name": "simpleHttp",
        "transport_address": None, "request_id": "req1"}),
]


@pytest.mark.parametrize(("message_type", "fields"), OPENLEADR_MESSAGES,
                         ids=["poll", "response", "non_ascii", "registration"])
async def test_openleadr_signed_message_is_accepted(leaf: Leaf, key: SigningKey, message_type: str,
                                                    fields: dict[str, object]) -> None:
    xml = ol_messaging.create_message(message_type, cert=leaf.cert_pem, key=leaf.key_pem,
                                      **fields)
    assert await our_verify(parse_xml(xml.encode()), key) == key.fingerprint


async def test_openleadr_signed_message_with_other_expected_fingerprint_is_refused(
        pki: Pki, leaf: Leaf) -> None:
    xml = ol_messaging.create_message("oadrPoll", cert=leaf.cert_pem, key=leaf.key_pem,
                                      ven_id="ven123")
    other = fingerprint(pki.vtn_rsa.cert_pem)
    with pytest.raises(NotRegisteredOrAuthorized, match="expected"):
        await verify(parse_xml(xml.encode()), expected_fingerprint=other,
                     replay=InMemoryReplayCache(lambda: T0), now=datetime.now(timezone.utc))


# --- refusals -----------------------------------------------------------------------------------


async def test_no_expected_fingerprint_returns_the_signer(key: SigningKey) -> None:
    payload = roundtrip(sign(poll_object(), key, now=T0, nonce=nonce()))
    signer = await verify(payload, expected_fingerprint=None,
                          replay=InMemoryReplayCache(lambda: T0), now=T0)
    assert signer == key.fingerprint


async def test_lower_case_expected_fingerprint_matches(key: SigningKey) -> None:
    payload = roundtrip(sign(poll_object(), key, now=T0, nonce=nonce()))
    signer = await our_verify(payload, key, now=T0, expected=key.fingerprint.lower())
    assert signer == key.fingerprint


async def test_unsigned_payload_is_refused(key: SigningKey) -> None:
    with pytest.raises(NotRegisteredOrAuthorized, match="unsigned"):
        await our_verify(roundtrip(envelope(poll_object())), key, now=T0)


async def test_not_a_payload_is_refused(key: SigningKey) -> None:
    with pytest.raises(NotRegisteredOrAuthorized, match="unsigned"):
        await our_verify(poll_object(), key, now=T0)


async def test_tampered_content_is_refused(key: SigningKey) -> None:
    payload = roundtrip(sign(poll_object("ven123"), key, now=T0, nonce=nonce()))
    payload.find(f".//{{{EI}}}venID").text = "ven999"  # type: ignore[union-attr]
    with pytest.raises(NotRegisteredOrAuthorized, match="invalid XML signature"):
        await our_verify(payload, key, now=T0)


async def test_tampered_replay_protect_is_refused(key: SigningKey) -> None:
    payload = roundtrip(sign(poll_object(), key, now=T0, nonce="original"))
    payload.find(f".//{{{DSP}}}nonce").text = "fresh"  # type: ignore[union-attr]
    with pytest.raises(NotRegisteredOrAuthorized, match="invalid XML signature"):
        await our_verify(payload, key, now=T0)


async def test_tampered_content_with_recomputed_digests_is_refused(key: SigningKey) -> None:
    # Only the SignatureValue over SignedInfo stops this one.
    payload = roundtrip(sign(poll_object("ven123"), key, now=T0, nonce=nonce()))
    _find(payload, f".//{{{EI}}}venID").text = "ven999"
    parts = xmldsig.parse(payload)
    for (element, _), reference in zip(parts.references,
                                       payload.iterfind(f".//{{{DS}}}Reference")):
        _find(reference, f"{{{DS}}}DigestValue").text = (
            base64.b64encode(xmldsig.digest(element)).decode())
    with pytest.raises(NotRegisteredOrAuthorized, match="invalid XML signature"):
        await our_verify(payload, key, now=T0)


async def test_altered_signature_value_is_refused(key: SigningKey) -> None:
    payload = roundtrip(sign(poll_object(), key, now=T0, nonce=nonce()))
    value = _find(payload, f".//{{{DS}}}SignatureValue")
    raw = bytearray(base64.b64decode(value.text or ""))
    raw[len(raw) // 2] ^= 1
    value.text = base64.b64encode(bytes(raw)).decode()
    with pytest.raises(NotRegisteredOrAuthorized, match="invalid XML signature"):
        await our_verify(payload, key, now=T0)


async def test_wrong_fingerprint_is_refused(pki: Pki, key: SigningKey) -> None:
    payload = roundtrip(sign(poll_object(), key, now=T0, nonce=nonce()))
    with pytest.raises(NotRegisteredOrAuthorized, match="expected"):
        await our_verify(payload, key, now=T0, expected=fingerprint(pki.vtn_ecc.cert_pem))


async def test_swapped_certificate_is_refused(pki: Pki, key: SigningKey) -> None:
    # Someone else's certificate in KeyInfo: the fingerprint is then theirs, and the signature
    # does not verify with their key either.
    payload = roundtrip(sign(poll_object(), key, now=T0, nonce=nonce()))
    other = SigningKey.load(pki.vtn_rsa.cert_pem, pki.vtn_rsa.key_pem)
    cert = payload.find(f".//{{{DS}}}X509Certificate")
    assert cert is not None
    cert.text = b"".join(other.cert_pem.strip().splitlines()[1:-1]).decode()
    with pytest.raises(NotRegisteredOrAuthorized):
        await our_verify(payload, key, now=T0)
    with pytest.raises(NotRegisteredOrAuthorized, match="invalid XML signature"):
        await our_verify(payload, other, now=T0)


async def test_replayed_nonce_is_refused(key: SigningKey) -> None:
    cache = InMemoryReplayCache(lambda: T0)
    payload = roundtrip(sign(poll_object(), key, now=T0, nonce="once"))
    assert await our_verify(deepcopy(payload), key, now=T0, replay=cache) == key.fingerprint
    with pytest.raises(NotRegisteredOrAuthorized, match="already used"):
        await our_verify(payload, key, now=T0 + timedelta(seconds=1), replay=cache)


async def test_same_nonce_from_another_signer_is_not_a_replay(pki: Pki) -> None:
    cache = InMemoryReplayCache(lambda: T0)
    for leaf in (pki.ven_rsa, pki.ven_ecc):
        key = SigningKey.load(leaf.cert_pem, leaf.key_pem)
        payload = roundtrip(sign(poll_object(), key, now=T0, nonce="shared"))
        assert await our_verify(payload, key, now=T0, replay=cache) == key.fingerprint


async def test_stale_timestamp_is_refused(key: SigningKey) -> None:
    payload = roundtrip(sign(poll_object(), key, now=T0, nonce=nonce()))
    with pytest.raises(NotRegisteredOrAuthorized, match="ago"):
        await our_verify(payload, key, now=T0 + timedelta(minutes=5, seconds=1))
    assert await our_verify(payload, key, now=T0 + timedelta(minutes=5)) == key.fingerprint


async def test_future_timestamp_is_refused(key: SigningKey) -> None:
    payload = roundtrip(sign(poll_object(), key, now=T0 + timedelta(minutes=2), nonce=nonce()))
    with pytest.raises(NotRegisteredOrAuthorized, match="future"):
        await our_verify(payload, key, now=T0)


async def test_refused_message_does_not_consume_its_nonce(key: SigningKey) -> None:
    cache = InMemoryReplayCache(lambda: T0)
    payload = roundtrip(sign(poll_object(), key, now=T0, nonce="kept"))
    with pytest.raises(NotRegisteredOrAuthorized):
        await our_verify(deepcopy(payload), key, now=T0, expected="00:" * 9 + "00", replay=cache)
    assert await our_verify(payload, key, now=T0, replay=cache) == key.fingerprint


C14N_10 = "http://www.w3.org/TR/2001/REC-xml-c14n-20010315"


def replay_protect(now: datetime, nonce_text: str) -> etree._Element:
    element = etree.Element(f"{{{DSP}}}ReplayProtect", nsmap={"dsp": DSP})
    etree.SubElement(element, f"{{{DSP}}}timestamp").text = (
        now.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
    etree.SubElement(element, f"{{{DSP}}}nonce").text = nonce_text
    return element


def signxml_sign(obj: etree._Element, key: SigningKey, properties: etree._Element | None, *,
                 c14n: str = C14N_10, method: str | None = None,
                 digest: str = DigestAlgorithm.SHA256.value) -> etree._Element:
    """The reference signer: signxml configured as openleadr's create_message configures it (and as
    oadr.signing did before oadr.xmldsig), inside our envelope."""
    payload = envelope(obj)
    signer = XMLSigner(method=SignatureConstructionMethod.detached,
                       signature_algorithm=method or key.method.value,
                       digest_algorithm=digest, c14n_algorithm=c14n)
    signer.namespaces["oadr"] = OADR
    payload.insert(0, signer.sign(payload, key=key.private_key, cert=key.cert_pem.decode(),
                                  reference_uri="#oadrSignedObject",
                                  signature_properties=properties))
    return payload


def signxml_verify(payload: bytes | etree._Element, key: SigningKey) -> list[VerifyResult]:
    """The reference verifier: what openleadr's validate_xml_signature runs."""
    results = XMLVerifier().verify(payload, x509_cert=x509.load_pem_x509_certificate(
        key.cert_pem), expect_config=SignatureConfiguration(expect_references=2))
    assert isinstance(results, list)
    return results


@pytest.mark.parametrize("properties", [None, etree.Element("{urn:x}Other")],
                         ids=["no_properties", "other_property"])
async def test_missing_replay_protect_is_refused(key: SigningKey,
                                                 properties: etree._Element | None) -> None:
    payload = roundtrip(signxml_sign(poll_object(), key, deepcopy(properties)))
    with pytest.raises(NotRegisteredOrAuthorized, match="ReplayProtect"):
        await our_verify(payload, key, now=T0)


def _move_genuine_into_object(payload: etree._Element, genuine: etree._Element,
                              forged: etree._Element) -> None:
    payload.replace(genuine, forged)
    _find(payload, f".//{{{DS}}}Object").append(genuine)


def _move_genuine_into_key_info(payload: etree._Element, genuine: etree._Element,
                                forged: etree._Element) -> None:
    payload.replace(genuine, forged)
    _find(payload, f".//{{{DS}}}KeyInfo").append(genuine)


def _forged_first(payload: etree._Element, genuine: etree._Element,
                  forged: etree._Element) -> None:
    genuine.addprevious(forged)


def _forged_after(payload: etree._Element, genuine: etree._Element,
                  forged: etree._Element) -> None:
    payload.append(forged)


def _wrapped_in_extension(payload: etree._Element, genuine: etree._Element,
                          forged: etree._Element) -> None:
    # The genuine object inside an unknown element in its place; the forged one after it.
    wrapper = etree.Element("{urn:x}wrapper")
    payload.replace(genuine, wrapper)
    wrapper.append(genuine)
    payload.append(forged)


def _nested_in_forged(payload: etree._Element, genuine: etree._Element,
                      forged: etree._Element) -> None:
    # The genuine object inside the forged one, where only the forged one is read.
    payload.replace(genuine, forged)
    forged[0].append(genuine)


def _fresh_replay_protect(payload: etree._Element, genuine: etree._Element,
                          forged: etree._Element) -> None:
    # A second ds:Object with a fresh nonce, the genuine one kept for the digest.
    signature = _find(payload, f"{{{DS}}}Signature")
    fresh = deepcopy(_find(signature, f"{{{DS}}}Object"))
    _find(fresh, f".//{{{DSP}}}nonce").text = "fresh"
    fresh.set("Id", "fresh")
    signature.insert(3, fresh)


WRAPPINGS = [_move_genuine_into_object, _move_genuine_into_key_info, _forged_first,
             _forged_after, _wrapped_in_extension, _nested_in_forged, _fresh_replay_protect]


def _find(element: etree._Element, path: str) -> etree._Element:
    found = element.find(path)
    assert found is not None, path
    return found


@pytest.mark.parametrize("forged_id", [None, "oadrSignedObject"], ids=["no_id", "same_id"])
@pytest.mark.parametrize("wrap", WRAPPINGS, ids=[w.__name__.strip("_") for w in WRAPPINGS])
async def test_signature_wrapping_is_refused(key: SigningKey, wrap: Callable[..., None],
                                             forged_id: str | None) -> None:
    # An unsigned oadrSignedObject is put where a reader would look, and the genuine signed one
    # (or signed ReplayProtect) is kept somewhere a global Id search would still find it.
    payload = roundtrip(sign(poll_object("ven123"), key, now=T0, nonce=nonce()))
    genuine = _find(payload, f"{{{OADR}}}oadrSignedObject")
    forged = poll_object("ven666")
    if forged_id is not None:
        forged.set(f"{{{OADR}}}Id", forged_id)
    wrap(payload, genuine, forged)
    with pytest.raises(NotRegisteredOrAuthorized, match="invalid XML signature"):
        await our_verify(roundtrip(payload), key, now=T0)


async def test_comment_inside_signed_content_is_refused_or_dropped(key: SigningKey) -> None:
    # C14N leaves comments out of the digest: a comment splitting the nonce must not make lxml
    # read another nonce from a validly signed message (a replay that dodges the nonce cache).
    payload = roundtrip(sign(poll_object(), key, now=T0, nonce="abcd"))
    split = deepcopy(payload)
    nonce_element = _find(split, f".//{{{DSP}}}nonce")
    nonce_element.text = "ab"
    nonce_element.append(etree.Comment("x"))
    nonce_element[0].tail = "cd"
    assert nonce_element.text == "ab"
    with pytest.raises(NotRegisteredOrAuthorized, match="comments"):
        await our_verify(split, key, now=T0)
    # Over the wire the hardened parser drops the comment and joins the text: the original nonce.
    data = etree.tostring(payload).replace(b">abcd<", b">ab<!--x-->cd<")
    cache = InMemoryReplayCache(lambda: T0)
    assert await our_verify(parse_xml(data), key, now=T0, replay=cache) == key.fingerprint
    with pytest.raises(NotRegisteredOrAuthorized, match="already used"):
        await our_verify(roundtrip(payload), key, now=T0, replay=cache)


# --- the profile, strictly ----------------------------------------------------------------------


@pytest.mark.parametrize(("option", "value"), [
    ("c14n", "http://www.w3.org/2001/10/xml-exc-c14n#"),
    ("c14n", "http://www.w3.org/2006/12/xml-c14n11"),
    ("digest", DigestAlgorithm.SHA512.value),
    ("method", "sha512"),
], ids=["exclusive_c14n", "c14n_11", "sha512_digest", "sha512_signature"])
async def test_valid_signatures_outside_the_profile_are_refused(key: SigningKey, option: str,
                                                                value: str) -> None:
    if option == "method":
        value = (SignxmlMethod.RSA_SHA512 if key.method.name == "RSA_SHA256"
                 else SignxmlMethod.ECDSA_SHA512).value
    payload = roundtrip(signxml_sign(poll_object(), key, replay_protect(T0, nonce()),
                                     **{option: value}))
    assert len(signxml_verify(deepcopy(payload), key)) == 2  # a valid XML signature...
    with pytest.raises(NotRegisteredOrAuthorized, match="profile's"):  # ...but not OpenADR's
        await our_verify(payload, key, now=T0)


async def test_ecdsa_signature_value_must_be_r_and_s_not_der(pki: Pki) -> None:
    key = SigningKey.load(pki.ven_ecc.cert_pem, pki.ven_ecc.key_pem)
    payload = roundtrip(sign(poll_object(), key, now=T0, nonce=nonce()))
    value = _find(payload, f".//{{{DS}}}SignatureValue")
    raw = base64.b64decode(value.text or "")
    assert len(raw) == 64  # P-256: 32-byte r, 32-byte s
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    value.text = base64.b64encode(der).decode()
    with pytest.raises(NotRegisteredOrAuthorized, match=r"r\|\|s"):
        await our_verify(payload, key, now=T0)


async def test_signature_method_must_match_the_certificate(pki: Pki) -> None:
    key = SigningKey.load(pki.ven_rsa.cert_pem, pki.ven_rsa.key_pem)
    payload = roundtrip(sign(poll_object(), key, now=T0, nonce=nonce()))
    _find(payload, f".//{{{DS}}}SignatureMethod").set(
        "Algorithm", xmldsig.SignatureMethod.ECDSA_SHA256.value)
    with pytest.raises(NotRegisteredOrAuthorized, match="non-EC certificate"):
        await our_verify(payload, key, now=T0)


# --- differential: canonical forms and digests equal signxml's ----------------------------------


def _canonical_references(payload: etree._Element) -> list[bytes]:
    parts = xmldsig.parse(payload)
    for element, digest_value in parts.references:
        assert hashlib.sha256(xmldsig.canonical(element)).digest() == digest_value
    return [xmldsig.canonical(element) for element, _ in parts.references]


@pytest.mark.parametrize("signer", ["ours", "signxml"])
@pytest.mark.parametrize("make_object", OBJECTS, ids=OBJECT_IDS)
async def test_canonical_forms_and_digests_equal_signxmls(
        key: SigningKey, make_object: Callable[[], etree._Element], signer: str) -> None:
    now = datetime.now(timezone.utc)
    if signer == "ours":
        payload = sign(make_object(), key, now=now, nonce=nonce())
    else:
        payload = signxml_sign(make_object(), key, replay_protect(now, nonce()))
    received = roundtrip(payload)
    reference = [result.signed_data for result in signxml_verify(deepcopy(received), key)]
    # Our canonical form of each referenced element, in the received tree and in the tree as
    # signed, is byte for byte what signxml digested; and its SHA-256 is the DigestValue.
    assert _canonical_references(received) == reference
    assert _canonical_references(payload) == reference
    assert await our_verify(received, key, now=now) == key.fingerprint


def test_our_signature_is_signxmls_byte_for_byte(pki: Pki) -> None:
    # RSA PKCS#1 v1.5 is deterministic: same object, time and nonce give the same signature.
    key = SigningKey.load(pki.ven_rsa.cert_pem, pki.ven_rsa.key_pem)
    for make_object in OBJECTS:
        ours = sign(make_object(), key, now=T0, nonce="n1")
        reference = signxml_sign(make_object(), key, replay_protect(T0, "n1"))
        assert etree.tostring(ours, method="c14n") == etree.tostring(reference, method="c14n")


def test_ecdsa_signature_is_signxmls_but_for_the_value(pki: Pki) -> None:
    key = SigningKey.load(pki.ven_ecc.cert_pem, pki.ven_ecc.key_pem)
    ours = sign(distribute_event_object(), key, now=T0, nonce="n1")
    reference = signxml_sign(distribute_event_object(), key, replay_protect(T0, "n1"))
    for payload in (ours, reference):
        _find(payload, f".//{{{DS}}}SignatureValue").text = ""
    assert etree.tostring(ours, method="c14n") == etree.tostring(reference, method="c14n")


TRICKY_OBJECT = (
    '<oadr:oadrSignedObject xmlns:oadr="http://openadr.org/oadr-2.0b/2012/07" '
    'xmlns:ei="http://docs.oasis-open.org/ns/energyinterop/201110" xmlns="urn:default" '
    'xmlns:unused="urn:unused" oadr:Id="oadrSignedObject">\n  '
    '<oadr:oadrResponse ei:schemaVersion="2.0b" z="&#9;tab&#10;lf&#13;cr &lt;&amp;&quot;" a="1">'
    '<ei:responseDescription xml:lang="de">Über &amp; &lt;unter&gt; \r\n "q" \'s\' &#x1D11E;'
    '</ei:responseDescription><plain xmlns=""><![CDATA[cdata <x> & ]]]]><![CDATA[>]]></plain>'
    '<empty></empty><x:y xmlns:x="urn:x" x:b="2" x:a="1"/></oadr:oadrResponse>\n'
    '</oadr:oadrSignedObject>').encode()


@pytest.mark.parametrize("context", [{}, {"ei": EI, "x": "urn:other", None: "urn:outer"}],
                         ids=["oadr_only", "extra_namespaces"])
async def test_canonicalization_edge_cases_and_payload_context(
        key: SigningKey, context: dict[str | None, str]) -> None:
    # Attribute order, escapes, CR/LF/tab, CDATA, empty elements, default namespace and its
    # undeclaration, xml:lang, unused and shadowed prefixes, a non-BMP character; and, signed
    # by xmldsig.sign_payload directly, a payload declaring namespaces of its own, which inclusive
    # C14N renders on every referenced element and on SignedInfo.
    payload = etree.Element(f"{{{OADR}}}oadrPayload", nsmap={"oadr": OADR, **context})
    payload.append(etree.fromstring(TRICKY_OBJECT))
    xmldsig.sign_payload(payload, key.private_key, key._template,  # noqa: SLF001
                         "2025-01-06T09:00:00.000000Z", nonce())
    received = roundtrip(payload)
    reference = [result.signed_data for result in signxml_verify(deepcopy(received), key)]
    assert _canonical_references(received) == reference
    assert b'xmlns="urn:default"' in reference[0] and b"&#xD;" in reference[0]
    assert await our_verify(received, key, now=T0) == key.fingerprint
    # signxml signs the same object (in an oadr-only envelope) to the same digests.
    if not context:
        other = roundtrip(signxml_sign(etree.fromstring(TRICKY_OBJECT), key,
                                       replay_protect(T0, "x")))
        assert _canonical_references(other)[0] == reference[0]
        assert await our_verify(other, key, now=T0) == key.fingerprint


def _mutations(payload: etree._Element) -> Iterator[etree._Element]:
    """Every element of the signature removed, emptied, or given junk text, one at a time."""
    signature = payload.find(f"{{{DS}}}Signature")
    assert signature is not None
    for index, _ in enumerate(signature.iter()):
        for action in ("remove", "empty", "junk"):
            copy = deepcopy(payload)
            target = list(copy.find(f"{{{DS}}}Signature").iter())[index]  # type: ignore[union-attr]
            if action == "remove":
                parent = target.getparent()
                if parent is None:
                    continue
                parent.remove(target)
            elif action == "empty":
                target.text = None
                for child in list(target):
                    target.remove(child)
            else:
                target.text = "%%not base64 or a date%%"
            yield copy


async def test_malformed_signatures_raise_only_not_authorized(key: SigningKey) -> None:
    payload = roundtrip(sign(poll_object(), key, now=T0, nonce=nonce()))
    tried = 0
    for mutated in _mutations(payload):
        tried += 1
        try:
            await our_verify(mutated, key, now=T0)
        except NotRegisteredOrAuthorized:
            pass
    assert tried > 50


# --- the two steps: check_signature (pure) and admit (awaits the replay cache) -----------------


async def test_check_signature_records_nothing_and_admit_records_once(key: SigningKey) -> None:
    payload = roundtrip(sign(poll_object(), key, now=T0, nonce="step"))
    verified = check_signature(payload, expected_fingerprint=None, now=T0 + timedelta(seconds=10))
    assert check_signature(payload, expected_fingerprint=None,
                           now=T0 + timedelta(seconds=10)) == verified  # no state, no cache
    assert verified.signer == key.fingerprint
    assert verified.replay_key.startswith("oadr:nonce:") and "step" not in verified.replay_key
    # remembered until the timestamp check alone refuses the message (5 min after signing), +1 s
    assert verified.replay_ttl == timedelta(minutes=5, seconds=1) - timedelta(seconds=10)
    cache = InMemoryReplayCache(lambda: T0)
    assert await admit(verified, cache) == key.fingerprint
    with pytest.raises(NotRegisteredOrAuthorized, match="already used"):
        await admit(verified, cache)
    with pytest.raises(ValueError):
        check_signature(payload, expected_fingerprint=None, now=datetime(2025, 1, 6, 9))


def test_verifier_checks_present_or_required_signatures(key: SigningKey) -> None:
    signed = roundtrip(sign(poll_object(), key, now=T0, nonce=nonce()))
    unsigned = roundtrip(envelope(poll_object()))
    assert verifier(now=T0, required=False)(unsigned) is None
    with pytest.raises(NotRegisteredOrAuthorized, match="unsigned"):
        verifier(now=T0, required=True)(unsigned)
    for required in (False, True):
        verified = verifier(now=T0, required=required)(signed)
        assert verified is not None and verified.signer == key.fingerprint


# --- in-memory replay cache ---------------------------------------------------------------------


async def test_in_memory_cache_expires_by_clock() -> None:
    clock = Clock()
    cache = InMemoryReplayCache(clock)
    assert await cache.seen("a", timedelta(seconds=10)) is False
    assert await cache.seen("a", timedelta(seconds=10)) is True
    clock.now = T0 + timedelta(seconds=9)
    assert await cache.seen("a", timedelta(seconds=10)) is True
    clock.now = T0 + timedelta(seconds=10)
    assert await cache.seen("a", timedelta(seconds=10)) is False  # expired, recorded again
    assert cache.size == 1


async def test_in_memory_cache_is_bounded() -> None:
    clock = Clock()
    cache = InMemoryReplayCache(clock, max_entries=3)
    for i, ttl in enumerate([50, 10, 30, 40]):
        assert await cache.seen(f"k{i}", timedelta(seconds=ttl)) is False
    assert cache.size == 3
    assert await cache.seen("k1", timedelta(seconds=10)) is False  # soonest to expire was dropped
    assert await cache.seen("k0", timedelta(seconds=50)) is True


# --- Redis replay cache, against a real redis-server ---------------------------------------------


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with start_redis() as server:
        yield server


@pytest.fixture
def redis_client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis_server.client()
    client.flushdb()
    yield client
    client.close()


def async_client(server: RedisServer) -> redis.asyncio.Redis:
    """What `adrgate vtn` gives RedisReplayCache: an asyncio client (one per VTN process)."""
    return redis.asyncio.Redis(host=server.host, port=server.port, socket_timeout=5)


@pytest.fixture
async def aclient(redis_server: RedisServer,
                  redis_client: redis.Redis) -> AsyncIterator[redis.asyncio.Redis]:
    client = async_client(redis_server)  # after redis_client, which flushed the database
    yield client
    await client.aclose()


async def test_redis_cache_records_and_expires(redis_client: redis.Redis,
                                               aclient: redis.asyncio.Redis) -> None:
    cache = RedisReplayCache(aclient)
    assert await cache.seen("oadr:nonce:x", timedelta(seconds=30)) is False
    assert await cache.seen("oadr:nonce:x", timedelta(seconds=30)) is True
    assert 0 < redis_client.ttl("oadr:nonce:x") <= 30
    assert await cache.seen("oadr:nonce:short", timedelta(milliseconds=10)) is False
    assert redis_client.ttl("oadr:nonce:short") == 1  # rounded up to Redis's 1 s minimum
    await asyncio.sleep(1.2)
    assert await cache.seen("oadr:nonce:short", timedelta(seconds=1)) is False


async def test_redis_cache_fails_closed() -> None:
    # Nothing listens there: the message is refused (the VTN answers 469), never let through.
    unreachable = redis.asyncio.Redis(host="127.0.0.1", port=free_port(), socket_timeout=1)
    try:
        with pytest.raises(redis.RedisError):
            await RedisReplayCache(unreachable).seen("oadr:nonce:x", timedelta(seconds=30))
    finally:
        await unreachable.aclose()


async def test_two_processes_share_nonces(redis_server: RedisServer, redis_client: redis.Redis,
                                          aclient: redis.asyncio.Redis, key: SigningKey) -> None:
    # Two VTN processes: two clients, two caches, one server.
    other_client = async_client(redis_server)
    try:
        first, second = RedisReplayCache(aclient), RedisReplayCache(other_client)
        assert await first.seen("oadr:nonce:shared", timedelta(seconds=30)) is False
        assert await second.seen("oadr:nonce:shared", timedelta(seconds=30)) is True

        payload = roundtrip(sign(poll_object(), key, now=T0, nonce=nonce()))
        assert await verify(deepcopy(payload), expected_fingerprint=key.fingerprint,
                            replay=first, now=T0) == key.fingerprint
        with pytest.raises(NotRegisteredOrAuthorized, match="already used"):
            await verify(payload, expected_fingerprint=key.fingerprint, replay=second, now=T0)
        stored = [k for k in redis_client.scan_iter("oadr:nonce:*") if k != b"oadr:nonce:shared"]
        assert len(stored) == 1 and 300 <= redis_client.ttl(stored[0]) <= 301
    finally:
        await other_client.aclose()


# --- cost of signing: the key is parsed once ------------------------------------------------------


def test_sign_cost_against_openleadr(leaf: Leaf, key: SigningKey) -> None:
    """Printed, not asserted: run with -s to see it."""
    obj = poll_object()
    ours_n, theirs_n = 50, 5
    start = time.perf_counter()
    for _ in range(ours_n):
        sign(obj, key, now=T0, nonce=nonce())
    ours = (time.perf_counter() - start) / ours_n
    start = time.perf_counter()
    for _ in range(theirs_n):
        ol_messaging.create_message("oadrPoll", cert=leaf.cert_pem, key=leaf.key_pem,
                                    ven_id="ven123")
    theirs = (time.perf_counter() - start) / theirs_n
    start = time.perf_counter()
    for _ in range(theirs_n):
        ol_messaging.create_message("oadrPoll", ven_id="ven123")
    unsigned = (time.perf_counter() - start) / theirs_n
    print(f"\n[{key.method.name}] sign per message: adrgate {ours * 1e3:.2f} ms, "
          f"openleadr create_message signed {theirs * 1e3:.2f} ms "
          f"(unsigned {unsigned * 1e3:.2f} ms)")


@pytest.mark.parametrize("make_object", [poll_object, distribute_event_object],
                         ids=["poll", "distribute_event"])
def test_sign_and_verify_cost_against_signxml(key: SigningKey,
                                              make_object: Callable[[], etree._Element]) -> None:
    """Printed, not asserted: run with -s to see it. "signxml" is oadr.signing before xmldsig."""
    obj, n = make_object(), 200
    properties = replay_protect(T0, "x")

    def per_message(action: Callable[[int], object]) -> float:
        for i in range(10):
            action(-i - 1)
        start = time.perf_counter()
        for i in range(n):
            action(i)
        return (time.perf_counter() - start) / n * 1e3

    sign_ours = per_message(lambda i: sign(obj, key, now=T0, nonce=f"n{i}"))
    sign_ref = per_message(lambda i: signxml_sign(obj, key, deepcopy(properties)))
    signed = [roundtrip(sign(obj, key, now=T0, nonce=f"n{i}")) for i in range(n)]
    # The signature check alone (signxml has no replay step): `verify` awaits the cache after it.
    verify_ours = per_message(lambda i: i < 0 or check_signature(
        signed[i], expected_fingerprint=key.fingerprint, now=T0))
    verify_ref = per_message(lambda i: i < 0 or signxml_verify(signed[i], key))
    print(f"\n[{key.method.name}] {obj[0].tag.split('}')[1]}: sign {sign_ref:.3f} -> "
          f"{sign_ours:.3f} ms, verify {verify_ref:.3f} -> {verify_ours:.3f} ms "
          f"(signxml -> oadr.xmldsig)")
