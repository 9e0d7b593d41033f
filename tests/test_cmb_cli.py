"""The CMB as deployed: `adrgate vtn` with ADRGATE_CMB beside `adrgate ven --bridge` submitting
plans to it; `adrgate cmb override create` caps the aggregator's SAPCs through the fleet's DCC
(as the Load Controller) and with a top-priority OpenADR event; `lift` undoes both."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from adrgate import cli
from adrgate.services import free_port
from bridge.inventory import devices_of
from tests.test_bridge_cli import FLEET
from tests.venkit import PROGRAM
from tests.vtnkit import utcnow, wait_for
from ven.fleet import load_fleet
from vtn.cmb.signing import public_pem

CMB_EUI = "00-CB-00-00-00-00-00-02"


def pem(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return path


@contextmanager
def process(argv: list[str], log: Path, env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "adrgate.cli", *argv], stderr=out,
                                env={**os.environ, **env})
        try:
            yield proc
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0, log.read_text()[-3000:]


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    code = cli.main(list(argv))
    out = capsys.readouterr()
    assert code == 0, out.err
    return json.loads(out.out)


def try_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    """The answer, or None while the server is not up yet."""
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return json.loads(out.out) if code == 0 else None


async def test_override_from_the_cli_reaches_the_fleets_sapcs_through_the_dcc(
        tmp_path: Path, redis_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    vtn_port, dcc_port = free_port(), free_port()
    api = f"http://127.0.0.1:{vtn_port}"
    agg_key = pem(ec.generate_private_key(ec.SECP256R1()), tmp_path / "agg.pem")
    cmb_key = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "cmb.pub").write_text(public_pem(cmb_key))
    aggregators = tmp_path / "aggregators.json"
    agg_public = serialization.load_pem_private_key(agg_key.read_bytes(), None)
    aggregators.write_text(json.dumps({"agg-bridge": {
        "public_key": public_pem(agg_public)}}))  # type: ignore[arg-type]
    fleet = tmp_path / "fleet.toml"
    fleet.write_text(FLEET.format(url=f"{api}/OpenADR2/Simple/2.0b", program=PROGRAM))
    env = {"REDIS_URL": redis_url, "ADRGATE_POLL_FREQ": "1"}
    vtn_env = {**env, "ADRGATE_PORT": str(vtn_port), "ADRGATE_DATA_DIR": str(tmp_path / "vtn"),
               "ADRGATE_CMB": "true", "ADRGATE_CMB_AGGREGATORS": str(aggregators),
               "ADRGATE_CMB_DCC_URL": f"http://127.0.0.1:{dcc_port}",
               "ADRGATE_CMB_DCC_USER": CMB_EUI,
               "ADRGATE_CMB_DCC_KEY": str(pem(cmb_key, tmp_path / "cmb.pem"))}
    with process(["vtn"], tmp_path / "vtn.log", vtn_env), \
            process(["ven", "--fleet", str(fleet), "--bridge", "--dcc", "accelerated",
                     "--dcc-port", str(dcc_port), "--data-dir", str(tmp_path / "agg"),
                     "--dcc-load-controller", f"{CMB_EUI}={tmp_path / 'cmb.pub'}",
                     "--cmb", api, "--cmb-key", str(agg_key)], tmp_path / "agg.log", env):

        async def cli_(*argv: str) -> Any:  # the servers run in other processes
            return await asyncio.to_thread(run_cli, capsys, *argv, "--api", api)

        vens = await wait_for_async(
            lambda: asyncio.to_thread(try_cli, capsys, "ven", "list", "--api", api),
            lambda v: v and all(
            x["status"] == "registered" for x in v), what="the VEN registered")
        ven_id = vens[0]["ven_id"]
        devices = devices_of(load_fleet(fleet).vens[0])
        registry = [{"device_id": d.device_id, "owner": "agg-bridge",
                     "device_class": d.device_class.value, "network_area": d.network_area,
                     "channel": d.channel.value, "reach": d.reach,
                     "rated_import_kw": d.rated_import_kw, "rated_export_kw": d.rated_export_kw,
                     "ven_id": ven_id, "resource_id": d.resource_id} for d in devices]
        await asyncio.to_thread(_call, api, "PUT", "/api/cmb/registry", {"devices": registry})
        # the program is an enrolled grid service: its plans are response DSR (no random delay)
        await asyncio.to_thread(_call, api, "POST", "/api/programs",
                                {"market_context": PROGRAM, "name": "flex"})

        # the bridge's plans are judged by the CMB
        await cli_("event", "create", "--json", json.dumps({
            "market_context": PROGRAM, "targets": {"ven_ids": [ven_id]},
            "dtstart": (utcnow() + timedelta(seconds=2)).isoformat(),
            "signals": [{"signal_name": "SIMPLE", "signal_type": "level",
                         "intervals": [{"duration": "PT10M", "payload": 1}]}]}))
        verdicts = await wait_for_async(lambda: cli_("cmb", "verdicts"),
                                        lambda v: len(v) >= len(devices),
                                        what="a verdict on every plan")
        assert {(v["aggregator"], v["decision"]) for v in verdicts} == {("agg-bridge", "accepted")}

        created = await cli_("cmb", "override", "create", "--aggregator", "agg-bridge",
                             "--level", "10", "--reason", "test")
        override_id = created["override_id"]
        listed = await cli_("cmb", "override", "list")
        (entry,) = [e for e in listed if e["override_id"] == override_id]
        paths = {r["path"]: r for r in entry["results"]}
        sapc = [d.device_id for d in devices if d.channel.value == "sapc"]
        assert paths["sapc"]["ok"] and sorted(paths["sapc"]["reached"]) == sorted(sapc)
        assert paths["openadr"]["ok"]
        lifted = await cli_("cmb", "override", "lift", override_id)
        assert lifted["status"] == "lifted"
        assert {r["path"]: r["ok"] for r in lifted["results"]} == {"openadr": True, "sapc": True}


def _call(api: str, method: str, path: str, body: Any) -> Any:
    return cli.call(api, method, path, body, None)


async def wait_for_async(fetch: Any, ready: Any, *, what: str, timeout: float = 60) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await fetch()
        if ready(value):
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}: {value!r}"[:2000])
        await asyncio.sleep(0.5)
