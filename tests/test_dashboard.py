"""The operator dashboard over HTTP: the page, its data, its change stream, bad input."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.test_bridge_e2e import KW
from tests.test_ven_fleet import FAST, create, registered
from tests.venkit import PROGRAM, battery, running_fleet, ven_spec
from tests.vtnkit import Vtn, api, running_vtn, utcnow, wait_for
from vtn import dashboard
from vtn.cmb.api import cmb_beside
from vtn.cmb.service import Cmb
from vtn.dashboard import FEED, ChangeFeed
from vtn.dashboard_data import (
    STALE,
    Device,
    PowerView,
    Presence,
    Telemetry,
    area_charts,
    event_chart,
    online_state,
)
from oadr.isotime import parse_datetime
from vtn.eventjson import event_from_json
from vtn.records import EventRecord
from vtn.store import VtnStore

Handler = Callable[[web.Request], Any]
SETPOINT_KW = 40.0  # inside battery()'s band (baseline 60 kW, 50 kW flexible): the model meets it


def dispatch(ven_id: str, kw: float = SETPOINT_KW, *, name: str = "LOAD_DISPATCH",
             type_: str = "setpoint", minutes: int = 5) -> dict[str, Any]:
    signal: dict[str, Any] = {"signal_name": name, "signal_type": type_,
                              "intervals": [{"duration": f"PT{minutes}M", "payload": kw}]}
    if name == "LOAD_DISPATCH":
        signal["item_base"] = KW
    return {"market_context": PROGRAM, "dtstart": (utcnow() + timedelta(seconds=2)).isoformat(),
            "targets": {"ven_ids": [ven_id]}, "signals": [signal]}


async def get(vtn: Vtn, part: str) -> Any:
    status, body = await api(vtn, "GET", f"/api/dashboard/{part}")
    assert status == 200, body
    return body


@asynccontextmanager
async def stream(url: str) -> AsyncIterator[aiohttp.ClientResponse]:
    async with aiohttp.ClientSession() as session, session.get(url + "/api/stream") as resp:
        assert resp.status == 200
        assert resp.content_type == "text/event-stream"
        yield resp


async def next_event(resp: aiohttp.ClientResponse, name: str, timeout: float = 30.0,
                     where: Callable[[dict[str, Any]], bool] = lambda _: True) -> dict[str, Any]:
    """The next server-sent event called `name` whose data satisfies `where` (bounded)."""
    event = None
    async with asyncio.timeout(timeout):
        async for raw in resp.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                event = line[len("event: "):]
            elif line.startswith("data: ") and event == name:
                data: dict[str, Any] = json.loads(line[len("data: "):])
                if where(data):
                    return data
    raise AssertionError(f"the stream ended before a {name} event")


def capturing(apps: list[web.Application]) -> Any:
    @web.middleware
    async def capture(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not apps:
            apps.append(request.app)
        return await handler(request)  # type: ignore[no-any-return]
    return capture


# --- the page -----------------------------------------------------------------------------

async def test_the_page_and_its_assets_are_served_and_locked_to_our_own_scripts() -> None:
    async with running_vtn() as vtn, aiohttp.ClientSession() as session:
        async with session.get(vtn.url + "/") as resp:
            page = await resp.text()
            assert resp.status == 200 and resp.content_type == "text/html"
            assert "default-src 'self'" in resp.headers["Content-Security-Policy"]
        for asset in ("/static/dashboard.js", "/static/dashboard.css"):
            assert f'"{asset}"' in page
            async with session.get(vtn.url + asset) as resp:
                assert resp.status == 200
                assert len(await resp.read()) > 0
        # every form field has its label
        for field in ("f-program", "f-vens", "f-signal", "f-value", "f-start", "f-duration",
                      "f-priority", "token"):
            assert f'<label for="{field}"' in page
        async with session.get(vtn.url + "/static/../dashboard.py") as resp:
            assert resp.status in (403, 404)


# --- data ---------------------------------------------------------------------------------

async def test_fleet_events_and_power_follow_a_ven_and_a_dispatch_event() -> None:
    async with running_vtn(**FAST) as vtn, running_fleet([ven_spec(vtn.oadr_url, "agg-1")]):
        (ven_id,) = await registered(vtn, 1)

        async def online() -> Any:
            vens = (await get(vtn, "fleet"))["vens"]
            return vens if vens[0]["online"] == "online" else None

        (ven,) = await wait_async(online, "the VEN reported online")
        assert (ven["ven_id"], ven["ven_name"], ven["status"]) == (ven_id, "agg-1", "registered")
        assert ven["transport"] == "pull" and ven["last_contact"] and ven["last_report"]

        async def last_poll() -> Any:
            return (await get(vtn, "fleet"))["vens"][0]["last_poll"]

        polled = await wait_async(last_poll, "the VEN's last poll recorded")
        assert parse_datetime(polled) >= parse_datetime(ven["registered_at"])

        event_id = await create(vtn, dispatch(ven_id))

        async def acknowledged() -> Any:
            evs = (await get(vtn, "events"))["events"]
            ev = next(e for e in evs if e["event_id"] == event_id)
            return ev if ev["deliveries"] and ev["deliveries"][0]["state"] == "acknowledged" \
                else None

        ev = await wait_async(acknowledged, "the VEN acknowledging the event")
        (d,) = ev["deliveries"]
        assert (d["ven_id"], d["ven_name"], d["opt"]) == (ven_id, "agg-1", "optIn")
        assert (await get(vtn, "fleet"))["vens"][0]["open_events"] == 1

        async def met() -> Any:
            chart = next(c for c in (await get(vtn, "power"))["events"]
                         if c["event_id"] == event_id)
            start = ev["dtstart"]
            during = [p for p in chart["delivered"] if p["t"] > start]
            # the model meets the setpoint once the VEN holds the event
            return chart if during and during[-1]["kw"] == pytest.approx(SETPOINT_KW) else None

        chart = await wait_async(met, "delivered power meeting the setpoint")
        assert (chart["vens"], chart["series"]) == (1, 1)
        assert chart["requested"] and all(p["kw"] == SETPOINT_KW for p in chart["requested"])
        before = [p for p in chart["delivered"] if p["t"] < ev["dtstart"]]
        assert before and before[0]["kw"] == pytest.approx(battery().baseline_kw)
        # no CMB: no registry, so every resource is in the "unregistered" area
        power = await get(vtn, "power")
        assert power["area_source"] is None
        assert [a["network_area"] for a in power["areas"]] == ["unregistered"]
        assert (await get(vtn, "cmb")) == {"enabled": False}

        status, body = await api(vtn, "POST", f"/api/events/{event_id}/cancel", {})
        assert status == 200, body
        ev = next(e for e in (await get(vtn, "events"))["events"] if e["event_id"] == event_id)
        assert ev["status"] == "cancelled"
        assert ev["deliveries"][0]["state"] in ("pending", "outdated")  # a new modification


async def wait_async(probe: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    """Await `probe()` until it returns something truthy; bounded in time."""
    async with asyncio.timeout(timeout):
        while not (found := await probe()):
            await asyncio.sleep(0.2)
    return found


async def test_network_areas_come_from_the_cmb_registry() -> None:
    cmbs: list[Cmb] = []

    def beside(store: VtnStore) -> Cmb:
        cmbs.append(cmb_beside(store, now=utcnow()))
        return cmbs[0]

    resources = (battery("north-batteries"), battery("south-batteries"))
    async with running_vtn(cmb=beside, **FAST) as vtn, \
            running_fleet([ven_spec(vtn.oadr_url, "agg-1", resources=resources)]):
        (ven_id,) = await registered(vtn, 1)
        devices = [{"device_id": f"{area}-{i}", "owner": "agg", "device_class": "battery",
                    "network_area": area, "channel": "sapc", "reach": f"00-00-{i:02d}",
                    "rated_import_kw": rated, "ven_id": ven_id,
                    "resource_id": f"{area}-batteries"}
                   for area, rated in (("north", 10.0), ("south", 30.0)) for i in range(2)]
        status, body = await api(vtn, "PUT", "/api/cmb/registry", {"devices": devices})
        assert status == 200, body
        capacity = 0.5
        event_id = await create(vtn, dispatch(ven_id, capacity, name="LOAD_CONTROL",
                                              type_="x-loadControlCapacity"))

        async def charted() -> Any:
            power = await get(vtn, "power")
            areas = {a["network_area"]: a for a in power["areas"]}
            ok = all(areas.get(a, {}).get("requested") and areas[a]["delivered"]
                     for a in ("north", "south"))
            return power if ok else None

        power = await wait_async(charted, "requested and delivered power in both areas")
        assert power["area_source"] == "CMB device registry"
        areas = {a["network_area"]: a for a in power["areas"]}
        for area in ("north", "south"):
            rated = sum(d["rated_import_kw"] for d in devices if d["network_area"] == area)
            assert {p["kw"] for p in areas[area]["requested"]} == {capacity * rated}
        chart = next(c for c in power["events"] if c["event_id"] == event_id)
        total = sum(d["rated_import_kw"] for d in devices)
        assert {p["kw"] for p in chart["requested"]} == {capacity * total}
        assert chart["series"] == 2

        cmb = await get(vtn, "cmb")
        assert cmb["enabled"] is True
        (agg,) = cmb["aggregators"]
        assert (agg["aggregator"], agg["devices"], agg["network_areas"]) == \
            ("agg", 4, ["north", "south"])
        status, body = await api(vtn, "POST", "/api/cmb/overrides", {
            "target": {"network_area": "north"}, "level": 20, "reason": "constraint"})
        assert status == 201, body
        (override,) = (await get(vtn, "cmb"))["overrides"]
        assert (override["override_id"], override["level"]) == (body["override_id"], 20)
        assert sorted(override["devices"]) == ["north-0", "north-1"]


# --- change stream ------------------------------------------------------------------------

async def test_the_stream_announces_a_new_event() -> None:
    async with running_vtn(**FAST) as vtn, stream(vtn.url) as resp:
        ready = await next_event(resp, "ready")
        assert set(ready["parts"]) == {"fleet", "events", "power", "cmb"}
        status, body = await api(vtn, "POST", "/api/events", dispatch("nobody"))
        assert status == 201, body
        change = await next_event(resp, "change", where=lambda d: "events" in d["parts"])
        assert "cmb" not in change["parts"]  # nothing of the CMB changed


async def test_a_replica_announces_what_the_other_replica_wrote(database_url: str) -> None:
    async with running_vtn(database_url, **FAST) as writer, \
            running_vtn(database_url, **FAST) as reader, stream(reader.url) as resp:
        await next_event(resp, "ready")
        status, body = await api(writer, "POST", "/api/events", dispatch("nobody"))
        assert status == 201, body
        await next_event(resp, "change", where=lambda d: "events" in d["parts"])
        events = (await get(reader, "events"))["events"]
        assert [e["event_id"] for e in events] == [body["event_id"]]


async def test_a_stream_is_let_go_when_its_client_leaves(monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    # no keepalive write would notice either: the stream must see the closed connection itself
    monkeypatch.setattr(dashboard, "KEEPALIVE_S", 3600.0)
    apps: list[web.Application] = []
    async with running_vtn(middlewares=[capturing(apps)], **FAST) as vtn:
        async with stream(vtn.url) as resp:
            await next_event(resp, "ready")
            feed = apps[0][FEED]
            assert len(feed.listeners) == 1
        await wait_for(lambda: not feed.listeners, what="the listener released")


async def test_open_streams_end_cleanly_when_the_vtn_shuts_down() -> None:
    serving = running_vtn(**FAST)
    vtn = await serving.__aenter__()
    stopping: asyncio.Task[bool | None] | None = None
    try:
        async with stream(vtn.url) as resp:
            await next_event(resp, "ready")
            stopping = asyncio.create_task(serving.__aexit__(None, None, None))
            # ends with the chunked terminator (a cut connection would raise ClientPayloadError),
            # long before aiohttp's 60 s grace for handlers would run out
            rest = await asyncio.wait_for(resp.content.read(), 30)
            assert b"event: change" not in rest
    finally:
        await (stopping if stopping is not None else serving.__aexit__(None, None, None))


def test_a_feed_refuses_listeners_beyond_its_bound_and_when_closing() -> None:
    marker = {"events": (1,)}
    feed = ChangeFeed(lambda: dict(marker), every=1.0, max_listeners=1)
    first = feed.subscribe()
    assert first is not None and feed.subscribe() is None
    marker["events"] = (2,)
    feed.check()
    assert first.take() == ["events"]
    feed.check()  # nothing changed since
    assert first.take() == []
    feed.unsubscribe(first)
    feed.close()
    assert feed.subscribe() is None


def test_a_failing_marker_read_keeps_the_feed_alive() -> None:
    calls = {"n": 0}

    def read() -> dict[str, tuple[Any, ...]]:
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("database restarting")
        return {"events": (calls["n"],)}

    feed = ChangeFeed(read, every=1.0)
    listener = feed.subscribe()
    assert listener is not None
    feed.check()  # fails: nothing announced, nothing raised
    assert listener.take() == []
    feed.check()
    assert listener.take() == ["events"]


# --- access and bad input -----------------------------------------------------------------

async def test_bad_input_gets_a_400_naming_the_field() -> None:
    async with running_vtn() as vtn:
        for bad in ("abc", "0", "1441", "-5"):
            status, body = await api(vtn, "GET", f"/api/dashboard/power?minutes={bad}")
            assert (status, body["field"]) == (400, "minutes"), bad
        status, body = await api(vtn, "GET", "/api/dashboard/nothing")
        assert status == 404


async def test_the_token_guards_the_data_but_not_the_page_or_the_notices() -> None:
    async with running_vtn() as vtn, aiohttp.ClientSession() as session:
        vtn.deps.api_token = "s3cret"
        for part in ("fleet", "events", "power", "cmb"):
            async with session.get(f"{vtn.url}/api/dashboard/{part}") as resp:
                assert resp.status == 401
            async with session.get(f"{vtn.url}/api/dashboard/{part}",
                                   headers={"Authorization": "Bearer s3cret"}) as resp:
                assert resp.status == 200
        async with session.get(vtn.url + "/") as resp:
            assert resp.status == 200
        async with stream(vtn.url) as resp:
            ready = await next_event(resp, "ready")
            assert set(ready) == {"parts"}  # notices name parts, never data


# --- derived figures ----------------------------------------------------------------------

T0 = datetime(2030, 1, 1, 17, 0, tzinfo=UTC)
S = timedelta(seconds=1)


def event_record(name: str, type_: str, value: float, **extra: Any) -> EventRecord:
    body = {"market_context": PROGRAM, "dtstart": T0.isoformat(),
            "signals": [{"signal_name": name, "signal_type": type_,
                         "intervals": [{"duration": "PT10M", "payload": value}]}], **extra}
    return EventRecord(event=event_from_json(body, event_id="e1", created=T0 - 60 * S))


def samples(*series: tuple[str, str, list[tuple[int, float]]]) -> Telemetry:
    """Telemetry from (ven, resource, [(seconds after T0, kW)])."""
    times = {(v, r, f"{r}/power"): [T0 + s * S for s, _ in points] for v, r, points in series}
    kw = {(v, r, f"{r}/power"): [k for _, k in points] for v, r, points in series}
    return Telemetry(times=times, kw=kw)


def test_a_delta_is_requested_from_the_level_before_the_event() -> None:
    data = samples(("v", "r", [(-30, 60.0), (-10, 62.0), (30, 45.0)]))
    view = PowerView(data, [], {"e1": ["v"]})
    rec = event_record("LOAD_DISPATCH", "delta", -20.0)
    (reach,) = view.reach(rec.event)
    signal = rec.event.signals[0]
    baseline = (60.0 + 62.0) / 2  # the mean before the event; later samples do not count
    assert view.requested(rec.event, signal, reach, T0 + 60 * S, None) == baseline - 20.0
    assert view.requested(rec.event, signal, reach, T0 - S, None) is None  # not yet
    assert view.requested(rec.event, signal, reach, T0 + 60 * S, T0 + 30 * S) is None  # cancelled


def test_a_request_that_cannot_be_known_says_why() -> None:
    after_only = samples(("v", "r", [(30, 45.0)]))  # nothing before the event: no baseline
    delta = event_chart(PowerView(after_only, [], {"e1": ["v"]}),
                        event_record("LOAD_DISPATCH", "delta", -20.0), now=T0 + 60 * S)
    assert delta is not None and delta["requested"] == [] and "baseline" in delta["note"]
    unrated = event_chart(PowerView(after_only, [], {"e1": ["v"]}),
                          event_record("LOAD_CONTROL", "x-loadControlCapacity", 0.5),
                          now=T0 + 60 * S)
    assert unrated is not None and "registry" in unrated["note"]
    setpoint = event_chart(PowerView(after_only, [], {"e1": ["v"]}),
                           event_record("LOAD_DISPATCH", "setpoint", 20.0), now=T0 + 60 * S)
    assert setpoint is not None and setpoint["requested"] and setpoint["note"] is None


def test_capacity_and_areas_follow_the_registered_ratings() -> None:
    devices = [Device(ven_id="v", resource_id="n", network_area="north", rated_import_kw=10.0),
               Device(ven_id="v", resource_id="s", network_area="south", rated_import_kw=30.0)]
    data = samples(("v", "n", [(0, 8.0)]), ("v", "s", [(0, 20.0)]), ("w", "x", [(0, 5.0)]))
    view = PowerView(data, devices, {"e1": ["v"]})
    rec = event_record("LOAD_CONTROL", "x-loadControlCapacity", 0.5)
    (reach,) = view.reach(rec.event)
    assert view.requested(rec.event, rec.event.signals[0], reach, T0 + S, None) == 0.5 * 40.0
    assert view.split(reach) == {"north": 0.25, "south": 0.75}
    areas = {a["network_area"]: a for a in area_charts(view, [rec], T0, T0 + 120 * S,
                                                        now=T0 + 60 * S)}
    assert set(areas) == {"north", "south", "unregistered"}
    assert {p["kw"] for p in areas["north"]["requested"]} == {0.5 * 10.0}
    assert {p["kw"] for p in areas["south"]["requested"]} == {0.5 * 30.0}
    assert areas["unregistered"]["requested"] == []
    assert {p["kw"] for p in areas["unregistered"]["delivered"]} == {5.0}
    # delivered only up to now, requested over the whole window
    assert max(p["t"] for p in areas["north"]["delivered"]) < (T0 + 61 * S).isoformat()
    assert max(p["t"] for p in areas["north"]["requested"]) > (T0 + 61 * S).isoformat()


def test_a_series_counts_with_its_last_value_only_while_fresh() -> None:
    data = samples(("v", "r", [(0, 10.0), (1, 20.0)]))
    key = ("v", "r", "r/power")
    assert data.level([key], T0, T0 + 2 * S) == 15.0  # the mean inside the bucket
    assert data.level([key], T0 + 60 * S, T0 + 61 * S) == 20.0  # carried forward
    assert data.level([key], T0 + STALE + 2 * S, T0 + STALE + 3 * S) is None


def test_online_words() -> None:
    period = timedelta(seconds=10)
    p = Presence(online=2, offline=0, last_report=T0, period=period)
    assert online_state(p, False, T0 + 3 * period) == "online"
    assert online_state(p, False, T0 + 3 * period + S) == "silent"
    assert online_state(p, True, T0) == "unreachable"
    assert online_state(None, False, T0) == "unknown"
    assert online_state(Presence(online=1, offline=1, last_report=T0), False, T0) == \
        "partly online"
    assert online_state(Presence(online=0, offline=2, last_report=T0), False, T0) == "offline"
