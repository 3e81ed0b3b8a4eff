"""A fleet certificate authority: one CA per fleet, certificates for nodes (server + client) and clients.

The mesh and the API use mutual TLS: every node presents a certificate signed by the fleet CA and requires
one from its callers, so that only the fleet's machines and its operators' tools can talk to a node.
Keys are ECDSA P-256: grpc's TLS stack (BoringSSL) accepts it for server and client certificates on every
version grpcio ships, which is not true of Ed25519 certificates. Key files are written mode 0600 and never
overwritten without ``force``.

Layout of a CA directory: ``ca.key``, ``ca.crt``, and ``NAME.key``/``NAME.crt`` for each issued name. A
node needs ``ca.crt``, its own ``NAME.crt`` and ``NAME.key`` (see ``meshnode.trust._tls``); ``issue`` with
``out_dir`` writes exactly that directory (``ca.crt`` copied), ready for ``meshnode run --tls-dir``.

A node certificate also binds the node's Ed25519 key (the one that signs its digests and gossip): its node
id, the key's fingerprint, is the URI subject alternative name ``meshnode:key:<node id>``. ``issue`` binds
the key given as ``node_key`` (a node id, a base64 public key, or the node's ``node.key``), or makes one,
``NAME.node.key`` (mode 0600) beside the certificate, which ``meshnode run --tls-dir`` then uses. A node
refuses to start with a certificate that binds no key or another key than its own.

An operator also gets a signing key (``operator=True``): ``NAME.sign.key`` (Ed25519, PKCS#8, mode 0600), with
which meshctl signs fleet queries, and ``NAME.sign.pub`` (its raw public key in base64, one line), which
nodes list in ``operator_keys_file``.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meshnode._exceptions import ConfigError
from meshnode._files import check_secret
from meshnode.mesh import KEY_URI_PREFIX, NodeKey, node_id_from_public_key

CA_KEY: Final = "ca.key"
CA_CERT: Final = "ca.crt"
_NAME_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_NODE_ID_RE: Final = re.compile(r"^[0-9a-f]{16}$")


@dataclass(frozen=True, slots=True)
class Issued:
    """Paths of a written key pair and the certificate's serial."""

    key: Path
    cert: Path
    serial: int
    ca: Path | None = None
    """``ca.crt`` copied beside the pair (``out_dir`` other than the CA directory)."""
    sign_key: Path | None = None
    """The operator's Ed25519 signing key (``operator=True``)."""
    sign_pub: Path | None = None
    """Its public key, base64 on one line."""
    node_key: Path | None = None
    """The node's Ed25519 key made for a node certificate issued without ``node_key`` (``NAME.node.key``)."""
    node_id: str | None = None
    """The node id a node certificate binds (``meshnode:key:<node id>``)."""


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _write_private(path: Path, data: bytes, force: bool) -> None:
    """Write a secret file mode 0600, created exclusively (so it is never readable by others, even briefly)."""
    if path.exists():
        if not force:
            raise ConfigError(f"{path} exists; pass --force to overwrite it")
        path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _write_public(path: Path, data: bytes, force: bool) -> None:
    if path.exists() and not force:
        raise ConfigError(f"{path} exists; pass --force to overwrite it")
    path.write_bytes(data)
    path.chmod(0o644)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def check_name(name: str) -> str:
    """A certificate name that is also a safe file name (letters, digits, ``.``, ``_``, ``-``)."""
    if not _NAME_RE.match(name):
        raise ConfigError(f"name {name!r}: use 1-63 letters, digits, '.', '_' or '-', starting alphanumeric")
    return name


def init_ca(directory: Path, fleet: str = "meshnode fleet", *, days: int = 3650, force: bool = False) -> Issued:
    """Create the fleet CA (``ca.key`` mode 0600, ``ca.crt``) in ``directory``.

    Raises:
        ConfigError: the CA exists and ``force`` is not set, or the directory cannot be written.
    """
    key_path, cert_path = directory / CA_KEY, directory / CA_CERT
    if not force:
        for p in (key_path, cert_path):
            if p.exists():
                raise ConfigError(f"{p} exists; a fleet CA is already here (pass --force to replace it, "
                                  "which invalidates every certificate it issued)")
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{fleet} CA"),
                          x509.NameAttribute(NameOID.ORGANIZATION_NAME, fleet)])
        now = _now()
        serial = x509.random_serial_number()
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name).issuer_name(name).public_key(key.public_key()).serial_number(serial)
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False), critical=True)
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256())
        )
        _write_private(key_path, _key_pem(key), force)
        _write_public(cert_path, cert.public_bytes(serialization.Encoding.PEM), force)
    except OSError as exc:
        raise ConfigError(f"cannot write the CA in {directory}: {exc}") from exc
    return Issued(key_path, cert_path, serial)


def load_ca(directory: Path) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """The CA key and certificate of ``directory``.

    Raises:
        ConfigError: missing (with the command that creates them) or not a P-256 CA.
    """
    key_path, cert_path = directory / CA_KEY, directory / CA_CERT
    for p in (key_path, cert_path):
        if not p.exists():
            raise ConfigError(f"{p} is missing; create the fleet CA with: meshnode ca init --dir {directory}")
    check_secret(key_path, "the fleet CA key", "if somebody else could have read it, make a new CA (meshnode ca "
                 "init --force) and issue every certificate again")
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the CA in {directory}: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{key_path} is not an ECDSA key")
    return key, cert


def issue(
    directory: Path,
    name: str,
    *,
    ips: Iterable[str] = (),
    dns: Iterable[str] = (),
    client_only: bool = False,
    days: int = 825,
    out_dir: Path | None = None,
    force: bool = False,
    operator: bool = False,
    node_key: str | None = None,
) -> Issued:
    """Issue ``NAME.key`` (mode 0600) and ``NAME.crt`` signed by the CA in ``directory``.

    A node certificate (default) is good for TLS server and client authentication and names the node in its
    subject alternative names: ``dns`` names (``name`` itself when none is given) and ``ips``, which callers
    that dial by address need. A client certificate (``client_only``) is good for client authentication only.
    ``operator`` adds ``NAME.sign.key`` and ``NAME.sign.pub``, the key meshctl signs fleet queries with.
    A node certificate binds ``node_key`` (see ``node_id_of``), or a new key written as ``NAME.node.key``.

    Raises:
        ConfigError: a bad name, address or node key, no CA, or existing files without ``force``.
    """
    check_name(name)
    if client_only and node_key is not None:
        raise ConfigError("--node-key binds a node's key to a node certificate; --client certificates have none")
    bound = node_id_of(node_key) if node_key is not None else None
    new_node_key = None if client_only or bound is not None else Ed25519PrivateKey.generate()
    if new_node_key is not None:
        bound = node_id_from_public_key(new_node_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw))
    try:
        addrs = [ipaddress.ip_address(a) for a in ips]
    except ValueError as exc:
        raise ConfigError(f"--ip: {exc}") from exc
    names = list(dns) or [name]
    ca_key, ca_cert = load_ca(directory)
    target = out_dir or directory
    key_path, cert_path = target / f"{name}.key", target / f"{name}.crt"
    if not force:
        for p in (key_path, cert_path):
            if p.exists():
                raise ConfigError(f"{p} exists; pass --force to reissue {name}")
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    serial = x509.random_serial_number()
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH] if client_only else [ExtendedKeyUsageOID.SERVER_AUTH,
                                                                     ExtendedKeyUsageOID.CLIENT_AUTH]
    san: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
    san.extend(x509.IPAddress(a) for a in addrs)
    if bound is not None:
        san.append(x509.UniformResourceIdentifier(KEY_URI_PREFIX + bound))
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(serial)
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
            key_agreement=True, key_cert_sign=False, crl_sign=False, encipher_only=False,
            decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    sign_key = sign_pub = ca_copy = node_key_path = None
    try:
        target.mkdir(parents=True, exist_ok=True, mode=0o700)
        _write_private(key_path, _key_pem(key), force)
        _write_public(cert_path, cert.public_bytes(serialization.Encoding.PEM), force)
        if target.resolve() != directory.resolve():
            ca_copy = target / CA_CERT
            _write_public(ca_copy, (directory / CA_CERT).read_bytes(), force=True)
        if operator:
            sign_key, sign_pub = target / f"{name}.sign.key", target / f"{name}.sign.pub"
            signer = Ed25519PrivateKey.generate()
            _write_private(sign_key, signer.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()), force)
            raw = signer.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            _write_public(sign_pub, base64.b64encode(raw) + f"  # operator {name}\n".encode(), force)
        if new_node_key is not None:
            node_key_path = target / f"{name}.node.key"
            _write_private(node_key_path, new_node_key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()), force)
    except OSError as exc:
        raise ConfigError(f"cannot write {name}'s certificate in {target}: {exc}") from exc
    return Issued(key_path, cert_path, serial, ca_copy, sign_key, sign_pub, node_key_path, bound)


def node_id_of(node_key: str) -> str:
    """The node id to bind from ``--node-key``: a node id (16 hex digits, as ``meshctl status`` shows it), a
    base64 raw Ed25519 public key, or the path of an Ed25519 key file (the node's ``DATA_DIR/node.key``).

    Raises:
        ConfigError: none of these.
    """
    text = node_key.strip()
    if _NODE_ID_RE.match(text):
        return text
    path = Path(text).expanduser()
    if path.is_file():
        return NodeKey.load_or_create(path).node_id  # read, never created: it exists
    try:
        raw = base64.b64decode(text, validate=True)
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise ConfigError(f"--node-key {node_key!r}: give the node's id (16 hex digits, meshctl status), its "
                          "public key (base64) or its key file (DATA_DIR/node.key)")
    return node_id_from_public_key(raw)
