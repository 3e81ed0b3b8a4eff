"""Identities bound to certificates (``meshnode.mesh._identity``): signed Alives, the source and Alive rules of
the state machine under mTLS, certified digests, and trust's quorum by certificate. Pure: no network."""

from __future__ import annotations

from meshnode.mesh import (
    DigestExchange,
    IdentityGuard,
    ManualScheduler,
    Membership,
    MemoryNetwork,
    MemoryTransport,
    NodeKey,
    PeerCertificate,
    State,
    alive_signed_by_member,
    leave_signed_by_member,
    members_only,
    sign_alive,
    sign_digest,
    sign_leave,
)
from meshnode.mesh._identity import PEER
from meshnode.trust import Evidence, TrustState
from meshnode.v1 import mesh_pb2

A, B, C = NodeKey.from_seed(b"a"), NodeKey.from_seed(b"b"), NodeKey.from_seed(b"c")


def signed_alive(key: NodeKey, incarnation: int = 1, addr: str = "b:1") -> mesh_pb2.Alive:
    a = mesh_pb2.Alive(node=key.node_id, incarnation=incarnation, addr=addr, labels={"site": "x"})
    sign_alive(key, a)
    return a


def test_an_alive_is_signed_by_its_member_and_any_change_breaks_the_signature():
    a = signed_alive(B)
    assert alive_signed_by_member(a)
    for change in ({"addr": "evil:1"}, {"incarnation": 9}):
        moved = mesh_pb2.Alive()
        moved.CopyFrom(a)
        for k, v in change.items():
            setattr(moved, k, v)
        assert not alive_signed_by_member(moved)
    relabeled = mesh_pb2.Alive()
    relabeled.CopyFrom(a)
    relabeled.labels["site"] = "y"
    other_key = mesh_pb2.Alive()
    other_key.CopyFrom(a)
    sign_alive(C, other_key)  # C's signature over B's node id: the key is not B's
    assert not alive_signed_by_member(relabeled) and not alive_signed_by_member(other_key)
    assert not alive_signed_by_member(mesh_pb2.Alive(node=B.node_id, incarnation=1, addr="b:1"))


def membership(guard: IdentityGuard | None) -> Membership:
    net = MemoryNetwork(ManualScheduler())
    return Membership(A.node_id, MemoryTransport(net, "a:1"), net.scheduler, identity=guard,
                      sign_alive=lambda a: sign_alive(A, a))


def peer(key: NodeKey | None, fp: str = "f1") -> PeerCertificate:
    return PeerCertificate(fp, key.node_id if key is not None else None, True)


def handle(m: Membership, pkt: mesh_pb2.MeshPacket, sender: PeerCertificate | None) -> None:
    token = PEER.set(sender)
    try:
        m._handle_packet("x:1", pkt)
    finally:
        PEER.reset(token)


def test_under_mtls_an_alive_counts_from_its_own_connection_or_signed_by_it():
    guard = IdentityGuard()
    m = membership(guard)
    unsigned_c = mesh_pb2.Gossip(alive=mesh_pb2.Alive(node=C.node_id, incarnation=1, addr="c:1"))
    handle(m, mesh_pb2.MeshPacket(source=B.node_id, gossip=[unsigned_c]), peer(B))  # B speaks for C: no
    assert m.member(C.node_id) is None and guard.counters["alives_unsigned"] == 1
    handle(m, mesh_pb2.MeshPacket(source=C.node_id, gossip=[unsigned_c]), peer(C))  # C itself: yes
    assert m.member(C.node_id) is not None
    handle(m, mesh_pb2.MeshPacket(source=B.node_id, gossip=[mesh_pb2.Gossip(alive=signed_alive(B))]), None)
    b = m.member(B.node_id)
    assert b is not None and b.signature  # relayed (no peer known), but signed: kept with its signature
    handle(m, mesh_pb2.MeshPacket(source=C.node_id, gossip=[mesh_pb2.Gossip(alive=signed_alive(B, 5, "evil:1"))]),
           peer(B))  # a source its certificate does not bind: the whole packet is dropped
    assert m.member(B.node_id).addr == "b:1" and guard.counters["identity_source_mismatch"] == 1


def test_own_alive_is_signed_and_push_pull_relays_the_signatures():
    m = membership(IdentityGuard())
    m.start()
    handle(m, mesh_pb2.MeshPacket(source=B.node_id, gossip=[mesh_pb2.Gossip(alive=signed_alive(B))]), peer(B))
    pp = m._local_push_pull(False, None)
    by_node = {x.node: x for x in pp.members}
    for key in (A, B):
        x = by_node[key.node_id]
        assert alive_signed_by_member(mesh_pb2.Alive(node=x.node, incarnation=x.incarnation, addr=x.addr,
                                                     labels=x.labels, public_key=x.public_key,
                                                     signature=x.signature))


def leave(key: NodeKey, incarnation: int = 1, sign: bool = True) -> mesh_pb2.Dead:
    d = mesh_pb2.Dead(node=key.node_id, incarnation=incarnation, **{"from": key.node_id})
    if sign:
        sign_leave(key, d)
    return d


def test_a_leave_is_signed_by_its_member_and_any_change_breaks_the_signature():
    d = leave(B)
    assert leave_signed_by_member(d)
    later = mesh_pb2.Dead()
    later.CopyFrom(d)
    later.incarnation = 2
    by_c = leave(B, sign=False)
    sign_leave(C, by_c)  # C's signature of B's leave: the key is not B's
    accusation = mesh_pb2.Dead(node=B.node_id, incarnation=1, **{"from": C.node_id})
    sign_leave(B, accusation)  # not a leave (from is another node), whoever signed it
    assert not leave_signed_by_member(later) and not leave_signed_by_member(by_c)
    assert not leave_signed_by_member(accusation) and not leave_signed_by_member(leave(B, sign=False))


def test_under_mtls_a_leave_counts_from_its_own_connection_or_signed_by_it():
    guard = IdentityGuard()
    m = membership(guard)
    m.start()
    joined = [mesh_pb2.Gossip(alive=signed_alive(k, addr=f"{k.node_id}:1")) for k in (B, C)]
    handle(m, mesh_pb2.MeshPacket(source=B.node_id, gossip=joined), peer(B))
    handle(m, mesh_pb2.MeshPacket(source=C.node_id, gossip=[mesh_pb2.Gossip(dead=leave(B, sign=False))]), peer(C))
    assert m.state_of(B.node_id) == State.ALIVE and guard.counters["leaves_unsigned"] == 1
    # an accusation (from another node) is SWIM's, not a leave: believed unsigned (the accused refutes it)
    handle(m, mesh_pb2.MeshPacket(source=B.node_id, gossip=[mesh_pb2.Gossip(
        dead=mesh_pb2.Dead(node=C.node_id, incarnation=1, **{"from": B.node_id}))]), peer(B))
    assert m.state_of(C.node_id) == State.DEAD
    handle(m, mesh_pb2.MeshPacket(source=B.node_id, gossip=[mesh_pb2.Gossip(dead=leave(B, sign=False))]), peer(B))
    assert m.state_of(B.node_id) == State.LEFT and guard.counters["leaves_unsigned"] == 1


def test_a_signed_leave_is_relayed_in_push_pull_and_believed_from_there():
    a = membership(IdentityGuard())
    a.start()
    handle(a, mesh_pb2.MeshPacket(source=B.node_id, gossip=[mesh_pb2.Gossip(alive=signed_alive(B))]), peer(B))
    handle(a, mesh_pb2.MeshPacket(source=C.node_id, gossip=[mesh_pb2.Gossip(dead=leave(B))]), peer(C))
    assert a.state_of(B.node_id) == State.LEFT
    relayed = {x.node: x for x in a._local_push_pull(False, None).members}[B.node_id]
    assert relayed.state == mesh_pb2.LEFT and relayed.leave_signature and relayed.public_key == B.public_raw
    net = MemoryNetwork(ManualScheduler())
    guard = IdentityGuard()
    d = Membership(C.node_id, MemoryTransport(net, "c:1"), net.scheduler, identity=guard)
    d.start()
    handle(d, mesh_pb2.MeshPacket(source=B.node_id, gossip=[mesh_pb2.Gossip(alive=signed_alive(B))]), peer(B))
    forged = mesh_pb2.PushPull(source=A.node_id, members=[relayed])
    forged.members[0].leave_signature = bytes(64)
    d._merge_push_pull(forged, "a:1", asked=True)  # an answer: no peer certificate, only the signature counts
    assert d.state_of(B.node_id) == State.ALIVE and guard.counters["leaves_unsigned"] == 1
    d._merge_push_pull(a._local_push_pull(False, None), "a:1", asked=True)
    assert d.state_of(B.node_id) == State.LEFT and guard.counters["leaves_unsigned"] == 1


def test_without_a_guard_every_well_formed_alive_is_believed():
    m = membership(None)
    handle(m, mesh_pb2.MeshPacket(source=B.node_id, gossip=[
        mesh_pb2.Gossip(alive=mesh_pb2.Alive(node=C.node_id, incarnation=1, addr="c:1"))]), None)
    assert m.member(C.node_id) is not None


def test_only_certified_members_publish():
    guard = IdentityGuard()
    m = membership(guard)
    handle(m, mesh_pb2.MeshPacket(source=B.node_id, gossip=[mesh_pb2.Gossip(alive=signed_alive(B))]), None)
    ex = DigestExchange(A, ManualScheduler())
    ex.admit = members_only(lambda: m, certified=guard.certified)
    d = sign_digest(B, mesh_pb2.Digest(version=1, node_id=B.node_id, seq=1, period_start_ns=1, period_end_ns=2))
    assert not ex.ingest(d, "b:1") and ex.counters["digests_uncertified"] == 1
    guard.saw(peer(B))
    assert ex.ingest(d, "b:1")
    guard.saw(peer(None))  # a certificate that binds no key certifies nothing
    assert guard.certificate(B.node_id) == "f1"
    guard.forget([B.node_id])
    assert not guard.certified(B.node_id)


def evidence(reporter: str, witness: str, i: int) -> Evidence:
    return Evidence(reporter, witness, "tcp", "10.0.0.1", 40000 + i, "10.0.0.2", 443, "existence", 1, 0,
                    "missing_at_witness", "contradiction", i)


def test_the_quorum_counts_certificates_not_keys():
    certs = {"r1": "cert-1", "r2": "cert-1", "r3": "cert-3", "r4": "cert-4", "x": None}
    state = TrustState("me", certificate=certs.get)
    same_cert = state.update(1, [evidence("r1", "h", 1), evidence("r2", "h", 2), evidence("r3", "h", 3)])
    assert not [b for b in same_cert if b.node_id == "h"]  # three keys, two certificates: two voices, no majority
    uncertified = state.update(2, [evidence("x", "h2", 4), evidence("r1", "h2", 5), evidence("r3", "h2", 6)])
    assert not [b for b in uncertified if b.node_id == "h2"]  # a key no certificate vouches for: no voice
    three_certs = state.update(3, [evidence("r1", "h3", 7), evidence("r3", "h3", 8), evidence("r4", "h3", 9)])
    assert {(b.node_id, b.attribution) for b in three_certs} == {("h3", "majority")}
    by_key = TrustState("me")  # plaintext: peers count by node id
    assert {b.attribution for b in by_key.update(1, [evidence("r1", "h", 1), evidence("r2", "h", 2),
                                                      evidence("r3", "h", 3)])} == {"majority"}
