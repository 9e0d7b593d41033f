"""The OCPP channel: plans become charging profiles sent to EV charge points by a central system.

Two layers. The sans-IO part turns a `Dispatch` into an OCPP 1.6 `ChargingProfile`
(`charging_profile`, or `charging_profile_v201` for OCPP 2.0.1), turns profiles and composite
schedules into `Schedule`s (absolute step functions of W limits) and checks a composite schedule
read back against the profile sent (`check_composite`). The I/O part is `CentralSystem` (a
websockets server on loopback, one `ocpp` ChargePoint object per connection) and `OcppDriver`,
the bridge's `Driver` for `Channel.OCPP`.

Choices:
- TxDefaultProfile, kind Absolute, unit W. A 1.6 charge point can only be capped: LIMIT is
  level% of the device's rated import, CHARGE its power, HOLD 0 W; DISCHARGE and BALANCE are
  refused (`ChannelError(retryable=False)`).
- OCPP 1.6 has no randomised delay, so the central system applies the plan's: the schedule starts
  at plan start + `random_delay` (GB smart charge points, domain.md section 7).
- The profile id is a hash of the plan id (`plan_profile_id`): a re-sent dispatch, or a new
  sequence of the same plan, replaces its profile on the charge point instead of stacking.
- `Device.reach` is the charge point id (the last segment of its websocket URL), optionally
  `cpid/connector`; connector 1 when none is given.
- Times go on the wire in whole seconds (startPeriod is an integer); sub-second plan
  boundaries are truncated.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from typing import Any, Final, TypeVar

from ocpp import routing
from ocpp.exceptions import InternalError, OCPPError
from ocpp.v16 import ChargePoint as ChargePoint16
from ocpp.v16 import call, call_result, datatypes, enums
from ocpp.v201 import datatypes as datatypes201
from ocpp.v201 import enums as enums201
from websockets.asyncio.connection import Connection
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from .channel import ChannelError, Delivery, DeviceUnavailable, Dispatch
from .models import Channel, Mode, PlanStep

log = logging.getLogger(__name__)

OCPP16: Final = Subprotocol("ocpp1.6")
DEFAULT_CONNECTOR: Final = 1
LIMIT_TOLERANCE_W: Final = 0.05  # limits travel as multiples of 0.1 W

_F = TypeVar("_F", bound=Callable[..., Any])
_untyped_on: Any = routing.on


def on(action: str) -> Callable[[_F], _F]:
    """ocpp's `@on`, typed: the handler keeps its signature."""
    decorator: Callable[[_F], _F] = _untyped_on(action)
    return decorator


# --- sans-IO: plans -> profiles, profiles and composites -> schedules -------------------------


@dataclass(frozen=True, slots=True)
class Period:
    start: datetime
    limit_w: float


@dataclass(frozen=True, slots=True)
class Schedule:
    """A step function of W limits in absolute time, from the first period's start to `end`."""

    periods: tuple[Period, ...]
    end: datetime | None  # None: the last period holds on

    def limit_at(self, t: datetime) -> float | None:
        """The limit in force at `t`; None outside the schedule."""
        if not self.periods or t < self.periods[0].start or (
                self.end is not None and t >= self.end):
            return None
        return [p.limit_w for p in self.periods if p.start <= t][-1]

    def boundaries(self) -> tuple[datetime, ...]:
        return tuple(p.start for p in self.periods) + (() if self.end is None else (self.end,))


def plan_profile_id(plan_id: str) -> int:
    """A positive 31-bit id, the same for every sequence of the plan."""
    return int.from_bytes(hashlib.sha256(plan_id.encode()).digest()[:4], "big") & 0x7FFFFFFF or 1


def parse_reach(reach: str) -> tuple[str, int]:
    """`cpid` or `cpid/connector` -> (charge point id, connector).

    Raises:
        ChannelError: (not retryable) the connector is not a positive integer.
    """
    cp_id, _, connector = reach.partition("/")
    if not connector:
        return cp_id, DEFAULT_CONNECTOR
    if not connector.isdigit() or int(connector) < 1:
        raise ChannelError(f"bad OCPP address {reach!r}: connector must be 1 or more",
                           retryable=False)
    return cp_id, int(connector)


def iso(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str) -> datetime:
    """An OCPP date-time; a time without offset is taken as UTC."""
    t = datetime.fromisoformat(text)
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def _whole_seconds(t: datetime) -> datetime:
    return t.replace(microsecond=0)


def step_limit_w(step: PlanStep, rated_import_kw: float) -> float:
    """The W cap a 1.6 charge point enforces for one plan step, a multiple of 0.1 W.

    Raises:
        ChannelError: (not retryable) the step is DISCHARGE or BALANCE, or lacks its level/power.
    """
    if step.mode is Mode.LIMIT and step.level is not None:
        return round(step.level / 100 * rated_import_kw * 1000, 1)
    if step.mode is Mode.CHARGE and step.power_kw is not None:
        return round(step.power_kw * 1000, 1)
    if step.mode is Mode.HOLD:
        return 0.0
    raise ChannelError(f"an OCPP 1.6 charge point cannot execute {step.mode} "
                       f"(level {step.level}, power {step.power_kw})", retryable=False)


def dispatch_schedule(dispatch: Dispatch) -> Schedule:
    """The W caps a dispatch asks for, shifted by the plan's random delay.

    Raises:
        ChannelError: (not retryable) a step the charge point cannot execute.
    """
    plan = dispatch.plan
    steps = plan.steps if dispatch.step is None else (plan.steps[dispatch.step],)
    shift = plan.random_delay
    periods = tuple(Period(_whole_seconds(s.start + shift),
                           step_limit_w(s, dispatch.device.rated_import_kw)) for s in steps)
    return Schedule(periods, _whole_seconds(steps[-1].end + shift))


def charging_profile(dispatch: Dispatch, *, profile_id: int,
                     stack_level: int) -> datatypes.ChargingProfile:
    """The OCPP 1.6 TxDefaultProfile (Absolute, W) carrying the dispatch, one period per step.

    Raises:
        ChannelError: (not retryable) a step the charge point cannot execute.
    """
    schedule = dispatch_schedule(dispatch)
    start = schedule.periods[0].start
    assert schedule.end is not None
    return datatypes.ChargingProfile(
        charging_profile_id=profile_id, stack_level=stack_level,
        charging_profile_purpose=enums.ChargingProfilePurposeType.tx_default_profile,
        charging_profile_kind=enums.ChargingProfileKindType.absolute,
        valid_from=iso(start), valid_to=iso(schedule.end),
        charging_schedule=datatypes.ChargingSchedule(
            charging_rate_unit=enums.ChargingRateUnitType.watts,
            duration=int((schedule.end - start).total_seconds()), start_schedule=iso(start),
            charging_schedule_period=[
                datatypes.ChargingSchedulePeriod(
                    start_period=int((p.start - start).total_seconds()), limit=p.limit_w)
                for p in schedule.periods]))


def charging_profile_v201(
        dispatch: Dispatch, *, profile_id: int, stack_level: int,
        purpose: enums201.ChargingProfilePurposeEnumType
        = enums201.ChargingProfilePurposeEnumType.charging_station_external_constraints,
) -> datatypes201.ChargingProfileType:
    """The same schedule as an OCPP 2.0.1 ChargingProfileType (for SetChargingProfileRequest).

    2.0.1 meant ChargingStationExternalConstraints for limits from outside the CSMS (an EMS, a
    DSO), and only on evseId 0; a station may refuse it from a CSMS: pass
    `purpose=TxDefaultProfile` for the portable choice.

    Raises:
        ChannelError: (not retryable) a step the charge point cannot execute.
    """
    v16 = charging_profile(dispatch, profile_id=profile_id, stack_level=stack_level)
    schedule = v16.charging_schedule
    return datatypes201.ChargingProfileType(
        id=profile_id, stack_level=stack_level, charging_profile_purpose=purpose,
        charging_profile_kind=enums201.ChargingProfileKindEnumType.absolute,
        valid_from=v16.valid_from, valid_to=v16.valid_to,
        charging_schedule=[datatypes201.ChargingScheduleType(
            id=profile_id, charging_rate_unit=enums201.ChargingRateUnitEnumType.watts,
            start_schedule=schedule.start_schedule, duration=schedule.duration,
            charging_schedule_period=[
                datatypes201.ChargingSchedulePeriodType(start_period=p.start_period,
                                                        limit=p.limit)
                for p in schedule.charging_schedule_period])])


def schedule_from_payload(payload: Mapping[str, Any]) -> datatypes.ChargingSchedule:
    """A schema-valid chargingSchedule object (snake_case, as ocpp hands it over), typed."""
    fields = dict(payload)
    periods = [datatypes.ChargingSchedulePeriod(**p)
               for p in fields.pop("charging_schedule_period")]
    return datatypes.ChargingSchedule(**fields, charging_schedule_period=periods)


def profile_from_payload(payload: Mapping[str, Any]) -> datatypes.ChargingProfile:
    """A schema-valid csChargingProfiles object (snake_case), typed."""
    fields = dict(payload)
    schedule = schedule_from_payload(fields.pop("charging_schedule"))
    return datatypes.ChargingProfile(**fields, charging_schedule=schedule)


def schedule_of(charging_schedule: datatypes.ChargingSchedule, start: datetime) -> Schedule:
    """A charging schedule's periods placed in absolute time from `start`."""
    periods = tuple(Period(start + timedelta(seconds=p.start_period), float(p.limit))
                    for p in charging_schedule.charging_schedule_period)
    duration = charging_schedule.duration
    return Schedule(periods, None if duration is None else start + timedelta(seconds=duration))


def profile_schedule(profile: datatypes.ChargingProfile) -> Schedule:
    """An Absolute profile's schedule, cut to its validity.

    Raises:
        ValueError: the profile has no startSchedule (not Absolute).
    """
    if profile.charging_schedule.start_schedule is None:
        raise ValueError(f"profile {profile.charging_profile_id} has no startSchedule")
    schedule = schedule_of(profile.charging_schedule,
                           parse_time(profile.charging_schedule.start_schedule))
    if profile.valid_to is not None:
        valid_to = parse_time(profile.valid_to)
        if schedule.end is None or valid_to < schedule.end:
            return Schedule(schedule.periods, valid_to)
    return schedule


def composite_schedule(answer: call_result.GetCompositeSchedule) -> Schedule:
    """The composite a charge point answered, in absolute time.

    Raises:
        ValueError: no schedule, or no start to place it at.
    """
    if answer.charging_schedule is None:
        raise ValueError(f"composite schedule {answer.status} without a schedule")
    sched = schedule_from_payload(answer.charging_schedule)
    start = answer.schedule_start or sched.start_schedule
    if start is None:
        raise ValueError("composite schedule without scheduleStart")
    return schedule_of(sched, parse_time(start))


def check_composite(profile: datatypes.ChargingProfile,
                    answer: call_result.GetCompositeSchedule) -> list[str]:
    """Where the composite schedule read back differs from the profile (empty: it matches).

    Compared over the part of the profile the composite covers (a composite starts when the
    charge point is asked), at every boundary of either schedule.
    """
    if answer.status != enums.GetCompositeScheduleStatus.accepted:
        return [f"composite schedule {answer.status}"]
    try:
        sent, got = profile_schedule(profile), composite_schedule(answer)
    except (ValueError, TypeError, KeyError) as exc:
        return [f"unreadable composite schedule: {exc}"]
    times = sorted({t for t in sent.boundaries() + got.boundaries()
                    if sent.limit_at(t) is not None and got.limit_at(t) is not None})
    reasons = []
    if sent.end is not None and got.end is not None and got.end < sent.end:
        reasons.append(f"composite ends at {iso(got.end)}, the profile at {iso(sent.end)}")
    for t in times:
        want, have = sent.limit_at(t), got.limit_at(t)
        assert want is not None and have is not None
        if abs(want - have) > LIMIT_TOLERANCE_W:
            reasons.append(f"at {iso(t)}: limit {have:g} W in force, {want:g} W sent")
    return reasons


def summarize(schedule: Schedule) -> str:
    return ", ".join(f"{iso(p.start)} {p.limit_w:g} W" for p in schedule.periods)


def power_w(meter_value: Iterable[Mapping[str, Any]]) -> float | None:
    """The last Power.Active.Import sample (W or kW) in a MeterValues meter_value list."""
    found: float | None = None
    for value in meter_value:
        for sample in value.get("sampled_value", ()):
            if sample.get("measurand") != enums.Measurand.power_active_import:
                continue
            try:
                reading = float(sample["value"])
            except (KeyError, TypeError, ValueError):
                continue
            found = reading * 1000 if sample.get("unit") == enums.UnitOfMeasure.kw else reading
    return found


# --- I/O: the central system and the driver ---------------------------------------------------


class TypedChargePoint(ChargePoint16):
    """ocpp's 1.6 ChargePoint with the entry points this project uses typed (ocpp's own
    methods are unannotated)."""

    def __init__(self, cp_id: str, connection: Connection, *, response_timeout: float) -> None:
        super().__init__(cp_id, connection,  # type: ignore[no-untyped-call]
                         response_timeout=response_timeout)
        self.connection = connection

    async def start(self) -> None:
        await super().start()  # type: ignore[no-untyped-call]

    async def call(self, payload: object, suppress: bool = True, unique_id: str | None = None,
                   skip_schema_validation: bool = False) -> Any:
        """Raises (suppress=False): OCPPError for a CallError answer; TimeoutError."""
        return await super().call(payload, suppress,  # type: ignore[no-untyped-call]
                                  unique_id, skip_schema_validation)


class CsChargePoint(TypedChargePoint):
    """The central system's side of one charge point connection."""

    def __init__(self, cp_id: str, connection: ServerConnection, *, response_timeout: float,
                 heartbeat_interval: int) -> None:
        super().__init__(cp_id, connection, response_timeout=response_timeout)
        self.heartbeat_interval = heartbeat_interval
        self.booted = False
        self.status: dict[int, str] = {}
        self.power_w: float | None = None

    @on("BootNotification")
    def on_boot_notification(self, **_: Any) -> call_result.BootNotification:
        self.booted = True
        return call_result.BootNotification(current_time=iso(datetime.now(UTC)),
                                            interval=self.heartbeat_interval,
                                            status=enums.RegistrationStatus.accepted)

    @on("Heartbeat")
    def on_heartbeat(self) -> call_result.Heartbeat:
        return call_result.Heartbeat(current_time=iso(datetime.now(UTC)))

    @on("StatusNotification")
    def on_status_notification(self, connector_id: int, status: str,
                               **_: Any) -> call_result.StatusNotification:
        self.status[connector_id] = status
        return call_result.StatusNotification()

    @on("MeterValues")
    def on_meter_values(self, meter_value: list[dict[str, Any]],
                        **_: Any) -> call_result.MeterValues:
        reading = power_w(meter_value)
        if reading is not None:
            self.power_w = reading
        return call_result.MeterValues()


def _no_such_path(connection: ServerConnection, request: Request) -> Response | None:
    """OCPP-J: the URL ends with the charge point id; anything else is a 404."""
    if request.path.strip("/") and "/" not in request.path.strip("/"):
        return None
    return connection.respond(HTTPStatus.NOT_FOUND, "URL must be /<charge point id>\n")


class CentralSystem:
    """An OCPP 1.6J central system on loopback: one `CsChargePoint` per connected charge point,
    keyed by id (a reconnect replaces the older connection)."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, response_timeout: float = 10.0,
                 heartbeat_interval: int = 300) -> None:
        self._host, self._port = host, port
        self.response_timeout = response_timeout
        self.heartbeat_interval = heartbeat_interval
        self._server: Server | None = None
        self._sessions: dict[str, CsChargePoint] = {}

    async def start(self) -> None:
        self._server = await serve(self._serve, self._host, self._port, subprotocols=[OCPP16],
                                   process_request=_no_such_path)

    @property
    def port(self) -> int:
        assert self._server is not None, "start() first"
        port: int = next(iter(self._server.sockets)).getsockname()[1]
        return port

    @property
    def url(self) -> str:
        return f"ws://{self._host}:{self.port}"

    def session(self, cp_id: str) -> CsChargePoint | None:
        return self._sessions.get(cp_id)

    def connected(self) -> frozenset[str]:
        return frozenset(self._sessions)

    def power_w(self, cp_id: str) -> float | None:
        """The latest Power.Active.Import the charge point reported (None: none yet)."""
        session = self._sessions.get(cp_id)
        return None if session is None else session.power_w

    async def _serve(self, connection: ServerConnection) -> None:
        assert connection.request is not None
        cp_id = connection.request.path.strip("/")
        session = CsChargePoint(cp_id, connection, response_timeout=self.response_timeout,
                                heartbeat_interval=self.heartbeat_interval)
        older = self._sessions.get(cp_id)
        self._sessions[cp_id] = session
        if older is not None:
            await older.connection.close(1000, "replaced by a new connection")
        try:
            await session.start()
        except ConnectionClosed:
            pass
        except Exception:  # one misbehaving charge point must not take the others down
            log.exception("charge point %s: closing after an unexpected error", cp_id)
            await connection.close(1011, "internal error")
        finally:
            if self._sessions.get(cp_id) is session:
                del self._sessions[cp_id]

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None


class OcppDriver:
    """`Driver` for EV charge points: SetChargingProfile, then GetCompositeSchedule to confirm."""

    channel = Channel.OCPP

    def __init__(self, central: CentralSystem, *, stack_level: int = 1,
                 now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.central = central
        self.stack_level = stack_level
        self._now = now

    async def deliver(self, dispatch: Dispatch) -> Delivery:
        """Raises:
            DeviceUnavailable: the charge point is not connected (or not booted) or did not
                answer in time.
            ChannelError: it refused the profile (not retryable), or the composite schedule
                it reports differs from the profile (not retryable).
        """
        cp_id, connector = parse_reach(dispatch.device.reach)
        profile_id = plan_profile_id(dispatch.plan.plan_id)
        profile = charging_profile(dispatch, profile_id=profile_id, stack_level=self.stack_level)
        session = self.central.session(cp_id)
        if session is None or not session.booted:  # OCPP: nothing is sent before boot
            raise DeviceUnavailable(f"charge point {cp_id} is not connected and booted")
        sent_at = self._now()
        answer = await self._call(session, call.SetChargingProfile(
            connector_id=connector, cs_charging_profiles=profile))
        if answer.status != enums.ChargingProfileStatus.accepted:
            raise ChannelError(f"charge point {cp_id} answered {answer.status} to profile "
                               f"{profile_id}", retryable=False)
        end = profile_schedule(profile).end
        assert end is not None
        duration = max(1, int((end - self._now()).total_seconds()) + 1)
        composite = await self._call(session, call.GetCompositeSchedule(
            connector_id=connector, duration=duration,
            charging_rate_unit=enums.ChargingRateUnitType.watts))
        reasons = check_composite(profile, composite)
        if reasons:
            raise ChannelError(f"charge point {cp_id} profile {profile_id}: "
                               + "; ".join(reasons), retryable=False)
        return Delivery(key=dispatch.key, plan_id=dispatch.plan.plan_id,
                        device_id=dispatch.device.device_id, channel=self.channel, messages=4,
                        sent_at=sent_at, acked_at=self._now(),
                        detail=f"profile {profile_id} stack {self.stack_level} on {cp_id}/"
                               f"{connector}; composite: "
                               f"{summarize(composite_schedule(composite))}")

    async def _call(self, session: CsChargePoint, request: object) -> Any:
        """One CALL, its answer; foreign errors mapped to the channel's."""
        try:
            return await session.call(request, suppress=False)
        except (TimeoutError, ConnectionClosed) as exc:
            raise DeviceUnavailable(f"charge point {session.id}: no answer to "
                                    f"{type(request).__name__} ({exc!r})") from exc
        except OCPPError as exc:
            raise ChannelError(f"charge point {session.id}: {type(request).__name__} failed: "
                               f"{exc}", retryable=isinstance(exc, InternalError)) from exc

    async def aclose(self) -> None:
        """The driver owns no connection: the central system is closed by whoever started it."""
