"""A development PKI for `esper certs` and `esper up --tls`: one CA, and one certificate
per identity, each named by its subject CN (the identity the servers' auth interceptor
reads, see esper.runtime.auth).

Server identities (the four services) get certificates usable both to serve and as a
client (a service is a client of its peers: Tamiyo -> Urza, Tezzeret -> Urza); client
identities (`admin`, `tolaria`) can only be clients. Every certificate names localhost,
127.0.0.1 and ::1, so a loopback stack verifies without a server-name override. Keys are
written 0600. An existing CA in the directory is reused, so issuing more certificates
later keeps the ones already handed out valid.

For development only: the CA key sits next to the certificates.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_CERT, CA_KEY = "ca.pem", "ca-key.pem"
# The local stack's servers, and the clients a developer needs: `admin` for the CLI (every
# grant, including admin calls), `tolaria` for training processes.
SERVER_IDENTITIES = ("urza", "tezzeret", "tamiyo", "nissa")
CLIENT_IDENTITIES = ("admin", "tolaria")
LOOPBACK_NAMES = ("localhost",)
LOOPBACK_IPS = ("127.0.0.1", "::1")
VALID_DAYS = 365
CA_VALID_DAYS = 3650
KEY_MODE = 0o600
# Identities become CNs and file names: keep them to a safe alphabet.
IDENTITY = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")


class CertError(ValueError):
    """A bad identity name or an unusable directory; the message names it."""


@dataclass(frozen=True)
class Issued:
    """Where one identity's certificate and key are."""

    identity: str
    cert: Path
    key: Path


def cert_paths(directory: Path, identity: str) -> Issued:
    return Issued(identity, Path(directory) / f"{identity}.pem", Path(directory) / f"{identity}-key.pem")


def check_identity(identity: str) -> str:
    if not IDENTITY.match(identity):
        raise CertError(f"identity {identity!r} must match {IDENTITY.pattern}")
    return identity


def make_dev_pki(directory: Path, servers: Iterable[str] = SERVER_IDENTITIES,
                 clients: Iterable[str] = CLIENT_IDENTITIES, *, force: bool = False,
                 extra_names: Iterable[str] = ()) -> dict[str, Issued]:
    """Write the CA (unless one is there) and a certificate per identity that lacks one
    (all of them again with `force`); returns every identity's paths."""
    directory = Path(directory)
    servers, clients = [check_identity(s) for s in servers], [check_identity(c) for c in clients]
    directory.mkdir(parents=True, exist_ok=True)
    ca_cert, ca_key = _load_or_make_ca(directory, force)
    issued = {}
    for identity, serves in [*((s, True) for s in servers), *((c, False) for c in clients)]:
        paths = cert_paths(directory, identity)
        if force or not (paths.cert.exists() and paths.key.exists()):
            names = [*LOOPBACK_NAMES, identity, *extra_names] if serves else [identity]
            _issue(ca_cert, ca_key, identity, names, serves, paths)
        issued[identity] = paths
    return issued


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Esper development"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _load_or_make_ca(directory: Path, force: bool) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert_path, key_path = directory / CA_CERT, directory / CA_KEY
    if not force and cert_path.exists() and key_path.exists():
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise CertError(f"{key_path}: not an EC key made by esper certs")
        return cert, key
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    cert = (x509.CertificateBuilder()
            .subject_name(_name("Esper development CA")).issuer_name(_name("Esper development CA"))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=CA_VALID_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    _write_key(key_path, key)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert, key


def _issue(ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, identity: str,
           names: list[str], serves: bool, paths: Issued) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dict.fromkeys(names)]
    if serves:
        sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in LOOPBACK_IPS]
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH] + ([ExtendedKeyUsageOID.SERVER_AUTH] if serves else [])
    cert = (x509.CertificateBuilder()
            .subject_name(_name(identity)).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .sign(ca_key, hashes.SHA256()))
    _write_key(paths.key, key)
    paths.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    """Create the key file 0600 from the start (never readable by others, even briefly)."""
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, KEY_MODE)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
