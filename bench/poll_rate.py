"""oadrPoll round trips per second: `adrgate vtn` against a bare openleadr `OpenADRServer`.

    python -m bench.poll_rate [--vens 1000] [--polls N] [--seconds S] [--rounds R] [--quick]

For each mode (unsigned over HTTP; ECDSA P-256 and RSA-2048 signed over mutual TLS) and each
round, both servers run in turn, each in its own process, with the same VEN fleet and the same
load: `--concurrency` polls in flight over keep-alive connections, VENs polled round-robin. A
poll counts when the answer is HTTP 200 with an OpenADR response, responseCode 200 (and, signed,
a signature). Each run: one request per VEN to open its connection, `--warmup` seconds of polls,
then the timed window: `--seconds` or `--polls` completed polls, whichever comes first. Results
are ratios adrgate/openleadr of runs in the same round (the machine is shared and noisy).

Signed polls are signed by the generator just before they are sent (fresh nonce and
timestamp): openleadr refuses a signature older than 5 s, so nothing can be signed ahead.
The generator reports its own CPU use; near 100% of a core would mean it, not the server,
limits the rate.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import itertools
import os
import ssl
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from .common import (
    BodySource, ConnectionCounter, Signed, client_session, constant, make_vens,
    percentile, poll_body, post_xml, response_ok, tls_contexts,
)
from .pki import Algorithm, FleetPki, make_fleet_pki
from .results import publish
from .servers import Server, VenEntry, start_adrgate, start_openleadr

SERVERS = ("adrgate", "openleadr")
MODES: tuple[Algorithm | None, ...] = (None, Algorithm.ECDSA, Algorithm.RSA)
CONNECT_TIMEOUT = 120.0  # bound on opening one connection per VEN
TARGETS = {None: 1.0, Algorithm.ECDSA: 50.0, Algorithm.RSA: 50.0}  # from the issue


@dataclass(frozen=True)
class Options:
    vens: int = 1000
    concurrency: int = 32
    seconds: float = 10.0
    polls: int = 200_000
    warmup: float = 2.0
    rounds: int = 1
    modes: tuple[Algorithm | None, ...] = MODES
    workdir: Path | None = None  # default: a temporary directory, removed afterwards
    json_out: Path | None = None  # also write the results here

    @classmethod
    def quick(cls, **overrides: Any) -> Options:
        return dataclasses.replace(cls(vens=100, seconds=2.0, warmup=0.5), **overrides)


@dataclass(frozen=True)
class Target:
    url: str
    body: BodySource
    tls: ssl.SSLContext | None


@dataclass
class Tally:
    issued: int = 0
    ok: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    last_done: float = 0.0


@dataclass(frozen=True)
class RunResult:
    server: str
    mode: str
    round: int
    ok: int
    failed: dict[str, int]
    seconds: float
    rate: float  # successful polls per second
    p50_ms: float
    p99_ms: float
    server_cpu: float  # cores used by the server (1.0 = one core saturated)
    generator_cpu: float  # cores used by the load generator
    new_connections: int  # connections opened during the window (0: keep-alive held)
    load: float  # 1-minute load average at the end (ours alone: ~2; more: other work)


def mode_name(mode: Algorithm | None) -> str:
    return "unsigned" if mode is None else str(mode)


async def drive(session: aiohttp.ClientSession, targets: Sequence[Target], start: int, *,
                concurrency: int, seconds: float, max_polls: int, signed: bool) -> Tally:
    """Keep `concurrency` polls in flight until `seconds` pass or `max_polls` are issued; count
    what completes inside the window."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    deadline = t0 + seconds
    tally = Tally(last_done=t0)
    order = itertools.count(start)

    async def worker() -> None:
        while loop.time() < deadline and tally.issued < max_polls:
            tally.issued += 1
            target = targets[next(order) % len(targets)]
            request = target.body()  # signed here, just before sending: a fresh timestamp
            sent = loop.time()
            try:
                status, body = await post_xml(session, target.url, request, target.tls)
                reason = None if response_ok(status, body, signed=signed) else (
                    f"HTTP {status}" if status != 200 else "not an OK OpenADR answer")
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                reason = type(exc).__name__
            done = loop.time()
            if done > deadline:
                continue  # completed after the window: not counted
            tally.last_done = done
            if reason is None:
                tally.ok += 1
                tally.latencies.append(done - sent)
            else:
                tally.failed[reason] += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return tally


async def open_connections(session: aiohttp.ClientSession, targets: Sequence[Target],
                           concurrency: int) -> None:
    """One cheap request (GET: 405) per VEN, so TLS handshakes happen before any timing."""
    queue = list(targets)

    async def worker() -> None:
        while queue:
            t = queue.pop()
            async with session.get(t.url, ssl=t.tls if t.tls else False) as resp:
                await resp.read()

    await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(concurrency))),
                           CONNECT_TIMEOUT)


async def measure(server: Server, targets: Sequence[Target], opts: Options, *, mode: str,
                  round_: int) -> RunResult:
    """Connect, warm up, then time one window against a running server."""
    signed = mode != "unsigned"
    counter = ConnectionCounter()
    async with client_session(counter) as session:
        await open_connections(session, targets, opts.concurrency)
        warm = await drive(session, targets, 0, concurrency=opts.concurrency,
                           seconds=opts.warmup, max_polls=opts.polls, signed=signed)
        if warm.ok == 0:
            raise RuntimeError(f"{server.name}: no successful poll while warming up: "
                               f"{dict(warm.failed)}; see {server.log}")
        opened = counter.opened
        cpu0, gen0 = server.cpu_seconds(), time.process_time()  # process_time: the generator
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        window = asyncio.ensure_future(drive(
            session, targets, warm.issued, concurrency=opts.concurrency, seconds=opts.seconds,
            max_polls=opts.polls, signed=signed))
        # sample the clocks when the window closes, not after in-flight polls drain
        await asyncio.wait([window], timeout=opts.seconds)
        cpu1, gen1, t1 = server.cpu_seconds(), time.process_time(), loop.time()
        polls_cap_reached = window.done()  # else the window ran its full time
        tally = await window
    # with the --polls cap the window closes at the last completed poll
    elapsed = max(tally.last_done - t0 if polls_cap_reached else t1 - t0, 1e-9)
    return RunResult(
        server=server.name.split("-")[0], mode=mode, round=round_, ok=tally.ok,
        failed=dict(tally.failed), seconds=round(elapsed, 3), rate=tally.ok / elapsed,
        p50_ms=percentile(tally.latencies, 0.5) * 1000,
        p99_ms=percentile(tally.latencies, 0.99) * 1000,
        server_cpu=(cpu1 - cpu0) / (t1 - t0), generator_cpu=(gen1 - gen0) / (t1 - t0),
        new_connections=counter.opened - opened, load=os.getloadavg()[0])


def _targets(server: Server, vens: Sequence[VenEntry], pki: FleetPki | None,
             contexts: Sequence[ssl.SSLContext]) -> list[Target]:
    url = server.oadr_url + "/OadrPoll"
    if pki is None:
        return [Target(url, constant(poll_body(v.ven_id)), None) for v in vens]
    return [Target(url, Signed(poll_body(v.ven_id), creds.key), tls)
            for v, creds, tls in zip(vens, pki.vens, contexts, strict=True)]


async def run(opts: Options) -> list[RunResult]:
    """Every (round, mode, server) run; servers are started and stopped one at a time."""
    with tempfile.TemporaryDirectory(prefix="adrgate-bench-", dir=opts.workdir) as tmp:
        workdir = Path(tmp)
        base = make_vens(opts.vens)
        fleets: dict[Algorithm | None, tuple[list[VenEntry], FleetPki | None,
                                             list[ssl.SSLContext]]] = {}
        for mode in opts.modes:
            if mode is None:
                fleets[mode] = (base, None, [])
                continue
            fleet_pki = make_fleet_pki(workdir / f"pki-{mode}", mode, [v.ven_name for v in base])
            signed_vens = [dataclasses.replace(v, fingerprint=c.fingerprint)
                           for v, c in zip(base, fleet_pki.vens, strict=True)]
            fleets[mode] = (signed_vens, fleet_pki, tls_contexts(fleet_pki))
        results = []
        for round_, mode in itertools.product(range(opts.rounds), opts.modes):
            vens, pki, contexts = fleets[mode]
            # alternate who goes first, so neither server always runs on a warmer machine
            for name in SERVERS if round_ % 2 == 0 else SERVERS[::-1]:
                rundir = workdir / f"round{round_}"
                rundir.mkdir(exist_ok=True)
                server = (start_adrgate(rundir, vens, pki) if name == "adrgate"
                          else start_openleadr(rundir, vens, pki))
                try:
                    result = await measure(server, _targets(server, vens, pki, contexts), opts,
                                           mode=mode_name(mode), round_=round_)
                finally:
                    server.stop()
                print(_row(result), file=sys.stderr, flush=True)
                results.append(result)
        return results


# --- report -------------------------------------------------------------------------------

def ratios(results: Sequence[RunResult]) -> dict[str, float]:
    """Median over rounds of adrgate/openleadr, per mode."""
    out = {}
    for mode in dict.fromkeys(r.mode for r in results):
        per_round = []
        for round_ in sorted({r.round for r in results if r.mode == mode}):
            rate = {r.server: r.rate for r in results if r.mode == mode and r.round == round_}
            if rate.get("openleadr"):
                per_round.append(rate.get("adrgate", 0.0) / rate["openleadr"])
        if per_round:
            out[mode] = statistics.median(per_round)
    return out


def _row(r: RunResult) -> str:
    failed = ", ".join(f"{k}: {v}" for k, v in r.failed.items()) or "-"
    return (f"| {r.round} | {r.server} | {r.mode} | {r.ok} | {r.rate:,.1f} | {r.p50_ms:.1f} | "
            f"{r.p99_ms:.1f} | {r.server_cpu:.2f} | {r.generator_cpu:.2f} | "
            f"{r.new_connections} | {r.load:.1f} | {failed} |")


def report(results: Sequence[RunResult]) -> str:
    lines = ["| round | server | mode | polls ok | polls/s | p50 ms | p99 ms | server CPU | "
             "generator CPU | new conns | load | failures |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += [_row(r) for r in results]
    lines += ["", "| mode | adrgate / openleadr (median over rounds) | target |", "|---|---|---|"]
    targets = {mode_name(m): t for m, t in TARGETS.items()}
    lines += [f"| {mode} | {ratio:.2f}x | >= {targets[mode]:g}x |"
              for mode, ratio in ratios(results).items()]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> Options:
    p = argparse.ArgumentParser(prog="python -m bench.poll_rate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vens", type=int, help="registered VENs (default 1000; quick 100)")
    p.add_argument("--polls", type=int, help="stop a window after this many polls")
    p.add_argument("--seconds", type=float, help="timed window per run (default 10; quick 2)")
    p.add_argument("--warmup", type=float, help="untimed polling before each window")
    p.add_argument("--concurrency", type=int, help="polls in flight (default 32)")
    p.add_argument("--rounds", type=int, help="repeat every pair of runs (default 1)")
    p.add_argument("--modes", help="comma-separated: unsigned,ecdsa,rsa (default all)")
    p.add_argument("--quick", action="store_true", help="100 VENs, 2 s windows: a smoke run")
    p.add_argument("--workdir", type=Path, help="where temporary files go")
    p.add_argument("--json", type=Path, help="also write the results as JSON here")
    a = p.parse_args(argv)
    given = {k: v for k, v in (("vens", a.vens), ("polls", a.polls), ("seconds", a.seconds),
                                ("warmup", a.warmup), ("concurrency", a.concurrency),
                                ("rounds", a.rounds), ("workdir", a.workdir),
                                ("json_out", a.json)) if v is not None}
    if a.modes:
        given["modes"] = tuple(None if m == "unsigned" else Algorithm(m)
                               for m in a.modes.split(","))
    return Options.quick(**given) if a.quick else dataclasses.replace(Options(), **given)


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    results = asyncio.run(run(opts))
    publish(report(results), opts.json_out, opts, ratios(results), results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
