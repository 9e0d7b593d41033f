"""Wiring for `adrgate ven --fleet FILE` and `adrgate ven status|signals --fleet FILE`."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
from datetime import datetime, timezone
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bridge.store import BridgeStore
from bridge.trace import trace
from ven.fleet import FleetSpec, load_fleet
from ven.records import GridSignal
from ven.runner import Fleet
from ven.signals import signals_of
from ven.store import FleetStore

from .services import EmbeddedRedis, make_engine
from .settings import Settings

if TYPE_CHECKING:
    from .bridgeproc import BridgeOptions

log = logging.getLogger("adrgate.ven")


def database_url(fleet: FleetSpec, settings: Settings) -> str:
    """The fleet file's `database_url`, else a SQLite file in the data directory."""
    return fleet.database_url or f"sqlite:///{Path(settings.data_dir).resolve() / 'fleet.db'}"


def open_store(fleet: FleetSpec, settings: Settings) -> FleetStore:
    return FleetStore(make_engine(database_url(fleet, settings)))


def run(path: Path, settings: Settings, *, bridge: BridgeOptions | None = None) -> None:
    """Run every VEN of the fleet file until SIGINT/SIGTERM; with `bridge`, also the bridge,
    its channel workers and the simulated devices (adrgate/bridgeproc.py)."""
    fleet = load_fleet(path)
    url = database_url(fleet, settings)
    log.info("fleet %s: %d VENs, database %s", path, len(fleet.vens), url.split("@")[-1])
    if bridge is None:
        store = open_store(fleet, settings)
        try:
            asyncio.run(_until_stopped(Fleet(fleet, store, on_signals=_log_signals).run))
        finally:
            store.close()
        return
    redis_url, embedded = settings.redis_url, None
    if redis_url is None:  # its own server: the VTN's embedded one may stop before the fleet
        embedded = EmbeddedRedis(Path(settings.data_dir) / "bridge").start()
        redis_url = embedded.url
    from .bridgeproc import AggregatorSide  # its channels' libraries: only when asked for

    engine = make_engine(url)
    try:
        side = AggregatorSide(fleet, engine, redis_url, options=bridge)
        asyncio.run(_until_stopped(side.run))
    finally:
        engine.dispose()
        if embedded is not None:
            embedded.stop()


async def _until_stopped(run: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await run(stop)


def _log_signals(ven: str, signals: tuple[GridSignal, ...]) -> None:
    # Until the bridge consumes them, grid signals are stored (as their events) and logged.
    for s in signals:
        log.info("grid signal %s/%s mod=%d priority=%d resources=%s purpose=%s",
                 s.signal_name, s.signal_type, s.modification_number, s.priority,
                 ",".join(s.resources), s.purpose, extra={"ven": ven, "event_id": s.event_id})


def trace_event(event_id: str, path: Path, settings: Settings) -> dict[str, Any]:
    """The path of one event through the fleet and the bridge, from the fleet's database."""
    fleet = load_fleet(path)
    engine = make_engine(database_url(fleet, settings))
    try:
        return trace(event_id, FleetStore(engine), BridgeStore(engine)).as_json()
    finally:
        engine.dispose()


def status(path: Path, settings: Settings) -> list[dict[str, Any]]:
    """Each VEN's registration, last poll, events, opts and report requests, from the store."""
    fleet = load_fleet(path)
    store = open_store(fleet, settings)
    try:
        return [_plain(dataclasses.asdict(row)) for row in store.status()]
    finally:
        store.close()


def signals(path: Path, settings: Settings) -> list[dict[str, Any]]:
    """The grid signals each VEN holds for the bridge, derived from its stored events."""
    fleet = load_fleet(path)
    store = open_store(fleet, settings)
    now = datetime.now(timezone.utc)
    out: list[dict[str, Any]] = []
    try:
        snapshots = store.load_all()
        for spec in fleet.vens:
            snap = snapshots.get(spec.name)
            events = snap.events.values() if snap is not None else ()
            out += [{"ven": spec.name, **_plain(dataclasses.asdict(s))}
                    for s in signals_of(events, spec, now)]
    finally:
        store.close()
    return out


def _plain(value: Any) -> Any:
    """JSON-ready: datetimes and durations as ISO 8601 / seconds."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if hasattr(value, "total_seconds"):
        return value.total_seconds()
    return value
