"""How the campaign asks a VTN under test to create, modify or cancel an event.

A certification lab has an operator type events into the VTN under test; the campaign does the
same through an `EventHook`: `ApiHook` drives adrgate's own operator API, `PromptHook` asks a
person (the lab style, for third-party VTNs), and `python:MODULE:ATTR` loads any object with the
three methods (the openleadr tests use one that calls `OpenADRServer.add_event`).
A hook that can also cancel a report request (`ReportHook`) enables the report-cancel cases.
"""

from __future__ import annotations

import asyncio
import importlib
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol, runtime_checkable

import aiohttp

from oadr.isotime import format_datetime, format_duration
from oadr.messages import ItemBase, ResponseRequired


class HookRefused(Exception):
    """The VTN under test refused the request (for example an overlapping event)."""


class HookFailed(Exception):
    """The hook could not reach the VTN or did not understand its answer."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SignalRequest:
    name: str  # signalName, e.g. SIMPLE, LOAD_CONTROL
    type: str  # signalType, e.g. level, x-loadControlCapacity
    intervals: tuple[tuple[timedelta, float], ...]  # (duration, payload), back to back
    item_base: ItemBase | None = None

    def describe(self) -> str:
        parts = ", ".join(f"{format_duration(d)} at {v:g}" for d, v in self.intervals)
        unit = "" if self.item_base is None else \
            f" in {self.item_base.kind} ({self.item_base.units})"
        return f"signal {self.name} / {self.type}{unit}: {parts}"


@dataclass(frozen=True, slots=True, kw_only=True)
class EventRequest:
    """The event a case needs the VTN under test to send, targeted at one venID."""

    ven_id: str
    market_context: str
    start: datetime
    signals: tuple[SignalRequest, ...]
    priority: int = 0
    start_after: timedelta | None = None  # randomised start (tolerance/startafter)
    notification: timedelta | None = None
    ramp_up: timedelta | None = None
    recovery: timedelta | None = None
    response_required: ResponseRequired = ResponseRequired.ALWAYS

    @property
    def duration(self) -> timedelta:
        return max(sum((d for d, _ in s.intervals), timedelta(0)) for s in self.signals)

    def describe(self) -> str:
        extras = [f"{name} {format_duration(value)}" for name, value in (
            ("start after (randomisation)", self.start_after), ("notification", self.notification),
            ("ramp-up", self.ramp_up), ("recovery", self.recovery)) if value is not None]
        lines = [f"an event for venID {self.ven_id} in market context {self.market_context}",
                 f"starting {format_datetime(self.start)} for {format_duration(self.duration)}",
                 f"priority {self.priority}, responseRequired {self.response_required}",
                 *(s.describe() for s in self.signals), *extras]
        return "\n  ".join(lines)


class EventHook(Protocol):
    async def create(self, request: EventRequest) -> str: ...

    async def modify(self, event_id: str, request: EventRequest) -> None: ...

    async def cancel(self, event_id: str) -> None: ...


@runtime_checkable
class ReportHook(Protocol):
    async def cancel_report(self, ven_id: str, report_request_id: str) -> None: ...


def event_json(request: EventRequest) -> dict[str, Any]:
    """The operator API's event body (vtn/eventjson.py) for `request`."""
    def item(ib: ItemBase | None) -> dict[str, Any] | None:
        if ib is None:
            return None
        return {k: v for k, v in (("kind", ib.kind), ("description", ib.description),
                                  ("units", ib.units), ("si_scale", ib.si_scale),
                                  ("hertz", ib.hertz), ("voltage", ib.voltage), ("ac", ib.ac))
                if v is not None}

    body: dict[str, Any] = {
        "market_context": request.market_context,
        "dtstart": format_datetime(request.start),
        "targets": {"ven_ids": [request.ven_id]},
        "priority": request.priority,
        "response_required": str(request.response_required),
        "signals": [{"signal_name": s.name, "signal_type": s.type,
                     "intervals": [{"duration": format_duration(d), "payload": v}
                                   for d, v in s.intervals],
                     **({"item_base": item(s.item_base)} if s.item_base else {})}
                    for s in request.signals],
    }
    for key, value in (("start_after", request.start_after), ("notification", request.notification),
                       ("ramp_up", request.ramp_up), ("recovery", request.recovery)):
        if value is not None:
            body[key] = format_duration(value)
    return body


class ApiHook:
    """adrgate's operator API (`/api/events`...), as an `EventHook` and a `ReportHook`."""

    def __init__(self, api_base_url: str, token: str | None = None, *,
                 ssl_context: ssl.SSLContext | None = None, timeout_s: float = 10.0) -> None:
        self.base = api_base_url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.ssl: ssl.SSLContext | bool = ssl_context if ssl_context is not None else True
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def _call(self, method: str, path: str, body: dict[str, Any] | None = None
                    ) -> dict[str, Any]:
        try:
            async with aiohttp.ClientSession(timeout=self.timeout) as session, \
                    session.request(method, self.base + path, json=body, headers=self.headers,
                                    ssl=self.ssl) as resp:
                text = await resp.text()
                if 400 <= resp.status < 500:
                    raise HookRefused(f"{method} {path}: HTTP {resp.status} {text[:300]}")
                if resp.status >= 300:
                    raise HookFailed(f"{method} {path}: HTTP {resp.status} {text[:300]}")
                data = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise HookFailed(f"{method} {path}: {type(exc).__name__}: {exc}") from exc
        if not isinstance(data, dict):
            raise HookFailed(f"{method} {path}: expected a JSON object")
        return data

    async def create(self, request: EventRequest) -> str:
        data = await self._call("POST", "/events", event_json(request))
        event_id = data.get("event_id")
        if not isinstance(event_id, str):
            raise HookFailed("POST /events: the answer names no event_id")
        return event_id

    async def modify(self, event_id: str, request: EventRequest) -> None:
        await self._call("PUT", f"/events/{event_id}", event_json(request))

    async def cancel(self, event_id: str) -> None:
        await self._call("POST", f"/events/{event_id}/cancel")

    async def cancel_report(self, ven_id: str, report_request_id: str) -> None:
        await self._call("POST", f"/report-requests/{report_request_id}/cancel")


class PromptHook:
    """Asks a person at the VTN under test, as a certification lab does; `read` and `write` are
    `input` and `print` by default (blocking calls run in a thread)."""

    def __init__(self, read: Callable[[str], str] = input,
                 write: Callable[[str], None] = print) -> None:
        self.read = read
        self.write = write

    async def _ask(self, text: str, prompt: str) -> str:
        self.write(text)
        return (await asyncio.to_thread(self.read, prompt)).strip()

    async def create(self, request: EventRequest) -> str:
        for _ in range(3):  # bounded: an empty answer is asked again twice
            answer = await self._ask(f"Create on the VTN under test {request.describe()}",
                                     "type the eventID the VTN gave it and press Enter: ")
            if answer:
                return answer
        raise HookFailed("no eventID was typed")

    async def modify(self, event_id: str, request: EventRequest) -> None:
        await self._ask(f"Modify event {event_id} on the VTN under test so that it is "
                        f"{request.describe()}", "press Enter when done: ")

    async def cancel(self, event_id: str) -> None:
        await self._ask(f"Cancel event {event_id} on the VTN under test",
                        "press Enter when done: ")

    async def cancel_report(self, ven_id: str, report_request_id: str) -> None:
        await self._ask(f"Cancel report request {report_request_id} of venID {ven_id} on the "
                        f"VTN under test", "press Enter when done: ")


def hook_from_spec(spec: str, *, ssl_context: ssl.SSLContext | None = None) -> EventHook:
    """`api:URL[#TOKEN]`, `prompt` or `python:MODULE:ATTR` (ATTR an EventHook, or a callable
    without arguments returning one).

    Raises:
        ValueError: an unknown form, or a python target that is missing or not a hook.
    """
    kind, _, rest = spec.partition(":")
    if kind == "prompt" and not rest:
        return PromptHook()
    if kind == "api" and rest.startswith(("http://", "https://")):
        url, _, token = rest.partition("#")
        return ApiHook(url, token or None, ssl_context=ssl_context)
    if kind == "python" and rest.count(":") == 1 and all(rest.split(":")):
        module_name, attr = rest.split(":")
        try:
            found = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"hook {spec!r}: {exc}") from None
        hook = found
        if isinstance(found, type) or (callable(found) and not _is_hook(found)):
            try:  # a class or a factory without arguments builds the hook
                hook = found()
            except TypeError as exc:
                raise ValueError(f"hook {spec!r}: cannot call {attr}(): {exc}") from None
        if not _is_hook(hook):
            raise ValueError(f"hook {spec!r}: {attr} has no async create, modify and cancel")
        return hook  # type: ignore[no-any-return]
    raise ValueError(f"bad hook {spec!r}: expected api:URL[#TOKEN], prompt or "
                     f"python:MODULE:ATTR")


def _is_hook(obj: object) -> bool:
    return all(asyncio.iscoroutinefunction(getattr(obj, m, None))
               for m in ("create", "modify", "cancel"))
