"""compose.yaml: valid by the Compose Specification, and its services really run.

There is no container engine here, so the file is checked in two ways:
- statically: against the Compose Specification JSON schema (tests/data/compose-spec.json), and
  for what the schema cannot know: every adrgate command and health check parses with adrgate's
  own CLI, dependencies name services, environment variables are ones adrgate.settings reads,
  and the image (Dockerfile) holds what the commands name;
- as processes: each adrgate service's command and environment, taken from compose.yaml with
  the service hostnames mapped to 127.0.0.1 and free ports, runs locally against a real
  PostgreSQL and a real Redis in compose's dependency order, each started once its dependencies'
  compose health checks pass; then one event goes end to end across the two VTN replicas.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import jsonschema
import pytest
import yaml
from redis import Redis

from adrgate import health
from adrgate.cli import build_parser, call, main
from adrgate.services import EmbeddedRedis, free_port
from adrgate.settings import VARS, Settings
from bridge.inventory import devices_of
from bridge.kinds import Channel
from bridge.streams import StreamNames
from ven.fleet import load_fleet
from ven.records import RegState
from ven.store import VenStatusRow

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "compose.yaml"
SCHEMA_FILE = Path(__file__).resolve().parent / "data" / "compose-spec.json"
ADRGATE = Path(sys.executable).parent / "adrgate"  # the console script of this environment
BACKING = ("postgres", "redis")  # images of their own; replaced here by real local servers
DSO_PROGRAM = "http://dso.example/dfs"  # a response program of docs/fleet.compose.toml

T = TypeVar("T")


def load_compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return doc


def adrgate_services(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services running the adrgate image (built from the Dockerfile)."""
    return {name: s for name, s in doc["services"].items() if "build" in s}


def start_order(doc: dict[str, Any]) -> list[str]:
    """Services in an order that starts every dependency first (compose's order).

    Raises:
        ValueError: the dependencies form a cycle.
    """
    services: dict[str, Any] = doc["services"]
    order: list[str] = []
    for _ in range(len(services)):
        ready = [n for n, s in services.items()
                 if n not in order and all(d in order for d in s.get("depends_on", {}))]
        if not ready:
            break
        order += sorted(ready)
    if len(order) != len(services):
        raise ValueError(f"depends_on cycle among {sorted(set(services) - set(order))}")
    return order


# --- the file itself ----------------------------------------------------------------------------


def test_compose_file_is_valid_by_the_compose_specification() -> None:
    schema = json.loads(SCHEMA_FILE.read_text())
    validator = jsonschema.Draft7Validator(schema)  # the spec's $schema: draft-07
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
              for e in validator.iter_errors(load_compose())]
    assert errors == []


@pytest.mark.parametrize("mutation", [
    lambda d: d["services"]["vtn-a"].update(healthcheck={"test": ["CMD"], "interval": 5}),
    lambda d: d["services"]["vtn-b"].update(depends_on={"vtn-a": {"condition": "started-ish"}}),
    lambda d: d["services"]["fleet"].update(comand=["adrgate", "ven"]),
], ids=["interval-not-a-duration", "unknown-condition", "misspelt-key"])
def test_the_vendored_schema_rejects_broken_compose_files(
        mutation: Callable[[dict[str, Any]], None]) -> None:
    # the schema is a real check: the same file with one typical mistake fails it
    doc = load_compose()
    mutation(doc)
    assert not jsonschema.Draft7Validator(json.loads(SCHEMA_FILE.read_text())).is_valid(doc)


def parses(argv: list[str]) -> bool:
    """True when `adrgate ARGV` is a command the CLI accepts (argparse exits on anything else)."""
    try:
        build_parser().parse_args(argv)
    except SystemExit:
        return False
    return True


def test_every_adrgate_service_and_health_check_is_a_real_adrgate_command() -> None:
    services = adrgate_services(load_compose())
    assert {"vtn-a", "vtn-b", "fleet", "devices", "worker-sapc", "worker-hub", "worker-ocpp",
            "worker-2030-5"} <= services.keys()
    for name, service in services.items():
        command, check = service["command"], service["healthcheck"]["test"]
        assert command[0] == "adrgate" and parses(command[1:]), name
        assert check[0] == "CMD" and check[1] == "adrgate" and parses(check[2:]), name
    assert not parses(["vtn", "--no-such-option"])  # the check can fail


def test_every_service_has_a_health_check_and_its_dependencies_exist() -> None:
    doc = load_compose()
    for name, service in doc["services"].items():
        assert service.get("healthcheck", {}).get("test"), f"{name}: no health check"
        for dep, spec in service.get("depends_on", {}).items():
            assert dep in doc["services"], f"{name} depends on unknown {dep}"
            # started only once the dependency is healthy, as the process test does it
            assert spec["condition"] == "service_healthy", f"{name} -> {dep}"
    order = start_order(doc)  # no cycle
    assert all(order.index(dep) < order.index(name) for name, service in doc["services"].items()
               for dep in service.get("depends_on", {}))


def test_adrgate_services_set_only_variables_adrgate_reads_and_valid_values() -> None:
    known = {v.env for v in VARS}
    for name, service in adrgate_services(load_compose()).items():
        env = {k: str(v) for k, v in service.get("environment", {}).items()}
        assert set(env) <= known, f"{name}: unknown {sorted(set(env) - known)}"
        Settings.from_env(env)  # raises ValueError naming a variable with a bad value


def test_the_image_holds_every_package_and_file_the_commands_name() -> None:
    copied = {line.split()[1] for line in (ROOT / "Dockerfile").read_text().splitlines()
              if line.startswith("COPY ")}
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())[
        "tool"]["setuptools"]["packages"]["find"]["include"]
    assert {p.rstrip("*") for p in packages} <= copied
    for name, service in adrgate_services(load_compose()).items():
        for argv in (service["command"][1:], service["healthcheck"]["test"][2:]):
            fleet = getattr(build_parser().parse_args(argv), "fleet", None)
            if fleet is not None:  # relative to the image's WORKDIR, a copy of the repository
                assert fleet.parts[0] in copied and (ROOT / fleet).is_file(), name
                load_fleet(ROOT / fleet)  # and a valid fleet file


# --- `adrgate health`, the checks compose runs ------------------------------------------------


def test_health_check_fails_on_an_endpoint_that_does_not_answer(
        capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}/api/health"
    assert main(["health", "--url", url]) == 1
    assert url in capsys.readouterr().err


def test_health_check_fails_on_a_fleet_that_never_ran(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fleet = tmp_path / "fleet.toml"  # compose's fleet, its database a fresh SQLite file
    fleet.write_text(re.sub(r'database_url = "[^"]*"', "",
                            (ROOT / "docs" / "fleet.compose.toml").read_text()))
    assert main(["health", "--fleet", str(fleet), "--data-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert all(f"VEN {v.name}: unregistered" in err for v in load_fleet(fleet).vens), err


@pytest.mark.parametrize(("state", "polled_ago", "healthy"), [
    (RegState.READY, timedelta(seconds=5), True),
    (RegState.REGISTERED, timedelta(seconds=59), True),
    (RegState.READY, timedelta(seconds=61), False),
    (RegState.READY, None, False),
    (RegState.CANCELLED, timedelta(seconds=1), False),
    (RegState.QUERIED, timedelta(seconds=1), False),
])
def test_a_fleet_ven_is_healthy_when_registered_and_polling(
        state: RegState, polled_ago: timedelta | None, healthy: bool) -> None:
    now = datetime(2030, 1, 1, tzinfo=UTC)
    row = VenStatusRow(name="agg", state=state,
                       last_poll=None if polled_ago is None else now - polled_ago)
    problem = health.ven_problem("agg", row, now, timedelta(seconds=60))
    assert (problem is None) == healthy, problem


# --- the services as processes --------------------------------------------------------------------


def wait_until(probe: Callable[[], T | None], *, timeout: float, what: str,
               every: float = 0.5, diagnose: Callable[[], str] = lambda: "") -> T:
    """`probe()` until it returns something, at most `timeout` seconds."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / every) + 2):
        if (result := probe()) is not None:
            return result
        if time.monotonic() > deadline:
            break
        time.sleep(every)
    raise AssertionError(f"{what}: not within {timeout:g}s\n{diagnose()}")


@dataclass
class Deployment:
    """compose.yaml's adrgate services as local processes; `localize` maps compose addresses."""

    doc: dict[str, Any]
    workdir: Path
    database_url: str
    redis_url: str
    ports: dict[str, int] = field(default_factory=dict)  # service with a port -> local port
    more_ports: dict[tuple[str, str], int] = field(default_factory=dict)  # (service, its port)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)  # still running
    started: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        fleet = ROOT / "docs" / "fleet.compose.toml"
        self.fleet_file = self.workdir / fleet.name
        self.ports = {name: free_port() for name, s in adrgate_services(self.doc).items()
                      if s.get("ports") or s.get("expose")}
        self.more_ports = {(name, str(inside)): free_port()
                           for name, s in adrgate_services(self.doc).items()
                           for inside in (s.get("expose") or [])[1:]}
        self.fleet_file.write_text(self.localize(fleet.read_text()))

    @staticmethod
    def container_port(service: dict[str, Any]) -> str:
        return str((service.get("ports") or service["expose"])[0]).rsplit(":", 1)[-1]

    def localize(self, value: str, service: str | None = None) -> str:
        """Compose addresses -> local ones: PostgreSQL and Redis to the real servers, a
        service's own addresses (localhost, any) and each service's hostname to its local
        port."""
        value = re.sub(r"postgresql\+psycopg://[^@\s\"]+@postgres:5432/\w+", self.database_url,
                       value)
        value = re.sub(r"redis://redis:6379/\d+", self.redis_url, value)
        mapped = [(name, self.container_port(self.doc["services"][name]), port)
                  for name, port in self.ports.items()]
        mapped += [(name, inside, port) for (name, inside), port in self.more_ports.items()]
        for name, inside, port in mapped:
            if name == service:
                for own in ("127.0.0.1", "0.0.0.0"):
                    value = value.replace(f"{own}:{inside}", f"127.0.0.1:{port}")
            value = value.replace(f"{name}:{inside}", f"127.0.0.1:{port}")
        return value.replace("docs/fleet.compose.toml", str(self.fleet_file))

    def argv(self, argv: list[str], service: str) -> list[str]:
        assert argv[0] == "adrgate"
        return [str(ADRGATE), *(self.localize(a, service) for a in argv[1:])]

    def environment(self, name: str) -> dict[str, str]:
        env = {k: self.localize(str(v), name)
               for k, v in self.doc["services"][name].get("environment", {}).items()}
        if "ADRGATE_PORT" in env:  # a VTN replica: on loopback only, on its local port
            env.update(ADRGATE_HOST="127.0.0.1", ADRGATE_PORT=str(self.ports[name]))
        return {**os.environ, "ADRGATE_DATA_DIR": str(self.workdir / name / "data"), **env}

    def log(self, name: str) -> Path:
        return self.workdir / f"{name}.log"

    def logs(self) -> str:
        return "\n".join(f"--- {n} ---\n" + "\n".join(
            self.log(n).read_text(errors="replace").splitlines()[-25:]) for n in self.started)

    def start(self, name: str) -> None:
        service = self.doc["services"][name]
        (self.workdir / name).mkdir()
        with self.log(name).open("wb") as out:  # its own session: stopped as one group
            self.procs[name] = subprocess.Popen(
                self.argv(service["command"], name), env=self.environment(name),
                cwd=self.workdir / name, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True)
        self.started.append(name)

    def healthy(self, name: str) -> bool:
        """The service's own compose health check, run as compose would (CMD form)."""
        if (code := self.procs[name].poll()) is not None:
            raise AssertionError(f"{name} exited with {code}\n{self.logs()}")
        check = self.doc["services"][name]["healthcheck"]["test"]
        assert check[0] == "CMD"
        try:
            done = subprocess.run(self.argv(check[1:], name), env=self.environment(name),
                                  cwd=self.workdir / name, capture_output=True, timeout=30)
        except subprocess.TimeoutExpired:
            return False
        return done.returncode == 0

    def stop(self) -> dict[str, int]:
        """SIGTERM every process, dependents first; SIGKILL the group of any that lingers."""
        codes = {}
        for name in reversed(list(self.procs)):
            proc = self.procs.pop(name)
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                codes[name] = proc.wait(30)
            except subprocess.TimeoutExpired:
                codes[name] = -9
            # its children too (none expected): the group is the session we started
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
        return codes


def trace(deployment: Deployment, event_id: str) -> dict[str, Any]:
    """`adrgate trace` as an operator runs it in the fleet's container."""
    argv = ["adrgate", "trace", event_id, "--fleet", "docs/fleet.compose.toml"]
    done = subprocess.run(deployment.argv(argv, "fleet"), env=deployment.environment("fleet"),
                          cwd=deployment.workdir / "fleet", capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr.decode()
    result: dict[str, Any] = json.loads(done.stdout)
    return result


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)  # a new database
def test_compose_services_run_and_carry_an_event_across_both_vtn_replicas(
        tmp_path: Path, database_url: str) -> None:
    doc = load_compose()
    with ExitStack() as stack:
        redis = stack.enter_context(EmbeddedRedis(tmp_path / "redis", tcp=True, persist=False))
        d = Deployment(doc, tmp_path, database_url, redis.url)
        stack.callback(d.stop)
        for name in start_order(doc):
            if name in BACKING:
                continue
            d.start(name)
            wait_until(lambda: True if d.healthy(name) else None, timeout=120,
                       what=f"{name} healthy", every=1.0, diagnose=d.logs)

        a = f"http://127.0.0.1:{d.ports['vtn-a']}"
        b_oadr = f"http://127.0.0.1:{d.ports['vtn-b']}/OpenADR2/Simple/2.0b"
        fleet = load_fleet(d.fleet_file)
        assert {v.vtn_url for v in fleet.vens} == {b_oadr}  # the fleet knows replica B only
        names = {v.name for v in fleet.vens}
        # the VENs registered through B, and A sees them: the replicas share one database
        vens = {v["ven_name"]: v["ven_id"] for v in call(a, "GET", "/api/vens")
                if v["status"] == "registered"}
        assert set(vens) == names

        created = call(a, "POST", "/api/events", {
            "market_context": DSO_PROGRAM,
            "dtstart": (datetime.now(UTC) + timedelta(seconds=2)).isoformat(),
            "targets": {"ven_ids": sorted(vens.values())},
            "signals": [{"signal_name": "SIMPLE", "signal_type": "level",
                         "intervals": [{"duration": "PT10M", "payload": 2}]}]})
        event_id = created["event_id"]
        devices = {dev.device_id for v in fleet.vens for dev in devices_of(v)}

        def delivered_to_every_device() -> dict[str, Any] | None:
            path = trace(d, event_id)
            done = {p["device"] for p in path["plans"]
                    if any(o["outcome"] == "delivered" for o in p["outcomes"])}
            return path if done == devices else None

        path = wait_until(delivered_to_every_device, timeout=120, every=1.0,
                          what="a plan delivered to every simulated device",
                          diagnose=lambda: json.dumps(trace(d, event_id), indent=1) + d.logs())

        def acknowledged_on_a() -> dict[str, Any] | None:
            event: dict[str, Any] = call(a, "GET", f"/api/events/{event_id}")
            acked = {x["ven_id"] for x in event["deliveries"]
                     if x["acknowledged_modification"] == 0 and x["opt"] == "optIn"}
            return event if acked == set(vens.values()) else None

        event = wait_until(acknowledged_on_a, timeout=30, what="answers visible on replica A")
        # the devices service's simulators were told, by the worker processes: the fleet
        # process runs no worker, and each channel's consumers are its worker's process only
        told = call(f"http://127.0.0.1:{d.ports['devices']}", "GET", "/snapshot")["commands"]
        streams = stack.enter_context(Redis.from_url(redis.url, decode_responses=True))
        consumers = {channel: {c["name"] for c in streams.xinfo_consumers(
            StreamNames().dispatches(channel), str(channel))}
            for channel in {dev.channel for v in fleet.vens for dev in devices_of(v)}}
        workers = {Channel(d.doc["services"][n]["command"][
            d.doc["services"][n]["command"].index("--channel") + 1]): d.procs[n].pid
            for n in d.procs if n.startswith("worker-")}
        codes = d.stop()

    assert {v["ven"] for v in path["vens"]} == names
    assert all(v["opt"] == "optIn" and v["acknowledged"] for v in path["vens"])
    assert set(path["channels"]) == {dev.channel.value for v in fleet.vens
                                     for dev in devices_of(v)}
    for plan in path["plans"]:  # the device side acknowledged what it was told
        assert plan["random_delay_s"] == 0  # response DSR: dispatched at once
        assert any(o["acknowledged"] for o in plan["outcomes"]), plan
    assert all(x["delivered_at"] and x["responded_at"] for x in event["deliveries"])
    assert set(told) == devices and all(n > 0 for n in told.values()), told
    assert consumers.keys() == workers.keys()
    for channel, names in consumers.items():
        assert [n.rsplit("-", 2)[-2:] for n in names] == [[str(workers[channel]), channel]]
    assert codes == {name: 0 for name in codes}, d.logs()  # every service stopped cleanly
