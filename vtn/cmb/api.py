"""The CMB's JSON API under /api/cmb/, on the VTN's application.

Aggregators: `POST /api/cmb/plans` takes a signed batch (vtn/cmb/signing.py describes the body)
and answers one verdict per plan, in order, each with `release` and `dispatch`:
  - `release: "after_verdict"` (routine): the aggregator waited for this answer;
    `dispatch: "now"` when accepted, `"no"` when rejected (the findings say why).
  - `release: "immediate"` (response DSR inside a dispatched window of a program the aggregator's
    policy does not hold back): the aggregator dispatched it at once and submitted it alongside;
    the verdict is that parallel check (`dispatch: "no"`: the CMB rejects it, its audit and the
    operator's override are the remedy).
`GET /api/cmb/policy/{aggregator}` tells an aggregator which programs' response plans must still
wait (`wait_programs`), so its client can decide before submitting.

Authentication of submissions: the batch names its aggregator and is signed with the key the
operator registered for it (`PUT /api/cmb/aggregators/{aggregator}`, or the file named by
ADRGATE_CMB_AGGREGATORS); in secure mode the request must also come over mutual TLS with the
client certificate whose fingerprint is registered for that aggregator. Unknown aggregator, bad
signature, stale or replayed batch: 401; certificate of someone else: 403; malformed: 400;
oversize: 413; a batch the store could not write: 503. Nothing of a refused batch is recorded.

Everything else is the operator's, behind the operator token like the rest of /api/.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any, Final, TypeVar

from aiohttp import web
from pydantic import TypeAdapter, ValidationError
from pydantic_core import to_jsonable_python

from vtn.api import Route, add_routes, json_body
from vtn.app import DEPS, peer_fingerprint
from vtn.eventjson import FieldError
from vtn.store import VtnStore

from . import signing
from .records import (
    Decision,
    DeviceRegistration,
    OverrideStatus,
    OverrideTarget,
    PlanSubmission,
    Prognosis,
    Tariff,
)
from .service import Cmb, CmbConfig, Conflict, Executor, NotFound, StoreFailed, VtnEvents
from .store import AggregatorProfile, CmbStore, Judged, OverrideEntry

CMB: Final = web.AppKey("cmb", Cmb)
OPERATOR_ACTOR: Final = "operator"
T = TypeVar("T")

_DEVICES: Final = TypeAdapter(list[DeviceRegistration])
_TARGET: Final = TypeAdapter(OverrideTarget)
_PROGNOSIS: Final = TypeAdapter(Prognosis)
_TARIFF: Final = TypeAdapter(Tariff)
_PROFILE: Final = TypeAdapter(AggregatorProfile)
_WHEN: Final = TypeAdapter(datetime | None)


def _error(status: int, error: str, detail: str, **extra: Any) -> web.Response:
    return web.json_response({"error": error, "detail": detail, **extra}, status=status)


def _parse(adapter: TypeAdapter[T], data: Any, field: str) -> T:
    try:
        value = adapter.validate_python(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise FieldError(f"{field}.{where}" if where else field, err["msg"]) from None
    naive = signing.naive_datetime(value)
    if naive is not None:
        raise FieldError(f"{field}{naive}", "a time needs its UTC offset")
    return value


def judged_json(j: Judged) -> dict[str, Any]:
    out: dict[str, Any] = to_jsonable_python(j.verdict)
    out["release"] = str(j.release)
    out["dispatch"] = "now" if j.verdict.decision is Decision.ACCEPTED else "no"
    return out


def override_json(e: OverrideEntry) -> dict[str, Any]:
    out: dict[str, Any] = to_jsonable_python(e.override)
    out["results"] = list(e.results)
    return out


# --- aggregators ------------------------------------------------------------------------

async def submit_plans(request: web.Request) -> web.Response:
    deps, cmb = request.app[DEPS], request.app[CMB]
    now = deps.clock()
    if deps.config.secure and not request.secure:
        return _error(403, "forbidden", "plans are accepted over mutual TLS only")
    try:
        envelope = signing.open_envelope(await request.read())
    except signing.BadBatch as exc:
        return _error(400, "invalid", str(exc), field=exc.field)
    profile, key = cmb.profile(envelope.claimed), cmb.key(envelope.claimed)
    if profile is None or key is None:
        return _error(401, "unauthorized", f"no aggregator {envelope.claimed} is registered")
    if deps.config.secure and peer_fingerprint(request) != profile.fingerprint:
        return _error(403, "forbidden", f"the client certificate is not {profile.aggregator}'s")
    try:
        signing.verify(envelope, key)
        batch = signing.decode(envelope, now)
    except signing.BadSignature as exc:
        return _error(401, "unauthorized", str(exc))
    except signing.BadBatch as exc:
        return _error(400, "invalid", str(exc), field=exc.field)
    if await deps.replay.seen(f"cmb:{batch.aggregator}:{batch.nonce}", signing.MAX_AGE * 2):
        return _error(401, "unauthorized", f"batch nonce {batch.nonce} was already used")
    subs = [PlanSubmission(aggregator=batch.aggregator, plan=i.plan, device=i.device,
                           program=i.program, received=now) for i in batch.submissions]
    try:
        judged = await cmb.submit(subs, now)
    except StoreFailed:
        return _error(503, "unavailable", "the batch could not be recorded; submit it again")
    return web.json_response({"verdicts": [judged_json(j) for j in judged]})


async def show_policy(request: web.Request) -> web.Response:
    deps, cmb = request.app[DEPS], request.app[CMB]
    profile = cmb.profile(request.match_info["aggregator"])
    if profile is None:
        return _error(404, "not found", "no such aggregator")
    if deps.config.secure and peer_fingerprint(request) != profile.fingerprint:
        return _error(403, "forbidden", f"the client certificate is not {profile.aggregator}'s")
    return web.json_response({"aggregator": profile.aggregator,
                              "wait_programs": list(profile.wait_programs)})


# --- operator ---------------------------------------------------------------------------

def _limit(request: web.Request) -> int:
    raw = request.query.get("limit", "200")
    if not raw.isdigit() or not 0 < int(raw) <= 10_000:
        raise FieldError("limit", "expected an integer 1..10000")
    return int(raw)


async def list_verdicts(request: web.Request) -> web.Response:
    cmb, q = request.app[CMB], request.query
    return web.json_response([judged_json(j) for j in cmb.store.verdicts(
        aggregator=q.get("aggregator"), device_id=q.get("device_id"), plan_id=q.get("plan_id"),
        limit=_limit(request))])


async def list_alerts(request: web.Request) -> web.Response:
    cmb = request.app[CMB]
    return web.json_response(to_jsonable_python(cmb.store.alerts(
        aggregator=request.query.get("aggregator"), limit=_limit(request))))


async def list_audit(request: web.Request) -> web.Response:
    cmb = request.app[CMB]
    return web.json_response(to_jsonable_python(cmb.store.audit(
        action=request.query.get("action"), subject=request.query.get("subject"),
        limit=_limit(request))))


async def list_overrides(request: web.Request) -> web.Response:
    cmb = request.app[CMB]
    raw = request.query.get("status")
    try:
        status = OverrideStatus(raw) if raw else None
    except ValueError:
        raise FieldError("status", f"expected {'|'.join(OverrideStatus)}") from None
    return web.json_response([override_json(e) for e in cmb.overrides(status)])


async def create_override(request: web.Request) -> web.Response:
    deps, cmb = request.app[DEPS], request.app[CMB]
    body = await json_body(request)
    target = _parse(_TARGET, body.get("target"), "target")
    if target == OverrideTarget():
        raise FieldError("target", "name an aggregator, network_area, device_class or devices")
    level, energized = body.get("level"), body.get("energized", True)
    reason = body.get("reason", "")
    if not isinstance(level, int) or isinstance(level, bool) or not 0 <= level <= 100:
        raise FieldError("level", "expected an integer 0..100 (percent of rated import)")
    if not isinstance(energized, bool):
        raise FieldError("energized", "expected true or false")
    if not isinstance(reason, str):
        raise FieldError("reason", "expected a string")
    end = _parse(_WHEN, body.get("end"), "end")
    try:
        entry = await cmb.create_override(target=target, level=level, energized=energized,
                                          end=end, reason=reason, actor=OPERATOR_ACTOR,
                                          now=deps.clock())
    except ValueError as exc:
        raise FieldError("end", str(exc)) from None
    return web.json_response(override_json(entry), status=201)


async def _override_action(request: web.Request,
                           act: Callable[[Cmb, str, datetime], Awaitable[OverrideEntry]]
                           ) -> web.Response:
    deps, cmb = request.app[DEPS], request.app[CMB]
    try:
        entry = await act(cmb, request.match_info["override_id"], deps.clock())
    except NotFound as exc:
        return _error(404, "not found", exc.args[0])
    except Conflict as exc:
        return _error(409, "conflict", str(exc))
    return web.json_response(override_json(entry))


async def lift_override(request: web.Request) -> web.Response:
    return await _override_action(
        request, lambda cmb, oid, now: cmb.lift(oid, OPERATOR_ACTOR, now))


async def apply_override(request: web.Request) -> web.Response:
    return await _override_action(
        request, lambda cmb, oid, now: cmb.approve(oid, OPERATOR_ACTOR, now))


async def put_registry(request: web.Request) -> web.Response:
    deps, cmb = request.app[DEPS], request.app[CMB]
    devices = _parse(_DEVICES, (await json_body(request)).get("devices"), "devices")
    cmb.put_devices(devices, OPERATOR_ACTOR, deps.clock())
    return web.json_response({"devices": len(devices), "registered": len(cmb.registry)})


async def put_aggregator(request: web.Request) -> web.Response:
    deps, cmb = request.app[DEPS], request.app[CMB]
    body = await json_body(request) | {"aggregator": request.match_info["aggregator"]}
    profile = _parse(_PROFILE, body, "body")
    try:
        cmb.register_aggregator(profile, OPERATOR_ACTOR, deps.clock())
    except ValueError as exc:
        raise FieldError("public_key" if "key" in str(exc) else "override_level",
                         str(exc)) from None
    return web.json_response(to_jsonable_python(profile))


async def list_aggregators(request: web.Request) -> web.Response:
    cmb = request.app[CMB]
    return web.json_response(to_jsonable_python(list(cmb.store.aggregators().values())))


async def add_prognosis(request: web.Request) -> web.Response:
    deps, cmb = request.app[DEPS], request.app[CMB]
    p = _parse(_PROGNOSIS, await json_body(request), "body")
    if p.step.total_seconds() <= 0:
        raise FieldError("body.step", "must be positive")
    cmb.add_prognosis(p, OPERATOR_ACTOR, deps.clock())
    return web.json_response(to_jsonable_python(p), status=201)


async def add_tariff(request: web.Request) -> web.Response:
    deps, cmb = request.app[DEPS], request.app[CMB]
    t = _parse(_TARIFF, await json_body(request), "body")
    cmb.add_tariff(t, OPERATOR_ACTOR, deps.clock())
    return web.json_response(to_jsonable_python(t), status=201)


AGGREGATOR_ROUTES: Final = (
    Route("POST", "/api/cmb/plans", "Submit a signed batch of plans; one verdict each",
          submit_plans, body="{batch: signed JSON text, signature: base64}"),
    Route("GET", "/api/cmb/policy/{aggregator}", "Programs whose response plans must wait",
          show_policy),
)
OPERATOR_ROUTES: Final = (
    Route("GET", "/api/cmb/verdicts", "Plan verdicts, newest first", list_verdicts),
    Route("GET", "/api/cmb/alerts", "Fleet-monitor alerts, newest first", list_alerts),
    Route("GET", "/api/cmb/audit", "The audit log", list_audit),
    Route("GET", "/api/cmb/overrides", "Control overrides", list_overrides),
    Route("POST", "/api/cmb/overrides", "Create and apply an override", create_override,
          body="target, level, end?, energized?, reason?"),
    Route("POST", "/api/cmb/overrides/{override_id}/lift", "Lift an override", lift_override),
    Route("POST", "/api/cmb/overrides/{override_id}/apply", "Apply a proposed override",
          apply_override),
    Route("PUT", "/api/cmb/registry", "Register devices", put_registry,
          body="{devices: [DeviceRegistration]}"),
    Route("GET", "/api/cmb/aggregators", "Aggregator profiles", list_aggregators),
    Route("PUT", "/api/cmb/aggregators/{aggregator}", "Register an aggregator's key and policy",
          put_aggregator, body="public_key, fingerprint?, auto_response?, wait_programs?, "
                               "override_level?"),
    Route("POST", "/api/cmb/prognoses", "An aggregator's prognosis", add_prognosis,
          body="Prognosis"),
    Route("POST", "/api/cmb/tariffs", "A published tariff", add_tariff, body="Tariff"),
)


def add_cmb_routes(app: web.Application, cmb: Cmb) -> None:
    """Mount the CMB on the VTN app and run its time-based monitors while the app runs."""
    app[CMB] = cmb
    add_routes(app, AGGREGATOR_ROUTES, guarded=False)  # authenticated by signature and TLS
    add_routes(app, OPERATOR_ROUTES)

    async def monitors(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.get_running_loop().create_task(cmb.run_ticks(app[DEPS].clock))
        yield
        task.cancel()
        await cmb.settle()

    app.cleanup_ctx.append(monitors)


def load_profiles(path: Path) -> list[AggregatorProfile]:
    """Aggregator profiles from the ADRGATE_CMB_AGGREGATORS file: a JSON object whose keys are
    aggregators and whose values are the `PUT /api/cmb/aggregators/{aggregator}` body, except
    that `public_key` may also name a PEM file (relative to the JSON file).

    Raises:
        ValueError: unreadable or malformed (the aggregator is named).
        OSError: a file cannot be read.
    """
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object of aggregators")
    out = []
    for aggregator, body in data.items():
        if not isinstance(body, dict) or not isinstance(body.get("public_key"), str):
            raise ValueError(f"{path}: {aggregator}: expected an object with a public_key")
        key = body["public_key"]
        if "-----BEGIN" not in key:
            key = (path.parent / key).read_text()
        try:
            out.append(_PROFILE.validate_python(body | {"aggregator": aggregator,
                                                        "public_key": key}))
        except ValidationError as exc:
            raise ValueError(f"{path}: {aggregator}: {exc}") from None
    return out


def cmb_beside(vtn_store: VtnStore, *, now: datetime, profiles_file: Path | None = None,
               executor: Executor | None = None, config: CmbConfig | None = None) -> Cmb:
    """The CMB on the VTN's database, learning dispatched windows from the VTN's events, with the
    aggregators of `profiles_file` (ADRGATE_CMB_AGGREGATORS) registered.

    Raises:
        ValueError, OSError: the profiles file is unreadable or malformed.
    """
    store = CmbStore(vtn_store.engine)
    store.create_schema()
    cmb = Cmb(store, events=VtnEvents(vtn_store), executor=executor, config=config)
    for profile in load_profiles(profiles_file) if profiles_file else ():
        cmb.register_aggregator(profile, "config", now)
    return cmb
