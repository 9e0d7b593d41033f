"""Building blocks shared by the codec modules: element helpers and the common sub-codecs.

Rules of this file:
- Encoders build trees with lxml `SubElement` under a parent that already carries the namespace
  declarations (`SIGNED_NSMAP`), so output uses the spec's usual prefixes; no string templates.
- An encoder never writes `None` as text (openleadr renders `requestID` as the string "None"):
  `put` raises `ValueError`, which `serialize` reports as our bug (`LocalAdrError`).
- Decoders run only on XSD-valid trees, yet still fail as `InvalidData` (454), never with a bare
  exception. All text is stripped: enumerations are `xs:token` (whitespace collapsed by the XSD) and
  real implementations pretty-print. An empty optional ID (`<ei:venID/>`, as openleadr sends in
  oadrCreatedPartyRegistration) reads as absent.
- Children are matched by qualified name. Sequence order on output follows the XSD exactly, since
  the schema check in `serialize` refuses anything else.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Final

from lxml import etree

from .errors import InvalidData
from .isotime import format_datetime, format_duration, parse_datetime, parse_duration
from .messages import ItemBase, Response, Target
from .schema import EI, EMIX, OADR, POWER, PYLD, SCALE, STRM, XCAL

Element = etree._Element

XSI: Final = "http://www.w3.org/2001/XMLSchema-instance"
# Declared once, on oadrPayload (or on the standalone oadrSignedObject handed to a signer);
# ds/dsp belong to the signer.
SIGNED_NSMAP: Final = {
    "oadr": OADR, "ei": EI, "pyld": PYLD, "emix": EMIX, "power": POWER, "scale": SCALE,
    "xcal": XCAL, "strm": STRM,
}


def q(ns: str, local: str) -> str:
    return f"{{{ns}}}{local}"


def local(tag: object) -> str:
    return etree.QName(tag).localname if isinstance(tag, str) else str(tag)


# --- encoding helpers ---------------------------------------------------------------------

def sub(parent: Element, ns: str, name: str) -> Element:
    return etree.SubElement(parent, q(ns, name))


def put(parent: Element, ns: str, name: str, value: str) -> Element:
    if value is None:
        raise ValueError(f"{local(parent.tag)}/{name}: None where the schema needs a value")
    el = sub(parent, ns, name)
    el.text = value
    return el


def put_opt(parent: Element, ns: str, name: str, value: str | None) -> None:
    if value is not None:
        put(parent, ns, name, value)


def fmt_float(value: float) -> str:
    """xs:float lexical form (Python spells infinities and NaN differently)."""
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "INF" if value > 0 else "-INF"
    return repr(float(value))


def fmt_decimal(value: float) -> str:
    """xs:decimal lexical form: no exponent allowed (`1e-05` becomes `0.00001`)."""
    return format(Decimal(repr(float(value))), "f")


def fmt_bool(value: bool) -> str:
    return "true" if value else "false"


def put_datetime(parent: Element, ns: str, name: str, value: datetime) -> None:
    put(parent, ns, name, format_datetime(value))


def put_dtstart(parent: Element, value: datetime) -> None:
    """xcal:dtstart/xcal:date-time."""
    put(sub(parent, XCAL, "dtstart"), XCAL, "date-time", format_datetime(value))


def put_duration_prop(parent: Element, ns: str, name: str, value: timedelta) -> None:
    """An xcal DurationPropType: <name><xcal:duration>PT1H</xcal:duration></name>."""
    put(sub(parent, ns, name), XCAL, "duration", format_duration(value))


def put_payload_float(parent: Element, value: float) -> None:
    put(sub(parent, EI, "payloadFloat"), EI, "value", fmt_float(value))


# --- decoding helpers ---------------------------------------------------------------------

def find(el: Element, ns: str, name: str) -> Element | None:
    return el.find(q(ns, name))


def need(el: Element, ns: str, name: str) -> Element:
    found = el.find(q(ns, name))
    if found is None:
        raise InvalidData(f"{local(el.tag)}: missing {name}")
    return found


def children(el: Element, ns: str, name: str) -> Iterator[Element]:
    return el.iterfind(q(ns, name))


def text_of(el: Element) -> str:
    return (el.text or "").strip()


def text(el: Element, ns: str, name: str) -> str:
    return text_of(need(el, ns, name))


def opt_text(el: Element, ns: str, name: str) -> str | None:
    """Text of an optional child; an absent or empty element reads as None."""
    found = el.find(q(ns, name))
    return (text_of(found) or None) if found is not None else None


def texts(el: Element, ns: str, name: str) -> tuple[str, ...]:
    return tuple(text_of(c) for c in el.iterfind(q(ns, name)))


def to_int(value: str) -> int:
    """An integer, tolerating `1.0` where the schema admits it (xs:string uids, xs:float)."""
    try:
        return int(value)
    except ValueError:
        number = float(value)
        if not number.is_integer():
            raise ValueError(f"{value!r} is not an integer") from None
        return int(number)


def to_float(value: str) -> float:
    return float(value)


_BOOLEANS: Final = {"true": True, "1": True, "false": False, "0": False}


def to_bool(value: str) -> bool:
    try:
        return _BOOLEANS[value.strip().lower()]
    except KeyError:
        raise InvalidData(f"not an xs:boolean: {value[:32]!r}") from None


def get_datetime(el: Element, ns: str, name: str) -> datetime:
    return parse_datetime(text(el, ns, name))


def opt_datetime(el: Element, ns: str, name: str) -> datetime | None:
    value = opt_text(el, ns, name)
    return None if value is None else parse_datetime(value)


def get_dtstart(el: Element) -> datetime | None:
    """xcal:dtstart/xcal:date-time under `el`, if present."""
    dtstart = find(el, XCAL, "dtstart")
    return None if dtstart is None else parse_datetime(text(dtstart, XCAL, "date-time"))


def duration_prop(el: Element, ns: str, name: str) -> timedelta | None:
    prop = find(el, ns, name)
    return None if prop is None else parse_duration(text(prop, XCAL, "duration"))


def payload_float(el: Element) -> float:
    """ei:payloadFloat/ei:value under `el`."""
    return to_float(text(need(el, EI, "payloadFloat"), EI, "value"))


# --- ei:eiResponse ------------------------------------------------------------------------

def put_response(parent: Element, r: Response) -> None:
    el = sub(parent, EI, "eiResponse")
    put(el, EI, "responseCode", f"{r.code:03d}")
    put(el, EI, "responseDescription", r.description)
    put(el, PYLD, "requestID", r.request_id)


def get_response(el: Element) -> Response:
    r = need(el, EI, "eiResponse")
    return Response(
        code=int(text(r, EI, "responseCode")),
        description=opt_text(r, EI, "responseDescription") or "",
        request_id=text(r, PYLD, "requestID"),
    )


# --- ei:eiTarget --------------------------------------------------------------------------

# EiTargetType sequence (oadr_ei_20b.xsd): ... groupID*, groupName*, resourceID*, venID*, partyID*
_TARGET_FIELDS: Final = (("groupID", "group_ids"), ("resourceID", "resource_ids"),
                         ("venID", "ven_ids"), ("partyID", "party_ids"))


def put_target(parent: Element, t: Target, ns: str = EI, name: str = "eiTarget") -> None:
    el = sub(parent, ns, name)
    for tag, attr in _TARGET_FIELDS:
        for value in getattr(t, attr):
            put(el, EI, tag, value)


def get_target(el: Element) -> Target:
    """Read the target kinds we resolve; assets, nodes, areas and group names are ignored."""
    return Target(
        group_ids=texts(el, EI, "groupID"), resource_ids=texts(el, EI, "resourceID"),
        ven_ids=texts(el, EI, "venID"), party_ids=texts(el, EI, "partyID"),
    )


# --- emix:itemBase ------------------------------------------------------------------------

# Members of the emix:itemBase substitution group (oadr_power_20b.xsd, oadr_20b.xsd) -> namespace.
ITEM_BASE_NS: Final = {
    "voltage": POWER, "energyApparent": POWER, "energyReactive": POWER, "energyReal": POWER,
    "powerApparent": POWER, "powerReactive": POWER, "powerReal": POWER,
    "customUnit": OADR, "current": OADR, "currency": OADR, "currencyPerKWh": OADR,
    "currencyPerKW": OADR, "currencyPerThm": OADR, "frequency": OADR, "Therm": OADR,
    "temperature": OADR, "pulseCount": OADR, "oadrGBDataDescription": OADR,
}
ITEM_BASE_TAGS: Final = frozenset(q(ns, name) for name, ns in ITEM_BASE_NS.items())
# PowerItemType adds a mandatory power:powerAttributes.
POWER_ITEMS: Final = frozenset({"powerApparent", "powerReactive", "powerReal"})
# Kinds whose content model is not description/units/siScaleCode; they go out as customUnit.
_NOT_ENCODABLE: Final = frozenset({"pulseCount", "oadrGBDataDescription"})
# Used when a power item has no attributes set (the schema requires them; GB mains).
DEFAULT_HERTZ: Final = 50.0
DEFAULT_VOLTAGE: Final = 230.0


def put_item_base(parent: Element, item: ItemBase) -> None:
    """Emit the itemBase member named by `item.kind`; unknown kinds fall back to oadr:customUnit."""
    known = item.kind in ITEM_BASE_NS and item.kind not in _NOT_ENCODABLE
    kind = item.kind if known else "customUnit"
    ns = ITEM_BASE_NS[kind]
    el = sub(parent, ns, kind)
    put(el, ns, "itemDescription", item.description)
    put(el, ns, "itemUnits", item.units)
    put(el, SCALE, "siScaleCode", item.si_scale)
    if kind in POWER_ITEMS:
        attrs = sub(el, POWER, "powerAttributes")
        put(attrs, POWER, "hertz", fmt_decimal(DEFAULT_HERTZ if item.hertz is None else item.hertz))
        put(attrs, POWER, "voltage",
            fmt_decimal(DEFAULT_VOLTAGE if item.voltage is None else item.voltage))
        put(attrs, POWER, "ac", fmt_bool(True if item.ac is None else item.ac))


def get_item_base(parent: Element) -> ItemBase | None:
    """The itemBase child of `parent` (eiEventSignal, oadrReportDescription, specifierPayload)."""
    for el in parent:
        if el.tag in ITEM_BASE_TAGS:
            return _item_base(el)
    return None


def _item_base(el: Element) -> ItemBase:
    by_name = {local(c.tag): c for c in el if isinstance(c.tag, str)}
    description = text_of(by_name["itemDescription"]) if "itemDescription" in by_name else ""
    units = text_of(by_name["itemUnits"]) if "itemUnits" in by_name else ""
    scale = text_of(by_name["siScaleCode"]) if "siScaleCode" in by_name else "none"
    hertz = voltage = ac = None
    attrs = by_name.get("powerAttributes")
    if attrs is not None:
        hertz = to_float(text(attrs, POWER, "hertz"))
        voltage = to_float(text(attrs, POWER, "voltage"))
        ac = to_bool(text(attrs, POWER, "ac"))
    return ItemBase(kind=local(el.tag), description=description, units=units, si_scale=scale,
                    hertz=hertz, voltage=voltage, ac=ac)
