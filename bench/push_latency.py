"""Push vs pull: time from an operator API event creation to every VEN's oadrCreatedEvent.

    python -m bench.push_latency [--sizes 1,100,1000] [--period 10] [--timeout 60]

For each size, two fresh `adrgate vtn` subprocesses (SQLite), one after the other:
- pull: `bench.event_latency` as it is: simulated VENs polling every `--period` seconds from a
  random phase;
- push: the same number of simulated VENs registered with oadrHttpPullModel=false and an
  oadrTransportAddress on one loopback listener in this process (one path per VEN). A pushed
  oadrDistributeEvent is answered with an oadrResponse at once and then an oadrCreatedEvent optIn
  is POSTed to the VTN, as a VEN would after a poll. Messages are openleadr's.
Both are enrolled in one program, which one event created with POST /api/events reaches; the
latency of a VEN is the VTN's `responded_at` minus the time just before the POST. Results are
per size and mode; the ratio push/pull of the time until every VEN answered is taken from the
same run. Targets (issue 6): 1,000 push VENs within 2 s, p50 for one VEN under 50 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import tempfile
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from aiohttp import web
from openleadr.messaging import parse_message  # type: ignore[import-untyped]

from . import event_latency
from .common import api, client_session, openleadr_message, percentile, post_xml
from .event_latency import PROGRAM, REGISTER_TIMEOUT, LatencyResult, SimVen, _bounded
from .results import publish
from .servers import Server, start_adrgate

TARGET_ALL_S = 2.0  # 1,000 push VENs
TARGET_P50_S = 0.05  # one push VEN


@dataclass(frozen=True, slots=True)
class Row:
    mode: str
    result: LatencyResult


class PushListener:
    """One loopback listener for every simulated push VEN: answers each push with an
    oadrResponse, then opts in to the pushed events through the VTN's EiEvent service."""

    def __init__(self, session: aiohttp.ClientSession, oadr_url: str) -> None:
        self.session = session
        self.oadr_url = oadr_url
        self.vens: dict[str, SimVen] = {}
        self.pushes = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/{ven}/OpenADR2/Simple/2.0b/{service}", self._push)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = "http://127.0.0.1:%d" % self._runner.addresses[0][1]

    async def close(self) -> None:
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()

    async def _push(self, request: web.Request) -> web.Response:
        ven = self.vens.get(request.match_info["ven"])
        kind, payload = parse_message(await request.read())
        self.pushes += 1
        if ven is None:
            return web.Response(status=404)
        if kind == "oadrDistributeEvent":
            task = asyncio.ensure_future(event_latency.answer_events(
                self.session, self.oadr_url, ven, payload))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        body = openleadr_message("oadrResponse", ven_id=ven.ven_id, response={
            "response_code": 200, "response_description": "OK",
            "request_id": payload.get("request_id", "")})
        return web.Response(body=body, content_type="application/xml")


async def register_push(session: aiohttp.ClientSession, url: str, ven: SimVen,
                        address: str) -> None:
    """Raises: RuntimeError when the VTN does not answer with a registration."""
    status, body = await post_xml(session, url + "/EiRegisterParty", openleadr_message(
        "oadrCreatePartyRegistration", request_id=uuid.uuid4().hex, ven_name=ven.ven_name,
        http_pull_model=False, xml_signature=False, report_only=False, profile_name="2.0b",
        transport_name="simpleHttp", transport_address=address))
    kind, payload = parse_message(body) if status == 200 else ("", {})
    if kind != "oadrCreatedPartyRegistration" or not payload.get("ven_id"):
        raise RuntimeError(f"registration of {ven.ven_name} failed: {status} {body[:200]!r}")
    ven.ven_id = payload["ven_id"]


async def measure_push(server: Server, opts: event_latency.Options) -> LatencyResult:
    fleet = [SimVen(ven_name=f"push-ven-{i:04d}") for i in range(opts.vens)]
    async with client_session() as session:
        listener = PushListener(session, server.oadr_url)
        await listener.start()
        listener.vens = {v.ven_name: v for v in fleet}
        try:
            await api(session, server.base_url, "POST", "/api/programs",
                      {"market_context": PROGRAM, "name": "bench"})
            await _bounded([register_push(session, server.oadr_url, v,
                                          f"{listener.url}/{v.ven_name}/OpenADR2/Simple/2.0b")
                            for v in fleet], opts.concurrency, REGISTER_TIMEOUT)
            await _bounded([api(session, server.base_url, "PATCH", f"/api/vens/{v.ven_id}",
                                {"programs": [PROGRAM]}) for v in fleet],
                           opts.concurrency, REGISTER_TIMEOUT)
            latencies, api_s = await event_latency.create_and_watch(session, server, opts)
        finally:
            await listener.close()
    complete = len(latencies) == opts.vens
    return LatencyResult(
        vens=opts.vens, acknowledged=len(latencies), period_s=0.0, api_ms=api_s * 1000,
        p50_s=percentile(latencies, 0.5), p95_s=percentile(latencies, 0.95),
        max_s=max(latencies, default=0.0), all_s=max(latencies) if complete else None,
        polls=listener.pushes, poll_errors=sum(v.errors for v in fleet),
        answered=sum(v.answered for v in fleet))


async def one(mode: str, opts: event_latency.Options) -> Row:
    with tempfile.TemporaryDirectory(prefix=f"adrgate-{mode}-") as tmp:
        server = start_adrgate(Path(tmp), [], None, poll_freq=opts.period)
        try:
            measured = measure_push if mode == "push" else event_latency.measure
            return Row(mode=mode, result=await measured(server, opts))
        finally:
            server.stop()


async def run(sizes: Sequence[int], base: event_latency.Options) -> list[Row]:
    rows = []
    for n in sizes:
        opts = dataclasses.replace(base, vens=n)
        rows += [await one("push", opts), await one("pull", opts)]
    return rows


def ratios(rows: Sequence[Row]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for push, pull in zip(rows[::2], rows[1::2]):
        a, b = push.result.all_s, pull.result.all_s
        out[f"push_over_pull_all_{push.result.vens}"] = a / b if a and b else None
    return out


def report(rows: Sequence[Row]) -> str:
    lines = ["| VENs | mode | acknowledged | p50 s | p95 s | all s | pushes / polls | errors |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        r = row.result
        every = f"{r.all_s:.3f}" if r.all_s is not None else "not all"
        lines.append(f"| {r.vens:,} | {row.mode} | {r.acknowledged:,} | {r.p50_s:.3f} | "
                     f"{r.p95_s:.3f} | {every} | {r.polls:,} | {r.poll_errors} |")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="1,100,1000", help="VEN counts, comma-separated")
    p.add_argument("--period", type=float, default=10.0, help="pull VENs' poll period, seconds")
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--json", type=Path, help="also write the results here")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    opts = parse_args(argv)
    base = event_latency.Options(period=opts.period, timeout=opts.timeout)
    rows = asyncio.run(run([int(s) for s in opts.sizes.split(",")], base))
    publish(report(rows), opts.json, opts, ratios(rows), [r.result for r in rows])


if __name__ == "__main__":
    main()

