"""HTTP push end to end, our VTN's pusher against our fleet's push listener: events, their
modification and cancellation, report requests and re-registration arrive without a poll; a VEN
that is down when the event is created gets it when it is back; pull and push VENs on one event."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from pathlib import Path

from adrgate.services import free_port
from oadr.messages import EventStatus, OptType
from tests.test_ven_fleet import FAST, answered, create, registered
from tests.venkit import running_fleet, ven_spec
from tests.vtnkit import api, running_vtn, simple_event, utcnow, wait_for
from ven.fleet import VenSpec
from ven.records import RegState

LISTEN = ("127.0.0.1", 0)


def push_ven(vtn_url: str, name: str) -> VenSpec:
    return dataclasses.replace(ven_spec(vtn_url, name), push=True)


async def test_events_reach_push_vens_without_a_poll() -> None:
    async with running_vtn(**FAST) as vtn:
        async with running_fleet([push_ven(vtn.oadr_url, "push-a")], push_listen=LISTEN) as f:
            (ven_id,) = await registered(vtn, 1)
            ven = vtn.store.get_ven(ven_id)
            assert ven is not None and not ven.http_pull_model
            assert ven.transport_address == f"{f.fleet.push_url}/push-a/OpenADR2/Simple/2.0b"
            event_id = await create(vtn, simple_event(targets={"ven_ids": [ven_id]},
                                                      start_in=timedelta(minutes=5)))
            assert (await answered(vtn, event_id, ven_id, 0)).opt_type is OptType.OPT_IN
            status, _ = await api(vtn, "PUT", f"/api/events/{event_id}", simple_event(
                targets={"ven_ids": [ven_id]}, start_in=timedelta(minutes=5), level=2))
            assert status == 200
            await answered(vtn, event_id, ven_id, 1)
            status, _ = await api(vtn, "POST", f"/api/events/{event_id}/cancel", {})
            assert status == 200
            await wait_for(lambda: (held := f.agent("push-a").events.get(event_id)) is not None
                           and held.event.status is EventStatus.CANCELLED,
                           what="the cancellation pushed")
            # report requests came by push too: the VTN holds telemetry
            await wait_for(lambda: vtn.store.count_report_values(ven_id) > 0,
                           what="telemetry after a pushed report request")
            assert "oadrPoll" not in f.wire.types("push-a")


async def test_a_push_ven_down_at_creation_gets_the_event_when_back(tmp_path: Path) -> None:
    database = f"sqlite:///{tmp_path}/fleet.db"
    listen = ("127.0.0.1", free_port())  # the same address after the restart
    async with running_vtn(**FAST) as vtn:
        spec = push_ven(vtn.oadr_url, "push-b")
        async with running_fleet([spec], database, push_listen=listen):
            (ven_id,) = await registered(vtn, 1)
        # the fleet is down: the push fails, the VTN keeps it owed and marks the VEN unreachable
        event_id = await create(vtn, simple_event(targets={"ven_ids": [ven_id]},
                                                  start_in=timedelta(minutes=5)))
        await wait_for(lambda: _unreachable_or_failing(vtn, ven_id), timeout=30,
                       what="the push failing")
        async with running_fleet([spec], database, push_listen=listen) as f:
            assert f.agent("push-b").reg.state is RegState.READY  # from its stored registration
            # by the VTN's retried push, or by the VEN's own resync after a restart: either way
            # nothing owed is lost (tests/test_vtn_push.py pins the retry path on its own)
            assert (await answered(vtn, event_id, ven_id, 0)).opt_type is OptType.OPT_IN


def _unreachable_or_failing(vtn: object, ven_id: str) -> bool:
    state = vtn.store.push_states().get(ven_id)  # type: ignore[attr-defined]
    return state is not None and state.failures > 0


async def test_pull_and_push_vens_on_one_event() -> None:
    async with running_vtn(**FAST) as vtn:
        async with running_fleet([push_ven(vtn.oadr_url, "push-c"),
                                  ven_spec(vtn.oadr_url, "pull-c")], push_listen=LISTEN) as f:
            ven_ids = await registered(vtn, 2)
            t0 = utcnow()
            event_id = await create(vtn, simple_event(targets={"ven_ids": ven_ids},
                                                      start_in=timedelta(minutes=5)))
            for ven_id in ven_ids:
                await answered(vtn, event_id, ven_id, 0)
            assert "oadrPoll" in f.wire.types("pull-c") and "oadrPoll" not in f.wire.types("push-c")
            assert utcnow() - t0 < timedelta(minutes=1)


async def test_a_push_ven_with_fallback_registers_as_pull_when_no_push_comes() -> None:
    async with running_vtn(**FAST) as vtn:
        spec = dataclasses.replace(push_ven(vtn.oadr_url, "push-d"), push_fallback_to_pull=2)
        async with running_fleet([spec], push_listen=LISTEN) as f:
            (ven_id,) = await registered(vtn, 1)
            # two silent poll periods: it registers again, as a pull VEN, and polls
            await wait_for(lambda: (v := vtn.store.get_ven(ven_id)) is not None
                           and v.http_pull_model, timeout=30, what="the re-registration as pull")
            await wait_for(lambda: "oadrPoll" in f.wire.types("push-d"), timeout=30,
                           what="polls")
            event_id = await create(vtn, simple_event(targets={"ven_ids": [ven_id]},
                                                      start_in=timedelta(minutes=5)))
            await answered(vtn, event_id, ven_id, 0)
