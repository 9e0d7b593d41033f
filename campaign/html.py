"""A self-contained HTML report: one file, inline CSS, no script, no external asset.

Peer messages are untrusted: every piece of text goes through `html.escape`, and the page's
Content-Security-Policy forbids scripts and every fetch, so a message that slipped past escaping
still could not run or call home. Verdicts are words in every cell; colour only repeats them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from html import escape
from typing import Final

from .model import Failure, Family, Result, Transport, Verdict
from .report import (
    FAMILY_NAMES,
    CampaignRun,
    first_problem,
    passed,
    pretty_body,
    xml_safe,
)

_CSS: Final = """
body{font:15px/1.45 system-ui,sans-serif;margin:1.5rem auto;max-width:75rem;padding:0 1rem;
color:#1b1b1b;background:#fff}
table{border-collapse:collapse;margin:.5rem 0 1.5rem;width:100%}
th,td{border:1px solid #c8c8c8;padding:.3rem .5rem;text-align:left;vertical-align:top}
thead th{background:#f0f0f0}
tbody th[scope=rowgroup]{background:#e8eef6}
pre{margin:0;white-space:pre;overflow-x:auto;max-width:36rem;font-size:13px}
.pass{background:#d9f2dc}.fail{background:#f8d4d4}.error{background:#fbe5c8}
.not-run{background:#ececec}
.verdict{font-weight:600;text-transform:uppercase}
article{border-top:2px solid #999;margin-top:2rem}
"""

_CSP: Final = "default-src 'none'; style-src 'unsafe-inline'"


def _e(text: object) -> str:
    return escape(xml_safe(str(text)), quote=True)


def _anchor(result: Result) -> str:
    return "case-" + "".join(c if c.isalnum() or c in "-_" else "-" for c in result.case.case_id)


def _verdict_cell(verdict: Verdict) -> str:
    return f'<td class="{verdict.value} verdict">{_e(verdict.value)}</td>'


def _worst(counts: Counter[Verdict]) -> Verdict:
    for v in (Verdict.FAIL, Verdict.ERROR, Verdict.PASS):
        if counts[v]:
            return v
    return Verdict.NOT_RUN


def _matrix(results: tuple[Result, ...]) -> str:
    families = [f for f in Family if any(r.case.family is f for r in results)]
    transports = [t for t in Transport if any(r.case.transport is t for r in results)]
    rows = []
    for f in families:
        cells = []
        for t in transports:
            counts = Counter(r.verdict for r in results
                             if r.case.family is f and r.case.transport is t)
            text = ", ".join(f"{n} {v.value}" for v, n in counts.items()) or "no case"
            cls = _worst(counts).value if counts else ""
            cells.append(f'<td class="{cls}">{_e(text)}</td>')
        rows.append(f'<tr><th scope="row">{_e(f.value)} ({_e(FAMILY_NAMES[f])})</th>'
                    f'{"".join(cells)}</tr>')
    head = "".join(f'<th scope="col">{_e(t.value)}</th>' for t in transports)
    return ('<table><caption>Verdicts per family and transport</caption>'
            f'<thead><tr><th scope="col">family</th>{head}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table>')


def _cases(results: tuple[Result, ...]) -> str:
    groups = []
    for f in Family:
        rows = []
        for r in (r for r in results if r.case.family is f):
            case_id = _e(r.case.case_id)
            if r.verdict in (Verdict.FAIL, Verdict.ERROR):
                case_id = f'<a href="#{_anchor(r)}">{case_id}</a>'
            rows.append(f'<tr><th scope="row">{case_id}</th><td>{_e(r.case.transport.value)}</td>'
                        f'<td>{_e(r.case.title)}</td>{_verdict_cell(r.verdict)}'
                        f'<td>{r.seconds:.1f}</td><td>{_e(first_problem(r))}</td></tr>')
        if rows:
            groups.append(f'<tbody><tr><th scope="rowgroup" colspan="6">{_e(f.value)}: '
                          f'{_e(FAMILY_NAMES[f])}</th></tr>{"".join(rows)}</tbody>')
    return ('<table><caption>Every case, grouped by family</caption><thead><tr>'
            + "".join(f'<th scope="col">{h}</th>' for h in
                      ("case", "transport", "title", "verdict", "seconds",
                       "first failing rule / note"))
            + f'</tr></thead>{"".join(groups)}</table>')


def _failures(failures: Iterable[Failure]) -> str:
    rows = "".join(f'<tr><th scope="row">{_e(f.rule)}</th><td>{_e(f.expectation)}</td>'
                   f'<td>{_e(f.observed or "-")}</td></tr>' for f in failures)
    return ('<table><caption>Failed expectations</caption><thead><tr><th scope="col">rule</th>'
            '<th scope="col">expectation</th><th scope="col">observed</th></tr></thead>'
            f'<tbody>{rows}</tbody></table>') if rows else ""


def _transcript(result: Result) -> str:
    if not result.transcript:
        return "<p>No message was exchanged.</p>"
    rows = "".join(
        f'<tr><th scope="row">{i}</th><td>{_e(ex.at.isoformat(timespec="milliseconds"))}</td>'
        f'<td>{_e(ex.direction.value)}</td><td>{_e(ex.endpoint)}</td>'
        f'<td>{_e(ex.status if ex.status is not None else "-")}</td>'
        f'<td><pre>{_e(pretty_body(ex.body))}</pre></td></tr>'
        for i, ex in enumerate(result.transcript, 1))
    head = "".join(f'<th scope="col">{h}</th>' for h in
                   ("#", "time (UTC)", "direction", "endpoint", "HTTP status", "message"))
    return (f'<table><caption>Message transcript ({len(result.transcript)} messages; '
            f'"sent" is harness to peer)</caption><thead><tr>{head}</tr></thead>'
            f'<tbody>{rows}</tbody></table>')


def _detail(r: Result) -> str:
    note = f"<p><strong>Note:</strong> {_e(r.note)}</p>" if r.note else ""
    return (f'<article id="{_anchor(r)}"><h3>{_e(r.case.case_id)}: {_e(r.case.title)} '
            f'(<span class="{r.verdict.value} verdict">{_e(r.verdict.value)}</span>)</h3>'
            f'<p>Family {_e(r.case.family.value)}, {_e(r.case.transport.value)}. '
            f'Intent: {_e(r.case.intent)}</p>{note}{_failures(r.failures)}'
            f'<h4>Transcript</h4>{_transcript(r)}</article>')


def html_report(run: CampaignRun) -> str:
    overall = "PASSED" if passed(run.results) else "FAILED"
    title = f"adrgate campaign against {run.subject}: {overall}"
    counts = Counter(r.verdict for r in run.results)
    bad = [r for r in run.results if r.verdict in (Verdict.FAIL, Verdict.ERROR)]
    details = "".join(_detail(r) for r in bad) or "<p>No case failed or erred.</p>"
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<title>{_e(title)}</title><style>{_CSS}</style></head><body><main>'
        f'<h1>Interoperability campaign: {_e(run.role.value.upper())} under test</h1>'
        f'<p>Tested {_e(run.subject)}. Started {_e(run.started.isoformat(timespec="seconds"))}'
        f', {(run.finished - run.started).total_seconds():.1f} s. '
        f'Overall: <strong>{overall}</strong> ({len(run.results)} cases: '
        + _e(", ".join(f"{counts[v]} {v.value}" for v in Verdict)) + ').</p>'
        f'<section><h2>Matrix</h2>{_matrix(run.results)}</section>'
        f'<section><h2>Cases</h2>{_cases(run.results)}</section>'
        f'<section><h2>Failures and errors</h2>{details}</section>'
        '</main></body></html>\n')
