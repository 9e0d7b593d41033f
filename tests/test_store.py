"""The VTN store on SQLite and on a real PostgreSQL, and two VTNs sharing one database."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from openleadr import OpenADRClient

from adrgate.services import make_engine
from oadr.messages import LoadControlState, OptType, ResourceStatus, Target
from vtn.eventjson import event_from_json
from vtn.records import (
    OptRecord, OutboxKind, ReportRequestRecord, ReportValue, VenRecord, VenStatus,
)
from vtn.store import VtnStore

from tests.vtnkit import api, running_vtn, simple_event, utcnow, wait_for


@pytest.fixture
def store(database_url: str) -> Iterator[VtnStore]:
    s = VtnStore(make_engine(database_url))
    s.create_schema()
    yield s
    s.close()


def ven(ven_id: str, **kw: object) -> VenRecord:
    return VenRecord(ven_id=ven_id, ven_name=f"name-{ven_id}", status=VenStatus.REGISTERED,
                     registration_id=f"reg-{ven_id}", created=utcnow(), **kw)  # type: ignore[arg-type]


def test_ven_round_trip_and_lookups(store: VtnStore) -> None:
    rec = ven("v1", fingerprint="AA:BB", groups=("g1",), resources=("r1", "r2"),
              programs=("p",), party_id="party")
    store.save_ven(rec)
    assert store.get_ven("v1") == rec
    assert store.ven_by_name("name-v1") == rec
    assert store.ven_by_registration("reg-v1") == rec
    assert store.ven_by_fingerprint("AA:BB") == rec
    with pytest.raises(Exception):
        store.save_ven(ven("v2").__class__(ven_id="v2", ven_name="name-v1",
                                           status=VenStatus.PROVISIONED))
    assert [v.ven_id for v in store.list_vens()] == ["v1"]


def test_event_delivery_lifecycle(store: VtnStore) -> None:
    now = utcnow()
    store.save_ven(ven("a"))
    store.save_ven(ven("b"))
    ev = event_from_json(simple_event(), event_id="e1", created=now)
    store.save_event(ev, ["a", "b"])
    assert store.get_event("e1").event == ev  # type: ignore[union-attr]
    assert store.poll_state("a", utcnow()).due and store.poll_state("b", utcnow()).due
    store.mark_distributed("a", [("e1", 0, True)], now)
    assert store.poll_state("a", utcnow()).due, "always-response events stay due until acknowledged"
    assert store.record_event_responses("a", [("e1", 0, OptType.OPT_IN, 200)], now) is None
    assert not store.poll_state("a", utcnow()).due
    store.save_event(ev, ["b"])  # retargeted: a gets one more distribute without it
    assert store.poll_state("a", utcnow()).due
    assert [d.ven_id for d in store.deliveries_for_event("e1") if d.removed] == ["a"]
    store.mark_distributed("a", [], now)
    assert [d.ven_id for d in store.deliveries_for_event("e1")] == ["b"]
    assert store.record_event_responses("a", [("e1", 0, OptType.OPT_IN, 200)], now) == "e1"


def test_outbox_resend_and_ack(store: VtnStore) -> None:
    now = utcnow()
    store.save_ven(ven("a"))
    assert not store.poll_state("a", now).outbox
    item = store.enqueue("a", OutboxKind.REREGISTER, "", now)
    assert store.poll_state("a", now).outbox
    assert store.next_outbox("a", now) == item
    store.mark_sent(item.id, now)
    assert store.next_outbox("a", now) is None and not store.poll_state("a", now).outbox
    later = now + timedelta(seconds=1)
    assert store.next_outbox("a", later) is not None, "re-sent when unacked"
    assert store.poll_state("a", later).outbox
    assert store.ack_outbox("a", OutboxKind.REREGISTER, now) == 1
    assert store.next_outbox("a", now + timedelta(days=1)) is None
    assert not store.poll_state("a", now + timedelta(days=1)).outbox


def test_reports_and_opts(store: VtnStore) -> None:
    now = utcnow()
    rq = ReportRequestRecord(report_request_id="rr1", ven_id="a", report_specifier_id="spec",
                             report_name="TELEMETRY_STATUS", granularity_s=10, report_back_s=10,
                             r_ids=("s1",), created=now)
    store.save_report_requests([rq])
    assert store.get_report_request("rr1") == rq
    status = ResourceStatus(online=True, manual_override=False,
                            load_control=LoadControlState(kind="oadrCapacity", current=0.5))
    store.add_report_values([ReportValue(
        ven_id="a", report_request_id="rr1", report_specifier_id="spec", r_id="s1",
        report_name="TELEMETRY_STATUS", dtstart=now, status=status)])
    (got,) = store.report_values("a")
    assert got.status == status and got.dtstart == now
    opt = OptRecord(opt_id="o1", ven_id="a", opt_type=OptType.OPT_OUT, opt_reason="emergency",
                    created=now, availability=((now, 3600.0),), targets=Target(ven_ids=("a",)))
    store.save_opt(opt)
    assert store.get_opt("a", "o1") == opt


def test_poll_times_never_move_backwards(store: VtnStore) -> None:
    """Replicas write the poll times they saw; an older time from one never hides a newer."""
    now = utcnow()
    store.record_polls({"a": now, "b": now - timedelta(seconds=30)})
    store.record_polls({"a": now - timedelta(seconds=5), "b": now})
    assert store.last_polls() == {"a": now, "b": now}
    store.record_polls({})
    assert store.last_polls() == {"a": now, "b": now}


async def test_two_vtns_share_one_database(database_url: str) -> None:
    """An event created on one VTN reaches a VEN that polls the other (one shared state)."""
    async with running_vtn(database_url, poll_freq=timedelta(seconds=1)) as first, \
            running_vtn(database_url, poll_freq=timedelta(seconds=1)) as second:
        client = OpenADRClient(ven_name="ven-shared", vtn_url=second.oadr_url,
                               show_fingerprint=False)
        client.add_handler("on_event", lambda event: "optIn")
        await client.run()
        try:
            status, ev = await api(first, "POST", "/api/events",
                                   simple_event(targets={"ven_ids": [client.ven_id]}))
            assert status == 201, ev
            await wait_for(lambda: [d for d in first.store.deliveries_for_event(ev["event_id"])
                                    if d.acked_mod == 0], what="ack seen by the first VTN")
            await wait_for(lambda: client.ven_id in first.store.last_polls(),
                           what="the poll times the second VTN saw, read by the first")
        finally:
            await client.stop()
