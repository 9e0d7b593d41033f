"""The simulated devices seen from another process: what crosses between `adrgate devices` (the
physics and the simulators) and `adrgate aggregator` (the VEN fleet and the bridge's planner).

The planner's views and the fleet's telemetry are synchronous calls, so the aggregator keeps a
local copy of the devices service's snapshot (every device's view, every resource's reading),
refreshed in the background; a call answers from the latest copy. The clear-sky forecast a
battery+PV plan is made on depends only on each site's profile, the class default on both
sides, so it is computed locally. `snapshot`/`parse_snapshot` are the wire format (JSON).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Protocol

import aiohttp

from oadr.messages import LoadControlState
from policies.dispatch import DeviceState
from policies.plans import DeviceView
from ven.fleet import ResourceSpec
from ven.reports import Reading

from .channel import CommandBook
from .models import Device
from .sim.physics import SimulatedFleet

log = logging.getLogger("adrgate.bridge")


class DeviceSide(Protocol):
    """What the bridge's planner and the fleet's telemetry read of the devices
    (`SimulatedFleet` in one process, `RemoteDevices` across two)."""

    def advance(self, to: datetime) -> None: ...

    def views(self, device_ids: Iterable[str] | None = None) -> dict[str, DeviceView]: ...

    def forecast(self, device: Device, start: datetime, step: timedelta,
                 steps: int) -> tuple[list[float], list[float]]: ...

    def read(self, resource: ResourceSpec, now: datetime) -> Reading: ...


class SnapshotError(ValueError):
    """A snapshot that does not fit the fleet (another fleet file, a malformed answer)."""


def _num(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else value  # JSON has no NaN


def snapshot(physics: SimulatedFleet, resources: Iterable[ResourceSpec], now: datetime
             ) -> dict[str, Any]:
    """The devices' views and the resources' readings at `now`, as JSON-ready data."""
    readings = {r.resource_id: physics.read(r, now) for r in resources}  # runs the physics
    return {
        "at": physics.now.isoformat(),
        "devices": {
            device_id: {
                "available": v.state.available, "flex_down_kw": v.state.flex_down_kw,
                "flex_up_kw": v.state.flex_up_kw, "current_kw": v.state.current_kw,
                "uncontrolled_kw": v.uncontrolled_kw, "soc": v.soc, "temp_c": v.temp_c,
                "energy_needed_kwh": v.energy_needed_kwh,
                "departure": v.departure.isoformat() if v.departure else None}
            for device_id, v in physics.views().items()},
        "resources": {
            rid: {"power_kw": r.power_kw, "energy_kwh": r.energy_kwh, "online": r.online,
                  "manual_override": r.manual_override,
                  "load_control": None if r.load_control is None else {
                      "kind": r.load_control.kind, "current": _num(r.load_control.current),
                      "min": _num(r.load_control.min), "max": _num(r.load_control.max),
                      "normal": _num(r.load_control.normal)}}
            for rid, r in readings.items()},
    }


def parse_snapshot(doc: Any, devices: Mapping[str, Device]
                   ) -> tuple[dict[str, DeviceView], dict[str, Reading]]:
    """Views of exactly `devices` and readings per resource id.

    Raises:
        SnapshotError: a device missing or unknown, a field missing or of the wrong type.
    """
    try:
        views_doc, readings_doc = doc["devices"], doc["resources"]
        if set(views_doc) != set(devices):
            raise SnapshotError(f"devices {sorted(set(views_doc) ^ set(devices))} are on one "
                                "side only: not the same fleet")
        views = {}
        for device_id, v in views_doc.items():
            departure = v["departure"]
            views[device_id] = DeviceView(
                state=DeviceState(device=devices[device_id], available=bool(v["available"]),
                                  flex_down_kw=float(v["flex_down_kw"]),
                                  flex_up_kw=float(v["flex_up_kw"]),
                                  current_kw=float(v["current_kw"])),
                uncontrolled_kw=float(v["uncontrolled_kw"]), soc=_opt(v["soc"]),
                temp_c=_opt(v["temp_c"]), energy_needed_kwh=_opt(v["energy_needed_kwh"]),
                departure=None if departure is None else datetime.fromisoformat(departure))
        readings = {}
        for rid, r in readings_doc.items():
            lc = r["load_control"]
            readings[rid] = Reading(
                power_kw=float(r["power_kw"]), energy_kwh=float(r["energy_kwh"]),
                online=bool(r["online"]), manual_override=bool(r["manual_override"]),
                load_control=None if lc is None else LoadControlState(
                    kind=str(lc["kind"]), current=float(lc["current"]), min=_opt(lc["min"]),
                    max=_opt(lc["max"]), normal=_opt(lc["normal"])))
    except (KeyError, TypeError, AttributeError) as exc:
        raise SnapshotError(f"malformed snapshot: {type(exc).__name__}: {exc}") from exc
    return views, readings


def _opt(value: Any) -> float | None:
    return None if value is None else float(value)


class RemoteDevices:
    """A `DeviceSide` answering from the latest snapshot of the devices service at `url`;
    `refresh` fetches one, `run` keeps fetching every `every` until cancelled."""

    def __init__(self, url: str, devices: Sequence[Device], session: aiohttp.ClientSession, *,
                 start: datetime, every: timedelta = timedelta(seconds=2)) -> None:
        self.url = url.rstrip("/")
        self.devices = {d.device_id: d for d in devices}
        self._session = session
        self._every = every
        self._forecaster = SimulatedFleet(devices, CommandBook(), start=start)
        self._views: dict[str, DeviceView] = {}
        self._readings: dict[str, Reading] = {}

    async def refresh(self) -> None:
        """Raises aiohttp.ClientError, TimeoutError, SnapshotError."""
        async with self._session.get(f"{self.url}/snapshot") as response:
            response.raise_for_status()
            doc = await response.json()
        self._views, self._readings = parse_snapshot(doc, self.devices)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._every.total_seconds())
            try:
                await self.refresh()
            except (aiohttp.ClientError, TimeoutError, SnapshotError) as exc:
                log.warning("devices service %s: %s; keeping the last snapshot", self.url, exc)

    def advance(self, to: datetime) -> None:
        """The devices service runs the physics: nothing to do here."""

    def views(self, device_ids: Iterable[str] | None = None) -> dict[str, DeviceView]:
        ids = self._views if device_ids is None else device_ids
        return {i: self._views[i] for i in ids}

    def forecast(self, device: Device, start: datetime, step: timedelta,
                 steps: int) -> tuple[list[float], list[float]]:
        return self._forecaster.forecast(device, start, step, steps)

    def read(self, resource: ResourceSpec, now: datetime) -> Reading:
        """The resource's latest reading; one the devices service does not simulate reads as
        offline and empty, as in `SimulatedFleet.read`."""
        return self._readings.get(resource.resource_id) or Reading(
            power_kw=0.0, energy_kwh=0.0, online=False, manual_override=False)
