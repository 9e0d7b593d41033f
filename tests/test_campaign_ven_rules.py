"""campaign/ven_rules.py: each rule across messages holds on a good input and fires on a bad one."""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from campaign import ven_rules
from campaign.model import Failure
from oadr.messages import (
    CreatedEvent, CreatePartyRegistration, EventResponse, OptType, Report, ReportDescription,
    ReportInterval, ReportPoint, ReportRequest, Response, SpecifierPayload,
)

T0 = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
S = timedelta(seconds=1)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def created(*answers: tuple[str, int], code: int = 200, opt: OptType = OptType.OPT_IN,
            overall: int = 200) -> CreatedEvent:
    return CreatedEvent(
        response=Response(code=overall, request_id="r"), ven_id="ven",
        event_responses=tuple(EventResponse(code=code, description="", request_id="r",
                                            event_id=e, modification_number=m, opt_type=opt)
                              for e, m in answers))


def request(granularity: timedelta = S, back: timedelta = S,
            r_ids: tuple[str, ...] = ("a",)) -> ReportRequest:
    return ReportRequest(report_request_id="rr", report_specifier_id="TELEMETRY_USAGE",
                         granularity=granularity, report_back_duration=back,
                         specifiers=tuple(SpecifierPayload(r_id=r) for r in r_ids))


def update(*points: tuple[float, str], request_id: str = "rr",
           specifier: str = "TELEMETRY_USAGE") -> Report:
    return Report(report_specifier_id=specifier, report_name="TELEMETRY_USAGE", created=T0,
                  report_request_id=request_id, report_id="x", dtstart=at(points[0][0]),
                  intervals=tuple(ReportInterval(dtstart=at(t), duration=S,
                                                 points=(ReportPoint(r_id=r, value=1.0),))
                                  for t, r in points))


def metadata(name: str, *, rate: bool = True) -> Report:
    return Report(report_specifier_id=name, report_name=f"METADATA_{name}", created=T0,
                  descriptions=(ReportDescription(
                      r_id="a", report_type="usage", reading_type="Direct Read",
                      min_period=S if rate else None, max_period=S if rate else None),))


def polls(*spec: tuple[float, bool]) -> list[ven_rules.PollSeen]:
    return [ven_rules.PollSeen(at(t), idle) for t, idle in spec]


PULL = CreatePartyRegistration(request_id="r", ven_name="v")
PUSH = CreatePartyRegistration(request_id="r", ven_name="v", http_pull_model=False,
                               transport_address="http://ven/OpenADR2/Simple/2.0b")

Check = Callable[[], list[Failure]]

# rule id -> (a passing input, a violating input)
CASES: dict[str, tuple[Check, Check]] = {
    "ven.registration-profile": (
        lambda: ven_rules.registration(PULL, push=False),
        lambda: ven_rules.registration(
            CreatePartyRegistration(request_id="r", profile_name="2.0a"), push=False)),
    "ven.registration-transport": (
        lambda: ven_rules.registration(PUSH, push=True),
        lambda: ven_rules.registration(
            CreatePartyRegistration(request_id="r", transport_name="xmpp"), push=False)),
    "ven.registration-pull-model": (
        lambda: ven_rules.registration(PULL, push=False),
        lambda: ven_rules.registration(PULL, push=True)),
    "ven.push-transport-address": (
        lambda: ven_rules.registration(PUSH, push=True),
        lambda: ven_rules.registration(
            CreatePartyRegistration(request_id="r", http_pull_model=False), push=True)),
    "ven.poll-frequency": (
        lambda: ven_rules.poll_frequency(polls((0, True), (0.9, False), (1.0, True), (2, True)),
                                         S, until=at(2.5)),
        lambda: ven_rules.poll_frequency(polls((0, True), (0.2, True)), S, until=at(0.5))),
    "ven.keeps-polling": (
        lambda: ven_rules.poll_frequency(polls((0, True), (1, True)), S, until=at(3.5)),
        lambda: ven_rules.poll_frequency(polls((0, True), (1, True)), S, until=at(4.5))),
    "ven.queue-drained": (
        lambda: ven_rules.queue_drained(["A", "B"], ["A", "B"], drained=True),
        lambda: ven_rules.queue_drained(["A", "B"], ["A"], drained=False)),
    "ven.created-event-modification": (
        lambda: ven_rules.created_event_modification({"e": 1}, [created(("e", 1))]),
        lambda: ven_rules.created_event_modification({"e": 1}, [created(("e", 0))])),
    "ven.one-response-per-event": (
        lambda: ven_rules.one_response_per_event(["e", "f"], [created(("e", 0), ("f", 0))]),
        lambda: ven_rules.one_response_per_event(["e", "f"], [created(("e", 0)),
                                                              created(("e", 0))])),
    "ven.response-required-never": (
        lambda: ven_rules.no_response_when_never(["n"], [created(("e", 0))]),
        lambda: ven_rules.no_response_when_never(["n"], [created(("e", 0), ("n", 0))])),
    "ven.created-event-code": (
        lambda: ven_rules.created_event_codes([created(("e", 0), code=460, opt=OptType.OPT_OUT)],
                                              allowed=frozenset({200, 460})),
        lambda: ven_rules.created_event_codes([created(("e", 0), code=460, opt=OptType.OPT_IN)],
                                              allowed=frozenset({200, 460}))),
    "ven.target-mismatch": (
        lambda: ven_rules.not_opted_in(["e"], [created(("e", 0), opt=OptType.OPT_OUT)]),
        lambda: ven_rules.not_opted_in(["e"], [created(("e", 0))])),
    "ven.implicit-cancel": (
        lambda: ven_rules.implicit_cancel(["gone"], [created(("e", 0))]),
        lambda: ven_rules.implicit_cancel(["gone"], [created(("gone", 0))])),
    "ven.telemetry-offered": (
        lambda: ven_rules.telemetry_offered([metadata("TELEMETRY_STATUS")]),
        lambda: ven_rules.telemetry_offered([metadata("HISTORY_USAGE")])),
    "ven.update-report-rids": (
        lambda: ven_rules.update_matches_request(request(), update((0, "a"))),
        lambda: ven_rules.update_matches_request(request(), update((0, "a"), (0, "b")))),
    "ven.update-report-request": (
        lambda: ven_rules.update_matches_request(request(), update((0, "a"))),
        lambda: ven_rules.update_matches_request(request(), update((0, "a"),
                                                                   specifier="OTHER"))),
    "ven.report-granularity": (
        lambda: ven_rules.report_granularity(request(back=2 * S), [
            (at(2), update((0, "a"), (1, "a"))), (at(4.1), update((2, "a"), (3, "a")))]),
        lambda: ven_rules.report_granularity(request(back=2 * S), [
            (at(2), update((0, "a"), (0.5, "a"))), (at(2.4), update((2, "a")))])),
    "ven.report-cancel": (
        lambda: ven_rules.cancel_stops_updates("rr", at(10), [(at(9), update((8, "a"))),
                                                              (at(10.2), update((9, "a")))],
                                               grace=0.5 * S),
        lambda: ven_rules.cancel_stops_updates("rr", at(10), [(at(12), update((11, "a")))],
                                               grace=0.5 * S)),
}


@pytest.mark.parametrize("rule", sorted(CASES))
def test_rule_holds_on_a_good_input_and_fires_on_a_bad_one(rule: str) -> None:
    good, bad = CASES[rule]
    assert [f for f in good() if f.rule == rule] == []
    fired = [f for f in bad() if f.rule == rule]
    assert fired, f"{rule} did not fire"
    assert all(f.expectation and f.observed for f in fired)


def test_every_rule_id_of_the_module_is_tested() -> None:
    ids = set(re.findall(r'Failure\("(ven\.[a-z-]+)"', inspect.getsource(ven_rules)))
    assert ids == set(CASES)


def test_a_failure_names_what_was_expected_and_what_came() -> None:
    [failure] = ven_rules.created_event_modification({"e": 3}, [created(("e", 2))])
    assert "3" in failure.expectation and "2" in failure.observed


def test_updates_for_other_requests_do_not_count_against_a_cancel() -> None:
    other = update((11, "a"), request_id="another")
    assert ven_rules.cancel_stops_updates("rr", at(10), [(at(12), other)], grace=S) == []


def test_a_poll_answered_with_a_message_may_be_followed_at_once() -> None:
    # draining a queue: the poll after a delivered message is not held to the frequency
    seen = polls((0, False), (0.1, False), (0.2, True), (1.2, True))
    assert ven_rules.poll_frequency(seen, S, until=at(1.5)) == []
