"""`adrgate demo`: the whole chain in one command, on embedded defaults (SQLite files and the
bundled redis-server in a demo data directory wiped at every start)."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import shutil
import signal
import socket
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

MARKER: Final = ".adrgate-demo"  # only a directory holding it (or empty) is wiped
MIN_DEVICES: Final = 20  # the CMB judges same-minute switching for fleets of 20 or more

DESCRIPTION: Final = """\
Plays a scripted day of PAS 1879 grid signals, end to end, in accelerated time.

Started in this process, on 127.0.0.1 only:
  - the VTN (OpenADR 2.0b, the operator API and the dashboard) with the Central Monitoring Body,
    on http://127.0.0.1:PORT/
  - three aggregators, each a VEN, a bridge submitting every plan to the CMB signed with the
    aggregator's key, Redis Streams channel workers and simulated devices:
      battery-pv  home batteries through a battery hub API, PV diverters through SAPC
      ev-cpo      EV charge points through OCPP 1.6J
      hot-water   immersion heaters through SAPC (a DCC simulator in front of the SAPCs)
    half of every fleet in network area "north", half in "south".

The day (demo time):
  23:50  (the day before) day-ahead ELECTRICITY_PRICE event, 48 half-hourly prices for the
         day, to all three VENs
  14:00  DSO constraint: LOAD_CONTROL at 50 % capacity on area north, 17:00-19:00
  18:00  grid-service window: LOAD_DISPATCH shedding 30 % of the home batteries' rating,
         19:00-20:00; at 19:15 a quarter of the batteries fail and the bridge re-dispatches
         their share; repaired at 20:00
  20:30  the hot-water aggregator is compromised: it plans its whole fleet to switch in one
         minute; the CMB's same-minute monitor raises an alert and caps every heater at 0 %
         through the DCC (SRV 7.16 as the Load Controller, a path the aggregator does not hold)
  23:00  the CMB operator lifts the override; the aggregator's plans are in force again

Accelerated time: one demo hour takes --hour-seconds real seconds (default 4: the day in about
a minute and a half). Event times, plans, device physics and the CMB's windows run on the demo
clock; network round trips and polls are real (a one-second poll is 15 demo minutes at the
default). The DCC simulator's realistic latency (a critical SAPC command about 22 s) is scaled
to the demo clock.

Progress is one line per step; the summary table (per event: VENs, opt-ins, devices, commands
acknowledged and sent per channel, requested vs delivered power, CMB verdicts) is read back
from the databases in --data-dir, which is wiped at start. docs/demo.md explains how to read
it."""


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "demo", help="play a scripted day: VTN + CMB, three aggregators, simulated devices",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, default=8080,
                   help="the VTN's (and dashboard's) port on 127.0.0.1 (default 8080)")
    p.add_argument("--devices", type=int, default=MIN_DEVICES, metavar="N",
                   help=f"devices per aggregator (the EV operator gets N/2); at least "
                        f"{MIN_DEVICES}, default {MIN_DEVICES}")
    p.add_argument("--hour-seconds", type=float, default=4.0, metavar="SECONDS",
                   help="real seconds per demo hour (default 4)")
    p.add_argument("--fast", action="store_const", const=1.5, dest="hour_seconds",
                   help="1.5 real seconds per demo hour (for tests)")
    p.add_argument("--data-dir", type=Path, default=Path("data/demo"),
                   help="demo data directory, wiped at start (default data/demo)")
    p.add_argument("--serve", action="store_true",
                   help="after the day, keep the VTN and the dashboard up until Ctrl-C")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from .demo_stack import DemoError

    try:
        _check(args)
        _port_free(args.port)
        _wipe(args.data_dir)
        _log_to(args.data_dir / "demo.log")
        return asyncio.run(_main(args, lambda line: print(line, flush=True)))
    except DemoError as exc:
        print(f"adrgate demo: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("adrgate demo: interrupted", file=sys.stderr)
        return 130


def _check(args: argparse.Namespace) -> None:
    from .demo_stack import DemoError

    if args.devices < MIN_DEVICES:
        raise DemoError(f"--devices {args.devices}: at least {MIN_DEVICES} (the CMB judges "
                        f"same-minute switching only in fleets of {MIN_DEVICES} or more)")
    if not 0.2 <= args.hour_seconds <= 3600:
        raise DemoError(f"--hour-seconds {args.hour_seconds:g}: between 0.2 and 3600")
    if not 0 < args.port < 65536:
        raise DemoError(f"--port {args.port}: not a TCP port")


def _port_free(port: int) -> None:
    from .demo_stack import DemoError

    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            raise DemoError(f"port {port} on 127.0.0.1 is taken ({exc.strerror or exc}); is "
                            f"another adrgate running? Choose another with --port") from None


def _wipe(data_dir: Path) -> None:
    """Empty the demo directory, refusing one that holds anything but an earlier demo's data."""
    from .demo_stack import DemoError

    if data_dir.exists():
        if not data_dir.is_dir() or (any(data_dir.iterdir())
                                     and not (data_dir / MARKER).exists()):
            raise DemoError(f"{data_dir} exists and is not a demo data directory; "
                            f"give another --data-dir")
        shutil.rmtree(data_dir)
    data_dir.mkdir(parents=True)
    (data_dir / MARKER).write_text("adrgate demo data: wiped by every `adrgate demo`\n")


def _log_to(path: Path) -> None:
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    for chatty in ("ocpp", "websockets", "apscheduler"):  # a line per message
        logging.getLogger(chatty).setLevel(logging.WARNING)


async def _main(args: argparse.Namespace, say: Callable[[str], None]) -> int:
    from bridge.store import BridgeStore

    from .demo_script import Day
    from .demo_stack import DCC_COMMAND_S, DemoClock, running_stack
    from .demo_summary import summarize, table

    day = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    clock = DemoClock(day - timedelta(minutes=10))  # setup runs at wall-clock speed
    speed = 3600 / args.hour_seconds
    say(f"adrgate demo: one demo hour = {args.hour_seconds:g} s real (x{speed:g}); a SAPC "
        f"command through the DCC takes its realistic {DCC_COMMAND_S:g} s of demo time "
        f"({DCC_COMMAND_S / speed * 1000:.0f} ms real); polls are real seconds "
        f"({speed / 60:g} demo minutes each)")
    say(f"data in {args.data_dir}, log in {args.data_dir / 'demo.log'}")
    async with running_stack(args.data_dir, port=args.port, devices=args.devices, clock=clock,
                             speed=speed, day=day) as stack:
        say(f"setup  VTN + CMB on {stack.url}/")
        for a in stack.aggregators:
            say(f"setup  {a.name}: VEN {a.ven_id[:8]}, {len(a.devices)} {a.plan.title}")
        clock.set_speed(speed)
        script = Day(stack, day, say)
        log = await script.play()
        summary = summarize(stack.vtn, {a.name: BridgeStore(a.engine)
                                        for a in stack.aggregators},
                            log.events, log.attack_plans, as_of=clock())
        script_log = {"events": log.events, "failed": log.failed,
                      "failed_at": log.failed_at, "attack_plans": log.attack_plans,
                      "override_id": log.override_id}
        (args.data_dir / "summary.json").write_text(json.dumps(
            {**summary.as_json(), "script": script_log}, indent=2, default=str))
        say("")
        say(table(summary))
        if args.serve:
            clock.set_speed(1.0)
            say(f"\nserving {stack.url}/ (demo time now runs at wall-clock speed); "
                f"Ctrl-C to stop")
            await _until_interrupted()
    return 0


async def _until_interrupted() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
