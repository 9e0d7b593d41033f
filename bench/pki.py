"""Certificates for a benchmark fleet: one CA, a VTN leaf, and one distinct leaf per VEN.

Every VEN gets its own certificate, hence its own OpenADR fingerprint, as in the field. The
private keys come from a small pool (`KEY_POOL`): RSA-2048 key generation costs ~0.1 s, and a
VTN's per-message work (verify with the certificate's public key, fingerprint the certificate)
does not depend on whether two certificates share a key.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from enum import StrEnum
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from signxml.algorithms import SignatureMethod

from oadr.signing import PrivateKey, SigningKey, fingerprint

KEY_POOL = 8


class Algorithm(StrEnum):
    ECDSA = "ecdsa"  # P-256
    RSA = "rsa"  # 2048 bits


@dataclass(frozen=True)
class LeafFiles:
    cert: Path
    key: Path


@dataclass(frozen=True)
class VenCredentials:
    files: LeafFiles
    key: SigningKey  # parsed once: signs this VEN's messages

    @property
    def fingerprint(self) -> str:
        return self.key.fingerprint


@dataclass(frozen=True)
class FleetPki:
    algorithm: Algorithm
    ca: Path
    vtn: LeafFiles  # TLS server certificate (SAN 127.0.0.1) and XML signing key of the VTN
    vens: tuple[VenCredentials, ...]


def _new_key(algorithm: Algorithm) -> PrivateKey:
    if algorithm is Algorithm.RSA:
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificate(subject: str, key: PrivateKey, issuer: x509.Name, ca_key: PrivateKey, *,
                 ca: bool, san: list[x509.GeneralName]) -> x509.Certificate:
    now = datetime.now(timezone.utc)
    builder = (x509.CertificateBuilder()
               .subject_name(_name(subject)).issuer_name(issuer).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=30))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        builder = (builder
                   .add_extension(x509.ExtendedKeyUsage(
                       [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False)
                   .add_extension(x509.SubjectAlternativeName(san), critical=False))
    return builder.sign(ca_key, hashes.SHA256())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def make_fleet_pki(directory: Path, algorithm: Algorithm, ven_names: list[str]) -> FleetPki:
    """Create and write a CA, a VTN leaf and one leaf per VEN name under `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    method = SignatureMethod.RSA_SHA256 if algorithm is Algorithm.RSA \
        else SignatureMethod.ECDSA_SHA256
    ca_key = _new_key(algorithm)
    ca_cert = _certificate(f"adrgate bench {algorithm} root", ca_key, _name(
        f"adrgate bench {algorithm} root"), ca_key, ca=True, san=[])
    ca_path = directory / "ca.crt"
    ca_path.write_bytes(_pem(ca_cert))

    def write_leaf(name: str, cert: x509.Certificate, key_pem: bytes) -> LeafFiles:
        files = LeafFiles(cert=directory / f"{name}.crt", key=directory / f"{name}.key")
        files.cert.write_bytes(_pem(cert))
        files.key.write_bytes(key_pem)
        return files

    vtn_key = _new_key(algorithm)
    vtn_san: list[x509.GeneralName] = [x509.DNSName("localhost"),
                                       x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    vtn = write_leaf("vtn", _certificate("bench-vtn", vtn_key, ca_cert.subject, ca_key, ca=False,
                                         san=vtn_san), _key_pem(vtn_key))
    pool = [_new_key(algorithm) for _ in range(min(KEY_POOL, max(1, len(ven_names))))]
    pool_pem = [_key_pem(k) for k in pool]
    vens = []
    for i, name in enumerate(ven_names):
        key = pool[i % len(pool)]
        cert = _certificate(name, key, ca_cert.subject, ca_key, ca=False,
                            san=[x509.DNSName(f"{name}.bench")])
        files = write_leaf(name, cert, pool_pem[i % len(pool)])
        cert_pem = _pem(cert)
        vens.append(VenCredentials(files=files, key=SigningKey(
            private_key=key, cert_pem=cert_pem, method=method, fingerprint=fingerprint(cert_pem))))
    return FleetPki(algorithm=algorithm, ca=ca_path, vtn=vtn, vens=tuple(vens))
