"""Run our VEN fleet in-process for tests, with every message it sends checked for conformance."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from lxml import etree

from adrgate.services import make_engine
from oadr import conformance
from ven.fleet import DeviceClass, FleetSpec, ResourceSpec, VenSpec
from ven.runner import Fleet
from ven.store import FleetStore

from tests.vtnkit import utcnow

PROGRAM = "http://dso.example/programs/flex"


def battery(resource_id: str = "battery-1", *, flexible_kw: float = 50.0) -> ResourceSpec:
    return ResourceSpec(resource_id=resource_id, device_class=DeviceClass.BATTERY, devices=10,
                        rated_kw=100.0, baseline_kw=60.0, flexible_kw=flexible_kw)


def ven_spec(vtn_url: str, name: str, **fields: Any) -> VenSpec:
    """A VEN fronting one battery group in PROGRAM, polling fast (tests), reporting every second."""
    fields.setdefault("market_contexts", (PROGRAM,))
    fields.setdefault("resources", (battery(),))
    fields.setdefault("poll_interval", timedelta(seconds=0.3))
    fields.setdefault("report_min_period", timedelta(seconds=1))
    return VenSpec(name=name, vtn_url=vtn_url, **fields)


@dataclass
class FleetWire:
    """Every exchange of the fleet; each message a VEN sends must pass the conformance check."""

    sent: list[tuple[str, str, bytes]] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)

    def __call__(self, ven: str, service: str, body: bytes, reply: bytes) -> None:
        self.sent.append((ven, service, body))
        for v in conformance.check(body, now=utcnow()):
            self.violations.append(f"{ven} {service} [{v.rule}] {v.message}")

    def types(self, ven: str | None = None) -> list[str]:
        out = []
        for name, _, body in self.sent:
            if ven is None or name == ven:
                signed = etree.fromstring(body).find(
                    "{http://openadr.org/oadr-2.0b/2012/07}oadrSignedObject")
                assert signed is not None
                out.append(etree.QName(signed[0]).localname)
        return out


@dataclass
class RunningFleet:
    fleet: Fleet
    store: FleetStore
    wire: FleetWire

    def agent(self, name: str) -> Any:
        return self.fleet.agents[name]


@asynccontextmanager
async def running_fleet(vens: Sequence[VenSpec], database_url: str = "sqlite://", *,
                        seed: int = 1, **fleet: Any) -> AsyncIterator[RunningFleet]:
    """Our fleet running `vens` until the block ends; asserts every sent message conformed."""
    store = FleetStore(make_engine(database_url))
    wire = FleetWire()
    spec = FleetSpec(vens=tuple(vens), **fleet)
    runner = Fleet(spec, store, seed=seed, observer=wire)
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    await asyncio.wait([task, asyncio.create_task(runner.started.wait())],
                       return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        task.result()  # failed to start: raise why
    try:
        yield RunningFleet(runner, store, wire)
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=30)
        store.close()
    assert not wire.violations, wire.violations


def with_resources(spec: VenSpec, *resources: ResourceSpec) -> VenSpec:
    return dataclasses.replace(spec, resources=resources)
