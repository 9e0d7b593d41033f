"""A bare openleadr 0.5.36 `OpenADRServer`, the baseline of the benchmarks, as its docs set it up.

Run as ``python -m bench.openleadr_vtn CONFIG.json`` (the benchmark does this in a subprocess, so
the server has a core of its own and openleadr's class-level state is private to it). CONFIG:

    {"port": 8123, "vtn_id": "...", "vens": [{"ven_id", "ven_name", "registration_id",
     "fingerprint"}...], "tls": null | {"cert", "key", "ca"}}

With `tls`, the server requires client certificates, signs every reply with the VTN key and
verifies every message signature (openleadr authenticates only over TLS). `ven_lookup` answers
from the VEN table; `on_create_party_registration` accepts everyone and adds to it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
import uuid
from pathlib import Path
from typing import Any

from openleadr import OpenADRServer  # type: ignore[import-untyped]


def build_server(config: dict[str, Any]) -> OpenADRServer:
    vens: dict[str, dict[str, Any]] = {v["ven_id"]: dict(v) for v in config["vens"]}

    def ven_lookup(ven_id: str) -> dict[str, Any] | None:
        return vens.get(ven_id)

    def on_create_party_registration(info: dict[str, Any]) -> tuple[str, str]:
        ven_id, registration_id = uuid.uuid4().hex, uuid.uuid4().hex
        vens[ven_id] = {"ven_id": ven_id, "ven_name": info.get("ven_name"),
                        "registration_id": registration_id,
                        "fingerprint": info.get("fingerprint")}
        return ven_id, registration_id

    tls = config.get("tls")
    files: dict[str, Any] = {}
    if tls:
        files = {"cert": tls["cert"], "key": tls["key"], "http_cert": tls["cert"],
                 "http_key": tls["key"], "http_ca_file": tls["ca"], "show_fingerprint": False}
    server = OpenADRServer(vtn_id=config["vtn_id"], http_host="127.0.0.1",
                           http_port=config["port"], ven_lookup=ven_lookup, **files)
    server.add_handler("on_create_party_registration", on_create_party_registration)
    return server


async def serve(config: dict[str, Any]) -> None:
    server = build_server(config)
    await server.run()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop()


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    config = json.loads(Path(sys.argv[1]).read_text())
    asyncio.run(serve(config))


if __name__ == "__main__":
    main()
