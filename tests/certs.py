"""Test PKI: an RSA and an ECC hierarchy (as OpenADR has), leaves for a VTN and VENs.

Key generation runs once per process; `write_pki(directory)` only writes the cached PEMs.
"""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

Key = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class Leaf:
    cert: Path
    key: Path
    cert_pem: bytes
    key_pem: bytes


@dataclass(frozen=True)
class Pki:
    ca: Path          # bundle trusted by both sides: the RSA root and the ECC root
    rsa_ca: Path
    ecc_ca: Path
    vtn_rsa: Leaf     # server certificates: SAN 127.0.0.1 and localhost
    vtn_ecc: Leaf
    ven_rsa: Leaf     # client certificates
    ven_ecc: Leaf
    stranger: Leaf    # a client certificate from a CA that nobody trusts


@dataclass(frozen=True)
class _Pem:
    cert: bytes
    key: bytes


def write_pki(directory: Path) -> Pki:
    """Write the process-wide test PKI as PEM files into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    pems = _material()

    def put(name: str, data: bytes) -> Path:
        path = directory / name
        path.write_bytes(data)
        return path

    def leaf(name: str) -> Leaf:
        pem = pems[name]
        return Leaf(cert=put(f"{name}.crt", pem.cert), key=put(f"{name}.key", pem.key),
                    cert_pem=pem.cert, key_pem=pem.key)

    return Pki(
        ca=put("ca-bundle.crt", pems["rsa_ca"].cert + pems["ecc_ca"].cert),
        rsa_ca=put("rsa_ca.crt", pems["rsa_ca"].cert),
        ecc_ca=put("ecc_ca.crt", pems["ecc_ca"].cert),
        vtn_rsa=leaf("vtn_rsa"), vtn_ecc=leaf("vtn_ecc"),
        ven_rsa=leaf("ven_rsa"), ven_ecc=leaf("ven_ecc"), stranger=leaf("stranger"),
    )


@functools.cache
def _material() -> dict[str, _Pem]:
    rsa_ca_key, ecc_ca_key, stranger_ca_key = _rsa(), _ecc(), _ecc()
    rsa_ca = _ca("adrgate test RSA root", rsa_ca_key)
    ecc_ca = _ca("adrgate test ECC root", ecc_ca_key)
    stranger_ca = _ca("untrusted root", stranger_ca_key)
    server_san = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    out = {"rsa_ca": _Pem(_cert_pem(rsa_ca), _key_pem(rsa_ca_key)),
           "ecc_ca": _Pem(_cert_pem(ecc_ca), _key_pem(ecc_ca_key))}
    leaves: list[tuple[str, x509.Certificate, Key, Key, list[x509.GeneralName]]] = [
        ("vtn_rsa", rsa_ca, rsa_ca_key, _rsa(), server_san),
        ("vtn_ecc", ecc_ca, ecc_ca_key, _ecc(), server_san),
        ("ven_rsa", rsa_ca, rsa_ca_key, _rsa(), [x509.DNSName("ven-rsa.test")]),
        ("ven_ecc", ecc_ca, ecc_ca_key, _ecc(), [x509.DNSName("ven-ecc.test")]),
        ("stranger", stranger_ca, stranger_ca_key, _ecc(), [x509.DNSName("stranger.test")]),
    ]
    for name, ca, ca_key, key, san in leaves:
        out[name] = _Pem(_cert_pem(_leaf(name, key, san, ca, ca_key)), _key_pem(key))
    return out


def _rsa() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _ecc() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _builder(subject: x509.Name, issuer: x509.Name, key: Key) -> x509.CertificateBuilder:
    now = datetime.now(timezone.utc)
    return (x509.CertificateBuilder()
            .subject_name(subject).issuer_name(issuer).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=365))
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False))


def _ca(common_name: str, key: Key) -> x509.Certificate:
    name = _name(common_name)
    return (_builder(name, name, key)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))


def _leaf(common_name: str, key: Key, san: list[x509.GeneralName], ca: x509.Certificate,
          ca_key: Key) -> x509.Certificate:
    is_rsa = isinstance(key, rsa.RSAPrivateKey)
    return (_builder(_name(common_name), ca.subject, key)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, key_encipherment=is_rsa, key_agreement=not is_rsa,
                content_commitment=False, data_encipherment=False, key_cert_sign=False,
                crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False)
            .add_extension(x509.SubjectAlternativeName(san), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: Key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
