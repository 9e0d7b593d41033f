"""HTTP push, VEN side: the fleet file's push keys, the sans-IO agent taking pushes in
(ven/agent.py on_pushed), and the fleet's push listener (ven/push.py) end to end against a small
VTN that registers the VENs and pushes to them with aiohttp, in plain HTTP and mutual TLS."""

from __future__ import annotations

import itertools
import random
import ssl
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from adrgate.tls import client_context, pin, server_context
from oadr import codec
from oadr.messages import (
    SERVICE_OF,
    CanceledPartyRegistration,
    CanceledReport,
    CancelPartyRegistration,
    CancelReport,
    CreatedEvent,
    CreatedPartyRegistration,
    CreatedReport,
    CreatePartyRegistration,
    CreateReport,
    DistributeEvent,
    Message,
    Poll,
    QueryRegistration,
    RegisteredReport,
    RegisterReport,
    RequestEvent,
    RequestReregistration,
    Response,
    ResponseMessage,
    UpdatedReport,
    UpdateReport,
)
from oadr.signing import SigningKey, fingerprint, sign
from tests.certs import Leaf, Pki, write_pki
from tests.test_ven_agent import (
    POLL,
    REG_ID,
    VEN_ID,
    VTN,
    Meter,
    Script,
    create_report,
    created_event,
    distribute,
    event,
    ok,
    register,
    spec,
    usage_request,
    wire,
)
from tests.venkit import running_fleet, ven_spec
from tests.vtnkit import utcnow, wait_for
from ven.agent import VenAgent
from ven.fleet import FleetError, FleetSpec, TlsSpec, parse_fleet
from ven.push import transport_address
from ven.records import RegState, VenSnapshot

PUSH_BASE = "http://127.0.0.1:9443"
ADDRESS = transport_address(PUSH_BASE, "agg-1")

# --- the fleet file ---------------------------------------------------------------------


def parse(data: dict[str, Any]) -> FleetSpec:
    return parse_fleet(data, source="fleet.toml", base_dir=Path("/srv/fleet"))


TLS = {"cert": "c.pem", "key": "k.pem", "ca": "ca.pem"}
URL = "https://vtn.example/OpenADR2/Simple/2.0b"


def test_push_keys_parse_with_defaults_and_overrides() -> None:
    fleet = parse({
        "push_listen": "0.0.0.0:9443", "push_url": "https://ven.example:9443/",
        "defaults": {"vtn_url": URL, "tls": TLS, "push": True},
        "ven": [{"name": "a", "push_fallback_to_pull": 3}, {"name": "b"},
                {"name": "c", "push": False}],
    })
    assert (fleet.push_listen, fleet.push_url) == (("0.0.0.0", 9443), "https://ven.example:9443")
    a, b, c = fleet.vens
    assert (a.push, a.push_fallback_to_pull) == (True, 3)
    assert (b.push, b.push_fallback_to_pull) == (True, None)
    assert (c.push, c.push_fallback_to_pull) == (False, None)


@pytest.mark.parametrize(("listen", "expected"), [
    ("127.0.0.1:9443", ("127.0.0.1", 9443)),
    ("[::1]:8080", ("::1", 8080)),
    ("ven.example:1", ("ven.example", 1)),
])
def test_push_listen_forms(listen: str, expected: tuple[str, int]) -> None:
    fleet = parse({"push_listen": listen, "ven": [{"name": "a", "vtn_url": URL, "push": True}]})
    # push_url left out: the runner derives it from the bound address
    assert (fleet.push_listen, fleet.push_url) == (expected, None)


def test_pull_fleet_has_no_push_listener() -> None:
    fleet = parse({"ven": [{"name": "a", "vtn_url": URL}]})
    assert (fleet.push_listen, fleet.push_url, fleet.vens[0].push) == (None, None, False)


def test_transport_address_quotes_the_ven_name() -> None:
    assert transport_address("https://h:1/", "agg 1/é") == \
        "https://h:1/agg%201%2F%C3%A9/OpenADR2/Simple/2.0b"


# --- the agent --------------------------------------------------------------------------


def push_agent(**fields: Any) -> Script:
    counter = itertools.count(1)
    return Script(VenAgent(spec(ven_id=VEN_ID, push=True, **fields), VenSnapshot(),
                           rng=random.Random(7), new_id=lambda: f"id-{next(counter)}",
                           telemetry=Meter(), history=lambda r_ids, start, end: [],
                           push_address=ADDRESS))


def push_ready(**fields: Any) -> Script:
    h = push_agent(**fields)
    register(h)
    return h


def pushed(h: Script, msg: Message) -> ResponseMessage:
    """Push `msg` (through the codec, as the listener gets it) and return the agent's answer,
    checked through the codec too."""
    answer = h.agent.on_pushed(wire(msg), h.now)
    h.flush()
    back = wire(answer)
    assert isinstance(back, ResponseMessage)
    return back


def test_push_registration_names_the_transport_address_and_no_poll_follows() -> None:
    h = push_agent()
    register(h)
    c = next(o.message for o in h.sent if isinstance(o.message, CreatePartyRegistration))
    assert (c.http_pull_model, c.transport_address) == (False, ADDRESS)
    assert h.agent.reg.state is RegState.READY
    h.quiet()
    assert h.agent.next_wakeup(h.now) is None  # nothing to do until the VTN pushes
    h.advance(10 * POLL)
    h.quiet()
    assert not any(isinstance(o.message, Poll) for o in h.sent)


def test_pushed_distribute_is_taken_like_a_poll_reply_and_answered() -> None:
    h = push_ready()
    answer = pushed(h, distribute("dist-1", event("e1")))
    assert (answer.response.code, answer.response.request_id, answer.ven_id) == \
        (200, "dist-1", VEN_ID)
    assert h.snapshot.events["e1"].request_id == "dist-1"  # saved before the answer
    created = created_event(h)
    assert [(r.event_id, r.request_id) for r in created.event_responses] == [("e1", "dist-1")]
    # a modification, then the event absent: dropped, as on a poll
    pushed(h, distribute("dist-2", event("e1", mod=1)))
    assert created_event(h).event_responses[0].modification_number == 1
    pushed(h, distribute("dist-3"))
    assert h.agent.events == {}
    h.quiet()


def test_pushed_create_and_cancel_report() -> None:
    h = push_ready()
    answer = pushed(h, create_report("cr-1", usage_request("rr-1", timedelta(minutes=1),
                                                           timedelta(minutes=1))))
    assert (answer.response.code, answer.response.request_id) == (200, "cr-1")
    created = h.exchange(CreatedReport, lambda c: ok(c.response.request_id))
    assert (created.response.request_id, created.pending_reports) == ("cr-1", ("rr-1",))
    updates = h.run(h.now + timedelta(minutes=5))  # one a minute, each randomly delayed
    assert len(updates) >= 3 and {u.reports[0].report_request_id for u in updates} == {"rr-1"}
    answer = pushed(h, CancelReport(request_id="can-1", report_request_ids=("rr-1",),
                                    ven_id=VEN_ID))
    assert answer.response.code == 200
    canceled = h.exchange(CanceledReport, lambda c: ok(c.response.request_id))
    assert (canceled.response.request_id, canceled.pending_reports) == ("can-1", ())
    assert h.run(h.now + timedelta(minutes=3)) == []


def test_pushed_reregistration_is_acknowledged_by_the_push_answer_alone() -> None:
    h = push_ready()
    answer = pushed(h, RequestReregistration(ven_id=VEN_ID))
    assert answer.response.code == 200
    # no separate oadrResponse as in pull mode: the registration itself comes next
    c = h.exchange(CreatePartyRegistration, lambda c: CreatedPartyRegistration(
        response=Response(request_id=c.request_id), vtn_id=VTN, registration_id=REG_ID,
        ven_id=VEN_ID))
    assert (c.ven_id, c.registration_id, c.http_pull_model, c.transport_address) == \
        (VEN_ID, REG_ID, False, ADDRESS)
    h.exchange(RegisterReport, lambda r: RegisteredReport(
        response=Response(request_id=r.request_id), ven_id=VEN_ID))
    h.exchange(RequestEvent, lambda r: distribute("dist-0", now=h.now))
    assert h.agent.reg.state is RegState.READY


def test_pushed_cancel_party_registration_answered_then_silence() -> None:
    h = push_ready()
    answer = pushed(h, CancelPartyRegistration(request_id="cpr-1", registration_id=REG_ID,
                                               ven_id=VEN_ID))
    assert (answer.response.code, answer.response.request_id) == (200, "cpr-1")
    canceled = h.exchange(CanceledPartyRegistration, lambda c: ok(c.response.request_id))
    assert canceled.registration_id == REG_ID
    assert h.agent.reg.state is RegState.CANCELLED
    # cancelled: no longer registered, so a push is refused
    assert pushed(h, distribute("dist-9", event())).response.code == 463
    h.quiet()


def test_push_before_registration_is_answered_463_and_changes_nothing() -> None:
    h = push_agent()
    answer = pushed(h, distribute("dist-1", event()))
    assert (answer.response.code, answer.response.request_id) == (463, "dist-1")
    assert h.agent.events == {} and h.snapshot.events == {}
    h.expect(QueryRegistration)


@pytest.mark.parametrize(("msg", "code"), [
    (CreateReport(request_id="cr-1", ven_id="someone-else", report_requests=(
        usage_request("rr-1", timedelta(minutes=1), timedelta(minutes=1)),)), 452),
    (RequestReregistration(ven_id="someone-else"), 452),
    (DistributeEvent(request_id="d-1", vtn_id="OTHER-VTN"), 452),
    (Poll(ven_id=VEN_ID), 451),
    (CreatedEvent(response=Response(request_id="x"), ven_id=VEN_ID), 451),
])
def test_push_for_another_ven_or_not_pushable_is_refused_with_a_code(msg: Message,
                                                                     code: int) -> None:
    h = push_ready()
    before = (h.agent.reg, dict(h.agent.events))
    answer = pushed(h, msg)
    assert answer.response.code == code
    assert (h.agent.reg, h.agent.events) == before
    h.quiet()


def test_fallback_registers_again_as_a_pull_ven_after_n_silent_periods() -> None:
    h = push_ready(push_fallback_to_pull=3)
    registered = h.now
    assert h.agent.next_poll == registered + 3 * POLL
    pushed(h, distribute("dist-1"))  # a push: silence again for 3 periods from now
    assert h.agent.next_poll == h.now + 3 * POLL
    h.advance(3 * POLL - timedelta(seconds=1))
    h.quiet()
    h.advance(timedelta(seconds=1))
    # 3 periods without a push: a VTN takes no oadrPoll from a push VEN, so register as pull
    again = h.exchange(CreatePartyRegistration, lambda c: CreatedPartyRegistration(
        response=Response(request_id=c.request_id), vtn_id=VTN, registration_id=REG_ID,
        ven_id=c.ven_id or VEN_ID, poll_freq=POLL))
    assert (again.http_pull_model, again.transport_address) == (True, None)
    assert again.ven_id == VEN_ID and again.registration_id == REG_ID
    h.exchange(RegisterReport, lambda r: RegisteredReport(
        response=Response(request_id=r.request_id), ven_id=VEN_ID))
    h.exchange(RequestEvent, lambda r: distribute("dist-2", now=h.now))
    h.poll()  # and it polls from now on


# --- the listener, end to end -----------------------------------------------------------

OADR = "/OpenADR2/Simple/2.0b"


@dataclass
class FakeVtn:
    """Registers VENs (push or pull), records what they send, pushes to them."""

    vtn_id: str = VTN
    poll_freq: timedelta | None = None  # None: the VENs poll at their own (fast) interval
    key: SigningKey | None = None
    client_ssl: ssl.SSLContext | None = None  # for pushing
    url: str = ""
    received: list[tuple[str, Message]] = field(default_factory=list)  # (venID, message)
    registrations: dict[str, CreatePartyRegistration] = field(default_factory=dict)  # by venID
    session: aiohttp.ClientSession | None = None
    _ids: itertools.count[int] = field(default_factory=itertools.count)

    def encode(self, msg: Message) -> bytes:
        if self.key is None:
            return codec.serialize(msg)
        return codec.serialize(msg, sign=partial(sign, key=self.key, now=utcnow(),
                                                 nonce=uuid.uuid4().hex))

    async def view(self, request: web.Request) -> web.Response:
        msg = codec.parse(await request.read()).message
        ven_id = getattr(msg, "ven_id", None) or ""
        rid = getattr(msg, "request_id", "")
        reply: Message
        if isinstance(msg, QueryRegistration):
            reply = CreatedPartyRegistration(response=Response(request_id=rid),
                                             vtn_id=self.vtn_id, poll_freq=self.poll_freq)
        elif isinstance(msg, CreatePartyRegistration):
            ven_id = msg.ven_id or f"ven-{next(self._ids)}"
            self.registrations[ven_id] = msg
            reply = CreatedPartyRegistration(response=Response(request_id=rid),
                                             vtn_id=self.vtn_id, ven_id=ven_id,
                                             registration_id=f"reg-{ven_id}",
                                             poll_freq=self.poll_freq)
        elif isinstance(msg, RegisterReport):
            reply = RegisteredReport(response=Response(request_id=rid), ven_id=ven_id)
        elif isinstance(msg, RequestEvent):
            reply = DistributeEvent(request_id=rid, vtn_id=self.vtn_id)
        elif isinstance(msg, UpdateReport):
            reply = UpdatedReport(response=Response(request_id=rid), ven_id=ven_id)
        else:
            response = getattr(msg, "response", None)
            reply = ResponseMessage(response=Response(
                request_id=response.request_id if isinstance(response, Response) else ""),
                ven_id=ven_id)
        self.received.append((ven_id, msg))
        return web.Response(body=self.encode(reply), content_type="application/xml")

    def kinds(self, ven_id: str) -> list[type]:
        return [type(m) for v, m in self.received if v == ven_id]

    def address(self, ven_id: str) -> str:
        reg = self.registrations[ven_id]
        assert reg.transport_address is not None
        return reg.transport_address

    async def post(self, url: str, body: bytes, ctx: ssl.SSLContext | None = None
                   ) -> tuple[int, bytes]:
        assert self.session is not None
        ssl_arg: ssl.SSLContext | bool = ctx or self.client_ssl or False
        async with self.session.post(url, data=body, ssl=ssl_arg,
                                     headers={"Content-Type": "application/xml"}) as resp:
            return resp.status, await resp.read()

    async def push(self, ven_id: str, msg: Message) -> ResponseMessage:
        status, data = await self.post(f"{self.address(ven_id)}/{SERVICE_OF[type(msg)]}",
                                       self.encode(msg))
        assert status == 200, data
        answer = codec.parse(data).message
        assert isinstance(answer, ResponseMessage), answer
        return answer


@asynccontextmanager
async def fake_vtn(*, server_ssl: ssl.SSLContext | None = None, key: SigningKey | None = None,
                   client_ssl: ssl.SSLContext | None = None) -> AsyncIterator[FakeVtn]:
    vtn = FakeVtn(key=key, client_ssl=client_ssl)
    app = web.Application()
    app.router.add_post(OADR + "/{service}", vtn.view)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ssl)
    await site.start()
    vtn.url = f"{'https' if server_ssl else 'http'}://127.0.0.1:{runner.addresses[0][1]}{OADR}"
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            vtn.session = session
            yield vtn
    finally:
        await runner.cleanup()


async def ready_ven(vtn: FakeVtn, ven_id: str) -> None:
    await wait_for(lambda: RequestEvent in vtn.kinds(ven_id), what=f"{ven_id} registered")


async def test_push_and_pull_vens_in_one_fleet_over_the_listener() -> None:
    async with fake_vtn() as vtn:
        vens = [ven_spec(vtn.url, "agg 1/a", ven_id="ven-push", push=True),
                ven_spec(vtn.url, "agg-2", ven_id="ven-pull")]
        async with running_fleet(vens, push_listen=("127.0.0.1", 0)) as f:
            await ready_ven(vtn, "ven-push")
            await ready_ven(vtn, "ven-pull")
            base = f.fleet.push_url
            assert base is not None and base.startswith("http://127.0.0.1:")
            push_reg, pull_reg = vtn.registrations["ven-push"], vtn.registrations["ven-pull"]
            assert (push_reg.http_pull_model, push_reg.transport_address) == \
                (False, f"{base}/agg%201%2Fa/OpenADR2/Simple/2.0b")
            assert (pull_reg.http_pull_model, pull_reg.transport_address) == (True, None)

            answer = await vtn.push("ven-push", distribute("dist-1", event("e1"), now=utcnow()))
            assert (answer.response.code, answer.response.request_id, answer.ven_id) == \
                (200, "dist-1", "ven-push")
            created = await wait_for(lambda: next(
                (m for v, m in vtn.received if v == "ven-push" and isinstance(m, CreatedEvent)),
                None), what="oadrCreatedEvent")
            assert created.event_responses[0].event_id == "e1"
            assert f.store.load_all()["agg 1/a"].events["e1"].request_id == "dist-1"

            answer = await vtn.push("ven-push", CreateReport(
                request_id="cr-1", ven_id="ven-push",
                report_requests=(usage_request("rr-1", timedelta(seconds=1),
                                               timedelta(seconds=1)),)))
            assert answer.response.code == 200
            await wait_for(lambda: UpdateReport in vtn.kinds("ven-push"), what="report updates")
            assert CreatedReport in vtn.kinds("ven-push")

            await wait_for(lambda: vtn.kinds("ven-pull").count(Poll) >= 2, what="pull polls")
            assert Poll not in vtn.kinds("ven-push")
            # a pull VEN is not served by the listener
            status, data = await vtn.post(
                transport_address(base, "agg-2") + "/EiEvent",
                codec.serialize(distribute("dist-x", event("e2"), now=utcnow())))
            reply = codec.parse(data).message
            assert status == 200 and isinstance(reply, ResponseMessage)
            assert reply.response.code == 463
            assert "e2" not in f.agent("agg-2").events
            # the FleetWire observer saw the answers to pushes, and they conformed
            assert ("agg 1/a", "EiEvent") in {(v, s) for v, s, _ in f.wire.sent}

            answer = await vtn.push("ven-push", CancelPartyRegistration(
                request_id="cpr-1", registration_id="reg-ven-push", ven_id="ven-push"))
            assert answer.response.code == 200
            await wait_for(lambda: CanceledPartyRegistration in vtn.kinds("ven-push"),
                           what="oadrCanceledPartyRegistration")
            assert f.agent("agg 1/a").reg.state is RegState.CANCELLED
            refused = await vtn.push("ven-push", distribute("dist-2", event("e1"), now=utcnow()))
            assert refused.response.code == 463


async def test_bad_input_gets_a_clear_answer_and_the_listener_keeps_serving() -> None:
    async with fake_vtn() as vtn:
        async with running_fleet([ven_spec(vtn.url, "agg", ven_id="ven-1", push=True)],
                                 push_listen=("127.0.0.1", 0)) as f:
            await ready_ven(vtn, "ven-1")
            base = vtn.address("ven-1")
            good = codec.serialize(distribute("dist-1", event("e1"), now=utcnow()))
            dtd = (b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]>'
                   + good.split(b"?>", 1)[1])
            cases: list[tuple[str, bytes, int]] = [
                ("/EiEvent", b"<oadrPayload", 400),
                ("/EiEvent", dtd, 400),
                ("/EiEvent", b"<" + b"a" * 1_100_000 + b"/>", 413),
                ("/OadrPoll", good, 404),
            ]
            for path, body, status in cases:
                got, data = await vtn.post(base + path, body)
                assert got == status, (path, data[:200])
                assert data  # a reason, not an empty 4xx
            # readable but wrong: an oadrResponse with the OpenADR code
            for url, body, code in [
                (base + "/EiReport", good, 453),  # a distribute on EiReport
                (transport_address(f.fleet.push_url or "", "nobody") + "/EiEvent", good, 463),
                (base + "/EiEvent", good.replace(b"<ei:vtnID>", b"<ei:venID>x</ei:venID>"
                                                                b"<ei:vtnID>"), 454),  # XSD
            ]:
                got, data = await vtn.post(url, body)
                reply = codec.parse(data).message
                assert got == 200 and isinstance(reply, ResponseMessage), data[:200]
                assert reply.response.code == code, reply
            assert f.agent("agg").events == {}
            answer = await vtn.push("ven-1", distribute("dist-2", event("e1"), now=utcnow()))
            assert answer.response.code == 200
            await wait_for(lambda: CreatedEvent in vtn.kinds("ven-1"), what="served after all")


# --- mutual TLS and signatures ----------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return write_pki(tmp_path_factory.mktemp("pki"))


def tls(leaf: Leaf, pki: Pki) -> TlsSpec:
    return TlsSpec(cert=str(leaf.cert), key=str(leaf.key), ca=str(pki.ca))


def pusher(leaf: Leaf, pki: Pki, ven: Leaf) -> ssl.SSLContext:
    """The VTN as a TLS client: its certificate, the VEN's listener pinned (not its host name)."""
    return pin(client_context(leaf.cert, leaf.key, pki.ca, check_hostname=False),
               fingerprint(ven.cert_pem))


async def test_signed_push_over_mutual_tls_with_both_ends_pinned(pki: Pki) -> None:
    vtn_leaf, ven_leaf = pki.vtn_ecc, pki.ven_rsa
    key = SigningKey.load(vtn_leaf.cert_pem, vtn_leaf.key_pem)
    async with fake_vtn(server_ssl=server_context(vtn_leaf.cert, vtn_leaf.key, pki.ca), key=key,
                        client_ssl=pusher(vtn_leaf, pki, ven_leaf)) as vtn:
        spec_ = ven_spec(vtn.url, "agg", ven_id="ven-1", push=True, tls=tls(ven_leaf, pki),
                         sign=True, vtn_fingerprint=fingerprint(vtn_leaf.cert_pem))
        async with running_fleet([spec_], push_listen=("127.0.0.1", 0)) as f:
            await ready_ven(vtn, "ven-1")
            base = vtn.address("ven-1")
            assert base.startswith("https://127.0.0.1:")

            signed = vtn.encode(distribute("dist-1", event("e1"), now=utcnow()))
            status, data = await vtn.post(base + "/EiEvent", signed)
            assert status == 200 and b"Signature" in data  # the VEN signs its answer
            reply = codec.parse(data).message
            assert isinstance(reply, ResponseMessage) and reply.response.code == 200
            await wait_for(lambda: CreatedEvent in vtn.kinds("ven-1"), what="oadrCreatedEvent")

            # the same signed bytes again: a replay
            status, data = await vtn.post(base + "/EiEvent", signed)
            reply = codec.parse(data).message
            assert isinstance(reply, ResponseMessage) and reply.response.code == 463
            # unsigned, to a VEN that signs
            status, data = await vtn.post(
                base + "/EiEvent", codec.serialize(distribute("dist-2", event("e1"),
                                                              now=utcnow())))
            reply = codec.parse(data).message
            assert isinstance(reply, ResponseMessage) and reply.response.code == 463

            # a certificate from the VEN's CA that is not the pinned VTN's
            other = pusher(pki.vtn_rsa, pki, ven_leaf)
            status, data = await vtn.post(base + "/EiEvent", vtn.encode(
                distribute("dist-3", event("e1"), now=utcnow())), ctx=other)
            assert status == 403 and b"pins" in data
            # a certificate from a CA the VEN does not trust: refused in the handshake
            with pytest.raises(aiohttp.ClientError):
                await vtn.post(base + "/EiEvent", signed, ctx=pusher(pki.stranger, pki, ven_leaf))
            # no client certificate at all
            bare = ssl.create_default_context(cafile=str(pki.ca))
            bare.check_hostname = False
            with pytest.raises(aiohttp.ClientError):
                await vtn.post(base + "/EiEvent", signed, ctx=bare)

            answer = await vtn.push("ven-1", distribute("dist-4", event("e1", mod=1),
                                                        now=utcnow()))
            assert answer.response.code == 200
            await wait_for(lambda: f.agent("agg").events["e1"].answered_mod == 1,
                           what="the modification answered")
            assert all(b"Signature" in body for _, _, body in f.wire.sent)


async def test_mixed_tls_push_vens_are_refused_at_start() -> None:
    vens = [ven_spec("http://127.0.0.1:1/OpenADR2/Simple/2.0b", name, push=True, tls=tls)
            for name, tls in (("a", TlsSpec(cert="c.pem", key="k.pem", ca="ca.pem")), ("b", None))]
    with pytest.raises(ValueError, match="all of them need tls or none"):
        async with running_fleet(vens, push_listen=("127.0.0.1", 0)):
            pass


def test_example_fleet_file_error_is_a_fleet_error() -> None:
    with pytest.raises(FleetError, match="push_listen"):
        parse({"ven": [{"name": "a", "vtn_url": URL, "push": True}]})

