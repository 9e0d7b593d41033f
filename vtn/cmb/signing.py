"""The CMB submission wire format and its signature, sans-IO (the API and the bridge's client).

A submission body is a JSON object with two strings:

    {"batch": "<JSON text>", "signature": "<base64>"}

`batch` is the exact JSON text the aggregator signed: an object with `aggregator`, `nonce`,
`signed_at` (ISO 8601 UTC) and `submissions` (a list of `{"plan", "device", "program"}`, the
bridge's `Plan` and `Device` as JSON). `signature` is over the UTF-8 bytes of `batch` with the
aggregator's registered key: ECDSA P-256 with SHA-256 (DER signature) or RSA PKCS#1 v1.5 with
SHA-256. Signing the text as sent, not a re-serialisation, needs no JSON canonicalisation.
`signed_at` and the nonce bound replays of a whole batch; the sequence rule bounds replays of
a plan.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from pydantic import AwareDatetime, TypeAdapter, ValidationError

from bridge.models import Device, Plan

PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey
PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

MAX_AGE: Final = timedelta(minutes=5)  # a batch signed longer ago than this is stale
MAX_FUTURE: Final = timedelta(minutes=1)  # clock skew tolerated the other way
MIN_RSA_BITS: Final = 2048


class BadBatch(ValueError):
    """The body is not a well-formed submission (HTTP 400); `field` names the part."""

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(detail)
        self.field = field


class BadSignature(ValueError):
    """The signature does not verify with the aggregator's key, or the batch is stale (401)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Item:
    """One plan as it travels: the aggregator's plan, the device as it declares it, the program."""

    plan: Plan
    device: Device
    program: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Batch:
    aggregator: str
    nonce: str
    signed_at: AwareDatetime
    submissions: tuple[Item, ...]


_BATCH: Final = TypeAdapter(Batch)


def load_public_key(pem: str | bytes) -> PublicKey:
    """A registered key: a PEM public key or certificate, ECDSA P-256 or RSA >= 2048 bits.

    Raises:
        ValueError: unreadable, or another curve or key type.
    """
    data = pem.encode() if isinstance(pem, str) else pem
    try:
        key: Any = (x509.load_pem_x509_certificate(data).public_key()
                    if b"CERTIFICATE" in data else serialization.load_pem_public_key(data))
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ValueError(f"not a PEM public key or certificate: {exc}") from None
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return key
    if isinstance(key, rsa.RSAPublicKey) and key.key_size >= MIN_RSA_BITS:
        return key
    raise ValueError("the key must be ECDSA P-256 or RSA of at least 2048 bits")


def public_pem(key: PrivateKey | PublicKey) -> str:
    pub = key.public_key() if isinstance(key, (ec.EllipticCurvePrivateKey,
                                               rsa.RSAPrivateKey)) else key
    return pub.public_bytes(serialization.Encoding.PEM,
                            serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def _sign(key: PrivateKey, data: bytes) -> bytes:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(data, ec.ECDSA(hashes.SHA256()))
    return key.sign(data, padding.PKCS1v15(), hashes.SHA256())


def encode(aggregator: str, items: Sequence[Item], *, key: PrivateKey, now: datetime,
           nonce: str) -> bytes:
    """The signed request body for a batch."""
    batch = _BATCH.dump_json(Batch(aggregator=aggregator, nonce=nonce, signed_at=now,
                                   submissions=tuple(items))).decode()
    signature = base64.b64encode(_sign(key, batch.encode())).decode()
    return json.dumps({"batch": batch, "signature": signature}).encode()


@dataclass(frozen=True, slots=True)
class Envelope:
    """A body taken apart, not yet trusted: `claimed` names the key to check it with."""

    claimed: str
    batch: bytes
    signature: bytes


def open_envelope(body: bytes) -> Envelope:
    """Raises: BadBatch (malformed JSON, missing parts, no aggregator named)."""
    try:
        outer = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise BadBatch("body", "not valid JSON") from None
    if not isinstance(outer, dict) or not isinstance(outer.get("batch"), str) \
            or not isinstance(outer.get("signature"), str):
        raise BadBatch("body", 'expected {"batch": "<signed JSON text>", "signature": "<base64>"}')
    try:
        signature = base64.b64decode(outer["signature"], validate=True)
        inner = json.loads(outer["batch"])
    except (binascii.Error, ValueError):
        raise BadBatch("batch", "batch is not JSON text or signature is not base64") from None
    claimed = inner.get("aggregator") if isinstance(inner, dict) else None
    if not isinstance(claimed, str) or not claimed:
        raise BadBatch("batch.aggregator", "names no aggregator")
    return Envelope(claimed, outer["batch"].encode(), signature)


def verify(envelope: Envelope, key: PublicKey) -> None:
    """Raises: BadSignature."""
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(envelope.signature, envelope.batch, ec.ECDSA(hashes.SHA256()))
        else:
            key.verify(envelope.signature, envelope.batch, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        raise BadSignature(f"the signature does not verify with {envelope.claimed}'s key") from None


def decode(envelope: Envelope, now: datetime) -> Batch:
    """The verified batch's content, fresh.

    Raises:
        BadBatch: a submission is malformed (the first error is named).
        BadSignature: signed too long ago or in the future.
    """
    try:
        batch = _BATCH.validate_json(envelope.batch)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise BadBatch(f"batch.{where}" if where else "batch", err["msg"]) from None
    if not now - MAX_AGE <= batch.signed_at <= now + MAX_FUTURE:
        raise BadSignature(f"signed at {batch.signed_at.isoformat()}, outside "
                           f"{MAX_AGE} of the CMB's clock")
    naive = naive_datetime(batch.submissions)
    if naive is not None:
        raise BadBatch(f"batch.submissions{naive}", "a time needs its UTC offset")
    for i, item in enumerate(batch.submissions):
        if item.plan.device_id != item.device.device_id:
            raise BadBatch(f"batch.submissions.{i}.device",
                           f"plan is for {item.plan.device_id}, device is {item.device.device_id}")
        if not item.plan.steps:
            raise BadBatch(f"batch.submissions.{i}.plan.steps", "a plan needs steps")
    return batch


def naive_datetime(value: object, where: str = "") -> str | None:
    """Where in a record (`.steps.0.start`) a datetime lacks its offset, if anywhere: the rules
    compare times with the CMB's aware clock."""
    if isinstance(value, datetime):
        return where if value.tzinfo is None else None
    if isinstance(value, (list, tuple)):
        items: Iterable[tuple[str, object]] = ((str(i), v) for i, v in enumerate(value))
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        items = ((f.name, getattr(value, f.name)) for f in dataclasses.fields(value))
    else:
        return None
    for name, v in items:
        found = naive_datetime(v, f"{where}.{name}")
        if found is not None:
            return found
    return None
