"""The fleet over mutual TLS 1.2 with signed messages and the VTN's fingerprint pinned."""

from __future__ import annotations

from datetime import timedelta

import pytest
from aiohttp import web

from adrgate.tls import server_context
from oadr.messages import OptType
from oadr.signing import SigningKey, fingerprint
from ven.fleet import TlsSpec

from tests.certs import Leaf, Pki, write_pki
from tests.venkit import running_fleet, ven_spec
from tests.vtnkit import Handler, running_vtn, simple_event, utcnow, wait_for


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return write_pki(tmp_path_factory.mktemp("pki"))


def tls(leaf: Leaf, pki: Pki) -> TlsSpec:
    return TlsSpec(cert=str(leaf.cert), key=str(leaf.key), ca=str(pki.ca))


@pytest.mark.parametrize("ven_key", ["rsa", "ecc"])
async def test_signed_mutual_tls_with_pinned_vtn(pki: Pki, ven_key: str) -> None:
    leaf = pki.ven_rsa if ven_key == "rsa" else pki.ven_ecc
    server = server_context(pki.vtn_ecc.cert, pki.vtn_ecc.key, pki.ca)
    signing = SigningKey.load(pki.vtn_ecc.cert_pem, pki.vtn_ecc.key_pem)
    async with running_vtn(ssl_context=server, signing_key=signing, require_signatures=True,
                           secure=True, poll_freq=timedelta(seconds=1)) as vtn:
        spec = ven_spec(vtn.oadr_url, f"agg-{ven_key}", tls=tls(leaf, pki), sign=True,
                        vtn_fingerprint=fingerprint(pki.vtn_ecc.cert_pem))
        async with running_fleet([spec]) as f:
            ven = await wait_for(lambda: next((v for v in vtn.store.list_vens()
                                               if v.is_registered), None), what="registration")
            assert ven.fingerprint == fingerprint(leaf.cert_pem)
            # in secure mode the operator API needs a client certificate: call the operator
            rec = vtn.operator.create_event(simple_event(targets={"ven_ids": [ven.ven_id]},
                                                         start_in=timedelta(minutes=5)), utcnow())
            d = await wait_for(lambda: next((x for x in vtn.store.deliveries_for_event(
                rec.event.event_id) if x.acked_mod == 0), None), what="signed optIn")
            assert d.opt_type is OptType.OPT_IN
            assert all(b"Signature" in body for _, _, body in f.wire.sent)


async def test_wrong_pinned_fingerprint_stops_the_ven_before_it_says_anything(pki: Pki) -> None:
    server = server_context(pki.vtn_ecc.cert, pki.vtn_ecc.key, pki.ca)
    requests: list[str] = []

    @web.middleware
    async def count(request: web.Request, handler: Handler) -> web.StreamResponse:
        requests.append(request.path)
        return await handler(request)

    async with running_vtn(ssl_context=server, secure=True, middlewares=[count]) as vtn:
        spec = ven_spec(vtn.oadr_url, "agg", tls=tls(pki.ven_ecc, pki),
                        vtn_fingerprint=fingerprint(pki.vtn_rsa.cert_pem))  # not the VTN's
        async with running_fleet([spec]) as f:
            await wait_for(lambda: f.agent("agg").failures >= 2, what="refusals")
            assert "fingerprint" in (f.agent("agg").last_error or "")
            assert requests == [], "the pin is checked in the TLS handshake, before any request"
            assert vtn.store.list_vens() == []
