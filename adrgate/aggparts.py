"""The aggregator side split into processes, as compose.yaml runs it (`adrgate ven --fleet FILE
--bridge` runs all of it in one):

- `adrgate devices`: the fleet file's simulated devices: their physics, the DCC simulator in
  front of the SAPCs, the battery hubs (each simulator on its own port), the EV charge points
  and the inverters, and a JSON API: `GET /snapshot` (every device's view, every resource's
  reading: bridge/remote.py), `GET /endpoints` (the simulators' ports, the servers registered),
  `POST /dcc/users` (registers a bridge's DCC user key, as DCC onboarding would),
  `POST /servers` (registers a worker's OCPP central system or IEEE 2030.5 server) and
  `GET /health`.
- `adrgate worker --channel CHANNEL`: that channel's Redis Streams worker. For SAPC and battery
  hubs the devices serve: its driver reaches the devices service's simulators. For OCPP and
  IEEE 2030.5 the driver serves: the worker runs the central system / DERControl server on
  `--server` and registers its URL (at `--advertise`) at the devices service, whose charge
  points then connect to it and whose inverters poll it; it registers again every
  REREGISTER_EVERY, so a restarted devices service finds it (an unchanged registration with its
  devices connected changes nothing). `GET /health` while it runs and Redis answers.
- `adrgate aggregator`: the VEN fleet, the bridge and its step scheduler, the planner and the
  telemetry reading the devices service (adrgate/bridgeproc.py with `devices_url`).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import signal
import socket
import sys
import urllib.parse
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack, suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bridge.kinds import Channel

from .args import address
from .settings import Settings

if TYPE_CHECKING:  # the channels' libraries are imported by the commands that run them
    import aiohttp

    from bridge.channel import CommandBook, Driver
    from bridge.models import Device
    from bridge.sim.inverter import SimInverter
    from bridge.sim.world import WorldOptions
    from ven.fleet import FleetSpec

log = logging.getLogger("adrgate.bridge")

DEVICES_PORT = 8090
WORKER_PORT = 8091
REREGISTER_EVERY = 30.0  # seconds
SERVING_DRIVERS = {Channel.OCPP: "ws", Channel.IEEE_2030_5: "http"}  # their URL schemes


def register(sub: Any) -> None:
    dev: argparse.ArgumentParser = sub.add_parser(
        "devices", help="run a fleet file's simulated devices (SAPC via a DCC simulator, "
                        "battery hubs, EV charge points, inverters) with a JSON API for the "
                        "aggregator and its workers",
        description="The devices of `adrgate ven --fleet FILE --bridge`, as a service of "
                    "their own (compose.yaml): GET /snapshot, /endpoints, /health; "
                    "POST /dcc/users registers a DCC user's public key, POST /servers a "
                    "worker's OCPP central system or IEEE 2030.5 server.")
    _fleet_args(dev)
    dev.add_argument("--listen", type=address, default=("127.0.0.1", DEVICES_PORT),
                     metavar="HOST:PORT",
                     help=f"the API's address; the simulators listen on HOST too "
                          f"(default 127.0.0.1:{DEVICES_PORT})")
    dev.add_argument("--dcc", choices=("realistic", "accelerated"), default="realistic",
                     help="DCC simulator latency (as `adrgate ven --dcc`); default realistic")
    dev.set_defaults(handler=_handler(_devices))

    wrk: argparse.ArgumentParser = sub.add_parser(
        "worker", help="run one channel's Redis Streams worker against an `adrgate devices` "
                       "service",
        description="Delivers the channel's dispatches from the bridge's stream (REDIS_URL) to "
                    "the devices service's simulated devices; GET /health on --listen.")
    _fleet_args(wrk)
    wrk.add_argument("--channel", required=True, choices=[c.value for c in Channel])
    wrk.add_argument("--devices", required=True, metavar="URL",
                     help="the devices service, e.g. http://devices:8090")
    wrk.add_argument("--listen", type=address, default=("127.0.0.1", WORKER_PORT),
                     metavar="HOST:PORT", help=f"health endpoint (default 127.0.0.1:{WORKER_PORT})")
    wrk.add_argument("--dcc-key", type=Path, metavar="KEY.pem",
                     help="sapc: the bridge's DCC user key (ECDSA P-256, PEM), registered at "
                          "the devices service's DCC; default a new key per start")
    wrk.add_argument("--server", type=address, default=("127.0.0.1", 0), metavar="HOST:PORT",
                     help="ocpp, ieee_2030_5: where the driver's central system / DERControl "
                          "server listens (default 127.0.0.1, any free port)")
    wrk.add_argument("--advertise", type=address, metavar="HOST:PORT",
                     help="ocpp, ieee_2030_5: where the devices service reaches that server, "
                          "registered there (default the --server host and its bound port)")
    wrk.set_defaults(handler=_handler(_worker))

    agg: argparse.ArgumentParser = sub.add_parser(
        "aggregator", help="run the VEN fleet and the bridge against an `adrgate devices` "
                           "service, its channel workers in `adrgate worker` processes",
        description="`adrgate ven --fleet FILE --bridge` without the devices and the workers: "
                    "plans go to the channel streams (REDIS_URL), outcomes come back from them.")
    _fleet_args(agg)
    agg.add_argument("--devices", required=True, metavar="URL",
                     help="the devices service, e.g. http://devices:8090")
    agg.add_argument("--redispatch-every", type=float, default=300.0, metavar="SECONDS",
                     help="re-dispatch open LOAD_DISPATCH windows this often (default 300)")
    agg.set_defaults(handler=_handler(_aggregator))


def _fleet_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--fleet", type=Path, required=True, metavar="FILE", help="fleet file (TOML)")
    p.add_argument("--data-dir", type=Path, help="data directory (ADRGATE_DATA_DIR)")


def _handler(run: Callable[[argparse.Namespace, Settings], Awaitable[None] | None]
             ) -> Callable[[argparse.Namespace], int]:
    """Settings and logging as `adrgate ven`, then `run` (a coroutine function: in an event
    loop) until SIGINT/SIGTERM; exit 2 on a configuration error."""
    from .logs import configure

    def handle(args: argparse.Namespace) -> int:
        try:
            settings = Settings.from_env(
                os.environ, **({"data_dir": args.data_dir} if args.data_dir else {}))
            configure(settings.log_level, settings.log_format)
            if (running := run(args, settings)) is not None:
                asyncio.run(_awaited(running))
        except (ValueError, OSError) as exc:  # fleet file, settings, a service not answering
            print(f"adrgate {args.command}: configuration error: {exc}", file=sys.stderr)
            return 2
        return 0
    return handle


async def _awaited(running: Awaitable[None]) -> None:
    await running


async def _stopped() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


def _fleet_devices(path: Path) -> tuple[FleetSpec, tuple[Device, ...]]:
    from bridge.inventory import devices_of
    from ven.fleet import load_fleet

    spec = load_fleet(path)
    return spec, tuple(d for ven in spec.vens for d in devices_of(ven))


# --- adrgate devices ------------------------------------------------------------------------

async def _devices(args: argparse.Namespace, settings: Settings) -> None:
    from aiohttp import web

    from bridge.channel import CommandBook
    from bridge.loopback import Served
    from bridge.remote import snapshot
    from bridge.sim.dcc import ACCELERATED, REALISTIC
    from bridge.sim.physics import SimulatedFleet
    from bridge.sim.world import WorldOptions, start_dcc, start_hubs

    spec, devices = _fleet_devices(args.fleet)
    host, port = args.listen
    options = WorldOptions(dcc_latency=REALISTIC if args.dcc == "realistic" else ACCELERATED)
    book, rng = CommandBook(), random.Random(options.seed)  # as start_world
    physics = SimulatedFleet(devices, book, start=datetime.now(UTC), seed=options.seed)
    resources = [r for ven in spec.vens for r in ven.resources]
    async with AsyncExitStack() as stack:
        sapc = [d for d in devices if d.channel is Channel.SAPC]
        dcc = await start_dcc(sapc, book, stack, rng=rng, clock=_now, options=options,
                              host=host) if sapc else None
        hubs = await start_hubs([d for d in devices if d.channel is Channel.BATTERY_HUB], book,
                                stack, rng=rng, clock=_now, host=host)
        clients = _ServerClients(devices, book, stack, rng=rng, options=options)

        async def get_snapshot(_: web.Request) -> web.Response:
            doc = snapshot(physics, resources, datetime.now(UTC))
            doc["commands"] = {d.device_id: len(book.commands(d.device_id)) for d in devices}
            return web.json_response(doc)

        async def get_endpoints(_: web.Request) -> web.Response:
            return web.json_response({
                "dcc": None if dcc is None else _port(dcc.url),
                "hubs": {name: {"port": _port(h.url), "takes_plans": h.takes_plans}
                         for name, h in hubs.items()},
                "servers": {c.value: url for c, url in clients.servers.items()}})

        async def post_user(request: web.Request) -> web.Response:
            if dcc is None:
                raise web.HTTPNotFound(text="no SAPC devices, no DCC")
            try:
                eui, key = _dcc_user(await request.json())
            except ValueError as exc:  # also a body that is not JSON
                raise web.HTTPBadRequest(text=str(exc)) from exc
            from bridge.sim.world import bridge_user

            dcc.add_user(bridge_user(key, eui))
            log.info("DCC user %s registered (supplier)", eui)
            return web.Response(status=204)

        async def post_server(request: web.Request) -> web.Response:
            try:
                channel, url = _server(await request.json())
            except ValueError as exc:  # also a body that is not JSON
                raise web.HTTPBadRequest(text=str(exc)) from exc
            if not any(d.channel is channel for d in devices):
                raise web.HTTPNotFound(text=f"no {channel} devices in this fleet")
            try:
                await clients.point(channel, url)
            except ConnectionError as exc:
                raise web.HTTPBadGateway(text=str(exc)) from exc
            return web.Response(status=204)

        async def get_health(_: web.Request) -> web.Response:
            return web.json_response({"status": "ok", "devices": len(devices)})

        api = Served()
        api.app = web.Application(client_max_size=64 * 1024)
        api.app.router.add_get("/snapshot", get_snapshot)
        api.app.router.add_get("/endpoints", get_endpoints)
        api.app.router.add_post("/dcc/users", post_user)
        api.app.router.add_post("/servers", post_server)
        api.app.router.add_get("/health", get_health)
        await api.start(host=host, port=port)
        stack.push_async_callback(api.close)
        log.info("devices: %d simulated on %s; API %s", len(devices),
                 ", ".join(sorted({d.channel.value for d in devices})), api.url)
        await _stopped()


class _ServerClients:
    """The devices that are clients of a worker's server: the charge points (connected to the
    central system registered last) and the inverters (polling the server registered last,
    started on the first registration)."""

    def __init__(self, devices: tuple[Device, ...], book: CommandBook, stack: AsyncExitStack, *,
                 rng: random.Random, options: WorldOptions) -> None:
        from bridge.sim.world import charge_points

        self.servers: dict[Channel, str] = {}
        self._book, self._stack, self._rng, self._options = book, stack, rng, options
        self._evs = charge_points([d for d in devices if d.channel is Channel.OCPP], book,
                                  clock=_now, options=options)
        for cp in self._evs.values():
            stack.push_async_callback(cp.aclose)
        self._inverter_devices = [d for d in devices if d.channel is Channel.IEEE_2030_5]
        self._inverters: dict[str, SimInverter] = {}
        self._lock = asyncio.Lock()  # one registration at a time

    async def point(self, channel: Channel, url: str) -> None:
        """Point the channel's devices at `url`. Raises ConnectionError: a charge point could
        not connect and boot there (those before it stay connected)."""
        from ocpp.exceptions import OCPPError
        from websockets.exceptions import InvalidHandshake, InvalidURI

        from bridge.sim.world import start_inverters

        async with self._lock:
            moved = self.servers.get(channel) != url
            if channel is Channel.OCPP:
                for cp in self._evs.values():
                    if moved or not cp.connected:
                        await cp.aclose()
                        try:
                            await cp.connect(url)
                        except (OSError, TimeoutError, InvalidHandshake, InvalidURI,
                                OCPPError) as exc:
                            raise ConnectionError(f"charge point {cp.cp_id} could not connect "
                                                  f"to {url}: {exc!r}") from exc
            elif not self._inverters:
                self._inverters = await start_inverters(
                    self._inverter_devices, self._book, url, self._stack, rng=self._rng,
                    clock=_now, options=self._options)
            else:
                for inverter in self._inverters.values():
                    inverter.url = url
            self.servers[channel] = url
            if moved:
                log.info("%s devices: server %s", channel, url)


def _now() -> datetime:
    return datetime.now(UTC)


def _port(url: str) -> int:
    port = urllib.parse.urlsplit(url).port
    assert port is not None  # a served simulator's URL always has one
    return port


def _dcc_user(doc: Any) -> tuple[str, Any]:
    """{"eui": EUI-64, "public_key": PEM} -> (EUI-64, ECDSA P-256 public key). Raises ValueError."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    if not isinstance(doc, dict) or not isinstance(doc.get("eui"), str) \
            or not isinstance(doc.get("public_key"), str):
        raise ValueError('expected {"eui": EUI-64, "public_key": PEM}')  # noqa: TRY004 (a 400)
    key = serialization.load_pem_public_key(doc["public_key"].encode())
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise ValueError("a DCC user signs with ECDSA P-256")
    return doc["eui"], key


def _server(doc: Any) -> tuple[Channel, str]:
    """{"channel": "ocpp" | "ieee_2030_5", "url": ws://HOST:PORT | http://HOST:PORT} ->
    (channel, url). Raises ValueError."""
    if not isinstance(doc, dict) or not isinstance(doc.get("url"), str) \
            or not isinstance(doc.get("channel"), str) \
            or doc["channel"] not in {c.value for c in SERVING_DRIVERS}:
        raise ValueError('expected {"channel": "ocpp" or "ieee_2030_5", "url": URL}')
    channel, url = Channel(doc["channel"]), doc["url"]
    parts = urllib.parse.urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    scheme = SERVING_DRIVERS[channel]
    if parts.scheme != scheme or not parts.hostname or port is None \
            or parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"{channel}: expected a {scheme}://HOST:PORT URL, not {url!r}")
    return channel, url.rstrip("/")


# --- adrgate worker ---------------------------------------------------------------------------

async def _worker(args: argparse.Namespace, settings: Settings) -> None:
    import aiohttp
    import redis.asyncio
    from aiohttp import web

    from bridge.loopback import Served
    from bridge.sim.world import WorldOptions
    from bridge.streams import Worker

    from .bridgeproc import BridgeOptions

    if settings.redis_url is None:
        raise ValueError("REDIS_URL: the worker reads the bridge's streams on a shared Redis")
    channel = Channel(args.channel)
    _, devices = _fleet_devices(args.fleet)  # the same fleet file as the other parts
    mine = [d for d in devices if d.channel is channel]
    if not mine:
        raise ValueError(f"{args.fleet}: no {channel} devices")
    if channel in SERVING_DRIVERS and (args.advertise or args.server)[0] in ("0.0.0.0", "::"):
        raise ValueError(f"--server {args.server[0]}: a wildcard address; say where the devices "
                         "service reaches this worker with --advertise HOST:PORT")
    base = args.devices.rstrip("/")
    options, bridge = WorldOptions(), BridgeOptions()
    async with AsyncExitStack() as stack:
        session = await stack.enter_async_context(
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)))
        registered: str | None = None
        try:
            async with session.get(f"{base}/endpoints") as response:
                response.raise_for_status()
                endpoints = await response.json()
            driver: Driver
            if channel in SERVING_DRIVERS:
                driver, registered = await _serve_driver(args, mine, stack, options)
                await _register(session, base, channel, registered)
            else:
                driver = await _client_driver(args, endpoints, session, base, stack, options)
        except (aiohttp.ClientError, TimeoutError, KeyError, TypeError) as exc:
            raise ValueError(f"devices service {base}: {type(exc).__name__}: {exc}") from exc
        client = redis.asyncio.Redis.from_url(settings.redis_url, socket_timeout=10)
        stack.push_async_callback(client.aclose)
        worker = Worker(client, driver, f"{socket.gethostname()}-{os.getpid()}-{args.channel}",
                        prefix=bridge.stream_prefix, max_attempts=bridge.max_attempts,
                        backoff=(bridge.retry_base, bridge.retry_cap))
        running = asyncio.create_task(worker.run())
        tasks = {running, asyncio.create_task(_stopped())}
        if registered is not None:
            tasks.add(asyncio.create_task(_reregister(session, base, channel, registered)))

        async def get_health(_: web.Request) -> web.Response:
            problem = "stopped" if running.done() else None
            if problem is None:
                try:
                    await asyncio.wait_for(client.ping(), 3)
                except (redis.RedisError, OSError, TimeoutError) as exc:
                    problem = f"redis: {exc}"
            return web.json_response({"status": problem or "ok", "channel": args.channel,
                                      "server": registered},
                                     status=503 if problem else 200)

        api = Served()
        api.app = web.Application()
        api.app.router.add_get("/health", get_health)
        listen_host, listen_port = args.listen
        await api.start(host=listen_host, port=listen_port)
        stack.push_async_callback(api.close)
        log.info("worker %s: devices %s, health %s%s", args.channel, base, api.url,
                 f", server {registered}" if registered else "")
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        worker.stop()  # ends between blocking reads (see bridgeproc)
        for task in tasks - {running}:
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task
        await running  # a worker that crashed raises here: the process exits non-zero


async def _client_driver(args: argparse.Namespace, endpoints: Any,
                         session: aiohttp.ClientSession, base: str, stack: AsyncExitStack,
                         options: WorldOptions) -> Driver:
    """SAPC (through the devices service's DCC, as a registered DCC user) or the hubs."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from bridge.hub import Hub
    from bridge.sim.world import BRIDGE_DCC_USER, hub_driver, sapc_driver

    host = urllib.parse.urlsplit(base).hostname
    if args.channel == Channel.SAPC:
        if endpoints["dcc"] is None:
            raise ValueError(f"{base}: no DCC (the fleet has no SAPC devices)")
        key = serialization.load_pem_private_key(args.dcc_key.read_bytes(), None) \
            if args.dcc_key else ec.generate_private_key(ec.SECP256R1())
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
            raise ValueError(f"{args.dcc_key}: a DCC user signs with ECDSA P-256")
        public = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        async with session.post(f"{base}/dcc/users", json={
                "eui": BRIDGE_DCC_USER, "public_key": public.decode()}) as response:
            response.raise_for_status()
        return sapc_driver(f"http://{host}:{endpoints['dcc']}", key, stack, clock=_now,
                           options=options)
    return hub_driver({name: Hub(url=f"http://{host}:{h['port']}",
                                 takes_plans=bool(h["takes_plans"]))
                       for name, h in endpoints["hubs"].items()}, stack, options=options)


async def _serve_driver(args: argparse.Namespace, devices: list[Device], stack: AsyncExitStack,
                        options: WorldOptions) -> tuple[Driver, str]:
    """The channel's server on --server and its driver; the URL the devices reach it at."""
    from bridge.sim.world import ieee_2030_5_server, ocpp_central

    host, port = args.server
    driver: Driver
    if args.channel == Channel.OCPP:
        central, driver = await ocpp_central(stack, clock=_now, options=options, host=host,
                                             port=port)
        bound = central.port
    else:
        server, driver = await ieee_2030_5_server(devices, stack, clock=_now, options=options,
                                                  host=host, port=port)
        bound = _port(server.url)
    advertised, scheme = args.advertise or (host, bound), SERVING_DRIVERS[Channel(args.channel)]
    return driver, f"{scheme}://{advertised[0]}:{advertised[1]}"


async def _register(session: aiohttp.ClientSession, base: str, channel: Channel,
                    url: str) -> None:
    """Raises ValueError: the devices service refused; aiohttp.ClientError, TimeoutError."""
    async with session.post(f"{base}/servers",
                            json={"channel": channel.value, "url": url}) as response:
        if response.status >= 300:
            raise ValueError(f"devices service {base} refused server {url}: "
                             f"{response.status} {await response.text()}")


async def _reregister(session: aiohttp.ClientSession, base: str, channel: Channel,
                      url: str) -> None:
    import aiohttp

    while True:  # until cancelled
        await asyncio.sleep(REREGISTER_EVERY)
        try:
            await _register(session, base, channel, url)
        except (ValueError, aiohttp.ClientError, TimeoutError) as exc:
            log.warning("worker %s: registering %s: %s", channel, url, exc)


# --- adrgate aggregator -----------------------------------------------------------------------

def _aggregator(args: argparse.Namespace, settings: Settings) -> None:
    import aiohttp

    from . import venfleet
    from .bridgeproc import BridgeOptions

    if settings.redis_url is None:
        raise ValueError("REDIS_URL: the channel workers read the bridge's streams on a "
                         "shared Redis")
    options = BridgeOptions(devices_url=args.devices,
                            redispatch_every=timedelta(seconds=args.redispatch_every))
    try:  # a SnapshotError (another fleet's devices) is a ValueError already
        venfleet.run(args.fleet, settings, bridge=options)
    except aiohttp.ClientError as exc:  # its first snapshot
        raise ValueError(f"devices service {args.devices}: {type(exc).__name__}: {exc}") \
            from exc
