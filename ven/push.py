"""OpenADR 2.0b simpleHttp push, VEN side: one listener for every push VEN of the fleet.

Rules of this file:
- Each push VEN has its own base URL (its oadrTransportAddress) under the fleet's one listener:
  `{push_url}/{quoted venName}/OpenADR2/Simple/2.0b`; the VTN POSTs to `{base}/{service}`.
- A push is read exactly as a reply to that VEN is (its `Wire`: size limit, hardened parser, the
  signature and nonce when the VEN signs), handed to the fleet's `on_pushed`, and answered with
  the oadrResponse it returns, signed when the VEN signs.
- Bad input never becomes a 5xx: unreadable XML is an HTTP 4xx, anything else an oadrResponse
  with its OpenADR code (463 for a VEN that is not here), and the listener serves on.
- TLS: one listener has one certificate, the first push VEN's; it requires a client certificate
  that chains to one of the push VENs' CAs and, per request, is the VEN's pinned VTN when it pins.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable, Mapping, Sequence
from typing import Final, Protocol
from urllib.parse import quote

from aiohttp import web

from adrgate.tls import peer_fingerprint, server_context
from oadr import codec
from oadr.errors import (
    AdrError,
    MalformedMessage,
    NotRecognized,
    NotRegisteredOrAuthorized,
)
from oadr.messages import SERVICE_OF, Message, ResponseMessage, error_response
from oadr.schema import DEFAULT_MAX_BYTES

from .agent import VenAgent
from .fleet import VenSpec

log = logging.getLogger("adrgate.ven")

OADR_PATH: Final = "/OpenADR2/Simple/2.0b"
PUSH_SERVICES: Final = ("EiEvent", "EiReport", "EiRegisterParty")  # what a VTN pushes on

# Every exchange as bytes, for transcripts and conformance checks: (ven, service, sent, received).
Observer = Callable[[str, str, bytes, bytes], None]
# Takes a parsed push in for a VEN (by name) and gives the oadrResponse to answer it with.
OnPushed = Callable[[str, Message], ResponseMessage]


class Wire(Protocol):
    """One VEN's reading and writing of payloads (ven.runner.Transport)."""

    @property
    def spec(self) -> VenSpec: ...

    def encode(self, msg: Message) -> bytes: ...

    async def receive(self, data: bytes, *, max_bytes: int = ...) -> codec.Received: ...


def transport_address(push_url: str, ven_name: str) -> str:
    """A push VEN's oadrTransportAddress: its own base URL under the fleet's listener."""
    return f"{push_url.rstrip('/')}/{quote(ven_name, safe='')}{OADR_PATH}"


def listener_context(vens: Sequence[VenSpec]) -> ssl.SSLContext | None:
    """The listener's TLS context for these push VENs, None when they have no tls: the first
    one's certificate, client certificates required and checked against every one's CA.

    Raises:
        ValueError: some have tls and some not (one listener cannot serve both).
        ssl.SSLError, OSError: unreadable files, or a key that does not match its certificate.
    """
    secured = [ven.tls for ven in vens if ven.tls is not None]
    if not secured:
        return None
    if len(secured) != len(vens):
        raise ValueError("push VENs share one listener: all of them need tls or none")
    first = secured[0]
    ctx = server_context(first.cert, first.key, first.ca)
    for ca in dict.fromkeys(tls.ca for tls in secured if tls.ca != first.ca):
        ctx.load_verify_locations(cafile=ca)
    return ctx


class PushListener:
    """Serves the push VENs among `agents` (those with a push address) at their own paths."""

    def __init__(self, agents: Mapping[str, VenAgent], wires: Mapping[str, Wire],
                 on_pushed: OnPushed, *, observer: Observer | None = None,
                 max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.agents = agents  # read at each request: the fleet fills them after binding
        self.wires = wires
        self.on_pushed = on_pushed
        self.observer = observer
        self.max_bytes = max_bytes
        # The codec's limit answers an oversized body, with aiohttp's as the backstop.
        self.app = web.Application(client_max_size=max_bytes + 1)
        self.app.router.add_post(f"/{{ven}}{OADR_PATH}/{{service}}", self._view)
        self._runner: web.AppRunner | None = None

    async def start(self, host: str, port: int, ssl_context: ssl.SSLContext | None) -> int:
        """Listen on host:port (0: any free port); return the bound port.

        Raises:
            OSError: the address cannot be bound.
        """
        runner = web.AppRunner(self.app, access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        bound: int = runner.addresses[0][1]
        return bound

    async def close(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def _view(self, request: web.Request) -> web.Response:
        name, service = request.match_info["ven"], request.match_info["service"]
        if service not in PUSH_SERVICES:
            return web.Response(status=404, text=f"no push service {service!r} (one of "
                                                 f"{', '.join(PUSH_SERVICES)})\n")
        data = await request.read()
        agent, wire = self.agents.get(name), self.wires.get(name)
        if agent is None or agent.push_address is None or wire is None:
            return self._answer(name, service, data, None, error_response(
                NotRegisteredOrAuthorized(f"no push VEN {name!r} here")))
        pinned = wire.spec.vtn_fingerprint
        if pinned is not None:
            transport = request.transport
            seen = peer_fingerprint(transport.get_extra_info("ssl_object") if transport else None)
            if seen != pinned:
                log.warning("push from %s refused: not the pinned VTN %s", seen, pinned,
                            extra={"ven": name})
                return web.Response(status=403, text=f"client certificate {seen} is not the "
                                                     "VTN this VEN pins\n")
        request_id = ""
        try:
            msg = (await wire.receive(data, max_bytes=self.max_bytes)).message
            request_id = getattr(msg, "request_id", None) or ""
            if SERVICE_OF[type(msg)] != service:
                raise NotRecognized(f"{type(msg).__name__} does not belong on {service}")
            reply = self.on_pushed(name, msg)
        except MalformedMessage as exc:
            return web.Response(status=exc.http_status, text=f"{exc.description}\n")
        except AdrError as exc:
            log.warning("push refused (%d): %s", exc.code, exc, extra={"ven": name})
            reply = error_response(exc, request_id=request_id, ven_id=agent.reg.ven_id)
        except Exception as exc:  # our bug: answer 469, keep serving
            log.exception("push on %s failed", service, extra={"ven": name})
            reply = error_response(exc, request_id=request_id, ven_id=agent.reg.ven_id)
        return self._answer(name, service, data, wire, reply)

    def _answer(self, name: str, service: str, data: bytes, wire: Wire | None,
                reply: ResponseMessage) -> web.Response:
        encode = codec.serialize if wire is None else wire.encode
        try:
            body = encode(reply)
        except Exception:  # e.g. an echoed requestID our own XSD check refuses
            log.exception("could not serialize the answer to a push", extra={"ven": name})
            body = encode(error_response(RuntimeError(), ven_id=reply.ven_id))
        if self.observer is not None:
            self.observer(name, service, body, data)
        return web.Response(body=body, content_type="application/xml")
