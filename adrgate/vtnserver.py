"""Wire the VTN process from `Settings`: database, Redis, keys, TLS, the web app."""

from __future__ import annotations

import asyncio
import logging
from contextlib import ExitStack
from pathlib import Path

import redis.asyncio
from aiohttp import web

from oadr.signing import SigningKey
from vtn.app import VtnDeps, make_app
from vtn.handlers import VtnConfig
from vtn.store import VtnStore

from .replay import RedisReplayCache
from .services import make_engine, open_redis
from .settings import Settings
from .tls import server_context

log = logging.getLogger("adrgate.vtn")


def build_deps(settings: Settings, stack: ExitStack) -> tuple[VtnDeps, redis.asyncio.Redis]:
    """Open the database and Redis (embedded when not configured) and build the VTN's deps.

    Returns the deps and their Redis client, which the caller closes on the event loop that used
    it (`close_on_cleanup`); `stack` stops the database and the embedded Redis.

    Raises:
        ServiceError: the embedded Redis could not start.
        OSError / ValueError: unreadable key or certificate files.
    """
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = VtnStore(make_engine(settings.database_url))
    store.create_schema()
    stack.callback(store.close)
    redis_url, embedded = open_redis(settings)
    if embedded is not None:
        stack.callback(embedded.stop)
    # Connects lazily, on the loop that first awaits it.
    client = redis.asyncio.Redis.from_url(redis_url)
    key = None
    if settings.sign_cert and settings.sign_key:
        key = SigningKey.load(Path(settings.sign_cert).read_bytes(),
                              Path(settings.sign_key).read_bytes())
    config = VtnConfig(vtn_id=settings.vtn_id, poll_freq=settings.poll_freq,
                       registration_policy=settings.registration_policy,
                       report_via=settings.report_via, secure=settings.secure)
    deps = VtnDeps(store=store, config=config, replay=RedisReplayCache(client), signing_key=key,
                   require_signatures=settings.require_signatures,
                   max_body_bytes=settings.max_body_bytes, api_token=settings.api_token)
    return deps, client


def close_on_cleanup(app: web.Application, client: redis.asyncio.Redis) -> None:
    """Close `client` when `app` shuts down, on the app's event loop (its connections belong to
    that loop), before `web.run_app` returns and the ExitStack stops the embedded Redis."""

    async def close(_: web.Application) -> None:
        await client.aclose()

    app.on_cleanup.append(close)


def serve(settings: Settings) -> None:
    """Run the VTN until interrupted."""
    with ExitStack() as stack:
        deps, client = build_deps(settings, stack)
        app = make_app(deps)
        close_on_cleanup(app, client)
        ssl_ctx = None
        if settings.secure:
            assert settings.tls_cert and settings.tls_key and settings.tls_ca
            ecc_cert, ecc_key = settings.tls_ecc_cert, settings.tls_ecc_key  # both or neither
            extra = [(ecc_cert, ecc_key)] if ecc_cert and ecc_key else []
            ssl_ctx = server_context(settings.tls_cert, settings.tls_key, settings.tls_ca,
                                     extra_chains=extra)
        scheme = "https" if ssl_ctx else "http"
        log.info("VTN %s serving %s://%s:%s (database %s)", settings.vtn_id, scheme,
                 settings.host, settings.port, settings.database_url.split("@")[-1])
        web.run_app(app, host=settings.host, port=settings.port, ssl_context=ssl_ctx,
                    print=None, access_log=None, loop=asyncio.new_event_loop())
