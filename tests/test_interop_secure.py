"""Interop over mutual TLS 1.2 with signed messages: openleadr's client, as shipped, both key types.

The VTN serves an RSA and an ECC certificate (a full VTN supports both), requires XML signatures
and signs its own replies; the VEN pins the VTN's signing fingerprint and signs with its own key.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import aiohttp
import pytest
from openleadr import OpenADRClient

from adrgate.tls import server_context
from oadr.messages import OptType
from oadr.signing import SigningKey, fingerprint

from tests.certs import Pki, write_pki
from tests.vtnkit import Vtn, Wire, running_vtn, simple_event, utcnow, wait_for


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return write_pki(tmp_path_factory.mktemp("pki"))


@pytest.mark.parametrize("ven_key", ["rsa", "ecc"])
@pytest.mark.parametrize("vtn_key", ["rsa", "ecc"])
async def test_signed_mutual_tls_event_round_trip(pki: Pki, ven_key: str, vtn_key: str) -> None:
    vtn_leaf = pki.vtn_rsa if vtn_key == "rsa" else pki.vtn_ecc
    ven_leaf = pki.ven_rsa if ven_key == "rsa" else pki.ven_ecc
    tls = server_context(pki.vtn_rsa.cert, pki.vtn_rsa.key, pki.ca,
                         extra_chains=[(pki.vtn_ecc.cert, pki.vtn_ecc.key)])
    signing = SigningKey.load(vtn_leaf.cert_pem, vtn_leaf.key_pem)
    async with running_vtn(ssl_context=tls, signing_key=signing, require_signatures=True,
                           secure=True, poll_freq=timedelta(seconds=1)) as vtn:
        vtn.url = vtn.url.replace("127.0.0.1", "localhost")
        client = OpenADRClient(ven_name=f"ven-{ven_key}", vtn_url=vtn.oadr_url,
                               cert=str(ven_leaf.cert), key=str(ven_leaf.key), ca_file=str(pki.ca),
                               vtn_fingerprint=fingerprint(vtn_leaf.cert_pem),
                               show_fingerprint=False)
        client.add_handler("on_event", lambda event: "optIn")
        wire = Wire()
        wire.attach(client)
        await client.run()
        try:
            assert client.registration_id, "signed registration over mutual TLS failed"
            ven = vtn.store.get_ven(client.ven_id)
            assert ven is not None and ven.fingerprint == fingerprint(ven_leaf.cert_pem)
            ev = await vtn_event(vtn, client.ven_id)
            d = await wait_for(lambda: next((x for x in vtn.store.deliveries_for_event(ev)
                                             if x.acked_mod == 0), None), what="signed optIn")
            assert d.opt_type is OptType.OPT_IN
            assert all(b"<ds:Signature" in m or b":Signature" in m for m in wire.received)
        finally:
            await client.stop()
        assert wire.violations == []


async def vtn_event(vtn: Vtn, ven_id: str) -> str:
    # in secure mode the operator API needs a client certificate too: call the operator directly
    rec = vtn.operator.create_event(simple_event(targets={"ven_ids": [ven_id]}), utcnow())
    return rec.event.event_id


async def test_stranger_certificate_cannot_register(pki: Pki, tmp_path: Path) -> None:
    tls = server_context(pki.vtn_rsa.cert, pki.vtn_rsa.key, pki.ca,
                         extra_chains=[(pki.vtn_ecc.cert, pki.vtn_ecc.key)])
    async with running_vtn(ssl_context=tls, secure=True) as vtn:
        vtn.url = vtn.url.replace("127.0.0.1", "localhost")
        client = OpenADRClient(ven_name="intruder", vtn_url=vtn.oadr_url,
                               cert=str(pki.stranger.cert), key=str(pki.stranger.key),
                               ca_file=str(pki.ca), show_fingerprint=False)
        try:
            await client.create_party_registration()
            assert client.registration_id is None
            assert vtn.store.list_vens() == []
        finally:
            await client.client_session.close()


async def test_plain_http_is_refused_in_secure_mode(pki: Pki) -> None:
    """Over the TLS port plain HTTP gets no OpenADR answer; and a secure VTN that is somehow
    reached without TLS refuses to serve OpenADR (403)."""
    from oadr import codec
    from oadr.messages import QueryRegistration

    body = codec.serialize(QueryRegistration(request_id="r1"))
    tls = server_context(pki.vtn_rsa.cert, pki.vtn_rsa.key, pki.ca,
                         extra_chains=[(pki.vtn_ecc.cert, pki.vtn_ecc.key)])
    async with running_vtn(ssl_context=tls, secure=True) as vtn:
        plain = vtn.oadr_url.replace("https://", "http://") + "/EiRegisterParty"
        async with aiohttp.ClientSession() as session:
            with pytest.raises(aiohttp.ClientError):
                async with session.post(plain, data=body) as resp:
                    await resp.read()
    async with running_vtn(secure=True) as misconfigured:  # secure config, no TLS listener
        async with aiohttp.ClientSession() as session:
            async with session.post(misconfigured.oadr_url + "/EiRegisterParty",
                                    data=body) as resp:
                assert resp.status == 403
                assert b"TLS" in await resp.read()
