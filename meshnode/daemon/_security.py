"""Transport security and authorization of a running node: mutual TLS, signed requests, the denylist.

``NodeSecurity.from_config`` reads everything before the node starts (a missing certificate or a bad key
fails ``meshnode run`` with exit 2 and the fix), and ``apply`` wires it in:

* the API port (``Observer``, ``Mesh``, health, reflection) is a mutual-TLS port with the fleet CA, or
  plaintext with ``--insecure``;
* the mesh dials its peers with the same certificate (``GrpcTransport(credentials=...)``), and signs the
  methods in ``SIGNED_METHODS`` with the node's key (``RequestSigner``), so that a fleet query's fan-out is
  accepted by the peers;
* ``SignedRequestInterceptor`` refuses ``SIGNED_METHODS`` (fleet queries, active tasks) with
  ``PERMISSION_DENIED`` unless signed by an operator key (``operator_keys``, ``operator_keys_file``) or by a
  current mesh member's key, and not on the ``deny`` list. Refusals are counted in the mesh's counters
  (``meshctl peers``: ``requests_unsigned``, ``requests_unknown_key``, ``requests_replayed``...).

The lab rule: an insecure node lets *unsigned* requests through (counted as ``requests_unsigned_allowed``,
and said at startup), and refuses signed ones (``requests_plaintext``): a signature sent in plaintext can be
read and replayed, so signatures travel only over TLS, and operator keys need TLS. With TLS a signature is
always required: an operator's for the node it is sent to (``audience``), or a member's from its own
connection (``meshnode.trust._service``).
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final

from meshnode._exceptions import ConfigError
from meshnode._files import check_trusted

if TYPE_CHECKING:
    import grpc

    from meshnode.daemon._config import NodeConfig
    from meshnode.daemon._node import Node
    from meshnode.mesh import MeshService
    from meshnode.trust import SignedRequestInterceptor

log = logging.getLogger("meshnode")

SIGNED_METHODS: Final = ("/meshnode.v1.Mesh/FleetQuery", "/meshnode.v1.Mesh/FleetFlows", "/meshnode.v1.Mesh/Measure",
                         "/meshnode.v1.Trust/Challenge")
"""The methods that must be signed by a key the fleet trusts (issue 7, item 6); a challenge makes a member run an
active task, and a fleet flow query reads every member's flow history."""

_NODE_ID: Final = re.compile(r"^[0-9a-f]{16}$")


def parse_public_key(text: str, where: str) -> bytes:
    """A raw 32-byte Ed25519 public key from base64 (the first word of ``text``).

    Raises:
        ConfigError: naming ``where``.
    """
    word = text.split()[0] if text.split() else ""
    try:
        raw = base64.b64decode(word, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        raise ConfigError(f"{where}: {word!r} is not an Ed25519 public key (base64 of 32 bytes, as in "
                          "NAME.sign.pub from meshnode ca issue NAME --operator)")
    return raw


def read_key_file(path: Path) -> list[bytes]:
    """Public keys from a file, one per line; blank lines and ``#`` comments are skipped.

    A file that group or others may write is refused: whoever can add a line can sign fleet queries.
    """
    check_trusted(path, "operator_keys_file")
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise ConfigError(f"operator_keys_file: cannot read {path}: {exc.strerror or exc}") from exc
    out = []
    for n, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].strip()
        if text:
            out.append(parse_public_key(text, f"operator_keys_file {path}:{n}"))
    return out


def denied_ids(entries: tuple[str, ...]) -> set[str]:
    """Node ids from ``deny`` entries: a node id (16 hex digits) or a base64 public key."""
    from meshnode.mesh import node_id_from_public_key

    out = set()
    for e in entries:
        if _NODE_ID.match(e.lower()):
            out.add(e.lower())
        else:
            out.add(node_id_from_public_key(parse_public_key(e, "deny")))
    return out


def node_key_path(config: NodeConfig) -> Path:
    """The node's Ed25519 key file: the one its certificate was issued with (``NAME.node.key`` in ``tls_dir``)
    when there is one, else ``DATA_DIR/node.key`` (created on first start)."""
    if config.tls_dir is None:
        return config.data_dir / "node.key"
    from meshnode.trust._errors import TlsError
    from meshnode.trust._tls import node_key_file, tls_name

    try:
        return node_key_file(config.tls_dir, tls_name(config.tls_dir), config.data_dir)
    except TlsError:
        return config.data_dir / "node.key"


@dataclass
class NodeSecurity:
    """What ``meshnode run`` secures a node with; built by ``from_config`` before anything starts."""

    server: grpc.ServerCredentials | None = None
    """Server credentials of the API port; None when insecure."""
    channel: grpc.ChannelCredentials | None = None
    """Channel credentials for the mesh's peer channels; None when insecure."""
    operators: list[bytes] = field(default_factory=list)
    denied: set[str] = field(default_factory=set)
    tls_dir: Path | None = None
    node_id: str | None = None
    """The node id this node's certificate binds (checked against its key before anything starts)."""

    @property
    def insecure(self) -> bool:
        """True when the node serves and gossips in plaintext."""
        return self.server is None

    @property
    def allow_unsigned(self) -> bool:
        """The lab rule: unsigned requests pass only on an insecure node (which has no operator keys)."""
        return self.insecure and not self.operators

    @classmethod
    def from_config(cls, config: NodeConfig) -> NodeSecurity:
        """Load certificates and keys.

        Raises:
            ConfigError: (``TlsError`` included) neither TLS nor insecure, a missing or unsafe file, a bad key.
        """
        operators = [parse_public_key(k, "operator_keys") for k in config.operator_keys]
        if config.operator_keys_file is not None:
            operators += read_key_file(config.operator_keys_file)
        sec = cls(operators=operators, denied=denied_ids(config.deny))
        if config.tls_dir is not None:
            from meshnode.trust import channel_credentials, server_credentials
            from meshnode.trust._tls import check_key_binding, tls_name

            name = tls_name(config.tls_dir)
            sec.node_id = check_key_binding(config.tls_dir, name, node_key_path(config))
            sec.server = server_credentials(config.tls_dir, name)
            sec.channel = channel_credentials(config.tls_dir, name)
            sec.tls_dir = config.tls_dir
        elif not config.insecure:
            raise ConfigError("tls_dir: not set, and not insecure")
        elif operators:
            raise ConfigError("operator_keys: signed requests are accepted only over TLS; set tls_dir, or drop the "
                              "operator keys (an insecure node accepts unsigned fleet queries and tasks)")
        return sec

    def apply(self, node: Node, mesh: MeshService | None) -> SignedRequestInterceptor:
        """Secure ``node``'s API port and ``mesh``'s peer channels (before ``node.run``); logs what it did.

        Returns the signed-request interceptor (its ``counters`` are the mesh's, when there is a mesh).
        """
        from meshnode.trust import Authorizer, SignedRequestInterceptor

        def member(node_id: str) -> bool:
            return mesh is not None and mesh.running and mesh.is_member(node_id)

        authz = Authorizer(self.operators, self.denied, member=member, audience=mesh.node_id if mesh else None)
        check = SignedRequestInterceptor(authz, SIGNED_METHODS, allow_unsigned=self.allow_unsigned)
        if mesh is not None:
            check.counters = mesh.counters
            mesh.denied = self.denied  # their digests are dropped too
            mesh.node_certificates_only = not self.insecure  # a client certificate cannot gossip a member in
        node.api.credentials = self.server
        node.api.interceptors.append(check)
        if self.insecure:
            log.warning("INSECURE: --insecure: the gRPC API and the mesh run in plaintext, without client "
                        "certificates; anyone who can reach %s can read this node. Labs and tests only.",
                        node.config.listen)
        else:
            log.info("mutual TLS with the fleet CA in %s: API and mesh", self.tls_dir)
        if self.allow_unsigned:
            log.warning("INSECURE: no operator keys: unsigned fleet queries and active tasks are accepted")
        elif not self.operators:
            log.warning("no operator keys (operator_keys, operator_keys_file): only mesh members can run fleet "
                        "queries and active tasks here; meshctl query will be refused")
        else:
            log.info("fleet queries and active tasks: signed by %d operator key(s) or a member; %d denied",
                     len(self.operators), len(self.denied))
        return check
