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
from collections.abc import Awaitable, Callable, Sequence
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

    def on_close(close: Callable[[], Awaitable[object]]) -> None:
        stack.push_async_callback(close)

    by_channel = {c: [d for d in devices if d.channel is c] for c in Channel}
    if sapc := by_channel[Channel.SAPC]:
        key = ec.generate_private_key(ec.SECP256R1())
        sim = SapcSim(book, {d.reach: {1: d.device_id} for d in sapc}, rng=rng, clock=clock)
        world.dcc = DccSim(sim, latency=options.dcc_latency,
                           capacity_per_minute=options.dcc_capacity_per_minute)
        world.dcc.add_user(ServiceUser(eui=BRIDGE_DCC_USER, key=key.public_key(),
                                       roles=frozenset({Role.SUPPLIER})))
        for eui, public in options.dcc_load_controllers:
            world.dcc.add_user(ServiceUser(eui=eui, key=public,
                                           roles=frozenset({Role.LOAD_CONTROLLER})))
        url = await world.dcc.start(port=options.dcc_port)
        on_close(world.dcc.close)
        sapc_driver = SapcDriver(user_eui=BRIDGE_DCC_USER, key=key, dcc_url=url,
                                 timeout=options.channel_timeout_s, clock=clock)
        on_close(sapc_driver.aclose)
        world.drivers[Channel.SAPC] = sapc_driver
    if evs := by_channel[Channel.OCPP]:
        world.central = CentralSystem(response_timeout=options.channel_timeout_s)
        await world.central.start()
        on_close(world.central.aclose)
        for d in evs:
            cp = ChargePointSim(d.reach, book=book, rated_w=d.rated_import_kw * 1000,
                                device_id=d.device_id, meter_interval=options.meter_interval_s,
                                now=clock)
            await cp.connect(world.central.url)
            on_close(cp.aclose)
            world.charge_points[d.reach] = cp
        world.drivers[Channel.OCPP] = OcppDriver(world.central, now=clock)
    if batteries := by_channel[Channel.BATTERY_HUB]:
        hubs: dict[str, Hub] = {}
        for name in dict.fromkeys(d.reach for d in batteries):
            group = [d for d in batteries if d.reach == name]
            hub = HubSimulator(book, [d.device_id for d in group],
                               takes_plans=group[0].takes_plans, rng=rng, clock=clock)
            hubs[name] = Hub(url=await hub.start(), takes_plans=hub.takes_plans)
            on_close(hub.close)
            world.hubs[name] = hub
        hub_driver = HubDriver(hubs, timeout_s=options.channel_timeout_s)
        on_close(hub_driver.aclose)
        world.drivers[Channel.BATTERY_HUB] = hub_driver
    if inverters := by_channel[Channel.IEEE_2030_5]:
        server = Ieee20305Server([d.reach for d in inverters],
                                 poll_rate_s=max(1, round(options.inverter_poll_s)), clock=clock)
        url = await server.start()
        on_close(server.close)
        world.ieee_server = server
        for d in inverters:
            inverter = SimInverter(url, d, book, period_s=options.inverter_poll_s, rng=rng,
                                   clock=clock)
            await inverter.start()
            on_close(inverter.aclose)
            world.inverters[d.reach] = inverter
        world.drivers[Channel.IEEE_2030_5] = Ieee20305Driver(
            server, ack_timeout_s=options.channel_timeout_s, clock=clock)
    return world
