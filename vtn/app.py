"""The VTN web application: the OpenADR simpleHTTP endpoints and the operator API on one port.

The OpenADR view is one function: read bytes, parse, dispatch, serialize. Every failure becomes an
HTTP 4xx (unreadable request) or an OpenADR response code; nothing reaches aiohttp as a 500.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache, partial
from typing import TYPE_CHECKING, Final

from aiohttp import web
from aiohttp.typedefs import Handler
from sqlalchemy.exc import SQLAlchemyError

from adrgate.tls import peer_fingerprint as from_ssl
from oadr import codec
from oadr.errors import AdrError, MalformedMessage, NotRecognized
from oadr.messages import SERVICE_OF, Message, ResponseMessage, error_response
from oadr.signing import ReplayCache, SigningKey, admit, sign, verifier

from .handlers import Ctx, VtnConfig, VtnHandlers
from .push import PushConfig, Pusher
from .store import VtnStore

if TYPE_CHECKING:
    from .cmb.service import Cmb

log = logging.getLogger("adrgate.vtn")

OPENADR_PREFIX = "/OpenADR2/Simple/2.0b"
SERVICES = ("EiRegisterParty", "EiEvent", "EiReport", "EiOpt", "OadrPoll")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def new_id() -> str:
    return uuid.uuid4().hex


@dataclass(kw_only=True)
class VtnDeps:
    store: VtnStore
    config: VtnConfig
    replay: ReplayCache
    signing_key: SigningKey | None = None
    require_signatures: bool = False
    max_body_bytes: int = 1_048_576
    api_token: str | None = None
    clock: Callable[[], datetime] = utcnow
    new_id: Callable[[], str] = new_id
    push: PushConfig = field(default_factory=PushConfig)
    handlers: VtnHandlers = field(init=False)

    def __post_init__(self) -> None:
        self.handlers = VtnHandlers(self.store, self.config, self.new_id)


DEPS = web.AppKey("deps", VtnDeps)
PUSHER = web.AppKey("pusher", Pusher)


def peer_fingerprint(request: web.Request) -> str | None:
    transport = request.transport
    ssl_object = transport.get_extra_info("ssl_object") if transport else None
    return from_ssl(ssl_object) if ssl_object is not None else None


async def openadr_view(request: web.Request) -> web.Response:
    deps = request.app[DEPS]
    service = request.match_info["service"]
    now = deps.clock()
    request_id, ven_id = "", None
    try:
        if deps.config.secure and not request.secure:
            raise web.HTTPForbidden(text="this VTN accepts OpenADR over TLS only")
        data = await request.read()
        received = codec.parse(data, max_bytes=deps.max_body_bytes,
                               verify=verifier(now=now, required=deps.require_signatures))
        # The nonce is recorded only for a message that parsed and whose signature checked out;
        # the shared replay cache is awaited, never blocking the loop.
        signer = (await admit(received.signature, deps.replay)
                  if received.signature is not None else None)
        msg = received.message
        request_id = getattr(msg, "request_id", "") or ""
        ven_id = getattr(msg, "ven_id", None)
        if not isinstance(msg, ResponseMessage) and SERVICE_OF[type(msg)] != service:
            raise NotRecognized(f"{type(msg).__name__} does not belong on {service}")
        ctx = Ctx(now=now, tls_fingerprint=peer_fingerprint(request), signer=signer)
        reply = await deps.handlers.dispatch(msg, ctx)
    except MalformedMessage as exc:
        return web.Response(status=exc.http_status, text=f"{exc.description}\n")
    except AdrError as exc:
        reply = error_response(exc, request_id=request_id, ven_id=ven_id)
    except web.HTTPException:
        raise
    except Exception as exc:  # our bug: answer 469, keep serving
        log.exception("handler failed on %s", service)
        reply = error_response(exc, request_id=request_id, ven_id=ven_id)
    return _xml_response(deps, reply)


@lru_cache(maxsize=16_384)
def _unsigned_ack(reply: ResponseMessage) -> bytes:
    # "nothing for you" answers most polls; unsigned it is the same bytes every time per VEN
    return codec.serialize(reply)


def encode(deps: VtnDeps, message: Message) -> bytes:
    """The payload as this VTN sends it: serialized, and signed when the VTN signs."""
    signer = None
    if deps.signing_key is not None:
        signer = partial(sign, key=deps.signing_key, now=deps.clock(), nonce=deps.new_id())
    try:
        if signer is None and isinstance(message, ResponseMessage):
            return _unsigned_ack(message)
        return codec.serialize(message, sign=signer)
    except Exception:
        log.exception("could not serialize %s", type(message).__name__)
        return codec.serialize(error_response(RuntimeError()), sign=signer)


def _xml_response(deps: VtnDeps, reply: Message) -> web.Response:
    return web.Response(body=encode(deps, reply), content_type="application/xml")


async def pushing(app: web.Application) -> AsyncIterator[None]:
    """Run the pusher while the app serves (push VENs are delivered to as soon as owed)."""
    await app[PUSHER].start()
    yield
    await app[PUSHER].stop()


POLL_FLUSH_EVERY: Final = 5.0  # seconds between writes of the VENs' latest poll times


async def recording_polls(app: web.Application) -> AsyncIterator[None]:
    """Write the latest poll times every few seconds, and once more at shutdown."""
    deps = app[DEPS]

    async def flush_forever() -> None:
        while True:
            await asyncio.sleep(POLL_FLUSH_EVERY)
            try:
                await asyncio.to_thread(deps.store.record_polls, deps.handlers.take_polls())
            except SQLAlchemyError:  # the database is down: polls fail too; later ones count
                log.warning("could not record poll times", exc_info=True)

    task = asyncio.create_task(flush_forever(), name="vtn-poll-times")
    yield
    task.cancel()
    with suppress(asyncio.CancelledError):
        await task
    with suppress(SQLAlchemyError):
        deps.store.record_polls(deps.handlers.take_polls())


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Operator API errors as JSON; unexpected exceptions as 500 with a logged traceback."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if not request.path.startswith("/api/") or exc.content_type == "application/json":
            raise
        return web.json_response({"error": exc.reason, "detail": exc.text},
                                 status=exc.status)


def make_app(deps: VtnDeps, cmb: Cmb | None = None) -> web.Application:
    """Build the VTN application from its dependencies (stores, config, keys, clock); with `cmb`,
    the Central Monitoring Body's API under /api/cmb/ too."""
    from .api import add_api_routes

    app = web.Application(client_max_size=deps.max_body_bytes, middlewares=[json_errors])
    app[DEPS] = deps
    app.router.add_post(OPENADR_PREFIX + "/{service:" + "|".join(SERVICES) + "}", openadr_view)
    add_api_routes(app)
    app[PUSHER] = Pusher(deps.store, deps.handlers, encode=partial(encode, deps),
                         clock=lambda: deps.clock(), config=deps.push,
                         require_signatures=deps.require_signatures)
    app.cleanup_ctx.append(pushing)
    app.cleanup_ctx.append(recording_polls)
    if cmb is not None:
        from .cmb.api import add_cmb_routes

        add_cmb_routes(app, cmb)
    from .dashboard import add_dashboard

    add_dashboard(app)
    return app
