"""The operator's JSON API under /api/, described by the OpenAPI document it serves.

One route table drives both the router and `/api/openapi.json`, so the document cannot drift.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from oadr.isotime import format_datetime
from oadr.messages import ResourceStatus

from .app import DEPS, VtnDeps
from .eventjson import FieldError, event_to_json
from .operator import Conflict, NotFound, Operator
from .records import EventRecord, OptRecord, ReportRequestRecord, ReportValue, VenRecord
from .store import PushState

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
OPERATOR = web.AppKey("operator", Operator)


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    summary: str
    handler: Handler
    body: str | None = None  # description of the JSON body, if any


ROUTE_TABLE = web.AppKey("routes", list[Route])  # every documented route the app serves


def _iso(dt: Any) -> str | None:
    return format_datetime(dt) if dt is not None else None


def ven_json(v: VenRecord, push: PushState | None = None) -> dict[str, Any]:
    """A VEN as the API shows it; `push` is its push state when its last push failed."""
    push = push or PushState(ven_id=v.ven_id)
    return {"ven_id": v.ven_id, "ven_name": v.ven_name, "status": str(v.status),
            "registration_id": v.registration_id, "fingerprint": v.fingerprint,
            "http_pull_model": v.http_pull_model, "transport_address": v.transport_address,
            "xml_signature": v.xml_signature, "party_id": v.party_id,
            "programs": list(v.programs), "groups": list(v.groups),
            "resources": list(v.resources), "created": _iso(v.created),
            "registered_at": _iso(v.registered_at), "unreachable": push.unreachable,
            "push": None if v.http_pull_model else {
                "failures": push.failures, "next_attempt": _iso(push.next_attempt),
                "last_error": push.last_error}}


def event_json(rec: EventRecord, deps: VtnDeps, with_deliveries: bool = False) -> dict[str, Any]:
    from oadr import events as ev_time

    out = event_to_json(rec.event)
    out["cancelled"] = rec.cancelled
    out["status"] = str(ev_time.status_at(rec.event, deps.clock()))
    if with_deliveries:
        out["deliveries"] = [
            {"ven_id": d.ven_id, "delivered_modification": d.delivered_mod,
             "delivered_at": _iso(d.delivered_at), "acknowledged_modification": d.acked_mod,
             "opt": str(d.opt_type) if d.opt_type else None, "response_code": d.response_code,
             "responded_at": _iso(d.responded_at), "removed": d.removed}
            for d in deps.store.deliveries_for_event(rec.event.event_id)]
    return out


def _status_json(s: ResourceStatus | None) -> dict[str, Any] | None:
    if s is None:
        return None
    lc = s.load_control
    return {"online": s.online, "manual_override": s.manual_override,
            "load_control": None if lc is None else {
                "kind": lc.kind, "current": lc.current, "min": lc.min, "max": lc.max,
                "normal": lc.normal}}


def value_json(v: ReportValue) -> dict[str, Any]:
    return {"report_request_id": v.report_request_id, "report_name": v.report_name,
            "r_id": v.r_id, "resource_id": v.resource_id, "dtstart": _iso(v.dtstart),
            "duration_s": v.duration_s, "value": v.value, "status": _status_json(v.status)}


def request_json(r: ReportRequestRecord) -> dict[str, Any]:
    return {"report_request_id": r.report_request_id, "report_name": r.report_name,
            "report_specifier_id": r.report_specifier_id, "granularity_s": r.granularity_s,
            "r_ids": list(r.r_ids), "status": r.status, "via": r.via}


def opt_json(o: OptRecord) -> dict[str, Any]:
    return {"opt_id": o.opt_id, "ven_id": o.ven_id, "opt_type": str(o.opt_type),
            "opt_reason": o.opt_reason, "event_id": o.event_id,
            "modification_number": o.modification_number, "market_context": o.market_context,
            "availability": [{"dtstart": _iso(a), "duration_s": s} for a, s in o.availability],
            "created": _iso(o.created), "cancelled_at": _iso(o.cancelled_at)}


async def json_body(request: web.Request) -> dict[str, Any]:
    try:
        data = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise FieldError("body", "not valid JSON") from None
    if not isinstance(data, dict):
        raise FieldError("body", "expected a JSON object")
    return data


def _strs(body: dict[str, Any], key: str) -> tuple[str, ...] | None:
    if key not in body:
        return None
    v = body[key]
    if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
        raise FieldError(key, "expected a list of strings")
    return tuple(v)


def _opt_str(body: dict[str, Any], key: str) -> str | None:
    v = body.get(key)
    if v is not None and not isinstance(v, str):
        raise FieldError(key, "expected a string")
    return v


def _ven_attrs(body: dict[str, Any]) -> dict[str, Any]:
    attrs: dict[str, Any] = {k: v for k in ("programs", "groups", "resources")
                             if (v := _strs(body, k)) is not None}
    if "party_id" in body:
        attrs["party_id"] = _opt_str(body, "party_id")
    return attrs


# --- handlers ---------------------------------------------------------------------------

def _ctx(request: web.Request) -> tuple[VtnDeps, Operator]:
    return request.app[DEPS], request.app[OPERATOR]


async def health(request: web.Request) -> web.Response:
    deps, _ = _ctx(request)
    deps.store.list_programs()  # touches the database
    return web.json_response({"status": "ok", "vtn_id": deps.config.vtn_id})


async def openapi(request: web.Request) -> web.Response:
    routes: list[Route] = request.app[ROUTE_TABLE]
    return web.json_response(openapi_document(routes))


async def list_vens(request: web.Request) -> web.Response:
    deps, _ = _ctx(request)
    failing = deps.store.push_states()
    return web.json_response([ven_json(v, failing.get(v.ven_id)) for v in deps.store.list_vens()])


async def provision_ven(request: web.Request) -> web.Response:
    deps, op = _ctx(request)
    body = await json_body(request)
    name = _opt_str(body, "ven_name")
    if not name:
        raise FieldError("ven_name", "is required")
    ven = op.provision_ven(ven_name=name, now=deps.clock(), ven_id=_opt_str(body, "ven_id"),
                           fingerprint=_opt_str(body, "fingerprint"), **_ven_attrs(body))
    return web.json_response(ven_json(ven), status=201)


async def show_ven(request: web.Request) -> web.Response:
    deps, op = _ctx(request)
    ven = op.ven(request.match_info["ven_id"])
    return web.json_response(ven_json(ven, deps.store.push_states().get(ven.ven_id)))


async def update_ven(request: web.Request) -> web.Response:
    deps, op = _ctx(request)
    body = await json_body(request)
    attrs = _ven_attrs(body)
    if "fingerprint" in body:
        attrs["fingerprint"] = _opt_str(body, "fingerprint")
    ven = op.update_ven(request.match_info["ven_id"], deps.clock(), **attrs)
    return web.json_response(ven_json(ven))


async def approve_ven(request: web.Request) -> web.Response:
    _, op = _ctx(request)
    return web.json_response(ven_json(op.approve_ven(request.match_info["ven_id"])))


async def reregister_ven(request: web.Request) -> web.Response:
    deps, op = _ctx(request)
    op.request_reregistration(request.match_info["ven_id"], deps.clock())
    return web.json_response({"queued": "oadrRequestReregistration"}, status=202)


async def cancel_ven_registration(request: web.Request) -> web.Response:
    deps, op = _ctx(request)
    op.cancel_registration(request.match_info["ven_id"], deps.clock())
    return web.json_response({"queued": "oadrCancelPartyRegistration"}, status=202)


async def ven_reports(request: web.Request) -> web.Response:
    deps, op = _ctx(request)
    ven = op.ven(request.match_info["ven_id"])
    limit = request.query.get("limit", "200")
    if not limit.isdigit():
        raise FieldError("limit", "expected a positive integer")
    return web.json_response({
        "ven_id": ven.ven_id,
        "metadata": [{"report_specifier_id": m.report_specifier_id, "report_name": m.report_name,
                      "r_ids": [d.r_id for d in m.descriptions]}
                     for m in deps.store.metadata(ven.ven_id)],
        "requests": [request_json(r) for r in deps.store.report_requests(ven.ven_id)],
        "values": [value_json(v) for v in deps.store.report_values(ven.ven_id, int(limit))],
    })


async def request_ven_reports(request: web.Request) -> web.Response:
    deps, op = _ctx(request)
    planned = op.request_reports(request.match_info["ven_id"], deps.clock())
    return web.json_response([request_json(r) for r in planned], status=202)


async def cancel_report_request(request: web.Request) -> web.Response:
    deps, op = _ctx(request)
    rq = op.cancel_report(request.match_info["report_request_id"], deps.clock())
    return web.json_response(request_json(rq), status=202)


async def list_events(request: web.Request) -> web.Response:
    deps, _ = _ctx(request)
    return web.json_response([event_json(e, deps) for e in deps.store.list_events()])


async def create_event(request: web.Request) -> web.Response:
    deps, op = _ctx(request)
    rec = op.create_event(await json_body(request), deps.clock())
    return web.json_response(event_json(rec, deps, with_deliveries=True), status=201)


async def show_event(request: web.Request) -> web.Response:
    deps, op = _ctx(request)
    rec = op.get_event(request.match_info["event_id"])
    return web.json_response(event_json(rec, deps, with_deliveries=True))


async def modify_event(request: web.Request) -> web.Response:
    deps, op = _ctx(request)
    rec = op.modify_event(request.match_info["event_id"], await json_body(request), deps.clock())
    return web.json_response(event_json(rec, deps, with_deliveries=True))


async def cancel_event(request: web.Request) -> web.Response:
    deps, op = _ctx(request)
    reason = None
    if request.can_read_body:
        reason = _opt_str(await json_body(request), "reason")
    rec = op.cancel_event(request.match_info["event_id"], deps.clock(), reason)
    return web.json_response(event_json(rec, deps, with_deliveries=True))


async def list_opts(request: web.Request) -> web.Response:
    deps, _ = _ctx(request)
    return web.json_response([opt_json(o) for o in deps.store.list_opts(
        request.query.get("ven_id"))])


async def list_programs(request: web.Request) -> web.Response:
    deps, _ = _ctx(request)
    return web.json_response([{"market_context": m, "name": n, "description": d}
                              for m, n, d in deps.store.list_programs()])


async def save_program(request: web.Request) -> web.Response:
    deps, _ = _ctx(request)
    body = await json_body(request)
    mc, name = _opt_str(body, "market_context"), _opt_str(body, "name")
    if not mc:
        raise FieldError("market_context", "is required")
    deps.store.save_program(mc, name or mc, _opt_str(body, "description") or "")
    return web.json_response({"market_context": mc, "name": name or mc}, status=201)


ROUTES: tuple[Route, ...] = (
    Route("GET", "/api/health", "Liveness and database check", health),
    Route("GET", "/api/openapi.json", "This OpenAPI document", openapi),
    Route("GET", "/api/vens", "List VENs", list_vens),
    Route("POST", "/api/vens", "Provision a VEN (allowlist; optional pre-allocated ven_id)",
          provision_ven, "ven_name, ven_id?, fingerprint?, programs?, groups?, resources?, party_id?"),
    Route("GET", "/api/vens/{ven_id}", "Show a VEN", show_ven),
    Route("PATCH", "/api/vens/{ven_id}", "Change a VEN's programs, groups, resources, party or "
          "fingerprint", update_ven, "programs?, groups?, resources?, party_id?, fingerprint?"),
    Route("POST", "/api/vens/{ven_id}/approve", "Approve a pending registration", approve_ven),
    Route("POST", "/api/vens/{ven_id}/reregister", "Queue oadrRequestReregistration",
          reregister_ven),
    Route("POST", "/api/vens/{ven_id}/cancel-registration", "Queue oadrCancelPartyRegistration",
          cancel_ven_registration),
    Route("GET", "/api/vens/{ven_id}/reports", "Report metadata, requests and values",
          ven_reports),
    Route("POST", "/api/vens/{ven_id}/report-requests",
          "Request telemetry now (oadrCreateReport on the next poll)", request_ven_reports),
    Route("POST", "/api/report-requests/{report_request_id}/cancel",
          "Queue oadrCancelReport", cancel_report_request),
    Route("GET", "/api/events", "List events", list_events),
    Route("POST", "/api/events", "Create an event", create_event,
          "market_context, dtstart, signals[{signal_name, signal_type, intervals[{duration, "
          "payload}], item_base?}], duration?, targets?, priority?, test_event?, "
          "response_required?, start_after?, notification?, ramp_up?, recovery?, vtn_comment?"),
    Route("GET", "/api/events/{event_id}", "Show an event with per-VEN delivery and opt state",
          show_event),
    Route("PUT", "/api/events/{event_id}", "Modify an event (modificationNumber + 1)",
          modify_event, "the full event as for create, plus modification_reason?"),
    Route("POST", "/api/events/{event_id}/cancel", "Cancel an event", cancel_event, "reason?"),
    Route("GET", "/api/opts", "List opt schedules and event opts (?ven_id=)", list_opts),
    Route("GET", "/api/programs", "List programs (market contexts)", list_programs),
    Route("POST", "/api/programs", "Create or update a program", save_program,
          "market_context, name?, description?"),
)


def openapi_document(routes: Sequence[Route] = ROUTES) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for r in routes:
        op: dict[str, Any] = {"summary": r.summary, "responses": {
            "200": {"description": "OK"}, "400": {"description": "Invalid field"},
            "404": {"description": "Not found"}, "409": {"description": "Conflict"}}}
        params = [p.strip("{}") for p in r.path.split("/") if p.startswith("{")]
        if params:
            op["parameters"] = [{"name": p, "in": "path", "required": True,
                                 "schema": {"type": "string"}} for p in params]
        if r.body:
            op["requestBody"] = {"description": r.body, "content": {
                "application/json": {"schema": {"type": "object"}}}}
        paths.setdefault(r.path, {})[r.method.lower()] = op
    return {"openapi": "3.0.3",
            "info": {"title": "adrgate VTN operator API", "version": "1"}, "paths": paths}


def operator_only(handler: Handler) -> Handler:
    async def run(request: web.Request) -> web.StreamResponse:
        token = request.app[DEPS].api_token
        if token and request.headers.get("Authorization") != f"Bearer {token}" \
                and request.path != "/api/health":
            return web.json_response({"error": "unauthorized"}, status=401)
        try:
            return await handler(request)
        except FieldError as exc:
            return web.json_response({"error": "invalid", "field": exc.field,
                                      "detail": str(exc)}, status=400)
        except NotFound as exc:
            return web.json_response({"error": "not found", "detail": exc.args[0]}, status=404)
        except Conflict as exc:
            return web.json_response({"error": "conflict", "detail": str(exc)}, status=409)
    return run


def add_api_routes(app: web.Application) -> None:
    deps = app[DEPS]
    app[OPERATOR] = Operator(deps.store, deps.config, deps.handlers, deps.new_id)
    app[ROUTE_TABLE] = []
    add_routes(app, ROUTES)


def add_routes(app: web.Application, routes: Sequence[Route], *, guarded: bool = True) -> None:
    """Serve `routes` (behind the operator token when `guarded`) and list them in the OpenAPI
    document."""
    for r in routes:
        app.router.add_route(r.method, r.path, operator_only(r.handler) if guarded else r.handler)
    app[ROUTE_TABLE].extend(routes)
