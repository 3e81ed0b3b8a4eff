"""meshctl's credentials: a client certificate for nodes that run mutual TLS, and a key to sign fleet queries.

``--tls-dir DIR`` (``$MESHCTL_TLS_DIR``) holds ``ca.crt`` and one ``NAME.crt``/``NAME.key`` pair
(``meshnode ca issue NAME --client --operator --out DIR``; ``--tls-name NAME`` picks one of several). When
``NAME.sign.key`` is there too, fleet queries are signed with it; ``--sign-key FILE`` (``$MESHCTL_SIGN_KEY``)
names another. Without ``--tls-dir``, meshctl speaks plaintext, for nodes run with ``--insecure``, and does not
sign: a signature sent in plaintext can be read and replayed by anyone on the path, and nodes refuse it
(``--sign-plaintext`` signs anyway, for a node behind something that adds TLS).

The request signature is the node's (``meshnode.trust._authz``; cli imports nothing of meshnode but the
generated messages, so the few lines are repeated here): Ed25519 over a domain tag, the full method name,
the audience (the node id of the node asked, from its ``Status``), the time, a random nonce and the SHA-256
of the deterministic serialization of the request, carried as the binary metadata ``meshnode-auth-bin`` (a
``meshnode.v1.RequestAuth``).

Nothing here imports grpc at module level: ``_args.parse`` records the choice with ``configure`` cheaply.
"""

from __future__ import annotations

import hashlib
import os
import socket
import ssl
import stat
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

from meshnode.cli._exceptions import UsageError

if TYPE_CHECKING:
    import grpc
    from google.protobuf.message import Message

AUTH_METADATA_KEY: Final = "meshnode-auth-bin"
_DOMAIN: Final = b"meshnode-authz-v2\x00"
ISSUE_HINT: Final = "meshnode ca issue NAME --client --operator --dir CA_DIR --out DIR"


def check_private(path: Path, what: str) -> None:
    """Refuse a private key that group or others may read or write, as ssh does (the node's rule,
    ``meshnode._files.check_secret``, which cli cannot import).

    Raises:
        UsageError: naming the file, its mode and the ``chmod`` that fixes it.
    """
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise UsageError(f"{what} {path} is open to others (mode {mode:04o}); fix it with: chmod 600 {path}")


@dataclass(frozen=True, slots=True)
class ClientSecurity:
    """What meshctl was told to use (paths only; files are read when a connection is made)."""

    tls_dir: Path | None = None
    tls_name: str | None = None
    sign_key: Path | None = None
    sign_plaintext: bool = False

    @classmethod
    def from_args(cls, tls_dir: str | None, tls_name: str | None, sign_key: str | None,
                  sign_plaintext: bool = False) -> ClientSecurity:
        """Flags first, then ``$MESHCTL_TLS_DIR``, ``$MESHCTL_TLS_NAME``, ``$MESHCTL_SIGN_KEY``."""
        d = tls_dir or os.environ.get("MESHCTL_TLS_DIR", "").strip() or None
        n = tls_name or os.environ.get("MESHCTL_TLS_NAME", "").strip() or None
        k = sign_key or os.environ.get("MESHCTL_SIGN_KEY", "").strip() or None
        return cls(Path(d).expanduser() if d else None, n, Path(k).expanduser() if k else None, sign_plaintext)

    def name(self) -> str:
        """The certificate name in ``tls_dir``: ``tls_name``, else its one ``NAME.crt`` beside ``ca.crt``."""
        assert self.tls_dir is not None
        if self.tls_name:
            return self.tls_name
        if not self.tls_dir.is_dir():
            raise UsageError(f"--tls-dir {self.tls_dir} is not a directory; make one with: {ISSUE_HINT}")
        names = sorted(p.stem for p in self.tls_dir.glob("*.crt")
                       if p.name != "ca.crt" and (self.tls_dir / f"{p.stem}.key").exists())
        if len(names) == 1:
            return names[0]
        if not names:
            raise UsageError(f"--tls-dir {self.tls_dir} holds no NAME.crt with its NAME.key; make them with: "
                             f"{ISSUE_HINT}")
        raise UsageError(f"--tls-dir {self.tls_dir} holds several certificates ({', '.join(names)}); "
                         "pick one with --tls-name NAME or $MESHCTL_TLS_NAME")

    def _read(self, path: Path, secret: bool = False) -> bytes:
        try:
            if secret:
                check_private(path, "the TLS key")
            return path.read_bytes()
        except OSError as exc:
            raise UsageError(f"cannot read {path} ({exc.strerror or exc}); make it with: {ISSUE_HINT}") from exc

    def channel_credentials(self) -> grpc.ChannelCredentials | None:
        """mTLS credentials from ``tls_dir``; None for plaintext."""
        if self.tls_dir is None:
            return None
        import grpc

        name = self.name()
        return grpc.ssl_channel_credentials(
            root_certificates=self._read(self.tls_dir / "ca.crt"),
            private_key=self._read(self.tls_dir / f"{name}.key", secret=True),
            certificate_chain=self._read(self.tls_dir / f"{name}.crt"),
        )

    def signing_key_path(self) -> Path | None:
        """``sign_key``, else ``NAME.sign.key`` in ``tls_dir`` when there is one."""
        if self.sign_key is not None:
            return self.sign_key
        if self.tls_dir is not None and self.tls_dir.is_dir():
            found = sorted(self.tls_dir.glob("*.sign.key"))
            preferred = [p for p in found if p.name == f"{self.tls_name}.sign.key"]
            if preferred or len(found) == 1:
                return (preferred or found)[0]
        return None


class Signer:
    """Signs requests with an operator's Ed25519 key (PKCS#8 PEM, ``NAME.sign.key``)."""

    def __init__(self, path: Path) -> None:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        try:
            check_private(path, "the signing key")
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (OSError, ValueError) as exc:
            raise UsageError(f"cannot load the signing key {path}: {exc}; make one with: {ISSUE_HINT}") from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise UsageError(f"{path} is not an Ed25519 key; make one with: {ISSUE_HINT}")
        self.path = path
        self._key = key
        self.public_raw = key.public_key().public_bytes(serialization.Encoding.Raw,
                                                       serialization.PublicFormat.Raw)

    def metadata(self, method: str, request: Message, audience: str) -> tuple[tuple[str, bytes]]:
        """The call metadata that signs ``request`` for ``method`` (``/meshnode.v1.Mesh/FleetQuery``) on the
        node whose id is ``audience``."""
        from meshnode.v1 import trust_pb2

        ts = time.time_ns()
        nonce = os.urandom(16)
        payload = request.SerializeToString(deterministic=True)
        signed = (_DOMAIN + method.encode() + b"\x00" + audience.encode() + b"\x00" + struct.pack(">Q", ts)
                  + nonce + hashlib.sha256(payload).digest())
        auth = trust_pb2.RequestAuth(public_key=self.public_raw, timestamp_ns=ts, nonce=nonce, audience=audience,
                                     signature=self._key.sign(signed))
        return ((AUTH_METADATA_KEY, auth.SerializeToString()),)


def speaks_tls(address: str, timeout: float = 2.0) -> bool:
    """Whether the server at ``HOST:PORT`` answers a TLS ClientHello (a plaintext gRPC server does not)."""
    host, _, port = address.rpartition(":")
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout) as raw, \
                ctx.wrap_socket(raw) as tls:
            tls.do_handshake()
            return True
    except ssl.SSLError as exc:
        # an alert (e.g. "certificate required") is TLS speaking; a garbled record is not
        return "ALERT" in str(exc).upper()
    except (OSError, ValueError):
        return False


_current = ClientSecurity()


def configure(security: ClientSecurity) -> None:
    """Record the credentials of this meshctl run (``_args.parse`` calls it)."""
    global _current
    _current = security


def current() -> ClientSecurity:
    """The credentials recorded by ``configure`` (none: plaintext, unsigned)."""
    return _current
