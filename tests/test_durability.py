"""Durability: `adrgate vtn` killed with SIGKILL and restarted loses nothing acknowledged.

The VTN runs as a real subprocess (the console entry point) on a SQLite file; an openleadr client
drives it step by step, so we control exactly what is acknowledged before the kill.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import redis
from openleadr import OpenADRClient

from adrgate.services import free_port

OADR = "/OpenADR2/Simple/2.0b"


@contextmanager
def vtn_process(data_dir: Path, port: int, env_extra: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    env = {**os.environ, "ADRGATE_DATA_DIR": str(data_dir), "ADRGATE_PORT": str(port),
           "ADRGATE_HOST": "127.0.0.1", "ADRGATE_POLL_FREQ": "1", **env_extra}
    log = open(data_dir / f"vtn-{port}-{time.monotonic_ns()}.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "adrgate.cli", "vtn"], env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_healthy(port, proc)
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=15)
        log.close()


def wait_healthy(port: int, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"VTN exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("VTN did not become healthy")


def api(port: int, method: str, path: str, body: object = None) -> object:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method,
                                 data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def event_body(ven_id: str, minutes: int) -> dict[str, object]:
    start = datetime.now(timezone.utc) + timedelta(minutes=minutes)
    return {"market_context": "http://dso.example/programs/flex", "dtstart": start.isoformat(),
            "targets": {"ven_ids": [ven_id]},
            "signals": [{"signal_name": "SIMPLE", "signal_type": "level",
                         "intervals": [{"duration": "PT10M", "payload": 1}]}]}


def delivery_of(port: int, event_id: str) -> dict[str, object]:
    shown = api(port, "GET", f"/api/events/{event_id}")
    assert isinstance(shown, dict)
    (only,) = shown["deliveries"]
    return only


@pytest.mark.parametrize("redis_mode", ["embedded", "external"])
async def test_sigkill_restart_keeps_acknowledged_and_resumes_pending(
        tmp_path: Path, redis_url: str, redis_mode: str) -> None:
    port = free_port()
    env = {} if redis_mode == "embedded" else {"REDIS_URL": redis_url}
    client = OpenADRClient(ven_name="ven-durable", vtn_url=f"http://127.0.0.1:{port}{OADR}",
                           show_fingerprint=False)
    try:
        with vtn_process(tmp_path, port, env) as proc:
            await client.create_party_registration()
            ven_id, registration_id = client.ven_id, client.registration_id
            assert ven_id and registration_id
            acked = api(port, "POST", "/api/events", event_body(ven_id, 5))["event_id"]  # type: ignore[index]
            kind, payload = await client.poll()
            assert kind == "oadrDistributeEvent"
            await client.created_event(payload["request_id"], acked, "optIn", 0)
            assert delivery_of(port, acked)["acknowledged_modification"] == 0
            pending = api(port, "POST", "/api/events", event_body(ven_id, 30))["event_id"]  # type: ignore[index]
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)

        with vtn_process(tmp_path, port, env):
            assert delivery_of(port, acked)["opt"] == "optIn"
            # the first poll may hit the dead keep-alive connection, as a real VEN's would
            kind, payload = await client.poll()
            if kind is None:
                kind, payload = await client.poll()  # same venID, no re-registration
            assert kind == "oadrDistributeEvent"
            ids = [e["event_descriptor"]["event_id"] for e in payload["events"]]
            assert pending in ids and acked in ids
            await client.created_event(payload["request_id"], pending, "optOut", 0)
            assert delivery_of(port, pending)["opt"] == "optOut"
            vens = api(port, "GET", "/api/vens")
            assert [(v["ven_id"], v["registration_id"]) for v in vens] == [  # type: ignore[union-attr]
                (ven_id, registration_id)]
            kind, _ = await client.poll()
            assert kind == "oadrResponse"
    finally:
        await client.client_session.close() if client.client_session else None
        _stop_embedded_redis(tmp_path)


def _stop_embedded_redis(data_dir: Path) -> None:
    """The embedded redis-server outlives a SIGKILLed VTN by design; end it after the test."""
    sock = data_dir / "redis.sock"
    if sock.exists():
        try:
            redis.Redis(unix_socket_path=str(sock)).shutdown(nosave=True)
        except (redis.ConnectionError, redis.ResponseError):
            pass
