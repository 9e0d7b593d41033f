"""The aggregator side split into processes (adrgate/aggparts.py, bridge/remote.py): what
crosses between the devices service and the aggregator, and the commands' refusals.
tests/test_compose.py runs all the parts together and carries an event through them."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from adrgate.bridgeproc import BridgeOptions
from adrgate.cli import main
from adrgate.services import free_port
from bridge.channel import CommandBook, Dispatch
from bridge.inventory import devices_of
from bridge.loopback import Served
from bridge.models import Channel, Mode, Plan, PlanStep
from bridge.remote import RemoteDevices, SnapshotError, parse_snapshot, snapshot
from bridge.sim.physics import SimulatedFleet
from bridge.streams import DispatchQueue
from ven.fleet import DeviceClass, FleetSpec, ResourceSpec, load_fleet
from ven.records import Purpose

ROOT = Path(__file__).resolve().parent.parent
ADRGATE = Path(sys.executable).parent / "adrgate"
START = datetime(2030, 6, 1, 9, 0, tzinfo=UTC)


def compose_fleet(tmp_path: Path, name: str = "fleet.toml", *, drop: str | None = None) -> Path:
    """docs/fleet.compose.toml on a SQLite file of its own; `drop`: without that VEN."""
    text = re.sub(r'database_url = "[^"]*"', "",
                  (ROOT / "docs" / "fleet.compose.toml").read_text())
    if drop is not None:
        text = re.sub(rf'\[\[ven\]\]\nname = "{drop}"\n(.+\n)+?\]\n', "", text)
    path = tmp_path / name
    path.write_text(text)
    return path


def simulated(spec: FleetSpec) -> SimulatedFleet:
    return SimulatedFleet([d for v in spec.vens for d in devices_of(v)], CommandBook(),
                          start=START)


def resources(spec: FleetSpec) -> list[ResourceSpec]:
    return [r for v in spec.vens for r in v.resources]


# --- the snapshot ------------------------------------------------------------------------------


def test_a_snapshot_carries_what_the_planner_and_the_telemetry_read(tmp_path: Path) -> None:
    spec = load_fleet(compose_fleet(tmp_path))
    physics = simulated(spec)
    now = START + timedelta(minutes=47)
    doc = json.loads(json.dumps(snapshot(physics, resources(spec), now)))  # over the wire
    devices = {d.device_id: d for v in spec.vens for d in devices_of(v)}
    views, readings = parse_snapshot(doc, devices)
    assert physics.now == now
    assert views == physics.views()
    assert readings == {r.resource_id: physics.read(r, now) for r in resources(spec)}
    assert {v.state.device.device_class for v in views.values()} == {
        DeviceClass.HOT_WATER, DeviceClass.BATTERY, DeviceClass.EV}


@pytest.mark.parametrize("spoil", [
    lambda doc: doc["devices"].popitem(),  # another fleet: a device fewer
    lambda doc: doc["devices"].update(stranger=next(iter(doc["devices"].values()))),
    lambda doc: next(iter(doc["devices"].values())).pop("flex_up_kw"),
    lambda doc: next(iter(doc["resources"].values())).update(power_kw=None),
    lambda doc: doc.pop("resources"),
], ids=["device-missing", "device-unknown", "field-missing", "field-null", "no-readings"])
def test_a_snapshot_of_another_fleet_or_malformed_is_refused(tmp_path: Path, spoil: Any) -> None:
    spec = load_fleet(compose_fleet(tmp_path))
    doc = snapshot(simulated(spec), resources(spec), START)
    spoil(doc)
    with pytest.raises(SnapshotError):
        parse_snapshot(doc, {d.device_id: d for v in spec.vens for d in devices_of(v)})


async def test_remote_devices_answer_from_the_latest_snapshot(tmp_path: Path) -> None:
    spec = load_fleet(compose_fleet(tmp_path))
    devices = [d for v in spec.vens for d in devices_of(v)]
    physics = simulated(spec)
    answers = [web.json_response(snapshot(physics, resources(spec), START + timedelta(hours=1))),
               web.Response(status=503)]

    async def get(_: web.Request) -> web.Response:
        return answers.pop(0)

    server = Served()
    server.app = web.Application()
    server.app.router.add_get("/snapshot", get)
    url = await server.start()
    try:
        async with aiohttp.ClientSession() as session:
            remote = RemoteDevices(url, devices, session, start=START)
            await remote.refresh()
            assert remote.views() == physics.views()
            with pytest.raises(aiohttp.ClientResponseError):
                await remote.refresh()  # the service failing keeps the last snapshot
    finally:
        await server.close()
    batteries = next(r for r in resources(spec) if r.resource_id == "home-batteries")
    assert remote.views([devices[0].device_id]) == physics.views([devices[0].device_id])
    assert remote.read(batteries, START) == physics.read(batteries, START + timedelta(hours=1))
    battery = next(d for d in devices if d.device_class is DeviceClass.BATTERY)
    # the clear-sky forecast: computed locally from the class default, as the service would
    assert remote.forecast(battery, START, timedelta(minutes=30), 4) == physics.forecast(
        battery, START, timedelta(minutes=30), 4)
    gone = ResourceSpec(resource_id="gone", rated_kw=1, baseline_kw=0, flexible_kw=0)
    assert remote.read(gone, START).online is False


# --- the commands ------------------------------------------------------------------------------


def request(url: str, body: bytes | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=10) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@contextmanager
def healthy(tmp_path: Path, name: str, argv: list[str], port: int) -> Iterator[str]:
    """`adrgate *argv` running until its GET /health on `port` answers 200; yields its base
    URL; stopped (exit 0) on leaving."""
    url, log_file = f"http://127.0.0.1:{port}", tmp_path / f"{name}.log"
    with log_file.open("wb") as log:
        proc = subprocess.Popen([str(ADRGATE), *argv], stdout=log, stderr=subprocess.STDOUT,
                                cwd=tmp_path)
    try:
        for _ in range(150):  # bounded: about 30 s
            assert proc.poll() is None, log_file.read_text()
            try:
                if request(f"{url}/health")[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.2)
        else:
            raise AssertionError(f"{name} not healthy\n" + log_file.read_text())
        yield url
    finally:
        proc.terminate()
        assert proc.wait(20) == 0, log_file.read_text()


@contextmanager
def devices_service(tmp_path: Path, fleet: Path) -> Iterator[str]:
    port = free_port()
    with healthy(tmp_path, "devices", ["devices", "--fleet", str(fleet), "--listen",
                                       f"127.0.0.1:{port}", "--dcc", "accelerated"],
                 port) as url:
        yield url


def pem(key: Any) -> str:
    return str(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode())


def test_devices_service_serves_its_simulators_and_registers_only_p256_dcc_users(
        tmp_path: Path) -> None:
    fleet = compose_fleet(tmp_path)
    with devices_service(tmp_path, fleet) as url:
        status, body = request(f"{url}/endpoints")
        endpoints = json.loads(body)
        assert status == 200 and isinstance(endpoints["dcc"], int)
        hubs = {d.reach for v in load_fleet(fleet).vens for d in devices_of(v)
                if d.channel is Channel.BATTERY_HUB}
        assert set(endpoints["hubs"]) == hubs
        users = f"{url}/dcc/users"
        for bad in (b"not json", b"[]", json.dumps({"eui": "00-11"}).encode(),
                    json.dumps({"eui": "00-11", "public_key": "not a key"}).encode(),
                    json.dumps({"eui": "00-11", "public_key": pem(
                        ec.generate_private_key(ec.SECP384R1()))}).encode(),
                    json.dumps({"eui": "00-11", "public_key": pem(
                        rsa.generate_private_key(65537, 2048))}).encode()):
            assert request(users, bad)[0] == 400, bad
        good = {"eui": "00-11", "public_key": pem(ec.generate_private_key(ec.SECP256R1()))}
        assert request(users, json.dumps(good).encode())[0] == 204
        assert request(f"{url}/snapshot")[0] == 200


def test_the_parts_refuse_without_a_shared_redis_or_devices_of_the_channel(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)  # the streams must be a shared Redis
    fleet = str(compose_fleet(tmp_path))
    for argv in (["worker", "--channel", "sapc"], ["aggregator"]):
        assert main([*argv, "--fleet", fleet, "--devices", "http://127.0.0.1:1",
                     "--data-dir", str(tmp_path)]) == 2
        assert "REDIS_URL" in capsys.readouterr().err
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")  # refused before it is used
    heaters = str(compose_fleet(tmp_path, "heaters.toml", drop="battery-pv-aggregator"))
    assert main(["worker", "--channel", "ocpp", "--fleet", heaters, "--devices",
                 "http://127.0.0.1:1", "--data-dir", str(tmp_path)]) == 2
    assert "no ocpp devices" in capsys.readouterr().err
    assert main(["worker", "--channel", "ieee_2030_5", "--fleet", str(server_fleet(tmp_path)),
                 "--server", "0.0.0.0:8092", "--devices", "http://127.0.0.1:1",
                 "--data-dir", str(tmp_path)]) == 2
    assert "--advertise HOST:PORT" in capsys.readouterr().err


def test_worker_and_aggregator_refuse_a_devices_service_of_another_fleet(
        tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("REDIS_URL", redis_url)
    batteries_only = compose_fleet(tmp_path, "batteries.toml", drop="hot-water-fleet")
    assert [v.name for v in load_fleet(batteries_only).vens] == ["battery-pv-aggregator"]
    with devices_service(tmp_path, batteries_only) as url:
        full = str(compose_fleet(tmp_path))
        assert main(["worker", "--fleet", full, "--channel", "sapc", "--devices", url,
                     "--data-dir", str(tmp_path)]) == 2
        assert "no DCC" in capsys.readouterr().err
        assert main(["aggregator", "--fleet", full, "--devices", url,
                     "--data-dir", str(tmp_path)]) == 2
        assert "not the same fleet" in capsys.readouterr().err


def write_key(path: Path, key: Any) -> Path:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return path


def test_a_sapc_worker_registers_its_dcc_key_and_answers_health(
        tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("REDIS_URL", redis_url)
    fleet = compose_fleet(tmp_path)
    with devices_service(tmp_path, fleet) as url:
        argv = ["worker", "--fleet", str(fleet), "--channel", "sapc", "--devices", url]
        for wrong in (rsa.generate_private_key(65537, 2048),
                      ec.generate_private_key(ec.SECP384R1())):
            key = write_key(tmp_path / "wrong.pem", wrong)
            assert main([*argv, "--dcc-key", str(key), "--data-dir", str(tmp_path)]) == 2
            assert "ECDSA P-256" in capsys.readouterr().err
        key = write_key(tmp_path / "bridge.pem", ec.generate_private_key(ec.SECP256R1()))
        port = free_port()
        with healthy(tmp_path, "worker", [*argv, "--dcc-key", str(key),
                                          "--listen", f"127.0.0.1:{port}"], port) as worker:
            status, body = request(f"{worker}/health")
            assert status == 200 and json.loads(body)["channel"] == "sapc"


# --- the channels whose driver serves: OCPP, IEEE 2030.5 ---------------------------------------


def server_fleet(tmp_path: Path, *, inverters: bool = True) -> Path:
    """A charge point and an inverter: the devices are the clients of the worker's server."""
    path = tmp_path / "servers.toml"
    path.write_text(
        '[[ven]]\nname = "cpo"\nvtn_url = "http://127.0.0.1:1/OpenADR2/Simple/2.0b"\n'
        'market_contexts = ["http://dso.example/flex"]\nresources = [\n'
        '  { id = "chargers", class = "ev", devices = 1, rated_kw = 7, baseline_kw = 0, '
        'flexible_kw = 7 },\n'
        + ('  { id = "inverters", class = "battery", channel = "ieee_2030_5", devices = 1, '
           'rated_kw = 10, baseline_kw = 1, flexible_kw = 9, export_kw = 10 },\n'
           if inverters else '') + ']\n')
    return path


def test_a_server_registration_is_checked(tmp_path: Path) -> None:
    with devices_service(tmp_path, server_fleet(tmp_path, inverters=False)) as url:
        servers = f"{url}/servers"
        for bad in (b"not json", b"[]", json.dumps({"channel": "ocpp"}).encode(),
                    *(json.dumps(doc).encode() for doc in (
                        {"channel": "sapc", "url": "http://127.0.0.1:9"},
                        {"channel": ["ocpp"], "url": "ws://127.0.0.1:9"},
                        {"channel": "ocpp", "url": 9},
                        {"channel": "ocpp", "url": "http://127.0.0.1:9"},  # not websocket
                        {"channel": "ocpp", "url": "ws://127.0.0.1"},  # no port
                        {"channel": "ocpp", "url": "ws://127.0.0.1:99999"},
                        {"channel": "ieee_2030_5", "url": "ws://127.0.0.1:9"},
                        {"channel": "ieee_2030_5", "url": "http://127.0.0.1:9/edev?x=1"}))):
            assert request(servers, bad)[0] == 400, bad
        nobody = {"channel": "ocpp", "url": f"ws://127.0.0.1:{free_port()}"}
        assert request(servers, json.dumps(nobody).encode())[0] == 502
        # no inverters in this fleet: nothing to point at a DERControl server
        assert request(servers, json.dumps(
            {"channel": "ieee_2030_5", "url": "http://127.0.0.1:9"}).encode())[0] == 404
        assert json.loads(request(f"{url}/endpoints")[1])["servers"] == {}


async def enqueue(redis_url: str, *dispatches: Dispatch) -> None:
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        for dispatch in dispatches:
            await DispatchQueue(client, prefix=BridgeOptions().stream_prefix).enqueue(dispatch)
    finally:
        await client.aclose()


def test_ocpp_and_2030_5_workers_serve_the_devices_service_s_charge_points_and_inverters(
        tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", redis_url)
    fleet = server_fleet(tmp_path)
    devices = {d.channel: d for v in load_fleet(fleet).vens for d in devices_of(v)}
    assert devices.keys() == {Channel.OCPP, Channel.IEEE_2030_5}
    now = datetime.now(UTC)
    with devices_service(tmp_path, fleet) as url, ExitStack() as workers:
        registered = {}
        server = free_port()  # OCPP's on a port of its own, advertised by another name
        for channel, where in ((Channel.OCPP, ["--server", f"127.0.0.1:{server}",
                                               "--advertise", f"localhost:{server}"]),
                               (Channel.IEEE_2030_5, [])):  # any free port
            port = free_port()
            worker = workers.enter_context(healthy(tmp_path, f"worker-{channel}", [
                "worker", "--fleet", str(fleet), "--channel", channel, "--devices", url,
                "--listen", f"127.0.0.1:{port}", *where], port))
            registered[channel.value] = json.loads(request(f"{worker}/health")[1])["server"]
        for channel, at in registered.items():  # as a worker's periodic re-registration
            again = json.dumps({"channel": channel, "url": at}).encode()
            assert request(f"{url}/servers", again)[0] == 204
        assert json.loads(request(f"{url}/endpoints")[1])["servers"] == registered
        assert registered["ocpp"] == f"ws://localhost:{server}"
        assert registered["ieee_2030_5"].startswith("http://127.0.0.1:")
        told = {d.device_id: json.loads(request(f"{url}/snapshot")[1])["commands"][d.device_id]
                for d in devices.values()}
        asyncio.run(enqueue(redis_url, *(Dispatch(device=d, plan=Plan(
            plan_id=f"split-{uuid.uuid4().hex[:8]}", device_id=d.device_id, sequence=1,
            issuer="cpo", purpose=Purpose.ROUTINE, priority=0, steps=(PlanStep(
                mode=Mode.LIMIT, level=50, start=now + timedelta(minutes=5),
                end=now + timedelta(hours=1)),))) for d in devices.values())))
        for _ in range(150):  # bounded: about 30 s (an inverter polls every 5 s)
            commands = json.loads(request(f"{url}/snapshot")[1])["commands"]
            if all(commands[i] > n for i, n in told.items()):
                break
            time.sleep(0.2)
        else:
            raise AssertionError(f"devices told {commands}, before {told}")
