"""Hostile and wrong input against a running VTN: refused cleanly, nothing half-written.

Two tables. `BAD_MESSAGES` POSTs bytes to the OpenADR endpoints; for each case the answer is an
HTTP 4xx or an oadrResponse with the expected code (never a 5xx), the store is exactly as before,
and a good VEN still polls successfully afterwards. `BAD_EVENTS` posts invalid event bodies to
the operator API: 400 naming the field, and no event stored.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import aiohttp
import pytest
from lxml import etree

from oadr import codec
from oadr.messages import (
    CancelOpt, CreatedEvent, CreateOpt, CreatePartyRegistration, DistributeEvent, EventResponse,
    OptReason, OptType, Poll, Report, ReportInterval, ReportPoint, Response, ResponseMessage,
    UpdateReport,
)
from oadr.schema import EI, OADR
from oadr.signing import SigningKey

from tests.certs import Pki, write_pki
from tests.rawven import RawVen, code, new_id, telemetry_metadata
from tests.vtnkit import Vtn, api, running_vtn, simple_event, utcnow

POLL = timedelta(seconds=1)
SMALL_LIMIT = 4096  # bytes: max_body_bytes for the over-the-limit case


# --- the world every bad request lands in -------------------------------------------------

@dataclass
class World:
    """Two registered VENs, each with an acknowledged event, a report request and an opt."""

    vtn: Vtn
    good: RawVen
    other: RawVen
    events: dict[str, str]  # VEN name -> its event ID
    requests: dict[str, str]  # VEN name -> its TELEMETRY_USAGE reportRequestID
    opts: dict[str, str]  # VEN name -> its optID


async def build_world(vtn: Vtn, keys: tuple[SigningKey | None, SigningKey | None]) -> World:
    good, other = RawVen(vtn, "good", key=keys[0]), RawVen(vtn, "other", key=keys[1])
    events, requests, opts = {}, {}, {}
    for ven in (good, other):
        await ven.register()
        assert ven.ven_id is not None
        status, ev = await api(vtn, "POST", "/api/events", simple_event(
            targets={"ven_ids": [ven.ven_id]}, start_in=timedelta(minutes=5)))
        assert status == 201, ev
        events[ven.name] = ev["event_id"]
        distribute = await ven.poll()
        assert isinstance(distribute, DistributeEvent)
        await ven.created_event(distribute)
        registered = await ven.register_reports(*telemetry_metadata(timedelta(seconds=10)))
        requests[ven.name] = next(r.report_request_id for r in registered.report_requests
                                  if r.report_specifier_id == "spec-usage")
        opts[ven.name] = new_id()
        await ven.send(CreateOpt(request_id=new_id(), opt_id=opts[ven.name], ven_id=ven.ven_id,
                                 opt_type=OptType.OPT_OUT, opt_reason=OptReason.ECONOMIC,
                                 created=utcnow(), event_id=ev["event_id"],
                                 modification_number=0))
    return World(vtn=vtn, good=good, other=other, events=events, requests=requests, opts=opts)


def snapshot(vtn: Vtn) -> dict[str, Any]:
    """Everything a request could write: VENs, events, deliveries, outbox, reports, opts."""
    store = vtn.store
    vens = store.list_vens()
    return {
        "vens": vens,
        "events": store.list_events(),
        "deliveries": {e.event.event_id: store.deliveries_for_event(e.event.event_id)
                       for e in store.list_events()},
        "outbox": {v.ven_id: store.pending_outbox(v.ven_id) for v in vens},
        "metadata": {v.ven_id: store.metadata(v.ven_id) for v in vens},
        "requests": {v.ven_id: store.report_requests(v.ven_id) for v in vens},
        "values": {v.ven_id: store.report_values(v.ven_id) for v in vens},
        "opts": store.list_opts(),
    }


# --- bodies -------------------------------------------------------------------------------

def poll(w: World) -> bytes:
    assert w.good.ven_id is not None
    return w.good.encode(Poll(ven_id=w.good.ven_id))


def edited(data: bytes, edit: Callable[[etree._Element], None]) -> bytes:
    """`data` (an unsigned payload) with its oadr payload element changed by `edit`."""
    root = etree.fromstring(data)
    edit(root.find(f"{{{OADR}}}oadrSignedObject")[0])
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


def unsigned_poll(w: World) -> bytes:
    assert w.good.ven_id is not None
    return codec.serialize(Poll(ven_id=w.good.ven_id))


def with_doctype(doctype: str, ven_id_text: str) -> Callable[[World], bytes]:
    def body(w: World) -> bytes:
        xml = unsigned_poll(w).decode().split("\n", 1)[1]  # drop the XML declaration
        xml = xml.replace(f">{w.good.ven_id}<", f">{ven_id_text}<")
        return f'<?xml version="1.0"?>\n{doctype}\n{xml}'.encode()
    return body


LOLS = "".join(f'<!ENTITY lol{i} "{f"&lol{i - 1};" * 10}">' for i in range(1, 10))
BILLION_LAUGHS = f'<!DOCTYPE oadrPayload [<!ENTITY lol0 "lol">{LOLS}]>'
XXE_FILE = '<!DOCTYPE oadrPayload [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
XXE_DTD = '<!DOCTYPE oadrPayload SYSTEM "http://127.0.0.1:9/evil.dtd">'


def nested(depth: int) -> Callable[[World], bytes]:
    def body(w: World) -> bytes:
        xml = unsigned_poll(w).decode()
        deep = "<x>" * depth + "</x>" * depth
        return xml.replace("</oadr:oadrPoll>", deep + "</oadr:oadrPoll>").encode()
    return body


def padded_poll(size: int) -> Callable[[World], bytes]:
    def body(w: World) -> bytes:
        data = unsigned_poll(w)
        return data + b" " * (size - len(data))
    return body


def schema_invalid_poll(w: World) -> bytes:
    def drop_ven_id(payload: etree._Element) -> None:
        payload.remove(payload.find(f"{{{EI}}}venID"))
    return edited(unsigned_poll(w), drop_ven_id)


def reregister_wrong_registration_id(w: World) -> bytes:
    return w.good.encode(CreatePartyRegistration(
        request_id=new_id(), ven_name="good", ven_id=w.good.ven_id, registration_id="not-it"))


def created_event(*answers: tuple[str, int]) -> Callable[[World], bytes]:
    """oadrCreatedEvent from the good VEN: optOut for each (VEN name whose event, mod)."""
    def body(w: World) -> bytes:
        assert w.good.ven_id is not None
        responses = tuple(EventResponse(code=200, description="OK", request_id="r1",
                                        event_id=w.events[owner], modification_number=mod,
                                        opt_type=OptType.OPT_OUT) for owner, mod in answers)
        return w.good.encode(CreatedEvent(
            response=Response(code=200, description="OK", request_id="r1"),
            ven_id=w.good.ven_id, event_responses=responses))
    return body


def created_event_empty_element(w: World) -> bytes:
    def add_empty(payload: etree._Element) -> None:
        body = payload[0]  # pyld:eiCreatedEvent: eiResponse, eventResponses?, venID
        body.insert(1, etree.Element(f"{{{EI}}}eventResponses"))
    return edited(created_event()(w), add_empty)


def update_report(*owners: str | None) -> Callable[[World], bytes]:
    """oadrUpdateReport from the good VEN, one report per owner's request (None: unknown)."""
    def body(w: World) -> bytes:
        assert w.good.ven_id is not None
        now = utcnow()
        reports = tuple(Report(
            report_specifier_id="spec-usage", report_name="TELEMETRY_USAGE", created=now,
            report_request_id=w.requests[owner] if owner else "no-such-request",
            report_id=new_id(), dtstart=now, duration=timedelta(minutes=1),
            intervals=(ReportInterval(dtstart=now, duration=timedelta(minutes=1), uid=0,
                                      points=(ReportPoint(r_id="usage-1", value=4.2),)),))
            for owner in owners)
        return w.good.encode(UpdateReport(request_id=new_id(), ven_id=w.good.ven_id,
                                          reports=reports))
    return body


def cancel_opt(owner: str | None) -> Callable[[World], bytes]:
    def body(w: World) -> bytes:
        assert w.good.ven_id is not None
        return w.good.encode(CancelOpt(request_id=new_id(), ven_id=w.good.ven_id,
                                       opt_id=w.opts[owner] if owner else "no-such-opt"))
    return body


def opt_on_others_event(w: World) -> bytes:
    assert w.good.ven_id is not None
    return w.good.encode(CreateOpt(
        request_id=new_id(), opt_id=new_id(), ven_id=w.good.ven_id, opt_type=OptType.OPT_OUT,
        opt_reason=OptReason.ECONOMIC, created=utcnow(), event_id=w.events["other"],
        modification_number=0))


def poll_as(who: str) -> Callable[[World], bytes]:
    """An oadrPoll the good VEN signs but that names `who`'s venID."""
    def body(w: World) -> bytes:
        ven_id = {"other": w.other.ven_id, "nobody": "no-such-ven"}[who]
        assert ven_id is not None
        return w.good.encode(Poll(ven_id=ven_id))
    return body


def tampered(w: World) -> bytes:
    """The good VEN's signed poll, its venID changed after signing."""
    assert w.good.ven_id is not None and w.other.ven_id is not None
    return poll(w).replace(w.good.ven_id.encode(), w.other.ven_id.encode())


# --- the table ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Bad:
    body: Callable[[World], bytes]
    service: str = "OadrPoll"
    http: int | None = None  # expected HTTP 4xx status (the request was not readable)
    code: int | None = None  # otherwise: expected OpenADR responseCode (HTTP 200)
    signed: bool = False  # VENs sign; the VTN requires signatures
    limit: int | None = None  # max_body_bytes
    leaks: bytes | None = None  # must not appear in the answer


BAD_MESSAGES = [
    pytest.param(Bad(lambda w: b"", http=400), id="empty-body"),
    pytest.param(Bad(lambda w: b"this is not XML {}", http=400), id="not-xml"),
    pytest.param(Bad(lambda w: poll(w)[: len(poll(w)) // 2], http=400), id="truncated-xml"),
    pytest.param(Bad(with_doctype(BILLION_LAUGHS, "&lol9;"), http=400), id="billion-laughs"),
    pytest.param(Bad(with_doctype(XXE_FILE, "&xxe;"), http=400, leaks=b"root:"),
                 id="xxe-file"),
    pytest.param(Bad(with_doctype(XXE_DTD, "x"), http=400), id="xxe-external-dtd"),
    pytest.param(Bad(padded_poll(SMALL_LIMIT + 1), http=413, limit=SMALL_LIMIT),
                 id="over-configured-limit"),
    pytest.param(Bad(padded_poll(1_048_577), http=413), id="over-default-limit"),
    pytest.param(Bad(nested(100), http=400), id="nested-100-deep"),
    pytest.param(Bad(nested(100_000), http=400), id="nested-100000-deep"),
    pytest.param(Bad(lambda w: b'<?xml version="1.0"?><html xmlns="urn:x"><body/></html>',
                     http=400), id="non-openadr-root"),
    pytest.param(Bad(lambda w: edited(poll(w), lambda p: p.getparent().replace(
        p, etree.Element(f"{{{OADR}}}oadrFooBar"))), http=400), id="unknown-payload"),
    pytest.param(Bad(schema_invalid_poll, code=454), id="schema-invalid-poll"),
    pytest.param(Bad(poll, service="EiEvent", code=453), id="poll-on-EiEvent"),
    pytest.param(Bad(poll_as("nobody"), code=463), id="poll-unknown-ven"),
    pytest.param(Bad(reregister_wrong_registration_id, service="EiRegisterParty", code=452),
                 id="reregister-wrong-registration-id"),
    pytest.param(Bad(created_event(("other", 0)), service="EiEvent", code=452),
                 id="created-event-for-others-event"),
    pytest.param(Bad(created_event(("good", 0), ("other", 0)), service="EiEvent", code=452),
                 id="created-event-own-then-others"),
    pytest.param(Bad(created_event(), service="EiEvent", code=200),
                 id="created-event-no-responses"),
    pytest.param(Bad(created_event_empty_element, service="EiEvent", code=200),
                 id="created-event-empty-responses-element"),
    pytest.param(Bad(update_report(None), service="EiReport", code=452),
                 id="update-report-unknown-request"),
    pytest.param(Bad(update_report("other"), service="EiReport", code=452),
                 id="update-report-others-request"),
    pytest.param(Bad(update_report("good", None), service="EiReport", code=452),
                 id="update-report-known-then-unknown"),
    pytest.param(Bad(cancel_opt(None), service="EiOpt", code=452), id="cancel-opt-unknown"),
    pytest.param(Bad(cancel_opt("other"), service="EiOpt", code=452), id="cancel-opt-others"),
    pytest.param(Bad(opt_on_others_event, service="EiOpt", code=452),
                 id="create-opt-others-event"),
    pytest.param(Bad(unsigned_poll, code=463, signed=True), id="unsigned-to-signing-vtn"),
    pytest.param(Bad(poll_as("other"), code=463, signed=True), id="signed-as-other-ven"),
    pytest.param(Bad(tampered, code=463, signed=True), id="signature-broken"),
]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return write_pki(tmp_path_factory.mktemp("pki"))


@pytest.mark.parametrize("bad", BAD_MESSAGES)
async def test_bad_message_refused_without_side_effects(bad: Bad, pki: Pki) -> None:
    keys: tuple[SigningKey | None, SigningKey | None] = (None, None)
    vtn_key = None
    if bad.signed:
        keys = (SigningKey.load(pki.ven_rsa.cert_pem, pki.ven_rsa.key_pem),
                SigningKey.load(pki.ven_ecc.cert_pem, pki.ven_ecc.key_pem))
        vtn_key = SigningKey.load(pki.vtn_rsa.cert_pem, pki.vtn_rsa.key_pem)
    async with running_vtn(poll_freq=POLL, require_signatures=bad.signed, signing_key=vtn_key,
                           max_body_bytes=bad.limit or 1_048_576) as vtn:
        world = await build_world(vtn, keys)
        before = snapshot(vtn)

        reply = await world.good.post(bad.service, bad.body(world))

        if bad.http is not None:
            assert reply.status == bad.http, reply
            assert reply.message is None, reply
        else:
            assert reply.status == 200, reply
            assert isinstance(reply.message, ResponseMessage), reply.message
            assert code(reply.message) == bad.code, reply.message
        if bad.leaks is not None:
            assert bad.leaks not in reply.body
        assert snapshot(vtn) == before
        still = await world.good.poll()
        assert isinstance(still, ResponseMessage) and code(still) == 200, still


# --- the operator API ---------------------------------------------------------------------

def event_body(*edits: Callable[[dict[str, Any]], None], **fields: Any) -> Callable[[str], Any]:
    """A valid SIMPLE event for a VEN, with `fields` set (None removes one), then `edits`."""
    def build(ven_id: str) -> Any:
        body = simple_event(targets={"ven_ids": [ven_id]})
        for key, value in fields.items():
            if value is None:
                del body[key]
            else:
                body[key] = value
        for edit in edits:
            edit(body)
        return body
    return build


def signal(**fields: Any) -> Callable[[dict[str, Any]], None]:
    return lambda body: body["signals"][0].update(fields)


def second_signal(**fields: Any) -> Callable[[dict[str, Any]], None]:
    """Append a copy of the first signal, changed by `fields`."""
    def edit(body: dict[str, Any]) -> None:
        first = body["signals"][0]
        body["signals"].append({**first, "signal_id": "second", **fields})
    return edit


def interval(**fields: Any) -> Callable[[dict[str, Any]], None]:
    return lambda body: body["signals"][0]["intervals"][0].update(fields)


BAD_EVENTS = [
    pytest.param(event_body(market_context=None), "market_context", id="no-market-context"),
    pytest.param(event_body(interval(payload=5)), "signals[0].intervals",
                 id="simple-payload-5"),
    pytest.param(event_body(signal(signal_type="price")), "signals[0].signal_type",
                 id="simple-with-price-type"),
    pytest.param(event_body(second_signal(signal_type="price")), "signals[1].signal_type",
                 id="second-signal-wrong-type"),
    pytest.param(event_body(duration="PT5M"), "signals[0].intervals", id="intervals-not-duration"),
    pytest.param(event_body(duration="-PT10M"), "duration", id="negative-duration"),
    pytest.param(event_body(interval(duration="-PT10M")), "signals[0].intervals[0].duration",
                 id="negative-interval-duration"),
    pytest.param(event_body(response_required="sometimes"), "response_required",
                 id="unknown-response-required"),
    pytest.param(lambda ven_id: b"{not json", "body", id="not-json"),
    pytest.param(event_body(dtstart=(utcnow() - timedelta(hours=1)).isoformat()), "dtstart",
                 id="already-over"),
    pytest.param(event_body(signal(signal_name="ELECTRICITY_PRICE", signal_type="price")),
                 "signals[0].item_base", id="price-without-currency"),
    pytest.param(event_body(signal(
        signal_name="ELECTRICITY_PRICE", signal_type="price",
        item_base={"kind": "powerReal", "description": "RealPower", "units": "W"})),
        "signals[0].item_base", id="price-in-watts"),
]


@pytest.mark.parametrize(("build", "field"), BAD_EVENTS)
async def test_invalid_event_refused_naming_the_field(
        build: Callable[[str], Any], field: str) -> None:
    async with running_vtn(poll_freq=POLL) as vtn:
        ven = RawVen(vtn, "target")
        await ven.register()
        assert ven.ven_id is not None
        body = build(ven.ven_id)
        async with aiohttp.ClientSession() as session:
            async with session.post(
                    vtn.url + "/api/events", headers={"Content-Type": "application/json"},
                    **({"data": body} if isinstance(body, bytes) else {"json": body})) as resp:
                status, out = resp.status, await resp.json()
        assert status == 400, out
        assert out["field"] == field, out
        assert vtn.store.list_events() == []
        assert not vtn.store.poll_state(ven.ven_id, utcnow()).due
        reply = await ven.poll()
        assert isinstance(reply, ResponseMessage) and code(reply) == 200, reply

