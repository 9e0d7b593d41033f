"""TLS contexts as OpenADR 2.0b mandates: TLS 1.2 only, two cipher suites, mutual authentication.

The suites are TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256 (ECC certificates) and
TLS_RSA_WITH_AES_128_CBC_SHA256 (RSA certificates). Both are allowed by OpenSSL's default
security level with RSA-2048 and P-256 keys, so the level is not lowered. A VTN that serves RSA
and ECC VENs loads both certificate chains into one server context (`extra_chains`).
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Iterable
from typing import Final

from oadr.signing import fingerprint

StrPath = str | os.PathLike[str]

OPENADR_CIPHERS: Final = "ECDHE-ECDSA-AES128-SHA256:AES128-SHA256"


def server_context(cert_file: StrPath, key_file: StrPath, ca_file: StrPath, *,
                   extra_chains: Iterable[tuple[StrPath, StrPath]] = (),
                   password: bytes | None = None) -> ssl.SSLContext:
    """A VTN's context: client certificates required and verified against `ca_file`.

    Raises:
        ssl.SSLError, OSError: unreadable files, or a key that does not match its certificate.
    """
    ctx = _openadr_context(ssl.PROTOCOL_TLS_SERVER, ca_file)
    ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.load_cert_chain(cert_file, key_file, password)
    for extra_cert, extra_key in extra_chains:
        ctx.load_cert_chain(extra_cert, extra_key, password)
    return ctx


def client_context(cert_file: StrPath, key_file: StrPath, ca_file: StrPath, *,
                   check_hostname: bool = True,
                   password: bytes | None = None) -> ssl.SSLContext:
    """A VEN's (or a VTN-as-client's) context: presents its certificate, verifies the server's.

    Raises:
        ssl.SSLError, OSError: unreadable files, or a key that does not match its certificate.
    """
    ctx = _openadr_context(ssl.PROTOCOL_TLS_CLIENT, ca_file)
    ctx.check_hostname = check_hostname
    ctx.load_cert_chain(cert_file, key_file, password)
    return ctx


def pin(ctx: ssl.SSLContext, expected_fingerprint: str) -> ssl.SSLContext:
    """Make a client context refuse, inside the handshake, a server whose certificate is not the
    pinned one, so not a byte of the request reaches an impostor (asyncio drives the handshake
    through `sslobject_class`)."""
    expected = expected_fingerprint.upper()

    class Pinned(ssl.SSLObject):
        def do_handshake(self) -> None:
            super().do_handshake()
            seen = peer_fingerprint(self)
            if seen != expected:
                raise ssl.SSLCertVerificationError(
                    f"server certificate fingerprint {seen} is not the pinned {expected}")

    ctx.sslobject_class = Pinned
    return ctx


def peer_fingerprint(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> str | None:
    """The OpenADR fingerprint of the peer's certificate, or None without TLS or certificate.

    With aiohttp: `peer_fingerprint(request.transport.get_extra_info("ssl_object"))`.
    """
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    return fingerprint(der) if der else None


def _openadr_context(protocol: ssl._SSLMethod, ca_file: StrPath) -> ssl.SSLContext:
    ctx = ssl.SSLContext(protocol)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(OPENADR_CIPHERS)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cafile=ca_file)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    return ctx
