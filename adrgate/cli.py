"""`adrgate`: run the VTN, and drive it through its operator API.

Every operator command is a thin client of the JSON API, so the CLI can do nothing the API
cannot, and it works against any VTN it can reach.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from campaign import cli as campaign_cli

from . import aggparts, demo, health
from .logs import configure as configure_logging
from .settings import Settings

DEFAULT_API = "http://127.0.0.1:8080"
_COMMANDS = (campaign_cli, aggparts, demo, health)


class ApiError(RuntimeError):
    pass


def _settings_epilog() -> str:
    rows = Settings.describe()
    width = max(len(env) for _, env, _, _ in rows)
    lines = ["configuration (environment variables):"]
    lines += [f"  {env:<{width}}  {meaning} [default: {default or 'unset'}]"
              for _, env, default, meaning in rows]
    return "\n".join(lines)


def call(api: str, method: str, path: str, body: Any = None, token: str | None = None) -> Any:
    """One JSON request to the operator API.

    Raises:
        ApiError: the VTN answered with an error, or could not be reached.
    """
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(api.rstrip("/") + path, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        try:
            detail = json.loads(exc.read())
        except ValueError:
            detail = {"detail": exc.reason}
        raise ApiError(f"{exc.code}: {detail.get('field', '')} {detail.get('detail', '')}".strip())
    except urllib.error.URLError as exc:
        raise ApiError(f"cannot reach the VTN at {api}: {exc.reason}") from None


def _json_arg(args: argparse.Namespace) -> Any:
    if args.file:
        text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text()
    elif args.json:
        text = args.json
    else:
        raise ApiError("give the event as --file FILE (or - for stdin) or --json TEXT")
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ApiError(f"the event is not valid JSON: {exc}") from None


def _run_api_command(args: argparse.Namespace) -> Any:
    api, token = args.api, args.token
    match args.command, getattr(args, "action", None):
        case "event", "create":
            return call(api, "POST", "/api/events", _json_arg(args), token)
        case "event", "modify":
            body = _json_arg(args)
            if args.reason:
                body["modification_reason"] = args.reason
            return call(api, "PUT", f"/api/events/{args.event_id}", body, token)
        case "event", "cancel":
            return call(api, "POST", f"/api/events/{args.event_id}/cancel",
                        {"reason": args.reason}, token)
        case "event", "list":
            return call(api, "GET", "/api/events", token=token)
        case "event", "show":
            return call(api, "GET", f"/api/events/{args.event_id}", token=token)
        case "ven", "list":
            return call(api, "GET", "/api/vens", token=token)
        case "ven", "approve":
            return call(api, "POST", f"/api/vens/{args.ven_id}/approve", {}, token)
        case "ven", "provision":
            body = {"ven_name": args.name, "ven_id": args.ven_id, "fingerprint": args.fingerprint,
                    "programs": args.program, "groups": args.group, "resources": args.resource,
                    "party_id": args.party}
            return call(api, "POST", "/api/vens", body, token)
        case "cmb", "verdicts":
            return call(api, "GET", "/api/cmb/verdicts" + _query(
                aggregator=args.aggregator, device_id=args.device, plan_id=args.plan,
                limit=args.limit), token=token)
        case "cmb", "alerts":
            return call(api, "GET", "/api/cmb/alerts" + _query(
                aggregator=args.aggregator, limit=args.limit), token=token)
        case "cmb", "override":
            return _cmb_override(args)
        case "report", "show":
            return call(api, "GET", f"/api/vens/{args.ven_id}/reports?limit={args.limit}",
                        token=token)
    raise ApiError(f"unknown command {args.command} {args.action}")


def _query(**params: Any) -> str:
    given = {k: v for k, v in params.items() if v is not None}
    return "?" + urllib.parse.urlencode(given) if given else ""


def _cmb_override(args: argparse.Namespace) -> Any:
    api, token = args.api, args.token
    match args.override_action:
        case "create":
            target = {"aggregator": args.aggregator, "network_area": args.area,
                      "device_class": args.device_class, "devices": args.device}
            body = {"target": target, "level": args.level, "energized": not args.deenergize,
                    "reason": args.reason or "",
                    "end": args.end}
            return call(api, "POST", "/api/cmb/overrides", body, token)
        case "list":
            return call(api, "GET", "/api/cmb/overrides" + _query(status=args.status),
                        token=token)
        case "lift":
            return call(api, "POST", f"/api/cmb/overrides/{args.override_id}/lift", {}, token)
        case "apply":
            return call(api, "POST", f"/api/cmb/overrides/{args.override_id}/apply", {}, token)
    raise ApiError(f"unknown command cmb override {args.override_action}")


def _cmb_parser(sub: Any, client: Any) -> None:
    cmb = sub.add_parser(
        "cmb", help="the Central Monitoring Body: plan verdicts, fleet alerts, control overrides",
        description="Read what the CMB decided about submitted plans and what its fleet "
                    "monitors raised, and cap devices through paths the aggregator does not "
                    "control (a top-priority OpenADR event, SRV 7.16 Limit APC Level to SAPCs "
                    "through the DCC, IEEE 2030.5 DERControl).")
    cs = cmb.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = client(cs.add_parser("verdicts", help="recent plan verdicts, newest first: decision, "
                                              "each failed rule with its value and threshold"))
    p.add_argument("--aggregator", help="only this aggregator's plans")
    p.add_argument("--device", help="only this device's plans")
    p.add_argument("--plan", help="only this plan")
    p.add_argument("--limit", type=int, default=50, help="how many (default 50)")
    p = client(cs.add_parser("alerts", help="recent fleet-monitor alerts, newest first"))
    p.add_argument("--aggregator", help="only this aggregator's alerts")
    p.add_argument("--limit", type=int, default=50, help="how many (default 50)")
    ov = cs.add_parser(
        "override", help="create, list, lift (or apply a proposed) control override",
        description="An override caps every device its target matches (all given criteria "
                    "must hold) at LEVEL percent of rated import, with a primacy that beats "
                    "every aggregator plan; lifting it restores the plans in force.")
    os_ = ov.add_subparsers(dest="override_action", required=True, metavar="ACTION")
    p = client(os_.add_parser("create", help="cap devices now, through every override path"))
    p.add_argument("--aggregator", help="target: every device this aggregator plans")
    p.add_argument("--area", help="target: every device in this network area")
    p.add_argument("--device-class", help="target: devices of this class (ev, battery, ...)")
    p.add_argument("--device", action="append", default=[],
                   help="target: this device (repeatable)")
    p.add_argument("--level", type=int, required=True,
                   help="cap, percent of rated import (0: off)")
    p.add_argument("--deenergize", action="store_true",
                   help="also cease to energize inverters (IEEE 2030.5 opModEnergize=false)")
    p.add_argument("--end", help="ISO 8601 end time (default: until lifted)")
    p.add_argument("--reason", help="why, for the audit log")
    p = client(os_.add_parser("list", help="overrides with status, devices and path results"))
    p.add_argument("--status", choices=("proposed", "active", "lifted"))
    client(os_.add_parser("lift", help="lift an active override (or dismiss a proposed one)")
           ).add_argument("override_id")
    client(os_.add_parser("apply", help="apply an override a monitor proposed")
           ).add_argument("override_id")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="adrgate",
        description="OpenADR 2.0b gateway: a DSO/CMB VTN and its operator tools.",
        epilog=_settings_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    vtn = sub.add_parser("vtn", help="run the VTN (OpenADR endpoints + operator API, one port)",
                         epilog=_settings_epilog(),
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    vtn.add_argument("--host", help="listen address (ADRGATE_HOST)")
    vtn.add_argument("--port", type=int, help="listen port (ADRGATE_PORT)")
    vtn.add_argument("--data-dir", type=Path, help="data directory (ADRGATE_DATA_DIR)")

    def client(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--api", default=os.environ.get("ADRGATE_API_URL", DEFAULT_API),
                       help=f"VTN base URL (ADRGATE_API_URL, default {DEFAULT_API})")
        p.add_argument("--token", default=os.environ.get("ADRGATE_API_TOKEN"),
                       help="operator API bearer token (ADRGATE_API_TOKEN)")
        return p

    event = sub.add_parser("event", help="create, modify, cancel, list and show events")
    ev = event.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, text in (("create", "create an event from JSON"),
                       ("modify", "replace an event's definition (modificationNumber + 1)")):
        p = client(ev.add_parser(name, help=text))
        if name == "modify":
            p.add_argument("event_id")
            p.add_argument("--reason", help="modification reason")
        p.add_argument("--file", help="JSON file with the event ('-' reads stdin)")
        p.add_argument("--json", help="the event as a JSON string")
    p = client(ev.add_parser("cancel", help="cancel an event"))
    p.add_argument("event_id")
    p.add_argument("--reason")
    client(ev.add_parser("list", help="list events"))
    client(ev.add_parser("show", help="show an event with per-VEN delivery and opt state")
           ).add_argument("event_id")

    ven = sub.add_parser(
        "ven", help="run an aggregator VEN fleet (--fleet FILE); list, approve, provision VENs",
        description="With --fleet FILE and no ACTION: run every VEN of the fleet file until "
                    "interrupted (docs/fleet.example.toml explains every key; "
                    "docs/fleet.local.toml suits `make run`). `status` and `signals` read the "
                    "fleet's database; list, approve and provision talk to a VTN's API.",
        epilog=_settings_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    ven.add_argument("--fleet", type=Path, metavar="FILE", help="fleet file (TOML) to run")
    ven.add_argument("--data-dir", type=Path, help="data directory (ADRGATE_DATA_DIR)")
    ven.add_argument("--bridge", action="store_true",
                     help="also run the bridge: grid signals become per-device plans, sent "
                          "through Redis Streams (REDIS_URL, else an embedded redis-server) to "
                          "simulated devices on every channel (SAPC via a DCC simulator, OCPP, "
                          "battery hubs, IEEE 2030.5) whose telemetry the VENs report")
    ven.add_argument("--dcc", choices=("realistic", "accelerated"), default="realistic",
                     help="DCC simulator latency with --bridge: realistic (a critical SAPC "
                          "command takes about 22 s, within the 25 s on-demand target) or "
                          "accelerated (100 times faster, for demos); default realistic")
    ven.add_argument("--dcc-port", type=int, default=0, metavar="PORT",
                     help="with --bridge: the DCC simulator's port on 127.0.0.1, so a CMB can "
                          "reach the SAPCs through it (default: any free port)")
    ven.add_argument("--dcc-load-controller", action="append", default=[],
                     metavar="EUI64=PUBLIC_KEY.pem",
                     help="with --bridge: a DCC user in the Load Controller role (the CMB, "
                          "whose ADRGATE_CMB_DCC_USER/KEY match), allowed to send SRV 7.16 Limit "
                          "APC Level; repeatable")
    ven.add_argument("--cmb", metavar="URL",
                     help="with --bridge: submit every plan to the CMB at URL (the VTN's base "
                          "URL), signed with --cmb-key; routine plans wait for its verdict")
    ven.add_argument("--cmb-key", type=Path, metavar="KEY.pem",
                     help="the aggregator's private key (PEM) registered at the CMB")
    ven.add_argument("--redispatch-every", type=float, default=300.0, metavar="SECONDS",
                     help="with --bridge: re-dispatch open LOAD_DISPATCH windows this often "
                          "(default 300)")
    vs = ven.add_subparsers(dest="action", required=False, metavar="ACTION")
    for name, text in (("status", "each fleet VEN's registration, last poll, events, opts and "
                                  "report requests"),
                       ("signals", "the grid signals each fleet VEN holds for the bridge")):
        p = vs.add_parser(name, help=text)
        p.add_argument("--fleet", type=Path, default=argparse.SUPPRESS, metavar="FILE",
                       help="fleet file (TOML)")
        p.add_argument("--data-dir", type=Path, default=argparse.SUPPRESS,
                       help="data directory (ADRGATE_DATA_DIR)")
    client(vs.add_parser("list", help="list VENs"))
    client(vs.add_parser("approve", help="approve a pending registration")).add_argument("ven_id")
    p = client(vs.add_parser("provision", help="allow a VEN (allowlist / pre-allocated venID)"))
    p.add_argument("--name", required=True, help="venName the VEN registers with")
    p.add_argument("--ven-id", help="pre-allocated venID")
    p.add_argument("--fingerprint", help="client certificate fingerprint (aa:bb:...)")
    p.add_argument("--program", action="append", default=[], help="market context (repeatable)")
    p.add_argument("--group", action="append", default=[], help="groupID (repeatable)")
    p.add_argument("--resource", action="append", default=[], help="resourceID (repeatable)")
    p.add_argument("--party", help="partyID")

    tr = sub.add_parser(
        "trace", help="the path of one event: VENs' answers, plans per device, channel "
                      "messages and acknowledgements, requested vs delivered power",
        description="Reads the fleet's database (the VENs' side and the bridge's); with --api "
                    "also asks the VTN for its own view of the event (delivery per VEN).",
        epilog=_settings_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    tr.add_argument("event_id")
    tr.add_argument("--fleet", type=Path, required=True, metavar="FILE",
                    help="fleet file (TOML) whose database to read")
    tr.add_argument("--data-dir", type=Path, help="data directory (ADRGATE_DATA_DIR)")
    tr.add_argument("--api", help="VTN base URL to add the VTN's view (e.g. http://127.0.0.1:8080)")
    tr.add_argument("--token", default=os.environ.get("ADRGATE_API_TOKEN"),
                    help="operator API bearer token (ADRGATE_API_TOKEN)")

    _cmb_parser(sub, client)

    for command in _COMMANDS:  # commands with their own module: register(sub) sets `handler`
        command.register(sub)

    report = sub.add_parser("report", help="show report metadata, requests and values")
    rs = report.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = client(rs.add_parser("show", help="a VEN's reports"))
    p.add_argument("ven_id")
    p.add_argument("--limit", type=int, default=50, help="newest values to show")
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {k: v for k in ("host", "port", "data_dir")
                 if (v := getattr(args, k, None)) is not None}
    return Settings.from_env(os.environ, **overrides)


def _run_local_command(args: argparse.Namespace) -> Any:
    """`vtn` and the fleet commands: processes and databases of this machine, no API."""
    settings = _settings(args)
    serving = args.command == "vtn" or (args.command == "ven" and args.action is None)
    if serving:  # long-running services log; one-shot readers print their answer only
        configure_logging(settings.log_level, settings.log_format)
    if args.command == "vtn":
        from .vtnserver import serve

        serve(settings)
        return None
    from . import venfleet

    if args.command == "trace":
        path = venfleet.trace_event(args.event_id, args.fleet, settings)
        if args.api:
            try:
                path["vtn"] = call(args.api, "GET", f"/api/events/{args.event_id}",
                                   token=args.token)
            except ApiError as exc:  # the aggregator's side is still worth showing
                path["vtn"] = {"error": str(exc)}
        return path
    if args.action is None:
        from bridge.sim.dcc import ACCELERATED, REALISTIC
        from bridge.sim.world import WorldOptions

        from .bridgeproc import BridgeOptions

        bridge = BridgeOptions(
            world=WorldOptions(dcc_latency=REALISTIC if args.dcc == "realistic" else ACCELERATED,
                               dcc_port=args.dcc_port,
                               dcc_load_controllers=tuple(
                                   _load_controller(v) for v in args.dcc_load_controller)),
            redispatch_every=timedelta(seconds=args.redispatch_every), cmb_url=args.cmb,
            cmb_key=_private_key(args.cmb_key) if args.cmb_key else None) \
            if args.bridge else None
        venfleet.run(args.fleet, settings, bridge=bridge)
        return None
    return venfleet.status(args.fleet, settings) if args.action == "status" \
        else venfleet.signals(args.fleet, settings)


def _load_controller(value: str) -> tuple[str, Any]:
    """EUI64=PUBLIC_KEY.pem -> (EUI-64, its ECDSA public key). Raises ValueError."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    eui, sep, path = value.partition("=")
    if not sep:
        raise ValueError(f"--dcc-load-controller {value!r}: expected EUI64=PUBLIC_KEY.pem")
    key = serialization.load_pem_public_key(Path(path).read_bytes())
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ValueError(f"{path}: a DCC user signs with ECDSA P-256")
    return eui, key


def _private_key(path: Path) -> Any:
    """A PEM private key (ECDSA or RSA). Raises ValueError / OSError."""
    from cryptography.hazmat.primitives import serialization

    return serialization.load_pem_private_key(path.read_bytes(), None)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if (handler := getattr(args, "handler", None)) is not None:
        return int(handler(args))
    fleet_command = args.command == "trace" or (
        args.command == "ven" and args.action in (None, "status", "signals"))
    if fleet_command and getattr(args, "fleet", None) is None:
        parser.error("adrgate ven: give --fleet FILE (run, status, signals) or an ACTION")
    try:
        if args.command == "vtn" or fleet_command:
            result = _run_local_command(args)
            if result is None:
                return 0
        else:
            result = _run_api_command(args)
    except ApiError as exc:
        print(f"adrgate: {exc}", file=sys.stderr)
        return 1
    except (ValueError, OSError) as exc:  # settings, fleet file (FleetError), database
        print(f"adrgate: configuration error: {exc}", file=sys.stderr)
        return 2
    try:
        print(json.dumps(result, indent=2))
    except BrokenPipeError:  # e.g. piped into `head`: not an error of ours
        sys.stderr.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
