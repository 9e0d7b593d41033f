"""EiEvent delivery to pull VENs, message by message (certification families E and A_E).

A `RawVen` answers only when the test says so, which exposes what the VTN does when a VEN stays
silent. Every distribute it receives is checked for conformance by `RawVen.post`.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from oadr.messages import (
    DistributeEvent, EventStatus, RequestEvent, ResponseMessage, Target,
)

from tests.rawven import RawVen, code, new_id
from tests.vtnkit import Vtn, api, running_vtn, simple_event

PROGRAM = "http://dso.example/programs/flex"
OTHER_PROGRAM = "http://dso.example/programs/other"
POLL = timedelta(seconds=1)


async def create_event(vtn: Vtn, body: dict[str, Any]) -> str:
    status, out = await api(vtn, "POST", "/api/events", body)
    assert status == 201, out
    return str(out["event_id"])


async def registered(vtn: Vtn, *names: str, **attrs: Any) -> list[RawVen]:
    """Register VENs; `attrs` (programs, groups, resources, party_id) are PATCHed onto each."""
    out = []
    for name in names:
        ven = RawVen(vtn, name)
        await ven.register()
        if attrs:
            status, body = await api(vtn, "PATCH", f"/api/vens/{ven.ven_id}", attrs)
            assert status == 200, body
        out.append(ven)
    return out


async def distribute(ven: RawVen) -> DistributeEvent:
    reply = await ven.poll()
    assert isinstance(reply, DistributeEvent), reply
    return reply


async def nothing_due(ven: RawVen) -> None:
    reply = await ven.poll()
    assert isinstance(reply, ResponseMessage) and code(reply) == 200, reply


def ids(d: DistributeEvent) -> list[str]:
    return [e.event_id for e in d.events]


def versions(d: DistributeEvent) -> dict[str, int]:
    return {e.event_id: e.modification_number for e in d.events}


async def test_redelivered_until_acknowledged_and_again_after_modification() -> None:
    async with running_vtn(poll_freq=POLL) as vtn:
        (ven,) = await registered(vtn, "silent")
        body = simple_event(targets={"ven_ids": [ven.ven_id]}, start_in=timedelta(minutes=5),
                            response_required="always")
        event_id = await create_event(vtn, body)

        for _ in range(3):  # a VEN that never answers gets the event on every poll
            assert versions(await distribute(ven)) == {event_id: 0}
        await ven.created_event(await distribute(ven))
        await nothing_due(ven)

        body["signals"][0]["intervals"][0]["payload"] = 2
        status, out = await api(vtn, "PUT", f"/api/events/{event_id}", body)
        assert status == 200 and out["modification_number"] == 1, out
        modified = await distribute(ven)
        assert versions(modified) == {event_id: 1}
        assert modified.events[0].signals[0].intervals[0].payload == 2
        assert versions(await distribute(ven)) == {event_id: 1}  # still unanswered
        await ven.created_event(modified)
        await nothing_due(ven)


async def test_response_required_never_is_delivered_once() -> None:
    async with running_vtn(poll_freq=POLL) as vtn:
        (ven,) = await registered(vtn, "fire-and-forget")
        event_id = await create_event(vtn, simple_event(
            targets={"ven_ids": [ven.ven_id]}, response_required="never"))
        assert ids(await distribute(ven)) == [event_id]
        await nothing_due(ven)
        await nothing_due(ven)


async def test_every_distribute_carries_all_current_events() -> None:
    async with running_vtn(poll_freq=POLL) as vtn:
        (ven,) = await registered(vtn, "two-events")
        bodies = [simple_event(targets={"ven_ids": [ven.ven_id]}, start_in=timedelta(hours=h))
                  for h in (1, 2)]
        first, second = [await create_event(vtn, b) for b in bodies]
        await ven.created_event(await distribute(ven))
        await nothing_due(ven)

        bodies[1]["signals"][0]["intervals"][0]["payload"] = 3
        status, out = await api(vtn, "PUT", f"/api/events/{second}", bodies[1])
        assert status == 200, out
        assert versions(await distribute(ven)) == {first: 0, second: 1}


async def test_events_ordered_active_first_then_by_start() -> None:
    async with running_vtn(poll_freq=POLL) as vtn:
        (ven,) = await registered(vtn, "ordered")
        target = {"ven_ids": [ven.ven_id]}
        later = await create_event(vtn, simple_event(targets=target, start_in=timedelta(hours=2)))
        sooner = await create_event(vtn, simple_event(targets=target, start_in=timedelta(hours=1)))
        active = await create_event(vtn, simple_event(targets=target, level=2,
                                                      start_in=timedelta(seconds=-30)))
        got = await distribute(ven)
        assert ids(got) == [active, sooner, later]
        assert [e.status for e in got.events] == [
            EventStatus.ACTIVE, EventStatus.FAR, EventStatus.FAR]
        assert got.events[0].signals[0].current_value == 2


async def test_ven_sees_only_its_own_events_and_its_own_target() -> None:
    async with running_vtn(poll_freq=POLL) as vtn:
        a, b = await registered(vtn, "ven-a", "ven-b")
        shared = await create_event(vtn, simple_event(targets={"ven_ids": [a.ven_id, b.ven_id]}))
        only_a = await create_event(vtn, simple_event(OTHER_PROGRAM,
                                                      targets={"ven_ids": [a.ven_id]}))
        got_a, got_b = await distribute(a), await distribute(b)
        assert sorted(ids(got_a)) == sorted([shared, only_a]) and ids(got_b) == [shared]
        for ven, got in ((a, got_a), (b, got_b)):
            assert {e.targets for e in got.events} == {Target(ven_ids=(ven.ven_id,))}


TARGET_KINDS = [
    pytest.param({"groups": ["feeder-7"]}, {"group_ids": ["feeder-7"]},
                 Target(group_ids=("feeder-7",)), id="group"),
    pytest.param({"resources": ["battery-7"]}, {"resource_ids": ["battery-7"]},
                 Target(resource_ids=("battery-7",)), id="resource"),
    pytest.param({"party_id": "aggregator-7"}, {"party_ids": ["aggregator-7"]},
                 Target(party_ids=("aggregator-7",)), id="party"),
]


@pytest.mark.parametrize(("membership", "targets", "seen"), TARGET_KINDS)
async def test_event_reaches_exactly_the_targeted_vens(
        membership: dict[str, Any], targets: dict[str, Any], seen: Target) -> None:
    async with running_vtn(poll_freq=POLL) as vtn:
        members = await registered(vtn, "member-1", "member-2", **membership)
        (outsider,) = await registered(vtn, "outsider")
        event_id = await create_event(vtn, simple_event(targets=targets))
        for ven in members:
            got = await distribute(ven)
            assert ids(got) == [event_id] and got.events[0].targets == seen
        await nothing_due(outsider)
        reached = {d.ven_id for d in vtn.store.deliveries_for_event(event_id)}
        assert reached == {v.ven_id for v in members}


async def test_untargeted_event_reaches_vens_enrolled_in_its_program() -> None:
    async with running_vtn(poll_freq=POLL) as vtn:
        enrolled = await registered(vtn, "enrolled-1", "enrolled-2", programs=[PROGRAM])
        (elsewhere,) = await registered(vtn, "elsewhere", programs=[OTHER_PROGRAM])
        (unenrolled,) = await registered(vtn, "unenrolled")
        event_id = await create_event(vtn, simple_event(PROGRAM))
        for ven in enrolled:
            got = await distribute(ven)
            assert ids(got) == [event_id]
            assert got.events[0].targets == Target(ven_ids=(ven.ven_id,))
        await nothing_due(elsewhere)
        await nothing_due(unenrolled)


OVERLAPS = [
    pytest.param(PROGRAM, timedelta(minutes=5), "same", 409, id="overlap-same-context"),
    pytest.param(PROGRAM, timedelta(minutes=20), "same", 201, id="after-same-context"),
    pytest.param(OTHER_PROGRAM, timedelta(minutes=5), "same", 201, id="overlap-other-context"),
    pytest.param(PROGRAM, timedelta(minutes=5), "other", 201, id="overlap-other-ven"),
]


@pytest.mark.parametrize(("context", "start_in", "who", "expected"), OVERLAPS)
async def test_overlapping_events_in_one_market_context(
        context: str, start_in: timedelta, who: str, expected: int) -> None:
    async with running_vtn(poll_freq=POLL) as vtn:
        a, b = await registered(vtn, "ven-a", "ven-b")
        # the first event runs from +1 min to +11 min
        first = await create_event(vtn, simple_event(targets={"ven_ids": [a.ven_id]},
                                                     start_in=timedelta(minutes=1)))
        target = a if who == "same" else b
        status, out = await api(vtn, "POST", "/api/events", simple_event(
            context, targets={"ven_ids": [target.ven_id]}, start_in=start_in))
        assert status == expected, out
        stored = [e.event.event_id for e in vtn.store.list_events()]
        assert len(stored) == (1 if expected == 409 else 2) and first in stored
        assert ids(await distribute(a)) == [first] + ([out["event_id"]] if status == 201
                                                      and target is a else [])


async def test_request_event_returns_all_current_events() -> None:
    async with running_vtn(poll_freq=POLL) as vtn:
        (ven,) = await registered(vtn, "asker")
        target = {"ven_ids": [ven.ven_id]}
        events = [await create_event(vtn, simple_event(targets=target, start_in=timedelta(hours=h)))
                  for h in (1, 2)]
        await ven.created_event(await distribute(ven))  # acknowledged: no longer due on a poll
        await nothing_due(ven)
        request_id = new_id()
        reply = await ven.send(RequestEvent(request_id=request_id, ven_id=ven.ven_id))
        assert isinstance(reply, DistributeEvent), reply
        assert ids(reply) == events
        assert reply.response is not None and reply.response.request_id == request_id
        assert reply.response.code == 200


async def test_cancelled_event_is_delivered_until_acknowledged_then_dropped() -> None:
    async with running_vtn(poll_freq=POLL) as vtn:
        (ven,) = await registered(vtn, "cancel-me")
        event_id = await create_event(vtn, simple_event(targets={"ven_ids": [ven.ven_id]},
                                                        start_in=timedelta(hours=1)))
        await ven.created_event(await distribute(ven))
        status, out = await api(vtn, "POST", f"/api/events/{event_id}/cancel", {})
        assert status == 200, out
        for _ in range(2):
            got = await distribute(ven)
            assert versions(got) == {event_id: 1}
            assert got.events[0].status is EventStatus.CANCELLED
        await ven.created_event(got)
        await nothing_due(ven)
        reply = await ven.send(RequestEvent(request_id=new_id(), ven_id=ven.ven_id))
        assert isinstance(reply, DistributeEvent) and ids(reply) == []


async def test_open_ended_event_with_ramp_notification_and_randomised_start() -> None:
    """duration 0 = until cancelled; the activePeriod carries every timing feature we accept."""
    async with running_vtn(poll_freq=POLL) as vtn:
        (ven,) = await registered(vtn, "ven-open-ended")
        body = simple_event(targets={"ven_ids": [ven.ven_id]}, duration="PT0S",
                            start_after="PT10M", ramp_up="PT5M", recovery="PT15M",
                            notification="PT1H", priority=2, test_event=True)
        body["signals"][0]["intervals"] = [{"duration": "PT0S", "payload": 2}]
        event_id = await create_event(vtn, body)
        (event,) = (await distribute(ven)).events
        ap = event.active_period
        assert event.event_id == event_id and ap.duration == timedelta(0) and ap.end is None
        assert (ap.start_after, ap.ramp_up, ap.recovery, ap.notification) == (
            timedelta(minutes=10), timedelta(minutes=5), timedelta(minutes=15), timedelta(hours=1))
        assert (event.priority, event.test_event) == (2, True)
