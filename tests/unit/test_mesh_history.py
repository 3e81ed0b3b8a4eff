"""The digest history (bounded per member and in bytes, evictions counted) and fetching a missed period by node id
and seq: from the holder that gave the later digest, then the publisher, over real gRPC; a holder that serves a
tampered digest is refused and the next one asked."""

from __future__ import annotations

import asyncio
import random
import time

import grpc

from meshnode.mesh import MeshService, NodeKey, State, sign_digest
from meshnode.mesh._digest import DIGEST_VERSION, HeldDigest
from meshnode.mesh._history import DigestHistory
from meshnode.v1 import flow_pb2, mesh_pb2, mesh_pb2_grpc
from tests._support.meshfleet import FAST, until

PUB = NodeKey.from_seed(b"history-publisher")
S = 10**9
T0 = 1_700_000_000 * S


def _signed(seq: int, prev: int, key: NodeKey = PUB, period: int = 10 * S, records: int = 0,
            t0: int = T0) -> mesh_pb2.SignedDigest:
    k = seq - 1
    d = mesh_pb2.Digest(version=DIGEST_VERSION, node_id=key.node_id, seq=seq, prev_seq=prev,
                        period_start_ns=t0 + k * period, period_end_ns=t0 + (k + 1) * period,
                        endpoints=[flow_pb2.Flow(src="10.0.0.1", sport=40000 + i, dst="10.0.0.2", dport=443)
                                   for i in range(records)])
    return sign_digest(key, d)


def _held(seq: int, prev: int | None = None, key: NodeKey = PUB, records: int = 0) -> HeldDigest:
    signed = _signed(seq, seq - 1 if prev is None else prev, key, records=records)
    return HeldDigest(signed, mesh_pb2.Digest.FromString(signed.payload), 0.0)


def test_history_keeps_the_newest_periods_per_member_and_counts_what_it_evicts():
    h = DigestHistory(per_node=3, max_bytes=1 << 20)
    assert [h.add(_held(s)) for s in (2, 4, 3, 2)] == [True, True, True, False]  # a second copy is not kept
    assert h.add(_held(5)) and h.evicted == 1  # the oldest seq goes
    assert [x.digest.seq for x in h.of(PUB.node_id)] == [3, 4, 5]
    assert not h.add(_held(1)) and h.evicted == 2  # older than every period kept: in and out at once
    assert h.get(PUB.node_id, 4) is not None and h.get(PUB.node_id, 2) is None
    assert len(h) == 3


def test_history_is_bounded_in_bytes_oldest_period_first_across_members():
    other = NodeKey.from_seed(b"history-other")
    one = len(_held(2, records=20).signed.payload)  # seq 1 names no predecessor: 2 bytes less
    h = DigestHistory(per_node=100, max_bytes=5 * one)
    for s in range(1, 4):
        h.add(_held(s, records=20))
        h.add(_held(s, key=other, records=20))
    assert len(h) == 5 and h.bytes <= 5 * one and h.evicted == 1
    assert h.get(PUB.node_id, 1) is None or h.get(other.node_id, 1) is None  # one of the two oldest periods went
    for s in range(4, 60):  # a long run stays within the bound, and the heap of entries does not grow with it
        h.add(_held(s, records=20))
    assert h.bytes <= 5 * one and len(h._heap) <= 2 * len(h) + 64
    assert [x.digest.seq for x in h.of(PUB.node_id)] == [55, 56, 57, 58, 59]
    h.forget([PUB.node_id, other.node_id])
    assert len(h) == 0 and h.bytes == 0


def test_missing_names_predecessors_not_held_within_the_bound():
    h = DigestHistory(per_node=4, max_bytes=1 << 20)
    for s in (10, 7, 6):
        h.add(_held(s))
    h.add(_held(12, prev=10))
    # 12 -> 10 held; 10 -> 9 missing; 7 -> 6 held; 6 -> 5 would be the fifth newest: not fetched
    assert h.missing(PUB.node_id) == [9]
    h.add(_held(3, prev=0))  # a first digest after a restart names none
    assert h.missing(PUB.node_id) == [9]


def _tampered(real: mesh_pb2.SignedDigest) -> HeldDigest:
    """``real`` with a flow that never was added to its payload, under the original signature."""
    forged = mesh_pb2.Digest.FromString(real.payload)
    forged.endpoints.add(src="10.0.0.1", sport=1, dst="10.0.0.2", dport=443)
    bad = mesh_pb2.SignedDigest(payload=forged.SerializeToString(), signature=real.signature,
                                public_key=real.public_key)
    return HeldDigest(bad, forged, 0.0)


async def _service(i: int, seeds: list[str], key: NodeKey) -> tuple[grpc.aio.Server, MeshService]:
    server = grpc.aio.server()
    port = server.add_insecure_port("127.0.0.1:0")
    mesh = MeshService(advertise=f"127.0.0.1:{port}", key=key, labels={"host": f"h{i}"}, seeds=seeds, config=FAST,
                       export_period=0, rng=random.Random(i))
    mesh.register(server)
    await server.start()
    await mesh.start()
    return server, mesh


async def _fetch_scenario() -> None:
    now = time.time_ns()
    chain = [_signed(s, s - 1 if s > 1 else 0, t0=now - 80 * S) for s in range(1, 7)]
    pub_server, pub = await _service(0, [], PUB)
    # a member that holds a copy of seq 2 altered under its signature, and serves it
    holder_server, holder = await _service(2, [pub.advertise], NodeKey.from_seed(b"history-holder"))
    holder.exchange.history.add(_tampered(chain[1]))
    asker_server, asker = await _service(1, [pub.advertise], NodeKey.from_seed(b"history-asker"))
    try:
        await until(lambda: all(asker.membership.state_of(m.node_id) == State.ALIVE for m in (pub, holder)), 5.0)
        for signed in chain[:3]:  # the publisher's own history: what it serves to those that missed a period
            pub.exchange.history.add(HeldDigest(signed, mesh_pb2.Digest.FromString(signed.payload), 0.0))
        got: list[int] = []
        asker.digest_listeners.append(lambda d, _s, own: got.append(d.seq))
        # the asker gets seq 3 from the holder (relayed), having missed 1 and 2
        assert asker.exchange.ingest(chain[2], holder.advertise)
        await until(lambda: sorted(got) == [1, 2, 3], 5.0)
        ex = asker.exchange
        assert [h.digest.seq for h in ex.history.of(PUB.node_id)] == [1, 2, 3]
        assert ex.history.get(PUB.node_id, 2).signed == chain[1]  # type: ignore[union-attr]
        assert ex.counters["digests_bad_signature"] == 1  # the holder's forged copy, refused; then the publisher asked
        assert ex.counters["digest_fetches"] == 2 and ex.counters["digest_fetches_failed"] == 0
        assert ex.counters["digests_history_filled"] == 2
        assert ex.latest(PUB.node_id).digest.seq == 3  # type: ignore[union-attr]
        # asked by seq, a holder answers from its history: the refs it holds, nothing for those it does not
        stub = mesh_pb2_grpc.MeshStub(grpc.aio.insecure_channel(asker.advertise))
        pull = mesh_pb2.DigestPull(refs=[mesh_pb2.DigestRef(node_id=PUB.node_id, seq=s) for s in (1, 9)])
        raw = await stub.Stream(mesh_pb2.StreamRequest(
            from_addr="127.0.0.1:1", payload=mesh_pb2.StreamMessage(user=pull.SerializeToString()).SerializeToString()))
        answer = mesh_pb2.DigestState.FromString(mesh_pb2.StreamMessage.FromString(raw.payload).user)
        assert list(answer.digests) == [chain[0]]
        # validation found no period of the publisher after seq 4's: the one before the next held (6) is fetched
        for signed in chain[3:]:
            pub.exchange.history.add(HeldDigest(signed, mesh_pb2.Digest.FromString(signed.payload), 0.0))
        for signed in (chain[3], chain[5]):  # held here without a word to the exchange (no fill of its own)
            ex.history.add(HeldDigest(signed, mesh_pb2.Digest.FromString(signed.payload), 0.0))
        assert ex.request_gap(PUB.node_id, mesh_pb2.Digest.FromString(chain[3].payload).period_end_ns)
        await until(lambda: 5 in got, 5.0)
        assert ex.history.get(PUB.node_id, 5).signed == chain[4]  # type: ignore[union-attr]
        assert not ex.request_gap(PUB.node_id, mesh_pb2.Digest.FromString(chain[3].payload).period_end_ns)  # held
    finally:
        for m in (asker, holder, pub):
            await m.stop(leave=False)
        for s in (asker_server, pub_server, holder_server):
            await s.stop(0)


def test_a_missed_period_is_fetched_by_seq_and_a_tampered_copy_is_refused():
    asyncio.run(_fetch_scenario())
