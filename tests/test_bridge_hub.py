"""The battery hub channel: JSON plan and command documents, and the driver against simulated
hubs on loopback (a plan-capable hub and one that takes a command per mode change)."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import random
import socket
from collections.abc import AsyncIterator
from datetime import timedelta

import aiohttp
import pytest
from aiohttp import web
from pydantic import ValidationError

from bridge.channel import (
    ChannelError, CommandBook, Delivery, DeviceUnavailable, Dispatch, Setpoint)
from bridge.hub import Hub, HubCommand, HubDriver, HubPlan, encode_command, encode_plan, wire
from bridge.models import Mode, Plan
from bridge.sim.hub import HubSimulator
from tests.test_bridge_models import BATTERY, T0, plan, step

H = timedelta(hours=1)
ON_PLAN_HUB = dataclasses.replace(BATTERY, address="plan-hub")
ON_COMMAND_HUB = dataclasses.replace(BATTERY, address="command-hub")
# Four steps, three mode changes: charge, charge again, discharge, hold.
DAY = plan(step(Mode.CHARGE, 0, 1, power_kw=2.0, soc_max=0.9),
           step(Mode.CHARGE, 1, 2, power_kw=2.0),
           step(Mode.DISCHARGE, 2, 3, power_kw=3.0, soc_min=0.2), step(Mode.HOLD, 3, 4))


def test_a_plan_document_carries_every_field_of_the_plan() -> None:
    p = plan(step(Mode.CHARGE, 0, 1, power_kw=2.5, soc_min=0.1, soc_max=0.9),
             step(Mode.LIMIT, 1, 2, level=40), step(Mode.BALANCE, 2, 3),
             sequence=4, random_delay=timedelta(seconds=300))
    sent = json.loads(wire(encode_plan(p)))
    assert sent == {
        "plan_id": "p1", "sequence": 4, "device": "bat-1", "random_delay_s": 300,
        "steps": [
            {"mode": "charge", "start": "2026-11-27T17:00:00Z", "end": "2026-11-27T18:00:00Z",
             "power_kw": 2.5, "soc_min": 0.1, "soc_max": 0.9},
            {"mode": "limit", "start": "2026-11-27T18:00:00Z", "end": "2026-11-27T19:00:00Z",
             "level": 40},
            {"mode": "balance", "start": "2026-11-27T19:00:00Z", "end": "2026-11-27T20:00:00Z"}]}
    assert HubPlan.model_validate_json(wire(encode_plan(p))) == encode_plan(p)


def test_a_command_covers_the_run_of_steps_with_the_same_setpoint() -> None:
    first, second = encode_command(DAY, 0), encode_command(DAY, 1)
    assert first == second
    assert json.loads(wire(first)) == {
        "plan_id": "p1", "sequence": 1, "step": 0, "device": "bat-1", "mode": "charge",
        "power_kw": 2.0, "from": "2026-11-27T17:00:00Z", "until": "2026-11-27T19:00:00Z"}
    discharge = encode_command(DAY, 2)
    assert (discharge.step, discharge.mode, discharge.power_kw) == (2, Mode.DISCHARGE, 3.0)
    assert (discharge.start, discharge.until) == (T0 + 2 * H, T0 + 3 * H)
    assert HubCommand.model_validate_json(wire(discharge)) == discharge


GOOD_STEP = {"mode": "hold", "start": "2026-11-27T17:00:00Z", "end": "2026-11-27T18:00:00Z"}
GOOD_PLAN = {"plan_id": "p9", "sequence": 9, "device": "bat-1", "random_delay_s": 0,
             "steps": [GOOD_STEP]}


@pytest.mark.parametrize(("change", "reason"), [
    ({"steps": []}, "at least 1 item"),
    ({"steps": [GOOD_STEP | {"mode": "charge"}]}, "charge needs power_kw"),
    ({"steps": [GOOD_STEP | {"mode": "limit"}]}, "limit needs level"),
    ({"steps": [GOOD_STEP | {"mode": "limit", "level": 120}]}, "less than or equal to 100"),
    ({"steps": [GOOD_STEP | {"end": GOOD_STEP["start"]}]}, "not after its start"),
    ({"steps": [GOOD_STEP | {"start": "2026-11-27T17:00:00"}]}, "timezone"),
    ({"steps": [GOOD_STEP | {"mode": "boost"}]}, "Input should be"),
    ({"sequence": -1}, "greater than or equal to 0"),
    ({"colour": "red"}, "Extra inputs are not permitted"),
], ids=["no-steps", "no-power", "no-level", "level", "backwards", "naive-time", "mode", "sequence",
        "extra"])
def test_a_hub_document_that_cannot_be_executed_is_refused(change: dict[str, object],
                                                           reason: str) -> None:
    HubPlan.model_validate(GOOD_PLAN)
    with pytest.raises(ValidationError, match=reason):
        HubPlan.model_validate(GOOD_PLAN | change)


@pytest.fixture
def book() -> CommandBook:
    return CommandBook()


@pytest.fixture
async def hubs(book: CommandBook) -> AsyncIterator[tuple[HubSimulator, HubSimulator, HubDriver]]:
    plan_hub = HubSimulator(book, ["bat-1"], takes_plans=True, rng=random.Random(7))
    command_hub = HubSimulator(book, ["bat-1"], takes_plans=False)
    driver = HubDriver({"plan-hub": Hub(await plan_hub.start(), takes_plans=True),
                        "command-hub": Hub(await command_hub.start(), takes_plans=False)},
                       timeout_s=5)
    yield plan_hub, command_hub, driver
    await driver.aclose()
    await plan_hub.close()
    await command_hub.close()


def expected_states(p: Plan) -> list[Setpoint]:
    return [Setpoint(mode=s.mode, power_kw=s.power_kw, level=s.level) for s in p.steps]


def states(book: CommandBook, p: Plan, delay: timedelta = timedelta(0)) -> list[Setpoint | None]:
    """The device's state in the middle of each step of `p`."""
    return [book.setpoint("bat-1", s.start + (s.end - s.start) / 2 + delay) for s in p.steps]


async def test_a_plan_hub_takes_the_whole_plan_in_one_request(
        hubs: tuple[HubSimulator, HubSimulator, HubDriver], book: CommandBook) -> None:
    plan_hub, _, driver = hubs
    delivery = await driver.deliver(Dispatch(plan=DAY, device=ON_PLAN_HUB))
    assert (delivery.key, delivery.channel, delivery.detail) == (
        "p1#1#plan", "battery_hub", "applied")
    assert delivery.messages == 2 * plan_hub.requests == 2
    assert states(book, DAY) == expected_states(DAY)
    assert book.setpoint("bat-1", DAY.end + H) is None


async def test_a_per_command_hub_gets_one_command_per_mode_change_and_costs_more_messages(
        hubs: tuple[HubSimulator, HubSimulator, HubDriver], book: CommandBook) -> None:
    plan_hub, command_hub, driver = hubs
    whole = await driver.deliver(Dispatch(plan=DAY, device=ON_PLAN_HUB))
    plan_book = [book.setpoint("bat-1", s.start) for s in DAY.steps]
    book.withdraw("bat-1", DAY.plan_id)
    by_step = [await driver.deliver(Dispatch(plan=DAY, device=ON_COMMAND_HUB, step=i))
               for i in range(len(DAY.steps))]
    changes = 1 + sum(a.mode != b.mode for a, b in itertools.pairwise(DAY.steps))
    assert len(book.commands("bat-1")) == command_hub.requests == changes
    assert by_step[1].messages == 0 and by_step[1].detail == "continues step 0"
    assert sum(d.messages for d in by_step) == 2 * command_hub.requests
    assert sum(d.messages for d in by_step) > whole.messages == 2 * plan_hub.requests
    assert [book.setpoint("bat-1", s.start) for s in DAY.steps] == plan_book


async def test_a_plan_hub_starts_the_whole_plan_within_its_random_delay(
        hubs: tuple[HubSimulator, HubSimulator, HubDriver], book: CommandBook) -> None:
    _, _, driver = hubs
    delayed = dataclasses.replace(DAY, random_delay=timedelta(seconds=600))
    await driver.deliver(Dispatch(plan=delayed, device=ON_PLAN_HUB))
    shifts = {c.start - s.start for c, s in zip(book.commands("bat-1"), delayed.steps, strict=True)}
    assert len(shifts) == 1
    (shift,) = shifts
    assert timedelta(0) <= shift <= delayed.random_delay
    assert states(book, delayed, shift) == expected_states(delayed)


@pytest.mark.parametrize("variant", ["plan", "command"])
async def test_a_resent_dispatch_is_applied_once(
        hubs: tuple[HubSimulator, HubSimulator, HubDriver], book: CommandBook,
        variant: str) -> None:
    plan_hub, command_hub, driver = hubs
    device, step_index = (ON_PLAN_HUB, None) if variant == "plan" else (ON_COMMAND_HUB, 2)
    dispatch = Dispatch(plan=DAY, device=device, step=step_index)
    await driver.deliver(dispatch)
    recorded = len(book.commands("bat-1"))
    # A restarted bridge has no memory of what it sent: the hub recognises the re-send.
    again = HubDriver({"plan-hub": Hub(plan_hub.url, takes_plans=True),
                       "command-hub": Hub(command_hub.url,
                                          takes_plans=False)})
    try:
        delivery = await again.deliver(dispatch)
    finally:
        await again.aclose()
    assert delivery.detail.startswith("already applied")
    assert len(book.commands("bat-1")) == recorded > 0


async def test_a_replayed_or_rolled_back_plan_is_refused_and_the_newer_one_stays(
        hubs: tuple[HubSimulator, HubSimulator, HubDriver], book: CommandBook) -> None:
    _, _, driver = hubs
    newer = dataclasses.replace(DAY, plan_id="p2", sequence=2,
                                steps=(step(Mode.BALANCE, 0, 4),))
    await driver.deliver(Dispatch(plan=newer, device=ON_PLAN_HUB))
    for old in (DAY, dataclasses.replace(DAY, sequence=2)):
        with pytest.raises(ChannelError, match="replay or rollback") as refused:
            await driver.deliver(Dispatch(plan=old, device=ON_PLAN_HUB))
        assert not refused.value.retryable
    assert states(book, DAY) == [Setpoint(mode=Mode.BALANCE)] * 4


async def test_a_plan_is_never_sent_to_a_hub_that_takes_none(
        hubs: tuple[HubSimulator, HubSimulator, HubDriver], book: CommandBook) -> None:
    _, command_hub, driver = hubs
    with pytest.raises(ChannelError, match="takes no time-limited plan") as refused:
        await driver.deliver(Dispatch(plan=DAY, device=ON_COMMAND_HUB))
    assert not refused.value.retryable and command_hub.requests == 0
    # Misconfigured as plan-capable: the hub itself refuses.
    wrong = HubDriver({"command-hub": Hub(command_hub.url, True)})
    try:
        with pytest.raises(ChannelError, match=r"405.*one command per mode change") as refused:
            await wrong.deliver(Dispatch(plan=DAY, device=ON_COMMAND_HUB))
    finally:
        await wrong.aclose()
    assert not refused.value.retryable and book.commands("bat-1") == ()


async def test_a_device_on_no_known_hub_or_a_missing_step_is_refused(
        hubs: tuple[HubSimulator, HubSimulator, HubDriver]) -> None:
    _, _, driver = hubs
    for dispatch, reason in [(Dispatch(plan=DAY, device=BATTERY), "no hub named 'bat-1'"),
                             (Dispatch(plan=DAY, device=ON_COMMAND_HUB, step=4), "no step 4")]:
        with pytest.raises(ChannelError, match=reason) as refused:
            await driver.deliver(dispatch)
        assert not refused.value.retryable


async def stub_hub(status: int, stall: asyncio.Event | None = None) -> web.AppRunner:
    async def answer(_: web.Request) -> web.Response:
        if stall is not None:
            await stall.wait()
        return web.json_response({"error": "stub"}, status=status)
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner


async def deliver_to(url: str, *, timeout_s: float = 5) -> Delivery:
    driver = HubDriver({"plan-hub": Hub(url, takes_plans=True)}, timeout_s=timeout_s)
    try:
        return await driver.deliver(Dispatch(plan=DAY, device=ON_PLAN_HUB))
    finally:
        await driver.aclose()


@pytest.mark.parametrize(("status", "retryable"), [(400, False), (404, False), (429, True),
                                                   (500, True), (503, True)])
async def test_hub_errors_map_to_channel_errors(status: int, retryable: bool) -> None:
    runner = await stub_hub(status)
    try:
        host, port = runner.addresses[0][:2]
        with pytest.raises(ChannelError, match=str(status)) as failed:
            await deliver_to(f"http://{host}:{port}")
    finally:
        await runner.cleanup()
    assert failed.value.retryable is retryable
    assert not isinstance(failed.value, DeviceUnavailable)


async def test_a_hub_that_refuses_connections_or_never_answers_is_unavailable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    with pytest.raises(DeviceUnavailable):
        await deliver_to(f"http://127.0.0.1:{closed_port}")
    stall = asyncio.Event()
    runner = await stub_hub(200, stall)
    try:
        host, port = runner.addresses[0][:2]
        with pytest.raises(DeviceUnavailable) as failed:
            await deliver_to(f"http://{host}:{port}", timeout_s=0.2)
    finally:
        stall.set()
        await runner.cleanup()
    assert failed.value.retryable


COMMAND = json.loads(wire(encode_command(DAY, 2)))


@pytest.mark.parametrize(("method", "path", "body", "status", "reason"), [
    ("PUT", "plan", b"{not json", 400, "Invalid JSON"),
    ("PUT", "plan", b"[]", 400, "body: Input should be an object"),
    ("PUT", "plan", json.dumps(GOOD_PLAN | {"steps": []}).encode(), 400, "at least 1 item"),
    ("PUT", "plan", json.dumps(GOOD_PLAN | {"device": "bat-2"}).encode(), 400, "not 'bat-1'"),
    ("PUT", "plan", json.dumps(GOOD_PLAN).encode(), 404, "unknown device 'ghost'"),
    ("PUT", "plan", json.dumps(GOOD_PLAN | {"sequence": 1}).encode(), 409, "replay or rollback"),
    ("POST", "commands", json.dumps(COMMAND | {"from": COMMAND["until"]}).encode(), 400,
     "not after from"),
    ("POST", "commands", json.dumps(COMMAND | {"mode": "discharge", "power_kw": None}).encode(),
     400, "discharge needs power_kw"),
], ids=["json", "not-object", "no-steps", "other-device", "unknown-device", "rollback",
        "backwards", "no-power"])
async def test_bad_requests_get_a_clear_4xx_and_the_hub_keeps_serving(
        hubs: tuple[HubSimulator, HubSimulator, HubDriver], book: CommandBook, method: str,
        path: str, body: bytes, status: int, reason: str) -> None:
    plan_hub, _, driver = hubs
    newer = dataclasses.replace(DAY, sequence=5)
    await driver.deliver(Dispatch(plan=newer, device=ON_PLAN_HUB))
    device = "ghost" if status == 404 else "bat-1"
    url = f"{plan_hub.url}/devices/{device}/{path}"
    async with aiohttp.ClientSession() as session, session.request(method, url, data=body) as r:
        assert r.status == status
        assert reason in (await r.json())["error"]
    assert len(book.commands("bat-1")) == len(newer.steps)
    good = dataclasses.replace(DAY, sequence=6)
    assert (await driver.deliver(Dispatch(plan=good, device=ON_PLAN_HUB))).detail == "applied"
