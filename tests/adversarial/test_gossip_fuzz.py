"""Property-based fuzzing of every message the gossip service accepts, driven into a node in-process.

What ``Mesh.Packet`` and ``Mesh.Stream`` hand to the membership (a ``MeshPacket`` with each probe body and
each gossip kind; a ``StreamMessage`` with a push-pull, whose ``user_state`` is a ``DigestState``, or a
``DigestPull``; and bytes that are none of these) is drawn by hypothesis and fed to a fresh node's handlers,
the kinds interleaved and the node's clock moving between rounds so that probes, suspicions and reaping run
on what was fed. Each drawn message is delivered by four senders (the sender decides what a message may make
the node do), which makes 10,200 cases of each kind in about 20 s. The node's member table is small, so its
bound is reached. After each message: no exception but a peer error, and the handler returned promptly;
after each round: nothing grew past its bound, the node can still describe itself on the wire (what Peers
and push-pull answers serialize), and it sent to no address but its members'. The network path in front of
these handlers (sizes, status codes, the event loop) is tested over gRPC in test_gossip_bounds.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections import Counter
from collections.abc import Callable

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshnode._exceptions import PeerError
from meshnode.mesh import DigestExchange, MeshConfig, NodeKey, members_only
from meshnode.mesh._clock import ManualScheduler
from meshnode.mesh._state import _MAX_RELAYS, Membership
from meshnode.v1 import mesh_pb2

KEY = NodeKey.from_seed(b"fuzz-victim")
ME = KEY.node_id
PEERS = {"p1": "addr-p1", "p2": "addr-p2"}
CONFIG = MeshConfig(max_members=4, dead_retention=1.0, gossip_to_the_dead_time=1.0)
"""A table small enough that the generated ids fill it (the bound is exercised, not assumed), and dead
members reaped within an example."""
CASES_PER_KIND = 10_000
SENDERS = [("p1", "addr-p1"), ("p1", "addr-evil"), ("x1", "addr-x"), (ME, "addr-victim")]
"""Who delivers each drawn message: a member at its address, a member's id at another address, a stranger,
and this node's own id. The sender decides what a message may do (reply, relay, pull, list members)."""
DRAWN = {"digest_pull": 12, "raw_packet": 2, "raw_stream": 2}
"""Messages hypothesis draws of each kind per example: 3 by default, each delivered by every sender (12
cases); a digest pull's answer does not depend on its sender, so 12 are drawn; bytes that are no message: 2."""
EXAMPLES = 850
"""850 examples * 12 = 10,200 cases of each message kind."""
SLOW = 0.5
"""Seconds one message may take to handle: five times the goal for a node's answers (100 ms), as the test
machines are shared; handlers take milliseconds (the slowest is printed)."""

U64 = 2**64 - 1
LONG = "x" * 300
ODD = ["", LONG, "\x00", "é\u202e", "x" * 129, "m1"]
"""Strings a parser or a bound could trip on: empty, over each bound, NUL, non-ASCII, a push-pull's names."""
node_ids = st.sampled_from([ME, "p1", "p2", "x1", "x2", *ODD])
addrs = st.sampled_from(["addr-p1", "addr-p2", "addr-x", "addr-evil", "addr-m1", *ODD])
incarnations = st.one_of(st.sampled_from([0, 1, 2, 2**63 - 1, 2**63, 2**63 + 1, U64 - 1, U64]),
                         st.integers(0, U64))
seqs = st.one_of(st.integers(0, 64), st.integers(0, U64))
labels = st.one_of(st.just({}), st.dictionaries(st.sampled_from(["host", "site", "region", LONG, ""]),
                                                st.sampled_from(["a", "b", LONG, ""]), max_size=4),
                   st.just({f"k{i}": "v" for i in range(20)}))
states = st.sampled_from([0, 1, 2, 3, 4, 99])


def _msg(cls: type, **fields: st.SearchStrategy[object]) -> st.SearchStrategy[object]:
    return st.builds(cls, **fields)  # type: ignore[arg-type]


pings = _msg(mesh_pb2.Ping, seq_no=seqs, target=node_ids)
indirect_pings = _msg(mesh_pb2.IndirectPing, seq_no=seqs, target=node_ids, target_addr=addrs)
acks = _msg(mesh_pb2.Ack, seq_no=seqs)
nacks = _msg(mesh_pb2.Nack, seq_no=seqs)
alives = _msg(mesh_pb2.Alive, node=node_ids, incarnation=incarnations, addr=addrs, labels=labels)
suspects = st.builds(lambda n, i, f: mesh_pb2.Suspect(node=n, incarnation=i, **{"from": f}),
                     node_ids, incarnations, node_ids)
deads = st.builds(lambda n, i, f: mesh_pb2.Dead(node=n, incarnation=i, **{"from": f}), node_ids, incarnations, node_ids)
announces = st.one_of(st.builds(lambda n, s: mesh_pb2.DigestAnnounce(node_id=n, seq=s).SerializeToString(),
                                node_ids, seqs), st.binary(max_size=16))
digest_states = st.one_of(
    st.builds(lambda s: mesh_pb2.DigestState(seqs=s).SerializeToString(), st.dictionaries(node_ids, seqs, max_size=4)),
    st.binary(max_size=16), st.just(b""))
members = _msg(mesh_pb2.PushPullMember, node=node_ids, addr=addrs, incarnation=incarnations, state=states,
               labels=labels)
push_pulls = _msg(mesh_pb2.PushPull, source=node_ids, source_addr=addrs, join=st.booleans(),
                  members=st.one_of(st.lists(members, max_size=6), st.integers(0, 60).map(
                      lambda n: [mesh_pb2.PushPullMember(node=f"m{i}", addr=f"addr-m{i}", incarnation=1, state=1)
                                 for i in range(n)])),
                  user_state=digest_states)
digest_pulls = _msg(mesh_pb2.DigestPull, node_ids=st.one_of(
    st.lists(node_ids, max_size=4), st.integers(0, 70).map(lambda n: [f"m{i}" for i in range(n)])))
raw = st.binary(max_size=64)

KINDS: dict[str, st.SearchStrategy[object]] = {
    "ping": pings, "indirect_ping": indirect_pings, "ack": acks, "nack": nacks, "alive": alives,
    "suspect": suspects, "dead": deads, "user": announces, "push_pull": push_pulls, "digest_pull": digest_pulls,
    "raw_packet": raw, "raw_stream": raw,
}
batches = st.fixed_dictionaries({k: st.lists(s, min_size=n, max_size=n)
                                 for k, s in KINDS.items() for n in [DRAWN.get(k, 3)]})


class _Recorder:
    """The node's transport: records every address it sends to; reliable requests fail at once."""

    def __init__(self, sched: ManualScheduler) -> None:
        self._sched = sched
        self.dialled: set[str] = set()

    @property
    def address(self) -> str:
        return "addr-victim"

    def set_handlers(self, on_packet: object, on_stream: object) -> None:
        pass

    def send_packet(self, addr: str, payload: bytes) -> None:
        self.dialled.add(addr)

    def request(self, addr: str, payload: bytes, timeout: float,
                on_reply: Callable[[bytes | None, str], None]) -> None:
        self.dialled.add(addr)
        self._sched.call_later(0.001, lambda: on_reply(None, "UNAVAILABLE"))

    def close(self) -> None:
        pass


class Victim:
    """One node's membership and digest exchange, the way a MeshService wires them."""

    def __init__(self) -> None:
        self.sched = ManualScheduler()
        self.net = _Recorder(self.sched)
        self.exchange = DigestExchange(KEY, self.sched)
        self.m = Membership(ME, self.net, self.sched, labels={"host": "v"}, config=CONFIG, rng=random.Random(0),
                            delegate=self.exchange)
        self.exchange.admit = members_only(lambda: self.m)
        self.exchange.attach(self.m)
        self.m.start()
        for nid, addr in PEERS.items():
            self.m._alive(mesh_pb2.Alive(node=nid, incarnation=1, addr=addr))
        self.held_addrs: set[str] = set(PEERS.values())
        self.slowest = 0.0
        self.total = 0.0

    def timed(self, fn: Callable[[], object]) -> None:
        start = time.perf_counter()
        with contextlib.suppress(PeerError):  # the servicer answers INVALID_ARGUMENT
            fn()
        took = time.perf_counter() - start
        self.slowest = max(self.slowest, took)
        self.total += took
        self.held_addrs.update(x.addr for x in self.m.members())

    def packet(self, source: str, source_addr: str, **body: object) -> None:
        data = mesh_pb2.MeshPacket(source=source, source_addr=source_addr, **body).SerializeToString()  # type: ignore[arg-type]
        self.timed(lambda: self.m._on_packet(source_addr or "addr-from", data))

    def stream(self, from_addr: str, data: bytes) -> None:
        self.timed(lambda: self.m._on_stream(from_addr, data))

    def check(self) -> None:
        m, ex = self.m, self.exchange
        assert m.counters["packets_failed"] == 0, "a packet raised something other than a peer error"
        members = m.members()
        assert len(members) <= CONFIG.max_members
        assert all(0 <= x.incarnation <= U64 for x in members)
        assert len(m._broadcasts) <= 1024 and len(ex._announces) <= 1024
        assert len(m._acks) <= _MAX_RELAYS + 16
        assert len(m._suspicions) <= len(members)
        assert len(ex._inflight) <= CONFIG.max_members and len(ex.held()) <= ex.config.max_nodes
        m._local_push_pull(False, None).SerializeToString()  # what a push-pull answer and Peers carry
        self.held_addrs.update(x.addr for x in members)
        assert self.net.dialled <= self.held_addrs, self.net.dialled - self.held_addrs


def test_every_gossip_message_kind_is_handled_within_bounds():
    counts: Counter[str] = Counter()
    counters: Counter[str] = Counter()
    slowest = [0.0, 0.0]  # the slowest message, all handlers together

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(batch=batches)
    def feed(batch: dict[str, list[object]]) -> None:
        victim = Victim()  # a fresh node each example: a failure replays and shrinks
        for i in range(max(len(items) for items in batch.values())):
            for kind, items in batch.items():  # the kinds interleaved, the clock moving between rounds
                if i < len(items):
                    deliver(victim, kind, items[i])
            victim.sched.advance(0.25)  # probes, gossip rounds, suspicion timeouts, reaping
            victim.check()
        counters.update(victim.m.counters)
        slowest[0] = max(slowest[0], victim.slowest)
        slowest[1] += victim.total

    def deliver(victim: Victim, kind: str, item: object) -> None:
        if kind == "digest_pull":
            counts[kind] += 1
            msg = mesh_pb2.StreamMessage(user=item.SerializeToString())  # type: ignore[attr-defined]
            victim.stream("addr-x", msg.SerializeToString())
        elif kind == "raw_packet":
            counts[kind] += 1
            victim.timed(lambda: victim.m._on_packet("addr-x", item))  # type: ignore[arg-type]
        elif kind == "raw_stream":
            counts[kind] += 1
            victim.stream("addr-x", item)  # type: ignore[arg-type]
        else:
            for source, source_addr in SENDERS:
                counts[kind] += 1
                if kind in ("ping", "indirect_ping", "ack", "nack"):
                    victim.packet(source, source_addr, **{kind: item})
                elif kind in ("alive", "suspect", "dead", "user"):
                    victim.packet(source, source_addr, gossip=[mesh_pb2.Gossip(**{kind: item})])
                else:
                    pp = mesh_pb2.PushPull()
                    pp.CopyFrom(item)  # type: ignore[arg-type]
                    pp.source, pp.source_addr = source, source_addr
                    victim.stream(source_addr, mesh_pb2.StreamMessage(push_pull=pp).SerializeToString())

    quiet = logging.getLogger("meshnode.mesh")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)  # every refusal logs a warning; thousands of them cost more than the fuzzing
    start = time.perf_counter()
    try:
        feed()
    finally:
        quiet.setLevel(level)
    took = time.perf_counter() - start
    print(f"fuzzed {sum(counts.values()):,} messages in {took:.1f} s, slowest handled in "
          f"{slowest[0] * 1000:.1f} ms, {slowest[1]:.1f} s in handlers: {dict(counts)}; counters {dict(counters)}")
    assert min(n for k, n in counts.items() if not k.startswith("raw")) >= CASES_PER_KIND, counts
    assert slowest[0] < SLOW
    for bound in ("members_refused_table_full", "incarnations_refused", "dials_refused", "members_unsolicited",
                  "push_pulls_oversize", "refuted", "dead"):
        assert counters[bound] > 0, f"the fuzzing never reached {bound}"
