"""Settings parsing and the embedded services, against real redis-server and PostgreSQL."""

from __future__ import annotations

import tempfile
from datetime import timedelta
from pathlib import Path

import pytest
import redis
from sqlalchemy import text
from sqlmodel import Field, Session, SQLModel, select

from adrgate.services import (
    EmbeddedPostgres,
    EmbeddedRedis,
    ServiceError,
    make_engine,
    open_redis,
    redis_server_binary,
)
from adrgate.settings import VARS, RegistrationPolicy, Settings


class Widget(SQLModel, table=True):
    __tablename__ = "test_services_widget"
    id: int | None = Field(default=None, primary_key=True)
    name: str


WIDGETS = SQLModel.metadata.tables["test_services_widget"]


# --- Settings ---------------------------------------------------------------


def test_settings_defaults() -> None:
    s = Settings.from_env({})
    assert s == Settings()
    assert s.data_dir == Path("data")
    assert s.database_url == "sqlite:///data/adrgate.db"
    assert s.redis_url is None
    assert (s.host, s.port, s.vtn_id) == ("127.0.0.1", 8080, "ADRGATE-VTN")
    assert s.registration_policy is RegistrationPolicy.OPEN
    assert s.poll_freq == timedelta(seconds=10)
    assert s.max_body_bytes == 1_048_576
    assert not s.secure and not s.require_signatures and s.api_token is None


def test_settings_from_env_and_overrides() -> None:
    env = {
        "ADRGATE_DATA_DIR": "/srv/adr", "ADRGATE_PORT": "9000", "ADRGATE_REGISTRATION": "Approval",
        "ADRGATE_POLL_FREQ": "2", "ADRGATE_TLS_CERT": "c.pem", "ADRGATE_TLS_KEY": "k.pem",
        "ADRGATE_TLS_CA": "ca.pem", "ADRGATE_SIGN_CERT": "s.pem", "ADRGATE_SIGN_KEY": "sk.pem",
        "ADRGATE_REQUIRE_SIGNATURES": "yes", "ADRGATE_API_TOKEN": "sekrit", "ADRGATE_LOG_LEVEL": "debug",
        "REDIS_URL": "", "UNRELATED": "x",
    }
    s = Settings.from_env(env, port=0)
    assert s.database_url == "sqlite:////srv/adr/adrgate.db"  # follows the data dir
    assert s.port == 0  # the override wins over ADRGATE_PORT
    assert s.registration_policy is RegistrationPolicy.APPROVAL
    assert s.poll_freq == timedelta(seconds=2)
    assert s.secure and s.tls_ca == Path("ca.pem") and s.require_signatures
    assert s.redis_url is None  # empty means unset
    assert s.log_level == "DEBUG"
    assert "sekrit" not in repr(s)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"ADRGATE_PORT": "http"}, "ADRGATE_PORT: not an integer"),
        ({"ADRGATE_PORT": "70000"}, "ADRGATE_PORT: must be 0..65535"),
        ({"ADRGATE_REGISTRATION": "vip"}, "ADRGATE_REGISTRATION: expected open|allowlist|approval"),
        ({"ADRGATE_POLL_FREQ": "soon"}, "ADRGATE_POLL_FREQ: not a number"),
        ({"ADRGATE_POLL_FREQ": "0"}, "ADRGATE_POLL_FREQ: must be a whole number of seconds"),
        ({"ADRGATE_POLL_FREQ": "2.5"}, "ADRGATE_POLL_FREQ: must be a whole number of seconds"),
        ({"ADRGATE_MAX_BODY": "-1"}, "ADRGATE_MAX_BODY: must be positive"),
        ({"ADRGATE_REQUIRE_SIGNATURES": "maybe"}, "ADRGATE_REQUIRE_SIGNATURES: expected true or false"),
        ({"ADRGATE_REQUIRE_SIGNATURES": "true"}, "ADRGATE_REQUIRE_SIGNATURES: needs ADRGATE_SIGN_CERT"),
        ({"ADRGATE_LOG_LEVEL": "loud"}, "ADRGATE_LOG_LEVEL: expected one of"),
        ({"ADRGATE_TLS_CERT": "c.pem"}, "ADRGATE_TLS_CERT given without ADRGATE_TLS_KEY, ADRGATE_TLS_CA"),
        ({"ADRGATE_TLS_CERT": "c", "ADRGATE_TLS_KEY": "k"}, "without ADRGATE_TLS_CA"),
        ({"ADRGATE_SIGN_KEY": "k.pem"}, "ADRGATE_SIGN_KEY given without ADRGATE_SIGN_CERT"),
    ],
    ids=["port-not-int", "port-range", "policy", "poll-not-number", "poll-zero", "poll-fraction",
         "body-negative",
         "bool", "signatures-without-key", "log-level", "tls-only-cert", "tls-no-ca", "sign-only-key"],
)
def test_settings_validation(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Settings.from_env(env)


def test_settings_table_covers_every_field() -> None:
    fields = set(Settings.__dataclass_fields__)
    assert {v.name for v in VARS} == fields
    rows = Settings.describe()
    assert [r[0] for r in rows] == [v.name for v in VARS]
    assert ("port", "ADRGATE_PORT", "8080") == rows[[r[0] for r in rows].index("port")][:3]
    assert all(meaning for *_, meaning in rows)


# --- Redis ------------------------------------------------------------------


def test_redis_binary_is_bundled() -> None:
    assert redis_server_binary().name == "redis-server"


def test_session_redis_answers(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    assert client.set("adrgate:test", "1") and client.get("adrgate:test") == b"1"
    client.close()


def test_unix_socket_persists_across_restart(tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path) as server:
        assert server.owned and server.url.startswith("unix://")
        client = redis.Redis.from_url(server.url)
        client.set("ven:1", "registered")
        client.close()
    assert not (tmp_path / "redis.sock").exists()
    assert (tmp_path / "appendonly.aof").exists()
    with EmbeddedRedis(tmp_path) as again:
        client = redis.Redis.from_url(again.url)
        assert client.get("ven:1") == b"registered"
        client.close()


def test_second_instance_reuses_running_server(tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path) as first:
        second = EmbeddedRedis(tmp_path).start()
        assert not second.owned and second.url == first.url
        second.stop()  # leaves the first one's server alone
        assert redis.Redis.from_url(first.url).ping()


def test_stale_socket_is_replaced(tmp_path: Path) -> None:
    (tmp_path / "redis.sock").write_text("left by a crash")
    with EmbeddedRedis(tmp_path) as server:
        assert server.owned and redis.Redis.from_url(server.url).ping()


def test_open_redis_prefers_redis_url(tmp_path: Path) -> None:
    assert open_redis(Settings(data_dir=tmp_path, redis_url="redis://x:1/0")) == ("redis://x:1/0", None)
    url, server = open_redis(Settings(data_dir=tmp_path))
    assert server is not None and url == server.url
    server.stop()


def test_failed_start_shows_log(tmp_path: Path) -> None:
    (tmp_path / "appendonly.aof").write_text("not an append-only file\n")
    with pytest.raises(ServiceError, match="redis-server exited.*log"):
        EmbeddedRedis(tmp_path, timeout=5).start()


# --- Databases --------------------------------------------------------------


def test_sqlite_engine_creates_dir_and_uses_wal(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path}/nested/adrgate.db")
    SQLModel.metadata.create_all(engine, tables=[WIDGETS])
    with Session(engine) as session:
        session.add(Widget(name="battery"))
        session.commit()
        assert session.exec(select(Widget.name)).one() == "battery"
        assert session.connection().execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert session.connection().execute(text("PRAGMA busy_timeout")).scalar() == 5000
    engine.dispose()


def test_unsupported_database_url() -> None:
    with pytest.raises(ValueError, match="DATABASE_URL: unsupported 'mysql'"):
        make_engine("mysql://localhost/adrgate")


def test_postgres_round_trip(postgres_url: str) -> None:
    assert postgres_url.startswith("postgresql+psycopg://postgres@127.0.0.1:")
    engine = make_engine(postgres_url.replace("+psycopg", ""))  # plain postgresql:// works too
    assert engine.dialect.driver == "psycopg"
    SQLModel.metadata.create_all(engine, tables=[WIDGETS])
    with Session(engine) as session:
        session.add(Widget(name="charger"))
        session.commit()
        assert session.exec(select(Widget.name)).one() == "charger"
        conn = session.connection()
        assert conn.execute(text("SHOW listen_addresses")).scalar() == "127.0.0.1"
        assert conn.execute(text("SHOW unix_socket_directories")).scalar() == ""
    engine.dispose()


def test_postgres_reuses_running_cluster() -> None:
    with tempfile.TemporaryDirectory(prefix="adrgate-pg-") as workdir:
        with EmbeddedPostgres(Path(workdir), fsync=False) as first:
            second = EmbeddedPostgres(Path(workdir)).start()
            assert not second.owned and second.url == first.url
