"""ISO 8601 date-times and durations as OpenADR 2.0b carries them.

Rules of this file:
- Everything parsed is an *aware UTC* `datetime` or a `timedelta`; garbage raises `InvalidData`
  (454), never `ValueError`, so the codec can hand it to the peer as their error.
- Parsing is lenient where real implementations differ and the meaning is unambiguous:
  `Z`, `+hh:mm`/`-hh:mm`/`+hhmm` offsets, fractional seconds of any length (truncated to
  microseconds), `T24:00:00`, and a missing zone (read as UTC: the xcal `DateTimeType` pattern
  makes `Z` optional). openleadr parses only `...Z`, a known defect we do not copy.
- Formatting is strict and XSD-valid: xcal `DateTimeType` (oadr_xcal_20b.xsd) is
  `\\d{4}-\\d{2}-\\d{2}T\\d{2}:\\d{2}:\\d{2}(\\.\\d*)?Z?`, so we always emit UTC with `Z`, and
  fractional seconds only when the microseconds are non-zero.
- Durations follow RFC 5545 / ISO 8601 (`[+-]P[nW][nD][T[nH][nM][nS]]`). Years and months have no
  fixed length, so a non-zero `Y` or month `M` is refused rather than guessed (openleadr guesses
  365/30 days). `P` and `PT` alone (openleadr renders a zero timedelta as `P`) mean zero.
- xcal `DurationValueType` has no fractional seconds: `format_duration` still writes them when a
  timedelta has microseconds (ISO-valid), and `codec.serialize`'s own XSD check refuses such
  output as our bug (`LocalAdrError`) instead of silently rounding.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation

from .errors import InvalidData

__all__ = ["parse_datetime", "format_datetime", "parse_duration", "format_duration"]

_DATETIME = re.compile(
    r"(?P<y>\d{4})-(?P<mo>\d{2})-(?P<d>\d{2})[Tt ]"
    r"(?P<h>\d{2}):(?P<mi>\d{2}):(?P<s>\d{2})(?:[.,](?P<frac>\d+))?"
    r"(?P<tz>[Zz]|[+-]\d{2}(?::?\d{2})?)?"
)

_NUM = r"(\d+(?:[.,]\d+)?)"
_DURATION = re.compile(
    rf"(?P<sign>[+-])?P(?:{_NUM}W)?(?:{_NUM}Y)?(?:{_NUM}M)?(?:{_NUM}D)?"
    rf"(?:T(?:{_NUM}H)?(?:{_NUM}M)?(?:{_NUM}S)?)?"
)
# oadr_xcal_20b.xsd DurationValueType also admits a bare "<n>W" (no P) as its second alternative.
_BARE_WEEKS = re.compile(r"(\d+)W")


def parse_datetime(s: str) -> datetime:
    """Parse an ISO 8601 date-time into an aware UTC datetime.

    Raises:
        InvalidData: `s` is not a date-time.
    """
    m = _DATETIME.fullmatch(s.strip())
    if m is None:
        raise InvalidData(f"not an ISO 8601 date-time: {s[:64]!r}")
    frac = (m["frac"] or "")[:6].ljust(6, "0")
    hour, extra = int(m["h"]), timedelta(0)
    if hour == 24:  # xs:dateTime allows 24:00:00 for the end of a day
        if m["mi"] != "00" or m["s"] != "00" or int(frac):
            raise InvalidData(f"not an ISO 8601 date-time: {s[:64]!r}")
        hour, extra = 0, timedelta(days=1)
    try:
        value = datetime(
            int(m["y"]), int(m["mo"]), int(m["d"]), hour, int(m["mi"]), int(m["s"]), int(frac),
            tzinfo=_zone(m["tz"]),
        ) + extra
        return value.astimezone(UTC)
    except (ValueError, OverflowError) as exc:
        raise InvalidData(f"invalid date-time {s[:64]!r}: {exc}") from None


def _zone(tz: str | None) -> timezone:
    if tz is None or tz in "Zz":
        return UTC
    sign = -1 if tz[0] == "-" else 1
    digits = tz[1:].replace(":", "")
    hours, minutes = int(digits[:2]), int(digits[2:] or 0)
    if hours > 23 or minutes > 59:
        raise ValueError(f"offset {tz} out of range")
    return timezone(sign * timedelta(hours=hours, minutes=minutes))


def format_datetime(dt: datetime) -> str:
    """Format an aware datetime as XSD-valid UTC: `2024-01-31T17:00:00Z` (`.123Z` if needed).

    Raises:
        ValueError: `dt` is naive (a programming error on our side, not the peer's).
    """
    if dt.utcoffset() is None:
        raise ValueError(f"naive datetime {dt!r}: OpenADR needs an aware UTC time")
    u = dt.astimezone(UTC)
    text = f"{u.year:04d}-{u.month:02d}-{u.day:02d}T{u.hour:02d}:{u.minute:02d}:{u.second:02d}"
    if u.microsecond:
        text += f".{u.microsecond:06d}".rstrip("0")
    return text + "Z"


def parse_duration(s: str) -> timedelta:
    """Parse an RFC 5545 / ISO 8601 duration (`PT1H30M`, `-PT5M`, `P1D`, `PT0.5S`, `P1W`).

    Raises:
        InvalidData: `s` is not a duration, or it names non-zero years or months.
    """
    text = s.strip()
    bare = _BARE_WEEKS.fullmatch(text)
    if bare:
        text = f"P{bare[1]}W"
    m = _DURATION.fullmatch(text)
    if m is None:
        raise InvalidData(f"not an ISO 8601 duration: {s[:64]!r}")
    weeks, years, months, days, hours, minutes, seconds = (_decimal(g) for g in m.groups()[1:])
    if years or months:
        raise InvalidData(f"duration {s[:64]!r}: years and months have no fixed length")
    seconds += ((weeks * 7 + days) * 24 + hours) * 3600 + minutes * 60
    try:
        total = timedelta(microseconds=int(seconds * 1_000_000))
    except OverflowError:
        raise InvalidData(f"duration {s[:64]!r} out of range") from None
    return -total if m["sign"] == "-" else total


def _decimal(group: str | None) -> Decimal:
    if not group:
        return Decimal(0)
    try:
        return Decimal(group.replace(",", "."))
    except InvalidOperation:  # pragma: no cover - the regex admits only digits
        raise InvalidData(f"bad number in duration: {group!r}") from None


def format_duration(td: timedelta) -> str:
    """Format a timedelta as an RFC 5545 duration: `PT1H30M`, `P1DT2H`, `PT0S`, `-PT5M`."""
    if td < timedelta(0):
        return "-" + format_duration(-td)
    hours, rest = divmod(td.seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    date = f"{td.days}D" if td.days else ""
    time = ""
    if hours:
        time += f"{hours}H"
    if minutes:
        time += f"{minutes}M"
    if seconds or td.microseconds:
        frac = f".{td.microseconds:06d}".rstrip("0") if td.microseconds else ""
        time += f"{seconds}{frac}S"
    if not date and not time:
        return "PT0S"
    return f"P{date}" + (f"T{time}" if time else "")
