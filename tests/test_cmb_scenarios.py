"""The CMB scenario suite in quick mode: a small fleet's normal day raises no alert and no
rejection, every attack injected into it is caught, most within two simulated minutes; the
normal day's correlation is real (without the tariff or the dispatched window the monitors
would alarm), and the override's capping time follows the DCC round trip."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterator
from datetime import timedelta

import pytest

from bench.cmb_scenarios import (
    DCC_ROUND_TRIP,
    DETECT_TARGET,
    Day,
    FleetSpec,
    Kind,
    Outcome,
    capping_time,
    evaluate,
    inject,
    monitor_config,
    normal_day,
    parse_args,
    report,
    scenario,
)
from policies.cmb_monitors import MonitorConfig
from vtn.cmb.records import Tariff

# Half-hourly prognoses (a GB settlement period): the monitor compares like with like.
OPTS = parse_args(["--devices", "90", "--normal-days", "1", "--forecast-draws", "2"])
SPEC = FleetSpec(aggregators=OPTS.aggregators, devices=OPTS.devices, areas=OPTS.areas)
SEED = 11
FAST = (Kind.COMPROMISE, Kind.COMPROMISE_AT_BOUNDARY, Kind.FIRMWARE_FLIP, Kind.REPLAY,
        Kind.CAP_EXCEEDED)


@pytest.fixture(scope="module")
def day() -> Day:
    return normal_day(SPEC, SEED, forecast_draws=OPTS.forecast_draws,
                      prognosis_step=timedelta(minutes=OPTS.prognosis_minutes))


@pytest.fixture(scope="module")
def config(day: Day) -> MonitorConfig:
    return monitor_config(day.registry, cap_share=OPTS.cap_share,
                          headroom_share=OPTS.headroom_share)


@pytest.fixture(scope="module")
def outcomes() -> Iterator[dict[Kind, Outcome]]:
    yield {k: scenario(OPTS, SPEC, SEED, k) for k in Kind}


def test_a_normal_day_raises_no_alert_and_no_rejection(day: Day, config: MonitorConfig) -> None:
    assert len(day.submissions) > SPEC.aggregators * SPEC.devices  # more than the day-ahead
    assert evaluate(day, config) == []


def test_the_generator_repeats_itself_by_seed(day: Day) -> None:
    again = normal_day(SPEC, SEED, forecast_draws=OPTS.forecast_draws,
                       prognosis_step=timedelta(minutes=OPTS.prognosis_minutes))
    other = normal_day(SPEC, SEED + 1, forecast_draws=OPTS.forecast_draws)
    assert again.submissions == day.submissions and again.prognoses == day.prognoses
    assert other.submissions != day.submissions


def test_without_the_tariff_price_switching_alarms(day: Day, config: MonitorConfig) -> None:
    unknown = dataclasses.replace(day, tariff=Tariff(tariff_id="unknown", boundaries=()))
    monitors = {f.what for f in evaluate(unknown, config)}
    assert "monitor:same_minute_share" in monitors


def test_without_the_dispatched_window_the_response_alarms(day: Day,
                                                           config: MonitorConfig) -> None:
    elsewhere = dataclasses.replace(day.window, start=day.window.start + timedelta(days=2),
                                    end=day.window.end + timedelta(days=2))
    found = evaluate(dataclasses.replace(day, window=elsewhere), config)
    assert {f.aggregator for f in found if f.what == "monitor:same_minute_share"} \
        == set(day.window.aggregators)


@pytest.mark.parametrize("kind", list(Kind))
def test_every_attack_is_detected_without_false_alerts(outcomes: dict[Kind, Outcome],
                                                       kind: Kind) -> None:
    o = outcomes[kind]
    assert o.detected, report([o])
    assert o.false_alerts == 0, o.false_examples


@pytest.mark.parametrize("kind", FAST)
def test_fast_attacks_are_detected_within_two_simulated_minutes(
        outcomes: dict[Kind, Outcome], kind: Kind) -> None:
    o = outcomes[kind]
    assert o.detect_s is not None and o.detect_s <= DETECT_TARGET.total_seconds(), report([o])


def test_a_replay_is_refused_inline_so_nothing_needs_capping(
        outcomes: dict[Kind, Outcome]) -> None:
    o = outcomes[Kind.REPLAY]
    assert o.detected_by == "rule:sequence_increasing" and o.detect_s == 0
    assert o.capped_first_s is None


def test_a_compromise_is_capped_one_dcc_round_trip_after_detection(
        outcomes: dict[Kind, Outcome]) -> None:
    o = outcomes[Kind.COMPROMISE]
    assert o.detect_s is not None and o.capped_first_s is not None
    assert o.capped_first_s == o.detect_s + DCC_ROUND_TRIP.total_seconds()
    assert o.effect_s is not None and o.capped_first_s < o.effect_s  # before its plans act
    # every SAPC device at once: the whole fleet within the round trip; 8 in flight: rounds
    assert o.capped_all_s["all"] == o.capped_first_s and o.capped_in_round_trip
    assert o.capped_all_s["8"] == o.detect_s + capping_time(
        o.sapc_devices, concurrency=8, per_minute=None).total_seconds() > o.capped_all_s["all"]


def test_a_synchronous_switch_on_a_tariff_boundary_is_named_by_boundary_spread(
        outcomes: dict[Kind, Outcome]) -> None:
    o = outcomes[Kind.COMPROMISE_AT_BOUNDARY]
    assert "monitor:boundary_spread" in o.caught_by, report([o])


def test_sapc_concurrency_parses_all_and_counts() -> None:
    assert parse_args(["--sapc-concurrency", "all,256,8"]).sapc_concurrency == (None, 256, 8)
    with pytest.raises(SystemExit):
        parse_args(["--sapc-concurrency", "0"])


def test_the_attack_plans_pass_every_inline_rule_but_the_replay(day: Day,
                                                                config: MonitorConfig) -> None:
    for kind in set(Kind) - {Kind.REPLAY}:
        attacked, attack = inject(day, kind, SPEC.names[0], random.Random(kind))
        rejected = [f for f in evaluate(attacked, config, attack) if f.what.startswith("rule:")]
        assert rejected == [], kind


def test_capping_time_follows_concurrency_and_the_throttle() -> None:
    trip = DCC_ROUND_TRIP
    assert capping_time(1, concurrency=8, per_minute=None) == trip
    assert capping_time(17, concurrency=8, per_minute=None) == 3 * trip
    # 5 per rolling minute: the 11th starts two minutes after the 1st
    assert capping_time(11, concurrency=8, per_minute=5) == timedelta(minutes=2) + trip
    assert capping_time(0, concurrency=8, per_minute=None) == timedelta(0)
