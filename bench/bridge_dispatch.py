"""SAPC frames encoded and signed per second, and stream dispatch throughput, against the bare work.

    python -m bench.bridge_dispatch [--plans 100] [--dispatches 5000] [--rounds 3] [--quick]
                                    [--json FILE]

**SAPC frames.** A hot-water heater on SAPC gets a response plan of `--steps` (48) half-hour
LIMIT steps; each of `--plans` plans (own sequence, so own counters) is turned into frames as
the SAPC driver does: `bridge.duis.plan_requests` (one SRV 7.13 per step), then
`bridge.duis.frame` per request (Request element, exclusive C14N, ECDSA P-256 / SHA-256
signature, SignedRequest envelope, serialised). Timed: all of it, frames per second. Baseline
in the same round: the bare `cryptography` sign of the same canonical bytes, so frame time over
sign time is what encoding, C14N and the envelope add to the signature itself. The DCC side too:
`decode_signed` (hardened parse, C14N of the Request) and `verify` of every frame, against the
bare `cryptography` verify of the same bytes. Every frame must verify.

**Stream dispatch.** One redis-server (`adrgate.services.EmbeddedRedis`, TCP on loopback, no
persistence) for the whole run, flushed between runs. In one event loop: `--dispatches`
dispatches (distinct plans of 4 half-hour steps for a home battery on the battery hub) are
enqueued with `bridge.streams.DispatchQueue.enqueue` while one `Worker` (production defaults,
one entry at a time, but a 50 ms read block so it stops quickly) delivers them through a no-op
driver that returns its `Delivery` at once, and a `ResultReader` reads and acknowledges the
results. Timed: from the first enqueue until every result has been read, dispatches per second.
Baseline in the same round and Redis: a bare redis-py loop, one coroutine doing XADD of the same
payload bytes, another XREADGROUP (one entry at a time, like the worker) and XACK of each: the
least Redis Streams work per message. The ratio is what the worker's bookkeeping costs (attempt
count and claim, the idempotency record, the result, the MULTI that acknowledges and deletes, the
results read back). Also recorded: CPU of this process and of redis-server (INFO cpu) over the
window, and the load average. Each run is bounded by `--timeout` seconds; a run that times out
reports fewer delivered than enqueued.

Rounds alternate which side goes first; ratios are taken within a round, the median reported.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import redis.asyncio
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from adrgate.services import EmbeddedRedis
from bench.results import publish
from bridge.channel import Delivery, Dispatch, encode_dispatch
from bridge.duis import decode_signed, encode_request, frame, plan_counter, plan_requests, verify
from bridge.models import Channel, Device, Mode, Plan, PlanStep, validate
from bridge.streams import DispatchQueue, Outcome, ResultReader, Worker
from ven.fleet import DeviceClass
from ven.records import Purpose

T0 = datetime(2026, 11, 27, 17, tzinfo=UTC)
HALF_HOUR = timedelta(minutes=30)
USER_EUI = "90-B3-D5-1F-30-01-00-00"
HEATER = Device(device_id="hw-1", resource_id="heaters", device_class=DeviceClass.HOT_WATER,
                channel=Channel.SAPC, network_area="north", address="00-DB-12-34-56-78-90-A0",
                rated_import_kw=3.0)
BATTERY = Device(device_id="bat-1", resource_id="batteries", device_class=DeviceClass.BATTERY,
                 channel=Channel.BATTERY_HUB, network_area="north", rated_import_kw=5.0,
                 rated_export_kw=5.0, capacity_kwh=10.0)
BARE_STREAM = "bench:bare"
FULL = {"plans": 100, "dispatches": 5000, "rounds": 3}
QUICK = {"plans": 2, "dispatches": 200, "rounds": 1}


@dataclass(frozen=True, slots=True)
class FrameRound:
    round: int
    frames: int
    frame_s: float  # plan_requests + frame, every frame
    sign_s: float  # bare ECDSA sign of the same canonical bytes
    check_s: float  # decode_signed + verify, every frame
    verify_s: float  # bare ECDSA verify of the same bytes
    frame_bytes: int  # median size of a frame on the wire

    @property
    def frame_rate(self) -> float:
        return self.frames / self.frame_s

    @property
    def check_rate(self) -> float:
        return self.frames / self.check_s


@dataclass(frozen=True, slots=True)
class StreamRun:
    round: int
    stack: str  # "worker" or "bare"
    dispatches: int
    delivered: int  # results read (worker: DELIVERED outcomes) or entries acknowledged (bare)
    failed: int  # worker results with any other outcome
    seconds: float
    cpu_s: float  # this process, user + system, over the window
    redis_cpu_s: float  # redis-server, over the window
    payload_bytes: int  # median encoded dispatch
    load: float  # 1-minute load average at the end

    @property
    def rate(self) -> float:
        return self.delivered / self.seconds


@dataclass(frozen=True, slots=True)
class Results:
    frames: list[FrameRound]
    streams: list[StreamRun]


def sapc_plan(sequence: int, steps: int) -> Plan:
    return Plan(plan_id=f"hw-plan-{sequence}", device_id=HEATER.device_id, sequence=sequence,
                issuer="bench", purpose=Purpose.RESPONSE, priority=1, event_id="bench",
                steps=tuple(PlanStep(mode=Mode.LIMIT, start=T0 + i * HALF_HOUR,
                                     end=T0 + (i + 1) * HALF_HOUR, level=(37 * i) % 101)
                            for i in range(steps)))


def battery_dispatch(i: int) -> Dispatch:
    modes = ((Mode.DISCHARGE, 3.5), (Mode.DISCHARGE, 5.0), (Mode.HOLD, None), (Mode.CHARGE, 2.0))
    plan = Plan(plan_id=f"bat-plan-{i}", device_id=BATTERY.device_id, sequence=1, issuer="bench",
                purpose=Purpose.RESPONSE, priority=1, event_id="bench",
                steps=tuple(PlanStep(mode=mode, start=T0 + k * HALF_HOUR,
                                     end=T0 + (k + 1) * HALF_HOUR, power_kw=power,
                                     soc_min=0.2, soc_max=0.95)
                            for k, (mode, power) in enumerate(modes)))
    return Dispatch(plan=plan, device=BATTERY)


def _timed(work: Callable[[], Any]) -> tuple[float, Any]:
    gc.collect()
    start = time.perf_counter()
    out = work()
    return time.perf_counter() - start, out


def frame_round(number: int, plans: Sequence[Plan], key: ec.EllipticCurvePrivateKey
                ) -> FrameRound:
    public = key.public_key()
    first = {p.plan_id: plan_counter(p) + 1 for p in plans}
    dispatches = [Dispatch(plan=p, device=HEATER) for p in plans]
    canonical = [encode_request(r) for d in dispatches
                 for r in plan_requests(d, USER_EUI, HEATER.reach, first[d.plan.plan_id], 1)]

    def frames() -> list[bytes]:
        return [frame(r, key) for d in dispatches
                for r in plan_requests(d, USER_EUI, HEATER.reach, first[d.plan.plan_id], 1)]

    def signs() -> list[bytes]:
        return [key.sign(data, ec.ECDSA(hashes.SHA256())) for data in canonical]

    def checks(sent: list[bytes]) -> Callable[[], int]:
        return lambda: sum(verify(decode_signed(f), public) for f in sent)

    def verifies(signatures: list[bytes]) -> Callable[[], int]:
        def run() -> int:
            ok = 0
            for data, signature in zip(canonical, signatures):
                try:
                    public.verify(signature, data, ec.ECDSA(hashes.SHA256()))
                except InvalidSignature:
                    continue
                ok += 1
            return ok
        return run

    if number % 2:
        sign_s, signatures = _timed(signs)
        frame_s, sent = _timed(frames)
    else:
        frame_s, sent = _timed(frames)
        sign_s, signatures = _timed(signs)
    verify_s, verified = _timed(verifies(signatures))
    check_s, checked = _timed(checks(sent))
    if not checked == verified == len(sent) == len(canonical):
        raise AssertionError(f"{len(sent)} frames, {checked} passed the DCC check, {verified} "
                             f"bare signatures verified: the benchmark is wrong")
    return FrameRound(round=number, frames=len(sent), frame_s=frame_s, sign_s=sign_s,
                      check_s=check_s, verify_s=verify_s,
                      frame_bytes=int(statistics.median(len(f) for f in sent)))


class NoopDriver:
    """A battery hub that acknowledges every dispatch at once: only the stream work is left."""

    channel = Channel.BATTERY_HUB

    async def deliver(self, dispatch: Dispatch) -> Delivery:
        now = datetime.now(UTC)
        return Delivery(key=dispatch.key, plan_id=dispatch.plan.plan_id,
                        device_id=dispatch.device.device_id, channel=self.channel, messages=2,
                        sent_at=now, acked_at=now)

    async def aclose(self) -> None:
        return None


async def _redis_cpu(client: redis.asyncio.Redis) -> float:
    info: dict[str, Any] = await client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


class _Window:
    """Wall time, this process's CPU and redis-server's CPU from `open` to `close`."""

    def __init__(self, client: redis.asyncio.Redis) -> None:
        self._client = client
        self._redis0 = self._cpu0 = self._t0 = 0.0

    async def open(self) -> None:
        gc.collect()
        self._redis0 = await _redis_cpu(self._client)
        self._cpu0 = time.process_time()
        self._t0 = time.perf_counter()

    async def close(self) -> tuple[float, float, float]:
        seconds = time.perf_counter() - self._t0
        cpu = time.process_time() - self._cpu0
        return seconds, cpu, await _redis_cpu(self._client) - self._redis0


async def worker_run(client: redis.asyncio.Redis, number: int, dispatches: Sequence[Dispatch],
                     timeout: float) -> StreamRun:
    prefix = f"bench:{number}"
    queue = DispatchQueue(client, prefix)
    worker = Worker(client, NoopDriver(), "bench-worker", prefix=prefix,
                    block=timedelta(milliseconds=50))
    reader = ResultReader(client, prefix=prefix)

    async def enqueue_all() -> None:
        for d in dispatches:
            await queue.enqueue(d)

    consuming = asyncio.create_task(worker.run())
    window = _Window(client)
    await window.open()
    producing = asyncio.create_task(enqueue_all())
    delivered = failed = 0
    deadline = time.perf_counter() + timeout
    while delivered + failed < len(dispatches) and time.perf_counter() < deadline:
        results = await reader.read(count=500, block=timedelta(milliseconds=100))
        delivered += sum(r.outcome is Outcome.DELIVERED for _, r in results)
        failed += sum(r.outcome is not Outcome.DELIVERED for _, r in results)
        await reader.ack(*(entry_id for entry_id, _ in results))
    seconds, cpu, redis_cpu = await window.close()
    producing.cancel()  # finished unless the run timed out
    worker.stop()
    await asyncio.gather(producing, consuming, return_exceptions=True)
    return StreamRun(round=number, stack="worker", dispatches=len(dispatches), delivered=delivered,
                     failed=failed, seconds=seconds, cpu_s=cpu, redis_cpu_s=redis_cpu,
                     payload_bytes=_median_size(dispatches), load=os.getloadavg()[0])


async def bare_run(client: redis.asyncio.Redis, number: int, dispatches: Sequence[Dispatch],
                   timeout: float) -> StreamRun:
    payloads = [encode_dispatch(d) for d in dispatches]
    await client.xgroup_create(BARE_STREAM, "bare", id="0", mkstream=True)

    async def add_all() -> None:
        for payload in payloads:
            await client.xadd(BARE_STREAM, {"dispatch": payload})

    window = _Window(client)
    await window.open()
    producing = asyncio.create_task(add_all())
    acked = 0
    deadline = time.perf_counter() + timeout
    while acked < len(payloads) and time.perf_counter() < deadline:
        response: Any = await client.xreadgroup("bare", "bench-bare", {BARE_STREAM: ">"},
                                                count=1, block=100)
        for _, entries in response:
            for entry_id, _fields in entries:
                await client.xack(BARE_STREAM, "bare", entry_id)
                acked += 1
    seconds, cpu, redis_cpu = await window.close()
    producing.cancel()
    await asyncio.gather(producing, return_exceptions=True)
    return StreamRun(round=number, stack="bare", dispatches=len(payloads), delivered=acked,
                     failed=0, seconds=seconds, cpu_s=cpu, redis_cpu_s=redis_cpu,
                     payload_bytes=_median_size(dispatches), load=os.getloadavg()[0])


def _median_size(dispatches: Sequence[Dispatch]) -> int:
    return int(statistics.median(len(encode_dispatch(d)) for d in dispatches[:100]))


async def stream_rounds(opts: argparse.Namespace) -> list[StreamRun]:
    dispatches = [battery_dispatch(i) for i in range(opts.dispatches)]
    runs: list[StreamRun] = []
    with tempfile.TemporaryDirectory(prefix="bench-dispatch-") as tmp, \
            EmbeddedRedis(Path(tmp), tcp=True, persist=False) as server:
        client = redis.asyncio.Redis.from_url(server.url)
        try:
            for number in range(opts.rounds):
                order = (bare_run, worker_run) if number % 2 else (worker_run, bare_run)
                for measure in order:
                    await client.flushdb()
                    runs.append(await measure(client, number, dispatches, opts.timeout))
        finally:
            await client.aclose()
    return runs


def ratios(results: Results) -> dict[str, float]:
    """Medians over rounds of the within-round ratios."""
    median = statistics.median
    by_round: dict[int, dict[str, StreamRun]] = {}
    for s in results.streams:
        by_round.setdefault(s.round, {})[s.stack] = s
    return {
        "frame_time_per_sign_time": median(f.frame_s / f.sign_s for f in results.frames),
        "check_time_per_verify_time": median(f.check_s / f.verify_s for f in results.frames),
        "worker_rate_per_bare_rate": median(r["worker"].rate / r["bare"].rate
                                            for r in by_round.values()),
    }


def report(results: Results) -> str:
    lines = ["SAPC frames (ECDSA P-256), per round:", "",
             ("| round | frames | frame bytes | frames/s | us/frame | bare sign us | "
              "x bare sign | DCC checks/s | us/check | bare verify us | x bare verify |"),
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for f in results.frames:
        n = f.frames / 1e6
        lines.append(
            f"| {f.round} | {f.frames:,} | {f.frame_bytes:,} | {f.frame_rate:,.0f} | "
            f"{f.frame_s / n:.0f} | {f.sign_s / n:.0f} | {f.frame_s / f.sign_s:.2f} | "
            f"{f.check_rate:,.0f} | {f.check_s / n:.0f} | {f.verify_s / n:.0f} | "
            f"{f.check_s / f.verify_s:.2f} |")
    lines += ["", "Stream dispatch (one worker, no-op driver), per run:", "",
              ("| round | stack | dispatches | delivered | failed | payload bytes | seconds | "
               "dispatches/s | CPU s (this process) | CPU s (redis) | load |"),
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in results.streams:
        lines.append(
            f"| {s.round} | {s.stack} | {s.dispatches:,} | {s.delivered:,} | {s.failed} | "
            f"{s.payload_bytes:,} | {s.seconds:.2f} | {s.rate:,.0f} | {s.cpu_s:.2f} | "
            f"{s.redis_cpu_s:.2f} | {s.load:.1f} |")
    r = ratios(results)
    median = statistics.median
    lines += ["", "| measure | median | median ratio (same round) |", "|---|---|---|",
              (f"| SAPC frames encoded and signed | "
               f"{median(f.frame_rate for f in results.frames):,.0f} frames/s | "
               f"{r['frame_time_per_sign_time']:.2f}x the bare sign's time |"),
              (f"| SAPC frames checked (DCC: parse + verify) | "
               f"{median(f.check_rate for f in results.frames):,.0f} frames/s | "
               f"{r['check_time_per_verify_time']:.2f}x the bare verify's time |"),
              (f"| stream dispatch, end to end | "
               f"{median(s.rate for s in results.streams if s.stack == 'worker'):,.0f} "
               f"dispatches/s | {r['worker_rate_per_bare_rate']:.2f}x the bare "
               f"XADD + XREADGROUP + XACK rate |")]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--plans", type=int, help="SAPC plans per round (default 100; quick 2)")
    p.add_argument("--steps", type=int, default=48, help="half-hour LIMIT steps per SAPC plan")
    p.add_argument("--dispatches", type=int, help="dispatches per stream run (default 5000; "
                                                  "quick 200)")
    p.add_argument("--rounds", type=int, help="default 3; quick 1")
    p.add_argument("--timeout", type=float, default=120.0, help="bound on each stream run, s")
    p.add_argument("--quick", action="store_true", help="a small run: the smoke test")
    p.add_argument("--json", type=Path, help="also write the results here")
    opts = p.parse_args(argv)
    for name, value in (QUICK if opts.quick else FULL).items():
        if getattr(opts, name) is None:
            setattr(opts, name, value)
    return opts


def run(opts: argparse.Namespace) -> Results:
    key = ec.generate_private_key(ec.SECP256R1())
    plans = [sapc_plan(sequence, opts.steps) for sequence in range(1, opts.plans + 1)]
    refused = [r for p in plans for r in validate(p, HEATER)]
    if refused:
        raise AssertionError(f"the benchmark's plan is refused: {refused[:3]}")
    frames = [frame_round(number, plans, key) for number in range(opts.rounds)]
    return Results(frames=frames, streams=asyncio.run(stream_rounds(opts)))


def main(argv: Sequence[str] | None = None) -> None:
    opts = parse_args(argv)
    results = run(opts)
    publish(report(results), opts.json, opts, ratios(results), [*results.frames, *results.streams])


if __name__ == "__main__":
    main()
