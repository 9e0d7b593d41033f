"""The VTN-role campaign's rules across messages (`campaign.vtn_rules`), one passing and one
violating input each; the hooks (`campaign.hooks`) and the TLS probe (`campaign.asven_tls`)."""

from __future__ import annotations

import asyncio
import dataclasses
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from campaign import asven_tls as tls
from campaign import vtn_rules as rules
from campaign.hooks import (
    ApiHook,
    EventRequest,
    PromptHook,
    SignalRequest,
    event_json,
    hook_from_spec,
)
from campaign.model import Failure
from oadr.messages import (
    ActivePeriod,
    CreatedOpt,
    DistributeEvent,
    Event,
    EventSignal,
    EventStatus,
    Interval,
    ReportDescription,
    ReportRequest,
    Response,
    ResponseMessage,
    SpecifierPayload,
    Target,
)
from tests.certs import Pki, write_pki
from tests.vtnkit import running_vtn
from vtn.eventjson import event_from_json

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
MC = "http://dso.example/programs/flex"


def event(event_id: str = "ev-1", *, mod: int = 0, status: EventStatus = EventStatus.FAR,
          start: datetime = NOW + HOUR, duration: timedelta = HOUR, market: str = MC,
          payload: float = 1.0, **kw: object) -> Event:
    return Event(event_id=event_id, modification_number=mod, market_context=market,
                 created=NOW, status=status,
                 active_period=ActivePeriod(dtstart=start, duration=duration),
                 signals=(EventSignal(signal_name="SIMPLE", signal_type="level", signal_id="s",
                                      intervals=(Interval(uid=0, duration=duration,
                                                          payload=payload),)),),
                 targets=Target(ven_ids=("ven-1",)), **kw)  # type: ignore[arg-type]


def distribute(*events: Event) -> DistributeEvent:
    return DistributeEvent(request_id="r-1", vtn_id="VTN", events=events)


def rule_ids(failures: list[Failure]) -> set[str]:
    return {f.rule for f in failures}


# --- events -------------------------------------------------------------------------------

def test_modification_increases() -> None:
    before = event(mod=1)
    assert rules.modification_increases(before, distribute(event(mod=2))) == []
    assert rule_ids(rules.modification_increases(before, distribute(event(mod=1)))) == \
        {"vtn.modification-increases"}
    assert rule_ids(rules.modification_increases(before, distribute())) == \
        {"vtn.modification-increases"}


def test_cancellation_resent() -> None:
    before = event(mod=0)
    assert rules.cancellation_resent(
        before, distribute(event(mod=1, status=EventStatus.CANCELLED))) == []
    assert rule_ids(rules.cancellation_resent(before, distribute(event(mod=1)))) == \
        {"vtn.cancel-resent"}
    assert rule_ids(rules.cancellation_resent(
        before, distribute(event(mod=0, status=EventStatus.CANCELLED)))) == \
        {"vtn.modification-increases"}
    assert rule_ids(rules.cancellation_resent(before, distribute())) == {"vtn.cancel-resent"}


def test_cancelled_stays_cancelled() -> None:
    other = event("ev-2")
    assert rules.cancelled_stays_cancelled(["ev-1"], distribute(other)) == []
    assert rules.cancelled_stays_cancelled(
        ["ev-1"], distribute(event(status=EventStatus.CANCELLED), other)) == []
    assert rule_ids(rules.cancelled_stays_cancelled(["ev-1"], distribute(event(), other))) == \
        {"vtn.cancelled-stays"}


def test_events_present() -> None:
    active = event("a", status=EventStatus.ACTIVE, start=NOW - HOUR / 2)
    ended = event("b", status=EventStatus.ACTIVE, start=NOW - 2 * HOUR)
    new = event("c", start=NOW + 3 * HOUR)
    previous = distribute(active, ended)
    assert rules.events_present(previous, distribute(active, new), NOW) == []
    assert rules.events_present(previous, distribute(new), NOW, removed=["a"]) == []
    assert rule_ids(rules.events_present(previous, distribute(new), NOW)) == \
        {"vtn.events-present"}


def test_no_overlap() -> None:
    first = event("a")
    later = event("b", start=NOW + 2 * HOUR)
    elsewhere = event("c", market="http://dso.example/programs/other")
    assert rules.no_overlap(distribute(first, later, elsewhere)) == []
    assert rules.no_overlap(distribute(first, event("d", status=EventStatus.CANCELLED))) == []
    assert rule_ids(rules.no_overlap(distribute(first, event("d", start=NOW + HOUR * 1.5)))) == \
        {"vtn.no-overlap"}
    open_ended = event("e", start=NOW + 5 * HOUR, duration=timedelta(0))
    assert rule_ids(rules.no_overlap(distribute(open_ended, event("f", start=NOW + 9 * HOUR)))) \
        == {"vtn.no-overlap"}


def test_redelivery_and_ack_recorded() -> None:
    again = [distribute(event(mod=0))]
    assert rules.redelivered("ev-1", 0, again) == []
    assert rule_ids(rules.redelivered("ev-1", 0, [distribute(event("other"))])) == \
        {"vtn.redelivery"}
    assert rules.not_redelivered("ev-1", 0, [distribute(event(mod=1))]) == []
    assert rule_ids(rules.not_redelivered("ev-1", 0, again)) == {"vtn.ack-recorded"}


BASE_REQUEST = EventRequest(
    ven_id="ven-1", market_context=MC, start=NOW + HOUR,
    signals=(SignalRequest(name="SIMPLE", type="level", intervals=((HOUR, 1.0),)),))


def request(**changes: Any) -> EventRequest:
    return dataclasses.replace(BASE_REQUEST, **changes)


def test_event_fidelity() -> None:
    wanted = request(priority=2, start_after=timedelta(minutes=5))
    carried = event(priority=2)
    carried = dataclasses.replace(carried, active_period=dataclasses.replace(
        carried.active_period, start_after=timedelta(minutes=5)))
    assert rules.event_fidelity(wanted, carried) == []
    failures = rules.event_fidelity(wanted, event(priority=0, payload=2.0))
    assert rule_ids(failures) == {"vtn.event-fidelity"}
    assert len(failures) == 3  # priority, tolerance, the signal's payload


# --- registration and answers -------------------------------------------------------------

def test_unregistered_refused() -> None:
    refusal = ResponseMessage(response=Response(code=463, description="not registered"))
    assert rules.unregistered_refused(200, refusal) == []
    assert rules.unregistered_refused(403, None) == []
    ok = ResponseMessage(response=Response(code=200))
    assert rule_ids(rules.unregistered_refused(200, ok)) == {"vtn.unregistered-463"}
    assert rule_ids(rules.unregistered_refused(200, distribute())) == {"vtn.unregistered-463"}
    assert rule_ids(rules.unregistered_refused(200, None)) == {"vtn.unregistered-463"}
    assert rule_ids(rules.unregistered_refused(500, None)) == {"vtn.unregistered-463"}


def test_answered() -> None:
    good = CreatedOpt(response=Response(code=200, request_id="q-1"), opt_id="o")
    assert rules.answered(good, CreatedOpt, "q-1") == []
    assert rule_ids(rules.answered(good, CreatedOpt, "q-2")) == {"vtn.answer-request-id"}
    refused = CreatedOpt(response=Response(code=454, request_id="q-1"), opt_id="o")
    assert rule_ids(rules.answered(refused, CreatedOpt, "q-1")) == {"vtn.answer-code"}
    assert rule_ids(rules.answered(None, CreatedOpt, "q-1")) == {"vtn.answer-type"}
    assert rule_ids(rules.answered(ResponseMessage(response=Response()), CreatedOpt, None)) == \
        {"vtn.answer-type"}


def test_queue_drained() -> None:
    empty = ResponseMessage(response=Response())
    assert rules.queue_drained([distribute(), empty], [DistributeEvent]) == []
    assert rule_ids(rules.queue_drained([empty], [DistributeEvent])) == {"vtn.queue-drained"}
    assert rule_ids(rules.queue_drained([distribute()] * 10, [DistributeEvent])) == \
        {"vtn.queue-drained"}


# --- reports ------------------------------------------------------------------------------

OFFERED = {"spec-usage": {"usage": ReportDescription(
    r_id="usage", report_type="usage", reading_type="Direct Read",
    min_period=timedelta(seconds=90))},
    "spec-history": {"history": ReportDescription(
        r_id="history", report_type="usage", reading_type="Direct Read")}}
NAMES = {"spec-usage": "METADATA_TELEMETRY_USAGE", "spec-history": "METADATA_HISTORY_USAGE"}


def report_request(spec: str, rid: str, granularity: timedelta,
                   back: timedelta | None = None) -> ReportRequest:
    return ReportRequest(report_request_id="rr", report_specifier_id=spec,
                         granularity=granularity,
                         report_back_duration=granularity if back is None else back,
                         specifiers=(SpecifierPayload(r_id=rid),))


def test_granularity_respected() -> None:
    fine = [report_request("spec-usage", "usage", timedelta(seconds=90)),
            report_request("spec-history", "history", timedelta(0))]
    assert rules.granularity_respected(fine, OFFERED, NAMES) == []
    too_fine = [report_request("spec-usage", "usage", timedelta(seconds=10))]
    assert rule_ids(rules.granularity_respected(too_fine, OFFERED, NAMES)) == \
        {"vtn.granularity"}


def test_history_requests_have_zero_granularity() -> None:
    bad = [report_request("spec-history", "history", timedelta(seconds=60))]
    assert rule_ids(rules.granularity_respected(bad, OFFERED, NAMES)) == {"vtn.history-request"}


def test_requests_name_offered_reports() -> None:
    unknown = [report_request("spec-nope", "usage", timedelta(seconds=90)),
               report_request("spec-usage", "voltage", timedelta(seconds=90))]
    failures = rules.granularity_respected(unknown, OFFERED, NAMES)
    assert [f.rule for f in failures] == ["vtn.report-request-known"] * 2


# --- hooks --------------------------------------------------------------------------------

def test_event_json_is_what_our_operator_api_reads() -> None:
    wanted = request(priority=3, start_after=timedelta(minutes=5), ramp_up=timedelta(minutes=10))
    ev = event_from_json(event_json(wanted), event_id="x", created=NOW)
    assert rules.event_fidelity(wanted, dataclasses.replace(ev, targets=Target())) == []
    assert ev.targets.ven_ids == ("ven-1",)


async def test_api_hook_drives_our_vtn_and_reports_refusals() -> None:
    from campaign.hooks import HookRefused

    async with running_vtn() as vtn:
        hook = ApiHook(vtn.url + "/api")
        start = datetime.now(UTC) + HOUR
        event_id = await hook.create(request(start=start))
        assert vtn.store.get_event(event_id) is not None
        await hook.modify(event_id, request(start=start, priority=1))
        rec = vtn.store.get_event(event_id)
        assert rec is not None and rec.event.modification_number == 1 and rec.event.priority == 1
        await hook.cancel(event_id)
        rec = vtn.store.get_event(event_id)
        assert rec is not None and rec.cancelled
        with pytest.raises(HookRefused):  # an event already over is refused by the VTN
            await hook.create(request(start=datetime.now(UTC) - 2 * HOUR))


async def test_prompt_hook_asks_and_reads_the_event_id() -> None:
    shown: list[str] = []
    answers = iter(["", "  EV-42 ", ""])
    hook = PromptHook(read=lambda prompt: next(answers), write=shown.append)
    assert await hook.create(request(priority=4)) == "EV-42"
    assert "venID ven-1" in shown[0] and "priority 4" in shown[0] and len(shown) == 2
    await hook.cancel("EV-42")
    assert "Cancel event EV-42" in shown[-1]


def test_hook_from_spec() -> None:
    api = hook_from_spec("api:http://127.0.0.1:8080/api#s3cret")
    assert isinstance(api, ApiHook) and api.headers == {"Authorization": "Bearer s3cret"}
    assert isinstance(hook_from_spec("prompt"), PromptHook)
    assert isinstance(hook_from_spec("python:campaign.hooks:PromptHook"), PromptHook)
    for bad in ("", "api:", "api:ftp://x", "prompt:x", "python:campaign.hooks",
                "python:campaign.hooks:EventRequest", "python:no.such.module:x", "sql:x"):
        with pytest.raises(ValueError):
            hook_from_spec(bad)


# --- TLS probe ----------------------------------------------------------------------------

def test_read_answer() -> None:
    hello = bytes([2]) + (38 + 2 + 1).to_bytes(3, "big") + b"\x03\x03" + bytes(32) + b"\x00" \
        + b"\xc0\x23" + b"\x00"
    record = bytes([22, 3, 3]) + len(hello).to_bytes(2, "big") + hello
    assert tls.read_answer(record) == tls.Answer(True, version=0x0303, suite=0xC023)
    assert not tls.read_answer(bytes([21, 3, 1, 0, 2, 2, 70])).accepted
    assert not tls.read_answer(b"").accepted
    assert not tls.read_answer(b"HTTP/1.1 400 Bad Request\r\n").accepted


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return write_pki(tmp_path_factory.mktemp("pki"))


@asynccontextmanager
async def tls_server(ctx: ssl.SSLContext) -> AsyncIterator[int]:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=ctx)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


def server_ctx(cert: Path, key: Path, ciphers: str, minimum: ssl.TLSVersion) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = minimum
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(ciphers)
    ctx.load_cert_chain(cert, key)
    return ctx


async def test_probe_sees_the_suites_a_server_offers(pki: Pki) -> None:
    rsa_only = server_ctx(pki.vtn_rsa.cert, pki.vtn_rsa.key,
                          "ECDHE-ECDSA-AES128-SHA256:AES128-SHA256", ssl.TLSVersion.TLSv1_2)
    async with tls_server(rsa_only) as port:
        rsa = await tls.probe("127.0.0.1", port, tls.Version.TLS1_2, (tls.RSA_AES128_SHA256,))
        ecc = await tls.probe("127.0.0.1", port, tls.Version.TLS1_2,
                              (tls.ECDHE_ECDSA_AES128_SHA256,))
        legacy = await tls.probe("127.0.0.1", port, tls.Version.TLS1_0, tls.LEGACY_SUITES)
    assert rsa == tls.Answer(True, version=tls.Version.TLS1_2, suite=tls.RSA_AES128_SHA256)
    assert not ecc.accepted  # no ECC certificate: no ECDSA suite
    assert not legacy.accepted


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1 is deprecated")
async def test_probe_sees_a_server_accepting_tls_1_0(pki: Pki) -> None:
    lax = server_ctx(pki.vtn_rsa.cert, pki.vtn_rsa.key, "ALL:@SECLEVEL=0", ssl.TLSVersion.TLSv1)
    async with tls_server(lax) as port:
        answer = await tls.probe("127.0.0.1", port, tls.Version.TLS1_0, tls.LEGACY_SUITES)
    assert answer.accepted and answer.version == tls.Version.TLS1_0
