"""The devices behind a VEN's resources, as the fleet file declares them.

A resource of `devices` devices is split evenly: each device gets its share of the group's
ratings and storage. What the file leaves out follows the device class (table below); a SAPC
device's channel address (`address`) is derived from its id, so the same fleet file always gives
the same addresses.

| class     | channel     | storage per device | comfort band |
|-----------|-------------|--------------------|--------------|
| battery   | battery_hub | 10 kWh             |              |
| ev        | ocpp        | 60 kWh             |              |
| hot_water | sapc        |                    | 45..60 C     |
| others    | sapc        |                    |              |
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Final

from ven.fleet import DeviceClass, ResourceSpec, VenSpec

from .models import Channel, Device

CHANNEL_BY_CLASS: Final[Mapping[DeviceClass, Channel]] = {
    DeviceClass.BATTERY: Channel.BATTERY_HUB, DeviceClass.EV: Channel.OCPP}
STORAGE_KWH: Final[Mapping[DeviceClass, float]] = {DeviceClass.BATTERY: 10.0, DeviceClass.EV: 60.0}
HOT_WATER_COMFORT_C: Final = (45.0, 60.0)


def eui64(device_id: str) -> str:
    """A stable EUI-64 for a simulated SAPC: hyphenated, upper-case hex."""
    digest = hashlib.sha256(device_id.encode()).digest()[:8]
    return "-".join(f"{b:02X}" for b in digest)


def address(hub: str, device_id: str, channel: Channel) -> str:
    """How the channel names the device: a SAPC's EUI-64, a charge point id (safe in a websocket
    URL path), an IEEE 2030.5 LFDI (40 hex digits), or the aggregator's hub for the group."""
    digest = hashlib.sha256(device_id.encode()).hexdigest()
    match channel:
        case Channel.SAPC:
            return eui64(device_id)
        case Channel.OCPP:
            return f"CP{digest[:12].upper()}"
        case Channel.IEEE_2030_5:
            return digest[:40].upper()
    return hub


def devices_of(ven: VenSpec) -> tuple[Device, ...]:
    return tuple(device for r in ven.resources for device in _group(ven.name, r))


def _group(ven_name: str, r: ResourceSpec) -> list[Device]:
    channel = r.channel or CHANNEL_BY_CLASS.get(r.device_class, Channel.SAPC)
    storage = r.capacity_kwh if r.capacity_kwh is not None \
        else STORAGE_KWH.get(r.device_class, 0.0) * r.devices
    comfort = HOT_WATER_COMFORT_C if r.device_class is DeviceClass.HOT_WATER else (None, None)
    devices = []
    for i in range(r.devices):
        device_id = f"{ven_name}/{r.resource_id}/{i}"
        devices.append(Device(
            device_id=device_id, resource_id=r.resource_id, device_class=r.device_class,
            channel=channel, network_area=r.network_area,
            address=address(f"{ven_name}/{r.resource_id}", device_id, channel),
            takes_plans=r.time_limited_plans,
            rated_import_kw=r.rated_kw / r.devices, rated_export_kw=r.export_kw / r.devices,
            capacity_kwh=storage / r.devices, comfort_min_c=comfort[0], comfort_max_c=comfort[1]))
    return devices
