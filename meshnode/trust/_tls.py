"""gRPC mutual-TLS credentials from a directory of fleet-CA material.

A node's directory holds ``ca.crt`` (the fleet CA), ``NAME.crt`` and ``NAME.key`` (its own certificate,
``meshnode ca issue NAME``). The server requires a client certificate signed by the fleet CA, so a caller
without one, or with one from another CA, fails the handshake and never reaches a servicer. Missing or
unsafe files fail early with the file's name and the command that creates it, not at the first handshake.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc

from meshnode._exceptions import ConfigError
from meshnode._files import check_secret
from meshnode.trust._ca import CA_CERT
from meshnode.trust._errors import TlsError


@dataclass(frozen=True, slots=True)
class TlsMaterial:
    """PEM bytes of the fleet CA certificate, and of one certificate and its key."""

    ca: bytes
    cert: bytes
    key: bytes


def _read(path: Path, fix: str, secret: bool = False) -> bytes:
    if not path.exists():
        raise TlsError(f"{path} is missing; {fix}")
    try:
        if secret:
            check_secret(path, "the TLS key", error=TlsError)
        data = path.read_bytes()
    except OSError as exc:
        raise TlsError(f"cannot read {path}: {exc}") from exc
    if b"-----BEGIN" not in data:
        raise TlsError(f"{path} is not PEM; {fix}")
    return data


def load_material(directory: Path, name: str) -> TlsMaterial:
    """Read ``ca.crt``, ``NAME.crt`` and ``NAME.key`` from ``directory``.

    Raises:
        TlsError: a file is missing, unreadable, not PEM, or (the key) readable by group or others.
    """
    issue = (f"issue it with: meshnode ca issue {name} --dir CA_DIR --ip ADDR, then copy "
             f"CA_DIR/{name}.crt and CA_DIR/{name}.key here")
    ca = _read(directory / CA_CERT, "create the fleet CA with: meshnode ca init --dir CA_DIR, then copy "
               f"CA_DIR/{CA_CERT} here")
    cert = _read(directory / f"{name}.crt", issue)
    key = _read(directory / f"{name}.key", issue, secret=True)
    return TlsMaterial(ca, cert, key)


def tls_name(directory: Path) -> str:
    """The NAME of the one ``NAME.crt`` + ``NAME.key`` pair in ``directory`` besides ``ca.crt``.

    ``node`` wins when present; otherwise there must be exactly one pair (``meshnode ca issue NAME --out DIR``
    writes one pair and ``ca.crt``).

    Raises:
        TlsError: no pair, or several without a ``node`` pair.
    """
    if not directory.is_dir():
        raise TlsError(f"{directory} is not a directory; create it with: meshnode ca issue NAME --dir CA_DIR "
                       f"--out {directory}")
    names = sorted(p.stem for p in directory.glob("*.crt")
                   if p.name != CA_CERT and (directory / f"{p.stem}.key").exists())
    if "node" in names:
        return "node"
    if len(names) == 1:
        return names[0]
    if not names:
        raise TlsError(f"{directory} holds no NAME.crt with its NAME.key; issue one with: meshnode ca issue "
                       f"NAME --dir CA_DIR --ip ADDR --out {directory}")
    raise TlsError(f"{directory} holds several certificates ({', '.join(names)}); give each node a "
                   "directory of its own (meshnode ca issue NAME --out DIR) or name one node.crt")


def node_key_file(directory: Path, name: str, data_dir: Path) -> Path:
    """The node's Ed25519 key under TLS: ``NAME.node.key`` beside its certificate when ``meshnode ca issue`` made
    one there, else ``DATA_DIR/node.key``."""
    made = directory / f"{name}.node.key"
    return made if made.exists() else data_dir / "node.key"


def check_key_binding(directory: Path, name: str, key_file: Path) -> str:
    """The node id ``NAME.crt`` binds, after checking it is the one of the key in ``key_file``.

    Raises:
        TlsError: the certificate binds no key (issued before keys were bound to certificates), or another
            key, or the key file is missing; each with the ``meshnode ca issue`` command that fixes it.
    """
    from cryptography import x509

    from meshnode.mesh import NodeKey, bound_node_ids

    cert_path = directory / f"{name}.crt"
    reissue = (f"meshnode ca issue {name} --dir CA_DIR --ip ADDR --node-key {key_file} --out {directory} --force "
               f"(the node keeps its node id)")
    try:
        ids = bound_node_ids(x509.load_pem_x509_certificate(cert_path.read_bytes()))
    except (OSError, ValueError) as exc:
        raise TlsError(f"cannot read {cert_path}: {exc}") from exc
    if len(ids) != 1:
        what = "binds no node key (issued before node keys were bound to certificates)" if not ids else \
            f"binds {len(ids)} node keys"
        raise TlsError(f"{cert_path} {what}; reissue it with: {reissue}")
    if not key_file.exists():
        raise TlsError(f"{cert_path} binds node id {ids[0]}, but the node key {key_file} does not exist; copy "
                       f"the NAME.node.key issued with it into {directory}, or issue a certificate for a new key "
                       f"with: meshnode ca issue {name} --dir CA_DIR --ip ADDR --out {directory} --force")
    try:
        key = NodeKey.load_or_create(key_file)
    except ConfigError as exc:
        raise TlsError(str(exc)) from exc
    if key.node_id != ids[0]:
        raise TlsError(f"{cert_path} binds node id {ids[0]}, but this node's key {key_file} is {key.node_id}; "
                       f"reissue it with: {reissue}")
    return key.node_id


def server_credentials(directory: Path, name: str = "node") -> grpc.ServerCredentials:
    """Server credentials that present ``NAME.crt`` and require a client certificate from the fleet CA."""
    m = load_material(directory, name)
    return grpc.ssl_server_credentials([(m.key, m.cert)], root_certificates=m.ca, require_client_auth=True)


def channel_credentials(directory: Path, name: str = "node") -> grpc.ChannelCredentials:
    """Channel credentials that trust only the fleet CA and present ``NAME.crt`` as the client certificate."""
    m = load_material(directory, name)
    return grpc.ssl_channel_credentials(root_certificates=m.ca, private_key=m.key, certificate_chain=m.cert)
