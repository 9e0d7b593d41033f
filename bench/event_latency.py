"""Time from an operator API event creation to every VEN's oadrCreatedEvent being recorded.

    python -m bench.event_latency [--vens 1000] [--period 10] [--timeout 60] [--quick]

`adrgate vtn` runs in a subprocess (SQLite file database). In this process, `--vens` simulated
pull VENs register with real oadrCreatePartyRegistration messages, are enrolled in one program
through the operator API (PATCH /api/vens/{id}), then each polls every `--period` seconds with a
random phase. A VEN that receives oadrDistributeEvent answers with oadrCreatedEvent optIn, as
openleadr's client does. Messages are openleadr's (`create_message`, `parse_message`).

After one period (every VEN is polling), one event for the program is created with POST
/api/events; the VTN targets every enrolled VEN. GET /api/events/{id} is then read every
`--watch` seconds until every delivery shows an optIn, or `--timeout` passes. A VEN's latency
is the VTN's `responded_at` minus the wall-clock time just before the POST (same host clock).
Expected: spread uniformly over one poll period, since each VEN learns of the event on its next
poll.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import random
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
from openleadr.messaging import parse_message  # type: ignore[import-untyped]

from .common import (
    api, client_session, created_event_body, percentile, poll_body, post_xml, registration_body,
    response_ok, utcnow,
)
from .servers import Server, start_adrgate

PROGRAM = "http://bench.adrgate.example/programs/flex"
REGISTER_TIMEOUT = 120.0  # bound on registering and enrolling the whole fleet


@dataclass(frozen=True)
class Options:
    vens: int = 1000
    period: float = 10.0  # poll interval of every VEN, seconds
    timeout: float = 60.0  # give up this long after the event was created
    watch: float = 0.5  # how often the API is read while waiting
    concurrency: int = 32  # registrations in flight
    seed: int = 1
    workdir: Path | None = None
    json_out: Path | None = None

    @classmethod
    def quick(cls, **overrides: Any) -> Options:
        return dataclasses.replace(cls(vens=100, period=2.0, timeout=20.0, watch=0.2), **overrides)


@dataclass
class SimVen:
    ven_name: str
    ven_id: str = ""
    poll: bytes = b""
    polls: int = 0
    errors: int = 0
    answered: int = 0  # oadrCreatedEvent messages the VTN accepted


@dataclass(frozen=True)
class LatencyResult:
    vens: int
    acknowledged: int  # deliveries the VTN recorded as optIn
    period_s: float
    api_ms: float  # duration of POST /api/events
    p50_s: float
    p95_s: float
    max_s: float
    all_s: float | None  # time until the last VEN's answer; None if some never answered
    polls: int
    poll_errors: int
    answered: int  # oadrCreatedEvent accepted, as the VENs saw it


async def register(session: aiohttp.ClientSession, url: str, ven: SimVen) -> None:
    """Raises: RuntimeError when the VTN does not answer with a registration."""
    status, body = await post_xml(session, url + "/EiRegisterParty",
                                  registration_body(ven.ven_name))
    kind, payload = parse_message(body) if status == 200 else ("", {})
    if kind != "oadrCreatedPartyRegistration" or not payload.get("ven_id"):
        raise RuntimeError(f"registration of {ven.ven_name} failed: {status} {body[:200]!r}")
    ven.ven_id = payload["ven_id"]
    ven.poll = poll_body(ven.ven_id)


async def answer_events(session: aiohttp.ClientSession, url: str, ven: SimVen,
                        payload: dict[str, Any]) -> None:
    """Opt in to every event in an oadrDistributeEvent that asks for a response."""
    events = [(e["event_descriptor"]["event_id"], int(e["event_descriptor"]["modification_number"]))
              for e in payload.get("events", []) if e.get("response_required") == "always"]
    if not events:
        return
    status, body = await post_xml(session, url + "/EiEvent",
                                  created_event_body(ven.ven_id, payload["request_id"], events))
    if response_ok(status, body, signed=False):
        ven.answered += 1
    else:
        ven.errors += 1


async def poll_loop(session: aiohttp.ClientSession, url: str, ven: SimVen, period: float,
                    phase: float, stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    due = loop.time() + phase
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), timeout=max(0.0, due - loop.time()))
            return
        except asyncio.TimeoutError:
            pass
        due += period
        ven.polls += 1
        try:
            status, body = await post_xml(session, url + "/OadrPoll", ven.poll)
            kind, payload = parse_message(body) if status == 200 else ("", {})
            if kind == "oadrDistributeEvent":
                await answer_events(session, url, ven, payload)
            elif kind != "oadrResponse":
                ven.errors += 1
        except (aiohttp.ClientError, asyncio.TimeoutError):
            ven.errors += 1


async def _bounded(jobs: Sequence[Any], concurrency: int, timeout: float) -> None:
    """Run coroutines `concurrency` at a time; the whole batch bounded by `timeout`."""
    queue = list(reversed(jobs))

    async def worker() -> None:
        while queue:
            await queue.pop()

    await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(concurrency))), timeout)


async def acknowledged(session: aiohttp.ClientSession, base_url: str,
                       event_id: str) -> list[datetime]:
    event = await api(session, base_url, "GET", f"/api/events/{event_id}")
    return [datetime.fromisoformat(d["responded_at"]) for d in event["deliveries"]
            if d["opt"] == "optIn" and d["response_code"] == 200 and d["responded_at"]]


async def create_and_watch(session: aiohttp.ClientSession, server: Server,
                           opts: Options) -> tuple[list[float], float]:
    """Create the event; wait for every VEN's optIn. Returns per-VEN latencies and the API
    call's duration, in seconds."""
    t0 = utcnow()
    event = await api(session, server.base_url, "POST", "/api/events", {
        "market_context": PROGRAM, "dtstart": (t0 + timedelta(minutes=5)).isoformat(),
        "signals": [{"signal_name": "SIMPLE", "signal_type": "level",
                     "intervals": [{"duration": "PT10M", "payload": 1.0}]}]})
    api_s = (utcnow() - t0).total_seconds()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + opts.timeout
    times = await acknowledged(session, server.base_url, event["event_id"])
    while len(times) < opts.vens and loop.time() < deadline:
        await asyncio.sleep(opts.watch)
        times = await acknowledged(session, server.base_url, event["event_id"])
    return [(t - t0).total_seconds() for t in times], api_s


async def measure(server: Server, opts: Options) -> LatencyResult:
    fleet = [SimVen(ven_name=f"latency-ven-{i:04d}") for i in range(opts.vens)]
    rng = random.Random(opts.seed)
    stop = asyncio.Event()
    async with client_session() as session:
        await api(session, server.base_url, "POST", "/api/programs",
                  {"market_context": PROGRAM, "name": "bench"})
        await _bounded([register(session, server.oadr_url, v) for v in fleet],
                       opts.concurrency, REGISTER_TIMEOUT)
        await _bounded([api(session, server.base_url, "PATCH", f"/api/vens/{v.ven_id}",
                            {"programs": [PROGRAM]}) for v in fleet],
                       opts.concurrency, REGISTER_TIMEOUT)
        pollers = [asyncio.ensure_future(poll_loop(session, server.oadr_url, v, opts.period,
                                                   rng.uniform(0, opts.period), stop))
                   for v in fleet]
        try:
            await asyncio.sleep(opts.period)  # every VEN has polled once: steady state
            latencies, api_s = await create_and_watch(session, server, opts)
        finally:
            stop.set()
            await asyncio.gather(*pollers)
    complete = len(latencies) == opts.vens
    return LatencyResult(
        vens=opts.vens, acknowledged=len(latencies), period_s=opts.period, api_ms=api_s * 1000,
        p50_s=percentile(latencies, 0.5), p95_s=percentile(latencies, 0.95),
        max_s=max(latencies, default=0.0), all_s=max(latencies) if complete else None,
        polls=sum(v.polls for v in fleet), poll_errors=sum(v.errors for v in fleet),
        answered=sum(v.answered for v in fleet))


async def run(opts: Options) -> LatencyResult:
    with tempfile.TemporaryDirectory(prefix="adrgate-latency-", dir=opts.workdir) as tmp:
        server = start_adrgate(Path(tmp), [], None, poll_freq=opts.period)
        try:
            return await measure(server, opts)
        finally:
            server.stop()


def report(r: LatencyResult) -> str:
    done = f"{r.all_s:.2f} s" if r.all_s is not None else f"not reached ({r.acknowledged}/{r.vens})"
    return "\n".join([
        "| VENs | poll period | acknowledged | p50 | p95 | max | time to all | POST /api/events "
        "| polls | errors |",
        "|---|---|---|---|---|---|---|---|---|---|",
        f"| {r.vens} | {r.period_s:g} s | {r.acknowledged} | {r.p50_s:.2f} s | {r.p95_s:.2f} s | "
        f"{r.max_s:.2f} s | {done} | {r.api_ms:.0f} ms | {r.polls} | {r.poll_errors} |"])


def parse_args(argv: Sequence[str] | None = None) -> Options:
    p = argparse.ArgumentParser(prog="python -m bench.event_latency", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vens", type=int, help="simulated VENs (default 1000; quick 100)")
    p.add_argument("--period", type=float, help="poll period, seconds (default 10; quick 2)")
    p.add_argument("--timeout", type=float, help="abort this long after creating the event")
    p.add_argument("--seed", type=int, help="seed of the poll phases")
    p.add_argument("--quick", action="store_true", help="100 VENs polling every 2 s")
    p.add_argument("--workdir", type=Path, help="where temporary files go")
    p.add_argument("--json", type=Path, help="also write the result as JSON here")
    a = p.parse_args(argv)
    given = {k: v for k, v in (("vens", a.vens), ("period", a.period), ("timeout", a.timeout),
                                ("seed", a.seed), ("workdir", a.workdir), ("json_out", a.json))
             if v is not None}
    return Options.quick(**given) if a.quick else dataclasses.replace(Options(), **given)


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    result = asyncio.run(run(opts))
    print(report(result))
    if opts.json_out is not None:
        opts.json_out.write_text(json.dumps(dataclasses.asdict(result), indent=2))
    return 0 if result.all_s is not None else 1


if __name__ == "__main__":
    sys.exit(main())
