"""TLS probes for the G cases: which protocol version and cipher suite a VTN agrees to.

The probe sends a hand-built ClientHello offering exactly what is asked and reads the server's
first answer: a ServerHello names the version and suite the server chose, an alert or a closed
connection is a refusal. The server decides both before it asks for the client certificate,
so a probe needs no key material and leaves the campaign's own TLS context untouched (an
`ssl.SSLContext` offering TLS 1.0 would need OpenSSL's security level lowered, process-wide
state that cannot be put back). Building and reading the bytes is pure; `probe` does the I/O.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Final


class Version(IntEnum):
    TLS1_0 = 0x0301
    TLS1_1 = 0x0302
    TLS1_2 = 0x0303


# The two OpenADR 2.0b suites (IANA numbers) and their OpenSSL names.
ECDHE_ECDSA_AES128_SHA256: Final = 0xC023  # ECDHE-ECDSA-AES128-SHA256
RSA_AES128_SHA256: Final = 0x003C  # AES128-SHA256
SUITE_NAMES: Final = {ECDHE_ECDSA_AES128_SHA256: "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256",
                      RSA_AES128_SHA256: "TLS_RSA_WITH_AES_128_CBC_SHA256"}
# What a TLS 1.0/1.1 client offers: the CBC-SHA suites those versions have.
LEGACY_SUITES: Final = (0xC009, 0xC00A, 0xC013, 0xC014, 0x002F, 0x0035, 0x000A)

_HANDSHAKE, _ALERT = 22, 21
_CLIENT_HELLO, _SERVER_HELLO = 1, 2
_GROUPS: Final = (0x0017, 0x0018, 0x001D)  # secp256r1, secp384r1, x25519
_SIGNATURES: Final = (0x0403, 0x0503, 0x0804, 0x0401, 0x0501, 0x0203, 0x0201)


def _ext(kind: int, body: bytes) -> bytes:
    return struct.pack("!HH", kind, len(body)) + body


def _u16_list(values: tuple[int, ...]) -> bytes:
    return struct.pack("!H", 2 * len(values)) + b"".join(struct.pack("!H", v) for v in values)


def client_hello(version: Version, suites: tuple[int, ...], host: str | None = None,
                 random: bytes | None = None) -> bytes:
    """One TLS record holding a ClientHello for `version` offering `suites`."""
    extensions = (_ext(0x000A, _u16_list(_GROUPS)) + _ext(0x000B, b"\x01\x00")
                  + _ext(0xFF01, b"\x00"))
    if version >= Version.TLS1_2:
        extensions += _ext(0x000D, _u16_list(_SIGNATURES))
    if host is not None and not _is_ip(host):
        name = host.encode("idna")
        entry = b"\x00" + struct.pack("!H", len(name)) + name
        extensions += _ext(0x0000, struct.pack("!H", len(entry)) + entry)
    body = (struct.pack("!H", version) + (random or os.urandom(32)) + b"\x00"
            + _u16_list(suites) + b"\x01\x00" + struct.pack("!H", len(extensions)) + extensions)
    handshake = bytes([_CLIENT_HELLO]) + len(body).to_bytes(3, "big") + body
    # The record layer of a first flight says TLS 1.0 for compatibility.
    return struct.pack("!BHH", _HANDSHAKE, Version.TLS1_0, len(handshake)) + handshake


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class Answer:
    """What the server answered a ClientHello: the version and suite it chose, or a refusal."""

    accepted: bool
    version: int | None = None
    suite: int | None = None
    detail: str = ""  # the alert, or why the answer could not be read


def read_answer(data: bytes) -> Answer:
    """Read the first record of the server's answer."""
    if len(data) < 5:
        return Answer(False, detail="connection closed without an answer")
    kind, _, length = struct.unpack("!BHH", data[:5])
    body = data[5:5 + length]
    if kind == _ALERT and len(body) >= 2:
        return Answer(False, detail=f"alert {body[1]} (level {body[0]})")
    if kind != _HANDSHAKE or len(body) < 4 + 2 + 32 + 1 or body[0] != _SERVER_HELLO:
        return Answer(False, detail=f"not a ServerHello (record type {kind})")
    version = struct.unpack("!H", body[4:6])[0]
    sid_len = body[38]
    at = 39 + sid_len
    if len(body) < at + 2:
        return Answer(False, detail="truncated ServerHello")
    suite = struct.unpack("!H", body[at:at + 2])[0]
    return Answer(True, version=version, suite=suite)


async def probe(host: str, port: int, version: Version, suites: tuple[int, ...], *,
                timeout_s: float = 10.0) -> Answer:
    """Offer `version` and `suites` to host:port and read what it chose.

    Raises:
        OSError, TimeoutError: the server cannot be reached.
    """
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
    try:
        writer.write(client_hello(version, suites, host))
        await writer.drain()
        data = b""
        while len(data) < 5 or len(data) < 5 + struct.unpack("!H", data[3:5])[0]:
            chunk = await asyncio.wait_for(reader.read(16384), timeout_s)
            if not chunk:
                break
            data += chunk
        return read_answer(data)
    finally:
        writer.close()
