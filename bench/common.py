"""What both benchmarks share: VEN tables, OpenADR request bodies, the HTTP client, statistics.

Request bodies come from `openleadr.messaging.create_message`, so both servers receive the bytes
an openleadr VEN sends. A signed body is made by `Signed`: the unsigned oadrSignedObject is parsed
once per VEN and signed on demand with the VEN's parsed key (`oadr.signing.sign`, the signature
openleadr verifies). openleadr's own signer is not used on the load side: it parses the PEM key
twice per message (~75 ms with RSA) and would make the generator the bottleneck.
"""

from __future__ import annotations

import math
import re
import ssl
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import aiohttp
from lxml import etree
from openleadr.messaging import create_message  # type: ignore[import-untyped]

from adrgate.tls import OPENADR_CIPHERS, client_context
from oadr.signing import SigningKey, sign

from .pki import FleetPki
from .servers import VenEntry

XML_HEADERS = {"Content-Type": "application/xml"}
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=30)
_OK_CODE = re.compile(rb"responseCode>200<")
_DECLARATION = b'<?xml version="1.0" encoding="utf-8"?>\n'


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def make_vens(count: int, *, prefix: str = "bench-ven") -> list[VenEntry]:
    """`count` VENs with fresh venIDs and registrationIDs, named `<prefix>-0000`..."""
    return [VenEntry(ven_id=uuid.uuid4().hex, ven_name=f"{prefix}-{i:04d}",
                     registration_id=uuid.uuid4().hex) for i in range(count)]


# --- request bodies -----------------------------------------------------------------------

def openleadr_message(message_type: str, **payload: Any) -> bytes:
    """An unsigned message exactly as openleadr renders it."""
    text: str = create_message(message_type, **payload)
    return text.encode()


def poll_body(ven_id: str) -> bytes:
    return openleadr_message("oadrPoll", ven_id=ven_id)


def registration_body(ven_name: str) -> bytes:
    return openleadr_message(
        "oadrCreatePartyRegistration", request_id=uuid.uuid4().hex, ven_name=ven_name,
        http_pull_model=True, xml_signature=False, report_only=False, profile_name="2.0b",
        transport_name="simpleHttp", transport_address=None)


def created_event_body(ven_id: str, request_id: str,
                       events: Sequence[tuple[str, int]], opt: str = "optIn") -> bytes:
    """oadrCreatedEvent answering `events` [(eventID, modificationNumber)], as openleadr's VEN."""
    responses = [{"response_code": 200, "response_description": "OK", "request_id": request_id,
                  "event_id": event_id, "modification_number": mod, "opt_type": opt}
                 for event_id, mod in events]
    return openleadr_message(
        "oadrCreatedEvent", ven_id=ven_id, event_responses=responses,
        response={"response_code": 200, "response_description": "OK", "request_id": request_id})


class Signed:
    """Fresh signed copies of one unsigned message: a new nonce and timestamp on every call."""

    def __init__(self, unsigned: bytes, key: SigningKey) -> None:
        self._object = etree.fromstring(unsigned)[0]  # the oadrSignedObject
        self._key = key

    def __call__(self) -> bytes:
        payload = sign(self._object, self._key, now=utcnow(), nonce=uuid.uuid4().hex)
        return _DECLARATION + bytes(etree.tostring(payload, encoding="utf-8"))


BodySource = Callable[[], bytes]


def constant(body: bytes) -> BodySource:
    return lambda: body


def response_ok(status: int, body: bytes, *, signed: bool) -> bool:
    """A 200 carrying an OpenADR answer with responseCode 200 (and a signature when `signed`)."""
    return (status == 200 and (b"oadrResponse" in body or b"oadrDistributeEvent" in body)
            and _OK_CODE.search(body) is not None
            and (not signed or b"SignatureValue" in body))


# --- HTTP -------------------------------------------------------------------------------

@dataclass
class ConnectionCounter:
    opened: int = 0

    def trace(self) -> aiohttp.TraceConfig:
        config = aiohttp.TraceConfig()

        async def on_create(session: Any, ctx: Any, params: Any) -> None:
            self.opened += 1

        config.on_connection_create_end.append(on_create)
        return config


def client_session(counter: ConnectionCounter | None = None) -> aiohttp.ClientSession:
    """Keep-alive connections, no pool limit (a TLS VEN keeps its own connection), 30 s cap."""
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=300)
    traces = [counter.trace()] if counter else []
    return aiohttp.ClientSession(connector=connector, timeout=REQUEST_TIMEOUT,
                                 trace_configs=traces)


def tls_contexts(pki: FleetPki) -> list[ssl.SSLContext]:
    """One client context per VEN, with its own certificate: TLS 1.2, OpenADR's two suites.

    Plus ECDHE-RSA-AES128-SHA256: openleadr's server context keeps Python's default cipher
    list, which has no RSA key exchange, so it cannot agree TLS_RSA_WITH_AES_128_CBC_SHA256 with
    an RSA VEN. The extra suite differs only in the handshake; records are AES-128-CBC with
    HMAC-SHA256 either way.
    """
    contexts = []
    for v in pki.vens:
        ctx = client_context(v.files.cert, v.files.key, pki.ca)
        ctx.set_ciphers(f"{OPENADR_CIPHERS}:ECDHE-RSA-AES128-SHA256")
        contexts.append(ctx)
    return contexts


async def post_xml(session: aiohttp.ClientSession, url: str, body: bytes,
                   tls: ssl.SSLContext | None = None) -> tuple[int, bytes]:
    async with session.post(url, data=body, headers=XML_HEADERS,
                            ssl=tls if tls is not None else False) as resp:
        return resp.status, await resp.read()


async def api(session: aiohttp.ClientSession, base_url: str, method: str, path: str,
              body: Any = None) -> Any:
    """One operator API call; raises on a non-2xx answer."""
    async with session.request(method, base_url + path, json=body, ssl=False) as resp:
        data = await resp.json()
        if resp.status >= 300:
            raise RuntimeError(f"{method} {path}: {resp.status} {data}")
        return data


# --- measurement ------------------------------------------------------------------------

def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank q-quantile (0 < q <= 1); 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]
