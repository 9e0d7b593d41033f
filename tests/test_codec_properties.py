"""Properties of the codec over generated messages: what we serialize is XSD-valid, conformant
where the rules apply to one message, and parses back to the very same message."""

from __future__ import annotations

import string
from datetime import datetime, timedelta, timezone

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from oadr import codec, conformance
from oadr import events as ev_time
from oadr.messages import (
    ActivePeriod, Availability, CancelOpt, CreatedEvent, CreateOpt, DistributeEvent, Event,
    EventResponse, EventSignal, EventStatus, Interval, ItemBase, OptReason, OptType, Poll,
    Response, ResponseRequired, Target,
)

ids = st.text(alphabet=string.ascii_letters + string.digits + "-_.", min_size=1, max_size=20)
words = st.text(alphabet=string.ascii_letters + string.digits + " -", min_size=1, max_size=30
                ).map(str.strip).filter(bool)
moments = st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2040, 1, 1),
                       timezones=st.just(timezone.utc))
seconds = st.integers(min_value=1, max_value=86_400).map(lambda s: timedelta(seconds=s))
payloads = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False).map(lambda f: round(f, 3))
targets = st.builds(Target, ven_ids=st.lists(ids, max_size=1).map(tuple),
                    group_ids=st.lists(ids, max_size=2).map(tuple),
                    resource_ids=st.lists(ids, max_size=2).map(tuple),
                    party_ids=st.lists(ids, max_size=1).map(tuple))
power = st.builds(ItemBase, kind=st.just("powerReal"), description=st.just("RealPower"),
                  units=st.just("W"), si_scale=st.sampled_from(["none", "k", "M"]),
                  hertz=st.just(50.0), voltage=st.just(230.0), ac=st.just(True))


@st.composite
def signals(draw: st.DrawFn, index: int) -> EventSignal:
    kind = draw(st.sampled_from(["SIMPLE", "LOAD_CONTROL", "LOAD_DISPATCH"]))
    n = draw(st.integers(min_value=1, max_value=6))
    values = (st.sampled_from([0.0, 1.0, 2.0, 3.0]) if kind == "SIMPLE"
              else st.floats(min_value=0, max_value=1).map(lambda f: round(f, 2))
              if kind == "LOAD_CONTROL" else payloads)
    intervals = tuple(Interval(uid=i, duration=draw(seconds), payload=draw(values))
                      for i in range(n))
    signal_type = {"SIMPLE": "level", "LOAD_CONTROL": "x-loadControlCapacity",
                   "LOAD_DISPATCH": "setpoint"}[kind]
    return EventSignal(signal_name=kind, signal_type=signal_type, signal_id=f"s{index}",
                       intervals=intervals, current_value=0.0,
                       item_base=draw(power) if kind == "LOAD_DISPATCH" else None)


@st.composite
def events(draw: st.DrawFn) -> Event:
    sigs = tuple(draw(signals(i)) for i in range(draw(st.integers(min_value=1, max_value=3))))
    # every signal spans the active period (a certification rule), so align their totals
    total = sum((iv.duration for iv in sigs[0].intervals), timedelta(0))
    sigs = (sigs[0],) + tuple(_stretch(s, total) for s in sigs[1:])
    return Event(
        event_id=draw(ids), modification_number=draw(st.integers(0, 1000)),
        market_context="http://dso.example/" + draw(ids), created=draw(moments),
        status=draw(st.sampled_from([EventStatus.FAR, EventStatus.CANCELLED])),
        active_period=ActivePeriod(
            dtstart=draw(moments), duration=total,
            start_after=draw(st.none() | seconds), ramp_up=draw(st.none() | seconds),
            recovery=draw(st.none() | seconds), notification=draw(st.none() | seconds)),
        signals=sigs, targets=draw(targets), priority=draw(st.integers(0, 10)),
        test_event=draw(st.booleans()),
        response_required=draw(st.sampled_from(list(ResponseRequired))),
        vtn_comment=draw(st.none() | words),
    )


def _stretch(signal: EventSignal, total: timedelta) -> EventSignal:
    head = signal.intervals[:-1]
    rest = total - sum((iv.duration for iv in head), timedelta(0))
    if rest <= timedelta(0):
        return EventSignal(signal_name=signal.signal_name, signal_type=signal.signal_type,
                           signal_id=signal.signal_id, current_value=0.0,
                           item_base=signal.item_base,
                           intervals=(Interval(uid=0, duration=total,
                                               payload=signal.intervals[0].payload),))
    last = signal.intervals[-1]
    return EventSignal(signal_name=signal.signal_name, signal_type=signal.signal_type,
                       signal_id=signal.signal_id, current_value=0.0, item_base=signal.item_base,
                       intervals=head + (Interval(uid=last.uid, duration=rest,
                                                  payload=last.payload),))


distributes = st.builds(DistributeEvent, request_id=ids, vtn_id=ids.map(str.upper),
                        events=st.lists(events(), max_size=3, unique_by=lambda e: e.event_id)
                        .map(tuple))
created_events = st.builds(
    CreatedEvent, response=st.builds(Response, code=st.just(200), description=st.just("OK"),
                                     request_id=ids),
    ven_id=ids, event_responses=st.lists(st.builds(
        EventResponse, code=st.just(200), description=st.just("OK"), request_id=ids,
        event_id=ids, modification_number=st.integers(0, 99),
        opt_type=st.sampled_from(list(OptType))), max_size=4).map(tuple))
availability_opts = st.builds(
    CreateOpt, request_id=ids, opt_id=ids, opt_type=st.sampled_from(list(OptType)),
    opt_reason=st.sampled_from(list(OptReason)), ven_id=ids, created=moments,
    market_context=st.just("http://dso.example/flex"),
    availability=st.lists(st.builds(Availability, dtstart=moments, duration=seconds),
                          min_size=1, max_size=3).map(tuple))
simple_messages = st.one_of(
    st.builds(Poll, ven_id=ids),
    st.builds(CancelOpt, request_id=ids, opt_id=ids, ven_id=ids),
)

MESSAGES = st.one_of(distributes, created_events, availability_opts, simple_messages)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(MESSAGES)
def test_serialize_then_parse_is_identity(msg: object) -> None:
    assert codec.parse(codec.serialize(msg)).message == msg  # type: ignore[arg-type]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(distributes, moments)
def test_distributes_rendered_at_any_instant_conform(msg: DistributeEvent, now: datetime) -> None:
    """What the VTN sends (events rendered at `now`, ordered) passes every certification rule
    except freshness of createdDateTime, which depends on when it is sent."""
    rendered = DistributeEvent(request_id=msg.request_id, vtn_id=msg.vtn_id,
                               events=tuple(ev_time.ordered(ev_time.at(e, now)
                                                            for e in msg.events)))
    problems = [v for v in conformance.check(codec.serialize(rendered), now=now)
                if v.rule != "event.created-date-time"]
    assert problems == []
