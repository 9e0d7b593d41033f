"""The fleet file: which aggregators' VENs this process runs, and what each fronts.

Typed, frozen specs; `load_fleet` reads a TOML file into them, `parse_fleet` checks an already
decoded one. docs/fleet.example.toml documents every key. Rules of the format:
- `[defaults]` holds any `[[ven]]` key but name, ven_id and count; a key set in a `[[ven]]`
  replaces the default whole (tables and arrays are not merged).
- `count = N` repeats a `[[ven]]` N times. `{n}` (1-based, `str.format`) is formatted in name,
  ven_id, resource ids, opt ids and their resource lists, and TLS paths, for every VEN (n = 1
  without count), so a literal brace there is written `{{`.
- Nothing passes silently: unknown keys are errors, and every error names the file and the key
  path (`ven[3].resources[0].rated_kw`, `[[ven]]` tables counted from 0).
- HTTP push: `push = true` VENs share the fleet's one listener (`push_listen`), so they must all
  use TLS or none, and the listener needs an address the VTN can reach (`push_url`).
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from difflib import get_close_matches
from enum import StrEnum
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from bridge.kinds import Channel
from oadr.errors import InvalidData
from oadr.isotime import parse_duration
from oadr.messages import OptReason, OptType

MAX_COUNT = 100_000  # VENs one [[ven]] table may expand into


class DeviceClass(StrEnum):
    BATTERY = "battery"
    EV = "ev"
    HEAT_PUMP = "heat_pump"
    HOT_WATER = "hot_water"
    HVAC = "hvac"
    GENERIC = "generic"


@dataclass(frozen=True, slots=True, kw_only=True)
class ResourceSpec:
    """A device group a VEN fronts, addressed by the VTN as an eiTarget resourceID."""

    resource_id: str
    device_class: DeviceClass = DeviceClass.GENERIC
    devices: int = 1
    rated_kw: float  # the group's maximum import
    baseline_kw: float  # its typical import when nobody asks for anything
    flexible_kw: float  # how far it can move from baseline on request (>= 0)
    # How the bridge reaches the devices (bridge/inventory.py fills what is left out by class).
    channel: Channel | None = None
    network_area: str = "default"  # the DSO's network area (constraint zone) the devices sit in
    export_kw: float = 0.0  # the group's maximum export (batteries, V2G)
    capacity_kwh: float | None = None  # the group's storage (kWh); None: a typical value by class
    time_limited_plans: bool = True  # False: the devices take one command per mode change


@dataclass(frozen=True, slots=True, kw_only=True)
class AvailabilitySpec:
    """A known unavailability (maintenance, a user's manual override) or availability window,
    sent as an oadrCreateOpt availability schedule."""

    opt_id: str
    opt_type: OptType
    reason: OptReason
    start: datetime
    duration: timedelta
    resources: tuple[str, ...] = ()  # empty: the whole VEN
    market_context: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsSpec:
    cert: str
    key: str
    ca: str


@dataclass(frozen=True, slots=True, kw_only=True)
class VenSpec:
    name: str  # venName, unique in the fleet
    vtn_url: str  # base URL, e.g. https://vtn:8443/OpenADR2/Simple/2.0b
    ven_id: str | None = None  # pre-allocated by the VTN operator
    market_contexts: tuple[str, ...] = ()  # programs this VEN takes part in
    poll_interval: timedelta = timedelta(seconds=10)  # until the VTN gives oadrRequestedOadrPollFreq
    resources: tuple[ResourceSpec, ...] = ()
    availability: tuple[AvailabilitySpec, ...] = ()
    tls: TlsSpec | None = None
    vtn_fingerprint: str | None = None  # pinned VTN certificate fingerprint (aa:bb:..., 10 bytes)
    sign: bool = False  # sign every message with the TLS key (XML signature)
    cancel_on_shutdown: bool = False
    report_min_period: timedelta = timedelta(seconds=10)  # fastest sampling offered in METADATA
    report_jitter: float = 0.1  # share of a report period by which each report is randomly delayed
    min_opt_in_share: float = 0.5  # opt out when less than this share of a request can be met
    response_programs: tuple[str, ...] = ()  # market contexts whose events are response DSR
    push: bool = False  # the VTN pushes to the fleet's listener; no oadrPoll
    # A push VEN registers again as a pull VEN once no push has come for this many poll
    # periods; None: never.
    push_fallback_to_pull: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class FleetSpec:
    vens: tuple[VenSpec, ...]
    database_url: str | None = None  # default: sqlite file beside the fleet file's data dir
    max_connections: int = 100  # the shared HTTP connection pool
    concurrency: int = 200  # exchanges in flight at once across the fleet
    push_listen: tuple[str, int] | None = None  # (host, port) of the push VENs' listener
    push_url: str | None = None  # its base URL for the VTN; None: scheme://host:bound-port


class FleetError(ValueError):
    """A fleet file that cannot be used; the message names the file and the key path at fault."""

    def __init__(self, source: str, key_path: str, reason: str) -> None:
        super().__init__(f"{source}: {key_path}: {reason}" if key_path else f"{source}: {reason}")
        self.source = source
        self.key_path = key_path
        self.reason = reason


def load_fleet(path: str | Path) -> FleetSpec:
    """Read a fleet file (TOML); relative TLS paths in it are taken from the file's directory.

    Raises:
        FleetError: the file is not TOML, or not a valid fleet.
        OSError: the file cannot be read.
    """
    file = Path(path)
    with file.open("rb") as f:
        try:
            data = tomllib.load(f)
        except tomllib.TOMLDecodeError as exc:
            raise FleetError(str(path), "", f"not valid TOML: {exc}") from None
    return parse_fleet(data, source=str(path), base_dir=file.absolute().parent)


def parse_fleet(data: Mapping[str, Any], *, source: str, base_dir: Path) -> FleetSpec:
    """Check a decoded fleet file and build its specs. `source` names the file in errors;
    relative TLS paths are joined to `base_dir`.

    Raises:
        FleetError: a key is unknown, missing, of the wrong type or out of range, or names clash.
    """
    try:
        return _fleet(data, base_dir)
    except _Invalid as exc:
        key_path, reason = exc.args
        raise FleetError(source, key_path, reason) from None


class _Invalid(Exception):
    """(key path, reason), raised below `parse_fleet`, which alone knows the file's name."""


def _fail(key_path: str, reason: str) -> NoReturn:
    raise _Invalid(key_path, reason)


_FLEET_KEYS = frozenset({"database_url", "max_connections", "concurrency", "push_listen",
                         "push_url", "defaults", "ven"})
_DEFAULT_KEYS = frozenset({
    "vtn_url", "poll_interval", "tls", "vtn_fingerprint", "sign", "cancel_on_shutdown",
    "report_min_period", "report_jitter", "min_opt_in_share", "market_contexts",
    "response_programs", "resources", "availability", "push", "push_fallback_to_pull",
})
_VEN_KEYS = _DEFAULT_KEYS | {"name", "ven_id", "count"}
_TLS_KEYS = frozenset({"cert", "key", "ca"})
_RESOURCE_KEYS = frozenset({"id", "class", "devices", "rated_kw", "baseline_kw", "flexible_kw",
                            "channel", "network_area", "export_kw", "capacity_kwh",
                            "time_limited_plans"})
_OPT_KEYS = frozenset({"id", "type", "reason", "start", "duration", "resources", "market_context"})

# Each value with its key path: a [[ven]] table's own key, or the [defaults] one it inherits.
_Fields = Mapping[str, tuple[object, str]]


def _fleet(data: Mapping[str, object], base_dir: Path) -> FleetSpec:
    _known(data, _FLEET_KEYS, "")
    defaults = _table(data.get("defaults", {}), "defaults")
    _known(defaults, _DEFAULT_KEYS, "defaults")
    entries = _array(data.get("ven", []), "ven")
    if not entries:
        _fail("ven", "required: at least one [[ven]] table")
    vens: list[VenSpec] = []
    pushing: list[tuple[str, VenSpec]] = []  # (the [[ven]] it came from, the VEN)
    listening = "push_listen" in data
    taken_by: dict[tuple[str, str], str] = {}  # (key, value) -> the VEN that took it first
    for i, entry in enumerate(entries):
        path = f"ven[{i}]"
        table = _table(entry, path)
        _known(table, _VEN_KEYS, path)
        count = _int(table.get("count", 1), f"{path}.count", hi=MAX_COUNT)
        fields = {key: (value, f"defaults.{key}") for key, value in defaults.items()}
        fields.update((key, (value, f"{path}.{key}")) for key, value in table.items())
        for n in range(1, count + 1):
            ven = _ven(fields, path, n, base_dir, listening)
            here = f"{path} (n={n})" if count > 1 else path
            # Two VENs sharing a venName or a venID would take over each other's registration.
            for key, value in (("name", ven.name), ("ven_id", ven.ven_id)):
                if value is not None and (other := taken_by.setdefault((key, value), here)) != here:
                    _fail(f"{path}.{key}", f"{value!r} is already used by {other}")
            vens.append(ven)
            if ven.push:
                pushing.append((path, ven))
    kw: dict[str, Any] = {}
    if "database_url" in data:
        kw["database_url"] = _text(data["database_url"], "database_url")
    for key in ("max_connections", "concurrency"):
        if key in data:
            kw[key] = _int(data[key], key)
    kw |= _push_listener(data, pushing)
    return FleetSpec(vens=tuple(vens), **kw)


def _push_listener(data: Mapping[str, object],
                   pushing: list[tuple[str, VenSpec]]) -> dict[str, Any]:
    """push_listen and push_url, checked against the push VENs (with their [[ven]] paths)."""
    if "push_listen" not in data:
        if "push_url" in data:
            _fail("push_url", "needs push_listen")
        return {}
    if not pushing:
        _fail("push_listen", "no [[ven]] has push = true")
    host, port = _address(data["push_listen"], "push_listen")
    # One listener serves them all: either every push VEN speaks TLS or none does.
    first, secure = pushing[0][0], pushing[0][1].tls is not None
    for path, ven in pushing:
        if (ven.tls is not None) != secure:
            _fail(f"{path}.tls", f"push VENs share one listener: all of them need tls or none "
                  f"({first} {'has' if secure else 'has no'} tls)")
    kw: dict[str, Any] = {"push_listen": (host, port)}
    if "push_url" in data:
        url = _url(data["push_url"], "push_url")
        if secure and not url.startswith("https://"):
            _fail("push_url", "must be https:// (the push VENs have tls)")
        kw["push_url"] = url.rstrip("/")
    elif host in _EVERY_INTERFACE or port == 0:
        _fail("push_listen", "binds every interface or any free port: give push_url, the "
              "address the VTN reaches the listener at")
    return kw


def _ven(fields: _Fields, path: str, n: int, base_dir: Path, listening: bool) -> VenSpec:
    if "name" not in fields:
        _fail(f"{path}.name", "required")
    if "vtn_url" not in fields:
        _fail(f"{path}.vtn_url", "required, in the [[ven]] table or in [defaults]")
    # Only keys present are passed on, so VenSpec's own defaults stay the single source.
    kw: dict[str, Any] = {}
    for key, (value, where) in fields.items():
        match key:
            case "name" | "ven_id":
                kw[key] = _template(value, where, n)
            case "vtn_url":
                kw[key] = _url(value, where)
            case "market_contexts" | "response_programs":
                kw[key] = _texts(value, where)
            case "poll_interval" | "report_min_period":
                kw[key] = _duration(value, where)
            case "report_jitter" | "min_opt_in_share":
                kw[key] = _number(value, where, hi=1.0)
            case "sign" | "cancel_on_shutdown" | "push":
                kw[key] = _bool(value, where)
            case "vtn_fingerprint":
                kw[key] = _fingerprint(value, where)
            case "tls":
                kw[key] = _tls(value, where, n, base_dir)
            case "resources":
                kw[key] = _resources(value, where, n)
            case "push_fallback_to_pull":
                kw[key] = _int(value, where)
    if "availability" in fields:
        value, where = fields["availability"]
        ids = {r.resource_id for r in kw.get("resources", ())}
        kw["availability"] = _availability(value, where, n, ids)
    if kw.get("sign") and "tls" not in kw:
        _fail(fields["sign"][1], "sign = true needs tls (its key signs the messages)")
    if kw.get("vtn_fingerprint") and "tls" not in kw:
        _fail(fields["vtn_fingerprint"][1], "a pinned fingerprint needs tls (an https:// VTN)")
    if kw.get("push") and not listening:
        _fail(fields["push"][1], 'push = true needs push_listen = "HOST:PORT" (the fleet\'s '
              "push listener)")
    if "push_fallback_to_pull" in kw and not kw.get("push"):
        _fail(fields["push_fallback_to_pull"][1], "needs push = true")
    return VenSpec(**kw)


def _resources(value: object, path: str, n: int) -> tuple[ResourceSpec, ...]:
    specs: list[ResourceSpec] = []
    for i, item in enumerate(_array(value, path)):
        where = f"{path}[{i}]"
        table = _table(item, where)
        _known(table, _RESOURCE_KEYS, where)
        resource_id = _template(_need(table, "id", where), f"{where}.id", n)
        if any(s.resource_id == resource_id for s in specs):
            _fail(f"{where}.id", f"{resource_id!r} is already a resource of this VEN")
        rated = _number(_need(table, "rated_kw", where), f"{where}.rated_kw")
        baseline = _number(_need(table, "baseline_kw", where), f"{where}.baseline_kw")
        if baseline > rated:
            _fail(f"{where}.baseline_kw", f"must be <= rated_kw ({rated:g})")
        kw: dict[str, Any] = {}
        if "class" in table:
            kw["device_class"] = _choice(table["class"], DeviceClass, f"{where}.class")
        if "devices" in table:
            kw["devices"] = _int(table["devices"], f"{where}.devices")
        flexible = _number(_need(table, "flexible_kw", where), f"{where}.flexible_kw")
        if "channel" in table:
            kw["channel"] = _choice(table["channel"], Channel, f"{where}.channel")
        if "network_area" in table:
            kw["network_area"] = _template(table["network_area"], f"{where}.network_area", n)
        for key in ("export_kw", "capacity_kwh"):
            if key in table:
                kw[key] = _number(table[key], f"{where}.{key}")
        if "time_limited_plans" in table:
            kw["time_limited_plans"] = _bool(table["time_limited_plans"],
                                             f"{where}.time_limited_plans")
        specs.append(ResourceSpec(resource_id=resource_id, rated_kw=rated, baseline_kw=baseline,
                                  flexible_kw=flexible, **kw))
    return tuple(specs)


def _availability(value: object, path: str, n: int, ids: set[str]) -> tuple[AvailabilitySpec, ...]:
    specs: list[AvailabilitySpec] = []
    for i, item in enumerate(_array(value, path)):
        where = f"{path}[{i}]"
        table = _table(item, where)
        _known(table, _OPT_KEYS, where)
        opt_id = _template(_need(table, "id", where), f"{where}.id", n)
        if any(s.opt_id == opt_id for s in specs):
            _fail(f"{where}.id", f"{opt_id!r} is already an opt id of this VEN")
        kw: dict[str, Any] = {}
        if "resources" in table:
            names = _array(table["resources"], f"{where}.resources")
            kw["resources"] = tuple(_template(r, f"{where}.resources[{j}]", n)
                                    for j, r in enumerate(names))
            for j, resource_id in enumerate(kw["resources"]):
                if resource_id not in ids:
                    _fail(f"{where}.resources[{j}]", f"{resource_id!r} is not a resource here")
        if "market_context" in table:
            kw["market_context"] = _text(table["market_context"], f"{where}.market_context")
        specs.append(AvailabilitySpec(
            opt_id=opt_id,
            opt_type=_choice(_need(table, "type", where), OptType, f"{where}.type"),
            reason=_choice(_need(table, "reason", where), OptReason, f"{where}.reason"),
            start=_datetime(_need(table, "start", where), f"{where}.start"),
            duration=_duration(_need(table, "duration", where), f"{where}.duration"),
            **kw,
        ))
    return tuple(specs)


def _tls(value: object, path: str, n: int, base_dir: Path) -> TlsSpec:
    table = _table(value, path)
    _known(table, _TLS_KEYS, path)

    def file(key: str) -> str:
        return str(base_dir / _template(_need(table, key, path), f"{path}.{key}", n))

    return TlsSpec(cert=file("cert"), key=file("key"), ca=file("ca"))


# --- values -------------------------------------------------------------------------------

def _known(table: Mapping[str, object], allowed: frozenset[str], path: str) -> None:
    for key in table:
        if key not in allowed:
            close = get_close_matches(key, allowed, n=1)
            known = ", ".join(sorted(allowed))
            hint = f"did you mean {close[0]!r}?" if close else f"known keys: {known}"
            _fail(f"{path}.{key}" if path else key, f"unknown key ({hint})")


def _need(table: Mapping[str, object], key: str, path: str) -> object:
    if key not in table:
        _fail(f"{path}.{key}", "required")
    return table[key]


def _table(value: object, path: str) -> Mapping[str, object]:
    if not isinstance(value, dict):
        _fail(path, "must be a table")
    return value


def _array(value: object, path: str) -> list[object]:
    if not isinstance(value, list):
        _fail(path, "must be an array")
    return value


def _text(value: object, path: str) -> str:
    if not isinstance(value, str) or not value.strip():
        _fail(path, "must be a non-empty string")
    return value


def _texts(value: object, path: str) -> tuple[str, ...]:
    return tuple(_text(item, f"{path}[{i}]") for i, item in enumerate(_array(value, path)))


def _template(value: object, path: str, n: int) -> str:
    text = _text(value, path)
    try:
        return text.format(n=n)
    except (KeyError, IndexError, ValueError, AttributeError, TypeError) as exc:
        _fail(path, f"{text!r} is not a {{n}} template ({exc!r}); write a literal brace twice")


def _url(value: object, path: str) -> str:
    url = _text(value, path)
    if not url.startswith(("http://", "https://")):
        _fail(path, "must start with http:// or https://")
    return url


def _bool(value: object, path: str) -> bool:
    if not isinstance(value, bool):
        _fail(path, "must be true or false")
    return value


def _number(value: object, path: str, *, hi: float = math.inf) -> float:
    # bool is an int to Python, and TOML has nan and inf: none of them is a power or a share.
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= hi:
        if math.isfinite(value):
            return float(value)
    _fail(path, "must be a number >= 0" if hi == math.inf else f"must be a number from 0 to {hi:g}")


def _int(value: object, path: str, *, hi: int | None = None) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= (hi or value):
        return value
    _fail(path, "must be an integer >= 1" if hi is None else f"must be an integer from 1 to {hi}")


_E = TypeVar("_E", bound=StrEnum)


def _choice(value: object, enum: type[_E], path: str) -> _E:
    for member in enum:
        if member.value == value:
            return member
    _fail(path, f"must be one of {', '.join(repr(m.value) for m in enum)}")


_SHORT_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(value: object, path: str) -> timedelta:
    duration = timedelta(0)  # stands for "not a duration" too: both are refused below
    try:
        if isinstance(value, int | float) and not isinstance(value, bool):
            duration = timedelta(seconds=value)
        elif isinstance(value, str) and (short := _SHORT_DURATION.fullmatch(value.strip())):
            duration = timedelta(seconds=float(short[1]) * _UNIT_SECONDS[short[2]])
        elif isinstance(value, str):
            duration = parse_duration(value)
    except (InvalidData, OverflowError, ValueError):  # not ISO 8601, nan, or beyond timedelta
        pass
    if duration <= timedelta(0):
        _fail(path, "must be a positive duration: PT10S, 10s, 5m, 2h, 1d or a number of seconds")
    return duration


def _datetime(value: object, path: str) -> datetime:
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip())
        except ValueError:
            pass
    # A naive time would be read in whatever zone the host happens to run in.
    if not isinstance(value, datetime) or value.utcoffset() is None:
        _fail(path, "must be an ISO 8601 date-time with a zone (Z or +hh:mm)")
    return value.astimezone(UTC)


_EVERY_INTERFACE = frozenset({"0.0.0.0", "::"})


def _address(value: object, path: str) -> tuple[str, int]:
    """"HOST:PORT", an IPv6 host in brackets ("[::1]:9443"); port 0 takes any free one."""
    host, _, port = _text(value, path).strip().rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        _fail(path, "write an IPv6 host in brackets: \"[::1]:9443\"")
    if not (host and port.isascii() and port.isdigit() and int(port) <= 65535):
        _fail(path, 'must be "HOST:PORT" with a port from 0 to 65535, e.g. "0.0.0.0:9443"')
    return host, int(port)


_FINGERPRINT = re.compile(r"[0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2}){9}|[0-9A-Fa-f]{20}")


def _fingerprint(value: object, path: str) -> str:
    # Spelt as oadr.signing.fingerprint spells a certificate's, so the two compare equal.
    text = _text(value, path).strip()
    if not _FINGERPRINT.fullmatch(text):
        _fail(path, "must be 10 bytes of hex, colon-separated (AA:BB:...) or not")
    digits = text.replace(":", "").upper()
    return ":".join(digits[i:i + 2] for i in range(0, 20, 2))
