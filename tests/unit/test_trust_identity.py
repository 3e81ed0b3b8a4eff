"""What trust relies on from the mesh's identity layer (issue 7 §4), checked, not reimplemented.

NodeKey (meshnode.mesh._digest): an Ed25519 key made on first start, mode 0600; the node id is the key's
fingerprint; digests are rejected when replayed, reordered, or signed by a key that is not the id's.
"""

from __future__ import annotations

import hashlib
import stat

from meshnode.mesh import DigestExchange, ManualScheduler, NodeKey, sign_digest
from meshnode.v1 import mesh_pb2


def test_key_is_created_once_with_mode_0600_and_the_node_id_is_its_fingerprint(tmp_path):
    path = tmp_path / "state" / "node.key"
    key = NodeKey.load_or_create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert key.node_id == hashlib.sha256(key.public_raw).hexdigest()[:16]
    again = NodeKey.load_or_create(path)
    assert again.public_raw == key.public_raw and again.node_id == key.node_id


def digest(key: NodeKey, seq: int, node_id: str | None = None) -> mesh_pb2.SignedDigest:
    d = mesh_pb2.Digest(version=1, node_id=node_id or key.node_id, seq=seq, period_start_ns=1, period_end_ns=2)
    return sign_digest(key, d)


def test_replayed_reordered_and_misattributed_digests_are_dropped():
    me, peer, mallory = NodeKey.from_seed(b"me"), NodeKey.from_seed(b"peer"), NodeKey.from_seed(b"mallory")
    ex = DigestExchange(me, ManualScheduler())
    old, new = digest(peer, 5), digest(peer, 6)
    assert ex.ingest(new, "10.0.0.2:7946")
    assert not ex.ingest(new, "10.0.0.2:7946")  # replay
    assert ex.ingest(old, "10.0.0.2:7946")  # reordered: a period missed, kept in the history, not as the newest
    assert not ex.ingest(old, "10.0.0.2:7946")  # its replay
    assert not ex.ingest(digest(mallory, 7, node_id=peer.node_id), "10.0.0.3:7946")  # another key, peer's id
    assert ex.counters["digests_stale"] == 2 and ex.counters["digests_bad_identity"] == 1
    assert ex.latest(peer.node_id).digest.seq == 6
