"""The fleet file: docs/fleet.example.toml, defaults and overrides, count expansion, value forms,
path resolution, and a table of every error with the key path it must name."""

from __future__ import annotations

import tomllib
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from oadr.messages import OptReason, OptType
from bridge.kinds import Channel
from ven.fleet import (
    AvailabilitySpec,
    DeviceClass,
    FleetError,
    FleetSpec,
    ResourceSpec,
    TlsSpec,
    VenSpec,
    load_fleet,
    parse_fleet,
)

EXAMPLE = Path(__file__).parents[1] / "docs" / "fleet.example.toml"
URL = "https://vtn.example/OpenADR2/Simple/2.0b"
BASE = Path("/srv/fleet")
RESOURCE: dict[str, Any] = {
    "id": "bat", "class": "battery", "rated_kw": 10, "baseline_kw": 2, "flexible_kw": 8,
}
OPT: dict[str, Any] = {
    "id": "maint", "type": "optOut", "reason": "outageRunStatus",
    "start": "2030-01-01T00:00:00Z", "duration": "1h", "resources": ["bat"],
}
TLS = {"cert": "c.pem", "key": "k.pem", "ca": "ca.pem"}
LISTEN = {"push_listen": "127.0.0.1:9443"}


def ven(**keys: Any) -> dict[str, Any]:
    return {"name": "a", "vtn_url": URL, **keys}


def res(**keys: Any) -> dict[str, Any]:
    return {**RESOURCE, **keys}


def opt(**keys: Any) -> dict[str, Any]:
    return {**OPT, **keys}


def without(table: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in table.items() if k != key}


def parse(data: dict[str, Any], base_dir: Path = BASE) -> FleetSpec:
    return parse_fleet(data, source="fleet.toml", base_dir=base_dir)


def test_example_loads_into_the_documented_specs() -> None:
    docs = EXAMPLE.parent.absolute()
    common: dict[str, Any] = {
        "vtn_url": "https://vtn.dso.example:8443/OpenADR2/Simple/2.0b",
        "vtn_fingerprint": "3F:A2:9C:11:0B:7E:D4:58:60:E1",
        "report_min_period": timedelta(seconds=10), "report_jitter": 0.1,
    }
    sunstore = VenSpec(
        name="sunstore-homes", ven_id="ven-sunstore-0001", **common,
        market_contexts=("http://dso.example/flex", "http://dso.example/dfs"),
        response_programs=("http://dso.example/dfs",),
        poll_interval=timedelta(seconds=10), min_opt_in_share=0.5, sign=True,
        cancel_on_shutdown=False,
        tls=TlsSpec(cert=str(docs / "certs/sunstore.pem"), key=str(docs / "certs/sunstore.key"),
                    ca=str(docs / "certs/dso-ca.pem")),
        resources=(
            ResourceSpec(resource_id="home-batteries", device_class=DeviceClass.BATTERY,
                         devices=250, rated_kw=1250.0, baseline_kw=0.0, flexible_kw=1250.0,
                         channel=Channel.BATTERY_HUB, network_area="north", export_kw=1250.0,
                         capacity_kwh=2500.0, time_limited_plans=True),
            ResourceSpec(resource_id="pv-diverters", device_class=DeviceClass.HOT_WATER,
                         devices=180, rated_kw=540.0, baseline_kw=60.0, flexible_kw=480.0),
        ),
    )
    voltway = VenSpec(
        name="voltway-cpo", ven_id="ven-voltway-0001", **common,
        market_contexts=("http://dso.example/flex",), response_programs=(),
        poll_interval=timedelta(seconds=30), min_opt_in_share=0.3, sign=False,
        cancel_on_shutdown=True, push=True, push_fallback_to_pull=3,
        tls=TlsSpec(cert=str(docs / "certs/voltway.pem"), key=str(docs / "certs/voltway.key"),
                    ca=str(docs / "certs/dso-ca.pem")),
        resources=(
            ResourceSpec(resource_id="depot-leeds", device_class=DeviceClass.EV, devices=40,
                         rated_kw=880.0, baseline_kw=300.0, flexible_kw=300.0),
            ResourceSpec(resource_id="street-york", device_class=DeviceClass.EV, devices=120,
                         rated_kw=840.0, baseline_kw=150.0, flexible_kw=150.0),
        ),
        availability=(AvailabilitySpec(
            opt_id="depot-leeds-maintenance", opt_type=OptType.OPT_OUT,
            reason=OptReason.OUTAGE_RUN_STATUS, start=datetime(2030, 6, 1, 8, tzinfo=UTC),
            duration=timedelta(hours=4), resources=("depot-leeds",),
            market_context="http://dso.example/flex",
        ),),
    )
    assert load_fleet(EXAMPLE) == FleetSpec(
        vens=(sunstore, voltway), max_connections=50, concurrency=100,
        database_url="postgresql+psycopg://adrgate@localhost/adrgate_ven",
        push_listen=("0.0.0.0", 9443), push_url="https://ven-gw.voltway.example:9443",
    )


def test_example_commented_count_block_loads_when_uncommented() -> None:
    lines = EXAMPLE.read_text().splitlines()
    block = lines[lines.index("# [[ven]]"):]
    assert all(line.startswith("#") for line in block)  # it is the file's commented tail
    text = "\n".join(lines + [line.removeprefix("#").removeprefix(" ") for line in block])
    fleet = parse(tomllib.loads(text), base_dir=EXAMPLE.parent)
    homes = fleet.vens[2:]
    assert [v.name for v in homes] == [f"home-{n:04d}" for n in range(1, 501)]
    assert homes[41].ven_id == "ven-home-0042"
    assert homes[41].resources[0].resource_id == "home-0042-heat-pump"
    assert homes[41].tls is not None
    assert homes[41].tls.cert == str(EXAMPLE.parent / "certs/home-0042.pem")


def test_defaults_apply_to_every_ven_unless_overridden() -> None:
    defaults = {
        "vtn_url": URL, "poll_interval": "5m", "tls": TLS, "vtn_fingerprint": "00" * 10,
        "sign": True, "cancel_on_shutdown": True, "report_min_period": "1m",
        "report_jitter": 0.25, "min_opt_in_share": 0.75, "market_contexts": ["p1", "p2"],
        "response_programs": ["p2"], "resources": [RESOURCE], "availability": [OPT],
    }
    fleet = parse({"defaults": defaults, "ven": [
        {"name": "inherits"},
        {"name": "overrides", "poll_interval": 3, "report_jitter": 0.0, "sign": False,
         "resources": [res(id="ev", **{"class": "ev"})], "availability": []},
    ]})
    inherits, overrides = fleet.vens
    assert inherits == VenSpec(
        name="inherits", vtn_url=URL, poll_interval=timedelta(minutes=5),
        tls=TlsSpec(cert="/srv/fleet/c.pem", key="/srv/fleet/k.pem", ca="/srv/fleet/ca.pem"),
        vtn_fingerprint=":".join(["00"] * 10), sign=True, cancel_on_shutdown=True,
        report_min_period=timedelta(minutes=1), report_jitter=0.25, min_opt_in_share=0.75,
        market_contexts=("p1", "p2"), response_programs=("p2",),
        resources=(ResourceSpec(resource_id="bat", device_class=DeviceClass.BATTERY,
                                rated_kw=10, baseline_kw=2, flexible_kw=8),),
        availability=(AvailabilitySpec(
            opt_id="maint", opt_type=OptType.OPT_OUT, reason=OptReason.OUTAGE_RUN_STATUS,
            start=datetime(2030, 1, 1, tzinfo=UTC), duration=timedelta(hours=1),
            resources=("bat",)),),
    )
    assert (overrides.poll_interval, overrides.report_jitter, overrides.sign) == (
        timedelta(seconds=3), 0.0, False)
    assert [(r.resource_id, r.device_class) for r in overrides.resources] == [("ev", DeviceClass.EV)]
    assert overrides.availability == ()
    assert overrides.min_opt_in_share == 0.75  # not overridden: still the default


def test_unset_keys_keep_the_spec_defaults() -> None:
    fleet = parse({"ven": [ven()]})
    assert fleet == FleetSpec(vens=(VenSpec(name="a", vtn_url=URL),))


def test_count_expands_templates_in_names_ids_and_paths() -> None:
    fleet = parse({"ven": [ven(
        name="agg-{n:04d}", ven_id="id-{n}", count=3, tls={**TLS, "cert": "certs/{n}.pem"},
        resources=[res(id="bat-{n}")], availability=[opt(id="o-{n}", resources=["bat-{n}"])],
    )]})
    assert [v.name for v in fleet.vens] == ["agg-0001", "agg-0002", "agg-0003"]
    third = fleet.vens[2]
    assert third.ven_id == "id-3"
    assert third.resources[0].resource_id == "bat-3"
    assert (third.availability[0].opt_id, third.availability[0].resources) == ("o-3", ("bat-3",))
    assert third.tls is not None and third.tls.cert == "/srv/fleet/certs/3.pem"


def test_templates_use_n_equal_1_without_count_and_double_braces_escape() -> None:
    fleet = parse({"ven": [ven(name="solo-{n}"), ven(name="{{literal}}")]})
    assert [v.name for v in fleet.vens] == ["solo-1", "{literal}"]


def test_count_expands_templates_from_defaults() -> None:
    fleet = parse({"defaults": {"vtn_url": URL, "resources": [res(id="r{n}")]},
                   "ven": [{"name": "v{n}", "count": 2}]})
    assert [v.resources[0].resource_id for v in fleet.vens] == ["r1", "r2"]


@pytest.mark.parametrize(("value", "expected"), [
    pytest.param("PT10S", timedelta(seconds=10), id="iso-seconds"),
    pytest.param("P1DT2H", timedelta(days=1, hours=2), id="iso-days-hours"),
    pytest.param("PT0.5S", timedelta(seconds=0.5), id="iso-fraction"),
    pytest.param("10s", timedelta(seconds=10), id="short-s"),
    pytest.param("5m", timedelta(minutes=5), id="short-m"),
    pytest.param("2h", timedelta(hours=2), id="short-h"),
    pytest.param("1d", timedelta(days=1), id="short-d"),
    pytest.param("1.5h", timedelta(minutes=90), id="short-fraction"),
    pytest.param(" 5m ", timedelta(minutes=5), id="short-padded"),
    pytest.param(45, timedelta(seconds=45), id="int-seconds"),
    pytest.param(2.5, timedelta(seconds=2.5), id="float-seconds"),
])
def test_duration_forms(value: object, expected: timedelta) -> None:
    assert parse({"ven": [ven(poll_interval=value)]}).vens[0].poll_interval == expected


@pytest.mark.parametrize("start", [
    pytest.param("2030-06-01T09:00:00+01:00", id="string-offset"),
    pytest.param("2030-06-01T08:00:00Z", id="string-z"),
    pytest.param(tomllib.loads("t = 2030-06-01T10:00:00+02:00")["t"], id="toml-offset"),
])
def test_datetimes_with_a_zone_become_utc(start: object) -> None:
    fleet = parse({"ven": [ven(resources=[RESOURCE], availability=[opt(start=start)])]})
    got = fleet.vens[0].availability[0].start
    assert got == datetime(2030, 6, 1, 8, tzinfo=UTC)
    assert got.tzinfo is UTC


@pytest.mark.parametrize("given", [
    "3fa29c110b7ed45860e1", "3f:a2:9c:11:0b:7e:d4:58:60:e1", "3FA29C110B7ED45860E1",
])
def test_vtn_fingerprint_normalised(given: str) -> None:
    fleet = parse({"ven": [ven(vtn_fingerprint=given, tls=TLS)]})
    assert fleet.vens[0].vtn_fingerprint == "3F:A2:9C:11:0B:7E:D4:58:60:E1"


def test_relative_tls_paths_resolve_against_the_fleet_files_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "fleet.toml").write_text(
        f'[[ven]]\nname = "a"\nvtn_url = "{URL}"\n'
        'tls = { cert = "certs/a.pem", key = "/abs/a.key", ca = "../ca.pem" }\n')
    monkeypatch.chdir(tmp_path)  # a relative file name, so the base must be made absolute
    tls = load_fleet("conf/fleet.toml").vens[0].tls
    assert tls == TlsSpec(cert=str(tmp_path / "conf/certs/a.pem"), key="/abs/a.key",
                          ca=str(tmp_path / "conf/../ca.pem"))


@pytest.mark.parametrize(("vens", "key_path", "first"), [
    pytest.param([ven(name="x"), ven(name="x")], "ven[1].name", "ven[0]", id="name"),
    pytest.param([ven(name="x", count=2)], "ven[0].name", "ven[0] (n=1)", id="name-in-count"),
    pytest.param([ven(name="a-{n}", count=3), ven(name="a-2")], "ven[1].name", "ven[0] (n=2)",
                 id="name-across-count"),
    pytest.param([ven(name="x", ven_id="id"), ven(name="y", ven_id="id")], "ven[1].ven_id",
                 "ven[0]", id="ven_id"),
])
def test_duplicate_names_and_ven_ids(vens: list[dict[str, Any]], key_path: str, first: str) -> None:
    with pytest.raises(FleetError) as info:
        parse({"ven": vens})
    assert info.value.key_path == key_path
    assert info.value.reason.endswith(f"is already used by {first}")


def test_load_fleet_message_names_file_and_key_path(tmp_path: Path) -> None:
    path = tmp_path / "fleet.toml"
    path.write_text(f'[defaults]\nvtn_url = "{URL}"\n[[ven]]\nname = "a"\n[[ven]]\nname = "b"\n'
                    '[[ven.resources]]\nid = "r"\nrated_kw = -1\nbaseline_kw = 0\nflexible_kw = 0\n')
    with pytest.raises(FleetError) as info:
        load_fleet(path)
    assert str(info.value) == f"{path}: ven[1].resources[0].rated_kw: must be a number >= 0"


def test_load_fleet_refuses_invalid_toml(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("[[ven]\n")
    with pytest.raises(FleetError, match=rf"^{path}: not valid TOML: "):
        load_fleet(path)


def errors() -> list[Any]:
    """(data, key path, fragment of the reason), one per rule."""
    p = pytest.param
    with_res = {"resources": [RESOURCE]}
    return [
        # structure and unknown keys
        p({}, "ven", "at least one [[ven]]", id="no-ven"),
        p({"ven": []}, "ven", "at least one [[ven]]", id="empty-ven"),
        p({"ven": {"name": "a"}}, "ven", "must be an array", id="ven-is-a-table"),
        p({"ven": ["a"]}, "ven[0]", "must be a table", id="ven-item-not-table"),
        p({"defaults": 3, "ven": [ven()]}, "defaults", "must be a table", id="defaults-not-table"),
        p({"ven": [ven()], "max_conections": 5}, "max_conections",
          "did you mean 'max_connections'", id="unknown-top-key"),
        p({"ven": [ven(pol_interval="5s")]}, "ven[0].pol_interval",
          "did you mean 'poll_interval'", id="unknown-ven-key"),
        p({"defaults": {"name": "x"}, "ven": [ven()]}, "defaults.name", "unknown key",
          id="name-in-defaults"),
        p({"defaults": {"count": 2}, "ven": [ven()]}, "defaults.count", "unknown key",
          id="count-in-defaults"),
        p({"ven": [ven(resources=[res(rated_kW=3)])]}, "ven[0].resources[0].rated_kW",
          "did you mean 'rated_kw'", id="unknown-resource-key"),
        p({"ven": [ven(tls={**TLS, "cafile": "x"})]}, "ven[0].tls.cafile", "unknown key",
          id="unknown-tls-key"),
        p({"ven": [ven(**with_res, availability=[opt(kind="x")])]}, "ven[0].availability[0].kind",
          "unknown key", id="unknown-opt-key"),
        # required keys
        p({"ven": [without(ven(), "name")]}, "ven[0].name", "required", id="no-name"),
        p({"ven": [without(ven(), "vtn_url")]}, "ven[0].vtn_url", "required", id="no-vtn_url"),
        p({"ven": [ven(resources=[without(RESOURCE, "flexible_kw")])]},
          "ven[0].resources[0].flexible_kw", "required", id="no-flexible_kw"),
        p({"ven": [ven(resources=[without(RESOURCE, "id")])]}, "ven[0].resources[0].id",
          "required", id="no-resource-id"),
        p({"ven": [ven(**with_res, availability=[without(OPT, "start")])]},
          "ven[0].availability[0].start", "required", id="no-opt-start"),
        p({"ven": [ven(tls=without(TLS, "ca"))]}, "ven[0].tls.ca", "required", id="no-tls-ca"),
        p({"defaults": {"vtn_url": URL, "tls": TLS}, "ven": [ven(tls=without(TLS, "ca"))]},
          "ven[0].tls.ca", "required", id="tls-override-is-not-merged"),
        # strings, urls, booleans
        p({"ven": [ven(name="")]}, "ven[0].name", "non-empty string", id="empty-name"),
        p({"ven": [ven(name=3)]}, "ven[0].name", "non-empty string", id="name-not-string"),
        p({"ven": [ven(vtn_url="vtn.example/x")]}, "ven[0].vtn_url", "http:// or https://",
          id="url-no-scheme"),
        p({"defaults": {"vtn_url": "ftp://x"}, "ven": [{"name": "a"}]}, "defaults.vtn_url",
          "http:// or https://", id="default-url-blamed-on-defaults"),
        p({"ven": [ven(market_contexts="p")]}, "ven[0].market_contexts", "must be an array",
          id="contexts-not-array"),
        p({"ven": [ven(response_programs=["p", ""])]}, "ven[0].response_programs[1]",
          "non-empty string", id="empty-program"),
        p({"ven": [ven(cancel_on_shutdown="yes")]}, "ven[0].cancel_on_shutdown",
          "true or false", id="bool-as-string"),
        p({"ven": [ven()], "database_url": ""}, "database_url", "non-empty string",
          id="empty-database-url"),
        # templates
        p({"ven": [ven(name="agg-{i}")]}, "ven[0].name", "not a {n} template", id="unknown-field"),
        p({"ven": [ven(name="agg-{n")]}, "ven[0].name", "not a {n} template", id="open-brace"),
        p({"ven": [ven(name="agg-{n:q}")]}, "ven[0].name", "not a {n} template",
          id="bad-format-spec"),
        # numbers and ranges
        p({"ven": [ven(resources=[res(rated_kw=-1)])]}, "ven[0].resources[0].rated_kw",
          "must be a number >= 0", id="negative-rated"),
        p({"ven": [ven(resources=[res(rated_kw=True)])]}, "ven[0].resources[0].rated_kw",
          "must be a number >= 0", id="bool-rated"),
        p({"ven": [ven(resources=[res(rated_kw="10")])]}, "ven[0].resources[0].rated_kw",
          "must be a number >= 0", id="string-rated"),
        p({"ven": [ven(resources=[res(baseline_kw=-0.5)])]}, "ven[0].resources[0].baseline_kw",
          "must be a number >= 0", id="negative-baseline"),
        p({"ven": [ven(resources=[res(flexible_kw=float("nan"))])]},
          "ven[0].resources[0].flexible_kw", "must be a number >= 0", id="nan-flexible"),
        p({"ven": [ven(resources=[res(flexible_kw=float("inf"))])]},
          "ven[0].resources[0].flexible_kw", "must be a number >= 0", id="inf-flexible"),
        p({"ven": [ven(resources=[res(baseline_kw=11)])]}, "ven[0].resources[0].baseline_kw",
          "must be <= rated_kw (10)", id="baseline-above-rated"),
        p({"ven": [ven(resources=[res(devices=0)])]}, "ven[0].resources[0].devices",
          "integer >= 1", id="no-devices"),
        p({"ven": [ven(resources=[res(devices=2.0)])]}, "ven[0].resources[0].devices",
          "integer >= 1", id="float-devices"),
        p({"ven": [ven(resources=[res(**{"class": "pv"})])]}, "ven[0].resources[0].class",
          "must be one of 'battery'", id="unknown-class"),
        p({"ven": [ven(resources=[res(channel="zigbee")])]}, "ven[0].resources[0].channel",
          "must be one of 'sapc', 'ocpp'", id="unknown-channel"),
        p({"ven": [ven(resources=[res(export_kw=-5)])]}, "ven[0].resources[0].export_kw",
          "must be a number >= 0", id="negative-export"),
        p({"ven": [ven(resources=[res(capacity_kwh="big")])]},
          "ven[0].resources[0].capacity_kwh", "must be a number >= 0", id="capacity-prose"),
        p({"ven": [ven(resources=[res(time_limited_plans="no")])]},
          "ven[0].resources[0].time_limited_plans", "true or false", id="plans-not-bool"),
        p({"ven": [ven(resources=[res(network_area=3)])]}, "ven[0].resources[0].network_area",
          "string", id="area-number"),
        p({"ven": [ven(report_jitter=1.5)]}, "ven[0].report_jitter", "from 0 to 1",
          id="jitter-above-1"),
        p({"ven": [ven(report_jitter=-0.1)]}, "ven[0].report_jitter", "from 0 to 1",
          id="jitter-negative"),
        p({"ven": [ven(min_opt_in_share=2)]}, "ven[0].min_opt_in_share", "from 0 to 1",
          id="share-above-1"),
        p({"ven": [ven(count=0)]}, "ven[0].count", "integer from 1 to 100000", id="count-0"),
        p({"ven": [ven(count=100_001)]}, "ven[0].count", "integer from 1 to 100000",
          id="count-too-big"),
        p({"ven": [ven(count="3")]}, "ven[0].count", "integer from 1 to 100000",
          id="count-string"),
        p({"ven": [ven()], "max_connections": 0}, "max_connections", "integer >= 1",
          id="no-connections"),
        p({"ven": [ven()], "concurrency": True}, "concurrency", "integer >= 1",
          id="bool-concurrency"),
        p({"defaults": {"resources": [res(rated_kw=-1)]}, "ven": [ven()]},
          "defaults.resources[0].rated_kw", "must be a number >= 0",
          id="default-resource-blamed-on-defaults"),
        # durations and date-times
        p({"ven": [ven(poll_interval=0)]}, "ven[0].poll_interval", "positive duration",
          id="poll-zero"),
        p({"ven": [ven(poll_interval="-PT5S")]}, "ven[0].poll_interval", "positive duration",
          id="poll-negative"),
        p({"ven": [ven(poll_interval="10 minutes")]}, "ven[0].poll_interval", "positive duration",
          id="poll-prose"),
        p({"ven": [ven(poll_interval="P1M")]}, "ven[0].poll_interval", "positive duration",
          id="poll-months"),
        p({"ven": [ven(poll_interval=True)]}, "ven[0].poll_interval", "positive duration",
          id="poll-bool"),
        p({"ven": [ven(report_min_period=float("inf"))]}, "ven[0].report_min_period",
          "positive duration", id="period-inf"),
        p({"ven": [ven(**with_res, availability=[opt(duration="0s")])]},
          "ven[0].availability[0].duration", "positive duration", id="opt-zero-duration"),
        p({"ven": [ven(**with_res, availability=[opt(start="2030-01-01T00:00:00")])]},
          "ven[0].availability[0].start", "with a zone", id="naive-string"),
        p({"ven": [ven(**with_res, availability=[opt(start=datetime(2030, 1, 1))])]},
          "ven[0].availability[0].start", "with a zone", id="naive-toml-datetime"),
        p({"ven": [ven(**with_res, availability=[opt(start=date(2030, 1, 1))])]},
          "ven[0].availability[0].start", "with a zone", id="toml-date"),
        p({"ven": [ven(**with_res, availability=[opt(start="tomorrow")])]},
          "ven[0].availability[0].start", "with a zone", id="start-prose"),
        # availability
        p({"ven": [ven(**with_res, availability=[opt(type="opt_out")])]},
          "ven[0].availability[0].type", "must be one of 'optIn', 'optOut'", id="bad-opt-type"),
        p({"ven": [ven(**with_res, availability=[opt(reason="maintenance")])]},
          "ven[0].availability[0].reason", "'outageRunStatus'", id="bad-opt-reason"),
        p({"ven": [ven(**with_res, availability=[opt(resources=["bat", "pv"])])]},
          "ven[0].availability[0].resources[1]", "'pv' is not a resource", id="unknown-resource"),
        p({"ven": [ven(availability=[opt()])]}, "ven[0].availability[0].resources[0]",
          "'bat' is not a resource", id="resource-of-no-ven"),
        p({"ven": [ven(**with_res, availability=[opt(), opt()])]}, "ven[0].availability[1].id",
          "already an opt id", id="duplicate-opt-id"),
        # uniqueness, security
        p({"ven": [ven(resources=[res(), res(baseline_kw=0)])]}, "ven[0].resources[1].id",
          "'bat' is already a resource", id="duplicate-resource-id"),
        p({"ven": [ven(resources=[res(id="r{n}"), res(id="r1")])]}, "ven[0].resources[1].id",
          "'r1' is already a resource", id="duplicate-resource-after-template"),
        p({"ven": [ven(sign=True)]}, "ven[0].sign", "needs tls", id="sign-without-tls"),
        p({"ven": [ven(vtn_fingerprint="00:11:22:33:44:55:66:77:88:99")]},
          "ven[0].vtn_fingerprint", "needs tls", id="pin-without-tls"),
        p({"defaults": {"sign": True}, "ven": [ven()]}, "defaults.sign", "needs tls",
          id="default-sign-without-tls"),
        p({"ven": [ven(vtn_fingerprint="AA:" * 8 + "AA")]}, "ven[0].vtn_fingerprint",
          "10 bytes", id="fingerprint-9-bytes"),
        p({"ven": [ven(vtn_fingerprint="ZZ" * 10)]}, "ven[0].vtn_fingerprint", "10 bytes",
          id="fingerprint-not-hex"),
        p({"ven": [ven(vtn_fingerprint="AAB:BCC" + ":DD" * 7)]}, "ven[0].vtn_fingerprint",
          "10 bytes", id="fingerprint-misplaced-colons"),
        # HTTP push
        p({"ven": [ven(push=True)]}, "ven[0].push", "needs push_listen", id="push-no-listener"),
        p({"defaults": {"push": True}, "ven": [ven()]}, "defaults.push", "needs push_listen",
          id="default-push-no-listener"),
        p({"ven": [ven(push="yes")], **LISTEN}, "ven[0].push", "true or false",
          id="push-not-bool"),
        p({"ven": [ven()], **LISTEN}, "push_listen", "no [[ven]] has push = true",
          id="listener-without-push-vens"),
        p({"ven": [ven()], "push_url": "https://x:1"}, "push_url", "needs push_listen",
          id="push-url-without-listener"),
        p({"ven": [ven(push=True)], "push_listen": "9443"}, "push_listen", '"HOST:PORT"',
          id="listen-no-host"),
        p({"ven": [ven(push=True)], "push_listen": "h:port"}, "push_listen", '"HOST:PORT"',
          id="listen-port-not-number"),
        p({"ven": [ven(push=True)], "push_listen": "h:65536"}, "push_listen", "0 to 65535",
          id="listen-port-too-big"),
        p({"ven": [ven(push=True)], "push_listen": "::1:9443"}, "push_listen", "in brackets",
          id="listen-ipv6-unbracketed"),
        p({"ven": [ven(push=True)], "push_listen": 9443}, "push_listen", "non-empty string",
          id="listen-number"),
        p({"ven": [ven(push=True)], "push_listen": "0.0.0.0:9443"}, "push_listen",
          "give push_url", id="listen-everywhere-no-url"),
        p({"ven": [ven(push=True)], "push_listen": "127.0.0.1:0"}, "push_listen",
          "give push_url", id="listen-any-port-no-url"),
        p({"ven": [ven(push=True)], **LISTEN, "push_url": "ven-gw:9443"}, "push_url",
          "http:// or https://", id="push-url-no-scheme"),
        p({"ven": [ven(push=True, tls=TLS)], **LISTEN, "push_url": "http://gw:9443"},
          "push_url", "must be https://", id="tls-push-url-http"),
        p({"ven": [ven(push=True, tls=TLS), ven(name="b", push=True)], **LISTEN}, "ven[1].tls",
          "all of them need tls or none (ven[0] has tls)", id="push-vens-mixed-tls"),
        p({"ven": [ven(push_fallback_to_pull=3)]}, "ven[0].push_fallback_to_pull",
          "needs push = true", id="fallback-without-push"),
        p({"ven": [ven(push=True, push_fallback_to_pull=0)], **LISTEN},
          "ven[0].push_fallback_to_pull", "integer >= 1", id="fallback-zero"),
        p({"ven": [ven(push=True, push_fallback_to_pull=True)], **LISTEN},
          "ven[0].push_fallback_to_pull", "integer >= 1", id="fallback-bool"),
    ]


@pytest.mark.parametrize(("data", "key_path", "reason"), errors())
def test_error_names_the_key_path(data: dict[str, Any], key_path: str, reason: str) -> None:
    with pytest.raises(FleetError) as info:
        parse(data)
    assert info.value.key_path == key_path
    assert reason in info.value.reason
    assert str(info.value) == f"fleet.toml: {key_path}: {info.value.reason}"


def test_every_error_case_is_valid_once_its_fault_is_removed() -> None:
    # The error table's base values must load, or its cases could fail for another reason.
    fleet = parse({"ven": [ven(tls=TLS, sign=True, resources=[RESOURCE], availability=[OPT],
                               push=True, push_fallback_to_pull=2)], **LISTEN})
    assert fleet.vens[0].availability[0].start == datetime(2030, 1, 1, tzinfo=timezone.utc)
    assert (fleet.vens[0].push, fleet.push_listen) == (True, ("127.0.0.1", 9443))


def test_local_fleet_points_at_the_default_vtn() -> None:
    from adrgate.settings import Settings

    fleet = load_fleet(Path(__file__).resolve().parent.parent / "docs" / "fleet.local.toml")
    defaults = Settings()
    assert {v.vtn_url for v in fleet.vens} == {
        f"http://{defaults.host}:{defaults.port}/OpenADR2/Simple/2.0b"}
    assert len(fleet.vens) == 3 and all(v.resources and v.tls is None for v in fleet.vens)
