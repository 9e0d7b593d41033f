"""`adrgate campaign`: options, errors and exit codes, with fake cases and a fake harness in place
of the role modules (`campaign.cli.SUITES`); then a few real cases end to end, against our VTN,
a broken VTN and our VEN."""

from __future__ import annotations

import asyncio
import ssl
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Self

import pytest
from aiohttp import web

from adrgate import cli
from adrgate.services import free_port
from adrgate.tls import server_context
from campaign import cli as campaign_cli
from campaign.context import Context
from campaign.model import Case, Family, Role, Transport
from oadr.signing import fingerprint
from tests.certs import write_pki
from tests.venkit import running_fleet, ven_spec
from tests.vtnkit import running_vtn
from vtn.push import PushConfig, PushTls

TARGET = "http://127.0.0.1:9"


async def passes(ctx: Context) -> None:
    ctx.expect(True, "never", "nothing")


async def fails(ctx: Context) -> None:
    ctx.expect(False, "fake.rule", "the peer does the thing", "it did not")


async def errs(_: Context) -> None:
    raise ConnectionResetError("peer hung up")


async def hangs(_: Context) -> None:
    await asyncio.Event().wait()


def fake_case(case_id: str, run: Any = passes, family: Family = Family.E,
              transport: Transport = Transport.PULL, needs: frozenset[str] = frozenset()
              ) -> Case:
    return Case(case_id=case_id, family=family, role=Role.VTN, transport=transport,
                title=f"{case_id} title", intent="fake", run=run, needs=needs)


class FakeHarness:
    """The role harness's shape: records the options it was built with and the cases run."""

    built: ClassVar[list[campaign_cli.Options]] = []
    ran: ClassVar[list[str]] = []

    def __init__(self, options: campaign_cli.Options, capabilities: frozenset[str]) -> None:
        self.options = options
        self.capabilities = capabilities
        FakeHarness.built.append(options)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        return None

    def available(self) -> frozenset[str]:
        return self.capabilities

    @asynccontextmanager
    async def context(self, case: Case) -> AsyncIterator[Context]:
        FakeHarness.ran.append(case.case_id)
        yield Context()


class BrokenHarness(FakeHarness):
    async def __aenter__(self) -> Self:
        raise OSError(98, "Address already in use")


def install(monkeypatch: pytest.MonkeyPatch, *cases: Case, role: Role = Role.VTN,
            capabilities: frozenset[str] = frozenset(), harness: type[FakeHarness] = FakeHarness
            ) -> None:
    FakeHarness.built, FakeHarness.ran = [], []
    monkeypatch.setitem(campaign_cli.SUITES, role, lambda: campaign_cli.Suite(
        tuple(cases), lambda options: harness(options, capabilities)))


def run(*argv: str) -> int:
    return cli.main(["campaign", "run", *argv])


SUITE = (fake_case("N1_0010", family=Family.N), fake_case("E1_0010"),
         fake_case("E0_0010", transport=Transport.PUSH, needs=frozenset({"push"})),
         fake_case("R1_0010", family=Family.R), fake_case("G1_0010", family=Family.G,
                                                          needs=frozenset({"hook"})))


def test_help_explains_every_option_with_examples(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        run("--help")
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for option in ("--role", "--target", "--listen", "--family", "--case", "--transport",
                   "--cert", "--key", "--ca", "--sign-key", "--hook", "--prompt",
                   "--push-listen", "--push-url", "--timeout", "--junit", "--html"):
        assert option in out
    examples = out.split("examples:")[1]
    assert examples.count("adrgate campaign run") == 2


def test_every_case_passing_exits_0_with_a_summary(monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    install(monkeypatch, *SUITE, capabilities=frozenset({"hook"}))
    assert run("--role", "vtn", "--target", TARGET) == 0
    pull = [c.case_id for c in SUITE if c.transport is Transport.PULL]
    assert FakeHarness.ran == pull  # default transport: pull
    out, err = capsys.readouterr()
    assert [line.split()[0] for line in out.splitlines() if line.split()[:1] and
            line.split()[0] in pull] == pull
    assert out.splitlines()[-1] == "PASSED"
    assert all(f"] {case_id} pass" in err for case_id in pull)  # progress, one line per case


def test_a_case_not_run_is_listed_and_does_not_fail(monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    install(monkeypatch, *SUITE)  # no "hook" capability: G1_0010 cannot run
    assert run("--role", "vtn", "--target", TARGET) == 0
    assert "G1_0010" not in FakeHarness.ran
    assert "G1_0010: needs hook" in capsys.readouterr().out


@pytest.mark.parametrize("bad", [fails, errs])
def test_a_failing_or_erring_case_exits_1(bad: Any, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    install(monkeypatch, fake_case("E1_0010"), fake_case("E1_0020", bad), fake_case("E1_0030"))
    assert run("--role", "vtn", "--target", TARGET) == 1
    assert FakeHarness.ran == ["E1_0010", "E1_0020", "E1_0030"]  # the campaign went on
    row = next(line for line in capsys.readouterr().out.splitlines()
               if line.startswith("E1_0020"))
    assert ("fail" in row.split() and "fake.rule" in row) if bad is fails else \
        ("error" in row.split() and "peer hung up" in row)


def test_a_case_past_its_timeout_is_an_error(monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    install(monkeypatch, fake_case("E1_0010", hangs), fake_case("E1_0020"))
    assert run("--role", "vtn", "--target", TARGET, "--timeout", "0.05") == 1
    out = capsys.readouterr().out
    assert "no conclusion within 0.05 s" in out and FakeHarness.ran == ["E1_0010", "E1_0020"]


def test_selection_by_family_case_and_transport(monkeypatch: pytest.MonkeyPatch) -> None:
    install(monkeypatch, *SUITE, capabilities=frozenset({"hook", "push"}))
    push = ("--push-listen", "127.0.0.1:8999")
    assert run("--role", "vtn", "--target", TARGET, "--family", "n,R") == 0
    assert FakeHarness.ran == ["N1_0010", "R1_0010"]
    FakeHarness.ran = []
    assert run("--role", "vtn", "--target", TARGET, "--family", "E", "--transport", "both",
               *push) == 0
    assert FakeHarness.ran == ["E1_0010", "E0_0010"]
    FakeHarness.ran = []
    # a case named by id runs whatever its transport, unless --transport says otherwise
    assert run("--role", "vtn", "--target", TARGET, "--case", "e0_0010,G1_0010") == 0
    assert FakeHarness.ran == ["E0_0010", "G1_0010"]
    # a VEN under test picks its transport when it registers: both are selected by default
    install(monkeypatch, *SUITE, role=Role.VEN, capabilities=frozenset({"hook", "push"}))
    assert run("--role", "ven", "--listen", "127.0.0.1:8999") == 0
    assert FakeHarness.ran == [c.case_id for c in SUITE]


def test_options_reach_the_harness(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    pki = write_pki(tmp_path)
    install(monkeypatch, *SUITE)
    assert run("--role", "vtn", "--target", "https://127.0.0.1:9", "--cert", str(pki.ven_rsa.cert),
               "--key", str(pki.ven_rsa.key), "--ca", str(pki.ca), "--sign-key",
               str(pki.ven_ecc.key), "--sign-cert", str(pki.ven_ecc.cert), "--hook", "prompt",
               "--push-listen", "127.0.0.1:8999") == 0
    options = FakeHarness.built[-1]
    assert isinstance(options.ssl, ssl.SSLContext) and options.ssl.check_hostname
    assert options.signing_key is not None
    assert options.signing_key.fingerprint == fingerprint(pki.ven_ecc.cert_pem)
    assert (options.hook, options.push_listen) == ("prompt", ("127.0.0.1", 8999))
    # the push listener serves mutual TLS with the same material: a server context
    assert options.push_ssl is not None and options.push_ssl is not options.ssl
    assert options.push_ssl.protocol is ssl.PROTOCOL_TLS_SERVER
    assert options.push_ssl.verify_mode is ssl.CERT_REQUIRED and options.push_url == ""
    assert run("--role", "vtn", "--target", "https://127.0.0.1:9", "--cert", str(pki.ven_rsa.cert),
               "--key", str(pki.ven_rsa.key), "--ca", str(pki.ca), "--push-listen",
               "0.0.0.0:8999", "--push-url", "https://ven.example:8999") == 0
    assert FakeHarness.built[-1].push_url == "https://ven.example:8999"
    assert run("--role", "vtn", "--target", "https://127.0.0.1:9", "--cert", str(pki.ven_rsa.cert),
               "--key", str(pki.ven_rsa.key), "--ca", str(pki.ca)) == 0
    assert FakeHarness.built[-1].push_ssl is None  # no listener, no listener context
    install(monkeypatch, *SUITE, role=Role.VEN)
    assert run("--role", "ven", "--listen", "127.0.0.1:8998", "--cert", str(pki.vtn_ecc.cert),
               "--key", str(pki.vtn_ecc.key), "--ca", str(pki.ca), "--prompt") == 0
    options = FakeHarness.built[-1]
    assert options.ssl is not None and options.ssl.verify_mode is ssl.CERT_REQUIRED
    assert options.listen == ("127.0.0.1", 8998) and options.prompt
    assert options.peer == "https://127.0.0.1:8998/OpenADR2/Simple/2.0b"
    assert options.signing_key is None


def test_reports_are_written(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    install(monkeypatch, *SUITE[:2], fake_case("E1_0020", fails))
    junit, html = tmp_path / "c.xml", tmp_path / "c.html"
    assert run("--role", "vtn", "--target", TARGET, "--junit", str(junit),
               "--html", str(html)) == 1
    root = ET.parse(junit).getroot()
    assert (root.get("tests"), root.get("failures")) == ("3", "1")
    assert [s.get("name") for s in root.iter("testsuite")] == ["vtn.N", "vtn.E"]
    text = html.read_text()
    assert "E1_0020" in text and "fake.rule" in text and "the peer does the thing" in text


async def interrupted(_: Context) -> None:
    raise KeyboardInterrupt  # what Ctrl-C raises in the running case


def test_an_interrupted_campaign_reports_what_ran(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    install(monkeypatch, fake_case("E1_0010"), fake_case("E1_0020", interrupted),
            fake_case("E1_0030"))
    junit = tmp_path / "c.xml"
    assert run("--role", "vtn", "--target", TARGET, "--junit", str(junit)) == 130
    out, err = capsys.readouterr()
    assert "interrupted after 1 of 3 cases" in err
    assert [c.get("name") for c in ET.parse(junit).getroot().iter("testcase")] == ["E1_0010"]
    assert "E1_0030" not in out and FakeHarness.ran == ["E1_0010", "E1_0020"]


@pytest.mark.parametrize("argv, message", [
    (["--role", "vtn"], "--role vtn needs --target"),
    (["--role", "ven"], "--role ven needs --listen"),
    (["--role", "vtn", "--target", "vtn.example"], "is not an http:// or https:// URL"),
    (["--role", "vtn", "--target", TARGET, "--case", "Z9_9999"], "unknown case Z9_9999"),
    (["--role", "vtn", "--target", TARGET, "--family", "P"], "no case matches"),
    (["--role", "vtn", "--target", TARGET, "--listen", "127.0.0.1:1"],
     "--listen does not apply to --role vtn"),
    (["--role", "ven", "--listen", "127.0.0.1:1", "--hook", "prompt"],
     "--hook does not apply to --role ven"),
    (["--role", "vtn", "--target", TARGET, "--transport", "push"], "need --push-listen"),
    (["--role", "vtn", "--target", TARGET, "--push-url", "http://ven.example:1"],
     "--push-url needs --push-listen"),
    (["--role", "ven", "--listen", "127.0.0.1:1", "--push-url", "http://ven.example:1"],
     "--push-url does not apply to --role ven"),
    (["--role", "vtn", "--target", "https://127.0.0.1:9", "--cert", "x.crt"],
     "missing --key, --ca"),
    (["--role", "vtn", "--target", "https://127.0.0.1:9", "--cert", "/nonexistent/x.crt",
      "--key", "/nonexistent/x.key", "--ca", "/nonexistent/ca.pem"],
     "--cert /nonexistent/x.crt: cannot read"),
    (["--role", "vtn", "--target", TARGET, "--sign-key", "/nonexistent/k.pem"],
     "--sign-key needs its certificate"),
    (["--role", "vtn", "--target", TARGET, "--junit", "/nonexistent/dir/c.xml"],
     "directory /nonexistent/dir does not exist"),
])
def test_bad_options_exit_2_with_a_clear_error(argv: list[str], message: str,
                                               monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    install(monkeypatch, *SUITE)
    install_ven = campaign_cli.SUITES[Role.VTN]
    monkeypatch.setitem(campaign_cli.SUITES, Role.VEN, install_ven)
    assert run(*argv) == 2
    assert message in capsys.readouterr().err
    assert FakeHarness.ran == []


@pytest.mark.parametrize("argv, message", [
    (["--family", "X"], "unknown family 'X'"),
    (["--listen", "nowhere"], "is not HOST:PORT"),
    (["--timeout", "0"], "is not a positive number of seconds"),
    (["--transport", "carrier-pigeon"], "invalid choice"),
])
def test_malformed_option_values_are_usage_errors(argv: list[str], message: str,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        run("--role", "ven", *argv)
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_unusable_tls_material_and_signing_key(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    pki = write_pki(tmp_path)
    install(monkeypatch, *SUITE)
    mismatched = ["--cert", str(pki.ven_rsa.cert), "--key", str(pki.ven_ecc.key),
                  "--ca", str(pki.ca)]
    assert run("--role", "vtn", "--target", "https://127.0.0.1:9", *mismatched) == 2
    assert "is not usable" in capsys.readouterr().err
    assert run("--role", "vtn", "--target", TARGET, "--sign-key", str(pki.ven_ecc.key),
               "--sign-cert", str(pki.ven_rsa.cert)) == 2
    assert "does not belong to the certificate" in capsys.readouterr().err
    assert FakeHarness.built == []


def test_a_harness_that_cannot_start_or_a_bad_hook_exits_2(monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]
                                                           ) -> None:
    install(monkeypatch, *SUITE, harness=BrokenHarness)
    assert run("--role", "vtn", "--target", TARGET) == 2
    assert "Address already in use" in capsys.readouterr().err

    def refuses(options: campaign_cli.Options) -> FakeHarness:
        raise ValueError(f"bad hook {options.hook!r}")
    monkeypatch.setitem(campaign_cli.SUITES, Role.VTN,
                        lambda: campaign_cli.Suite(SUITE, refuses))
    assert run("--role", "vtn", "--target", TARGET, "--hook", "nonsense") == 2
    assert "bad hook 'nonsense'" in capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (["--push-listen", "0.0.0.0:8999"], ("binds every interface (0.0.0.0), which is no "
                                         "address a VTN can push to: give push_url (--push-url "
                                         "BASE)")),
    (["--push-listen", "[::]:8999"], "binds every interface (::)"),
    (["--push-listen", "0.0.0.0:8999", "--push-url", "ven.example:8999"],
     "is not an http:// or https:// URL"),
    # the TLS listener and the push URL both reach the harness: a plain URL for it is refused
    (["--push-listen", "0.0.0.0:8999", "--push-url", "http://ven.example:8999", "--tls"],
     "must be https://"),
])
def test_a_push_address_the_vtn_cannot_reach_is_a_usage_error(
        extra: list[str], message: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Checked by the real VTN-role harness (no fake in SUITES); nothing starts or runs."""
    if "--tls" in extra:
        pki = write_pki(tmp_path)
        extra = extra[:-1] + ["--cert", str(pki.ven_rsa.cert), "--key", str(pki.ven_rsa.key),
                              "--ca", str(pki.ca)]
    assert run("--role", "vtn", "--target", "https://127.0.0.1:9", "--case", "E0_0010",
               *extra) == 2
    err = capsys.readouterr().err
    assert message in err and "E0_0010" not in err


def test_list_prints_the_case_table(monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    install(monkeypatch, *SUITE)
    ven_cases = (fake_case("N1_0500", family=Family.N),)
    install(monkeypatch, *ven_cases, role=Role.VEN)
    assert cli.main(["campaign", "list"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[2:]]
    assert [(r[0], r[1]) for r in rows] == \
        [("vtn", c.case_id) for c in SUITE] + [("ven", c.case_id) for c in ven_cases]
    for row, c in zip(rows, SUITE):
        assert row[2:4] == [c.family.value, c.transport.value]
        assert row[-1] == (",".join(sorted(c.needs)) or "-")
    assert cli.main(["campaign", "list", "--role", "vtn", "--family", "N"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[2:]]
    assert [r[1] for r in rows] == ["N1_0010"]


# --- the real role modules, end to end through the command line ---------------------------

async def _cli(*argv: str) -> int:
    return await asyncio.to_thread(cli.main, ["campaign", "run", *argv])


async def test_our_vtn_through_the_command_line(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    junit = tmp_path / "vtn.xml"
    picked = ["N1_0010", "N1_0020", "E1_0010"]
    async with running_vtn(poll_freq=timedelta(seconds=1)) as vtn:
        code = await _cli("--role", "vtn", "--target", vtn.oadr_url, "--case", ",".join(picked),
                          "--hook", f"api:{vtn.url}/api", "--timeout", "30",
                          "--junit", str(junit))
    out = capsys.readouterr().out
    assert code == 0, out
    cases = ET.parse(junit).getroot().iter("testcase")
    assert {(c.get("name"), len(list(c))) for c in cases} == {(i, 1) for i in picked}  # system-out


async def test_our_tls_vtn_pushes_through_the_command_line(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]
                                                          ) -> None:
    """--cert/--key/--ca with --push-listen: the listener serves mutual TLS with --cert, which
    the VTN pins (the certificate the VEN registered with) and reaches at an https address."""
    pki = write_pki(tmp_path)
    junit = tmp_path / "push.xml"
    picked = ["N0_0020", "E0_0010"]
    push = PushConfig(tls=PushTls(cert=pki.vtn_rsa.cert, key=pki.vtn_rsa.key, ca=pki.ca))
    async with running_vtn(ssl_context=server_context(pki.vtn_rsa.cert, pki.vtn_rsa.key, pki.ca),
                           poll_freq=timedelta(seconds=1), push=push) as vtn:
        code = await _cli("--role", "vtn", "--target", vtn.oadr_url, "--case", ",".join(picked),
                          "--cert", str(pki.ven_rsa.cert), "--key", str(pki.ven_rsa.key),
                          "--ca", str(pki.ca), "--push-listen", f"127.0.0.1:{free_port()}",
                          "--hook", f"api:{vtn.url}/api", "--timeout", "30",
                          "--junit", str(junit))
    out = capsys.readouterr().out
    assert code == 0, out
    outputs = {c.get("name"): c.findtext("system-out") or ""
               for c in ET.parse(junit).getroot().iter("testcase")}
    assert set(outputs) == set(picked)
    assert "https://127.0.0.1:" in outputs["N0_0020"]  # the transport address it registered
    assert "push/EiEvent" in outputs["E0_0010"]  # the event came through the TLS listener


async def test_a_broken_vtn_fails_through_the_command_line(
        capsys: pytest.CaptureFixture[str]) -> None:
    async def garbage(_: web.Request) -> web.Response:
        return web.Response(status=500, body=b"<oops>\x1b[2J")
    app = web.Application()
    app.router.add_post("/{tail:.*}", garbage)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/OpenADR2/Simple/2.0b"
    try:
        code = await _cli("--role", "vtn", "--target", url, "--family", "N", "--timeout", "5")
    finally:
        await runner.cleanup()
    out = capsys.readouterr().out
    assert code == 1 and out.splitlines()[-1] == "FAILED"
    assert "\x1b" not in out


async def test_our_ven_through_the_command_line(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    html = tmp_path / "ven.html"
    campaign_run = asyncio.create_task(_cli(
        "--role", "ven", "--listen", f"127.0.0.1:{port}", "--case", "N1_0010,E1_0010",
        "--timeout", "30", "--html", str(html)))
    for _ in range(100):  # bounded: the harness listens within moments
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.1)
            continue
        writer.close()
        break
    url = f"http://127.0.0.1:{port}/OpenADR2/Simple/2.0b"
    assert url in capsys.readouterr().err  # the operator is told where to point the VEN
    async with running_fleet([ven_spec(url, "ven-cli")]):
        code = await asyncio.wait_for(campaign_run, 120)
    out = capsys.readouterr().out
    assert code == 0, out
    assert [line.split()[:4] for line in out.splitlines() if line.startswith(("N1_", "E1_"))] == \
        [["N1_0010", "N", "pull", "pass"], ["E1_0010", "E", "pull", "pass"]]
    assert "N1_0010" in html.read_text()
