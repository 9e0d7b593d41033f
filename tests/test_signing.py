"""oadr.signing: interop with openleadr 0.5.36 both ways, refusals, and the replay caches."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from copy import deepcopy
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from itertools import count
from pathlib import Path

import pytest
import redis
from lxml import etree
from openleadr import messaging as ol_messaging  # type: ignore[import-untyped]
from openleadr import utils as ol_utils

from adrgate.replay import RedisReplayCache
from oadr.errors import NotRegisteredOrAuthorized
from oadr.schema import DS, DSP, EI, NSMAP, OADR, parse_xml, schema_errors
from oadr.signing import (
    InMemoryReplayCache,
    SigningKey,
    envelope,
    fingerprint,
    sign,
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


def roundtrip(payload: etree._Element) -> etree._Element:
    """What the peer sees: bytes through the hardened parser."""
    return parse_xml(etree.tostring(payload, xml_declaration=True, encoding="utf-8"))


def our_verify(payload: etree._Element, key: SigningKey, *, now: datetime | None = None,
               replay: InMemoryReplayCache | None = None,
               expected: str | None = None) -> str:
    now = now or datetime.now(timezone.utc)
    if replay is None:
        replay = InMemoryReplayCache(lambda: now)
    return verify(payload, expected_fingerprint=expected or key.fingerprint, replay=replay,
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


# --- what we sign: schema and openleadr ---------------------------------------------------------


@pytest.mark.parametrize("make_object", [poll_object, distribute_event_object],
                         ids=["poll", "distribute_event"])
def test_signed_payload_is_valid_and_openleadr_accepts_it(
        key: SigningKey, make_object: Callable[[], etree._Element]) -> None:
    payload = sign(make_object(), key, now=datetime.now(timezone.utc), nonce=nonce())
    data = etree.tostring(payload, xml_declaration=True, encoding="utf-8")

    assert schema_errors(parse_xml(data)) == []
    # Exactly what openleadr's OpenADRClient does with a VTN response (client.py, _perform_request)
    tree = ol_messaging.validate_xml_schema(data)
    ol_messaging.validate_xml_signature(tree, cert_fingerprint=key.fingerprint)
    assert our_verify(parse_xml(data), key) == key.fingerprint


def test_sign_does_not_depend_on_the_objects_original_context(key: SigningKey) -> None:
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
    assert our_verify(parse_xml(data), key) == key.fingerprint


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


def test_openleadr_signed_message_is_accepted(leaf: Leaf, key: SigningKey) -> None:
    xml = ol_messaging.create_message("oadrPoll", cert=leaf.cert_pem, key=leaf.key_pem,
                                      ven_id="ven123")
    assert our_verify(parse_xml(xml.encode()), key) == key.fingerprint


def test_openleadr_signed_message_with_other_expected_fingerprint_is_refused(
        pki: Pki, leaf: Leaf) -> None:
    xml = ol_messaging.create_message("oadrPoll", cert=leaf.cert_pem, key=leaf.key_pem,
                                      ven_id="ven123")
    other = fingerprint(pki.vtn_rsa.cert_pem)
    with pytest.raises(NotRegisteredOrAuthorized, match="expected"):
        verify(parse_xml(xml.encode()), expected_fingerprint=other,
               replay=InMemoryReplayCache(lambda: T0), now=datetime.now(timezone.utc))


# --- refusals -----------------------------------------------------------------------------------


def test_no_expected_fingerprint_returns_the_signer(key: SigningKey) -> None:
    payload = roundtrip(sign(poll_object(), key, now=T0, nonce=nonce()))
    signer = verify(payload, expected_fingerprint=None, replay=InMemoryReplayCache(lambda: T0),
                    now=T0)
    assert signer == key.fingerprint


def test_lower_case_expected_fingerprint_matches(key: SigningKey) -> None:
    payload = roundtrip(sign(poll_object(), key, now=T0, nonce=nonce()))
    assert our_verify(payload, key, now=T0, expected=key.fingerprint.lower()) == key.fingerprint


def test_unsigned_payload_is_refused(key: SigningKey) -> None:
    with pytest.raises(NotRegisteredOrAuthorized, match="unsigned"):
        our_verify(roundtrip(envelope(poll_object())), key, now=T0)


def test_not_a_payload_is_refused(key: SigningKey) -> None:
    with pytest.raises(NotRegisteredOrAuthorized, match="unsigned"):
        our_verify(poll_object(), key, now=T0)


def test_tampered_content_is_refused(key: SigningKey) -> None:
    payload = roundtrip(sign(poll_object("ven123"), key, now=T0, nonce=nonce()))
    payload.find(f".//{{{EI}}}venID").text = "ven999"  # type: ignore[union-attr]
    with pytest.raises(NotRegisteredOrAuthorized, match="invalid XML signature"):
        our_verify(payload, key, now=T0)


def test_tampered_replay_protect_is_refused(key: SigningKey) -> None:
    payload = roundtrip(sign(poll_object(), key, now=T0, nonce="original"))
    payload.find(f".//{{{DSP}}}nonce").text = "fresh"  # type: ignore[union-attr]
    with pytest.raises(NotRegisteredOrAuthorized, match="invalid XML signature"):
        our_verify(payload, key, now=T0)


def test_wrong_fingerprint_is_refused(pki: Pki, key: SigningKey) -> None:
    payload = roundtrip(sign(poll_object(), key, now=T0, nonce=nonce()))
    with pytest.raises(NotRegisteredOrAuthorized, match="expected"):
        our_verify(payload, key, now=T0, expected=fingerprint(pki.vtn_ecc.cert_pem))


def test_swapped_certificate_is_refused(pki: Pki, key: SigningKey) -> None:
    # Someone else's certificate in KeyInfo: the fingerprint is then theirs, and the signature
    # does not verify with their key either.
    payload = roundtrip(sign(poll_object(), key, now=T0, nonce=nonce()))
    other = SigningKey.load(pki.vtn_rsa.cert_pem, pki.vtn_rsa.key_pem)
    cert = payload.find(f".//{{{DS}}}X509Certificate")
    assert cert is not None
    cert.text = b"".join(other.cert_pem.strip().splitlines()[1:-1]).decode()
    with pytest.raises(NotRegisteredOrAuthorized):
        our_verify(payload, key, now=T0)
    with pytest.raises(NotRegisteredOrAuthorized, match="invalid XML signature"):
        our_verify(payload, other, now=T0)


def test_replayed_nonce_is_refused(key: SigningKey) -> None:
    cache = InMemoryReplayCache(lambda: T0)
    payload = roundtrip(sign(poll_object(), key, now=T0, nonce="once"))
    assert our_verify(deepcopy(payload), key, now=T0, replay=cache) == key.fingerprint
    with pytest.raises(NotRegisteredOrAuthorized, match="already used"):
        our_verify(payload, key, now=T0 + timedelta(seconds=1), replay=cache)


def test_same_nonce_from_another_signer_is_not_a_replay(pki: Pki) -> None:
    cache = InMemoryReplayCache(lambda: T0)
    for leaf in (pki.ven_rsa, pki.ven_ecc):
        key = SigningKey.load(leaf.cert_pem, leaf.key_pem)
        payload = roundtrip(sign(poll_object(), key, now=T0, nonce="shared"))
        assert our_verify(payload, key, now=T0, replay=cache) == key.fingerprint


def test_stale_timestamp_is_refused(key: SigningKey) -> None:
    payload = roundtrip(sign(poll_object(), key, now=T0, nonce=nonce()))
    with pytest.raises(NotRegisteredOrAuthorized, match="ago"):
        our_verify(payload, key, now=T0 + timedelta(minutes=5, seconds=1))
    assert our_verify(payload, key, now=T0 + timedelta(minutes=5)) == key.fingerprint


def test_future_timestamp_is_refused(key: SigningKey) -> None:
    payload = roundtrip(sign(poll_object(), key, now=T0 + timedelta(minutes=2), nonce=nonce()))
    with pytest.raises(NotRegisteredOrAuthorized, match="future"):
        our_verify(payload, key, now=T0)


def test_refused_message_does_not_consume_its_nonce(key: SigningKey) -> None:
    cache = InMemoryReplayCache(lambda: T0)
    payload = roundtrip(sign(poll_object(), key, now=T0, nonce="kept"))
    with pytest.raises(NotRegisteredOrAuthorized):
        our_verify(deepcopy(payload), key, now=T0, expected="00:" * 9 + "00", replay=cache)
    assert our_verify(payload, key, now=T0, replay=cache) == key.fingerprint


def _sign_without_replay_protect(obj: etree._Element, key: SigningKey,
                                 properties: etree._Element | None) -> etree._Element:
    from signxml.signer import XMLSigner
    from signxml.algorithms import SignatureConstructionMethod

    payload = envelope(obj)
    signer = XMLSigner(method=SignatureConstructionMethod.detached,
                       signature_algorithm=key.method,
                       c14n_algorithm="http://www.w3.org/TR/2001/REC-xml-c14n-20010315")
    signer.namespaces["oadr"] = OADR
    payload.insert(0, signer.sign(payload, key=key.private_key, cert=key.cert_pem.decode(),
                                  reference_uri="#oadrSignedObject",
                                  signature_properties=properties))
    return payload


@pytest.mark.parametrize("properties", [None, etree.Element("{urn:x}Other")],
                         ids=["no_properties", "other_property"])
def test_missing_replay_protect_is_refused(key: SigningKey,
                                           properties: etree._Element | None) -> None:
    payload = roundtrip(_sign_without_replay_protect(poll_object(), key, deepcopy(properties)))
    with pytest.raises(NotRegisteredOrAuthorized, match="ReplayProtect"):
        our_verify(payload, key, now=T0)


def test_signature_wrapping_is_refused(key: SigningKey) -> None:
    # The genuine signed object is hidden inside ds:Object and an unsigned one takes its place.
    payload = roundtrip(sign(poll_object("ven123"), key, now=T0, nonce=nonce()))
    genuine = payload.find(f"{{{OADR}}}oadrSignedObject")
    assert genuine is not None
    forged = poll_object("ven666")
    payload.replace(genuine, forged)
    obj = payload.find(f".//{{{DS}}}Object")
    assert obj is not None
    obj.append(genuine)
    with pytest.raises(NotRegisteredOrAuthorized):
        our_verify(payload, key, now=T0)
    forged.set(f"{{{OADR}}}Id", "oadrSignedObject")  # now the Id is ambiguous
    with pytest.raises(NotRegisteredOrAuthorized):
        our_verify(payload, key, now=T0)


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


def test_malformed_signatures_raise_only_not_authorized(key: SigningKey) -> None:
    payload = roundtrip(sign(poll_object(), key, now=T0, nonce=nonce()))
    tried = 0
    for mutated in _mutations(payload):
        tried += 1
        try:
            our_verify(mutated, key, now=T0)
        except NotRegisteredOrAuthorized:
            pass
    assert tried > 50


# --- in-memory replay cache ---------------------------------------------------------------------


def test_in_memory_cache_expires_by_clock() -> None:
    clock = Clock()
    cache = InMemoryReplayCache(clock)
    assert cache.seen("a", timedelta(seconds=10)) is False
    assert cache.seen("a", timedelta(seconds=10)) is True
    clock.now = T0 + timedelta(seconds=9)
    assert cache.seen("a", timedelta(seconds=10)) is True
    clock.now = T0 + timedelta(seconds=10)
    assert cache.seen("a", timedelta(seconds=10)) is False  # expired, recorded again
    assert cache.size == 1


def test_in_memory_cache_is_bounded() -> None:
    clock = Clock()
    cache = InMemoryReplayCache(clock, max_entries=3)
    for i, ttl in enumerate([50, 10, 30, 40]):
        assert cache.seen(f"k{i}", timedelta(seconds=ttl)) is False
    assert cache.size == 3
    assert cache.seen("k1", timedelta(seconds=10)) is False  # soonest to expire was dropped
    assert cache.seen("k0", timedelta(seconds=50)) is True


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


def test_redis_cache_records_and_expires(redis_client: redis.Redis) -> None:
    cache = RedisReplayCache(redis_client)
    assert cache.seen("oadr:nonce:x", timedelta(seconds=30)) is False
    assert cache.seen("oadr:nonce:x", timedelta(seconds=30)) is True
    assert 0 < redis_client.ttl("oadr:nonce:x") <= 30
    assert cache.seen("oadr:nonce:short", timedelta(milliseconds=10)) is False
    assert redis_client.ttl("oadr:nonce:short") == 1  # rounded up to Redis's 1 s minimum
    time.sleep(1.2)
    assert cache.seen("oadr:nonce:short", timedelta(seconds=1)) is False


def test_two_processes_share_nonces(redis_server: RedisServer, redis_client: redis.Redis,
                                    key: SigningKey) -> None:
    # Two VTN processes: two clients, two caches, one server.
    other_client = redis_server.client()
    try:
        first, second = RedisReplayCache(redis_client), RedisReplayCache(other_client)
        assert first.seen("oadr:nonce:shared", timedelta(seconds=30)) is False
        assert second.seen("oadr:nonce:shared", timedelta(seconds=30)) is True

        payload = roundtrip(sign(poll_object(), key, now=T0, nonce=nonce()))
        assert verify(deepcopy(payload), expected_fingerprint=key.fingerprint, replay=first,
                      now=T0) == key.fingerprint
        with pytest.raises(NotRegisteredOrAuthorized, match="already used"):
            verify(payload, expected_fingerprint=key.fingerprint, replay=second, now=T0)
        stored = [k for k in redis_client.scan_iter("oadr:nonce:*") if k != b"oadr:nonce:shared"]
        assert len(stored) == 1 and 300 <= redis_client.ttl(stored[0]) <= 301
    finally:
        other_client.close()


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
