"""JUnit XML for CI systems: one testsuite per family, one testcase per case.

The layout is the one Jenkins, GitLab and GitHub reporters read: `testsuites` > `testsuite`
(tests, failures, errors, skipped, time) > `testcase` (classname, name, time) holding at most
one of `failure`, `error`, `skipped`, and `system-out` with the message transcript.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence

from .model import Family, Result, Verdict
from .report import CampaignRun, failure_text, transcript_text, xml_safe

_OUTCOME = {Verdict.FAIL: "failure", Verdict.ERROR: "error", Verdict.NOT_RUN: "skipped"}


def junit_xml(run: CampaignRun) -> bytes:
    role = run.role.value
    root = ET.Element("testsuites", {"name": f"adrgate campaign: {role.upper()} under test",
                                     **_counts(run.results)})
    for family in Family:
        results = [r for r in run.results if r.case.family is family]
        if not results:
            continue
        suite = ET.SubElement(root, "testsuite", {
            "name": f"{role}.{family.value}", "timestamp": run.started.isoformat(timespec="seconds"),
            "hostname": xml_safe(run.peer), **_counts(results)})
        for r in results:
            suite.append(_testcase(r, f"campaign.{role}.{family.value}.{r.case.transport.value}"))
    ET.indent(root)
    xml: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return xml


def _counts(results: Sequence[Result]) -> dict[str, str]:
    def n(v: Verdict) -> str:
        return str(sum(r.verdict is v for r in results))
    return {"tests": str(len(results)), "failures": n(Verdict.FAIL), "errors": n(Verdict.ERROR),
            "skipped": n(Verdict.NOT_RUN), "time": f"{sum(r.seconds for r in results):.3f}"}


def _testcase(r: Result, classname: str) -> ET.Element:
    case = ET.Element("testcase", classname=classname, name=r.case.case_id,
                      time=f"{r.seconds:.3f}")
    if (tag := _OUTCOME.get(r.verdict)) is not None:
        message = r.failures[0].rule if r.failures else r.note
        outcome = ET.SubElement(case, tag, message=xml_safe(message))
        if tag != "skipped":
            outcome.set("type", r.failures[0].rule if r.failures else "error")
            outcome.text = failure_text(r)
    if r.verdict is not Verdict.NOT_RUN:
        ET.SubElement(case, "system-out").text = \
            f"{xml_safe(r.case.title)}\n{xml_safe(r.case.intent)}\n\n{transcript_text(r.transcript)}"
    return case
