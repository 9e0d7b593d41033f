"""Run a real VTN on a loopback port for protocol tests, and drive openleadr VENs against it."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import aiohttp
from aiohttp import web
from lxml import etree

from adrgate.services import make_engine
from oadr import conformance
from oadr.signing import InMemoryReplayCache, ReplayCache, SigningKey
from vtn.api import OPERATOR
from vtn.app import VtnDeps, make_app
from vtn.cmb.service import Cmb
from vtn.handlers import VtnConfig
from vtn.operator import Operator
from vtn.push import PushConfig
from vtn.store import VtnStore

OADR_PATH = "/OpenADR2/Simple/2.0b"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Middleware = Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]


@dataclass
class Vtn:
    url: str  # base URL, e.g. http://127.0.0.1:PORT
    deps: VtnDeps
    operator: Operator

    @property
    def oadr_url(self) -> str:
        return self.url + OADR_PATH

    @property
    def store(self) -> VtnStore:
        return self.deps.store


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


@asynccontextmanager
async def running_vtn(database_url: str = "sqlite://", *, ssl_context: ssl.SSLContext | None = None,
                      signing_key: SigningKey | None = None, require_signatures: bool = False,
                      replay: ReplayCache | None = None, max_body_bytes: int = 1_048_576,
                      port: int = 0, middlewares: Sequence[Middleware] = (),
                      cmb: Callable[[VtnStore], Cmb] | None = None,
                      push: PushConfig = PushConfig(), **config: Any) -> AsyncIterator[Vtn]:
    """A VTN on 127.0.0.1 (a free port, or `port`) over a fresh or given database;
    `middlewares` run before the VTN sees a request (fault injection); `cmb` builds a Central
    Monitoring Body on its store, served beside it; `push` tunes its HTTP push."""
    store = VtnStore(make_engine(database_url))
    store.create_schema()
    config.setdefault("vtn_id", "TEST-VTN")
    deps = VtnDeps(store=store, config=VtnConfig(**config),
                   replay=replay if replay is not None else InMemoryReplayCache(clock=utcnow),
                   signing_key=signing_key, require_signatures=require_signatures,
                   max_body_bytes=max_body_bytes, push=push)
    app = make_app(deps, None if cmb is None else cmb(store))
    app.middlewares.extend(middlewares)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, ssl_context=ssl_context)
    await site.start()
    port = runner.addresses[0][1]
    scheme = "https" if ssl_context else "http"
    try:
        yield Vtn(url=f"{scheme}://127.0.0.1:{port}", deps=deps, operator=app[OPERATOR])
    finally:
        await runner.cleanup()
        store.close()


async def wait_for(predicate: Callable[[], Any], *, timeout: float = 20.0,
                   what: str = "condition") -> Any:
    """Poll `predicate` until it returns something truthy; bounded in time."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


@dataclass
class Wire:
    """Every message a VTN sent to one openleadr VEN, checked for conformance as it arrives."""

    received: list[bytes] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)

    def attach(self, client: Any) -> None:
        client.hooks["after_receive_xml"].append(self._on_receive)

    def _on_receive(self, content: str) -> None:
        data = content.encode() if isinstance(content, str) else content
        self.received.append(data)
        for v in conformance.check(data, now=utcnow()):
            self.violations.append(f"[{v.rule}] {v.message}")

    def types(self) -> list[str]:
        out = []
        for data in self.received:
            root = etree.fromstring(data)
            signed = root.find("{http://openadr.org/oadr-2.0b/2012/07}oadrSignedObject")
            out.append(etree.QName(signed[0]).localname if signed is not None else "?")
        return out


async def api(vtn: Vtn, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """Call the VTN's operator API over HTTP."""
    connector = aiohttp.TCPConnector(ssl=False)
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.request(method, vtn.url + path, json=body) as resp:
            return resp.status, await resp.json()


def simple_event(market_context: str = "http://dso.example/programs/flex", *,
                 start_in: timedelta = timedelta(seconds=2), level: float = 1.0,
                 **extra: Any) -> dict[str, Any]:
    """An operator JSON body for a SIMPLE event starting shortly."""
    body: dict[str, Any] = {
        "market_context": market_context,
        "dtstart": (utcnow() + start_in).isoformat(),
        "signals": [{"signal_name": "SIMPLE", "signal_type": "level",
                     "intervals": [{"duration": "PT10M", "payload": level}]}],
    }
    body.update(extra)
    return body
