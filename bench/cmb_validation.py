"""The CMB's costs: inline plan validation at a submitted rate, and the fleet monitors over a day.

    python -m bench.cmb_validation [--rate 10000] [--batch 100] [--seconds 10] [--devices 100000]
                                   [--quick] [--json FILE]

Inline: plans (48 half-hourly steps, a third of them with an override on the device, one in ten
a replay) arrive in batches of `--batch` at `--rate` plans/s for `--seconds`; each batch builds
its `PlanContext`, each plan gets `policies.cmb_rules.verdict`. Per plan: the time of its own
check (the issue's target: p99 at most 5 ms per plan while 10,000 plans/s are sustained), and the
latency from its batch's due time to its verdict (it includes the plans judged before it in the
batch, and any falling behind the rate).

Monitors: `--devices` devices (two aggregators, 40 network areas) with two planned changes each in
one day (start charging at a half-hour tariff boundary, stop 1-4 h later, each with a random delay
up to 10 min), observed in batches of 1,000 changes as plans would be accepted, then `tick` every
simulated minute of the day. Timed without tracing; memory (tracemalloc, net of the changes given
in): what the monitors hold after the day and the peak while observing.

Through the service: daily price plans of 2,000 batteries (hold, charge in a cheap half hour,
discharge at the evening peak; a routine random delay) submitted to `vtn.cmb.service.Cmb.submit`
in batches of `--batch`, as fast as it takes them for `--service-seconds`, over a SQLite file,
each device again with a higher sequence once the pool is through (a re-plan): the rules, the
fleet monitors, and what the CMB writes for each plan (its verdict, its sequence, an audit entry)
in one transaction per batch. Plans/s and the time per batch.

Baseline in the same process: a reference loop (a dict of a million int keys, built and summed),
so times read as "x reference loops" as well as seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import random
import statistics
import tempfile
import time
import tracemalloc
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from adrgate.services import make_engine
from bench.bridge_plans import reference_seconds
from bench.results import publish
from bridge.models import Channel, Device, Mode, Plan, PlanStep
from policies.cmb_monitors import FleetMonitors, MonitorConfig
from policies.cmb_rules import PlanContext, verdict
from ven.fleet import DeviceClass
from ven.records import Purpose
from vtn.cmb.service import Cmb
from vtn.cmb.store import CmbStore
from vtn.cmb.records import (Decision, DeviceRegistration, Override, OverrideTarget,
                             PlanSubmission, StateChange, Tariff)

T0 = datetime(2026, 11, 27, tzinfo=UTC)
TARGET_P99_MS = 5.0
_POOL = 2000  # distinct submissions cycled through
_AGGREGATORS = ("agg-a", "agg-b")


@dataclass(frozen=True, slots=True)
class InlineRun:
    plans: int
    batch: int
    target_rate: float
    rate: float
    rejected: int
    service_p50_ms: float
    service_p99_ms: float
    latency_p50_ms: float
    latency_p99_ms: float
    reference_seconds: float


@dataclass(frozen=True, slots=True)
class MonitorRun:
    devices: int
    changes: int
    ticks: int
    alerts: int
    observe_s: float
    tick_s: float
    reference_seconds: float
    bytes_per_device: float
    peak_bytes_per_device: float

    @property
    def in_references(self) -> float:
        return (self.observe_s + self.tick_s) / self.reference_seconds


def registration(i: int) -> DeviceRegistration:
    return DeviceRegistration(device_id=f"d{i}", owner=_AGGREGATORS[i % 2],
                              device_class=DeviceClass.BATTERY, network_area=f"area-{i % 40}",
                              channel=Channel.BATTERY_HUB, reach=f"hub/d{i}", rated_import_kw=5.0,
                              rated_export_kw=5.0, max_ramp_kw_per_min=5.0)


def submission(i: int, rng: random.Random) -> PlanSubmission:
    reg = registration(i)
    steps = []
    for k in range(48):
        mode = rng.choice((Mode.CHARGE, Mode.DISCHARGE, Mode.HOLD, Mode.LIMIT))
        steps.append(PlanStep(mode=mode, start=T0 + timedelta(minutes=30 * k),
                              end=T0 + timedelta(minutes=30 * (k + 1)),
                              power_kw=rng.uniform(0, 1.5) if mode in (Mode.CHARGE,
                                                                       Mode.DISCHARGE) else None,
                              level=30 if mode is Mode.LIMIT else None))
    plan = Plan(plan_id=f"p{i}", device_id=reg.device_id, sequence=1 if i % 10 == 0 else 2,
                issuer=reg.owner,
                purpose=Purpose.ROUTINE, priority=0, steps=tuple(steps),
                random_delay=timedelta(seconds=rng.randint(1, 600)))
    device = Device(device_id=reg.device_id, resource_id="fleet", device_class=reg.device_class,
                    channel=reg.channel, network_area=reg.network_area, rated_import_kw=5.0,
                    rated_export_kw=5.0, capacity_kwh=10.0, max_ramp_kw_per_min=5.0)
    return PlanSubmission(aggregator=reg.owner, plan=plan, device=device, program="agile",
                          received=T0 - timedelta(hours=1))


def inline(rate: float, batch: int, seconds: float, seed: int) -> InlineRun:
    rng = random.Random(seed)
    registry = {f"d{i}": registration(i) for i in range(_POOL)}
    subs = [submission(i, rng) for i in range(_POOL)]
    overrides = [Override(override_id="ov", target=OverrideTarget(), level=40, start=T0,
                          devices=tuple(f"d{i}" for i in range(0, _POOL, 3)))]
    last_sequence = dict.fromkeys(registry, 1)
    gc.collect()
    reference = reference_seconds()
    service: list[float] = []
    latency: list[float] = []
    rejected = 0
    interval = batch / rate
    batches = max(1, int(seconds / interval))
    start = time.perf_counter()
    for b in range(batches):
        due = start + b * interval
        while (now := time.perf_counter()) < due:
            time.sleep(min(due - now, 0.001))
        ctx = PlanContext(registry=registry, last_sequence=last_sequence, overrides=overrides,
                          response_programs=frozenset({"dfs"}))
        for k in range(batch):
            before = time.perf_counter()
            v = verdict(subs[(b * batch + k) % _POOL], ctx, T0)
            done = time.perf_counter()
            service.append(done - before)
            latency.append(done - due)
            rejected += v.decision is Decision.REJECTED
    elapsed = time.perf_counter() - start

    def pct(values: list[float], q: int) -> float:
        return statistics.quantiles(values, n=100)[q - 1] * 1000

    return InlineRun(plans=len(service), batch=batch, target_rate=rate,
                     rate=len(service) / elapsed, rejected=rejected,
                     service_p50_ms=pct(service, 50), service_p99_ms=pct(service, 99),
                     latency_p50_ms=pct(latency, 50), latency_p99_ms=pct(latency, 99),
                     reference_seconds=reference)


def day_of_changes(n: int, rng: random.Random) -> list[StateChange]:
    changes = []
    for i in range(n):
        reg = registration(i)
        on = T0 + timedelta(minutes=30 * rng.randrange(40))
        off = on + timedelta(minutes=30 * rng.randint(2, 8))
        for at, before, after in ((on, 0.0, 3.0), (off, 3.0, 0.0)):
            changes.append(StateChange(
                device_id=reg.device_id, aggregator=reg.owner, network_area=reg.network_area,
                at=at, spread=timedelta(seconds=rng.randint(1, 600)), from_kw=before,
                to_kw=after, plan_id=f"p{i}", program="agile"))
    return changes


def run_day(n: int, changes: Sequence[StateChange]) -> tuple[int, float, float]:
    """Observe the day's changes and tick through it: alerts, observe and tick seconds."""
    tariff = Tariff(tariff_id="agile", boundaries=tuple(T0 + timedelta(minutes=30 * k)
                                                        for k in range(48)))
    monitors = FleetMonitors(MonitorConfig(), {f"d{i}": registration(i) for i in range(n)},
                             tariffs=(tariff,))
    start = time.perf_counter()
    alerts = 0
    for k in range(0, len(changes), 1000):
        alerts += len(monitors.observe(changes[k:k + 1000], now=T0))
    observed = time.perf_counter()
    for minute in range(24 * 60):
        alerts += len(monitors.tick(T0 + timedelta(minutes=minute)))
    return alerts, observed - start, time.perf_counter() - observed


def monitor_cost(n: int, seed: int) -> MonitorRun:
    changes = day_of_changes(n, random.Random(seed))
    gc.collect()
    reference = reference_seconds()
    alerts, observe_s, tick_s = run_day(n, changes)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    tariff = Tariff(tariff_id="agile", boundaries=tuple(T0 + timedelta(minutes=30 * k)
                                                        for k in range(48)))
    kept = FleetMonitors(MonitorConfig(), {f"d{i}": registration(i) for i in range(n)},
                         tariffs=(tariff,))
    for k in range(0, len(changes), 1000):
        kept.observe(changes[k:k + 1000], now=T0)
    for minute in range(24 * 60):
        kept.tick(T0 + timedelta(minutes=minute))
    gc.collect()
    held, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return MonitorRun(devices=n, changes=len(changes), ticks=24 * 60, alerts=alerts,
                      observe_s=observe_s, tick_s=tick_s, reference_seconds=reference,
                      bytes_per_device=(held - before) / n,
                      peak_bytes_per_device=(peak - before) / n)


@dataclass(frozen=True, slots=True)
class ServiceRun:
    plans: int
    batch: int
    rate: float
    batch_p50_ms: float
    batch_p99_ms: float


def daily_plan(i: int, rng: random.Random) -> PlanSubmission:
    """A battery's price plan: hold, charge in a cheap half hour, discharge at the evening
    peak, hold; a routine random delay."""
    reg = registration(i)
    cheap = T0 + timedelta(minutes=30 * rng.randint(2, 10))
    peak = T0 + timedelta(hours=17, minutes=30 * rng.randint(0, 3))
    steps = (PlanStep(mode=Mode.HOLD, start=T0, end=cheap),
             PlanStep(mode=Mode.CHARGE, start=cheap, end=cheap + timedelta(hours=2), power_kw=2.5),
             PlanStep(mode=Mode.HOLD, start=cheap + timedelta(hours=2), end=peak),
             PlanStep(mode=Mode.DISCHARGE, start=peak, end=peak + timedelta(hours=2),
                      power_kw=2.5),
             PlanStep(mode=Mode.HOLD, start=peak + timedelta(hours=2), end=T0 + timedelta(days=1)))
    sub = submission(i, rng)
    return replace(sub, plan=replace(sub.plan, steps=steps, sequence=2))


def through_service(batch: int, seconds: float, seed: int) -> ServiceRun:
    """`Cmb.submit` over a SQLite file, batch after batch, for `seconds`: each device's daily
    price plan, submitted again with a higher sequence (a re-plan) once the pool is through."""
    rng = random.Random(seed)
    subs = [daily_plan(i, rng) for i in range(_POOL)]
    with tempfile.TemporaryDirectory() as tmp:
        store = CmbStore(make_engine(f"sqlite:///{tmp}/cmb.db"))
        store.create_schema()
        cmb = Cmb(store)
        cmb.put_devices([registration(i) for i in range(_POOL)], "bench", T0)
        times: list[float] = []

        async def submit_all() -> None:
            start = time.perf_counter()
            b = 0
            while time.perf_counter() - start < seconds:
                chunk = [replace(s, plan=replace(s.plan, sequence=s.plan.sequence + 2 * b))
                         for s in subs[(b * batch) % _POOL:(b * batch) % _POOL + batch]]
                before = time.perf_counter()
                await cmb.submit(chunk, T0)
                times.append(time.perf_counter() - before)
                b += 1

        asyncio.run(submit_all())
        store.engine.dispose()
    plans = len(times) * batch
    return ServiceRun(plans=plans, batch=batch, rate=plans / sum(times),
                      batch_p50_ms=statistics.median(times) * 1000,
                      batch_p99_ms=statistics.quantiles(times, n=100)[98] * 1000
                      if len(times) > 1 else times[0] * 1000)


@dataclass(frozen=True, slots=True)
class Results:
    inline: InlineRun
    monitors: MonitorRun
    service: ServiceRun


def report(r: Results) -> str:
    i, m = r.inline, r.monitors
    met = i.service_p99_ms <= TARGET_P99_MS and i.rate >= 0.95 * i.target_rate
    return "\n".join([
        ("| plans | batch | target plans/s | achieved plans/s | per plan p50 / p99 ms | "
         "batch due to verdict p50 / p99 ms | x reference loop per plan | target |"),
        "|---|---|---|---|---|---|---|---|",
        (f"| {i.plans:,} | {i.batch} | {i.target_rate:,.0f} | {i.rate:,.0f} | "
         f"{i.service_p50_ms:.3f} / {i.service_p99_ms:.3f} | "
         f"{i.latency_p50_ms:.3f} / {i.latency_p99_ms:.3f} | "
         f"{i.service_p50_ms / 1000 / i.reference_seconds:.2e} | "
         f"{'met' if met else 'NOT met'} (per plan p99 <= {TARGET_P99_MS:g} ms at the rate) |"),
        "",
        ("| devices | changes | observe s | tick s (1440 ticks) | x reference loop | alerts | "
         "KB/device held | KB/device peak |"),
        "|---|---|---|---|---|---|---|---|",
        (f"| {m.devices:,} | {m.changes:,} | {m.observe_s:.2f} | {m.tick_s:.2f} | "
         f"{m.in_references:.1f} | {m.alerts} | {m.bytes_per_device / 1024:.2f} | "
         f"{m.peak_bytes_per_device / 1024:.2f} |"),
        "",
        "| through the service (SQLite) | plans | batch | plans/s | batch p50 / p99 ms |",
        "|---|---|---|---|---|",
        (f"| Cmb.submit | {r.service.plans:,} | {r.service.batch} | {r.service.rate:,.0f} | "
         f"{r.service.batch_p50_ms:.1f} / {r.service.batch_p99_ms:.1f} |")])


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rate", type=float, default=10_000)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--devices", type=int, default=100_000)
    p.add_argument("--service-seconds", type=float, default=5.0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="a second of plans, 2,000 devices")
    p.add_argument("--json", type=Path, help="also write the results here")
    opts = p.parse_args(argv)
    if opts.quick:
        opts.seconds, opts.devices = min(opts.seconds, 1.0), min(opts.devices, 2000)
        opts.service_seconds = min(opts.service_seconds, 0.5)
    return opts


def run(opts: argparse.Namespace) -> Results:
    return Results(inline=inline(opts.rate, opts.batch, opts.seconds, opts.seed),
                   monitors=monitor_cost(opts.devices, opts.seed),
                   service=through_service(opts.batch, opts.service_seconds, opts.seed))


def main(argv: Sequence[str] | None = None) -> None:
    opts = parse_args(argv)
    r = run(opts)
    publish(report(r), opts.json, opts,
            {"service_p50_per_reference": r.inline.service_p50_ms / 1000
             / r.inline.reference_seconds,
             "monitor_day_per_reference": r.monitors.in_references},
            [r.inline, r.monitors, r.service])


if __name__ == "__main__":
    main()
