"""The `adrgate` command line: help, configuration errors, and operator commands over the API."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from adrgate import cli
from adrgate.settings import Settings

from tests.vtnkit import running_vtn, simple_event

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_documents_every_setting() -> None:
    text = README.read_text()
    missing = [env for _, env, _, _ in Settings.describe() if f"`{env}`" not in text]
    assert missing == []


def test_help_lists_commands_and_settings(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for word in ("vtn", "event", "ven", "report", "DATABASE_URL", "ADRGATE_REGISTRATION"):
        assert word in out


def test_bad_configuration_is_a_clear_error(monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("ADRGATE_REGISTRATION", "everyone")
    assert cli.main(["vtn"]) == 2
    assert "ADRGATE_REGISTRATION" in capsys.readouterr().err


def test_unreachable_vtn_is_reported(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["event", "list", "--api", "http://127.0.0.1:9"]) == 1
    assert "cannot reach the VTN" in capsys.readouterr().err


async def test_operator_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async with running_vtn() as vtn:
        async def run(*argv: str) -> tuple[int, object]:
            code = await asyncio.to_thread(cli.main, [*argv, "--api", vtn.url])
            out = capsys.readouterr()
            return code, json.loads(out.out) if code == 0 else out.err

        code, ven = await run("ven", "provision", "--name", "ven-cli", "--ven-id", "VEN-1",
                              "--group", "north")
        assert code == 0 and ven["ven_id"] == "VEN-1" and ven["groups"] == ["north"]
        event_file = tmp_path / "event.json"
        event_file.write_text(json.dumps(simple_event(targets={"group_ids": ["north"]})))
        code, ev = await run("event", "create", "--file", str(event_file))
        assert code == 0 and [d["ven_id"] for d in ev["deliveries"]] == ["VEN-1"]
        code, ev2 = await run("event", "modify", ev["event_id"], "--file", str(event_file),
                              "--reason", "retimed")
        assert code == 0 and ev2["modification_number"] == 1
        code, shown = await run("event", "cancel", ev["event_id"])
        assert code == 0 and shown["cancelled"] is True
        code, listed = await run("event", "list")
        assert code == 0 and [e["event_id"] for e in listed] == [ev["event_id"]]
        code, vens = await run("ven", "list")
        assert code == 0 and vens[0]["status"] == "provisioned"
        code, err = await run("ven", "approve", "VEN-1")
        assert code == 1 and "not pending" in err
        code, reports = await run("report", "show", "VEN-1")
        assert code == 0 and reports["values"] == []
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps({"market_context": "x", "signals": []}))
        code, err = await run("event", "create", "--file", str(bad))
        assert code == 1 and "400" in err


async def test_openapi_document_lists_every_route() -> None:
    from tests.vtnkit import api
    from vtn.api import ROUTES
    from vtn.dashboard import ROUTES as DASHBOARD, STREAM

    async with running_vtn() as vtn:
        status, doc = await api(vtn, "GET", "/api/openapi.json")
        assert status == 200 and doc["openapi"].startswith("3.")
        listed = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
        assert listed == {(r.method, r.path) for r in (*ROUTES, *DASHBOARD, STREAM)}
        status, health = await api(vtn, "GET", "/api/health")
        assert status == 200 and health["vtn_id"] == "TEST-VTN"
