"""Interop: openleadr's own OpenADRClient, used as shipped, against our VTN on loopback.

Every message the VTN sends the client is checked against the XSD and the conformance rules.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import pytest
from openleadr import OpenADRClient

from oadr.messages import OptType
from vtn.records import ReportVia
from vtn.records import Delivery

from tests.vtnkit import Vtn, Wire, api, running_vtn, simple_event, utcnow, wait_for

PROGRAM = "http://dso.example/programs/flex"


@asynccontextmanager
async def openleadr_ven(vtn: Vtn, name: str, *, opt: str = "optIn", report: bool = False,
                        **kwargs: Any) -> AsyncIterator[tuple[OpenADRClient, Wire, list[dict]]]:
    """A registered openleadr VEN; yields the client, its wire log and the events it saw."""
    client = OpenADRClient(ven_name=name, vtn_url=vtn.oadr_url, show_fingerprint=False, **kwargs)
    seen: list[dict] = []

    async def on_event(event: dict) -> str:
        seen.append(event)
        return opt

    client.add_handler("on_event", on_event)
    client.add_handler("on_update_event", on_event)
    if report:
        client.add_report(callback=lambda: 4.2, resource_id=f"{name}-battery",
                          measurement="power_real", sampling_rate=timedelta(seconds=1),
                          report_duration=timedelta(seconds=60))
    wire = Wire()
    wire.attach(client)
    await client.run()
    try:
        assert client.registration_id, "openleadr VEN did not register"
        yield client, wire, seen
    finally:
        await client.stop()
    assert wire.violations == [], "\n".join(wire.violations)


def delivery(vtn: Vtn, event_id: str, ven_id: str) -> Delivery | None:
    return next((d for d in vtn.store.deliveries_for_event(event_id) if d.ven_id == ven_id), None)


def acked(vtn: Vtn, event_id: str, ven_id: str, mod: int) -> Delivery | None:
    d = delivery(vtn, event_id, ven_id)
    return d if d is not None and d.acked_mod >= mod else None


async def create(vtn: Vtn, body: dict) -> dict:
    status, out = await api(vtn, "POST", "/api/events", body)
    assert status == 201, out
    return out


async def test_registration_then_simple_event_opt_in() -> None:
    async with running_vtn(poll_freq=timedelta(seconds=1)) as vtn:
        async with openleadr_ven(vtn, "ven-simple") as (client, wire, seen):
            ven = vtn.store.get_ven(client.ven_id)
            assert ven is not None and ven.is_registered and ven.ven_name == "ven-simple"
            ev = await create(vtn, simple_event(targets={"ven_ids": [client.ven_id]}, level=2))
            d = await wait_for(lambda: acked(vtn, ev["event_id"], client.ven_id, 0),
                               what="optIn recorded")
            assert d.opt_type is OptType.OPT_IN
            payload = seen[0]["event_signals"][0]["intervals"][0]["signal_payload"]
            assert payload == 2.0
            assert "oadrCreatedPartyRegistration" in wire.types()
            assert "oadrDistributeEvent" in wire.types()


SIGNALS = [
    pytest.param({"signal_name": "LOAD_CONTROL", "signal_type": "x-loadControlCapacity",
                  "intervals": [{"duration": "PT15M", "payload": 0.4}]}, id="load-control-capacity"),
    pytest.param({"signal_name": "LOAD_DISPATCH", "signal_type": "setpoint",
                  "item_base": {"kind": "powerReal", "description": "RealPower", "units": "W",
                                "si_scale": "k", "hertz": 50, "voltage": 230, "ac": True},
                  "intervals": [{"duration": "PT30M", "payload": 120.0}]}, id="load-dispatch"),
    pytest.param({"signal_name": "ELECTRICITY_PRICE", "signal_type": "price",
                  "item_base": {"kind": "currencyPerKWh", "description": "currencyPerKWh",
                                "units": "GBP", "si_scale": "none"},
                  "intervals": [{"duration": "PT1H", "payload": 0.1 + i / 100}
                                for i in range(24)]}, id="price-24-intervals"),
]


@pytest.mark.parametrize("signal", SIGNALS)
async def test_signal_kinds_reach_openleadr(signal: dict) -> None:
    async with running_vtn(poll_freq=timedelta(seconds=1)) as vtn:
        async with openleadr_ven(vtn, "ven-signals") as (client, wire, seen):
            body = simple_event(targets={"ven_ids": [client.ven_id]})
            body["signals"] = [signal]
            ev = await create(vtn, body)
            await wait_for(lambda: acked(vtn, ev["event_id"], client.ven_id, 0), what="ack")
            got = seen[0]["event_signals"][0]
            assert got["signal_name"] == signal["signal_name"]
            assert [iv["signal_payload"] for iv in got["intervals"]] == pytest.approx(
                [iv["payload"] for iv in signal["intervals"]])


async def test_modification_and_explicit_cancellation() -> None:
    async with running_vtn(poll_freq=timedelta(seconds=1)) as vtn:
        async with openleadr_ven(vtn, "ven-modify") as (client, wire, seen):
            body = simple_event(targets={"ven_ids": [client.ven_id]}, start_in=timedelta(minutes=5))
            ev = await create(vtn, body)
            await wait_for(lambda: acked(vtn, ev["event_id"], client.ven_id, 0), what="ack 0")
            body["signals"][0]["intervals"][0]["payload"] = 3
            body["modification_reason"] = "deeper"
            status, out = await api(vtn, "PUT", f"/api/events/{ev['event_id']}", body)
            assert status == 200 and out["modification_number"] == 1, out
            await wait_for(lambda: acked(vtn, ev["event_id"], client.ven_id, 1), what="ack 1")
            assert seen[-1]["event_descriptor"]["modification_number"] == 1
            assert seen[-1]["event_signals"][0]["intervals"][0]["signal_payload"] == 3.0
            status, out = await api(vtn, "POST", f"/api/events/{ev['event_id']}/cancel", {})
            assert status == 200 and out["modification_number"] == 2, out
            await wait_for(lambda: acked(vtn, ev["event_id"], client.ven_id, 2), what="ack 2")
            assert seen[-1]["event_descriptor"]["event_status"] == "cancelled"


async def test_implicit_cancellation_by_retargeting() -> None:
    async with running_vtn(poll_freq=timedelta(seconds=1)) as vtn:
        async with openleadr_ven(vtn, "ven-a") as (a, wire_a, _), \
                openleadr_ven(vtn, "ven-b") as (b, _, _):
            body = simple_event(targets={"ven_ids": [a.ven_id, b.ven_id]},
                                start_in=timedelta(minutes=5))
            ev = await create(vtn, body)
            await wait_for(lambda: acked(vtn, ev["event_id"], a.ven_id, 0), what="a acked")
            body["targets"] = {"ven_ids": [b.ven_id]}
            status, _ = await api(vtn, "PUT", f"/api/events/{ev['event_id']}", body)
            assert status == 200
            await wait_for(lambda: delivery(vtn, ev["event_id"], a.ven_id) is None,
                           what="implicit cancel delivered to a")
            last = [m for m in wire_a.received if b"oadrDistributeEvent" in m][-1]
            assert ev["event_id"].encode() not in last
            await wait_for(lambda: acked(vtn, ev["event_id"], b.ven_id, 1), what="b acked")


async def test_opt_in_and_out_recorded_per_ven() -> None:
    async with running_vtn(poll_freq=timedelta(seconds=1)) as vtn:
        async with openleadr_ven(vtn, "ven-in") as (yes, _, _), \
                openleadr_ven(vtn, "ven-out", opt="optOut") as (no, _, _):
            ev = await create(vtn, simple_event(targets={"ven_ids": [yes.ven_id, no.ven_id]}))
            d_yes = await wait_for(lambda: acked(vtn, ev["event_id"], yes.ven_id, 0), what="in")
            d_no = await wait_for(lambda: acked(vtn, ev["event_id"], no.ven_id, 0), what="out")
            assert (d_yes.opt_type, d_no.opt_type) == (OptType.OPT_IN, OptType.OPT_OUT)
            status, shown = await api(vtn, "GET", f"/api/events/{ev['event_id']}")
            assert {d["ven_id"]: d["opt"] for d in shown["deliveries"]} == {
                yes.ven_id: "optIn", no.ven_id: "optOut"}


@pytest.mark.parametrize("via", list(ReportVia), ids=str)
async def test_telemetry_stored(via: ReportVia) -> None:
    async with running_vtn(poll_freq=timedelta(seconds=1), report_via=via,
                           report_granularity=timedelta(seconds=1)) as vtn:
        async with openleadr_ven(vtn, "ven-telemetry", report=True) as (client, wire, _):
            await wait_for(lambda: vtn.store.count_report_values(client.ven_id) >= 2,
                           timeout=30, what="telemetry values stored")
            values = vtn.store.report_values(client.ven_id)
            assert {v.value for v in values} == {4.2}
            assert {v.resource_id for v in values} == {"ven-telemetry-battery"}
            if via is ReportVia.CREATE:
                assert "oadrCreateReport" in wire.types()


async def test_program_event_reaches_ven_that_joins_later() -> None:
    """A VEN that registers, and joins the program, after an event was created still gets it."""
    async with running_vtn(poll_freq=timedelta(seconds=1)) as vtn:
        ev = await create(vtn, simple_event(PROGRAM, start_in=timedelta(minutes=5)))
        async with openleadr_ven(vtn, "ven-late") as (client, _, seen):
            assert delivery(vtn, ev["event_id"], client.ven_id) is None
            status, _ = await api(vtn, "PATCH", f"/api/vens/{client.ven_id}",
                                  {"programs": [PROGRAM]})
            assert status == 200
            await wait_for(lambda: acked(vtn, ev["event_id"], client.ven_id, 0), what="ack")
            assert seen[0]["event_descriptor"]["event_id"] == ev["event_id"]


async def test_answer_to_a_completed_event_is_accepted_and_history_kept() -> None:
    """openleadr's VTN answers 500 here; ours records the late answer and keeps the history."""
    async with running_vtn() as vtn:
        client = OpenADRClient(ven_name="ven-late-answer", vtn_url=vtn.oadr_url,
                               show_fingerprint=False)
        try:
            await client.create_party_registration()
            body = simple_event(targets={"ven_ids": [client.ven_id]}, start_in=timedelta(0),
                                duration="PT1S")
            body["signals"][0]["intervals"][0]["duration"] = "PT1S"
            body["dtstart"] = (utcnow() + timedelta(seconds=1)).isoformat()
            ev = await create(vtn, body)
            kind, payload = await client.poll()
            assert kind == "oadrDistributeEvent"
            await asyncio.sleep(2.2)
            kind, _ = await client.poll()  # the event is over: it is no longer sent
            assert kind == "oadrDistributeEvent"
            await client.created_event(payload["request_id"], ev["event_id"], "optIn", 0)
            d = await wait_for(lambda: acked(vtn, ev["event_id"], client.ven_id, 0), what="ack")
            assert d.opt_type is OptType.OPT_IN
            status, shown = await api(vtn, "GET", f"/api/events/{ev['event_id']}")
            assert shown["status"] == "completed" and shown["deliveries"][0]["opt"] == "optIn"
        finally:
            await client.client_session.close()
