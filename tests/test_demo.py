"""`adrgate demo` as a user runs it: the whole scripted day in a subprocess, then every stage
checked against the databases it wrote (read here with plain SQL, not the demo's own code), and
the summary it printed checked against the same numbers."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from adrgate import cli
from adrgate.services import free_port

CMB_PROGRAM = "http://cmb.example/programs/override"


def demo(*argv: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "adrgate.cli", "demo", *argv],
                          capture_output=True, text=True, timeout=timeout, check=False,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})


@pytest.fixture(scope="module")
def day(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    data = tmp_path_factory.mktemp("demo") / "data"
    run = demo("--fast", "--devices", "20", "--port", str(free_port()), "--data-dir", str(data))
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    yield data, run.stdout


def query(db: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql, args).fetchall()


def events(data: Path) -> dict[str, dict[str, Any]]:
    """The VTN's events by the name of their first signal (the CMB's own by its program)."""
    out = {}
    for event_id, body in query(data / "vtn.db", "SELECT event_id, body FROM event"):
        event = json.loads(body)
        key = "OVERRIDE" if event["market_context"] == CMB_PROGRAM \
            else event["signals"][0]["signal_name"]
        out[key] = {"event_id": event_id, **event}
    return out


def plans(data: Path, event_id: str) -> list[dict[str, Any]]:
    """Every aggregator's plans for the event, with their device, from its bridge database."""
    out = []
    for db in sorted(data.glob("*.db")):
        if db.name == "vtn.db":
            continue
        for plan_id, status, created, requested, dispatch in query(
                db, "SELECT plan_id, status, created, requested_kw, dispatch FROM bridge_plan "
                    "WHERE event_id = ?", event_id):
            d = json.loads(dispatch)
            out.append({"plan_id": plan_id, "status": status, "created": created,
                        "requested_kw": requested, "aggregator": db.stem, **d})
    return out


def utc(text: str) -> datetime:
    """A stored time (SQLite keeps them naive, in UTC) or an ISO 8601 one."""
    t = datetime.fromisoformat(text)
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def deliveries(data: Path, event_id: str) -> list[tuple[Any, ...]]:
    return query(data / "vtn.db", "SELECT ven_id, acked_mod, opt_type FROM delivery "
                                  "WHERE event_id = ? AND NOT removed", event_id)


def registry(data: Path) -> dict[str, dict[str, Any]]:
    return {device_id: {"owner": owner, "area": area, "channel": channel}
            for device_id, owner, area, channel in query(
                data / "vtn.db", "SELECT device_id, json_extract(body, '$.owner'), "
                                 "json_extract(body, '$.network_area'), "
                                 "json_extract(body, '$.channel') FROM cmb_device")}


def test_prices_reach_all_three_aggregators(day: tuple[Path, str]) -> None:
    data, _ = day
    price = events(data)["ELECTRICITY_PRICE"]
    assert len(price["signals"][0]["intervals"]) == 48
    answered = deliveries(data, price["event_id"])
    assert len(answered) == 3 and all(acked == 0 and opt == "optIn"
                                      for _, acked, opt in answered)
    planned = {p["aggregator"] for p in plans(data, price["event_id"])}
    assert planned == {"battery-pv", "ev-cpo", "hot-water"}


def test_the_constraint_reaches_only_the_areas_devices(day: tuple[Path, str]) -> None:
    data, _ = day
    constraint = events(data)["LOAD_CONTROL"]
    devices = registry(data)
    north = {d for d, r in devices.items() if r["area"] == "north"}
    planned = {p["device"]["device_id"] for p in plans(data, constraint["event_id"])}
    assert planned == north
    assert len(north) < len(devices)  # the south is there, and untouched


def test_the_dispatch_window_is_redispatched_after_failures(day: tuple[Path, str]) -> None:
    data, _ = day
    script = json.loads((data / "summary.json").read_text())["script"]
    failed, failed_at = set(script["failed"]), utc(script["failed_at"])
    assert failed
    latest: dict[str, dict[str, Any]] = {}
    for p in sorted(plans(data, events(data)["LOAD_DISPATCH"]["event_id"]),
                    key=lambda p: p["plan"]["sequence"]):
        latest[p["device"]["device_id"]] = p
    # the failed devices' shares were withdrawn, and the others' plans revised after the failure
    assert failed <= set(latest)
    assert all(not latest[d]["requested_kw"] for d in failed)
    assert any(utc(p["created"]) >= failed_at and p["requested_kw"]
               for d, p in latest.items() if d not in failed)


def test_the_attack_is_caught_and_capped_through_the_metering_path(
        day: tuple[Path, str]) -> None:
    data, _ = day
    vtn = data / "vtn.db"
    alerts = query(vtn, "SELECT json_extract(body, '$.monitor'), aggregator FROM cmb_alert")
    assert ("same_minute_share", "hot-water") in alerts
    (status, results), = query(
        vtn, "SELECT status, results FROM cmb_override WHERE json_extract(body, '$.created_by') LIKE 'auto:same_minute_share%'")
    assert status == "lifted"
    heaters = {d for d, r in registry(data).items()
               if r["owner"] == "hot-water" and r["channel"] == "sapc"}
    sapc = [r for r in json.loads(results) if r["path"] == "sapc"]
    assert {r["action"] for r in sapc} == {"apply", "lift"}
    assert all(set(r["reached"]) == heaters and not r["failed"] for r in sapc)
    # the aggregator's own bridge delivered the attack to the SAPCs through the DCC
    delivered = query(data / "hot-water.db",
                      "SELECT count(*) FROM bridge_channel_outcome WHERE plan_id LIKE 'attack/%' "
                      "AND json_extract(result, '$.outcome') = 'delivered'")
    assert delivered == [(len(heaters),)]


def bridge_dbs(data: Path) -> list[Path]:
    return [db for db in sorted(data.glob("*.db")) if db.name != "vtn.db"]


def acked(data: Path, plan_ids: list[str], as_of: datetime) -> Counter[str]:
    """Per channel, the commands for these plans the devices acknowledged by `as_of`."""
    wanted = set(plan_ids)
    return Counter(channel for db in bridge_dbs(data) for plan_id, channel, finished in query(
        db, "SELECT plan_id, channel, json_extract(result, '$.finished_at') "
            "FROM bridge_channel_outcome WHERE json_extract(result, '$.outcome') = 'delivered'")
        if plan_id in wanted and utc(finished) <= as_of)


def plans_where(data: Path, where: str) -> list[dict[str, Any]]:
    return [{"plan_id": plan_id, "status": status, "created": created, **json.loads(dispatch)}
            for db in bridge_dbs(data) for plan_id, status, created, dispatch in query(
                db, f"SELECT plan_id, status, created, dispatch FROM bridge_plan WHERE {where}")]


def attack_plans(data: Path) -> list[dict[str, Any]]:
    return plans_where(data, "plan_id LIKE 'attack/%'")


def test_the_summary_matches_the_databases(day: tuple[Path, str]) -> None:
    data, stdout = day
    summary = json.loads((data / "summary.json").read_text())
    by_label = {r["label"]: r for r in summary["rows"]}
    found = events(data)
    assert {r["event_id"] for r in by_label.values() if r["event_id"]} == {
        e["event_id"] for e in found.values()}
    rows = [(by_label[next(label for label, r in by_label.items()
                           if r["event_id"] == e["event_id"])], plans(data, e["event_id"]),
             deliveries(data, e["event_id"])) for e in found.values()]
    rows.append((by_label["attack (injected)"], attack_plans(data), []))
    as_of = utc(summary["as_of"])  # the devices go on after the day: later work is not counted
    for row, ps, answered in rows:
        ps = [p for p in ps if utc(p["created"]) <= as_of]
        sent = [p for p in ps if p["status"] in ("dispatched", "superseded")]
        verdicts = Counter(decision for p in ps for decision, in query(
            data / "vtn.db", "SELECT decision FROM cmb_verdict WHERE plan_id = ? "
                             "ORDER BY id DESC LIMIT 1", p["plan_id"]))
        expected = {
            "vens": len(answered), "opt_ins": sum(o == "optIn" for *_, o in answered),
            "devices": len({p["device"]["device_id"] for p in ps}),
            "sent": dict(Counter(p["device"]["channel"] for p in sent)),
            "acked": dict(acked(data, [p["plan_id"] for p in ps], as_of)),
            "accepted": verdicts["accepted"], "rejected": verdicts["rejected"]}
        assert {k: row[k] for k in expected} == expected, row["label"]
        assert expected["acked"], row["label"]  # the devices acknowledged commands
        printed = next(line for line in stdout.splitlines() if line.startswith(row["label"]))
        cells = printed.split()
        assert str(expected["vens"]) in cells and str(expected["devices"]) in cells, printed
        assert f"{expected['accepted']}/{expected['rejected']}" in printed, printed
        for channel, n in expected["sent"].items():
            assert f"{channel}:{expected['acked'].get(channel, 0)}/{n}" in cells, printed
    assert f"CMB alerts: {len(query(data / 'vtn.db', 'SELECT 1 FROM cmb_alert'))}" in stdout


def test_the_aggregator_plans_after_the_attack_follow_its_sequence(
        day: tuple[Path, str]) -> None:
    data, stdout = day
    vtn = data / "vtn.db"
    injected = {p["plan"]["device_id"]: p["plan"]["sequence"] for p in attack_plans(data)}
    assert injected
    # the attack went through the aggregator's own bridge: its plans are numbered after it
    later = [p for p in plans_where(data, "plan_id NOT LIKE 'attack/%'")
             if p["plan"]["device_id"] in injected
             and p["plan"]["sequence"] >= injected[p["plan"]["device_id"]]]
    assert later and all(p["plan"]["sequence"] > injected[p["plan"]["device_id"]]
                         for p in later)
    # and the CMB accepts them: none refused as a replay of a sequence it has seen
    verdicts = [query(vtn, "SELECT decision, body FROM cmb_verdict WHERE plan_id = ? "
                           "ORDER BY id DESC LIMIT 1", p["plan_id"]) for p in later]
    assert all(v and v[0][0] == "accepted" for v in verdicts), verdicts
    assert not query(vtn, "SELECT plan_id FROM cmb_verdict WHERE aggregator = 'hot-water' "
                          "AND body LIKE '%sequence_increasing%'")
    assert "sequence_increasing" not in stdout


def test_progress_has_a_line_per_step(day: tuple[Path, str]) -> None:
    _, stdout = day
    for step in ("day-ahead prices:", "DSO constraint:", "grid-service window:",
                 "device failures:", "compromised aggregator:", "override lifted:",
                 "end of the day"):
        assert any(step in line for line in stdout.splitlines()), step


def test_help_explains_the_scenario(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["demo", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for words in ("ELECTRICITY_PRICE", "LOAD_CONTROL", "LOAD_DISPATCH", "compromised",
                  "SRV 7.16", "--hour-seconds", "--devices", "--serve", "--port",
                  "Accelerated time"):
        assert words in text, words


def test_a_busy_port_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        run = demo("--fast", "--port", str(port), "--data-dir", str(tmp_path / "d"), timeout=60)
    assert run.returncode == 1
    assert f"port {port}" in run.stderr and "--port" in run.stderr, run.stderr
    assert "Traceback" not in run.stderr


def test_a_directory_that_is_not_demo_data_is_not_wiped(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    precious = tmp_path / "notes.txt"
    precious.write_text("keep me")
    code = cli.main(["demo", "--port", str(free_port()), "--data-dir", str(tmp_path)])
    assert code == 1
    assert "not a demo data directory" in capsys.readouterr().err
    assert precious.read_text() == "keep me"
