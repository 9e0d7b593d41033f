"""`adrgate ven --fleet FILE --bridge` as a real process, and `adrgate trace EVENT_ID` beside it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from adrgate import cli
from tests.venkit import PROGRAM
from tests.vtnkit import api, running_vtn, utcnow, wait_for

FLEET = """
[defaults]
vtn_url = "{url}"
market_contexts = ["{program}"]
response_programs = ["{program}"]
poll_interval = "1s"

[[ven]]
name = "agg-bridge"
resources = [
  {{ id = "heaters", class = "hot_water", devices = 2, rated_kw = 6, baseline_kw = 2, flexible_kw = 2 }},
  {{ id = "batteries", class = "battery", devices = 2, rated_kw = 10, baseline_kw = 1, flexible_kw = 9, export_kw = 10 }},
]
"""


def trace_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    code = cli.main(["trace", *argv])
    out = capsys.readouterr()
    assert code == 0, out.err
    return json.loads(out.out)


async def test_bridge_process_delivers_and_trace_shows_the_path(
        tmp_path: Path, redis_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    async with running_vtn(poll_freq=timedelta(seconds=1)) as vtn:
        fleet = tmp_path / "fleet.toml"
        fleet.write_text(FLEET.format(url=vtn.oadr_url, program=PROGRAM))
        data = str(tmp_path / "data")
        log = (tmp_path / "bridge.log").open("w")
        proc = subprocess.Popen(
            [sys.executable, "-m", "adrgate.cli", "ven", "--fleet", str(fleet), "--bridge",
             "--dcc", "accelerated", "--data-dir", data], stderr=log,
            env={**os.environ, "REDIS_URL": redis_url})
        try:
            ven = await wait_for(lambda: next((v for v in vtn.store.list_vens()
                                               if v.is_registered), None), timeout=30,
                                 what="registration")
            status, created = await api(vtn, "POST", "/api/events", {
                "market_context": PROGRAM,
                "dtstart": (utcnow() + timedelta(seconds=2)).isoformat(),
                "targets": {"ven_ids": [ven.ven_id]},
                "signals": [{"signal_name": "SIMPLE", "signal_type": "level",
                             "intervals": [{"duration": "PT10M", "payload": 2}]}]})
            assert status == 201, created
            event_id = created["event_id"]
            argv = (event_id, "--fleet", str(fleet), "--data-dir", data)

            def delivered() -> Any:
                path = trace_cli(capsys, *argv)
                outcomes = [o["outcome"] for p in path["plans"] for o in p["outcomes"]]
                return path if len(path["plans"]) == 4 and outcomes.count("delivered") == 4 \
                    else None

            await wait_for(delivered, timeout=60, what="every plan delivered")
            # with the VTN's view: the VTN answers on this loop, so ask from a thread
            path = await asyncio.to_thread(trace_cli, capsys, *argv, "--api", vtn.url)
        finally:
            proc.send_signal(signal.SIGTERM)
            returncode = await asyncio.to_thread(proc.wait, 30)
            log.close()
        assert returncode == 0, (tmp_path / "bridge.log").read_text()[-2000:]
    assert path["vens"][0]["ven"] == "agg-bridge" and path["vens"][0]["opt"] == "optIn"
    assert path["vtn"]["event_id"] == event_id  # the VTN's own view, through its API
    assert set(path["channels"]) == {"sapc", "battery_hub"}
    heater = next(p for p in path["plans"] if p["channel"] == "sapc")
    assert heater["steps"][0]["mode"] == "limit" and heater["steps"][0]["level"] == 0
    assert heater["random_delay_s"] == 0  # response DSR
    assert heater["outcomes"][0]["messages"] >= 4 and heater["outcomes"][0]["acknowledged"]


def test_trace_of_an_unknown_event_is_empty_not_an_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fleet = tmp_path / "fleet.toml"
    fleet.write_text(FLEET.format(url="http://127.0.0.1:1/OpenADR2/Simple/2.0b",
                                  program=PROGRAM))
    path = trace_cli(capsys, "nope", "--fleet", str(fleet), "--data-dir", str(tmp_path),
                     "--api", "http://127.0.0.1:1")
    assert (path["vens"], path["plans"], path["power"]) == ([], [], [])
    assert "error" in path["vtn"]
