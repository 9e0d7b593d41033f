"""adrgate.tls: TLS 1.2 with the two OpenADR suites and mutual authentication, on loopback."""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
from dataclasses import dataclass

import aiohttp
import pytest
from aiohttp import web

from adrgate.tls import OPENADR_CIPHERS, client_context, peer_fingerprint, server_context
from oadr.signing import fingerprint
from tests.certs import Leaf, Pki, write_pki

HOST = "127.0.0.1"
RSA_SUITE = "AES128-SHA256"
ECC_SUITE = "ECDHE-ECDSA-AES128-SHA256"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return write_pki(tmp_path_factory.mktemp("pki"))


@dataclass(frozen=True)
class Handshake:
    version: str | None
    cipher: str
    server_fingerprint: str | None  # as the client saw it
    client_fingerprint: str | None  # as the server saw it


async def handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext,
                    server_hostname: str = HOST) -> Handshake:
    seen: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.set_result(peer_fingerprint(writer.get_extra_info("ssl_object")))
        writer.write(b"ok")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, HOST, 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(
            HOST, port, ssl=client_ctx, server_hostname=server_hostname), timeout=10)
        try:
            assert await asyncio.wait_for(reader.read(), timeout=10) == b"ok"
            ssl_object = writer.get_extra_info("ssl_object")
            cipher = ssl_object.cipher()
            assert cipher is not None
            return Handshake(version=ssl_object.version(), cipher=cipher[0],
                             server_fingerprint=peer_fingerprint(ssl_object),
                             client_fingerprint=await asyncio.wait_for(seen, timeout=10))
        finally:
            writer.close()
    finally:
        server.close()
        await server.wait_closed()


def server_for(pki: Pki, leaf: Leaf) -> ssl.SSLContext:
    return server_context(leaf.cert, leaf.key, pki.ca)


def client_for(pki: Pki, leaf: Leaf) -> ssl.SSLContext:
    return client_context(leaf.cert, leaf.key, pki.ca)


def test_contexts_are_openadr_profile(pki: Pki) -> None:
    for ctx in (server_for(pki, pki.vtn_rsa), client_for(pki, pki.ven_ecc)):
        assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
        assert ctx.maximum_version == ssl.TLSVersion.TLSv1_2
        assert ctx.verify_mode == ssl.CERT_REQUIRED
        tls12 = {c["name"] for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.2"}
        assert tls12 == set(OPENADR_CIPHERS.split(":"))
    assert client_for(pki, pki.ven_rsa).check_hostname


@pytest.mark.parametrize(("server", "client", "suite"), [
    ("vtn_rsa", "ven_rsa", RSA_SUITE),
    ("vtn_ecc", "ven_ecc", ECC_SUITE),
    ("vtn_rsa", "ven_ecc", RSA_SUITE),   # the suite follows the server's certificate
    ("vtn_ecc", "ven_rsa", ECC_SUITE),
])
async def test_mutual_tls_handshake(pki: Pki, server: str, client: str, suite: str) -> None:
    server_leaf, client_leaf = getattr(pki, server), getattr(pki, client)
    result = await handshake(server_for(pki, server_leaf), client_for(pki, client_leaf))
    assert result.version == "TLSv1.2"
    assert result.cipher == suite
    assert result.client_fingerprint == fingerprint(client_leaf.cert_pem)
    assert result.server_fingerprint == fingerprint(server_leaf.cert_pem)


@pytest.mark.parametrize(("offered", "suite", "server_cert"), [
    (RSA_SUITE, RSA_SUITE, "vtn_rsa"),
    (ECC_SUITE, ECC_SUITE, "vtn_ecc"),
])
async def test_vtn_with_both_chains_serves_rsa_only_and_ecc_only_vens(
        pki: Pki, offered: str, suite: str, server_cert: str) -> None:
    server_ctx = server_context(pki.vtn_rsa.cert, pki.vtn_rsa.key, pki.ca,
                                extra_chains=[(pki.vtn_ecc.cert, pki.vtn_ecc.key)])
    client_ctx = client_for(pki, pki.ven_rsa)
    client_ctx.set_ciphers(offered)
    result = await handshake(server_ctx, client_ctx)
    assert result.cipher == suite
    assert result.server_fingerprint == fingerprint(getattr(pki, server_cert).cert_pem)


def _client_without_certificate(pki: Pki) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(OPENADR_CIPHERS)  # so that the missing certificate is the only fault
    ctx.load_verify_locations(cafile=pki.ca)
    return ctx


def _openleadr_client_context(pki: Pki, leaf: Leaf) -> ssl.SSLContext:
    """The context openleadr's OpenADRClient builds (client.py, _ensure_client_session)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(pki.ca)
    ctx.load_cert_chain(leaf.cert, leaf.key, None)
    return ctx


@pytest.mark.parametrize("ven", ["ven_rsa", "ven_ecc"])
async def test_openleadr_client_context_reaches_a_vtn_with_an_ecc_chain(pki: Pki,
                                                                         ven: str) -> None:
    # Python's default client ciphers offer ECDHE-ECDSA-AES128-SHA256 but not AES128-SHA256
    # (no RSA key exchange), so openleadr VENs need the VTN to hold an ECC certificate.
    dual = server_context(pki.vtn_rsa.cert, pki.vtn_rsa.key, pki.ca,
                          extra_chains=[(pki.vtn_ecc.cert, pki.vtn_ecc.key)])
    result = await handshake(dual, _openleadr_client_context(pki, getattr(pki, ven)))
    assert (result.version, result.cipher) == ("TLSv1.2", ECC_SUITE)
    assert result.client_fingerprint == fingerprint(getattr(pki, ven).cert_pem)
    reason = server_refusal(server_for(pki, pki.vtn_rsa), _openleadr_client_context(pki, pki.ven_rsa))
    assert reason == "NO_SHARED_CIPHER"  # an RSA-only VTN cannot serve them


def server_refusal(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> str:
    """Handshake over loopback with blocking sockets; return the server's SSL error reason."""
    listener = socket.create_server((HOST, 0))
    errors: list[BaseException] = []

    def serve() -> None:
        conn, _ = listener.accept()
        try:
            server_ctx.wrap_socket(conn, server_side=True).close()
        except (ssl.SSLError, OSError) as exc:
            errors.append(exc)
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with socket.create_connection(listener.getsockname(), timeout=10) as raw:
            with pytest.raises((ssl.SSLError, ConnectionError)):
                with client_ctx.wrap_socket(raw, server_hostname=HOST) as tls:
                    tls.recv(1)  # TLS 1.2: the server refuses before its Finished
    finally:
        thread.join(timeout=10)
        listener.close()
    assert len(errors) == 1 and isinstance(errors[0], ssl.SSLError), errors
    return str(errors[0].reason)


def test_client_without_certificate_is_refused(pki: Pki) -> None:
    reason = server_refusal(server_for(pki, pki.vtn_rsa), _client_without_certificate(pki))
    assert reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE"


def test_client_with_untrusted_certificate_is_refused(pki: Pki) -> None:
    reason = server_refusal(server_for(pki, pki.vtn_ecc), client_for(pki, pki.stranger))
    assert reason == "CERTIFICATE_VERIFY_FAILED"


def test_tls13_only_client_is_refused(pki: Pki) -> None:
    ctx = client_for(pki, pki.ven_rsa)
    ctx.maximum_version = ssl.TLSVersion.MAXIMUM_SUPPORTED
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    assert server_refusal(server_for(pki, pki.vtn_rsa), ctx) == "UNSUPPORTED_PROTOCOL"


def test_client_offering_other_suites_is_refused(pki: Pki) -> None:
    ctx = client_for(pki, pki.ven_rsa)
    ctx.set_ciphers("ECDHE-RSA-AES128-GCM-SHA256:AES256-SHA256")
    assert server_refusal(server_for(pki, pki.vtn_rsa), ctx) == "NO_SHARED_CIPHER"


async def test_server_with_wrong_name_is_refused(pki: Pki) -> None:
    with pytest.raises(ssl.SSLCertVerificationError):
        await handshake(server_for(pki, pki.vtn_rsa), client_for(pki, pki.ven_rsa),
                        server_hostname="vtn.elsewhere.test")


def test_peer_fingerprint_without_tls_or_certificate() -> None:
    assert peer_fingerprint(None) is None


async def test_aiohttp_vtn_sees_ven_fingerprint(pki: Pki) -> None:
    """The way the VTN will use it: aiohttp on both sides, identity from the TLS peer."""

    async def whoami(request: web.Request) -> web.Response:
        assert request.transport is not None
        return web.Response(text=str(peer_fingerprint(
            request.transport.get_extra_info("ssl_object"))))

    app = web.Application()
    app.router.add_post("/OpenADR2/Simple/2.0b/OadrPoll", whoami)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, HOST, 0, ssl_context=server_for(pki, pki.vtn_ecc))
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        connector = aiohttp.TCPConnector(ssl=client_for(pki, pki.ven_rsa))
        async with aiohttp.ClientSession(connector=connector) as session:
            async with session.post(f"https://{HOST}:{port}/OpenADR2/Simple/2.0b/OadrPoll",
                                    data=b"<x/>") as response:
                assert response.status == 200
                assert await response.text() == fingerprint(pki.ven_rsa.cert_pem)
    finally:
        await runner.cleanup()
