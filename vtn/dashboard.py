"""The operator dashboard: a static page at / (vtn/static/) over read-only JSON under
/api/dashboard/, kept live by change notices on /api/stream (server-sent events).

The JSON is behind the operator token like the rest of /api/. The stream is not: EventSource
cannot send an Authorization header, and a token in the URL would end up in logs and history.
So the stream carries only which parts changed (`fleet`, `events`, `power`, `cmb`), never data;
the page then fetches those parts with its token.

Changes are found in the database, not in this process: a `ChangeFeed` re-reads a cheap marker
(`dashboard_data.change_marker`) every `check_every` seconds while anyone listens, so a dashboard
on one VTN replica sees what the other replica wrote.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, Final

from aiohttp import web
from pydantic_core import to_jsonable_python

from .api import Route, add_routes, event_json
from .app import DEPS, VtnDeps
from .cmb.api import CMB, judged_json, override_json
from .dashboard_data import (
    CHARTED,
    PARTS,
    STALE,
    Device,
    Marker,
    PowerView,
    area_charts,
    change_marker,
    changed_parts,
    chart_signal,
    contacts,
    deliveries,
    delivery_state,
    event_chart,
    event_window,
    iso,
    online_state,
    presence,
    recent_events,
    telemetry,
    verdict_counts,
)
from .eventjson import FieldError

log = logging.getLogger("adrgate.dashboard")

STATIC: Final = Path(__file__).with_name("static")
KEEPALIVE_S: Final = 15.0  # a comment line this often keeps proxies from closing the stream
MAX_LISTENERS: Final = 64  # open streams per process; more get 503
CMB_ROWS: Final = 50  # alerts and overrides shown
VERDICTS_SHOWN: Final = 10  # the latest plan verdicts per aggregator
PAGE_HEADERS: Final = {
    # our own script and style only: nothing injected into the page can run
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
                               "form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class Listener:
    """One open stream: the parts changed since it last wrote, and a wake-up."""

    def __init__(self) -> None:
        self.parts: set[str] = set()
        self.wake = asyncio.Event()

    def take(self) -> list[str]:
        parts: list[str] = [p for p in PARTS if p in self.parts]
        self.parts = set()
        self.wake.clear()
        return parts


class ChangeFeed:
    """Reads the change marker while anyone listens and tells every listener what changed."""

    def __init__(self, read: Callable[[], Marker], *, every: float,
                 max_listeners: int = MAX_LISTENERS) -> None:
        self.read = read
        self.every = every
        self.max_listeners = max_listeners
        self.listeners: set[Listener] = set()
        self.closing = False
        self._last: Marker | None = None
        self._failing = False

    def subscribe(self) -> Listener | None:
        """A new listener, or None when full or closing. The marker is read now if nobody was
        listening, so a change made after the caller's first load is never missed."""
        if self.closing or len(self.listeners) >= self.max_listeners:
            return None
        if not self.listeners:
            self._last = self._read()
        listener = Listener()
        self.listeners.add(listener)
        return listener

    def unsubscribe(self, listener: Listener) -> None:
        self.listeners.discard(listener)

    def _read(self) -> Marker | None:
        try:
            marker = self.read()
        except Exception:  # the database hiccuped: try again next time, keep the streams
            if not self._failing:
                log.exception("dashboard: could not read the change marker")
            self._failing = True
            return None
        self._failing = False
        return marker

    def check(self) -> None:
        if not self.listeners:
            self._last = None
            return
        marker = self._read()
        if marker is None:
            return
        parts = changed_parts(self._last, marker) if self._last is not None else []
        self._last = marker
        for listener in self.listeners if parts else ():
            listener.parts.update(parts)
            listener.wake.set()

    async def run(self) -> None:
        while not self.closing:
            await asyncio.sleep(self.every)
            self.check()

    def close(self) -> None:
        self.closing = True
        for listener in self.listeners:
            listener.wake.set()


FEED: Final = web.AppKey("dashboard_feed", ChangeFeed)


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


def _gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


async def stream(request: web.Request) -> web.StreamResponse:
    """text/event-stream: `ready` once, then `change` {"parts": [...]} whenever data changed."""
    feed = request.app[FEED]
    listener = feed.subscribe()
    if listener is None:
        return web.json_response({"error": "unavailable",
                                  "detail": "too many open streams"}, status=503)
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                       "Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    try:
        await resp.prepare(request)
        await resp.write(b"retry: 3000\n" + _sse("ready", {"parts": list(PARTS)}))
        idle = 0.0
        # wakes at least every `every` seconds to notice a client that went away
        while not feed.closing and not _gone(request):
            try:
                await asyncio.wait_for(listener.wake.wait(), feed.every)
            except TimeoutError:
                idle += feed.every
                if idle >= KEEPALIVE_S:
                    await resp.write(b": keepalive\n\n")
                    idle = 0.0
                continue
            parts = listener.take()
            if parts and not feed.closing:
                await resp.write(_sse("change", {"parts": parts}))
    except ConnectionResetError:
        pass  # the client left mid-write
    finally:
        feed.unsubscribe(listener)
    return resp


# --- data ---------------------------------------------------------------------------------

async def fleet(request: web.Request) -> web.Response:
    deps = request.app[DEPS]
    now = deps.clock()
    push = deps.store.push_states()
    seen, present = contacts(deps.store.engine), presence(deps.store.engine)
    polls = deps.store.last_polls()
    out = []
    for v in deps.store.list_vens():
        p, c = present.get(v.ven_id), seen.get(v.ven_id)
        unreachable = v.ven_id in push and push[v.ven_id].unreachable
        out.append({
            "ven_id": v.ven_id, "ven_name": v.ven_name, "status": str(v.status),
            "transport": "pull" if v.http_pull_model else "push",
            "online": online_state(p, unreachable, now),
            "resources_online": p.online if p else 0, "resources_offline": p.offline if p else 0,
            "resources": list(v.resources), "programs": list(v.programs),
            "registered_at": iso(v.registered_at),
            "last_contact": iso(max((t for t in (c.last_contact if c else None,
                                                  v.registered_at) if t is not None),
                                     default=None)),
            "last_poll": iso(polls.get(v.ven_id)),
            "last_report": iso(p.last_report if p else None),
            "open_events": c.open_events if c else 0})
    return web.json_response({"vens": out})


async def events(request: web.Request) -> web.Response:
    deps = request.app[DEPS]
    recs = recent_events(deps.store.engine)
    names = {v.ven_id: v.ven_name for v in deps.store.list_vens()}
    found = deliveries(deps.store.engine, [r.event.event_id for r in recs])
    out = []
    for rec in recs:
        body = event_json(rec, deps)
        mod = rec.event.modification_number
        body["deliveries"] = [{
            "ven_id": d.ven_id, "ven_name": names.get(d.ven_id, d.ven_id),
            "state": delivery_state(d, mod), "opt": str(d.opt_type) if d.opt_type else None,
            "response_code": d.response_code, "delivered_modification": d.delivered_mod,
            "acknowledged_modification": d.acked_mod, "delivered_at": iso(d.delivered_at),
            "responded_at": iso(d.responded_at)} for d in found[rec.event.event_id]]
        out.append(body)
    programs = [{"market_context": m, "name": n} for m, n, _ in deps.store.list_programs()]
    return web.json_response({"events": out, "programs": programs, "now": iso(deps.clock())})


def _devices(request: web.Request) -> list[Device]:
    cmb = request.app.get(CMB)
    if cmb is None:
        return []
    return [Device(ven_id=r.ven_id, resource_id=r.resource_id or "",
                   network_area=r.network_area, rated_import_kw=r.rated_import_kw)
            for r in cmb.store.registry().values() if r.ven_id is not None]


def _minutes(request: web.Request) -> int:
    raw = request.query.get("minutes", "30")
    if not raw.isdigit() or not 1 <= int(raw) <= 1440:
        raise FieldError("minutes", "expected an integer 1..1440")
    return int(raw)


async def power(request: web.Request) -> web.Response:
    deps = request.app[DEPS]
    now, minutes = deps.clock(), _minutes(request)
    area_start, area_end = now - timedelta(minutes=minutes), now + timedelta(minutes=minutes) / 4
    recs = [r for r in recent_events(deps.store.engine) if chart_signal(r.event) is not None]
    charted = recs[:CHARTED]
    in_window = [r for r in recs if r.event.active_period.dtstart < area_end
                 and (r.event.active_period.end is None or r.event.active_period.end > area_start)]
    wanted = {r.event.event_id: r for r in charted + in_window}
    since = min([area_start, *(event_window(r.event, now)[0] for r in wanted.values())]) - STALE
    data = telemetry(deps.store.engine, since, now)
    found = deliveries(deps.store.engine, list(wanted))
    view = PowerView(data, _devices(request),
                     {e: [d.ven_id for d in ds if not d.removed] for e, ds in found.items()})

    def draw() -> dict[str, Any]:
        return {"now": iso(now),
                "events": [c for r in charted if (c := event_chart(view, r, now)) is not None],
                "areas": area_charts(view, in_window, area_start, area_end, now),
                "area_source": "CMB device registry" if view.devices else None}

    # pure arithmetic on what was read, about a second for 1,000 VENs: off the event loop
    return web.json_response(await asyncio.to_thread(draw))


async def cmb_view(request: web.Request) -> web.Response:
    cmb = request.app.get(CMB)
    if cmb is None:
        return web.json_response({"enabled": False})
    store = cmb.store
    registry = store.registry()
    counts = verdict_counts(store.engine)
    names = sorted(set(store.aggregators()) | {r.owner for r in registry.values()} | set(counts))
    aggregators = [{
        "aggregator": a,
        "devices": sum(1 for r in registry.values() if r.owner == a),
        "network_areas": sorted({r.network_area for r in registry.values() if r.owner == a}),
        "accepted": counts.get(a, {}).get("accepted", 0),
        "rejected": counts.get(a, {}).get("rejected", 0),
        "verdicts": [judged_json(j) for j in store.verdicts(aggregator=a, limit=VERDICTS_SHOWN)],
    } for a in names]
    return web.json_response({
        "enabled": True, "aggregators": aggregators,
        "alerts": to_jsonable_python(store.alerts(limit=CMB_ROWS)),
        "overrides": [override_json(e) for e in store.overrides()[-CMB_ROWS:]][::-1]})


async def page(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "index.html", headers=PAGE_HEADERS)


ROUTES: Final = (
    Route("GET", "/api/dashboard/fleet", "Dashboard: VENs, online state, last contact", fleet),
    Route("GET", "/api/dashboard/events",
          "Dashboard: the newest events with per-VEN delivery and opt state", events),
    Route("GET", "/api/dashboard/power",
          "Dashboard: requested vs delivered kW per event and per network area (?minutes=)",
          power),
    Route("GET", "/api/dashboard/cmb",
          "Dashboard: plans per aggregator, alerts, overrides and their paths' results",
          cmb_view),
)
STREAM: Final = Route("GET", "/api/stream",
                      "Server-sent change notices (which dashboard parts changed; no data)",
                      stream)


def add_dashboard(app: web.Application, *, check_every: float = 1.0) -> None:
    """Serve the dashboard page, its data and its change stream on the VTN's app."""
    deps: VtnDeps = app[DEPS]
    add_routes(app, ROUTES)
    add_routes(app, (STREAM,), guarded=False)  # change notices only: see the module docstring
    app.router.add_get("/", page)
    app.router.add_static("/static/", STATIC)
    app[FEED] = ChangeFeed(lambda: change_marker(deps.store.engine, with_cmb=CMB in app),
                           every=check_every)

    async def watching(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.get_running_loop().create_task(app[FEED].run())
        yield
        task.cancel()

    async def closing(app: web.Application) -> None:
        app[FEED].close()  # open streams end now, before the server waits for handlers

    app.cleanup_ctx.append(watching)
    app.on_shutdown.append(closing)
