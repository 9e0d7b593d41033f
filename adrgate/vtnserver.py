"""Wire the VTN process from `Settings`: database, Redis, keys, TLS, the web app."""

from __future__ import annotations

import asyncio
import logging
from contextlib import ExitStack
from pathlib import Path

import redis.asyncio
from aiohttp import web

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from bridge.sapc import SapcDriver
from oadr.signing import SigningKey
from vtn.api import OPERATOR
from vtn.app import VtnDeps, make_app
from vtn.cmb.api import cmb_beside
from vtn.cmb.override import OpenAdrPath, OverrideExecutor, SapcPath
from vtn.cmb.service import Cmb, CmbConfig
from vtn.handlers import VtnConfig
from vtn.operator import Operator
from vtn.push import PushConfig, PushTls
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
                   max_body_bytes=settings.max_body_bytes, api_token=settings.api_token,
                   push=push_config(settings))
    return deps, client


def push_config(settings: Settings) -> PushConfig:
    """How the VTN pushes to push VENs; with mutual TLS it presents its server certificate."""
    tls = None
    if settings.tls_cert and settings.tls_key and settings.tls_ca:
        tls = PushTls(cert=settings.tls_cert, key=settings.tls_key, ca=settings.tls_ca)
    return PushConfig(concurrency=settings.push_concurrency, timeout=settings.push_timeout,
                      unreachable_after=settings.push_unreachable_after,
                      backoff_max=settings.push_backoff_max, resend_after=settings.push_resend,
                      tls=tls)


def build_cmb(settings: Settings, deps: VtnDeps) -> Cmb:
    """The Central Monitoring Body on the VTN's database (ADRGATE_CMB*).

    Raises:
        OSError / ValueError: the aggregators file is unreadable or malformed.
    """
    return cmb_beside(deps.store, now=deps.clock(), profiles_file=settings.cmb_aggregators,
                      config=CmbConfig(tick_every=settings.cmb_tick))


def override_executor(settings: Settings, operator: Operator) -> OverrideExecutor:
    """The CMB's override paths: the OpenADR event always; SRV 7.16 through the DCC when
    ADRGATE_CMB_DCC_URL/USER/KEY are set. (IEEE 2030.5 devices are reached through the server
    their inverters poll, which runs with the bridge.)"""
    sapc = None
    if settings.cmb_dcc_url and settings.cmb_dcc_user and settings.cmb_dcc_key:
        key = serialization.load_pem_private_key(Path(settings.cmb_dcc_key).read_bytes(), None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{settings.cmb_dcc_key}: the DCC needs an ECDSA P-256 key")
        sapc = SapcPath(SapcDriver(user_eui=settings.cmb_dcc_user, key=key,
                                   dcc_url=settings.cmb_dcc_url))
    return OverrideExecutor(openadr=OpenAdrPath(operator), sapc=sapc)


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
        cmb = build_cmb(settings, deps) if settings.cmb else None
        app = make_app(deps, cmb)
        if cmb is not None:
            cmb.executor = override_executor(settings, app[OPERATOR])
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
