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
from meshnode.mesh import KEY_URI_PREFIX, NodeKey, bound_node_ids, peer_certificate
from meshnode.trust import TlsError, init_ca, issue, load_material
from meshnode.trust._tls import check_key_binding


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
                                               str(tmp_path / "n1" / "ca.crt"), str(tmp_path / "n1" / "n1.node.key")]
    nid = NodeKey.from_seed(b"n2").node_id
    assert main(["ca", "issue", "n2", "--dir", str(d), "--node-key", nid]) == 0
    assert capsys.readouterr().out.split() == [str(d / "n2.key"), str(d / "n2.crt")]  # no node key made
    assert bound_node_ids(x509.load_pem_x509_certificate((d / "n2.crt").read_bytes())) == [nid]
    assert main(["ca", "issue", "alice", "--dir", str(d), "--client"]) == 0
    assert mode(d / "alice.key") == 0o600
    assert main(["ca", "issue", "bad name", "--dir", str(d)]) == 1
    assert main(["ca"]) == 2


# ------------------------------------------------------------------ the node key bound to the node certificate


def test_a_node_certificate_binds_a_new_node_key_written_beside_it(tmp_path):
    init_ca(tmp_path / "ca", "t")
    issued = issue(tmp_path / "ca", "n1", ips=["127.0.0.1"], out_dir=tmp_path / "n1")
    assert issued.node_key == tmp_path / "n1" / "n1.node.key" and mode(issued.node_key) == 0o600
    key = NodeKey.load_or_create(issued.node_key)
    cert = x509.load_pem_x509_certificate(issued.cert.read_bytes())
    uris = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.UniformResourceIdentifier)
    assert uris == [KEY_URI_PREFIX + key.node_id] and issued.node_id == key.node_id
    peer = peer_certificate(issued.cert.read_bytes())
    assert peer is not None and peer.node_id == key.node_id and peer.is_node
    assert check_key_binding(tmp_path / "n1", "n1", issued.node_key) == key.node_id


def test_node_key_given_as_an_id_a_public_key_or_a_key_file_binds_that_key(tmp_path):
    import base64

    init_ca(tmp_path / "ca", "t")
    key = NodeKey.load_or_create(tmp_path / "data" / "node.key")
    for i, given in enumerate([key.node_id, base64.b64encode(key.public_raw).decode(),
                               str(tmp_path / "data" / "node.key")]):
        issued = issue(tmp_path / "ca", f"n{i}", node_key=given)
        assert issued.node_key is None and issued.node_id == key.node_id
        assert bound_node_ids(x509.load_pem_x509_certificate(issued.cert.read_bytes())) == [key.node_id]
    for bad in ("xyz", "0123456789abcdeg", base64.b64encode(b"short").decode()):
        with pytest.raises(ConfigError, match="--node-key"):
            issue(tmp_path / "ca", "bad", node_key=bad)
    with pytest.raises(ConfigError, match="--client"):
        issue(tmp_path / "ca", "alice", client_only=True, node_key=key.node_id)


def test_a_client_certificate_binds_no_node_key(tmp_path):
    init_ca(tmp_path / "ca", "t")
    issued = issue(tmp_path / "ca", "alice", client_only=True)
    peer = peer_certificate(issued.cert.read_bytes())
    assert issued.node_key is None and peer is not None and peer.node_id is None and not peer.is_node


def _old_certificate(directory, name):
    """A node certificate as issued before keys were bound: same CA, no meshnode:key: SAN."""
    import datetime

    from cryptography.hazmat.primitives import hashes, serialization

    from meshnode.trust import load_ca

    ca_key, ca_cert = load_ca(directory)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    (directory / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def test_the_node_refuses_an_old_certificate_or_another_key_with_the_command_that_fixes_it(tmp_path):
    ca = tmp_path / "ca"
    init_ca(ca, "t")
    key_file = tmp_path / "data" / "node.key"
    NodeKey.load_or_create(key_file)
    _old_certificate(ca, "old")
    with pytest.raises(TlsError, match=r"binds no node key .*meshnode ca issue old .*--node-key .*node.key"):
        check_key_binding(ca, "old", key_file)
    issue(ca, "other", node_key=NodeKey.from_seed(b"someone else").node_id)
    with pytest.raises(TlsError, match=r"binds node id .* but this node's key .* reissue it with: meshnode ca"):
        check_key_binding(ca, "other", key_file)
    with pytest.raises(TlsError, match="does not exist"):
        check_key_binding(ca, "other", tmp_path / "nowhere" / "node.key")
