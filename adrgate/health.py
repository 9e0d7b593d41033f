"""`adrgate health`: the health checks of the compose deployment (compose.yaml).

A check exits 0 when healthy and 1 with the reason on stderr otherwise, as a container
health check expects. `--url` asks HTTP endpoints (the VTN's `/api/health` touches its
database); `--fleet` reads the fleet's database: every VEN must be registered and have
polled recently, so a fleet whose process died, or whose VTN is gone, turns unhealthy.
"""

from __future__ import annotations

import argparse
import os
import sys
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ven.records import RegState

from .settings import Settings

if TYPE_CHECKING:  # the fleet's store is imported only by a fleet check: `--url` stays quick
    from ven.store import VenStatusRow

_POLLING = frozenset({RegState.REGISTERED, RegState.READY})


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "health", help="health check for containers: VTN endpoints, fleet polls",
        description="Exit 0 when every check passes, else 1 with the reasons on stderr.")
    p.add_argument("--url", action="append", default=[], metavar="URL",
                   help="must answer GET with 2xx, e.g. http://127.0.0.1:8080/api/health "
                        "(repeatable)")
    p.add_argument("--fleet", type=Path, metavar="FILE",
                   help="every VEN of this fleet file must be registered and have polled "
                        "within --within seconds (read from the fleet's database)")
    p.add_argument("--data-dir", type=Path, help="data directory (ADRGATE_DATA_DIR)")
    p.add_argument("--within", type=float, default=60.0, metavar="SECONDS",
                   help="how recent a fleet VEN's last poll must be (default 60)")
    p.add_argument("--timeout", type=float, default=3.0, metavar="SECONDS",
                   help="time limit of each HTTP request (default 3)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if not args.url and args.fleet is None:
        print("adrgate health: give --url URL and/or --fleet FILE", file=sys.stderr)
        return 2
    problems = [p for url in args.url if (p := url_problem(url, args.timeout))]
    if args.fleet is not None:
        problems += fleet_problems(args.fleet, args.data_dir, timedelta(seconds=args.within))
    for problem in problems:
        print(f"unhealthy: {problem}", file=sys.stderr)
    return 1 if problems else 0


def url_problem(url: str, timeout: float) -> str | None:
    """Why GET `url` is not healthy, or None."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            status = int(response.status)
    except urllib.error.HTTPError as exc:
        status = exc.code
    except urllib.error.URLError as exc:  # refused, unknown host
        return f"{url}: {exc.reason}"
    except (OSError, ValueError) as exc:  # timed out mid-answer; not a URL at all
        return f"{url}: {exc}"
    return None if 200 <= status < 300 else f"{url}: HTTP {status}"


def fleet_problems(path: Path, data_dir: Path | None, within: timedelta) -> list[str]:
    """Each VEN of the fleet file that is not registered or has not polled within `within`."""
    from sqlalchemy.exc import SQLAlchemyError

    from ven.fleet import load_fleet

    from . import venfleet

    try:
        settings = Settings.from_env(os.environ,
                                     **({"data_dir": data_dir} if data_dir else {}))
        spec = load_fleet(path)
        store = venfleet.open_store(spec, settings)
    except (ValueError, OSError) as exc:  # the fleet file, the settings
        return [f"{path}: {exc}"]
    try:
        rows = {row.name: row for row in store.status()}
    except SQLAlchemyError as exc:  # the database is down or not yet created: unhealthy
        return [f"{path}: fleet database: {type(exc).__name__}: {exc}"]
    finally:
        store.close()
    now = datetime.now(UTC)
    return [p for ven in spec.vens if (p := ven_problem(ven.name, rows.get(ven.name), now, within))]


def ven_problem(name: str, row: VenStatusRow | None, now: datetime,
                within: timedelta) -> str | None:
    """Why one fleet VEN is not healthy, or None (pure)."""
    if row is None or row.state not in _POLLING:
        return f"VEN {name}: {row.state if row else RegState.UNREGISTERED}"
    if row.last_poll is None:
        return f"VEN {name}: registered, never polled"
    age = now - row.last_poll
    if age > within:
        error = f" (last error: {row.last_error})" if row.last_error else ""
        return f"VEN {name}: last poll {age.total_seconds():.0f}s ago{error}"
    return None
