"""The aggregator side split into processes, as compose.yaml runs it (`adrgate ven --fleet FILE
--bridge` runs all of it in one):

- `adrgate devices`: the fleet file's simulated devices: their physics, the DCC simulator in
  front of the SAPCs and the battery hubs, each simulator on its own port, and a JSON API:
  `GET /snapshot` (every device's view, every resource's reading: bridge/remote.py),
  `GET /endpoints` (the simulators' ports), `POST /dcc/users` (registers a bridge's DCC user
  key, as DCC onboarding would) and `GET /health`.
- `adrgate worker --channel sapc|battery_hub`: that channel's Redis Streams worker, its driver
  reaching the devices service's simulators; `GET /health` while it runs and Redis answers.
- `adrgate aggregator`: the VEN fleet, the bridge and its step scheduler, the planner and the
  telemetry reading the devices service (adrgate/bridgeproc.py with `devices_url`).

Only channels whose devices serve and whose drivers are clients split this way (SAPC, battery
hubs): for OCPP and IEEE 2030.5 the devices are the clients of a server the driver owns, so
those fleets run in one process.
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

from .settings import Settings

if TYPE_CHECKING:  # the channels' libraries are imported by the commands that run them
    from bridge.models import Device
    from ven.fleet import FleetSpec

log = logging.getLogger("adrgate.bridge")

DEVICES_PORT = 8090
WORKER_PORT = 8091


def register(sub: Any) -> None:
    dev: argparse.ArgumentParser = sub.add_parser(
        "devices", help="run a fleet file's simulated devices (SAPC via a DCC simulator, "
                        "battery hubs) with a JSON API for the aggregator and its workers",
        description="The devices of `adrgate ven --fleet FILE --bridge`, as a service of "
                    "their own (compose.yaml): GET /snapshot, /endpoints, /health; "
                    "POST /dcc/users registers a DCC user's public key.")
    _fleet_args(dev)
    dev.add_argument("--listen", type=_address, default=("127.0.0.1", DEVICES_PORT),
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
                    "the devices service's simulators; GET /health on --listen.")
    _fleet_args(wrk)
    wrk.add_argument("--channel", required=True, choices=("sapc", "battery_hub"))
    wrk.add_argument("--devices", required=True, metavar="URL",
                     help="the devices service, e.g. http://devices:8090")
    wrk.add_argument("--listen", type=_address, default=("127.0.0.1", WORKER_PORT),
                     metavar="HOST:PORT", help=f"health endpoint (default 127.0.0.1:{WORKER_PORT})")
    wrk.add_argument("--dcc-key", type=Path, metavar="KEY.pem",
                     help="sapc: the bridge's DCC user key (ECDSA P-256, PEM), registered at "
                          "the devices service's DCC; default a new key per start")
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


def _address(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{value!r}: expected HOST:PORT")
    return host, int(port)


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
    from bridge.models import Channel
    from bridge.remote import snapshot
    from bridge.sim.dcc import ACCELERATED, REALISTIC
    from bridge.sim.physics import SimulatedFleet
    from bridge.sim.world import SERVED_CHANNELS, WorldOptions, start_dcc, start_hubs

    spec, devices = _fleet_devices(args.fleet)
    if other := sorted({d.channel.value for d in devices} - SERVED_CHANNELS):
        raise ValueError(f"{args.fleet}: channels {', '.join(other)} need the driver's server: "
                         "run this fleet with `adrgate ven --bridge`")
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

        async def get_snapshot(_: web.Request) -> web.Response:
            doc = snapshot(physics, resources, datetime.now(UTC))
            doc["commands"] = {d.device_id: len(book.commands(d.device_id)) for d in devices}
            return web.json_response(doc)

        async def get_endpoints(_: web.Request) -> web.Response:
            return web.json_response({
                "dcc": None if dcc is None else _port(dcc.url),
                "hubs": {name: {"port": _port(h.url), "takes_plans": h.takes_plans}
                         for name, h in hubs.items()}})

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

        async def get_health(_: web.Request) -> web.Response:
            return web.json_response({"status": "ok", "devices": len(devices)})

        api = Served()
        api.app = web.Application(client_max_size=64 * 1024)
        api.app.router.add_get("/snapshot", get_snapshot)
        api.app.router.add_get("/endpoints", get_endpoints)
        api.app.router.add_post("/dcc/users", post_user)
        api.app.router.add_get("/health", get_health)
        await api.start(host=host, port=port)
        stack.push_async_callback(api.close)
        log.info("devices: %d simulated on %s; API %s", len(devices),
                 ", ".join(sorted({d.channel.value for d in devices})), api.url)
        await _stopped()


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


# --- adrgate worker ---------------------------------------------------------------------------

async def _worker(args: argparse.Namespace, settings: Settings) -> None:
    import aiohttp
    import redis.asyncio
    from aiohttp import web
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from bridge.channel import Driver
    from bridge.hub import Hub
    from bridge.loopback import Served
    from bridge.models import Channel
    from bridge.sim.world import BRIDGE_DCC_USER, WorldOptions, hub_driver, sapc_driver
    from bridge.streams import Worker

    from .bridgeproc import BridgeOptions

    if settings.redis_url is None:
        raise ValueError("REDIS_URL: the worker reads the bridge's streams on a shared Redis")
    _fleet_devices(args.fleet)  # the same fleet file as the other parts: at least a valid one
    base = args.devices.rstrip("/")
    host = urllib.parse.urlsplit(base).hostname
    options, bridge = WorldOptions(), BridgeOptions()
    async with AsyncExitStack() as stack:
        session = await stack.enter_async_context(
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)))
        try:
            async with session.get(f"{base}/endpoints") as response:
                response.raise_for_status()
                endpoints = await response.json()
            driver: Driver
            if args.channel == Channel.SAPC.value:
                if endpoints["dcc"] is None:
                    raise ValueError(f"{base}: no DCC (the fleet has no SAPC devices)")
                key = serialization.load_pem_private_key(args.dcc_key.read_bytes(), None) \
                    if args.dcc_key else ec.generate_private_key(ec.SECP256R1())
                if not isinstance(key, ec.EllipticCurvePrivateKey) \
                        or key.curve.name != "secp256r1":
                    raise ValueError(f"{args.dcc_key}: a DCC user signs with ECDSA P-256")
                public = key.public_key().public_bytes(
                    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
                async with session.post(f"{base}/dcc/users", json={
                        "eui": BRIDGE_DCC_USER, "public_key": public.decode()}) as response:
                    response.raise_for_status()
                driver = sapc_driver(f"http://{host}:{endpoints['dcc']}", key, stack,
                                     clock=_now, options=options)
            else:
                driver = hub_driver({name: Hub(url=f"http://{host}:{h['port']}",
                                               takes_plans=bool(h["takes_plans"]))
                                     for name, h in endpoints["hubs"].items()},
                                    stack, options=options)
        except (aiohttp.ClientError, TimeoutError, KeyError, TypeError) as exc:
            raise ValueError(f"devices service {base}: {type(exc).__name__}: {exc}") from exc
        client = redis.asyncio.Redis.from_url(settings.redis_url, socket_timeout=10)
        stack.push_async_callback(client.aclose)
        worker = Worker(client, driver, f"{socket.gethostname()}-{os.getpid()}-{args.channel}",
                        prefix=bridge.stream_prefix, max_attempts=bridge.max_attempts,
                        backoff=(bridge.retry_base, bridge.retry_cap))
        running = asyncio.create_task(worker.run())

        async def get_health(_: web.Request) -> web.Response:
            problem = "stopped" if running.done() else None
            if problem is None:
                try:
                    await asyncio.wait_for(client.ping(), 3)
                except (redis.RedisError, OSError, TimeoutError) as exc:
                    problem = f"redis: {exc}"
            return web.json_response({"status": problem or "ok", "channel": args.channel},
                                     status=503 if problem else 200)

        api = Served()
        api.app = web.Application()
        api.app.router.add_get("/health", get_health)
        listen_host, listen_port = args.listen
        await api.start(host=listen_host, port=listen_port)
        stack.push_async_callback(api.close)
        log.info("worker %s: devices %s, health %s", args.channel, base, api.url)
        stopped = asyncio.create_task(_stopped())
        await asyncio.wait({running, stopped}, return_when=asyncio.FIRST_COMPLETED)
        worker.stop()  # ends between blocking reads (see bridgeproc)
        stopped.cancel()
        with suppress(asyncio.CancelledError):
            await stopped
        await running  # a worker that crashed raises here: the process exits non-zero


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
