"""The simulated device side of every channel, on loopback, and the drivers that reach it.

One `CommandBook` records what every device was told, whatever the channel; the physics
(`SimulatedFleet`) runs the devices from it and is the VEN fleet's telemetry source. Per channel:

- SAPC: a DCC simulator in front of a SAPC simulator holding every SAPC device on controller 1;
  the bridge is one DCC service user (its own ECDSA P-256 key) in the supplier role.
- OCPP: the bridge's central system and a simulated charge point per EV device.
- battery hub: one hub simulator per device group (the devices' address), plan-capable or not.
- IEEE 2030.5: the bridge's DERControl server and a simulated inverter per device, polling it.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import datetime

from cryptography.hazmat.primitives.asymmetric import ec

from ..channel import CommandBook, Driver
from ..hub import Hub, HubDriver
from ..ieee2030_5 import Ieee20305Driver, Ieee20305Server
from ..inventory import eui64
from ..models import Channel, Device
from ..ocpp_cs import CentralSystem, OcppDriver
from ..sapc import SapcDriver
from .chargepoint import ChargePointSim
from .dcc import ACCELERATED, DccSim, Latency, Role, SapcSim, ServiceUser
from .hub import HubSimulator
from .inverter import SimInverter
from .physics import SimulatedFleet

BRIDGE_DCC_USER = eui64("adrgate-bridge")


@dataclass(frozen=True, slots=True, kw_only=True)
class WorldOptions:
    dcc_latency: Latency = ACCELERATED
    dcc_capacity_per_minute: int | None = None  # None: no throttling
    channel_timeout_s: float = 30.0  # a device that does not answer within it is unavailable
    inverter_poll_s: float = 5.0
    meter_interval_s: float = 60.0
    seed: int = 0
    dcc_port: int = 0  # 0: any free port
    # Other DCC users in the Load Controller role (the CMB): (EUI-64, ECDSA public key)
    dcc_load_controllers: tuple[tuple[str, ec.EllipticCurvePublicKey], ...] = ()


@dataclass(slots=True)
class World:
    book: CommandBook
    physics: SimulatedFleet
    drivers: dict[Channel, Driver]
    dcc: DccSim | None = None
    central: CentralSystem | None = None
    ieee_server: Ieee20305Server | None = None
    hubs: dict[str, HubSimulator] = field(default_factory=dict)
    charge_points: dict[str, ChargePointSim] = field(default_factory=dict)
    inverters: dict[str, SimInverter] = field(default_factory=dict)


async def start_world(devices: Sequence[Device], stack: AsyncExitStack, *, start: datetime,
                      clock: Callable[[], datetime], options: WorldOptions = WorldOptions()
                      ) -> World:
    """Start every simulator the devices need and a driver per channel in use; `stack` closes
    them all."""
    book = CommandBook()
    rng = random.Random(options.seed)
    world = World(book=book, drivers={},
                  physics=SimulatedFleet(devices, book, start=start, seed=options.seed))

    by_channel = {c: [d for d in devices if d.channel is c] for c in Channel}
    if sapc := by_channel[Channel.SAPC]:
        key = ec.generate_private_key(ec.SECP256R1())
        world.dcc = await start_dcc(sapc, book, stack, rng=rng, clock=clock, options=options)
        world.dcc.add_user(bridge_user(key.public_key()))
        world.drivers[Channel.SAPC] = sapc_driver(world.dcc.url, key, stack, clock=clock,
                                                  options=options)
    if evs := by_channel[Channel.OCPP]:
        world.central, world.drivers[Channel.OCPP] = await ocpp_central(
            stack, clock=clock, options=options)
        world.charge_points = charge_points(evs, book, clock=clock, options=options)
        for cp in world.charge_points.values():
            await cp.connect(world.central.url)
            stack.push_async_callback(cp.aclose)
    if batteries := by_channel[Channel.BATTERY_HUB]:
        world.hubs = await start_hubs(batteries, book, stack, rng=rng, clock=clock)
        world.drivers[Channel.BATTERY_HUB] = hub_driver(
            {name: Hub(url=hub.url, takes_plans=hub.takes_plans)
             for name, hub in world.hubs.items()}, stack, options=options)
    if inverters := by_channel[Channel.IEEE_2030_5]:
        world.ieee_server, world.drivers[Channel.IEEE_2030_5] = await ieee_2030_5_server(
            inverters, stack, clock=clock, options=options)
        world.inverters = await start_inverters(inverters, book, world.ieee_server.url, stack,
                                                rng=rng, clock=clock, options=options)
    return world


# --- each channel's two sides, for `adrgate devices` and `adrgate worker` in separate processes
# (adrgate/aggparts.py) as for start_world. SAPC and battery hubs: the devices serve, the driver
# is their client. OCPP and IEEE 2030.5: the driver serves, the devices are its clients.

def bridge_user(key: ec.EllipticCurvePublicKey, eui: str = BRIDGE_DCC_USER) -> ServiceUser:
    """The bridge as a DCC service user in the supplier role."""
    return ServiceUser(eui=eui, key=key, roles=frozenset({Role.SUPPLIER}))


async def start_dcc(sapc: Sequence[Device], book: CommandBook, stack: AsyncExitStack, *,
                    rng: random.Random, clock: Callable[[], datetime], options: WorldOptions,
                    host: str = "127.0.0.1") -> DccSim:
    """A DCC simulator in front of a SAPC simulator holding every SAPC device on controller 1,
    serving on `host`, options.dcc_port; its users are the Load Controllers of `options`."""
    sim = SapcSim(book, {d.reach: {1: d.device_id} for d in sapc}, rng=rng, clock=clock)
    dcc = DccSim(sim, latency=options.dcc_latency,
                 capacity_per_minute=options.dcc_capacity_per_minute)
    for eui, public in options.dcc_load_controllers:
        dcc.add_user(ServiceUser(eui=eui, key=public, roles=frozenset({Role.LOAD_CONTROLLER})))
    await dcc.start(host=host, port=options.dcc_port)
    stack.push_async_callback(dcc.close)
    return dcc


def sapc_driver(dcc_url: str, key: ec.EllipticCurvePrivateKey, stack: AsyncExitStack, *,
                clock: Callable[[], datetime], options: WorldOptions,
                eui: str = BRIDGE_DCC_USER) -> SapcDriver:
    driver = SapcDriver(user_eui=eui, key=key, dcc_url=dcc_url,
                        timeout=options.channel_timeout_s, clock=clock)
    stack.push_async_callback(driver.aclose)
    return driver


async def start_hubs(batteries: Sequence[Device], book: CommandBook, stack: AsyncExitStack, *,
                     rng: random.Random, clock: Callable[[], datetime],
                     host: str = "127.0.0.1") -> dict[str, HubSimulator]:
    """One hub simulator per device group (the devices' address), on `host`, any free port."""
    hubs: dict[str, HubSimulator] = {}
    for name in dict.fromkeys(d.reach for d in batteries):
        group = [d for d in batteries if d.reach == name]
        hub = HubSimulator(book, [d.device_id for d in group],
                           takes_plans=group[0].takes_plans, rng=rng, clock=clock)
        await hub.start(host=host)
        stack.push_async_callback(hub.close)
        hubs[name] = hub
    return hubs


def hub_driver(hubs: Mapping[str, Hub], stack: AsyncExitStack, *,
               options: WorldOptions) -> HubDriver:
    driver = HubDriver(hubs, timeout_s=options.channel_timeout_s)
    stack.push_async_callback(driver.aclose)
    return driver


async def ocpp_central(stack: AsyncExitStack, *, clock: Callable[[], datetime],
                       options: WorldOptions, host: str = "127.0.0.1", port: int = 0
                       ) -> tuple[CentralSystem, OcppDriver]:
    """The bridge's central system serving on `host`:`port` (0: any free port), its driver."""
    central = CentralSystem(host=host, port=port, response_timeout=options.channel_timeout_s)
    await central.start()
    stack.push_async_callback(central.aclose)
    return central, OcppDriver(central, now=clock)


def charge_points(evs: Sequence[Device], book: CommandBook, *, clock: Callable[[], datetime],
                  options: WorldOptions) -> dict[str, ChargePointSim]:
    """A simulated charge point per EV device, by charge point id; not connected yet."""
    return {d.reach: ChargePointSim(d.reach, book=book, rated_w=d.rated_import_kw * 1000,
                                    device_id=d.device_id,
                                    meter_interval=options.meter_interval_s, now=clock)
            for d in evs}


async def ieee_2030_5_server(inverters: Sequence[Device], stack: AsyncExitStack, *,
                             clock: Callable[[], datetime], options: WorldOptions,
                             host: str = "127.0.0.1", port: int = 0
                             ) -> tuple[Ieee20305Server, Ieee20305Driver]:
    """The bridge's DERControl server for `inverters` on `host`:`port`, its driver."""
    server = Ieee20305Server([d.reach for d in inverters],
                             poll_rate_s=max(1, round(options.inverter_poll_s)), clock=clock)
    await server.start(host=host, port=port)
    stack.push_async_callback(server.close)
    return server, Ieee20305Driver(server, ack_timeout_s=options.channel_timeout_s, clock=clock)


async def start_inverters(inverters: Sequence[Device], book: CommandBook, url: str,
                          stack: AsyncExitStack, *, rng: random.Random,
                          clock: Callable[[], datetime], options: WorldOptions
                          ) -> dict[str, SimInverter]:
    """A simulated inverter per device, by its address, polling the server at `url`."""
    started: dict[str, SimInverter] = {}
    for d in inverters:
        inverter = SimInverter(url, d, book, period_s=options.inverter_poll_s, rng=rng,
                               clock=clock)
        await inverter.start()
        stack.push_async_callback(inverter.aclose)
        started[d.reach] = inverter
    return started
