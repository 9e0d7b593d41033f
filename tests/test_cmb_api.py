"""The CMB's HTTP API on the VTN app, its aggregator client and its CLI: every inline rule end to
end, authentication failures (all 4xx, nothing written, others still served), operator endpoints
and `adrgate cmb ...`."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec

from adrgate import cli
from adrgate.services import make_engine
from adrgate.tls import client_context, server_context
from bridge.cmb_client import CmbAuthError, CmbClient, CmbInvalid, CmbUnavailable, immediate
from bridge.models import Mode, PlanStep
from oadr.signing import InMemoryReplayCache, fingerprint
from tests.certs import Pki, write_pki
from tests.test_cmb_service import (
    AGG,
    FLEET,
    KEY,
    OTHER,
    PROGRAM,
    SENSITIVE,
    T0,
    FakeExecutor,
    device,
    plan,
    registration,
)
from tests.vtnkit import simple_event
from ven.records import Purpose
from vtn.app import VtnDeps, make_app
from vtn.cmb.api import cmb_beside, load_profiles
from vtn.cmb.service import Cmb, CmbConfig, VtnEvents
from vtn.cmb.signing import Item, encode, public_pem
from vtn.cmb.store import CmbStore
from vtn.handlers import VtnConfig
from vtn.store import VtnStore

TOKEN = "operator-secret"
RAMPED = registration("ev-r", max_ramp_kw_per_min=1.0)
CAPPED = registration("ev-c")
DEVICES = [*FLEET, RAMPED, CAPPED]


@dataclass
class Clock:
    now: datetime = T0

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Running:
    url: str
    cmb: Cmb
    clock: Clock
    executor: FakeExecutor
    session: aiohttp.ClientSession
    nonces: int = 0

    async def call(self, method: str, path: str, body: Any = None, *,
                   token: str | None = TOKEN, data: bytes | None = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with self.session.request(method, self.url + path, json=body, data=data,
                                        headers=headers) as resp:
            return resp.status, await resp.json(content_type=None)

    def signed(self, items: Sequence[Item], *, aggregator: str = AGG, key: Any = KEY,
               nonce: str | None = None, at: datetime | None = None) -> bytes:
        self.nonces += 1
        return encode(aggregator, items, key=key, now=at or self.clock(),
                      nonce=nonce or f"n-{self.nonces}")

    async def submit(self, items: Sequence[Item], **kw: Any) -> tuple[int, Any]:
        return await self.call("POST", "/api/cmb/plans", data=self.signed(items, **kw), token=None)


@asynccontextmanager
async def running_cmb(database_url: str = "sqlite://", *, secure: bool = False,
                      server_ssl: ssl.SSLContext | None = None,
                      client_ssl: ssl.SSLContext | bool = False,
                      max_body_bytes: int = 1_048_576,
                      fingerprint_: str | None = None) -> AsyncIterator[Running]:
    store = VtnStore(make_engine(database_url))
    store.create_schema()
    clock = Clock()
    deps = VtnDeps(store=store, config=VtnConfig(vtn_id="TEST-VTN", secure=secure),
                   replay=InMemoryReplayCache(clock=clock), api_token=TOKEN, clock=clock,
                   max_body_bytes=max_body_bytes)
    executor = FakeExecutor()
    cmb = Cmb(CmbStore(store.engine), events=VtnEvents(store), executor=executor,
              config=CmbConfig(monitors=SENSITIVE))
    runner = web.AppRunner(make_app(deps, cmb), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ssl)
    await site.start()
    port = runner.addresses[0][1]
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_ssl))
    scheme = "https" if server_ssl else "http"
    running = Running(f"{scheme}://127.0.0.1:{port}", cmb, clock, executor, session)
    try:
        status, _ = await running.call("PUT", f"/api/cmb/aggregators/{AGG}", {
            "public_key": public_pem(KEY), "fingerprint": fingerprint_,
            "auto_response": ["same_minute_share"]})
        assert status == 200
        status, _ = await running.call("PUT", f"/api/cmb/aggregators/{OTHER}",
                                       {"public_key": public_pem(KEY)})
        assert status == 200
        status, _ = await running.call("PUT", "/api/cmb/registry", {
            "devices": [json.loads(_dump(d)) for d in DEVICES]})
        assert status == 200
        yield running
    finally:
        await session.close()
        await runner.cleanup()
        store.close()


def _dump(value: Any) -> str:
    from pydantic_core import to_json

    return to_json(value).decode()


def item(p: Any, reg: Any = None, program: str | None = None) -> Item:
    return Item(plan=p, device=device(reg or FLEET[0]), program=program)


def rules(answer: dict[str, Any]) -> list[list[str]]:
    return [[f["rule"] for f in v["findings"]] for v in answer["verdicts"]]


async def test_every_rule_end_to_end_through_the_api() -> None:
    async with running_cmb() as cmb:
        status, o = await cmb.call("POST", "/api/cmb/overrides", {
            "target": {"devices": ["ev-c"]}, "level": 0, "reason": "test"})
        assert status == 201 and o["devices"] == ["ev-c"] and o["status"] == "active"
        start = T0 + timedelta(hours=1)
        gap = (PlanStep(mode=Mode.CHARGE, start=start, end=start + timedelta(minutes=5),
                        power_kw=3.0),
               PlanStep(mode=Mode.HOLD, start=start + timedelta(minutes=6),
                        end=start + timedelta(minutes=9)))
        ramp = (PlanStep(mode=Mode.HOLD, start=start, end=start + timedelta(minutes=10)),
                PlanStep(mode=Mode.CHARGE, start=start + timedelta(minutes=10),
                         end=start + timedelta(minutes=11), power_kw=7.0))
        status, answer = await cmb.submit([
            item(plan("ev-0", 1)),
            item(plan("ev-0", 1)),
            item(plan("ghost", 1), registration("ghost")),
            item(plan("ev-b", 1), FLEET[4]),
            item(plan("ev-1", 1, minutes=49 * 60), FLEET[1]),
            item(plan("ev-2", 1, steps=gap), FLEET[2]),
            item(plan("ev-3", 1, kw=11.0), FLEET[3]),
            item(plan("ev-r", 1, steps=ramp), RAMPED),
            item(plan("ev-0", 2, delay=timedelta(0))),
            item(plan("ev-c", 1), CAPPED),
        ])
        assert status == 200
        assert rules(answer) == [
            [], ["sequence_increasing"], ["sender_owns_device"], ["sender_owns_device"],
            ["validity_48h"], ["steps_contiguous"], ["within_ratings"], ["ramp_within_limits"],
            ["random_start_unless_response"], ["no_step_against_override"]]
        assert [v["dispatch"] for v in answer["verdicts"]] == ["now"] + ["no"] * 9
        assert {v["release"] for v in answer["verdicts"]} == {"after_verdict"}
        over = answer["verdicts"][9]["findings"][0]
        assert over["value"] == 7.0 and over["threshold"] == 0.0 and "ev-c" in over["detail"]
        status, listed = await cmb.call("GET", "/api/cmb/verdicts?device_id=ev-0")
        assert status == 200 and [v["plan_id"] for v in listed] == ["ev-0-2", "ev-0-1", "ev-0-1"]
        status, audit = await cmb.call("GET", "/api/cmb/audit?action=plan_rejected")
        assert status == 200 and len(audit) == 9 and {e["actor"] for e in audit} == {AGG}


async def test_response_plans_in_a_vtn_event_are_released_at_once() -> None:
    async with running_cmb() as cmb:
        status, ev = await cmb.call("POST", "/api/events", simple_event(
            PROGRAM, start_in=timedelta(0)) | {"dtstart": (T0 + timedelta(minutes=1)).isoformat()})
        assert status == 201, ev
        assert (await cmb.call("POST", "/api/programs", {"market_context": PROGRAM}))[0] == 201
        response = plan("ev-0", 1, purpose=Purpose.RESPONSE, event_id=ev["event_id"],
                        delay=timedelta(0), start=T0 + timedelta(minutes=2), minutes=5)
        assert immediate(response, PROGRAM, ())
        status, answer = await cmb.submit([item(response, program=PROGRAM),
                                           item(plan("ev-1", 1), FLEET[1])])
        assert status == 200 and rules(answer) == [[], []]
        assert [v["release"] for v in answer["verdicts"]] == ["immediate", "after_verdict"]


async def test_refused_submissions_are_4xx_and_write_nothing() -> None:
    async with running_cmb(max_body_bytes=64 * 1024) as cmb:
        good = [item(plan("ev-0", 1))]
        stranger = ec.generate_private_key(ec.SECP256R1())
        naive = plan("ev-0", 1, start=datetime(2026, 1, 5, 13, 0))
        cases: list[tuple[str, bytes, int]] = [
            ("unknown aggregator", cmb.signed(good, aggregator="nobody"), 401),
            ("wrong key", cmb.signed(good, key=stranger), 401),
            ("stale", cmb.signed(good, at=T0 - timedelta(minutes=10)), 401),
            ("malformed JSON", b'{"batch": ', 400),
            ("not an envelope", b'{"plans": []}', 400),
            ("no aggregator", json.dumps({"batch": "{}", "signature": ""}).encode(), 400),
            ("naive time", cmb.signed([item(naive)]), 400),
            ("device mismatch", cmb.signed([item(plan("ev-0", 1), FLEET[1])]), 400),
            ("oversize", b"{" + b" " * (65 * 1024) + b"}", 413),
        ]
        for name, body, expected in cases:
            status, answer = await cmb.call("POST", "/api/cmb/plans", data=body, token=None)
            assert (name, status) == (name, expected), answer
            assert answer["error"] and answer["detail"]
        body = cmb.signed(good)
        bad_batch = json.loads(cmb.signed(good))
        bad_batch["batch"] = bad_batch["batch"].replace('"steps":[', '"steps":"x","s":[')
        status, answer = await cmb.call("POST", "/api/cmb/plans", token=None,
                                        data=json.dumps(bad_batch).encode())
        assert status == 401  # altered after signing
        status, verdicts = await cmb.call("GET", "/api/cmb/verdicts")
        assert status == 200 and verdicts == []
        assert cmb.cmb.store.sequences() == {}
        # others are still served; a replayed batch is refused
        assert (await cmb.call("POST", "/api/cmb/plans", data=body, token=None))[0] == 200
        status, answer = await cmb.call("POST", "/api/cmb/plans", data=body, token=None)
        assert status == 401 and "already used" in answer["detail"]


async def test_operator_endpoints_need_the_token_and_check_their_input() -> None:
    async with running_cmb() as cmb:
        for method, path in (("GET", "/api/cmb/verdicts"), ("GET", "/api/cmb/alerts"),
                             ("GET", "/api/cmb/overrides"), ("POST", "/api/cmb/overrides"),
                             ("PUT", "/api/cmb/registry"), ("POST", "/api/cmb/tariffs")):
            assert (await cmb.call(method, path, {}, token=None))[0] == 401
        bad: list[tuple[str, str, Any, str]] = [
            ("POST", "/api/cmb/overrides", {"target": {}, "level": 0}, "target"),
            ("POST", "/api/cmb/overrides", {"target": {"aggregator": AGG}, "level": 120},
             "level"),
            ("POST", "/api/cmb/overrides", {"target": {"device_class": "toaster"}, "level": 0},
             "target.device_class"),
            ("PUT", "/api/cmb/registry", {"devices": [{"device_id": "x"}]}, "devices.0.owner"),
            ("PUT", f"/api/cmb/aggregators/{AGG}", {"public_key": "nope"}, "public_key"),
            ("POST", "/api/cmb/prognoses", {"aggregator": AGG, "network_area": "a",
                                            "start": "2026-01-05T12:00:00", "step": "PT30M",
                                            "kw": [1.0]}, "body.start"),
            ("POST", "/api/cmb/tariffs", [1], "body"),
        ]
        for method, path, body, field in bad:
            status, answer = await cmb.call(method, path, body)
            assert (status, answer.get("field")) == (400, field), (path, answer)
        assert (await cmb.call("POST", "/api/cmb/overrides/nope/lift"))[0] == 404
        status, p = await cmb.call("POST", "/api/cmb/prognoses", {
            "aggregator": AGG, "network_area": "area-1", "start": T0.isoformat(),
            "step": "PT30M", "kw": [10.0, 12.0]})
        assert status == 201 and p["kw"] == [10.0, 12.0]
        status, _ = await cmb.call("POST", "/api/cmb/tariffs", {
            "tariff_id": "agile", "boundaries": [(T0 + timedelta(minutes=30)).isoformat()]})
        assert status == 201
        actions = [e["action"] for e in (await cmb.call("GET", "/api/cmb/audit"))[1]]
        assert actions[-2:] == ["prognosis", "tariff"]


async def test_a_compromised_aggregator_is_capped_automatically() -> None:
    async with running_cmb() as cmb:
        status, answer = await cmb.submit([item(plan(r.device_id, 1), r) for r in FLEET[:4]])
        assert status == 200 and rules(answer) == [[]] * 4
        await cmb.cmb.settle()
        status, alerts = await cmb.call("GET", "/api/cmb/alerts")
        assert status == 200 and "same_minute_share" in [a["monitor"] for a in alerts]
        status, active = await cmb.call("GET", "/api/cmb/overrides?status=active")
        [o] = active
        assert o["target"]["aggregator"] == AGG and o["results"][0]["reached"] == [
            d.device_id for d in DEVICES if d.owner == AGG]
        assert cmb.executor.calls[0][0] == "apply"
        status, lifted = await cmb.call("POST", f"/api/cmb/overrides/{o['override_id']}/lift")
        assert status == 200 and lifted["status"] == "lifted"
        assert (await cmb.call("POST", f"/api/cmb/overrides/{o['override_id']}/lift"))[0] == 409


async def test_the_client_signs_submits_and_types_its_errors() -> None:
    async with running_cmb(max_body_bytes=64 * 1024) as cmb:
        client = CmbClient(cmb.url, AGG, KEY, cmb.session, batch_size=2, clock=cmb.clock)
        judged = await client.submit([item(plan("ev-0", 1)), item(plan("ev-0", 1)),
                                      item(plan("ev-1", 1), FLEET[1])])
        assert [[f.rule for f in j.verdict.findings] for j in judged] == [
            [], ["sequence_increasing"], []]
        assert await client.policy() == ()
        stranger = CmbClient(cmb.url, AGG, ec.generate_private_key(ec.SECP256R1()),
                             cmb.session, clock=cmb.clock)
        with pytest.raises(CmbAuthError) as auth:
            await stranger.submit([item(plan("ev-0", 2))])
        assert not auth.value.retryable and auth.value.status == 401
        huge = [item(plan("ev-0", i + 10)) for i in range(400)]
        with pytest.raises(CmbInvalid):
            await CmbClient(cmb.url, AGG, KEY, cmb.session, clock=cmb.clock).submit(huge)
        gone = CmbClient("http://127.0.0.1:9", AGG, KEY, cmb.session, clock=cmb.clock)
        with pytest.raises(CmbUnavailable) as down:
            await gone.submit([item(plan("ev-0", 2))])
        assert down.value.retryable


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return write_pki(tmp_path_factory.mktemp("pki"))


async def test_secure_mode_maps_the_client_certificate_to_the_aggregator(pki: Pki) -> None:
    server = server_context(pki.vtn_ecc.cert, pki.vtn_ecc.key, pki.ca)
    as_agg = client_context(pki.ven_ecc.cert, pki.ven_ecc.key, pki.ca)
    as_other = client_context(pki.ven_rsa.cert, pki.ven_rsa.key, pki.ca)
    agg_fp = fingerprint(pki.ven_ecc.cert_pem)
    async with running_cmb(secure=True, server_ssl=server, client_ssl=as_agg,
                           fingerprint_=agg_fp) as cmb:
        assert (await cmb.submit([item(plan("ev-0", 1))]))[0] == 200
        async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=as_other)) as other:
            async with other.post(cmb.url + "/api/cmb/plans",
                                  data=cmb.signed([item(plan("ev-0", 2))])) as resp:
                assert resp.status == 403
                assert "client certificate" in (await resp.json())["detail"]
        assert cmb.cmb.store.sequences() == {"ev-0": 1}


def test_profiles_file_names_keys_by_file(tmp_path: Path) -> None:
    (tmp_path / "agg.pem").write_text(public_pem(KEY))
    path = tmp_path / "aggregators.json"
    path.write_text(json.dumps({AGG: {"public_key": "agg.pem", "auto_response": ["mw_step"]}}))
    [p] = load_profiles(path)
    assert p.aggregator == AGG and p.public_key == public_pem(KEY)
    assert p.auto_response == ("mw_step",)
    vtn_store = VtnStore(make_engine(f"sqlite:///{tmp_path}/state.db"))
    vtn_store.create_schema()
    cmb = cmb_beside(vtn_store, now=T0, profiles_file=path)
    assert cmb.profile(AGG) == p and cmb.key(AGG) is not None
    assert [e.actor for e in cmb.store.audit(action="aggregator_registered")] == ["config"]
    vtn_store.close()
    path.write_text(json.dumps({AGG: {"auto_response": []}}))
    with pytest.raises(ValueError, match=AGG):
        load_profiles(path)


async def test_cli_cmb_commands(capsys: pytest.CaptureFixture[str]) -> None:
    async with running_cmb() as cmb:
        await cmb.submit([item(plan(r.device_id, 1), r) for r in FLEET[:4]])
        await cmb.cmb.settle()

        async def run(*argv: str) -> tuple[int, Any]:
            code = await asyncio.to_thread(cli.main, [*argv, "--api", cmb.url,
                                                      "--token", TOKEN])
            out = capsys.readouterr()
            return code, json.loads(out.out) if code == 0 else out.err

        code, verdicts = await run("cmb", "verdicts", "--aggregator", AGG, "--limit", "2")
        assert code == 0 and len(verdicts) == 2 and verdicts[0]["decision"] == "accepted"
        code, alerts = await run("cmb", "alerts")
        assert code == 0 and "same_minute_share" in [a["monitor"] for a in alerts]
        code, created = await run("cmb", "override", "create", "--area", "area-1",
                                  "--device-class", "ev", "--level", "20", "--reason", "drill")
        assert code == 0 and created["level"] == 20 and len(created["devices"]) == len(DEVICES)
        code, listed = await run("cmb", "override", "list", "--status", "active")
        assert code == 0 and created["override_id"] in [o["override_id"] for o in listed]
        code, lifted = await run("cmb", "override", "lift", created["override_id"])
        assert code == 0 and lifted["status"] == "lifted"
        code, err = await run("cmb", "override", "lift", created["override_id"])
        assert code == 1 and "409" in err
        code, err = await run("cmb", "override", "create", "--level", "5")
        assert code == 1 and "target" in err


def test_cmb_help_explains(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["cmb", "override", "--help"])
    out = capsys.readouterr().out
    assert "percent of rated import" in out and "lift" in out


async def test_the_openapi_document_lists_the_cmb_routes() -> None:
    from vtn.cmb.api import AGGREGATOR_ROUTES, OPERATOR_ROUTES

    async with running_cmb() as r:
        status, doc = await r.call("GET", "/api/openapi.json")
        assert status == 200
        listed = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
        assert {(x.method, x.path) for x in AGGREGATOR_ROUTES + OPERATOR_ROUTES} <= listed
