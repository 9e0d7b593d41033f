"""Runtime configuration: one frozen `Settings` value, read once from the environment.

`VARS` is the single table: each row names a field, its environment variable, its
parser and its meaning. `Settings.from_env`, `Settings.describe` (README table,
``--help`` epilog) and the tests all read it; the typed defaults are the dataclass
field defaults, so nothing is written twice. An empty variable counts as unset.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any, NamedTuple

from vtn.records import RegistrationPolicy, ReportVia


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class LogFormat(StrEnum):
    TEXT = "text"
    JSON = "json"
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def _int(raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"not an integer: {raw!r}") from None


def _seconds(raw: str) -> timedelta:
    try:
        return timedelta(seconds=float(raw))
    except (ValueError, OverflowError):
        raise ValueError(f"not a number of seconds: {raw!r}") from None


def _bool(raw: str) -> bool:
    if raw.lower() in _TRUE:
        return True
    if raw.lower() in _FALSE:
        return False
    raise ValueError(f"expected true or false, got {raw!r}")


def _choice(enum: type[StrEnum]) -> Callable[[str], Any]:
    def parse(raw: str) -> Any:
        try:
            return enum(raw.lower())
        except ValueError:
            raise ValueError(f"expected {'|'.join(enum)}, got {raw!r}") from None
    return parse


class Var(NamedTuple):
    """One configuration variable: field name, environment variable, parser, meaning."""

    name: str
    env: str
    parse: Callable[[str], Any]
    meaning: str
    shown_default: str | None = None  # when the typed default reads badly in docs


VARS: tuple[Var, ...] = (
    Var("data_dir", "ADRGATE_DATA_DIR", Path, "directory for the SQLite file and embedded Redis"),
    Var("database_url", "DATABASE_URL", str, "SQLAlchemy URL; postgresql:// shares state",
        "sqlite:///<data_dir>/adrgate.db"),
    Var("redis_url", "REDIS_URL", str, "Redis URL; unset starts redis-server on <data_dir>/redis.sock",
        "(embedded)"),
    Var("host", "ADRGATE_HOST", str, "address the VTN listens on"),
    Var("port", "ADRGATE_PORT", _int, "TCP port the VTN listens on (0 picks a free one)"),
    Var("vtn_id", "ADRGATE_VTN_ID", str, "vtnID sent in every payload"),
    Var("registration_policy", "ADRGATE_REGISTRATION", _choice(RegistrationPolicy),
        "unknown VENs: open | allowlist | approval"),
    Var("report_via", "ADRGATE_REPORT_VIA", _choice(ReportVia),
        "telemetry requests in oadrRegisteredReport (registered) or oadrCreateReport on a poll (create)"),
    Var("poll_freq", "ADRGATE_POLL_FREQ", _seconds, "oadrPoll interval offered to VENs, seconds"),
    Var("push_concurrency", "ADRGATE_PUSH_CONCURRENCY", _int,
        "HTTP push: POSTs to push VENs in flight at once"),
    Var("push_timeout", "ADRGATE_PUSH_TIMEOUT", _seconds, "HTTP push: time limit of one POST, seconds"),
    Var("push_unreachable_after", "ADRGATE_PUSH_UNREACHABLE_AFTER", _int,
        "HTTP push: consecutive failed pushes after which a VEN is shown unreachable (retries go on)"),
    Var("push_backoff_max", "ADRGATE_PUSH_BACKOFF_MAX", _seconds,
        "HTTP push: longest wait between retries to a failing VEN, seconds"),
    Var("push_resend", "ADRGATE_PUSH_RESEND", _seconds,
        "HTTP push: an event a push VEN took but has not answered with oadrCreatedEvent is pushed "
        "again after this many seconds"),
    Var("max_body_bytes", "ADRGATE_MAX_BODY", _int, "largest accepted request body, bytes"),
    Var("tls_cert", "ADRGATE_TLS_CERT", Path, "server certificate (PEM); all three TLS vars enable mutual TLS"),
    Var("tls_key", "ADRGATE_TLS_KEY", Path, "server private key (PEM)"),
    Var("tls_ca", "ADRGATE_TLS_CA", Path, "CA bundle that client certificates must chain to"),
    Var("tls_ecc_cert", "ADRGATE_TLS_ECC_CERT", Path,
        "optional second (ECC) server certificate, so VENs offering only ECDSA suites connect"),
    Var("tls_ecc_key", "ADRGATE_TLS_ECC_KEY", Path, "private key of the ECC server certificate"),
    Var("sign_cert", "ADRGATE_SIGN_CERT", Path, "certificate for XML signatures (PEM)"),
    Var("sign_key", "ADRGATE_SIGN_KEY", Path, "private key for XML signatures (PEM)"),
    Var("require_signatures", "ADRGATE_REQUIRE_SIGNATURES", _bool, "reject unsigned payloads"),
    Var("api_token", "ADRGATE_API_TOKEN", str, "bearer token for the operator API; unset disables the check"),
    Var("cmb", "ADRGATE_CMB", _bool,
        "run the Central Monitoring Body beside the VTN (its API under /api/cmb/)"),
    Var("cmb_aggregators", "ADRGATE_CMB_AGGREGATORS", Path,
        "JSON file of the aggregators the CMB accepts plans from: {name: {public_key (PEM text or "
        "file), fingerprint?, auto_response?, wait_programs?, override_level?}}"),
    Var("cmb_tick", "ADRGATE_CMB_TICK", _seconds,
        "how often the CMB's time-based monitors (area headroom, prognosis) run, seconds"),
    Var("cmb_dcc_url", "ADRGATE_CMB_DCC_URL", str,
        "the DCC (simulator) the CMB sends SRV 7.16 Limit APC Level through; unset: no SAPC path"),
    Var("cmb_dcc_user", "ADRGATE_CMB_DCC_USER", str,
        "the CMB's EUI-64 as a DCC user in the Load Controller role"),
    Var("cmb_dcc_key", "ADRGATE_CMB_DCC_KEY", Path,
        "the CMB's ECDSA P-256 private key (PEM) for signing DCC service requests"),
    Var("log_level", "ADRGATE_LOG_LEVEL", str.upper, "|".join(LOG_LEVELS)),
    Var("log_format", "ADRGATE_LOG_FORMAT", _choice(LogFormat),
        "text, or json: one object per line with the VEN name and event fields as keys"),
)
_ENV = {v.name: v.env for v in VARS}


def _invalid(name: str, problem: str) -> ValueError:
    return ValueError(f"{_ENV[name]}: {problem}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """Validated configuration; build it with `Settings.from_env`.

    Raises:
        ValueError: an invalid value, naming its environment variable.
    """

    data_dir: Path = Path("data")
    database_url: str = ""  # "" means SQLite inside data_dir, filled in by __post_init__
    redis_url: str | None = None
    host: str = "127.0.0.1"
    port: int = 8080
    vtn_id: str = "ADRGATE-VTN"
    registration_policy: RegistrationPolicy = RegistrationPolicy.OPEN
    report_via: ReportVia = ReportVia.REGISTERED
    poll_freq: timedelta = timedelta(seconds=10)
    push_concurrency: int = 100
    push_timeout: timedelta = timedelta(seconds=10)
    push_unreachable_after: int = 5
    push_backoff_max: timedelta = timedelta(seconds=300)
    push_resend: timedelta = timedelta(seconds=30)
    max_body_bytes: int = 1_048_576
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None
    tls_ecc_cert: Path | None = None
    tls_ecc_key: Path | None = None
    sign_cert: Path | None = None
    sign_key: Path | None = None
    require_signatures: bool = False
    api_token: str | None = field(default=None, repr=False)
    cmb: bool = False
    cmb_aggregators: Path | None = None
    cmb_tick: timedelta = timedelta(seconds=10)
    cmb_dcc_url: str | None = None
    cmb_dcc_user: str | None = None
    cmb_dcc_key: Path | None = None
    log_level: str = "INFO"
    log_format: LogFormat = LogFormat.TEXT

    def __post_init__(self) -> None:
        if not self.database_url:
            object.__setattr__(self, "database_url", f"sqlite:///{self.data_dir}/adrgate.db")
        if not 0 <= self.port <= 65535:
            raise _invalid("port", f"must be 0..65535, got {self.port}")
        if self.poll_freq < timedelta(seconds=1) or self.poll_freq.microseconds:
            raise _invalid("poll_freq", "must be a whole number of seconds >= 1")
        for name in ("push_concurrency", "push_unreachable_after"):
            if getattr(self, name) < 1:
                raise _invalid(name, "must be at least 1")
        for name in ("push_timeout", "push_backoff_max", "push_resend"):
            if getattr(self, name) <= timedelta(0):
                raise _invalid(name, "must be positive")
        if self.max_body_bytes <= 0:
            raise _invalid("max_body_bytes", "must be positive")
        if not self.vtn_id:
            raise _invalid("vtn_id", "must not be empty")
        if self.log_level not in LOG_LEVELS:
            raise _invalid("log_level", f"expected one of {'|'.join(LOG_LEVELS)}, got {self.log_level!r}")
        _all_or_none(self, ("tls_cert", "tls_key", "tls_ca"))
        _all_or_none(self, ("sign_cert", "sign_key"))
        _all_or_none(self, ("tls_ecc_cert", "tls_ecc_key"))
        _all_or_none(self, ("cmb_dcc_url", "cmb_dcc_user", "cmb_dcc_key"))
        if self.cmb_tick <= timedelta(0):
            raise _invalid("cmb_tick", "must be positive")
        if self.require_signatures and self.sign_key is None:
            raise _invalid("require_signatures",
                           f"needs {_ENV['sign_cert']} and {_ENV['sign_key']}: peers that sign expect signed replies")

    @property
    def secure(self) -> bool:
        """True when mutual TLS is configured (all three TLS files given)."""
        return self.tls_cert is not None

    @classmethod
    def from_env(cls, environ: Mapping[str, str], **overrides: Any) -> Settings:
        """Read every variable in `VARS` from `environ`; `overrides` (typed values) win.

        Raises:
            ValueError: a variable fails to parse or validate; the message names it.
            TypeError: an override names no field.
        """
        values: dict[str, Any] = {}
        for var in VARS:
            raw = environ.get(var.env, "").strip()
            if not raw:
                continue
            try:
                values[var.name] = var.parse(raw)
            except ValueError as exc:
                raise ValueError(f"{var.env}: {exc}") from None
        return cls(**(values | overrides))

    @classmethod
    def describe(cls) -> tuple[tuple[str, str, str, str], ...]:
        """Rows of (field, environment variable, default, meaning) for docs and ``--help``."""
        defaults = {f.name: f.default for f in dataclasses.fields(cls)}
        return tuple(
            (v.name, v.env, v.shown_default or _shown(defaults[v.name]), v.meaning) for v in VARS
        )


def _shown(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, timedelta):
        return f"{value.total_seconds():g}"
    return str(value)


def _all_or_none(settings: Settings, names: tuple[str, ...]) -> None:
    given = [n for n in names if getattr(settings, n) is not None]
    if given and len(given) != len(names):
        missing = ", ".join(_ENV[n] for n in names if n not in given)
        raise ValueError(f"{', '.join(_ENV[n] for n in given)} given without {missing}: set all or none")
