"""Simulated OCPP 1.6J charge points: the far end of the OCPP channel.

A `ChargePointSim` connects to a central system over websockets (subprotocol ocpp1.6), sends
BootNotification and StatusNotification, then MeterValues every `meter_interval` seconds with the
power its EV draws. It keeps the charging profiles it is sent and answers GetCompositeSchedule
from them. Its profiles outlive a reconnect, as a real charge point's do.

Kept simple, and stated here:
- Profiles: Absolute kind, unit W only; TxProfile is refused (the simulator runs no
  transactions); anything else is Rejected. A profile replaces an installed one with the same id,
  or with the same stack level and purpose on the same connector (OCPP 1.6, 3.13.2).
- Limit in force on a connector at t (`limit_at`): the TxDefaultProfile with the highest stack
  level in force there (one set on the connector beats one set on connector 0), capped by the
  highest-stack ChargePointMaxProfile in force and by the rated power; no profile: rated power.
- EV: present or not; draws min(limit, its max rate) until its energy need is met.
- Each accepted profile is recorded in the `CommandBook` as one `Command` per schedule period:
  `Setpoint(mode=LIMIT, level=cap as a percent of rated (rounded), power_kw=the exact cap)`,
  source `ocpp-profile-<id>`. A replaced or cleared profile's commands are withdrawn, so a
  re-sent profile leaves one set. The book shows what each profile asked; the composite schedule
  shows the combined limit.
- `reject_profiles` answers Rejected to every SetChargingProfile; `silent` drops every incoming
  message and stops meter values (a charge point that hangs with its socket open).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from ocpp.exceptions import OCPPError
from ocpp.v16 import call, call_result, datatypes, enums
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from bridge.channel import Command, CommandBook, Setpoint
from bridge.models import Mode
from bridge.ocpp_cs import (OCPP16, Period, Schedule, TypedChargePoint, iso, on,
                            profile_from_payload, profile_schedule, parse_time)

log = logging.getLogger(__name__)
Purpose = enums.ChargingProfilePurposeType


@dataclass(slots=True)
class Ev:
    present: bool = True
    max_rate_w: float = 7400.0
    need_wh: float = 20_000.0


@dataclass(frozen=True, slots=True)
class InstalledProfile:
    connector_id: int
    profile: datatypes.ChargingProfile
    schedule: Schedule  # cut to validity
    valid_from: datetime | None

    @property
    def source(self) -> str:
        return f"ocpp-profile-{self.profile.charging_profile_id}"

    def limit_at(self, t: datetime) -> float | None:
        return None if self.valid_from is not None and t < self.valid_from \
            else self.schedule.limit_at(t)


def refusal(profile: datatypes.ChargingProfile, connector_id: int, connectors: int) -> str | None:
    """Why the simulator refuses a profile (None: it accepts it)."""
    schedule, purpose = profile.charging_schedule, profile.charging_profile_purpose
    starts = [p.start_period for p in schedule.charging_schedule_period]
    problems = {
        "no such connector": not 0 <= connector_id <= connectors,
        "no transactions here for a TxProfile": purpose == Purpose.tx_profile,
        "ChargePointMaxProfile only on connector 0":
            purpose == Purpose.charge_point_max_profile and connector_id != 0,
        "only Absolute profiles with a startSchedule":
            profile.charging_profile_kind != enums.ChargingProfileKindType.absolute
            or schedule.start_schedule is None,
        "only W": schedule.charging_rate_unit != enums.ChargingRateUnitType.watts,
        "periods must start at 0 and increase":
            not starts or starts[0] != 0 or any(a >= b for a, b in zip(starts, starts[1:])),
        "negative limit": any(p.limit < 0 for p in schedule.charging_schedule_period),
    }
    return next((why for why, bad in problems.items() if bad), None)


def _top(profiles: Sequence[InstalledProfile], purpose: str, connectors: set[int],
         t: datetime) -> float | None:
    in_force = [(ip.profile.stack_level, limit) for ip in profiles
                if ip.profile.charging_profile_purpose == purpose and ip.connector_id in connectors
                and (limit := ip.limit_at(t)) is not None]
    return max(in_force)[1] if in_force else None


def limit_at(profiles: Sequence[InstalledProfile], connector_id: int, t: datetime,
             rated_w: float) -> float:
    """The W limit in force on the connector at t (module docstring: the rules)."""
    default = _top(profiles, Purpose.tx_default_profile, {connector_id}, t)
    if default is None:
        default = _top(profiles, Purpose.tx_default_profile, {0}, t)
    cap = _top(profiles, Purpose.charge_point_max_profile, {0}, t)
    return min(x for x in (rated_w, default, cap) if x is not None)


def composite(profiles: Sequence[InstalledProfile], connector_id: int, start: datetime,
              duration: timedelta, rated_w: float) -> Schedule:
    """The limits in force over [start, start + duration), consecutive equal limits merged."""
    end = start + duration
    changes = {t for ip in profiles for t in ip.schedule.boundaries()} | {
        ip.valid_from for ip in profiles if ip.valid_from is not None}
    edges = sorted({start} | {t for t in changes if start < t < end})
    periods: list[Period] = []
    for t in edges:
        limit = round(limit_at(profiles, connector_id, t, rated_w), 1)
        if not periods or periods[-1].limit_w != limit:
            periods.append(Period(t, limit))
    return Schedule(tuple(periods), end)


def commands(installed: InstalledProfile, device_id: str, rated_w: float,
             received_at: datetime) -> list[Command]:
    """One command per schedule period of an installed profile."""
    periods, end = installed.schedule.periods, installed.schedule.end
    out = []
    for period, after in zip(periods, periods[1:] + (None,)):
        level = min(100, round(100 * period.limit_w / rated_w))
        out.append(Command(
            device_id=device_id,
            setpoint=Setpoint(mode=Mode.LIMIT, level=level, power_kw=period.limit_w / 1000),
            start=max(period.start, installed.valid_from or period.start),
            end=end if after is None else after.start,
            source=installed.source, received_at=received_at))
    return out


class _Wire(TypedChargePoint):
    """The ocpp protocol object of one connection; state lives in the `ChargePointSim`."""

    def __init__(self, sim: ChargePointSim, connection: ClientConnection) -> None:
        super().__init__(sim.cp_id, connection, response_timeout=sim.response_timeout)
        self.sim = sim

    async def route_message(self, raw_msg: str | bytes) -> None:
        if not self.sim.silent:
            await super().route_message(raw_msg)  # type: ignore[no-untyped-call]

    @on("SetChargingProfile")
    def on_set_charging_profile(self, connector_id: int, cs_charging_profiles: dict[str, Any]
                                ) -> call_result.SetChargingProfile:
        return call_result.SetChargingProfile(
            status=self.sim.install(connector_id, profile_from_payload(cs_charging_profiles)))

    @on("GetCompositeSchedule")
    def on_get_composite_schedule(
            self, connector_id: int, duration: int,
            charging_rate_unit: str = "W") -> call_result.GetCompositeSchedule:
        if charging_rate_unit != enums.ChargingRateUnitType.watts or \
                not 0 <= connector_id <= self.sim.connectors:
            return call_result.GetCompositeSchedule(
                status=enums.GetCompositeScheduleStatus.rejected)
        start = self.sim.now().replace(microsecond=0)
        schedule = self.sim.composite(connector_id, start, timedelta(seconds=duration))
        wire = datatypes.ChargingSchedule(
            charging_rate_unit=enums.ChargingRateUnitType.watts, duration=duration,
            start_schedule=iso(start), charging_schedule_period=[
                datatypes.ChargingSchedulePeriod(
                    start_period=int((p.start - start).total_seconds()), limit=p.limit_w)
                for p in schedule.periods])
        return call_result.GetCompositeSchedule(
            status=enums.GetCompositeScheduleStatus.accepted, connector_id=connector_id,
            schedule_start=iso(start), charging_schedule=asdict(wire))

    @on("ClearChargingProfile")
    def on_clear_charging_profile(self, id: int | None = None, connector_id: int | None = None,
                                  charging_profile_purpose: str | None = None,
                                  stack_level: int | None = None
                                  ) -> call_result.ClearChargingProfile:
        cleared = self.sim.clear(profile_id=id, connector_id=connector_id,
                                 purpose=charging_profile_purpose, stack_level=stack_level)
        return call_result.ClearChargingProfile(
            status=enums.ClearChargingProfileStatus.accepted if cleared
            else enums.ClearChargingProfileStatus.unknown)


class ChargePointSim:
    """One simulated charge point (see the module docstring)."""

    def __init__(self, cp_id: str, *, book: CommandBook, rated_w: float,
                 device_id: str | None = None, ev: Ev | None = None, connectors: int = 1,
                 meter_interval: float = 10.0, response_timeout: float = 10.0,
                 now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.cp_id = cp_id
        self.device_id = device_id or cp_id
        self.book = book
        self.rated_w = rated_w
        self.ev = ev if ev is not None else Ev(present=False)
        self.connectors = connectors
        self.meter_interval = meter_interval
        self.response_timeout = response_timeout
        self.now = now
        self.reject_profiles = False
        self.silent = False
        self.profiles: list[InstalledProfile] = []
        self.energy_wh = 0.0
        self.wire: _Wire | None = None
        self._tasks: list[asyncio.Task[None]] = []

    # -- the device ---------------------------------------------------------------------------

    def install(self, connector_id: int,
                profile: datatypes.ChargingProfile) -> enums.ChargingProfileStatus:
        why = "told to reject" if self.reject_profiles else refusal(profile, connector_id,
                                                                    self.connectors)
        if why is not None:
            log.info("charge point %s rejects profile %s: %s", self.cp_id,
                     profile.charging_profile_id, why)
            return enums.ChargingProfileStatus.rejected
        same_slot = (connector_id, profile.stack_level, profile.charging_profile_purpose)
        replaced = [ip for ip in self.profiles
                    if ip.profile.charging_profile_id == profile.charging_profile_id
                    or (ip.connector_id, ip.profile.stack_level,
                        ip.profile.charging_profile_purpose) == same_slot]
        self._remove(replaced)
        installed = InstalledProfile(
            connector_id, profile, profile_schedule(profile),
            None if profile.valid_from is None else parse_time(profile.valid_from))
        self.profiles.append(installed)
        for command in commands(installed, self.device_id, self.rated_w, self.now()):
            self.book.record(command)
        return enums.ChargingProfileStatus.accepted

    def clear(self, *, profile_id: int | None, connector_id: int | None, purpose: str | None,
              stack_level: int | None) -> bool:
        """OCPP 1.6 ClearChargingProfile: by id, else by every criterion given."""
        def matches(ip: InstalledProfile) -> bool:
            if profile_id is not None:
                return ip.profile.charging_profile_id == profile_id
            return ((connector_id is None or ip.connector_id == connector_id)
                    and (purpose is None or ip.profile.charging_profile_purpose == purpose)
                    and (stack_level is None or ip.profile.stack_level == stack_level))
        cleared = [ip for ip in self.profiles if matches(ip)]
        self._remove(cleared)
        return bool(cleared)

    def _remove(self, gone: Sequence[InstalledProfile]) -> None:
        for ip in gone:
            self.profiles.remove(ip)
            self.book.withdraw(self.device_id, ip.source)

    def limit_w(self, at: datetime, connector_id: int = 1) -> float:
        return limit_at(self.profiles, connector_id, at, self.rated_w)

    def composite(self, connector_id: int, start: datetime, duration: timedelta) -> Schedule:
        return composite(self.profiles, connector_id, start, duration, self.rated_w)

    def power_w(self, at: datetime) -> float:
        if not self.ev.present or self.ev.need_wh <= 0:
            return 0.0
        return min(self.limit_w(at), self.ev.max_rate_w)

    def status(self, at: datetime) -> enums.ChargePointStatus:
        if not self.ev.present:
            return enums.ChargePointStatus.available
        if self.ev.need_wh <= 0:
            return enums.ChargePointStatus.suspended_ev
        return enums.ChargePointStatus.charging if self.power_w(at) > 0 \
            else enums.ChargePointStatus.suspended_evse

    # -- the wire -----------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """On an open connection to a central system."""
        return self.wire is not None and self.wire.connection.state is State.OPEN

    async def connect(self, central_url: str) -> None:
        """Connect as `<central_url>/<cp_id>`, boot, report status, start meter values.

        Raises:
            OSError, websockets.exceptions.InvalidHandshake: the central system refused.
        """
        connection = await connect(f"{central_url}/{self.cp_id}", subprotocols=[OCPP16])
        self.wire = _Wire(self, connection)
        self._tasks.append(asyncio.create_task(self._serve(self.wire)))
        await self.wire.call(call.BootNotification(charge_point_model="adrgate-sim",
                                                   charge_point_vendor="adrgate"),
                             suppress=False)
        await self._send_status(self.now())
        self._tasks.append(asyncio.create_task(self._meter(self.wire)))

    async def _serve(self, wire: _Wire) -> None:
        with contextlib.suppress(ConnectionClosed):
            await wire.start()

    async def _send_status(self, at: datetime) -> enums.ChargePointStatus:
        assert self.wire is not None
        status = self.status(at)
        await self.wire.call(call.StatusNotification(
            connector_id=1, error_code=enums.ChargePointErrorCode.no_error, status=status,
            timestamp=iso(at)), suppress=False)
        return status

    async def _meter(self, wire: _Wire) -> None:
        last = self.now()
        status = self.status(last)
        with contextlib.suppress(ConnectionClosed):
            while True:
                await asyncio.sleep(self.meter_interval)
                at = self.now()
                energy = self.power_w(last) * (at - last).total_seconds() / 3600
                self.energy_wh += energy
                self.ev.need_wh = max(0.0, self.ev.need_wh - energy)
                last = at
                if self.silent:
                    continue
                try:
                    await wire.call(self._meter_values(at), suppress=False)
                    if self.status(at) != status:
                        status = await self._send_status(at)
                except (TimeoutError, OCPPError) as exc:  # a busy central system: next tick
                    log.warning("charge point %s: not acknowledged: %r", self.cp_id, exc)

    def _meter_values(self, at: datetime) -> call.MeterValues:
        samples = [{"value": f"{self.power_w(at):.1f}", "measurand": "Power.Active.Import",
                    "unit": "W"},
                   {"value": f"{self.energy_wh:.1f}",
                    "measurand": "Energy.Active.Import.Register", "unit": "Wh"}]
        return call.MeterValues(connector_id=1,
                                meter_value=[{"timestamp": iso(at), "sampledValue": samples}])

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                await task
        self._tasks.clear()
        if self.wire is not None:
            await self.wire.connection.close()
            self.wire = None
