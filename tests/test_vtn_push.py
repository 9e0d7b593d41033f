"""HTTP push from the VTN: what a push VEN is owed is POSTed to its transport address at once.

`PushListener` is a fake fleet listener: one loopback server serving push VENs under
`/<name>/OpenADR2/Simple/2.0b/<service>`. It checks every payload it receives for conformance
(XSD and certification rules), answers oadrResponse (or refuses, or is down), and answers a
pushed distribute with oadrCreatedEvent to the VTN, as a VEN would.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import ssl
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from adrgate.services import make_engine
from adrgate.tls import client_context, peer_fingerprint, server_context
from oadr import codec, conformance
from oadr.messages import (
    CancelPartyRegistration, CancelReport, CreateReport, DistributeEvent, EventStatus, Message,
    OptType, RequestReregistration, Response, ResponseMessage,
)
from oadr.signing import SigningKey, fingerprint, verifier
from tests.certs import Leaf, Pki, write_pki
from tests.rawven import RawVen, Reply, assert_conformant_reply, telemetry_metadata
from tests.vtnkit import Vtn, api, running_vtn, simple_event, utcnow, wait_for
from vtn.eventjson import event_from_json
from vtn.batch import Batch
from vtn.push import PushConfig, PushTls, after_failure, backoff, push_url, refusal
from vtn.records import VenRecord, VenStatus
from vtn.store import PushState, VtnStore

OADR = "/OpenADR2/Simple/2.0b"
# sweeps far apart: whatever arrives during a test was pushed on a notify or a backoff timer
FAST = PushConfig(sweep_every=timedelta(seconds=60), timeout=timedelta(seconds=5),
                  backoff=timedelta(milliseconds=20), backoff_max=timedelta(milliseconds=100),
                  unreachable_after=2)


@dataclass
class Pushed:
    ven: str
    service: str
    message: Message
    signed: bool


@dataclass
class PushListener:
    vtn: Vtn
    tls: ssl.SSLContext | None = None
    delay: float = 0.0  # seconds each answer takes, so concurrent pushes overlap
    received: list[Pushed] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    vens: dict[str, RawVen] = field(default_factory=dict)
    answer: dict[str, int] = field(default_factory=dict)  # response code per VEN (default 200)
    peers: list[str | None] = field(default_factory=list)  # TLS fingerprints of the pushers
    inflight: int = 0
    max_inflight: int = 0
    port: int = 0
    _runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/{ven}" + OADR + "/{service}", self._on_push)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, ssl_context=self.tls)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def address(self, name: str) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.port}/{name}{OADR}"

    async def register(self, ven: RawVen) -> RawVen:
        """Register `ven` as a push VEN served here."""
        self.vens[ven.name] = ven
        await ven.register(http_pull_model=False, transport_address=self.address(ven.name))
        return ven

    def of(self, name: str, kind: type | None = None) -> list[Message]:
        return [p.message for p in self.received
                if p.ven == name and (kind is None or isinstance(p.message, kind))]

    async def _on_push(self, request: web.Request) -> web.Response:
        self.inflight += 1
        self.max_inflight = max(self.max_inflight, self.inflight)
        try:
            ssl_object = request.transport.get_extra_info("ssl_object") \
                if request.transport else None
            self.peers.append(peer_fingerprint(ssl_object))
            body = await request.read()
            now = utcnow()
            self.violations += [f"[{v.rule}] {v.message}" for v in conformance.check(body, now=now)]
            received = codec.parse(body, verify=verifier(now=now, required=False))
            name, msg = request.match_info["ven"], received.message
            self.received.append(Pushed(name, request.match_info["service"], msg,
                                        received.signature is not None))
            ven = self.vens[name]
            await asyncio.sleep(self.delay)
            code = self.answer.get(name, 200)
            if code == 200 and isinstance(msg, DistributeEvent) and msg.events:
                # the VEN's answer is a separate request, as in pull mode
                asyncio.get_running_loop().create_task(ven.created_event(msg))
            reply = ResponseMessage(
                response=Response(code=code, description="OK" if code == 200 else "refused",
                                  request_id=getattr(msg, "request_id", None) or ""),
                ven_id=ven.ven_id)
            return web.Response(body=codec.serialize(reply), content_type="application/xml")
        finally:
            self.inflight -= 1


@pytest.fixture
async def listeners() -> Any:
    started: list[PushListener] = []

    async def make(vtn: Vtn, **kw: Any) -> PushListener:
        listener = PushListener(vtn, **kw)
        await listener.start()
        started.append(listener)
        return listener

    yield make
    for listener in started:
        await listener.stop()


async def create_event(vtn: Vtn, ven_ids: list[str | None], **extra: Any) -> str:
    status, out = await api(vtn, "POST", "/api/events", simple_event(
        targets={"ven_ids": ven_ids}, start_in=timedelta(minutes=5), **extra))
    assert status == 201, out
    return str(out["event_id"])


async def acked(vtn: Vtn, event_id: str, ven_id: str | None) -> int:
    status, out = await api(vtn, "GET", f"/api/events/{event_id}")
    assert status == 200, out
    return next(int(d["acknowledged_modification"]) for d in out["deliveries"]
                if d["ven_id"] == ven_id)


async def shown(vtn: Vtn, ven_id: str | None) -> dict[str, Any]:
    status, out = await api(vtn, "GET", "/api/vens")
    assert status == 200, out
    return next(v for v in out if v["ven_id"] == ven_id)


async def wait_acked(vtn: Vtn, event_id: str, ven_id: str | None, mod: int) -> None:
    deadline = asyncio.get_running_loop().time() + 20
    while await acked(vtn, event_id, ven_id) < mod:
        assert asyncio.get_running_loop().time() < deadline, f"{ven_id} never acknowledged"
        await asyncio.sleep(0.05)


# --- decisions ---------------------------------------------------------------------------

VEN = VenRecord(ven_id="v1", ven_name="v1", status=VenStatus.REGISTERED, registration_id="r",
                http_pull_model=False, transport_address="https://h/v1" + OADR + "/")


def answer(code: int, ven_id: str | None = "v1") -> bytes:
    return codec.serialize(ResponseMessage(
        response=Response(code=code, description="x", request_id="q"), ven_id=ven_id))


def test_push_url_names_the_service_of_the_payload() -> None:
    assert VEN.transport_address is not None
    assert push_url(VEN.transport_address, RequestReregistration(ven_id="v1")) == \
        "https://h/v1" + OADR + "/EiRegisterParty"
    assert push_url(VEN.transport_address, CancelReport(
        request_id="q", ven_id="v1", report_request_ids=("a",), report_to_follow=False)) == \
        "https://h/v1" + OADR + "/EiReport"


@pytest.mark.parametrize(("status", "body", "why"), [
    (200, answer(200), None),
    (200, answer(200, ven_id=None), None),
    (200, answer(463), "refused with 463"),
    (200, answer(200, ven_id="v2"), "venID v2"),
    (503, b"busy", "HTTP 503"),
    (200, b"<html/>", "unreadable"),
    (200, codec.serialize(RequestReregistration(ven_id="v1")), "not oadrResponse"),
])
def test_refusal(status: int, body: bytes, why: str | None) -> None:
    got = refusal(status, body, VEN, now=utcnow(), require_signatures=False)
    assert (got is None) if why is None else (got is not None and why in got), got


def test_backoff_doubles_to_the_cap_with_jitter_and_marks_unreachable() -> None:
    config = PushConfig(backoff=timedelta(seconds=1), backoff_max=timedelta(seconds=10),
                        unreachable_after=3)
    rng = random.Random(7)
    for failures, ceiling in ((1, 1), (2, 2), (3, 4), (5, 10), (60, 10)):
        delays = {backoff(failures, config, rng) for _ in range(20)}
        assert all(timedelta(seconds=ceiling / 2) <= d <= timedelta(seconds=ceiling)
                   for d in delays), (failures, delays)
        assert len(delays) > 1  # jittered
    now = datetime(2030, 1, 1, tzinfo=timezone.utc)
    state = PushState(ven_id="v1")
    for expected in (False, False, True, True):
        state = after_failure(state, "down", now, config, rng)
        assert state.unreachable is expected and state.last_error == "down"
        assert state.next_attempt is not None and state.next_attempt > now
    assert state.failures == 4


# --- delivery ----------------------------------------------------------------------------

async def test_event_modification_and_cancellation_pushed_at_once(listeners: Any) -> None:
    async with running_vtn(push=FAST) as vtn:
        fleet = await listeners(vtn)
        ven = await fleet.register(RawVen(vtn, "push-1"))
        event_id = await create_event(vtn, [ven.ven_id], response_required="always")
        await wait_acked(vtn, event_id, ven.ven_id, 0)
        (first,) = fleet.of("push-1", DistributeEvent)
        assert [(e.event_id, e.modification_number) for e in first.events] == [(event_id, 0)]

        body = simple_event(targets={"ven_ids": [ven.ven_id]}, start_in=timedelta(minutes=5),
                            level=2, response_required="always")
        status, out = await api(vtn, "PUT", f"/api/events/{event_id}", body)
        assert status == 200, out
        await wait_acked(vtn, event_id, ven.ven_id, 1)
        modified = fleet.of("push-1", DistributeEvent)[-1]
        assert modified.events[0].signals[0].intervals[0].payload == 2

        status, out = await api(vtn, "POST", f"/api/events/{event_id}/cancel", {})
        assert status == 200, out
        await wait_acked(vtn, event_id, ven.ven_id, 2)
        cancelled = fleet.of("push-1", DistributeEvent)[-1]
        assert [e.status for e in cancelled.events] == [EventStatus.CANCELLED]
        assert {p.service for p in fleet.received} == {"EiEvent"}
        assert fleet.violations == []
        assert (await shown(vtn, ven.ven_id))["push"] == {
            "failures": 0, "next_attempt": None, "last_error": None}


async def test_report_requests_and_registration_messages_pushed(listeners: Any) -> None:
    async with running_vtn(push=FAST) as vtn:
        fleet = await listeners(vtn)
        ven = await fleet.register(RawVen(vtn, "push-2"))
        await ven.register_reports(*telemetry_metadata(timedelta(seconds=10)))
        steps: list[tuple[str, type]] = [
            (f"/api/vens/{ven.ven_id}/report-requests", CreateReport),
            ("", CancelReport),
            (f"/api/vens/{ven.ven_id}/reregister", RequestReregistration),
            (f"/api/vens/{ven.ven_id}/cancel-registration", CancelPartyRegistration),
        ]
        request_id = ""
        for path, kind in steps:
            path = path or f"/api/report-requests/{request_id}/cancel"
            status, out = await api(vtn, "POST", path, {})
            assert status in (200, 201, 202), out
            if kind is CreateReport:
                request_id = out[0]["report_request_id"]
            await wait_for(lambda k=kind: fleet.of("push-2", k), what=kind.__name__)
        by_kind = {type(p.message): p.service for p in fleet.received}
        assert by_kind == {CreateReport: "EiReport", CancelReport: "EiReport",
                           RequestReregistration: "EiRegisterParty",
                           CancelPartyRegistration: "EiRegisterParty"}
        (cancel,) = fleet.of("push-2", CancelReport)
        assert isinstance(cancel, CancelReport) and cancel.report_request_ids == (request_id,)
        assert fleet.violations == []


async def test_ven_down_then_back_receives_and_unreachable_comes_and_goes(
        listeners: Any) -> None:
    async with running_vtn(push=FAST) as vtn:
        fleet = await listeners(vtn)
        ven = await fleet.register(RawVen(vtn, "push-3"))
        await fleet.stop()
        event_id = await create_event(vtn, [ven.ven_id])

        deadline = asyncio.get_running_loop().time() + 20
        while not (state := await shown(vtn, ven.ven_id))["unreachable"]:
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.05)
        assert state["push"]["failures"] >= FAST.unreachable_after
        assert state["push"]["last_error"] and state["push"]["next_attempt"]
        assert fleet.received == []

        await fleet.start()  # same port
        await wait_acked(vtn, event_id, ven.ven_id, 0)
        state = await shown(vtn, ven.ven_id)
        assert state["unreachable"] is False and state["push"]["failures"] == 0
        assert fleet.violations == []


async def test_refusing_ven_is_a_failure_until_it_takes_the_push(listeners: Any) -> None:
    async with running_vtn(push=FAST) as vtn:
        fleet = await listeners(vtn)
        ven = await fleet.register(RawVen(vtn, "push-4"))
        fleet.answer["push-4"] = 463
        event_id = await create_event(vtn, [ven.ven_id])
        await wait_for(lambda: vtn.store.push_states().get(ven.ven_id), what="a failure")
        assert "463" in (vtn.store.push_states()[ven.ven_id].last_error or "")
        assert await acked(vtn, event_id, ven.ven_id) == -1
        fleet.answer["push-4"] = 200
        await wait_acked(vtn, event_id, ven.ven_id, 0)
        assert ven.ven_id not in vtn.store.push_states()
        # a refused push is not recorded as sent: the same event came again
        pushed = [d for d in fleet.of("push-4") if isinstance(d, DistributeEvent)]
        assert len(pushed) >= 2 and {e.event_id for d in pushed for e in d.events} == {event_id}


async def test_owed_event_delivered_after_vtn_restart(listeners: Any, tmp_path: Path) -> None:
    database = f"sqlite:///{tmp_path}/vtn.db"
    async with running_vtn(database, push=FAST) as vtn:
        fleet = await listeners(vtn)
        ven = await fleet.register(RawVen(vtn, "push-5"))
        await fleet.stop()
        event_id = await create_event(vtn, [ven.ven_id])
        await wait_for(lambda: vtn.store.push_states().get(ven.ven_id), what="a failure")
    await fleet.start()
    async with running_vtn(database, push=FAST) as vtn:
        ven.vtn = fleet.vtn = vtn
        await wait_acked(vtn, event_id, ven.ven_id, 0)
        assert len(fleet.of("push-5", DistributeEvent)) == 1
        assert fleet.violations == []


async def test_fan_out_to_many_push_vens_is_concurrent_and_bounded(listeners: Any) -> None:
    limit = 8
    async with running_vtn(push=dataclasses.replace(FAST, concurrency=limit)) as vtn:
        fleet = await listeners(vtn, delay=0.01)
        vens = [await fleet.register(RawVen(vtn, f"many-{i}")) for i in range(200)]
        event_id = await create_event(vtn, [v.ven_id for v in vens])

        def all_acked() -> bool:
            return all(d.acked_mod == 0 for d in vtn.store.deliveries_for_event(event_id))

        await wait_for(all_acked, what="200 acknowledgements")
        assert {p.ven for p in fleet.received} == {v.name for v in vens}
        assert 1 < fleet.max_inflight <= limit
        assert fleet.violations == []


async def test_pull_and_push_vens_on_one_event(listeners: Any) -> None:
    async with running_vtn(push=FAST) as vtn:
        fleet = await listeners(vtn)
        pusher = await fleet.register(RawVen(vtn, "push-6"))
        puller = RawVen(vtn, "pull-6")
        await puller.register()
        event_id = await create_event(vtn, [pusher.ven_id, puller.ven_id])
        await wait_acked(vtn, event_id, pusher.ven_id, 0)
        polled = await puller.poll()
        assert isinstance(polled, DistributeEvent)
        assert [e.event_id for e in polled.events] == [event_id]
        await puller.created_event(polled)
        assert await acked(vtn, event_id, puller.ven_id) == 0
        assert {p.ven for p in fleet.received} == {"push-6"}


# --- security ----------------------------------------------------------------------------

class TlsVen(RawVen):
    """A RawVen that talks to the VTN over mutual TLS with its certificate."""

    def __init__(self, vtn: Vtn, name: str, leaf: Leaf, ca: Path) -> None:
        super().__init__(vtn, name)
        self.tls = client_context(leaf.cert, leaf.key, ca)

    async def post(self, service: str, body: bytes) -> Reply:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self.tls)) as session:
            async with session.post(f"{self.vtn.oadr_url}/{service}", data=body,
                                    headers={"Content-Type": "application/xml"}) as resp:
                status, data = resp.status, await resp.read()
        assert status == 200, data
        return Reply(status, data, assert_conformant_reply(data, now=self.vtn.deps.clock()))


async def test_mutual_tls_push_signed_and_pinned(listeners: Any, tmp_path: Path) -> None:
    pki: Pki = write_pki(tmp_path / "pki")
    config = dataclasses.replace(FAST, tls=PushTls(cert=pki.vtn_rsa.cert, key=pki.vtn_rsa.key,
                                                   ca=pki.ca))
    key = SigningKey.load(pki.vtn_ecc.cert_pem, pki.vtn_ecc.key_pem)
    async with running_vtn(ssl_context=server_context(pki.vtn_rsa.cert, pki.vtn_rsa.key, pki.ca),
                           secure=True, signing_key=key, push=config) as vtn:
        # the listener presents ven_rsa's certificate and requires a client certificate
        fleet = await listeners(vtn, tls=server_context(pki.ven_rsa.cert, pki.ven_rsa.key,
                                                        pki.ca))
        good = await fleet.register(TlsVen(vtn, "tls-good", pki.ven_rsa, pki.ca))
        # registered with ven_ecc's certificate, so ven_rsa's listener is not its own
        other = await fleet.register(TlsVen(vtn, "tls-other", pki.ven_ecc, pki.ca))
        now = utcnow()
        event = vtn.operator.create_event(simple_event(
            targets={"ven_ids": [good.ven_id, other.ven_id]}, start_in=timedelta(minutes=5)), now)
        event_id = event.event.event_id

        def delivery(ven_id: str | None) -> int:
            return next(d.acked_mod for d in vtn.store.deliveries_for_event(event_id)
                        if d.ven_id == ven_id)

        await wait_for(lambda: delivery(good.ven_id) == 0, what="acknowledgement over TLS")
        await wait_for(lambda: vtn.store.push_states().get(other.ven_id), what="pin refusal")
        assert "fingerprint" in (vtn.store.push_states()[other.ven_id].last_error or "")
        assert {p.ven for p in fleet.received} == {"tls-good"}
        assert all(p.signed for p in fleet.received)
        assert set(fleet.peers) == {fingerprint(pki.vtn_rsa.cert_pem)}
        assert fleet.violations == []


# --- batched bookkeeping of a fan-out --------------------------------------------------------

def fan_out_store(targets: list[str], url: str = "sqlite://") -> VtnStore:
    """A store with push VENs a, b, c and event e1 (modification 1) reaching `targets`."""
    store = VtnStore(make_engine(url))
    store.create_schema()
    for ven_id in "abc":
        store.save_ven(VenRecord(ven_id=ven_id, ven_name=f"n-{ven_id}",
                                 status=VenStatus.REGISTERED, registration_id=f"r-{ven_id}",
                                 created=utcnow()))
    ev = event_from_json(simple_event(), event_id="e1", created=utcnow())
    store.save_event(ev, ["a", "b", "c"])
    store.save_event(dataclasses.replace(ev, modification_number=1), targets)
    return store


def test_batched_distribute_records_match_one_at_a_time(database_url: str) -> None:
    now = utcnow()
    # b was sent an outdated modification, c's delivery was removed (not sent e1 again)
    sent: list[tuple[str, list[tuple[str, int, bool]]]] = [
        ("a", [("e1", 1, True)]), ("b", [("e1", 0, False)]), ("c", [])]
    one, many = fan_out_store(["a", "b"]), fan_out_store(["a", "b"], database_url)
    for ven_id, events in sent:
        one.mark_distributed(ven_id, events, now)
    assert many.mark_distributed_many([(v, events, now) for v, events in sent]) == [None] * 3
    assert many.deliveries_for_event("e1") == one.deliveries_for_event("e1")
    assert [d.ven_id for d in many.deliveries_for_event("e1")] == ["a", "b"]
    for ven_id in "ab":
        assert many.poll_state(ven_id, now) == one.poll_state(ven_id, now)
    assert many.poll_state("b", now).due, "an outdated modification stays owed"
    one.close()
    many.close()


def test_batched_answers_are_all_or_nothing_per_message(database_url: str) -> None:
    now = utcnow()
    store = fan_out_store(["a", "b", "c"], database_url)
    store.mark_distributed_many([(v, [("e1", 1, True)], now) for v in "abc"])
    results = store.record_event_responses_many([
        ("a", [("e1", 1, OptType.OPT_IN, 200)], now),
        ("b", [("e1", 1, OptType.OPT_OUT, 200), ("not-b's", 0, OptType.OPT_IN, 200)], now),
        ("c", [("e1", 0, OptType.OPT_OUT, 200), ("e1", 1, OptType.OPT_IN, 200)], now)])
    assert results == [None, "not-b's", None]
    acked = {d.ven_id: (d.acked_mod, d.opt_type) for d in store.deliveries_for_event("e1")}
    assert acked == {"a": (1, OptType.OPT_IN), "b": (-1, None), "c": (1, OptType.OPT_IN)}
    assert not store.poll_state("a", now).due and store.poll_state("b", now).due
    store.close()


async def test_batch_runs_concurrent_items_together_and_fails_them_together() -> None:
    runs: list[list[int]] = []

    def double(items: list[int]) -> list[int]:
        runs.append(items)
        if 0 in items:
            raise ValueError("no zeros")
        return [2 * i for i in items]

    batch = Batch(double, size=3, wait=0.001)
    assert await asyncio.gather(*(batch(i) for i in (1, 2, 3, 4))) == [2, 4, 6, 8]
    assert runs == [[1, 2, 3], [4]]  # a full batch runs at once, the rest after the wait
    results = await asyncio.gather(batch(5), batch(0), return_exceptions=True)
    assert all(isinstance(r, ValueError) for r in results)
