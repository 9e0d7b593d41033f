"""EiRegisterParty against a running VTN, message by message (certification family N).

Each test is a protocol script: a `RawVen` sends typed messages, every reply is checked for
conformance by `RawVen.post`, and the operator API shows what the VTN recorded.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from oadr.messages import (
    CanceledPartyRegistration, CancelPartyRegistration, CreatedPartyRegistration,
    RequestReregistration, Response, ResponseMessage,
)
from vtn.records import RegistrationPolicy
from vtn.records import VenStatus

from tests.rawven import Clock, RawVen, code, new_id
from tests.vtnkit import Vtn, api, running_vtn

POLL = timedelta(seconds=1)
# The VTN re-sends an unacknowledged queued message once three poll periods have passed.
RESEND_AFTER = 3 * POLL + timedelta(seconds=1)


async def vens(vtn: Vtn) -> dict[str, dict]:
    status, body = await api(vtn, "GET", "/api/vens")
    assert status == 200, body
    return {v["ven_name"]: v for v in body}


async def assert_polls_ok(ven: RawVen) -> None:
    reply = await ven.poll()
    assert isinstance(reply, ResponseMessage) and code(reply) == 200, reply


async def assert_not_registered(ven: RawVen) -> None:
    reply = await ven.poll()
    assert isinstance(reply, ResponseMessage) and code(reply) == 463, reply


async def test_query_registration_gives_poll_frequency() -> None:
    async with running_vtn(poll_freq=timedelta(seconds=7)) as vtn:
        reply = await RawVen(vtn, "curious").query_registration()
        assert code(reply) == 200
        assert reply.poll_freq == timedelta(seconds=7)
        assert reply.vtn_id == "TEST-VTN" and "2.0b" in reply.profiles
        assert reply.ven_id is None and reply.registration_id is None
        assert await vens(vtn) == {}


async def test_open_policy_registers_any_named_ven() -> None:
    async with running_vtn(poll_freq=POLL) as vtn:
        ven = RawVen(vtn, "anyone")
        reply = await ven.register()
        assert reply.poll_freq == POLL and reply.vtn_id == "TEST-VTN"
        listed = (await vens(vtn))["anyone"]
        assert listed["status"] == "registered" and listed["ven_id"] == ven.ven_id
        assert listed["registration_id"] == ven.registration_id
        await assert_polls_ok(ven)


async def test_allowlist_refuses_unprovisioned_then_registers_provisioned() -> None:
    async with running_vtn(poll_freq=POLL,
                           registration_policy=RegistrationPolicy.ALLOWLIST) as vtn:
        ven = RawVen(vtn, "listed-later")
        refused = await ven.try_register()
        assert isinstance(refused, ResponseMessage) and code(refused) == 463, refused
        assert await vens(vtn) == {}

        status, provisioned = await api(vtn, "POST", "/api/vens", {"ven_name": "listed-later"})
        assert status == 201 and provisioned["status"] == "provisioned", provisioned
        await ven.register()
        assert ven.ven_id == provisioned["ven_id"]
        assert (await vens(vtn))["listed-later"]["status"] == "registered"
        await assert_polls_ok(ven)


async def test_approval_policy_holds_ven_pending_until_approved() -> None:
    async with running_vtn(poll_freq=POLL,
                           registration_policy=RegistrationPolicy.APPROVAL) as vtn:
        ven = RawVen(vtn, "needs-ok")
        for _ in range(2):  # asking again while pending neither registers nor duplicates
            pending = await ven.try_register()
            assert isinstance(pending, ResponseMessage) and code(pending) == 451, pending
        listed = await vens(vtn)
        assert list(listed) == ["needs-ok"] and listed["needs-ok"]["status"] == "pending"

        ven_id = listed["needs-ok"]["ven_id"]
        status, approved = await api(vtn, "POST", f"/api/vens/{ven_id}/approve")
        assert status == 200 and approved["status"] == "provisioned", approved
        await ven.register()
        assert ven.ven_id == ven_id
        assert (await vens(vtn))["needs-ok"]["status"] == "registered"
        await assert_polls_ok(ven)


async def test_pre_allocated_ven_id() -> None:
    async with running_vtn(poll_freq=POLL,
                           registration_policy=RegistrationPolicy.ALLOWLIST) as vtn:
        status, body = await api(vtn, "POST", "/api/vens",
                                 {"ven_name": "preset", "ven_id": "VEN-PRESET-1"})
        assert status == 201 and body["ven_id"] == "VEN-PRESET-1", body
        ven = RawVen(vtn, "preset")
        await ven.register(ven_id="VEN-PRESET-1")
        assert ven.ven_id == "VEN-PRESET-1"
        await assert_polls_ok(ven)

        stranger = RawVen(vtn, "stranger")
        reply = await stranger.try_register(ven_id="VEN-NEVER-ALLOCATED")
        assert isinstance(reply, ResponseMessage) and code(reply) == 452, reply
        assert set(await vens(vtn)) == {"preset"}


async def test_ven_reregistration_with_its_registration_id_keeps_ven_id() -> None:
    async with running_vtn(poll_freq=POLL) as vtn:
        ven = RawVen(vtn, "returning")
        first = await ven.register()
        again = await ven.register(ven_id=first.ven_id, registration_id=first.registration_id)
        assert (again.ven_id, again.registration_id) == (first.ven_id, first.registration_id)
        assert len(await vens(vtn)) == 1
        await assert_polls_ok(ven)


async def test_vtn_requested_reregistration_is_resent_until_done() -> None:
    async with running_vtn(poll_freq=POLL) as vtn:
        clock = Clock.install(vtn)
        ven = RawVen(vtn, "asked-again")
        first = await ven.register()
        status, body = await api(vtn, "POST", f"/api/vens/{ven.ven_id}/reregister")
        assert status == 202, body

        asked = await ven.poll()
        assert asked == RequestReregistration(ven_id=ven.ven_id)
        await assert_polls_ok(ven)  # just sent: not repeated on the very next poll
        clock.advance(RESEND_AFTER)
        assert await ven.poll() == RequestReregistration(ven_id=ven.ven_id)

        again = await ven.register(ven_id=ven.ven_id, registration_id=ven.registration_id)
        assert again.ven_id == first.ven_id
        clock.advance(RESEND_AFTER)
        await assert_polls_ok(ven)


async def test_ven_cancels_its_registration() -> None:
    async with running_vtn(poll_freq=POLL) as vtn:
        ven = RawVen(vtn, "leaving")
        await ven.register()
        assert ven.ven_id is not None and ven.registration_id is not None
        reply = await ven.send(CancelPartyRegistration(
            request_id=new_id(), registration_id=ven.registration_id, ven_id=ven.ven_id))
        assert isinstance(reply, CanceledPartyRegistration) and code(reply) == 200, reply
        assert (reply.ven_id, reply.registration_id) == (ven.ven_id, ven.registration_id)
        assert (await vens(vtn))["leaving"]["status"] == str(VenStatus.CANCELLED)
        await assert_not_registered(ven)


async def test_vtn_cancels_a_registration() -> None:
    async with running_vtn(poll_freq=POLL) as vtn:
        ven = RawVen(vtn, "dropped")
        await ven.register()
        status, body = await api(vtn, "POST", f"/api/vens/{ven.ven_id}/cancel-registration")
        assert status == 202, body

        cancel = await ven.poll()
        assert isinstance(cancel, CancelPartyRegistration), cancel
        assert (cancel.ven_id, cancel.registration_id) == (ven.ven_id, ven.registration_id)
        ack = await ven.send(CanceledPartyRegistration(
            response=Response(code=200, description="OK", request_id=cancel.request_id),
            registration_id=cancel.registration_id, ven_id=ven.ven_id))
        assert isinstance(ack, ResponseMessage) and code(ack) == 200, ack
        assert (await vens(vtn))["dropped"]["status"] == str(VenStatus.CANCELLED)
        await assert_not_registered(ven)


async def test_push_ven_without_transport_address_is_refused() -> None:
    async with running_vtn(poll_freq=POLL) as vtn:
        reply = await RawVen(vtn, "pusher").try_register(http_pull_model=False)
        assert isinstance(reply, ResponseMessage) and code(reply) == 451, reply
        assert await vens(vtn) == {}


async def test_push_ven_may_not_poll() -> None:
    async with running_vtn(poll_freq=POLL) as vtn:
        ven = RawVen(vtn, "pusher")
        reply = await ven.register(http_pull_model=False,
                                   transport_address="http://127.0.0.1:9/push")
        assert isinstance(reply, CreatedPartyRegistration)
        listed = (await vens(vtn))["pusher"]
        assert listed["http_pull_model"] is False
        assert listed["transport_address"] == "http://127.0.0.1:9/push"
        polled = await ven.poll()
        assert isinstance(polled, ResponseMessage) and code(polled) == 451, polled


@pytest.mark.parametrize("policy", list(RegistrationPolicy), ids=str)
async def test_registration_without_a_name_or_id_is_refused(policy: RegistrationPolicy) -> None:
    async with running_vtn(poll_freq=POLL, registration_policy=policy) as vtn:
        reply = await RawVen(vtn, "").try_register(ven_name=None)
        assert isinstance(reply, ResponseMessage) and code(reply) == 463, reply
        assert await vens(vtn) == {}
