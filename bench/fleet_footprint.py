"""Resident memory per VEN and CPU per poll cycle: our VEN fleet against stock openleadr clients.

    python -m bench.fleet_footprint [--vens 1000] [--cycles 3] [--poll-seconds 10] [--rounds 1]

Each stack runs `--vens` VENs in one child process of its own, against a fresh `adrgate vtn`
subprocess offering oadrRequestedOadrPollFreq = `--poll-seconds` (so neither the VTN's CPU nor
the other stack's memory is counted):

- ours: `ven.runner.Fleet` over a SQLite file `FleetStore`, production defaults (one HTTP pool,
  200 exchanges in flight), one `VenSpec` per VEN with `--resources` battery groups (default 0:
  a poll-only VEN, like openleadr's client without reports);
- openleadr: one `OpenADRClient(ven_name=..., vtn_url=...)` per VEN, `await client.run()` each
  (it registers, then polls on its own APScheduler), at most `--start-concurrency` registering
  at once.

In the child: one warm-up VEN registers, polls once and stops (every lazy import and cache is
loaded), then gc and the baseline RSS (VmRSS). The N VENs start; once every one is registered and
has polled (bounded by `--register-timeout`), one poll period passes untimed, then the window of
`--cycles` periods: process CPU (user + system, all threads) and the polls sent are counted.
At the end, gc and RSS again: memory per VEN = (RSS_N - RSS_baseline) / N. Results are the
ratios ours/openleadr in the same round; rounds alternate which stack goes first. Our VENs poll
at a fixed rate from a random phase each; openleadr's poll one period after they registered, so
clients that registered together poll together. `--spread` re-phases openleadr's poll jobs
uniformly over one period once all are registered, so both stacks see the same even load.

A child imports only the stack it runs (the imports are inside the drivers), so its RSS, and
the work its garbage collector does, are that stack's alone.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import json
import logging
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from bench.results import publish

STACKS = ("ours", "openleadr")
TARGET_KB_PER_VEN = 50.0  # from the issue
TARGET_CPU_RATIO = 0.5  # ours/openleadr CPU per poll, from the issue
REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Options:
    vens: int = 1000
    cycles: int = 3  # poll periods in the timed window
    poll_seconds: int = 10  # the VTN's oadrRequestedOadrPollFreq: whole seconds (xs:duration)
    rounds: int = 1
    stacks: tuple[str, ...] = STACKS
    resources: int = 0  # battery groups per VEN of ours (openleadr's client offers no reports)
    register_timeout: float = 180.0  # until every VEN is registered and has polled once
    start_concurrency: int = 50  # openleadr clients registering at once
    spread: bool = False  # re-phase every VEN's polls uniformly over a period once registered
    workdir: Path | None = None
    json_out: Path | None = None
    profile: Path | None = None  # cProfile of each child's window, written here

    @classmethod
    def quick(cls, **overrides: Any) -> Options:
        return dataclasses.replace(cls(vens=5, cycles=1, poll_seconds=1, register_timeout=30.0),
                                   **overrides)

    def child_timeout(self) -> float:
        return self.register_timeout + self.poll_seconds * (self.cycles + 2) + 60.0


@dataclass(frozen=True)
class StackResult:
    stack: str
    round: int
    vens: int
    registered: int  # VENs registered and polled at least once before the window
    register_s: float  # from start to the last of them
    rss_base_kb: int  # after imports and the warm-up VEN
    rss_kb: int  # with the N VENs, end of the window
    peak_kb: int  # VmHWM: includes the registration burst
    kb_per_ven: float
    window_s: float
    polls: int  # oadrPoll sent in the window
    messages: int  # every message sent in the window
    cpu_s: float  # user + system of the child over the window
    user_s: float  # the same split (10 ms ticks): system time includes loopback delivery to the VTN
    sys_s: float
    cpu_per_1000_polls: float
    burst: float  # polls in the busiest 100 ms of the window / the mean per 100 ms
    warnings: int  # log records >= WARNING from the start of the N VENs to the window's end
    first_warning: str | None
    load: float  # 1-minute load average at the end


# --- the child: one stack, N VENs ---------------------------------------------------------

def rss_kb() -> tuple[int, int]:
    """(VmRSS, VmHWM) of this process, in KiB."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines()
                  if ":" in line)
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


class Tally:
    """Messages the VENs send; while `recording`, when each poll went (a compact array, so the
    measurement itself adds no RSS worth counting)."""

    def __init__(self) -> None:
        self.polls = self.messages = 0
        self.recording = False
        self.times = array("d")

    def sent(self, poll: bool) -> None:
        self.messages += 1
        if poll:
            self.polls += 1
            if self.recording:
                self.times.append(time.monotonic())

    def burst(self, start: float, end: float, bin_s: float = 0.1) -> float:
        bins = [0] * max(1, int((end - start) / bin_s))
        for t in self.times:
            bins[min(len(bins) - 1, int((t - start) / bin_s))] += 1
        mean = sum(bins) / len(bins)
        return max(bins) / mean if mean else 0.0


class Driver(Protocol):
    """One stack's fleet inside the child."""

    tally: Tally

    async def start(self, prefix: str, count: int) -> None: ...
    def ready(self) -> int: ...  # VENs registered that have polled at least once
    def spread(self, period: float, rng: random.Random) -> None: ...
    async def stop(self) -> None: ...


class OursDriver:
    """`ven.runner.Fleet`, counting through its observer (called once per exchange)."""

    def __init__(self, vtn_url: str, opts: Options, db: Path) -> None:
        from adrgate.services import make_engine
        from ven.store import FleetStore

        self.store = FleetStore(make_engine(f"sqlite:///{db}"))
        self.vtn_url, self.opts = vtn_url, opts
        self.tally = Tally()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._fleet: Any = None

    def _observe(self, ven: str, service: str, body: bytes, reply: bytes) -> None:
        self.tally.sent(service == "OadrPoll")

    async def start(self, prefix: str, count: int) -> None:
        from ven.fleet import DeviceClass, FleetSpec, ResourceSpec, VenSpec
        from ven.runner import Fleet

        vens = tuple(VenSpec(
            name=f"{prefix}-{i:04d}", vtn_url=self.vtn_url,
            poll_interval=timedelta(seconds=self.opts.poll_seconds),
            resources=tuple(ResourceSpec(
                resource_id=f"battery-{j}", device_class=DeviceClass.BATTERY, devices=10,
                rated_kw=100.0, baseline_kw=60.0, flexible_kw=50.0)
                for j in range(self.opts.resources)))
            for i in range(count))
        self._stop = asyncio.Event()
        self._fleet = Fleet(FleetSpec(vens=vens), self.store, seed=1, observer=self._observe)
        self._task = asyncio.create_task(self._fleet.run(self._stop))

    def ready(self) -> int:
        from ven.records import RegState
        return sum(a.reg.state is RegState.READY and a.last_poll is not None
                   for a in self._fleet.agents.values())

    def spread(self, period: float, rng: random.Random) -> None:
        """Nothing to do: each of our VENs polls at a fixed rate from its own random phase."""

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await asyncio.wait_for(self._task, 30)


class OpenleadrDriver:
    """Stock `OpenADRClient`s, counting through their before_send_xml hook."""

    def __init__(self, vtn_url: str, opts: Options) -> None:
        from openleadr import OpenADRClient  # type: ignore[import-untyped]

        self._client_type = OpenADRClient
        self.vtn_url, self.opts = vtn_url, opts
        self.tally = Tally()
        self.clients: list[Any] = []
        self._done: list[Any] = []
        self._task: asyncio.Future[list[None]] | None = None

    def _observe(self, xml: str) -> None:
        self.tally.sent("<oadr:oadrPoll " in xml)

    async def start(self, prefix: str, count: int) -> None:
        self.clients = [self._client_type(ven_name=f"{prefix}-{i:04d}", vtn_url=self.vtn_url)
                        for i in range(count)]
        for c in self.clients:
            c.add_hook("before_send_xml", self._observe)
        self._done = []
        queue = list(reversed(self.clients))

        async def worker() -> None:
            while queue:
                client = queue.pop()
                await client.run()  # registers, syncs events, polls once, starts its scheduler
                self._done.append(client)

        width = self.opts.start_concurrency or count
        self._task = asyncio.ensure_future(asyncio.gather(*(worker() for _ in range(width))))

    def ready(self) -> int:
        return sum(c.registration_id is not None for c in self._done)

    def spread(self, period: float, rng: random.Random) -> None:
        """Move every client's poll job (APScheduler, fixed rate) to a uniformly random phase."""
        now = datetime.now(UTC)
        for c in self._done:
            for job in c.scheduler.get_jobs():
                if job.func == c._poll:
                    job.reschedule("interval", seconds=period,
                                   start_date=now + timedelta(seconds=rng.uniform(0, period)))

    async def stop(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
        await asyncio.gather(*(c.stop() for c in self.clients if c.client_session is not None),
                             return_exceptions=True)


class WarningCounter(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0
        self.first: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1
        if self.first is None:
            exc = record.exc_info[1] if record.exc_info else None
            cause = f" ({type(exc).__name__}: {exc})" if exc is not None else ""
            self.first = f"{record.name}: {record.getMessage()}{cause}"[:400]


async def _until_ready(driver: Driver, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while driver.ready() < count and time.monotonic() < deadline:
        await asyncio.sleep(0.2)


async def child(stack: str, vtn_url: str, opts: Options, workdir: Path) -> dict[str, Any]:
    """Warm up, measure the baseline, run the N VENs, measure the window; the result's fields."""
    counter = WarningCounter()
    logging.getLogger().addHandler(counter)
    driver: Driver = (OursDriver(vtn_url, opts, workdir / "fleet.db") if stack == "ours"
                      else OpenleadrDriver(vtn_url, opts))
    await driver.start(f"{stack}-warmup", 1)
    await _until_ready(driver, 1, 30.0)
    if driver.ready() != 1:
        raise RuntimeError(f"{stack}: the warm-up VEN did not register and poll within 30 s")
    await driver.stop()
    gc.collect()
    await asyncio.sleep(0.5)
    base, _ = rss_kb()
    counter.count, counter.first = 0, None

    t0 = time.monotonic()
    await driver.start(f"{stack}-ven", opts.vens)
    await _until_ready(driver, opts.vens, opts.register_timeout)
    registered, register_s = driver.ready(), time.monotonic() - t0
    if opts.spread:
        driver.spread(opts.poll_seconds, random.Random(1))
    await asyncio.sleep(opts.poll_seconds)  # every VEN polls again: past the registration burst
    profiler = None
    if opts.profile is not None:
        import cProfile
        profiler = cProfile.Profile()
        profiler.enable()
    tally = driver.tally
    tally.recording = True
    polls0, messages0, w0 = tally.polls, tally.messages, time.monotonic()
    cpu0, ticks0 = time.process_time(), os.times()
    await asyncio.sleep(opts.cycles * opts.poll_seconds)
    cpu1, ticks1 = time.process_time(), os.times()
    polls1, messages1, w1 = tally.polls, tally.messages, time.monotonic()
    tally.recording = False
    burst = tally.burst(w0, w1)
    tally.times = array("d")
    if profiler is not None and opts.profile is not None:
        profiler.disable()
        opts.profile.mkdir(parents=True, exist_ok=True)
        profiler.dump_stats(opts.profile / f"{stack}.prof")
    warnings, first_warning = counter.count, counter.first  # not those of stopping
    gc.collect()
    rss, peak = rss_kb()
    await driver.stop()
    cpu_s = cpu1 - cpu0
    polls = polls1 - polls0
    return {"stack": stack, "vens": opts.vens, "registered": registered,
            "register_s": round(register_s, 2), "rss_base_kb": base, "rss_kb": rss,
            "peak_kb": peak, "kb_per_ven": (rss - base) / opts.vens,
            "window_s": round(w1 - w0, 3), "polls": polls, "messages": messages1 - messages0,
            "cpu_s": round(cpu_s, 3), "user_s": round(ticks1.user - ticks0.user, 2),
            "sys_s": round(ticks1.system - ticks0.system, 2),
            "cpu_per_1000_polls": cpu_s / polls * 1000 if polls else 0.0,
            "burst": round(burst, 1), "warnings": warnings, "first_warning": first_warning}


# --- the parent: a VTN per stack, one child each ------------------------------------------

def _child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ADRGATE_", "DATABASE_URL"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def _option_args(opts: Options) -> list[str]:
    args = ["--vens", str(opts.vens), "--cycles", str(opts.cycles),
            "--poll-seconds", str(opts.poll_seconds), "--resources", str(opts.resources),
            "--register-timeout", str(opts.register_timeout),
            "--start-concurrency", str(opts.start_concurrency)] + ["--spread"] * opts.spread
    return args + (["--profile", str(opts.profile.resolve())] if opts.profile is not None else [])


def measure(stack: str, round_: int, opts: Options, workdir: Path) -> StackResult:
    """A fresh VTN and one child running `stack`; the child's result.

    Raises:
        RuntimeError: the child failed or did not finish in time (the message has its log tail).
    """
    from .servers import start_adrgate  # the parent's only: a child stays lean

    workdir.mkdir(parents=True)
    server = start_adrgate(workdir, [], None, poll_freq=opts.poll_seconds)
    log = workdir / f"{stack}.log"
    try:
        with log.open("wb") as err:
            proc = subprocess.run(
                [sys.executable, "-m", "bench.fleet_footprint", "--child", stack,
                 "--vtn-url", server.oadr_url, "--workdir", str(workdir), *_option_args(opts)],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, cwd=REPO,
                env=_child_env(), timeout=opts.child_timeout(), check=False)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{stack}: no result within {opts.child_timeout():g}s:\n"
                           f"{_tail(log)}") from None
    finally:
        server.stop()
    lines = proc.stdout.decode().strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{stack}: child exited with {proc.returncode}:\n{_tail(log)}")
    return StackResult(round=round_, load=os.getloadavg()[0], **json.loads(lines[-1]))


def _tail(log: Path, lines: int = 30) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def run(opts: Options) -> list[StackResult]:
    """Every (round, stack) run, one at a time; rounds alternate which stack goes first."""
    results = []
    with tempfile.TemporaryDirectory(prefix="adrgate-fleet-", dir=opts.workdir) as tmp:
        for round_ in range(opts.rounds):
            for stack in opts.stacks if round_ % 2 == 0 else opts.stacks[::-1]:
                result = measure(stack, round_, opts, Path(tmp) / f"round{round_}" / stack)
                print(_row(result), file=sys.stderr, flush=True)
                results.append(result)
    return results


# --- report -------------------------------------------------------------------------------

def ratios(results: Sequence[StackResult]) -> dict[str, float]:
    """Median over rounds of ours/openleadr: memory per VEN and CPU per 1,000 polls."""
    memory, cpu = [], []
    for round_ in sorted({r.round for r in results}):
        by = {r.stack: r for r in results if r.round == round_}
        if "ours" in by and "openleadr" in by:
            if by["openleadr"].kb_per_ven > 0:
                memory.append(by["ours"].kb_per_ven / by["openleadr"].kb_per_ven)
            if by["openleadr"].cpu_per_1000_polls > 0:
                cpu.append(by["ours"].cpu_per_1000_polls / by["openleadr"].cpu_per_1000_polls)
    out = {}
    if memory:
        out["memory"] = statistics.median(memory)
    if cpu:
        out["cpu"] = statistics.median(cpu)
    return out


def _row(r: StackResult) -> str:
    return (f"| {r.round} | {r.stack} | {r.registered}/{r.vens} | {r.register_s:.1f} s | "
            f"{r.rss_base_kb / 1024:.1f} | {r.rss_kb / 1024:.1f} | {r.peak_kb / 1024:.1f} | "
            f"**{r.kb_per_ven:.1f}** | {r.polls} | {r.messages} | {r.window_s:.1f} | "
            f"{r.cpu_s:.2f} | {r.user_s:.2f} / {r.sys_s:.2f} | **{r.cpu_per_1000_polls:.3f}** | "
            f"{r.burst:.1f} | {r.warnings} | {r.load:.1f} |")


def report(results: Sequence[StackResult]) -> str:
    lines = [("| round | stack | registered | register | base MiB | RSS MiB | peak MiB | KiB/VEN "
              "| polls | messages | window s | CPU s | user / sys s | CPU s / 1k polls | burst "
              "| warnings | load |"),
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += [_row(r) for r in results]
    warned = [f"- round {r.round}, {r.stack}: {r.warnings} warnings, the first: {r.first_warning}"
              for r in results if r.warnings]
    lines += [""] + warned if warned else []
    ours = [r.kb_per_ven for r in results if r.stack == "ours"]
    r = ratios(results)
    lines += ["", "| metric | ours | ours / openleadr (median over rounds) | target | met |",
              "|---|---|---|---|---|"]
    if ours:
        kb = statistics.median(ours)
        met = "yes" if kb <= TARGET_KB_PER_VEN else "no"
        lines.append(f"| memory per VEN | {kb:.1f} KiB | {r.get('memory', 0):.2f}x | "
                     f"<= {TARGET_KB_PER_VEN:g} KiB | {met} |")
    if "cpu" in r:
        cpu = statistics.median(x.cpu_per_1000_polls for x in results if x.stack == "ours")
        met = "yes" if r["cpu"] <= TARGET_CPU_RATIO else "no"
        lines.append(f"| CPU per 1,000 polls | {cpu:.3f} s | {r['cpu']:.2f}x | "
                     f"<= {TARGET_CPU_RATIO:g}x | {met} |")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> Options:
    return _parse(argv)[0]


def _parse(argv: Sequence[str] | None) -> tuple[Options, argparse.Namespace]:
    p = argparse.ArgumentParser(prog="python -m bench.fleet_footprint", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vens", type=int, help="VENs per stack (default 1000; quick 5)")
    p.add_argument("--cycles", type=int, help="poll periods in the timed window (default 3)")
    p.add_argument("--poll-seconds", type=int, help="poll period, whole seconds (default 10)")
    p.add_argument("--rounds", type=int, help="repeat both stacks (default 1)")
    p.add_argument("--stacks", help="comma-separated: ours,openleadr (default both)")
    p.add_argument("--resources", type=int, help="battery groups per VEN of ours (default 0)")
    p.add_argument("--register-timeout", type=float, help="seconds for all to register and poll")
    p.add_argument("--start-concurrency", type=int,
                   help="openleadr clients registering at once (default 50; 0: all)")
    p.add_argument("--spread", action="store_true",
                   help="once registered, give every VEN a uniformly random poll phase")
    p.add_argument("--quick", action="store_true", help="5 VENs, one 1 s cycle: a smoke run")
    p.add_argument("--workdir", type=Path, help="where temporary files go")
    p.add_argument("--json", type=Path, help="also write the results as JSON here")
    p.add_argument("--profile", type=Path, help="write each child's window cProfile here")
    p.add_argument("--child", choices=STACKS, help=argparse.SUPPRESS)
    p.add_argument("--vtn-url", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    given = {k: v for k, v in (
        ("vens", a.vens), ("cycles", a.cycles), ("poll_seconds", a.poll_seconds),
        ("rounds", a.rounds), ("resources", a.resources), ("register_timeout", a.register_timeout),
        ("start_concurrency", a.start_concurrency), ("workdir", a.workdir), ("json_out", a.json),
        ("profile", a.profile)) if v is not None}
    if a.spread:
        given["spread"] = True
    if a.stacks:
        given["stacks"] = tuple(a.stacks.split(","))
    opts = Options.quick(**given) if a.quick else dataclasses.replace(Options(), **given)
    if opts.poll_seconds < 1 or opts.vens < 1 or opts.cycles < 1:
        p.error("--vens, --cycles and --poll-seconds must be >= 1")
    if not opts.stacks or not set(opts.stacks) <= set(STACKS):
        p.error(f"--stacks: a comma-separated choice of {', '.join(STACKS)}")
    return opts, a


def main(argv: Sequence[str] | None = None) -> int:
    opts, a = _parse(argv)
    if a.child is not None:
        assert opts.workdir is not None and a.vtn_url is not None
        print(json.dumps(asyncio.run(child(a.child, a.vtn_url, opts, opts.workdir))), flush=True)
        return 0
    results = run(opts)
    publish(report(results), opts.json_out, opts, ratios(results), results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
