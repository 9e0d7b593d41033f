"""Names the fleet file and the bridge share; imports nothing, so ven/ can use them."""

from __future__ import annotations

from enum import StrEnum


class Channel(StrEnum):
    SAPC = "sapc"  # a proportional load controller through the smart-metering network: caps only
    OCPP = "ocpp"  # EV charge points
    BATTERY_HUB = "battery_hub"  # an aggregator's own control hub, JSON over HTTP
    IEEE_2030_5 = "ieee_2030_5"  # inverters (DERControl)
