"""End to end: a compromised aggregator's plans are caught by the CMB and its SAPC devices are
capped through the smart-metering path (SRV 7.16 as the Load Controller, bypassing the
aggregator) while its VEN and bridge keep sending plans; lifting the override restores them."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from pathlib import Path

import aiohttp
from cryptography.hazmat.primitives.asymmetric import ec
from redis.asyncio import Redis

from bridge.channel import Dispatch
from bridge.cmb_client import CmbClient
from bridge.models import Mode, Plan, PlanStep
from bridge.sapc import SapcDriver
from bridge.sim.dcc import Role, ServiceUser
from bridge.store import PlanStatus
from bridge.streams import DispatchQueue
from tests.test_bridge_e2e import OPTIONS, aggregator, event
from tests.test_ven_fleet import FAST, create, registered
from tests.venkit import PROGRAM
from tests.vtnkit import running_vtn, utcnow, wait_for
from ven.fleet import DeviceClass, ResourceSpec
from ven.records import Purpose
from vtn.cmb.override import OverrideExecutor, SapcPath
from vtn.cmb.records import Decision, DeviceRegistration, OverrideStatus
from vtn.cmb.api import cmb_beside
from vtn.cmb.service import Cmb
from vtn.cmb.signing import Item, public_pem
from vtn.cmb.store import AggregatorProfile
from vtn.store import VtnStore

HEATERS = ResourceSpec(resource_id="heaters", device_class=DeviceClass.HOT_WATER, devices=25,
                       rated_kw=75.0, baseline_kw=25.0, flexible_kw=25.0)  # above min_devices
AGGREGATOR_KEY = ec.generate_private_key(ec.SECP256R1())
CMB_KEY = ec.generate_private_key(ec.SECP256R1())
CMB_EUI = "00-CB-00-00-00-00-00-01"


async def test_a_compromised_aggregator_is_capped_through_the_metering_path(
        redis_url: str, tmp_path: Path) -> None:
    cmbs: list[Cmb] = []

    def beside(store: VtnStore) -> Cmb:
        # the flexibility program is an enrolled grid service: its plans are response DSR
        store.save_program(PROGRAM, "flex")
        cmbs.append(cmb_beside(store, now=utcnow()))
        return cmbs[0]

    async with running_vtn(cmb=beside, **FAST) as vtn:
        cmb = cmbs[0]
        now = utcnow()
        cmb.register_aggregator(AggregatorProfile(
            aggregator="agg", public_key=public_pem(AGGREGATOR_KEY),
            auto_response=("same_minute_share",), override_level=0), "test", now)
        options = dataclasses.replace(OPTIONS, cmb_url=vtn.url, cmb_key=AGGREGATOR_KEY)
        async with aggregator(vtn, redis_url, tmp_path, HEATERS, options=options) as side:
            (ven_id,) = await registered(vtn, 1)
            cmb.put_devices([DeviceRegistration(
                device_id=d.device_id, owner="agg", device_class=d.device_class,
                network_area=d.network_area, channel=d.channel, reach=d.reach,
                rated_import_kw=d.rated_import_kw, ven_id=ven_id, resource_id=d.resource_id)
                for d in side.devices], "test", now)
            # The CMB reaches the SAPCs as the Load Controller, with its own key: a path the
            # aggregator does not hold.
            assert side.world.dcc is not None
            side.world.dcc.add_user(ServiceUser(eui=CMB_EUI, key=CMB_KEY.public_key(),
                                                roles=frozenset({Role.LOAD_CONTROLLER})))
            driver = SapcDriver(user_eui=CMB_EUI, key=CMB_KEY, dcc_url=side.world.dcc.url)
            cmb.executor = OverrideExecutor(sapc=SapcPath(driver))
            book = side.world.book

            # A normal response event: every plan is judged by the CMB and delivered.
            event_id = await create(vtn, event("x-loadControlCapacity", 0.5,
                                               start_in=timedelta(seconds=2), minutes=30,
                                               targets={"ven_ids": [ven_id]}))
            during = utcnow() + timedelta(minutes=10)
            await wait_for(lambda: all(book.setpoint(d.device_id, during) is not None
                                       for d in side.devices), timeout=30,
                           what="the event's plans in force on every heater")
            verdicts = cmb.store.verdicts(limit=100)
            assert {j.verdict.decision for j in verdicts} == {Decision.ACCEPTED}, [
                j.verdict.findings for j in verdicts]
            assert len(verdicts) == len(side.devices)

            # The aggregator is compromised: it plans its whole fleet to switch to full load in
            # the same minute, submits the plans (signed with its own key) and dispatches them.
            start = (utcnow() + timedelta(minutes=2)).replace(second=0, microsecond=0)
            attack = [Plan(
                plan_id=f"attack/{d.device_id}", device_id=d.device_id, sequence=10_000,
                issuer="agg", purpose=Purpose.ROUTINE, priority=0,
                random_delay=timedelta(seconds=1), event_id=None,
                steps=(PlanStep(mode=Mode.LIMIT, start=start,
                                end=start + timedelta(hours=1), level=100),))
                for d in side.devices]
            async with aiohttp.ClientSession() as session:
                client = CmbClient(vtn.url, "agg", AGGREGATOR_KEY, session)
                judged = await client.submit([Item(plan=p, device=d)
                                              for p, d in zip(attack, side.devices)])
            assert {j.verdict.decision for j in judged} == {Decision.ACCEPTED}  # each plausible
            redis = Redis.from_url(redis_url)
            queue = DispatchQueue(redis, prefix=side.options.stream_prefix)
            for p, d in zip(attack, side.devices):
                await queue.enqueue(Dispatch(plan=p, device=d))
            await redis.aclose()

            # The fleet monitor sees 100 % of the fleet switching in one minute and applies the
            # override at once: every SAPC is capped at 0 % through the DCC.
            alerts = await wait_for(lambda: [a for a in cmb.store.alerts(aggregator="agg")
                                             if a.monitor == "same_minute_share"],
                                    what="the same-minute alert")
            assert alerts[0].value >= alerts[0].threshold
            (entry,) = cmb.overrides(OverrideStatus.ACTIVE)
            assert entry.override.created_by.startswith("auto:")
            attack_time = start + timedelta(minutes=5)
            await wait_for(lambda: all(
                (sp := book.setpoint(d.device_id, attack_time)) is not None and sp.level == 0
                for d in side.devices), timeout=30, what="every heater capped at 0 %")
            # The aggregator keeps planning (its VEN polls, its bridge dispatches 7.13 at 100 %):
            # the devices stay capped.
            await wait_for(lambda: all(
                any(c.setpoint.level == 100 and c.start >= start
                    for c in book.commands(d.device_id)) for d in side.devices), timeout=30,
                what="the attack plans reaching the SAPCs")
            assert all(book.setpoint(d.device_id, attack_time).level == 0  # type: ignore[union-attr]
                       for d in side.devices)
            assert side.store.plans(event_id=event_id, status=PlanStatus.DISPATCHED)

            # Lifted: the aggregator's plans are in force again.
            await cmb.lift(entry.override.override_id, "operator", utcnow())
            await wait_for(lambda: all(
                (sp := book.setpoint(d.device_id, attack_time)) is not None and sp.level == 100
                for d in side.devices), timeout=30, what="the plans back after the lift")
