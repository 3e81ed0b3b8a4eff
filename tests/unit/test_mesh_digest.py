"""Signed digests: building, bounding, verifying, dropping (counted) and disseminating them."""

from __future__ import annotations

import hashlib
import stat

import pytest

from meshnode._model import FlowRecord
from meshnode.mesh import (
    DigestConfig,
    DigestExchange,
    DigestRejected,
    ManualScheduler,
    MeshConfig,
    NodeKey,
    bound_digest,
    endpoint_records,
    members_only,
    node_id_from_public_key,
    rollups_from_flows,
    sign_digest,
    verify_digest,
)
from meshnode.mesh._sim import SimCluster
from meshnode.v1 import flow_pb2, mesh_pb2

KEY = NodeKey.from_seed(b"alice")
OTHER = NodeKey.from_seed(b"mallory")
NOW_NS = ManualScheduler().wall_ns()


def _digest(key: NodeKey = KEY, seq: int = 1, rollups: int = 3, **kw) -> mesh_pb2.Digest:
    return mesh_pb2.Digest(
        version=kw.pop("version", 1), node_id=kw.pop("node_id", key.node_id), seq=seq,
        period_start_ns=NOW_NS - 60 * 10**9, period_end_ns=kw.pop("period_end_ns", NOW_NS),
        labels={"region": "eu", "site": "ams1", "host": "h1"},
        by_destination=[
            flow_pb2.Rollup(key=f"10.0.0.{i}:443", flows=10 + i, useful=9) for i in range(rollups)
        ],
        **kw,
    )


def test_node_id_is_the_public_key_fingerprint():
    assert KEY.node_id == hashlib.sha256(KEY.public_raw).hexdigest()[:16]
    assert node_id_from_public_key(KEY.public_raw) == KEY.node_id
    assert len(KEY.public_raw) == 32
    assert KEY.node_id != OTHER.node_id


def test_signed_digest_round_trips():
    d = _digest()
    signed = sign_digest(KEY, d)
    assert signed.public_key == KEY.public_raw
    assert verify_digest(signed, 8192, NOW_NS) == d


def _tampered() -> mesh_pb2.SignedDigest:
    s = sign_digest(KEY, _digest())
    return mesh_pb2.SignedDigest(payload=s.payload[:-1] + bytes([s.payload[-1] ^ 1]), signature=s.signature,
                                 public_key=s.public_key)


def _other_key() -> mesh_pb2.SignedDigest:
    s = sign_digest(KEY, _digest())
    return mesh_pb2.SignedDigest(payload=s.payload, signature=s.signature, public_key=OTHER.public_raw)


def _raw(key: NodeKey, payload: bytes) -> mesh_pb2.SignedDigest:
    return mesh_pb2.SignedDigest(payload=payload, signature=key.sign(payload), public_key=key.public_raw)


BAD = [
    ("tampered-payload", _tampered(), "bad_signature"),
    ("someone-elses-key", _other_key(), "bad_signature"),
    ("claims-another-node", sign_digest(OTHER, _digest(KEY)), "bad_identity"),
    ("short-key", mesh_pb2.SignedDigest(payload=b"x", signature=b"y", public_key=b"12345"), "bad_key"),
    ("oversize", sign_digest(KEY, _digest(rollups=400)), "oversize"),
    ("not-a-digest", _raw(KEY, b"\xff\xff\xff\xff"), "malformed"),
    ("version-2", sign_digest(KEY, _digest(version=2)), "bad_version"),
    ("from-the-future", sign_digest(KEY, _digest(period_end_ns=NOW_NS + 3600 * 10**9)), "from_future"),
]


@pytest.mark.parametrize(("signed", "reason"), [(s, r) for _, s, r in BAD], ids=[i for i, _, _ in BAD])
def test_bad_digests_are_rejected_with_a_reason(signed, reason):
    with pytest.raises(DigestRejected) as info:
        verify_digest(signed, 4096, NOW_NS)
    assert info.value.reason == reason


@pytest.mark.parametrize(("signed", "reason"), [(s, r) for _, s, r in BAD], ids=[i for i, _, _ in BAD])
def test_bad_digests_are_dropped_counted_and_logged_with_their_source(signed, reason, caplog):
    ex = DigestExchange(NodeKey.from_seed(b"bob"), ManualScheduler(), DigestConfig(max_bytes=4096))
    assert ex.ingest(signed, "10.1.2.3:7946") is False
    assert ex.counters[f"digests_{reason}"] == 1
    assert ex.counters["digests_accepted"] == 0
    assert ex.held() == {}
    assert "10.1.2.3:7946" in caplog.text


def test_stale_and_replayed_sequence_numbers_are_dropped_and_counted():
    # an older seq not held is a period this node missed: kept in the history (not the newest), once
    ex = DigestExchange(NodeKey.from_seed(b"bob"), ManualScheduler(), DigestConfig(history_per_node=3))
    table = [(5, True), (5, False), (4, True), (6, True), (4, False), (6, False), (1, False)]
    got = [ex.ingest(sign_digest(KEY, _digest(seq=seq)), "peer") for seq, _ in table]
    assert got == [ok for _, ok in table]
    assert ex.counters["digests_stale"] == 4  # 5, 4 and 6 again; 1 is older than the 3 periods kept
    assert ex.counters["digests_accepted"] == 2
    assert ex.counters["digests_history_filled"] == 1
    assert [h.digest.seq for h in ex.history.of(KEY.node_id)] == [4, 5, 6]
    assert ex.latest(KEY.node_id).digest.seq == 6  # type: ignore[union-attr]


def test_own_digest_replayed_by_a_peer_is_dropped():
    ex = DigestExchange(KEY, ManualScheduler())
    assert ex.ingest(sign_digest(KEY, _digest(seq=10**15)), "peer") is False
    assert ex.counters["digests_own_replayed"] == 1


@pytest.mark.parametrize(
    ("rollups", "endpoints", "max_bytes"), [(200, 0, 1024), (20, 200, 2048), (5, 5, 8192)]
)
def test_bound_digest_keeps_the_biggest_and_counts_the_rest(rollups, endpoints, max_bytes):
    d = _digest(rollups=rollups)
    d.endpoints.extend(
        flow_pb2.Flow(src="10.0.0.1", sport=40000 + i, dst="10.0.0.2", dport=443, bytes_tx=i)
        for i in range(endpoints)
    )
    b = bound_digest(d, max_bytes)
    assert b.ByteSize() <= max_bytes
    assert len(b.by_destination) + b.rollups_truncated == rollups
    assert len(b.endpoints) + b.endpoints_truncated == endpoints
    if d.ByteSize() <= max_bytes:
        assert b == d
    else:
        assert b.rollups_truncated + b.endpoints_truncated > 0
        kept = [r.flows for r in b.by_destination]
        assert kept == sorted(kept, reverse=True)
        dropped = [r.flows for r in d.by_destination if r not in b.by_destination]
        assert min(kept, default=10**9) >= max(dropped, default=0)
        # endpoint records go before rollups
        assert b.rollups_truncated == 0 or len(b.endpoints) == 0


def test_publish_stamps_bounds_signs_and_counts_truncation():
    sched = ManualScheduler()
    ex = DigestExchange(KEY, sched, DigestConfig(max_bytes=512))
    first = ex.publish(_digest(rollups=100, node_id="forged", version=7))
    d = verify_digest(first, 512, sched.wall_ns())
    assert d.node_id == KEY.node_id and d.version == 1
    assert d.rollups_truncated == ex.counters["digest_rollups_truncated"] > 0
    second = ex.publish(_digest())
    assert verify_digest(second, 512).seq > d.seq


def test_rollups_and_endpoint_records_from_flow_records():
    flows = [
        FlowRecord(1, "10.0.0.1", 40001, "10.0.0.9", 443, "tcp", "outbound", outcome="established",
                   srtt_us=100, bytes_tx=10, bytes_rx=20, packets_tx=2, packets_rx=3, start_ns=5, end_ns=9,
                   service="https"),
        FlowRecord(2, "10.0.0.1", 40002, "10.0.0.9", 443, "tcp", "outbound", outcome="refused", srtt_us=300),
        FlowRecord(3, "10.0.0.1", 40003, "10.0.0.9", 443, "tcp", "outbound", outcome="timeout"),
        FlowRecord(4, "10.0.0.1", 53000, "10.0.0.7", 53, "udp", "outbound", outcome="udp_answered"),
        FlowRecord(5, "10.0.0.1", 8080, "10.0.0.9", 50000, "tcp", "inbound", outcome="established"),
    ]
    r = {x.key: x for x in rollups_from_flows(flows)}
    assert sorted(r) == ["10.0.0.7:53", "10.0.0.9:443"]
    web = r["10.0.0.9:443"]
    assert (web.flows, web.useful, dict(web.failures)) == (3, 1, {"refused": 1, "timeout": 1})
    assert (web.bytes_tx, web.bytes_rx, web.rtt_p95_us, web.service) == (10, 20, 300, "https")
    assert web.rtt_p50_us == 100  # nearest rank, the lower of two
    eps = endpoint_records(flows, {"10.0.0.9"})
    assert [e.sport for e in eps] == [40001, 40002, 40003, 8080]
    e = eps[0]
    assert (e.src, e.dst, e.dport, e.proto, e.direction, e.outcome) == (
        "10.0.0.1", "10.0.0.9", 443, flow_pb2.TCP, flow_pb2.OUTBOUND, flow_pb2.ESTABLISHED)
    assert (e.bytes_tx, e.bytes_rx, e.packets_tx, e.packets_rx, e.start_ns, e.end_ns) == (10, 20, 2, 3, 5, 9)
    assert e.pid == 0 and e.comm == ""  # nothing else leaves the host


def test_node_key_is_created_private_and_reloaded(tmp_path):
    path = tmp_path / "keys" / "node.pem"
    a = NodeKey.load_or_create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    b = NodeKey.load_or_create(path)
    assert a.node_id == b.node_id


# ---------------------------------------------------------------------------------------------- dissemination


def _digest_cluster(n: int, seed: int = 4, **cfg) -> SimCluster:
    c = SimCluster(seed=seed, digests=True, config=MeshConfig(**cfg))
    c.build(n)
    assert c.run(30.0, c.converged) < 30.0
    return c


def _everyone_has(c: SimCluster, node_id: str, seq: int) -> bool:
    return all(
        (h := c.exchanges[m.node_id].latest(node_id)) is not None and h.digest.seq >= seq for m in c.alive()
    )


def test_a_published_digest_reaches_every_node_by_announce_and_pull():
    c = _digest_cluster(40)
    src = c.ids[5]
    signed = c.exchanges[src].publish(_digest(rollups=5))
    seq = mesh_pb2.Digest.FromString(signed.payload).seq
    assert c.run(5.0, lambda: _everyone_has(c, src, seq)) < 5.0
    # each node pulled it about once: pulls are far fewer than announcements
    assert sum(e.counters["digests_accepted"] for e in c.exchanges.values()) == 39
    assert sum(e.counters["digests_stale"] for e in c.exchanges.values()) < 40


def test_a_node_that_missed_the_gossip_gets_digests_by_push_pull():
    c = _digest_cluster(8, push_pull_interval=2.0)
    late = c.ids[3]
    c.net.partition([c.addr[late]])
    src = c.ids[0]
    signed = c.exchanges[src].publish(_digest())
    seq = mesh_pb2.Digest.FromString(signed.payload).seq
    c.run(1.0)  # gossip done, the digest announced everywhere but at `late`
    assert c.exchanges[late].latest(src) is None
    c.net.heal()
    assert c.run(30.0, lambda: _everyone_has(c, src, seq)) < 30.0


def _rogue_offers(c: SimCluster, victim: str, signed: mesh_pb2.SignedDigest) -> None:
    """A peer joins ``victim``'s table (its own Alive), announces ``signed`` and answers the pull with it."""
    rogue = c.net.endpoint("addr-rogue")
    answer = mesh_pb2.StreamMessage(user=mesh_pb2.DigestState(digests=[signed]).SerializeToString())
    rogue.set_handlers(lambda a, p: None, lambda a, p: answer.SerializeToString())
    d = mesh_pb2.Digest.FromString(signed.payload)
    announce = mesh_pb2.DigestAnnounce(node_id=d.node_id, seq=d.seq).SerializeToString()
    alive = mesh_pb2.Alive(node="rogue", incarnation=1, addr="addr-rogue")
    pkt = mesh_pb2.MeshPacket(source="rogue", source_addr="addr-rogue",
                              gossip=[mesh_pb2.Gossip(alive=alive), mesh_pb2.Gossip(user=announce)])
    rogue.send_packet(c.addr[victim], pkt.SerializeToString())


def test_forged_digest_from_a_rogue_peer_is_dropped_and_not_spread(caplog):
    c = _digest_cluster(6)
    victim = c.ids[0]
    _rogue_offers(c, victim, _tampered())
    c.run(3.0)
    assert c.exchanges[victim].counters["digests_bad_signature"] == 1
    assert all(e.latest(KEY.node_id) is None for e in c.exchanges.values())
    assert "addr-rogue" in caplog.text
    assert c.converged()


def _members_only_cluster(n: int, denied: set[str]) -> SimCluster:
    c = _digest_cluster(n)
    for nid, e in c.exchanges.items():
        e.admit = members_only(lambda nid=nid: c.nodes[nid], lambda: denied)
    return c


def test_a_correctly_signed_digest_of_an_unknown_key_is_dropped_counted_and_not_spread():
    c = _members_only_cluster(6, set())
    victim = c.ids[0]
    outsider = NodeKey.from_seed(b"outsider")  # a valid key and signature, but it never joined
    signed = sign_digest(outsider, _digest(outsider))
    _rogue_offers(c, victim, signed)
    c.run(3.0)
    assert c.exchanges[victim].counters["announces_unknown_key"] == 1  # not even pulled
    # pushed in a push-pull answer instead: verified, dropped, counted
    c.exchanges[victim].merge_remote_state(mesh_pb2.DigestState(digests=[signed]).SerializeToString(), False,
                                           "addr-rogue")
    assert c.exchanges[victim].counters["digests_unknown_key"] == 1
    assert c.exchanges[victim].counters["digests_accepted"] == 0
    assert all(e.latest(outsider.node_id) is None for e in c.exchanges.values())
    # the members' own digests still spread with admission on
    src = c.ids[3]
    seq = mesh_pb2.Digest.FromString(c.exchanges[src].publish(_digest(rollups=2)).payload).seq
    assert c.run(5.0, lambda: _everyone_has(c, src, seq)) < 5.0
    assert sum(e.counters["digests_unknown_key"] for e in c.exchanges.values()) == 1


def test_digests_of_a_denied_member_are_dropped_and_counted():
    denied: set[str] = set()
    c = _members_only_cluster(5, denied)
    bad, ok = c.ids[2], c.ids[4]
    denied.add(bad)
    seq_bad = mesh_pb2.Digest.FromString(c.exchanges[bad].publish(_digest(rollups=2)).payload).seq
    seq_ok = mesh_pb2.Digest.FromString(c.exchanges[ok].publish(_digest(rollups=2)).payload).seq
    assert c.run(5.0, lambda: _everyone_has(c, ok, seq_ok)) < 5.0
    others = [e for nid, e in c.exchanges.items() if nid != bad]
    # announcements, then push-pull anti-entropy offer it to every node (an announcement is sent a bounded
    # number of times to random members, and only the denied node itself offers its digest)
    c.run(120.0, lambda: all(e.counters["announces_denied"] + e.counters["digests_denied"] >= 1 for e in others))
    assert all(e.latest(bad) is None for e in others), seq_bad
    assert all(e.counters["announces_denied"] + e.counters["digests_denied"] >= 1 for e in others)


class _Members:
    """A membership stand-in: who is a member, and pulls answered by ``peer``'s exchange."""

    def __init__(self, ids: set[str], peer: DigestExchange | None = None) -> None:
        self.ids, self.peer, self.pulled = ids, peer, 0

    def member(self, node_id: str) -> object | None:
        return object() if node_id in self.ids else None

    def num_members(self) -> int:
        return len(self.ids)

    def request(self, addr, payload, reply) -> None:
        self.pulled += 1
        assert self.peer is not None
        reply(self.peer.handle_request(addr, payload), "")


def test_digests_of_reaped_members_do_not_crowd_out_the_live_ones_in_push_pull():
    sched = ManualScheduler()
    now = sched.wall_ns()
    a_key, b_key = NodeKey.from_seed(b"pp-a"), NodeKey.from_seed(b"pp-b")
    gone = [NodeKey.from_seed(b"gone-%d" % i) for i in range(140)]  # > max_pull (64): churned keys
    live = [NodeKey.from_seed(b"live-%d" % i) for i in range(5)]
    a, b = DigestExchange(a_key, sched), DigestExchange(b_key, sched)
    for k in gone + live:  # a held them all while they were members
        d = mesh_pb2.Digest(version=1, node_id=k.node_id, seq=7, period_start_ns=now - 10**10, period_end_ns=now)
        assert a.ingest(sign_digest(k, d), "x")
    members = {a_key.node_id, b_key.node_id} | {k.node_id for k in live}  # the gone ones were reaped
    a_members, b_members = _Members(members, peer=b), _Members(members, peer=a)
    a.attach(a_members)
    b.attach(b_members)
    a.admit = members_only(lambda: a_members)
    b.admit = members_only(lambda: b_members)
    # one push-pull, b (which joined after the reaping) asking a
    b.merge_remote_state(a.local_state(False, b.local_state(False, None)), False, "a")
    assert all(b.latest(k.node_id) is not None for k in live)
    assert b.counters["digests_unknown_key"] == 0 and b_members.pulled <= 1


def test_a_reaped_members_digest_is_forgotten_everywhere():
    c = _digest_cluster(6, dead_retention=20.0)
    for nid, e in c.exchanges.items():  # as a node admits: a member reaped here is refused when offered again
        e.admit = members_only(lambda nid=nid: c.nodes[nid])
    gone = c.ids[4]
    seq = mesh_pb2.Digest.FromString(c.exchanges[gone].publish(_digest(rollups=2)).payload).seq
    assert c.run(5.0, lambda: _everyone_has(c, gone, seq)) < 5.0
    heard: list[str] = []
    c.exchanges[c.ids[0]].on_forget = heard.extend
    c.crash(gone)
    c.run(60.0)  # declared dead within seconds, reaped 20 s later
    assert heard == [gone]
    assert all(gone not in c.exchanges[m.node_id].held() for m in c.alive())
    assert all(len(c.exchanges[m.node_id].held()) == 0 for m in c.alive())  # (only gone ever published)
