"""`esper certs`: a development CA and certificates a TLS server and client accept: the
identity in the subject CN, loopback names for servers, client-only usage for clients,
keys 0600, the CA kept across runs (already issued certificates stay valid)."""

from __future__ import annotations

import ipaddress

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from esper.cli.main import main


def _cert(path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_certs_makes_a_ca_and_named_certificates(tmp_path, capsys) -> None:
    out = tmp_path / "pki"
    assert main(["certs", "--dir", str(out), "--server", "urza", "--client", "ops", "--name", "urza.internal"]) == 0
    printed = capsys.readouterr().out
    assert f"ESPER_TLS_CA={out / 'ca.pem'}" in printed and "ops.pem" in printed
    for key in ("ca-key.pem", "urza-key.pem", "ops-key.pem"):
        assert (out / key).stat().st_mode & 0o777 == 0o600
    ca, urza, ops = _cert(out / "ca.pem"), _cert(out / "urza.pem"), _cert(out / "ops.pem")
    assert urza.issuer == ca.subject and ops.issuer == ca.subject
    assert urza.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "urza"
    sans = urza.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"localhost", "urza", "urza.internal"} <= set(sans.get_values_for_type(x509.DNSName))
    assert {ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")} <= set(sans.get_values_for_type(x509.IPAddress))
    usage = ops.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]  # a client cannot serve
    # A second run keeps the CA and what it issued; --force starts over.
    assert main(["certs", "--dir", str(out), "--server", "urza", "--client", "ops", "--client", "more"]) == 0
    assert _cert(out / "ca.pem") == ca and _cert(out / "urza.pem") == urza and (out / "more.pem").exists()
    assert main(["certs", "--dir", str(out), "--server", "urza", "--client", "ops", "--force"]) == 0
    assert _cert(out / "ca.pem") != ca


def test_certs_refuses_a_bad_identity(tmp_path, capsys) -> None:
    assert main(["certs", "--dir", str(tmp_path), "--client", "../evil"]) == 2
    assert "identity '../evil'" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing written before the check
