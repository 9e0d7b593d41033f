"""`adrgate ven --fleet FILE` as a real process, and `adrgate ven status|signals` beside it."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from adrgate import cli
from adrgate.logs import configure as configure_logging
from vtn.records import VenStatus

from tests.venkit import PROGRAM
from tests.vtnkit import api, running_vtn, simple_event, wait_for

FLEET = """
[defaults]
vtn_url = "{url}"
market_contexts = ["{program}"]
cancel_on_shutdown = true

[[ven]]
name = "agg-cli"
resources = [{{ id = "battery-1", class = "battery", rated_kw = 100, baseline_kw = 60, flexible_kw = 50 }}]
"""


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any]:
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, json.loads(out.out) if code == 0 else out.err


async def test_fleet_process_status_signals_and_clean_shutdown(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async with running_vtn(poll_freq=timedelta(seconds=1)) as vtn:
        fleet = tmp_path / "fleet.toml"
        fleet.write_text(FLEET.format(url=vtn.oadr_url, program=PROGRAM))
        data = str(tmp_path / "data")
        proc = subprocess.Popen([sys.executable, "-m", "adrgate.cli", "ven", "--fleet", str(fleet),
                                 "--data-dir", data], stderr=subprocess.PIPE,
                                env={**os.environ, "ADRGATE_LOG_FORMAT": "json"})
        try:
            ven = await wait_for(lambda: next((v for v in vtn.store.list_vens()
                                               if v.is_registered), None), what="registration")
            status, created = await api(vtn, "POST", "/api/events", simple_event(
                targets={"ven_ids": [ven.ven_id]}))
            assert status == 201

            def status_row() -> Any:
                code, rows = run_cli(capsys, "ven", "status", "--fleet", str(fleet),
                                     "--data-dir", data)
                assert code == 0, rows
                row = rows[0]
                return row if row["last_poll"] and row["events"] else None

            row = await wait_for(status_row, what="status with last poll and the event")
            assert (row["name"], row["ven_id"], row["state"]) == ("agg-cli", ven.ven_id, "ready")
            assert row["events"][0]["event_id"] == created["event_id"]
            assert {r["report_name"] for r in row["requests"]} == {"TELEMETRY_USAGE",
                                                                    "TELEMETRY_STATUS"}
            code, signals = run_cli(capsys, "ven", "signals", "--fleet", str(fleet),
                                    "--data-dir", data)
            assert code == 0
            assert [(s["ven"], s["event_id"], s["signal_name"]) for s in signals] == [
                ("agg-cli", created["event_id"], "SIMPLE")]
        finally:
            proc.send_signal(signal.SIGTERM)
            returncode = await asyncio.to_thread(proc.wait, 30)
        assert returncode == 0, proc.stderr.read().decode()[-2000:] if proc.stderr else ""
        # cancel_on_shutdown: the VEN left the VTN on its way out
        assert vtn.store.get_ven(ven.ven_id).status is VenStatus.CANCELLED  # type: ignore[union-attr]
        assert proc.stderr is not None
        lines = [json.loads(line) for line in proc.stderr.read().decode().splitlines()]
        mine = [line for line in lines if line.get("ven") == "agg-cli"]
        assert any("registered" in line["message"] for line in mine), lines[-5:]
        assert any(line.get("event_id") == created["event_id"] for line in mine)


def test_ven_needs_a_fleet_or_an_action(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["ven"])
    assert exc.value.code == 2
    assert "--fleet" in capsys.readouterr().err


def test_fleet_file_errors_name_the_key(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    fleet = tmp_path / "fleet.toml"
    fleet.write_text('[[ven]]\nname = "a"\nvtn_url = "http://127.0.0.1:1"\npoll_intervl = "10s"\n')
    assert cli.main(["ven", "--fleet", str(fleet), "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "ven[0].poll_intervl" in err and "poll_interval" in err


def test_text_logs_carry_the_ven(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    before = root.handlers[:], root.level
    configure_logging("INFO", "text")
    try:
        logging.LoggerAdapter(logging.getLogger("adrgate.ven"), {"ven": "agg-7"}).info("polled")
        assert "adrgate.ven [ven=agg-7]: polled" in capsys.readouterr().err
    finally:  # the handler writes to this test's captured stderr: put pytest's back
        root.handlers[:], level = before
        root.setLevel(level)
