"""The devices behind a fleet file's resources: split evenly, class defaults, stable addresses."""

from __future__ import annotations

import re

from bridge.inventory import devices_of
from bridge.models import Channel
from tests.test_fleet_file import EXAMPLE
from ven.fleet import DeviceClass, load_fleet

EUI64 = re.compile(r"^([0-9A-F]{2}-){7}[0-9A-F]{2}$")


def test_resources_become_devices_with_their_share_of_the_ratings() -> None:
    sunstore = load_fleet(EXAMPLE).vens[0]
    devices = devices_of(sunstore)
    batteries = [d for d in devices if d.resource_id == "home-batteries"]
    heaters = [d for d in devices if d.resource_id == "pv-diverters"]
    assert (len(batteries), len(heaters)) == (250, 180)
    assert {(d.rated_import_kw, d.rated_export_kw, d.capacity_kwh) for d in batteries} \
        == {(5.0, 5.0, 10.0)}
    assert {(d.channel, d.network_area, d.takes_plans) for d in batteries} \
        == {(Channel.BATTERY_HUB, "north", True)}
    # hot water: SAPC by default, the class's comfort band, an EUI-64 per device
    assert {(d.channel, d.comfort_min_c, d.comfort_max_c) for d in heaters} \
        == {(Channel.SAPC, 45.0, 60.0)}
    assert all(EUI64.match(d.reach) for d in heaters)
    assert len({d.reach for d in heaters}) == len(heaters)
    assert {d.reach for d in batteries} == {"sunstore-homes/home-batteries"}  # the group's hub
    assert devices_of(sunstore) == devices  # the same file gives the same addresses


def test_class_defaults_pick_the_channel_and_storage() -> None:
    voltway = load_fleet(EXAMPLE).vens[1]
    chargers = devices_of(voltway)
    assert chargers and all(d.device_class is DeviceClass.EV for d in chargers)
    assert {(d.channel, d.capacity_kwh) for d in chargers} == {(Channel.OCPP, 60.0)}
    assert all(re.fullmatch(r"CP[0-9A-F]{12}", d.reach) for d in chargers)
