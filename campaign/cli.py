"""`adrgate campaign`: run an interoperability test campaign against a VTN or a VEN, or list its
cases.

The command line only selects and reports: what a case does lives in the role modules
(`campaign.asven` when the VTN is under test, `campaign.asvtn` when the VEN is), reached through
`SUITES`, one loader per role, imported only when a campaign needs them.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import ssl
import sys
import urllib.parse
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from ssl import SSLContext  # the field `ssl` hides the module in the dataclass
from types import TracebackType
from typing import Any, Protocol, Self

from adrgate import tls
from adrgate.args import address
from oadr.signing import SigningKey

from .context import Context
from .html import html_report
from .junit import junit_xml
from .model import Case, Family, Result, Role, Transport
from .progress import Progress
from .report import CampaignRun, passed, printable, summary, text_table
from .runner import run_cases

USAGE_ERROR = 2

log = logging.getLogger("adrgate.campaign")

_EXAMPLES = """\
examples:
  # our harness plays the VEN against the VTN at URL (pull), with mutual TLS and an automation
  # hook that asks adrgate's own operator API to create the events the cases need:
  adrgate campaign run --role vtn --target https://vtn.example:8443/OpenADR2/Simple/2.0b \\
      --cert ven.crt --key ven.key --ca ca.pem \\
      --hook 'api:https://vtn.example:8443/api#TOKEN' --junit campaign.xml --html campaign.html

  # our harness plays the VTN on 127.0.0.1:8081; point the VEN under test at it; registration
  # and event cases only, pull and push, the operator prompted when the VEN must act:
  adrgate campaign run --role ven --listen 127.0.0.1:8081 --family N,E --transport both --prompt

exit status: 0 every case run passed (cases not run are listed), 1 a case failed or erred,
2 bad options or the harness could not start, 130 interrupted (the reports cover what ran).
"""


class UsageError(Exception):
    """Options that cannot make a campaign: reported on stderr, exit status 2."""


class RoleHarness(Protocol):
    """What the CLI needs of a role's harness (`asven.Harness`, `asvtn.Harness`)."""

    async def __aenter__(self) -> Self: ...

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> bool | None: ...

    def available(self) -> frozenset[str]: ...

    def context(self, case: Case) -> AbstractAsyncContextManager[Context]: ...


@dataclass(frozen=True, kw_only=True)
class Options:
    """Validated run options, in the role modules' terms."""

    role: Role
    target: str = ""  # role vtn: the VTN's base URL
    listen: tuple[str, int] | None = None  # role ven
    ssl: ssl.SSLContext | None = None
    signing_key: SigningKey | None = None
    hook: str = ""  # role vtn: hooks.hook_from_spec's spec
    prompt: bool = False  # role ven
    push_listen: tuple[str, int] | None = None  # role vtn
    push_ssl: SSLContext | None = None  # role vtn with TLS: the push listener's context
    push_url: str = ""  # role vtn: the push listener's base URL for the VTN ("" derived)

    @property
    def peer(self) -> str:
        """The VTN's URL, or the URL the VEN under test is to be pointed at."""
        if self.listen is None:
            return self.target
        from .asvtn_harness import OADR_PATH

        scheme = "https" if self.ssl is not None else "http"
        return f"{scheme}://{_host_port(self.listen)}{OADR_PATH}"


@dataclass(frozen=True)
class Suite:
    cases: tuple[Case, ...]
    harness: Callable[[Options], RoleHarness]  # raises ValueError on an option the role refuses


def _vtn_under_test() -> Suite:
    from .asven import CASES, Harness, VtnTarget
    from .hooks import hook_from_spec

    def harness(o: Options) -> RoleHarness:
        return Harness(VtnTarget(
            url=o.target, ssl=o.ssl, signing_key=o.signing_key,
            hook=hook_from_spec(o.hook, ssl_context=o.ssl) if o.hook else None,
            push_listen=o.push_listen, push_ssl=o.push_ssl, push_url=o.push_url or None))
    return Suite(CASES, harness)


def _ven_under_test() -> Suite:
    from .asvtn import CASES, Harness, PromptVen, VenUnderTest

    def harness(o: Options) -> RoleHarness:
        assert o.listen is not None  # _options requires --listen for role ven
        return Harness(VenUnderTest(listen=o.listen, ssl=o.ssl, signing_key=o.signing_key,
                                    prompt=PromptVen() if o.prompt else None))
    return Suite(CASES, harness)


# The role of the system under test -> its suite. Tests replace the loaders with fakes.
SUITES: dict[Role, Callable[[], Suite]] = {Role.VTN: _vtn_under_test, Role.VEN: _ven_under_test}


# ---- argument types (argparse turns their ArgumentTypeError into a usage error, exit 2)

def _families(text: str) -> list[Family]:
    by_name = {f.value.upper(): f for f in Family}
    try:
        return [by_name[name.strip().upper()] for name in text.split(",") if name.strip()]
    except KeyError as exc:
        raise argparse.ArgumentTypeError(
            f"unknown family {exc.args[0]!r} (families: {', '.join(f.value for f in Family)})"
        ) from None


def _case_ids(text: str) -> list[str]:
    return [c.strip() for c in text.split(",") if c.strip()]


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def _host_port(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "campaign", help="interoperability test campaigns against a VTN or a VEN",
        description="Certification-style test campaigns: families N (registration), E and A_E "
                    "(events), R (reports), P (opt), G (general and security), each case pull "
                    "or push. Every message the peer sends is validated against the 2.0b XSD "
                    "and the certification rules; a case passes when the peer also did what "
                    "the case is about.")
    p.set_defaults(handler=run)
    actions = p.add_subparsers(dest="campaign_action", required=True, metavar="ACTION")
    r = actions.add_parser(
        "run", help="run a campaign; summary on stdout, progress on stderr",
        description="Run the selected cases one after another against the system under test,\n"
                    "then print a summary table; optionally write JUnit XML and an HTML report.",
        epilog=_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("--role", type=Role, choices=list(Role), required=True,
                   help="the role of the system under test: 'vtn' (our harness plays the VEN "
                        "and connects to --target) or 'ven' (our harness plays the VTN on "
                        "--listen; point the VEN under test at it)")
    r.add_argument("--target", metavar="URL",
                   help="role vtn: the VTN's OpenADR base URL, to which the service names "
                        "are appended (e.g. http://127.0.0.1:8080/OpenADR2/Simple/2.0b)")
    r.add_argument("--listen", type=address, metavar="HOST:PORT",
                   help="role ven: where our VTN listens for the VEN under test")
    _selection(r, transport_default="pull for role vtn; both for role ven, where the VEN's "
                                    "registration decides and the other transport's cases "
                                    "are not run")
    tl = r.add_argument_group("security", "TLS 1.2 with the two OpenADR cipher suites; --cert, "
                                          "--key and --ca go together")
    tl.add_argument("--cert", type=Path, metavar="FILE",
                    help="our certificate (PEM): the client certificate for role vtn, the "
                         "server certificate for role ven")
    tl.add_argument("--key", type=Path, metavar="FILE", help="the private key of --cert (PEM)")
    tl.add_argument("--ca", type=Path, metavar="FILE",
                    help="CA bundle (PEM) that verifies the peer's certificate")
    tl.add_argument("--sign-key", type=Path, metavar="PEM",
                    help="sign our messages with this private key (RSA or EC, PEM; XML "
                         "signature with ReplayProtect); enables the signing cases")
    tl.add_argument("--sign-cert", type=Path, metavar="PEM",
                    help="the certificate of --sign-key (default: --cert)")
    act = r.add_argument_group("making the peer act",
                               "cases that need the peer to do something (create an event, opt\n"
                               "out) run only when one of these is given")
    act.add_argument("--hook", metavar="SPEC",
                     help="role vtn: how to make the VTN under test create, modify and cancel "
                          "events: 'api:URL[#TOKEN]' (adrgate's operator API, URL ending in /api), 'prompt' (ask "
                          "the operator on this terminal) or 'python:MODULE:ATTR' (your own "
                          "EventHook)")
    act.add_argument("--prompt", action="store_true",
                     help="role ven: ask the operator on this terminal to make the VEN under "
                          "test act (press Enter when done)")
    act.add_argument("--push-listen", type=address, metavar="HOST:PORT",
                     help="role vtn, push cases: where our VEN listens for the VTN's pushes; "
                          "https with mutual TLS when --cert, --key and --ca are given (the "
                          "listener serves --cert)")
    act.add_argument("--push-url", metavar="BASE",
                     help="role vtn: the base URL at which the VTN under test reaches "
                          "--push-listen (e.g. https://ven.example:8443); default "
                          "http(s)://HOST:PORT of --push-listen, which must then name a host, "
                          "not 0.0.0.0 or ::")
    out = r.add_argument_group("run and output")
    out.add_argument("--timeout", type=_seconds, default=60.0, metavar="S",
                     help="seconds one case may take before it is an ERROR (default 60)")
    out.add_argument("--junit", type=Path, metavar="FILE",
                     help="write JUnit XML (one testsuite per family) for CI systems")
    out.add_argument("--html", type=Path, metavar="FILE",
                     help="write a self-contained HTML report: verdict matrix, and for each "
                          "failure the rule, the expectation and the message transcript")
    ls = actions.add_parser("list", help="list the cases: id, family, transport, title, needs",
                            description="List the campaign's cases (both roles unless --role).")
    ls.add_argument("--role", type=Role, choices=list(Role),
                    help="only the cases for this role of the system under test")
    _selection(ls, transport_default="both")


def _selection(p: argparse.ArgumentParser, transport_default: str = "pull") -> None:
    g = p.add_argument_group("case selection")
    g.add_argument("--family", type=_families, action="append", default=[], metavar="F[,F...]",
                   help="only these families: N, E, A_E, R, P, G (repeatable or comma list; "
                        "default all)")
    g.add_argument("--case", type=_case_ids, action="append", default=[], metavar="ID[,ID...]",
                   help="only these cases, by id (repeatable or comma list); with --case the "
                        "transport is not filtered unless --transport is given")
    g.add_argument("--transport", choices=("pull", "push", "both"),
                   help=f"pull cases, push cases or both (default {transport_default})")


def _matcher(args: argparse.Namespace, known: Sequence[Case],
             default_transport: str) -> Callable[[Case], bool]:
    """Whether a case is among those the options name.

    Raises:
        UsageError: a case id not in `known`.
    """
    families = {f for group in args.family for f in group}
    wanted = {c.upper() for group in args.case for c in group}
    unknown = wanted - {c.case_id.upper() for c in known}
    if unknown:
        raise UsageError(f"unknown case {', '.join(sorted(unknown))} "
                         "('adrgate campaign list' shows the cases)")
    transport = args.transport or ("both" if wanted else default_transport)
    transports = set(Transport) if transport == "both" else {Transport(transport)}
    return lambda c: ((not families or c.family in families) and c.transport in transports
                      and (not wanted or c.case_id.upper() in wanted))


def _suite(role: Role) -> Suite:
    try:
        return SUITES[role]()
    except ImportError as exc:
        raise UsageError(f"the cases for a {role.value.upper()} under test are not "
                         f"available: {exc}") from None


def _read(option: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UsageError(f"{option} {path}: cannot read: {exc.strerror or exc}") from None


def _options(args: argparse.Namespace) -> Options:
    """Check the options against the role and load the TLS and signing material.

    Raises:
        UsageError: an option missing, out of place or unreadable.
    """
    role: Role = args.role
    misplaced = [name for name, value, owner in (
        ("--target", args.target, Role.VTN), ("--hook", args.hook, Role.VTN),
        ("--push-listen", args.push_listen, Role.VTN), ("--push-url", args.push_url, Role.VTN),
        ("--listen", args.listen, Role.VEN),
        ("--prompt", args.prompt, Role.VEN)) if value and owner is not role]
    if misplaced:
        raise UsageError(f"{', '.join(misplaced)} does not apply to --role {role.value}")
    if role is Role.VTN:
        if not args.target:
            raise UsageError("--role vtn needs --target URL (the VTN under test)")
        url = urllib.parse.urlsplit(args.target)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise UsageError(f"--target {args.target!r} is not an http:// or https:// URL")
        if args.cert and url.scheme != "https":
            raise UsageError("--cert is given but --target is not an https:// URL")
        if args.transport in ("push", "both") and args.push_listen is None:
            raise UsageError("push cases need --push-listen HOST:PORT (where the VTN under "
                             "test pushes to us)")
        if args.push_url and args.push_listen is None:
            raise UsageError("--push-url needs --push-listen HOST:PORT (the listener it leads to)")
    elif args.listen is None:
        raise UsageError("--role ven needs --listen HOST:PORT (where the VEN under test "
                         "will find our VTN)")
    ours, push = _tls(args, role)
    return Options(role=role, target=args.target or "", listen=args.listen,
                   ssl=ours, signing_key=_signing_key(args), hook=args.hook or "",
                   prompt=args.prompt, push_listen=args.push_listen, push_ssl=push,
                   push_url=args.push_url or "")


def _tls(args: argparse.Namespace, role: Role
         ) -> tuple[ssl.SSLContext | None, ssl.SSLContext | None]:
    """Our context toward the peer and, for role vtn with --push-listen, the push listener's:
    a push VEN serves the VTN with the same certificate it registered with (the VTN may pin it)."""
    files = {"--cert": args.cert, "--key": args.key, "--ca": args.ca}
    if not any(files.values()):
        return None, None
    if not all(files.values()):
        raise UsageError(f"--cert, --key and --ca go together: missing "
                         f"{', '.join(k for k, v in files.items() if not v)}")
    for option, path in files.items():
        _read(option, path)
    try:
        if role is Role.VEN:
            return tls.server_context(args.cert, args.key, args.ca), None
        return tls.client_context(args.cert, args.key, args.ca), \
            tls.server_context(args.cert, args.key, args.ca) if args.push_listen else None
    except (ssl.SSLError, OSError) as exc:
        raise UsageError(f"TLS material --cert {args.cert} --key {args.key} --ca {args.ca} "
                         f"is not usable: {exc}") from None


def _signing_key(args: argparse.Namespace) -> SigningKey | None:
    if args.sign_key is None:
        if args.sign_cert is not None:
            raise UsageError("--sign-cert is given without --sign-key")
        return None
    cert = args.sign_cert or args.cert
    if cert is None:
        raise UsageError("--sign-key needs its certificate: --sign-cert PEM (or --cert)")
    try:
        return SigningKey.load(_read("--sign-cert", cert), _read("--sign-key", args.sign_key))
    except ValueError as exc:
        raise UsageError(f"--sign-key {args.sign_key}: {exc}") from None


def _writable(option: str, path: Path | None) -> None:
    if path is not None and not path.parent.is_dir():
        raise UsageError(f"{option} {path}: directory {path.parent} does not exist")


async def _campaign(harness: RoleHarness, cases: Sequence[Case], timeout_s: float,
                    progress: Progress, results: list[Result]) -> None:
    """Run `cases`, appending each result to `results` as it comes (an interrupted run still
    reports what it ran)."""
    async with harness:
        def contexts(case: Case) -> AbstractAsyncContextManager[Context]:
            progress.started(case)
            return harness.context(case)

        def done(result: Result) -> None:
            results.append(result)
            progress.finished(result)
        await run_cases(cases, contexts, timeout_s=timeout_s, available=harness.available(),
                        on_result=done)


def _campaign_run(args: argparse.Namespace) -> int:
    options = _options(args)
    _writable("--junit", args.junit)
    _writable("--html", args.html)
    suite = _suite(options.role)
    # A VEN under test picks its transport when it registers: its other cases say NOT_RUN.
    default_transport = "pull" if options.role is Role.VTN else "both"
    selected = _matcher(args, suite.cases, default_transport)
    cases = [c for c in suite.cases if selected(c)]
    if not cases:
        raise UsageError("no case matches the selection")
    try:
        harness = suite.harness(options)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    print(f"adrgate campaign: {len(cases)} cases against the {options.role.value.upper()} "
          f"at {options.peer}" if options.role is Role.VTN else
          f"adrgate campaign: {len(cases)} cases; point the VEN under test at {options.peer} "
          f"and start it: the campaign begins once it has registered", file=sys.stderr)
    # an operator prompt prints between progress lines: a line rewritten in place would mangle it
    prompting = options.prompt or options.hook == "prompt"
    progress = Progress(len(cases), sys.stderr, tty=False if prompting else None)
    results: list[Result] = []
    started = datetime.now(UTC)
    status = None
    try:
        asyncio.run(_campaign(harness, cases, args.timeout, progress, results))
    except KeyboardInterrupt:
        status = 130
    except Exception as exc:  # the harness could not start or stop: no verdict on the peer
        log.debug("the harness failed", exc_info=True)
        progress.close()
        print(f"adrgate campaign: the harness failed: {type(exc).__name__}: "
              f"{printable(str(exc))}", file=sys.stderr)
        return USAGE_ERROR
    progress.close()
    run = CampaignRun(role=options.role, peer=options.peer, started=started,
                      finished=datetime.now(UTC), results=tuple(results))
    print(summary(run))
    try:
        if args.junit:
            args.junit.write_bytes(junit_xml(run))
        if args.html:
            args.html.write_text(html_report(run), encoding="utf-8")
    except OSError as exc:
        print(f"adrgate campaign: cannot write the report: {exc}", file=sys.stderr)
        return USAGE_ERROR
    if status is not None:
        print(f"adrgate campaign: interrupted after {len(results)} of {len(cases)} cases",
              file=sys.stderr)
        return status
    return 0 if passed(results) else 1


def _campaign_list(args: argparse.Namespace) -> int:
    listed = [(role, c) for role in ([args.role] if args.role else list(Role))
              for c in _suite(role).cases]
    selected = _matcher(args, [c for _, c in listed], "both")
    rows = [[role.value, c.case_id, c.family.value, c.transport.value, c.title,
             ",".join(sorted(c.needs)) or "-"] for role, c in listed if selected(c)]
    if not rows:
        raise UsageError("no case matches the selection")
    print("\n".join(text_table(["under test", "case", "family", "transport", "title", "needs"],
                               rows)))
    return 0


def run(args: argparse.Namespace) -> int:
    try:
        return _campaign_run(args) if args.campaign_action == "run" else _campaign_list(args)
    except UsageError as exc:
        print(f"adrgate campaign {args.campaign_action}: error: {exc}", file=sys.stderr)
        return USAGE_ERROR
