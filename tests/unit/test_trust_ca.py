"""The fleet CA: files and modes, refusal to overwrite, certificate contents, the ``meshnode ca`` command."""

from __future__ import annotations

import ipaddress
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from meshnode._exceptions import ConfigError
from meshnode.cli_main import main
from meshnode.trust import TlsError, init_ca, issue, load_material


def mode(p) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_init_writes_a_p256_ca_with_a_0600_key_and_refuses_to_overwrite(tmp_path):
    ca = init_ca(tmp_path / "ca", "prod")
    assert mode(ca.key) == 0o600 and mode(ca.cert) == 0o644
    cert = x509.load_pem_x509_certificate(ca.cert.read_bytes())
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey) and cert.public_key().curve.name == "secp256r1"
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    before = ca.cert.read_bytes()
    with pytest.raises(ConfigError, match="--force"):
        init_ca(tmp_path / "ca", "prod")
    assert ca.cert.read_bytes() == before
    again = init_ca(tmp_path / "ca", "prod", force=True)
    assert again.cert.read_bytes() != before and mode(again.key) == 0o600


@pytest.mark.parametrize(("client", "usages"), [
    (False, {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}),
    (True, {ExtendedKeyUsageOID.CLIENT_AUTH}),
])
def test_issue_node_and_client_certificates(tmp_path, client, usages):
    init_ca(tmp_path, "prod")
    got = issue(tmp_path, "web-1", ips=["10.0.0.5", "::1"], dns=["web-1.prod"], client_only=client)
    assert mode(got.key) == 0o600
    cert = x509.load_pem_x509_certificate(got.cert.read_bytes())
    ca = x509.load_pem_x509_certificate((tmp_path / "ca.crt").read_bytes())
    cert.verify_directly_issued_by(ca)
    assert set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == usages
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["web-1.prod"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.5"), ipaddress.ip_address("::1")]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    with pytest.raises(ConfigError, match="--force"):
        issue(tmp_path, "web-1")


@pytest.mark.parametrize(("name", "ips"), [("../evil", []), ("", []), ("ok", ["10.0.0.300"])])
def test_issue_refuses_bad_names_and_addresses(tmp_path, name, ips):
    init_ca(tmp_path)
    with pytest.raises(ConfigError):
        issue(tmp_path, name, ips=ips)


def test_issue_without_a_ca_says_how_to_make_one(tmp_path):
    with pytest.raises(ConfigError, match="meshnode ca init --dir"):
        issue(tmp_path, "web-1")


def test_tls_material_errors_name_the_file_and_the_command(tmp_path):
    with pytest.raises(TlsError, match=r"ca\.crt is missing.*meshnode ca init"):
        load_material(tmp_path, "web-1")
    init_ca(tmp_path)
    with pytest.raises(TlsError, match=r"web-1\.crt is missing.*meshnode ca issue web-1"):
        load_material(tmp_path, "web-1")
    issue(tmp_path, "web-1")
    (tmp_path / "web-1.key").chmod(0o644)
    with pytest.raises(TlsError, match="chmod 600"):
        load_material(tmp_path, "web-1")
    (tmp_path / "web-1.key").chmod(0o600)
    m = load_material(tmp_path, "web-1")
    assert m.ca.startswith(b"-----BEGIN CERTIFICATE") and b"PRIVATE KEY" in m.key


def test_ca_command(tmp_path, capsys):
    d = tmp_path / "ca"
    assert main(["ca", "init", "--dir", str(d), "--name", "lab"]) == 0
    assert capsys.readouterr().out.split() == [str(d / "ca.key"), str(d / "ca.crt")]
    assert main(["ca", "init", "--dir", str(d)]) == 1
    assert "exists" in capsys.readouterr().err
    assert main(["ca", "issue", "n1", "--dir", str(d), "--ip", "127.0.0.1", "--out", str(tmp_path / "n1")]) == 0
    assert capsys.readouterr().out.split() == [str(tmp_path / "n1" / "n1.key"), str(tmp_path / "n1" / "n1.crt"),
                                               str(tmp_path / "n1" / "ca.crt")]
    assert main(["ca", "issue", "alice", "--dir", str(d), "--client"]) == 0
    assert mode(d / "alice.key") == 0o600
    assert main(["ca", "issue", "bad name", "--dir", str(d)]) == 1
    assert main(["ca"]) == 2
