"""Our VEN fleet against our VTN, end to end: registration, every event feature, opts, reports,
durability across restarts and a VTN that goes away."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from sqlalchemy.exc import OperationalError

from adrgate.services import free_port
from oadr.messages import EventStatus, OptReason, OptType
from ven.fleet import AvailabilitySpec
from ven.records import Changes, RegState
from vtn.records import RegistrationPolicy, ReportVia

from tests.venkit import PROGRAM, battery, running_fleet, ven_spec
from tests.vtnkit import Handler, Vtn, api, running_vtn, simple_event, utcnow, wait_for

FAST = {"poll_freq": timedelta(seconds=1), "report_granularity": timedelta(seconds=1)}


async def registered(vtn: Vtn, count: int) -> list[str]:
    def ids() -> list[str] | None:
        vens = [v.ven_id for v in vtn.store.list_vens() if v.is_registered]
        return vens if len(vens) == count else None
    return list(await wait_for(ids, what=f"{count} registrations"))


async def create(vtn: Vtn, body: dict[str, Any]) -> str:
    status, created = await api(vtn, "POST", "/api/events", body)
    assert status == 201, created
    return str(created["event_id"])


async def answered(vtn: Vtn, event_id: str, ven_id: str, mod: int) -> Any:
    return await wait_for(lambda: next((d for d in vtn.store.deliveries_for_event(event_id)
                                        if d.ven_id == ven_id and d.acked_mod == mod), None),
                          what=f"oadrCreatedEvent for {event_id} mod {mod}")


async def test_fleet_registers_reports_and_answers_events() -> None:
    async with running_vtn(**FAST) as vtn:
        async with running_fleet([ven_spec(vtn.oadr_url, f"agg-{i}") for i in range(3)]) as f:
            ven_ids = await registered(vtn, 3)
            event_id = await create(vtn, simple_event(targets={"ven_ids": ven_ids},
                                                      start_in=timedelta(minutes=5)))
            for ven_id in ven_ids:
                assert (await answered(vtn, event_id, ven_id, 0)).opt_type is OptType.OPT_IN
            await wait_for(lambda: all(vtn.store.count_report_values(i) > 0 for i in ven_ids),
                           what="telemetry from every VEN")
            assert f.wire.types("agg-0")[:5] == ["oadrQueryRegistration",
                                                 "oadrCreatePartyRegistration",
                                                 "oadrRegisterReport", "oadrCreatedReport",
                                                 "oadrRequestEvent"]


async def test_modification_explicit_and_implicit_cancellation() -> None:
    async with running_vtn(**FAST) as vtn:
        async with running_fleet([ven_spec(vtn.oadr_url, "agg-a"),
                                  ven_spec(vtn.oadr_url, "agg-b")]) as f:
            a, b = await registered(vtn, 2)
            name = {v.ven_id: v.ven_name for v in vtn.store.list_vens()}
            body = simple_event(targets={"ven_ids": [a, b]}, start_in=timedelta(minutes=5))
            event_id = await create(vtn, body)
            await answered(vtn, event_id, a, 0)
            # modified: level 2, answered under modificationNumber 1
            body["signals"][0]["intervals"][0]["payload"] = 2.0
            status, _ = await api(vtn, "PUT", f"/api/events/{event_id}", body)
            assert status == 200
            await answered(vtn, event_id, a, 1)
            signal = f.fleet.signals(name[a])[0]
            assert (signal.modification_number, signal.intervals[0].value) == (1, 2.0)
            # retargeted to b only: a hears of it no more (implicit cancellation)
            body["targets"] = {"ven_ids": [b]}
            await api(vtn, "PUT", f"/api/events/{event_id}", body)
            await wait_for(lambda: event_id not in f.agent(name[a]).events,
                           what="implicit cancellation at a")
            assert f.fleet.signals(name[a]) == ()
            # cancelled: b answers the cancellation and drops the signal
            status, _ = await api(vtn, "POST", f"/api/events/{event_id}/cancel", {})
            assert status == 200
            await answered(vtn, event_id, b, 3)
            held = f.agent(name[b]).events[event_id].event
            assert held.status is EventStatus.CANCELLED
            assert f.fleet.signals(name[b]) == ()


async def test_event_features_reach_devices_as_grid_signals() -> None:
    """Randomised start per resource, ramp-up and recovery, priority between overlapping events,
    test events acknowledged but not acted on, and an opt-out when flexibility is short."""
    resources = (battery("bat-1"), battery("bat-2"), battery("bat-3"))
    async with running_vtn(**FAST) as vtn:
        async with running_fleet([ven_spec(vtn.oadr_url, "agg", resources=resources)]) as f:
            (ven_id,) = await registered(vtn, 1)
            target = {"ven_ids": [ven_id]}
            spread = await create(vtn, simple_event(
                targets=target, start_in=timedelta(hours=1), start_after="PT10M",
                ramp_up="PT5M", recovery="PT15M", priority=2))
            await answered(vtn, spread, ven_id, 0)
            (signal,) = f.fleet.signals("agg")
            offsets = dict(signal.start_offsets)
            assert set(offsets) == {"bat-1", "bat-2", "bat-3"}
            assert all(timedelta(0) <= o <= timedelta(minutes=10) for o in offsets.values())
            assert len(set(offsets.values())) > 1, "every device draws its own delay"
            assert (signal.ramp_up, signal.recovery) == (timedelta(minutes=5),
                                                         timedelta(minutes=15))
            test = await create(vtn, simple_event(targets=target, start_in=timedelta(hours=3),
                                                  test_event=True))
            assert (await answered(vtn, test, ven_id, 0)).opt_type is OptType.OPT_IN
            assert [s.test_event for s in f.fleet.signals("agg")
                    if s.event_id == test] == [True]
            # LOAD_DISPATCH asking 500 kW below a 180 kW baseline: too little flexibility
            short = await create(vtn, {
                "market_context": PROGRAM, "targets": target,
                "dtstart": (utcnow() + timedelta(hours=5)).isoformat(),
                "signals": [{"signal_name": "LOAD_DISPATCH", "signal_type": "delta",
                             "item_base": {"kind": "powerReal", "description": "RealPower",
                                           "units": "W", "si_scale": "k", "hertz": 50,
                                           "voltage": 230, "ac": True},
                             "intervals": [{"duration": "PT30M", "payload": -500}]}]})
            assert (await answered(vtn, short, ven_id, 0)).opt_type is OptType.OPT_OUT
            reason = f.agent("agg").events[short].opt_reason
            assert "500.0 kW" in reason and "150.0 kW" in reason, reason


async def test_report_requests_by_create_report_on_a_poll() -> None:
    async with running_vtn(report_via=ReportVia.CREATE, **FAST) as vtn:
        async with running_fleet([ven_spec(vtn.oadr_url, "agg")]) as f:
            (ven_id,) = await registered(vtn, 1)
            await wait_for(lambda: vtn.store.count_report_values(ven_id) >= 2,
                           what="values for requests made with oadrCreateReport")
            assert "oadrCreatedReport" in f.wire.types("agg")
            requests = f.agent("agg").requests
            assert {r.report_name for r in requests.values()} == {"TELEMETRY_USAGE",
                                                                  "TELEMETRY_STATUS"}


async def test_availability_schedule_sent_as_opt_and_withdrawn(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fleet.db'}"
    window = AvailabilitySpec(opt_id="maintenance-1", opt_type=OptType.OPT_OUT,
                              reason=OptReason.OUTAGE_RUN_STATUS,
                              start=utcnow() + timedelta(hours=2), duration=timedelta(hours=4),
                              resources=("battery-1",))
    async with running_vtn(**FAST) as vtn:
        spec = ven_spec(vtn.oadr_url, "agg", availability=(window,))
        async with running_fleet([spec], url):
            (ven_id,) = await registered(vtn, 1)
            opt = await wait_for(lambda: next((o for o in vtn.store.list_opts(ven_id)
                                               if o.opt_id == "maintenance-1"), None),
                                 what="availability opt at the VTN")
            assert opt.opt_type is OptType.OPT_OUT
        # the window is gone from the fleet file: the restarted VEN withdraws it
        async with running_fleet([dataclasses.replace(spec, availability=())], url) as f:
            await wait_for(lambda: f.agent("agg").opts["maintenance-1"].cancel_acked,
                           what="oadrCancelOpt acknowledged")
            assert "oadrCancelOpt" in f.wire.types("agg")
            assert all(o.opt_id != "maintenance-1" or o.cancelled_at is not None
                       for o in vtn.store.list_opts(ven_id))


async def test_restart_resyncs_without_registering_again(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fleet.db'}"
    async with running_vtn(**FAST) as vtn:
        spec = ven_spec(vtn.oadr_url, "agg")
        async with running_fleet([spec], url) as f:
            (ven_id,) = await registered(vtn, 1)
            event_id = await create(vtn, simple_event(targets={"ven_ids": [ven_id]},
                                                      start_in=timedelta(minutes=30)))
            await answered(vtn, event_id, ven_id, 0)
            await wait_for(lambda: f.agent("agg").requests, what="report requests")
            registration_id = f.agent("agg").reg.registration_id
        async with running_fleet([spec], url) as f:
            agent = f.agent("agg")
            assert agent.reg.registration_id == registration_id
            assert agent.events[event_id].answered_mod == 0, "answer state persisted"
            assert agent.requests, "report requests persisted"
            await wait_for(lambda: "oadrPoll" in f.wire.types("agg"), what="polling again")
            sent = f.wire.types("agg")
            assert sent[0] == "oadrRequestEvent" and "oadrCreatePartyRegistration" not in sent
            assert vtn.store.get_ven(ven_id).registration_id == registration_id  # type: ignore[union-attr]
            await wait_for(lambda: vtn.store.count_report_values(ven_id) > 0,
                           what="reports resumed after the restart")


async def test_vtn_down_at_start_then_up() -> None:
    port = free_port()
    async with running_fleet([ven_spec(f"http://127.0.0.1:{port}/OpenADR2/Simple/2.0b",
                                       "agg")]) as f:
        await wait_for(lambda: f.agent("agg").failures >= 2, what="failed attempts")
        assert f.agent("agg").reg.state is RegState.UNREGISTERED
        async with running_vtn(port=port, **FAST) as vtn:
            await registered(vtn, 1)  # the backoff (at most 4 s here) let it through


async def test_created_event_that_failed_is_sent_when_the_vtn_is_back() -> None:
    down = {"created_event": True}

    @web.middleware
    async def refuse_answers(request: web.Request, handler: Handler) -> web.StreamResponse:
        if down["created_event"] and b"oadrCreatedEvent" in await request.read():
            return web.Response(status=503, text="overloaded")
        return await handler(request)

    async with running_vtn(middlewares=[refuse_answers], **FAST) as vtn:
        async with running_fleet([ven_spec(vtn.oadr_url, "agg")]) as f:
            (ven_id,) = await registered(vtn, 1)
            event_id = await create(vtn, simple_event(targets={"ven_ids": [ven_id]},
                                                      start_in=timedelta(minutes=30)))
            await wait_for(lambda: f.wire.types("agg").count("oadrCreatedEvent") >= 2,
                           what="answers failing")
            assert vtn.store.deliveries_for_event(event_id)[0].acked_mod == -1
            down["created_event"] = False
            await answered(vtn, event_id, ven_id, 0)


async def test_vtn_asks_for_reregistration() -> None:
    async with running_vtn(**FAST) as vtn:
        async with running_fleet([ven_spec(vtn.oadr_url, "agg")]) as f:
            (ven_id,) = await registered(vtn, 1)
            registration_id = f.agent("agg").reg.registration_id
            status, _ = await api(vtn, "POST", f"/api/vens/{ven_id}/reregister", {})
            assert status == 202, status
            await wait_for(lambda: f.wire.types("agg").count("oadrCreatePartyRegistration") == 2,
                           what="re-registration")
            await wait_for(lambda: f.agent("agg").reg.state is RegState.READY, what="ready")
            assert f.agent("agg").reg.ven_id == ven_id
            assert vtn.store.get_ven(ven_id).is_registered  # type: ignore[union-attr]
            assert registration_id is not None


async def test_vtn_that_forgot_us_gets_a_fresh_registration() -> None:
    port = free_port()
    async with running_fleet([ven_spec(f"http://127.0.0.1:{port}/OpenADR2/Simple/2.0b",
                                       "agg")]) as f:
        async with running_vtn(port=port, **FAST) as first:
            (old,) = await registered(first, 1)
        # back with an empty database: our registration is unknown there (463)
        async with running_vtn(port=port, **FAST) as second:
            (new,) = await registered(second, 1)
            assert new != old
            assert f.wire.types("agg").count("oadrQueryRegistration") == 2


async def test_pre_allocated_ven_id_on_an_allowlist_vtn() -> None:
    async with running_vtn(registration_policy=RegistrationPolicy.ALLOWLIST, **FAST) as vtn:
        status, _ = await api(vtn, "POST", "/api/vens", {"ven_name": "agg", "ven_id": "VEN-AGG-1"})
        assert status == 201
        async with running_fleet([ven_spec(vtn.oadr_url, "agg", ven_id="VEN-AGG-1"),
                                  ven_spec(vtn.oadr_url, "stranger")]) as f:
            assert await registered(vtn, 1) == ["VEN-AGG-1"]
            await wait_for(lambda: f.agent("stranger").failures >= 1, what="stranger refused")
            assert f.agent("stranger").reg.state is RegState.QUERIED
            assert "463" in (f.agent("stranger").last_error or "")


async def test_state_whose_write_failed_is_written_with_the_next_one(
        monkeypatch: pytest.MonkeyPatch) -> None:
    async with running_vtn(**FAST) as vtn:
        async with running_fleet([ven_spec(vtn.oadr_url, "agg")]) as f:
            (ven_id,) = await registered(vtn, 1)
            real_save = f.store.save
            failed: list[Changes] = []

            def flaky_save(name: str, changes: Changes) -> None:
                if len(failed) < 3:  # the database is unavailable for a while
                    failed.append(changes)
                    raise OperationalError("INSERT", {}, Exception("database is locked"))
                real_save(name, changes)

            monkeypatch.setattr(f.store, "save", flaky_save)
            event_id = await create(vtn, simple_event(targets={"ven_ids": [ven_id]},
                                                      start_in=timedelta(minutes=30)))
            await answered(vtn, event_id, ven_id, 0)
            await wait_for(lambda: len(failed) == 3, what="three failed writes")
            assert any(event_id in c.events for c in failed), "the answer was in a failed write"
            await wait_for(lambda: event_id in f.store.load("agg").events,
                           what="the event written once writes work again")
            await wait_for(lambda: f.store.load("agg").events[event_id].answered_mod == 0,
                           what="its acknowledged answer written too")


async def test_a_message_that_cannot_be_written_is_refused_without_being_sent() -> None:
    """Our own bug (a message failing the XSD) is settled as a refusal, never resent forever."""
    import aiohttp

    from oadr.messages import Report, ReportInterval, ReportPoint, UpdateReport
    from oadr.signing import InMemoryReplayCache
    from ven.agent import Outgoing
    from ven.runner import Refused, Transport

    now = utcnow()
    fraction = ReportInterval(dtstart=now, duration=timedelta(seconds=1.5),
                              points=(ReportPoint(r_id="r", value=1.0),))
    unwritable = UpdateReport(request_id="req", ven_id="v", reports=(Report(
        report_specifier_id="s", report_name="TELEMETRY_USAGE", created=now, report_id="rep",
        dtstart=now, duration=timedelta(seconds=1.5), intervals=(fraction,)),))
    # nothing listens there: an attempt to send would be Unreachable, not Refused
    spec = ven_spec(f"http://127.0.0.1:{free_port()}/OpenADR2/Simple/2.0b", "agg-x")
    async with aiohttp.ClientSession() as session:
        transport = Transport(session, spec, ssl_context=None, key=None,
                              replay=InMemoryReplayCache(clock=utcnow), clock=utcnow,
                              observer=None)
        with pytest.raises(Refused, match="cannot be written"):
            await transport.exchange(Outgoing(unwritable, "EiReport"))
