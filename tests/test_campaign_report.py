"""Campaign outputs from constructed results: terminal summary, progress, JUnit XML, HTML."""

from __future__ import annotations

import io
import xml.etree.ElementTree as ET
from collections import Counter
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser

from campaign.html import html_report
from campaign.junit import junit_xml
from campaign.model import (
    Case,
    Direction,
    Exchange,
    Failure,
    Family,
    Result,
    Role,
    Transport,
    Verdict,
)
from campaign.progress import Progress
from campaign.report import (
    BODY_DISPLAY_LIMIT,
    CampaignRun,
    passed,
    pretty_body,
    summary,
    totals,
)

T0 = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
HOSTILE = (b'<oadrPayload><script>alert("x")</script><a href="javascript:x">'
           b'<img src=x onerror=alert(1)>]]>\x00\x1b[31m\xff\xfe</a></oadrPayload>')
XXE = (b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
       b'<r>&e;</r>')


async def _never(_: object) -> None:
    raise AssertionError("reports never run a case")


def case(case_id: str, family: Family = Family.E, transport: Transport = Transport.PULL) -> Case:
    return Case(case_id=case_id, family=family, role=Role.VTN, transport=transport,
                title=f"title of {case_id}", intent=f"intent of {case_id}", run=_never)


def exchange(body: bytes, direction: Direction = Direction.RECEIVED, endpoint: str = "EiEvent",
             status: int | None = 200) -> Exchange:
    return Exchange(T0, direction, endpoint, body, status)


def result(c: Case, verdict: Verdict, *failures: Failure, note: str = "",
           transcript: tuple[Exchange, ...] = ()) -> Result:
    return Result(case=c, verdict=verdict, failures=list(failures),
                  transcript=list(transcript), seconds=1.25, note=note)


def sample() -> tuple[Result, ...]:
    return (
        result(case("N1_0010", Family.N), Verdict.PASS,
               transcript=(exchange(b"<a><b>1</b></a>", Direction.SENT, status=None),)),
        result(case("N1_0020", Family.N), Verdict.FAIL,
               Failure("registration.poll_freq", "a pull VEN gets a poll frequency", "none"),
               Failure("xsd", "valid", "invalid"), transcript=(exchange(HOSTILE),)),
        result(case("E1_0010"), Verdict.ERROR, note="TimeoutError: no answer"),
        result(case("E0_0010", transport=Transport.PUSH), Verdict.NOT_RUN, note="needs push"),
        result(case("E1_0020"), Verdict.PASS),
        result(case("R1_0010", Family.R), Verdict.FAIL,
               Failure("<rule>", "<expected & more>", '"observed" <script>x</script>'),
               transcript=(exchange(XXE, endpoint="EiReport<script>"),)),
    )


def campaign(results: tuple[Result, ...]) -> CampaignRun:
    return CampaignRun(role=Role.VTN, peer="http://127.0.0.1:9/<x>", started=T0,
                       finished=T0 + timedelta(seconds=9), results=results)


def test_summary_lists_every_case_and_totals_per_family_and_verdict() -> None:
    results = sample()
    text = summary(campaign(results))
    lines = text.splitlines()
    for r in results:
        row = next(line for line in lines if line.startswith(r.case.case_id + " "))
        assert r.verdict.value in row.split()
        assert row.endswith(r.failures[0].rule if r.failures else r.note)
    expected: dict[Family, Counter[Verdict]] = {}
    for r in results:
        expected.setdefault(r.case.family, Counter())[r.verdict] += 1
    header = next(i for i, line in enumerate(lines) if line.startswith("family "))
    columns = lines[header].split()
    for line in lines[header + 2:header + 2 + len(expected) + 1]:
        name, *counts = line.split()
        got = dict(zip(columns[1:], map(int, counts)))
        want = Counter(r.verdict for r in results) if name == "all" else expected[Family(name)]
        assert got == {**{v.value: want[v] for v in Verdict}, "total": want.total()}
    assert "needs push" in text.split("not run:")[1]
    assert lines[-1] == "FAILED"


def test_not_run_cases_do_not_fail_a_campaign() -> None:
    ok = (result(case("E1_0010"), Verdict.PASS), result(case("E0_0010"), Verdict.NOT_RUN))
    assert passed(ok) and summary(campaign(ok)).splitlines()[-1] == "PASSED"
    for bad in (Verdict.FAIL, Verdict.ERROR):
        assert not passed((*ok, result(case("E1_0030"), bad)))


def test_terminal_text_neutralises_control_characters_from_the_peer() -> None:
    r = result(case("E1_0010"), Verdict.ERROR, note="ClientError: \x1b]0;owned\x07\x1b[2J")
    text = summary(campaign((r,)))
    out = io.StringIO()
    progress = Progress(1, out, tty=False)
    progress.finished(r)
    for shown in (text, out.getvalue()):
        assert "\x1b" not in shown and "\x07" not in shown and "\\x1b]0;owned" in shown


def test_progress_is_one_line_per_case_off_a_terminal() -> None:
    out = io.StringIO()
    results = sample()
    progress = Progress(len(results), out, tty=False)
    for r in results:
        progress.started(r.case)
        progress.finished(r)
    progress.close()
    lines = out.getvalue().splitlines()
    assert [line.split()[:3] for line in lines] == [
        [f"[{i}/{len(results)}]", r.case.case_id, r.verdict.value]
        for i, r in enumerate(results, 1)]


def test_progress_rewrites_one_line_on_a_terminal() -> None:
    out = io.StringIO()
    results = sample()
    progress = Progress(len(results), out, tty=True)
    for r in results:
        progress.started(r.case)
        progress.finished(r)
    assert "\n" not in out.getvalue() and out.getvalue().count("\r") == 2 * len(results)
    assert f"{len(results)}/{len(results)}" in out.getvalue().rsplit("\r", 1)[1]
    progress.close()
    assert out.getvalue().endswith("\n")


def test_junit_has_one_suite_per_family_with_consistent_counts() -> None:
    results = sample()
    root = ET.fromstring(junit_xml(campaign(results)))
    assert root.tag == "testsuites"
    suites = root.findall("testsuite")
    assert [s.get("name") for s in suites] == [f"vtn.{f.value}" for f in totals(results)]
    for suite, (family, counts) in zip(suites, totals(results).items()):
        cases = suite.findall("testcase")
        assert [c.get("name") for c in cases] == \
            [r.case.case_id for r in results if r.case.family is family]
        assert int(suite.get("tests", "")) == len(cases) == counts.total()
        for attr, tag, verdict in (("failures", "failure", Verdict.FAIL),
                                   ("errors", "error", Verdict.ERROR),
                                   ("skipped", "skipped", Verdict.NOT_RUN)):
            assert int(suite.get(attr, "")) == counts[verdict] == \
                sum(c.find(tag) is not None for c in cases)
    assert int(root.get("tests", "")) == len(results)
    assert int(root.get("failures", "")) == sum(r.verdict is Verdict.FAIL for r in results)


def test_junit_carries_rule_expectation_observed_and_transcript() -> None:
    results = sample()
    root = ET.fromstring(junit_xml(campaign(results)))
    by_name = {c.get("name"): c for c in root.iter("testcase")}
    failed = by_name["N1_0020"]
    failure = failed.find("failure")
    assert failure is not None and failure.get("message") == "registration.poll_freq"
    assert "a pull VEN gets a poll frequency" in (failure.text or "")
    assert "[xsd]" in (failure.text or "")
    out = failed.findtext("system-out") or ""
    # the hostile body survives as text, its XML-illegal characters written as escapes
    assert '<script>alert("x")</script>' in out and "\\x00" in out and "\\x1b" in out
    skipped = by_name["E0_0010"].find("skipped")
    assert skipped is not None and skipped.get("message") == "needs push"
    error = by_name["E1_0010"].find("error")
    assert error is not None and error.get("message") == "TimeoutError: no answer"


class _Page(HTMLParser):
    """Collects what matters about the report's markup."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: Counter[str] = Counter()
        self.attrs: list[tuple[str, str | None]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags[tag] += 1
        self.attrs += attrs

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def page(results: tuple[Result, ...]) -> tuple[str, _Page]:
    text = html_report(campaign(results))
    parsed = _Page()
    parsed.feed(text)
    return text, parsed


def test_html_escapes_everything_the_peer_sent() -> None:
    text, parsed = page(sample())
    # no markup of the peer's became markup of the page
    assert parsed.tags["script"] == 0 and parsed.tags["img"] == 0
    assert not any(name.startswith("on") or name == "src" for name, _ in parsed.attrs)
    assert "\x00" not in text and "\x1b" not in text
    joined = "".join(parsed.text)
    assert '<script>alert("x")</script>' in joined  # shown as text
    assert '"observed" <script>x</script>' in joined and "<expected & more>" in joined
    # the external entity was neither resolved nor fetched: the body is shown as sent
    assert "root:" not in joined and 'SYSTEM "file:///etc/passwd"' in joined


def test_html_is_self_contained_and_accessible() -> None:
    results = sample()
    text, parsed = page(results)
    hrefs = [v for name, v in parsed.attrs if name == "href"]
    assert parsed.tags["link"] == 0 and parsed.tags["script"] == 0
    assert all(h is not None and h.startswith("#") for h in hrefs)
    assert "default-src 'none'" in text
    # verdicts are words, not only colours: every case row says its verdict
    verdict_cells = [d.strip() for d in parsed.text]
    for r in results:
        assert r.case.case_id in verdict_cells
    assert Counter(c for c in verdict_cells if c in {v.value for v in Verdict}) == \
        Counter(r.verdict.value for r in results) + Counter(
            r.verdict.value for r in results if r.verdict in (Verdict.FAIL, Verdict.ERROR))
    assert parsed.tags["th"] > 0 and parsed.tags["caption"] == parsed.tags["table"]
    # each failure's rule, expectation and observation, and its transcript, are in the page
    for r in results:
        for f in r.failures:
            for part in (f.rule, f.expectation):
                assert part in "".join(parsed.text)
    assert all(f"#case-{r.case.case_id}" in hrefs for r in results
               if r.verdict in (Verdict.FAIL, Verdict.ERROR))


def test_bodies_are_pretty_printed_and_bounded() -> None:
    assert pretty_body(b"<a><b>1</b><c/></a>").splitlines() == ["<a>", "  <b>1</b>", "  <c/>",
                                                                "</a>"]
    assert pretty_body(b"not xml \xff") == "not xml \ufffd"
    huge = b"<a>" + b"x" * (2 * BODY_DISPLAY_LIMIT) + b"</a>"
    shown = pretty_body(huge)
    assert len(shown) < BODY_DISPLAY_LIMIT + 100
    assert f"{len(huge) - BODY_DISPLAY_LIMIT} more bytes not shown" in shown
