"""Wire the VTN process from `Settings`: database, Redis, keys, TLS, the web app."""

from __future__ import annotations

import asyncio
import logging
from contextlib import ExitStack
from pathlib import Path

import redis
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


def build_deps(settings: Settings, stack: ExitStack) -> VtnDeps:
    """Open the database and Redis (embedded when not configured) and build the VTN's deps.

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
    client = redis.Redis.from_url(redis_url)
    stack.callback(client.close)
    key = None
    if settings.sign_cert and settings.sign_key:
        key = SigningKey.load(Path(settings.sign_cert).read_bytes(),
                              Path(settings.sign_key).read_bytes())
    config = VtnConfig(vtn_id=settings.vtn_id, poll_freq=settings.poll_freq,
                       registration_policy=settings.registration_policy,
                       report_via=settings.report_via, secure=settings.secure)
    return VtnDeps(store=store, config=config, replay=RedisReplayCache(client), signing_key=key,
                   require_signatures=settings.require_signatures,
                   max_body_bytes=settings.max_body_bytes, api_token=settings.api_token)


def serve(settings: Settings) -> None:
    """Run the VTN until interrupted."""
    with ExitStack() as stack:
        deps = build_deps(settings, stack)
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
        web.run_app(make_app(deps), host=settings.host, port=settings.port, ssl_context=ssl_ctx,
                    print=None, access_log=None, loop=asyncio.new_event_loop())
