"""The two servers under test, each started in a subprocess on a free 127.0.0.1 port.

- `start_adrgate`: ``python -m adrgate.cli vtn``, exactly the production command, over a fresh
  data directory: SQLite file database (WAL, every commit durable) and, as `adrgate vtn` always
  does, the embedded Redis as replay cache (used only when messages are signed). The VENs are
  written beforehand through `VtnStore.save_ven` as registered records, the record
  `on_create_party_registration` writes.
- `start_openleadr`: `bench.openleadr_vtn`, a bare `OpenADRServer` with `ven_lookup`.

Each server is one process (plus, for adrgate, its redis-server child), so on a 2-core machine
it has a core to itself while the load generator uses the other.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import psutil  # type: ignore[import-untyped]

from adrgate.services import free_port, make_engine
from vtn.records import VenRecord, VenStatus
from vtn.store import VtnStore

from .pki import FleetPki

REPO = Path(__file__).resolve().parents[1]
OADR_PATH = "/OpenADR2/Simple/2.0b"
VTN_ID = "BENCH-VTN"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0


@dataclass(frozen=True)
class VenEntry:
    """One VEN as both servers know it."""

    ven_id: str
    ven_name: str
    registration_id: str
    fingerprint: str | None = None


class ServerError(RuntimeError):
    """A server did not start; the message ends with its log tail."""


@dataclass
class Server:
    name: str
    base_url: str
    log: Path
    proc: subprocess.Popen[bytes]
    children: list[psutil.Process] = field(default_factory=list)

    @property
    def oadr_url(self) -> str:
        return self.base_url + OADR_PATH

    def cpu_seconds(self) -> float:
        """User + system CPU of the server and its children (adrgate's redis-server)."""
        total = 0.0
        for p in [psutil.Process(self.proc.pid), *self.children]:
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.NoSuchProcess:
                pass
        return total

    def stop(self) -> None:
        """SIGINT (graceful: adrgate stops its Redis), then SIGKILL; then any child left over."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for child in self.children:  # started by our server, found by pid; end only those
            try:
                if child.is_running():
                    child.terminate()
                    child.wait(STOP_TIMEOUT)
            except (psutil.NoSuchProcess, psutil.TimeoutExpired):
                pass


def _wait_listening(proc: subprocess.Popen[bytes], port: int, log: Path, what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if proc.poll() is not None:
            raise ServerError(f"{what} exited with {proc.returncode}:\n{_tail(log)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise ServerError(f"{what} did not listen within {START_TIMEOUT:g}s:\n{_tail(log)}")
        time.sleep(0.05)


def _tail(log: Path, lines: int = 30) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _clean_env() -> dict[str, str]:
    """Our environment without any adrgate configuration that could leak into the server."""
    drop = ("ADRGATE_", "DATABASE_URL", "REDIS_URL")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def _spawn(name: str, argv: list[str], env: dict[str, str], workdir: Path, port: int,
           scheme: str) -> Server:
    log = workdir / f"{name}.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, cwd=REPO, env=env)
    _wait_listening(proc, port, log, name)
    server = Server(name=name, base_url=f"{scheme}://127.0.0.1:{port}", log=log, proc=proc)
    server.children = psutil.Process(proc.pid).children(recursive=True)
    return server


def seed_store(database_url: str, vens: list[VenEntry], *, signed: bool) -> None:
    """Write `vens` as registered VEN records, as a registration over the wire would."""
    store = VtnStore(make_engine(database_url))
    store.create_schema()
    now = datetime.now(timezone.utc)
    try:
        for v in vens:
            store.save_ven(VenRecord(
                ven_id=v.ven_id, ven_name=v.ven_name, status=VenStatus.REGISTERED,
                registration_id=v.registration_id, fingerprint=v.fingerprint,
                http_pull_model=True, xml_signature=signed, created=now, registered_at=now))
    finally:
        store.close()


def start_adrgate(workdir: Path, vens: list[VenEntry], pki: FleetPki | None,
                  *, poll_freq: float = 10.0) -> Server:
    """`adrgate vtn` on a fresh data directory holding `vens`; mutual TLS and XML signatures
    with `pki`, plain HTTP without.

    Raises:
        ServerError: the server exited or did not listen in time.
    """
    data_dir = workdir / f"adrgate-{pki.algorithm if pki else 'plain'}"
    data_dir.mkdir(parents=True)
    seed_store(f"sqlite:///{data_dir}/adrgate.db", vens, signed=pki is not None)
    port = free_port()
    env = _clean_env() | {"ADRGATE_VTN_ID": VTN_ID, "ADRGATE_LOG_LEVEL": "WARNING",
                          "ADRGATE_POLL_FREQ": f"{poll_freq:g}"}
    if pki is not None:
        env |= {"ADRGATE_TLS_CERT": str(pki.vtn.cert), "ADRGATE_TLS_KEY": str(pki.vtn.key),
                "ADRGATE_TLS_CA": str(pki.ca), "ADRGATE_SIGN_CERT": str(pki.vtn.cert),
                "ADRGATE_SIGN_KEY": str(pki.vtn.key), "ADRGATE_REQUIRE_SIGNATURES": "true"}
    argv = [sys.executable, "-m", "adrgate.cli", "vtn", "--host", "127.0.0.1",
            "--port", str(port), "--data-dir", str(data_dir)]
    return _spawn(data_dir.name, argv, env, workdir, port, "https" if pki else "http")


def start_openleadr(workdir: Path, vens: list[VenEntry], pki: FleetPki | None) -> Server:
    """A bare openleadr `OpenADRServer` knowing `vens`; mutual TLS and signatures with `pki`.

    Raises:
        ServerError: the server exited or did not listen in time.
    """
    name = f"openleadr-{pki.algorithm if pki else 'plain'}"
    port = free_port()
    tls = None if pki is None else {"cert": str(pki.vtn.cert), "key": str(pki.vtn.key),
                                     "ca": str(pki.ca)}
    config = {"port": port, "vtn_id": VTN_ID, "tls": tls,
              "vens": [{"ven_id": v.ven_id, "ven_name": v.ven_name,
                        "registration_id": v.registration_id, "fingerprint": v.fingerprint}
                       for v in vens]}
    config_path = workdir / f"{name}.json"
    config_path.write_text(json.dumps(config))
    argv = [sys.executable, "-m", "bench.openleadr_vtn", str(config_path)]
    return _spawn(name, argv, _clean_env(), workdir, port, "https" if pki else "http")
