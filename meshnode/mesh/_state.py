"""SWIM membership with Lifeguard, as a synchronous state machine (memberlist ``state.go``).

The machine owns the member table and reacts to three inputs: packets, reliable requests (both through
the ``Transport`` handlers) and timers (through the ``Scheduler``). It never blocks, never sleeps and
never touches a socket, so tests drive it with an in-memory network and a manual clock, and a run is a
pure function of the seed of its ``random.Random``.

Mechanisms:

* probe: every ``probe_interval`` (scaled by local health) one member, round-robin over a shuffled list,
  gets a Ping; without an Ack after ``probe_timeout``, ``indirect_checks`` other members are asked to
  ping it; without any Ack by the end of the interval it becomes suspect.
* suspicion: a suspect member is declared dead when its suspicion times out (``_suspicion.py``: the
  timeout shrinks with independent confirmations). A member refutes a suspicion about itself by raising
  its incarnation and broadcasting Alive.
* gossip: alive/suspect/dead broadcasts and the delegate's broadcasts are piggybacked on probes and sent
  to ``gossip_nodes`` random members every ``gossip_interval``, each a bounded number of times.
* push-pull: every ``push_pull_interval`` full state (members + delegate state) is exchanged with one
  random member; a join is a push-pull with each seed.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import math
import random
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from google.protobuf.message import DecodeError

from meshnode._exceptions import PeerError
from meshnode.mesh._awareness import Awareness
from meshnode.mesh._broadcast import TransmitLimitedQueue
from meshnode.mesh._config import MeshConfig
from meshnode.mesh._suspicion import Suspicion, suspicion_timeout
from meshnode.v1 import mesh_pb2

if TYPE_CHECKING:
    from meshnode.mesh._clock import Scheduler, Timer
    from meshnode.mesh._identity import IdentityGuard
    from meshnode.mesh._transport import Transport

log = logging.getLogger(__name__)

_MAX_NODE_ID = 128
_MAX_ADDR = 256
_MAX_RELAYS = 1024
"""Indirect probes run for others at once; more are refused (``relays_refused_busy``). Each lives for
0.8 probe timeouts, so this is thousands of requests a second, far above what ``indirect_checks`` asks."""

MAX_INCARNATION = 2**63
"""The largest incarnation a peer's claim (Alive, Suspect, Dead) may carry, unless it is at most one above
the incarnation held for that member.

A member raises its incarnation by one per refutation or label change, so a claim beyond 2**63 comes from
no honest member; believed, it would leave the member no room to outbid it in the 64-bit field, and the
member could never refute again. The one step above what is held lets a member refute an accusation made
exactly at the bound, and keep refuting one step at a time beyond it.
"""
_UINT64_MAX = 2**64 - 1


def incarnation_admissible(claimed: int, held: int | None) -> bool:
    """Whether a peer's Alive, Suspect or Dead at ``claimed`` may touch a member held at ``held`` (None:
    not held)."""
    return claimed <= MAX_INCARNATION or (held is not None and claimed <= held + 1)


def dead_message(node: str, incarnation: int, declared_by: str) -> mesh_pb2.Dead:
    """A Dead about ``node`` declared by ``declared_by`` (``from``, a Python keyword); a leave when they are
    equal."""
    d = mesh_pb2.Dead(node=node, incarnation=incarnation)
    setattr(d, "from", declared_by)
    return d


def next_incarnation(own: int, accused: int = 0) -> int:
    """This node's next incarnation, above its own and above the one it is accused at; saturates at the
    field's largest value instead of overflowing it (peers refuse that far up anyway)."""
    return min(max(own, accused) + 1, _UINT64_MAX)


class State(enum.IntEnum):
    """A member's state; values equal ``meshnode.v1.MemberState``."""

    ALIVE = 1
    SUSPECT = 2
    DEAD = 3
    LEFT = 4


@dataclass(slots=True)
class Member:
    """One member as this node sees it.

    Attributes:
        node_id: the member's node id.
        addr: where its transport listens.
        incarnation: its incarnation number (only it raises it).
        state: alive, suspect, dead or left.
        labels: its labels.
        state_change: monotonic time of the last state change.
        rtt: the last direct probe round trip in seconds, None before the first.
        public_key: the key that signed its current Alive or its leave (empty when both came unsigned).
        signature: that Alive's signature, relayed with it in push-pull.
        leave_signature: while it is LEFT, its signature of its leave, relayed with it in push-pull.
    """

    node_id: str
    addr: str
    incarnation: int
    state: State
    labels: dict[str, str] = field(default_factory=dict)
    state_change: float = 0.0
    rtt: float | None = None
    public_key: bytes = b""
    signature: bytes = b""
    leave_signature: bytes = b""


class Delegate(Protocol):
    """Application data riding on membership (memberlist ``delegate.go``). Every method must not block."""

    def notify_msg(self, source: str, source_addr: str, payload: bytes) -> None:
        """A piggybacked delegate broadcast arrived from ``source``."""

    def get_broadcasts(self, overhead: int, limit: int) -> list[bytes]:
        """Broadcasts to piggyback, at most ``limit`` bytes with ``overhead`` bytes of framing each."""

    def local_state(self, join: bool, remote: bytes | None) -> bytes:
        """State for a push-pull; ``remote`` is the peer's state when answering one, None when asking."""

    def merge_remote_state(self, payload: bytes, join: bool, source_addr: str) -> None:
        """Merge the peer's push-pull state."""

    def handle_request(self, source_addr: str, payload: bytes) -> bytes:
        """Answer a delegate request sent with ``Membership.request``."""

    # Optional: ``pending_broadcasts() -> int``, how many broadcasts are queued (a gossip round with none
    # here and none in membership's queue is skipped).
    # Optional: ``forget(node_ids)``, called with the members reaped (dead or left past ``dead_retention``),
    # to drop what is held for them.


EventCallback = Callable[[str, Member], None]
"""``(kind, member)`` with kind ``"join"``, ``"leave"`` (dead or left) or ``"update"``."""


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field(tag: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field: concatenating these onto a message appends repeated items."""
    return bytes((tag,)) + _varint(len(payload)) + payload


_GOSSIP_FIELD = (7 << 3) | 2  # MeshPacket.gossip
_USER_FIELD = (4 << 3) | 2  # Gossip.user
_GOSSIP_OVERHEAD = 3
_USER_OVERHEAD = 6


class _Probe:
    """A probe of ours waiting for an Ack."""

    __slots__ = ("done", "expected_nacks", "incarnation", "nacks", "start", "target", "timers")

    def __init__(self, target: str, incarnation: int, start: float) -> None:
        self.target = target
        self.incarnation = incarnation
        self.start = start
        self.nacks = 0
        self.expected_nacks = 0
        self.done = False
        self.timers: list[Timer] = []


class _Relay:
    """An indirect probe we run for another member."""

    __slots__ = ("done", "orig_seq", "requester", "timer")

    def __init__(self, orig_seq: int, requester: str) -> None:
        self.orig_seq = orig_seq
        self.requester = requester
        self.done = False
        self.timer: Timer | None = None


class Membership:
    """The member table and the SWIM + Lifeguard state machine of one node.

    Args:
        node_id: this node's id (the fingerprint of its key).
        transport: the network.
        scheduler: the clock and timers.
        labels: this node's labels.
        config: protocol parameters.
        rng: all randomness (probe order, gossip targets); seed it for repeatable runs.
        delegate: application data riding on membership (the digest layer).
        on_event: called on joins, leaves and updates of other members.
        sign_alive: signs this node's own Alive in place (``meshnode.mesh._identity.sign_alive``).
        sign_leave: signs this node's own leave in place (``meshnode.mesh._identity.sign_leave``).
        identity: the mTLS identity rules (``IdentityGuard``); None believes every well-formed claim.
        admit_labels: which members this pool lists, by their labels (a site pool: its site's members
            only); a member refused is counted ``members_refused_other_pool``. None lists everyone.
    """

    def __init__(
        self,
        node_id: str,
        transport: Transport,
        scheduler: Scheduler,
        *,
        labels: Mapping[str, str] | None = None,
        config: MeshConfig | None = None,
        rng: random.Random | None = None,
        delegate: Delegate | None = None,
        on_event: EventCallback | None = None,
        sign_alive: Callable[[mesh_pb2.Alive], None] | None = None,
        sign_leave: Callable[[mesh_pb2.Dead], None] | None = None,
        identity: IdentityGuard | None = None,
        admit_labels: Callable[[Mapping[str, str]], bool] | None = None,
    ) -> None:
        self.node_id = node_id
        self.admit_labels = admit_labels
        self._sign_alive = sign_alive
        self._sign_leave = sign_leave
        self.identity = identity
        self.config = config or MeshConfig()
        self._transport = transport
        self._sched = scheduler
        self._rng = rng or random.Random()
        self.delegate = delegate
        self._on_event = on_event
        self.awareness = Awareness(self.config.awareness_max_multiplier)
        self.counters: Counter[str] = Counter()
        self._members: dict[str, Member] = {}
        self._ids: list[str] = []
        self._probe_list: list[str] = []
        self._probe_index = 0
        self._suspicions: dict[str, Suspicion] = {}
        self._acks: dict[int, _Probe | _Relay] = {}
        self._seq = 0
        self._broadcasts = TransmitLimitedQueue(self.num_members, self.config.retransmit_mult)
        self._timers: dict[str, Timer] = {}
        self._running = False
        self._leaving = False
        self._num_live = 0
        me = Member(node_id, transport.address, 0, State.ALIVE, dict(labels or {}), scheduler.now())
        self._add(me)
        self._live_changed(None, State.ALIVE)

    # ---------------------------------------------------------------- public surface

    @property
    def address(self) -> str:
        """This node's transport address."""
        return self._transport.address

    @property
    def incarnation(self) -> int:
        """This node's incarnation."""
        return self._members[self.node_id].incarnation

    @property
    def labels(self) -> dict[str, str]:
        """This node's labels."""
        return dict(self._members[self.node_id].labels)

    def start(self) -> None:
        """Install the transport handlers, announce ourselves, start probe, gossip and push-pull timers."""
        if self._running:
            return
        self._running = True
        self._transport.set_handlers(self._on_packet, self._on_stream)
        self._queue_alive(self._members[self.node_id])
        cfg = self.config
        # Random phases so that a fleet started at once does not probe in lockstep.
        later = self._sched.call_later
        self._timers["probe"] = later(self._rng.random() * cfg.probe_interval, self._probe_tick)
        self._timers["gossip"] = later(self._rng.random() * cfg.gossip_interval, self._gossip_tick)
        if cfg.push_pull_interval > 0:
            first = self._rng.random() * self._push_pull_interval()
            self._timers["push_pull"] = self._sched.call_later(first, self._push_pull_tick)
        if cfg.reconnect_interval > 0:
            first = self._rng.random() * cfg.reconnect_interval
            self._timers["reconnect"] = self._sched.call_later(first, self._reconnect_tick)

    def join(self, seeds: Iterable[str], on_done: Callable[[int], None] | None = None) -> None:
        """Push-pull with every seed address; ``on_done`` gets how many answered."""
        targets = [s for s in seeds if s and s != self.address]
        if not targets:
            if on_done is not None:
                on_done(0)
            return
        pending = len(targets)
        ok = 0

        def done(success: bool) -> None:
            nonlocal pending, ok
            pending -= 1
            ok += int(success)
            if pending == 0 and on_done is not None:
                on_done(ok)

        for seed in targets:
            self._push_pull(seed, join=True, on_done=done)

    def leave(self, on_done: Callable[[], None] | None = None) -> None:
        """Announce a graceful leave; ``on_done`` runs once the broadcast has been sent its full count.

        The node keeps answering pings until ``shutdown``.
        """
        me = self._members[self.node_id]
        self._leaving = True
        msg = dead_message(self.node_id, me.incarnation, self.node_id)
        if self._sign_leave is not None:
            self._sign_leave(msg)
            me.leave_signature = msg.signature
        self._set_state(me, State.LEFT)
        payload = mesh_pb2.Gossip(dead=msg).SerializeToString()
        if not any(x.state in (State.ALIVE, State.SUSPECT) for x in self._members.values()
                   if x.node_id != self.node_id):
            # nobody to tell (as memberlist's Leave): a lone node's stop waited out the whole leave timeout
            self._broadcasts.queue(self.node_id, payload, None)
            if on_done is not None:
                on_done()
            return
        self._broadcasts.queue(self.node_id, payload, on_done)

    def shutdown(self) -> None:
        """Stop every timer and close the transport."""
        self._running = False
        for t in self._timers.values():
            t.cancel()
        self._timers.clear()
        for s in self._suspicions.values():
            s.cancel()
        self._suspicions.clear()
        for h in self._acks.values():
            if isinstance(h, _Probe):
                for t in h.timers:
                    t.cancel()
            elif h.timer is not None:
                h.timer.cancel()
        self._acks.clear()
        self._transport.close()

    def set_labels(self, labels: Mapping[str, str]) -> None:
        """Change this node's labels: a new incarnation, broadcast as Alive."""
        me = self._members[self.node_id]
        me.labels = dict(labels)
        me.incarnation = next_incarnation(me.incarnation)
        self._queue_alive(me)

    def members(self) -> list[Member]:
        """Copies of every listed member, this node included."""
        return [dataclasses.replace(m, labels=dict(m.labels)) for m in self._members.values()]

    def member(self, node_id: str) -> Member | None:
        """A copy of one member, or None."""
        m = self._members.get(node_id)
        return None if m is None else dataclasses.replace(m, labels=dict(m.labels))

    def state_of(self, node_id: str) -> State | None:
        """One member's state, or None when unknown (cheap: no copy)."""
        m = self._members.get(node_id)
        return None if m is None else m.state

    def num_members(self) -> int:
        """Members alive or suspect, this node included."""
        return self._num_live

    def request(self, addr: str, payload: bytes, on_reply: Callable[[bytes | None, str], None]) -> None:
        """Send a delegate request to ``addr`` over a reliable stream; the answer goes to ``on_reply``."""
        data = mesh_pb2.StreamMessage(user=payload).SerializeToString()

        def reply(raw: bytes | None, err: str) -> None:
            if raw is None:
                on_reply(None, err)
                return
            try:
                msg = mesh_pb2.StreamMessage.FromString(raw)
            except DecodeError:
                self.counters["streams_malformed"] += 1
                log.warning("malformed stream answer from %s dropped", addr)
                on_reply(None, "malformed answer")
                return
            on_reply(msg.user, "")

        self._request(addr, data, reply)

    def _request(self, addr: str, data: bytes, on_reply: Callable[[bytes | None, str], None]) -> None:
        """A reliable request whose answer is refused (counted ``streams_oversize``) past the stream bound."""

        def bounded(raw: bytes | None, err: str) -> None:
            if raw is not None and len(raw) > self.config.max_stream_bytes:
                self.counters["streams_oversize"] += 1
                on_reply(None, f"answer of {len(raw)} bytes")
                return
            on_reply(raw, err)

        self._transport.request(addr, data, self.config.stream_timeout, bounded)

    # ---------------------------------------------------------------- table bookkeeping

    def _add(self, m: Member) -> None:
        self._members[m.node_id] = m
        self._ids.append(m.node_id)
        if m.node_id != self.node_id:
            pos = self._rng.randint(0, len(self._probe_list))
            self._probe_list.insert(pos, m.node_id)

    def _live_changed(self, old: State | None, new: State) -> None:
        was = old in (State.ALIVE, State.SUSPECT)
        now = new in (State.ALIVE, State.SUSPECT)
        self._num_live += int(now) - int(was)

    def _set_state(self, m: Member, state: State) -> None:
        if m.state != state:
            self._live_changed(m.state, state)
            m.state = state
            m.state_change = self._sched.now()

    def _emit(self, kind: str, m: Member) -> None:
        if self._on_event is not None:
            try:
                self._on_event(kind, dataclasses.replace(m, labels=dict(m.labels)))
            except Exception:
                log.exception("mesh event callback failed")

    def _reap(self) -> None:
        """Forget members dead or left for longer than ``dead_retention``."""
        horizon = self._sched.now() - self.config.dead_retention
        gone = [
            nid
            for nid, m in self._members.items()
            if m.state in (State.DEAD, State.LEFT) and m.state_change < horizon and nid != self.node_id
        ]
        if not gone:
            return
        for nid in gone:
            del self._members[nid]
        gone_set = set(gone)
        self._ids = [i for i in self._ids if i not in gone_set]
        self._probe_list = [i for i in self._probe_list if i not in gone_set]
        self._probe_index = 0
        forget = getattr(self.delegate, "forget", None)
        if forget is not None:
            try:
                forget(gone)
            except Exception:
                log.exception("mesh delegate forget failed")

    def _random_members(
        self, k: int, exclude: Iterable[str], accept: Callable[[Member], bool]
    ) -> list[Member]:
        """Up to ``k`` distinct random members passing ``accept`` (rejection sampling, then a scan)."""
        skip = set(exclude)
        skip.add(self.node_id)
        out: list[Member] = []
        ids = self._ids
        if not ids:
            return out
        for _ in range(4 * k + 8):
            if len(out) >= k:
                return out
            nid = ids[self._rng.randrange(len(ids))]
            if nid in skip:
                continue
            m = self._members[nid]
            skip.add(nid)
            if accept(m):
                out.append(m)
        if len(out) < k:
            rest = [self._members[i] for i in ids if i not in skip and accept(self._members[i])]
            self._rng.shuffle(rest)
            out.extend(rest[: k - len(out)])
        return out

    # ---------------------------------------------------------------- sending

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _send(
        self, addr: str, header: mesh_pb2.MeshPacket, gossip_only: bool = False, first: Sequence[bytes] = ()
    ) -> bool:
        """Send ``header`` with as many piggybacked broadcasts as fit; False when gossip_only had none.

        ``first`` are serialized Gossips that go before the queued ones.
        """
        header.source = self.node_id
        header.source_addr = self.address
        base = header.SerializeToString()
        budget = self.config.packet_budget - len(base)
        parts = list(first)
        used = sum(len(p) + _GOSSIP_OVERHEAD for p in parts)
        parts.extend(self._broadcasts.get_broadcasts(_GOSSIP_OVERHEAD, budget - used))
        used = sum(len(p) + _GOSSIP_OVERHEAD for p in parts)
        if self.delegate is not None and budget - used > _USER_OVERHEAD:
            try:
                user = self.delegate.get_broadcasts(_USER_OVERHEAD, budget - used)
            except Exception:
                log.exception("mesh delegate get_broadcasts failed")
                user = []
            parts.extend(_field(_USER_FIELD, u) for u in user)
        if gossip_only and not parts:
            return False
        data = base + b"".join(_field(_GOSSIP_FIELD, p) for p in parts)
        self._transport.send_packet(addr, data)
        return True

    def _own_alive(self) -> bytes:
        """This node's current Alive (as last signed) as a serialized Gossip."""
        me = self._members[self.node_id]
        a = mesh_pb2.Alive(node=me.node_id, incarnation=me.incarnation, addr=me.addr, labels=me.labels,
                           public_key=me.public_key, signature=me.signature)
        return mesh_pb2.Gossip(alive=a).SerializeToString()

    def _queue_alive(self, m: Member) -> None:
        msg = mesh_pb2.Alive(node=m.node_id, incarnation=m.incarnation, addr=m.addr, labels=m.labels)
        if m.node_id == self.node_id and self._sign_alive is not None:
            self._sign_alive(msg)
            m.public_key, m.signature = msg.public_key, msg.signature
        self._broadcasts.queue(m.node_id, mesh_pb2.Gossip(alive=msg).SerializeToString())

    # ---------------------------------------------------------------- probing

    def _probe_tick(self) -> None:
        if not self._running:
            return
        interval = self.awareness.scale_timeout(self.config.probe_interval)
        self._timers["probe"] = self._sched.call_later(interval, self._probe_tick)
        if self._leaving:
            return
        target = self._next_probe_target()
        if target is not None:
            self._probe(target, interval)

    def _next_probe_target(self) -> Member | None:
        for _ in range(len(self._probe_list) + 1):
            if self._probe_index >= len(self._probe_list):
                self._reap()
                self._rng.shuffle(self._probe_list)
                self._probe_index = 0
                if not self._probe_list:
                    return None
            nid = self._probe_list[self._probe_index]
            self._probe_index += 1
            m = self._members.get(nid)
            if m is not None and m.state in (State.ALIVE, State.SUSPECT):
                return m
        return None

    def _probe(self, target: Member, interval: float) -> None:
        seq = self._next_seq()
        probe = _Probe(target.node_id, target.incarnation, self._sched.now())
        self._acks[seq] = probe
        first: list[bytes] = []
        if target.state == State.SUSPECT:
            # Lifeguard's buddy system: tell a suspect it is suspected, so that it can refute at once
            # instead of waiting for the gossip to reach it.
            sus = mesh_pb2.Suspect(node=target.node_id, incarnation=target.incarnation, **{"from": self.node_id})
            first.append(mesh_pb2.Gossip(suspect=sus).SerializeToString())
        if target.rtt is None:
            # it may not list this node: an Alive is sent a bounded number of times to random members, so a
            # member can miss every one (and would learn of this node at its next push-pull only), and a
            # node answers no ping from a node it does not list. Until the target answers a probe directly,
            # this node's Alive rides the ping.
            first.append(self._own_alive())
        ping = mesh_pb2.MeshPacket(ping=mesh_pb2.Ping(seq_no=seq, target=target.node_id))
        self._send(target.addr, ping, first=first)
        later = self._sched.call_later
        probe.timers.append(later(self.config.probe_timeout, lambda: self._probe_indirect(seq)))
        probe.timers.append(later(interval, lambda: self._probe_failed(seq)))

    def _probe_indirect(self, seq: int) -> None:
        probe = self._acks.get(seq)
        if not isinstance(probe, _Probe) or probe.done:
            return
        target = self._members.get(probe.target)
        if target is None:
            return
        relays = self._random_members(
            self.config.indirect_checks, (probe.target,), lambda m: m.state == State.ALIVE
        )
        probe.expected_nacks = len(relays)
        ind = mesh_pb2.IndirectPing(seq_no=seq, target=target.node_id, target_addr=target.addr)
        for relay in relays:
            self._send(relay.addr, mesh_pb2.MeshPacket(indirect_ping=ind))

    def _probe_failed(self, seq: int) -> None:
        probe = self._acks.pop(seq, None)
        if not isinstance(probe, _Probe) or probe.done:
            return
        probe.done = True
        # Lifeguard: missing nacks mean our own messages are getting lost, so we are likely the slow one.
        if probe.expected_nacks > 0:
            self.awareness.apply_delta(max(0, probe.expected_nacks - probe.nacks))
        else:
            self.awareness.apply_delta(1)
        self.counters["probes_failed"] += 1
        m = self._members.get(probe.target)
        if m is None or m.state not in (State.ALIVE, State.SUSPECT):
            return
        self._suspect(mesh_pb2.Suspect(node=m.node_id, incarnation=m.incarnation, **{"from": self.node_id}))

    def _on_ack(self, seq: int, source: str) -> None:
        handler = self._acks.pop(seq, None)
        if handler is None or handler.done:
            return
        handler.done = True
        if isinstance(handler, _Probe):
            for t in handler.timers:
                t.cancel()
            self.awareness.apply_delta(-1)
            self.counters["probes_ok"] += 1
            m = self._members.get(handler.target)
            if m is not None and source == handler.target:
                m.rtt = self._sched.now() - handler.start
        else:
            if handler.timer is not None:
                handler.timer.cancel()
            self._send(handler.requester, mesh_pb2.MeshPacket(ack=mesh_pb2.Ack(seq_no=handler.orig_seq)))

    def _on_nack(self, seq: int) -> None:
        handler = self._acks.get(seq)
        if isinstance(handler, _Probe) and not handler.done:
            handler.nacks += 1

    def _relay_ping(self, requester_addr: str, msg: mesh_pb2.IndirectPing) -> None:
        if not msg.target or len(msg.target_addr) > _MAX_ADDR:
            raise PeerError("indirect ping without a target")
        if not self._dialable(msg.target, msg.target_addr):
            return
        if sum(1 for h in self._acks.values() if isinstance(h, _Relay)) >= _MAX_RELAYS:
            self.counters["relays_refused_busy"] += 1
            return
        seq = self._next_seq()
        relay = _Relay(msg.seq_no, requester_addr)
        self._acks[seq] = relay

        def nack() -> None:
            if self._acks.pop(seq, None) is relay and not relay.done:
                relay.done = True
                self._send(requester_addr, mesh_pb2.MeshPacket(nack=mesh_pb2.Nack(seq_no=relay.orig_seq)))

        relay.timer = self._sched.call_later(self.config.probe_timeout * 0.8, nack)
        self._send(msg.target_addr, mesh_pb2.MeshPacket(ping=mesh_pb2.Ping(seq_no=seq, target=msg.target)))

    # ---------------------------------------------------------------- gossip and push-pull

    def _gossip_tick(self) -> None:
        if not self._running:
            return
        self._timers["gossip"] = self._sched.call_later(self.config.gossip_interval, self._gossip_tick)
        pending = getattr(self.delegate, "pending_broadcasts", None)
        if pending is not None and not pending() and not len(self._broadcasts):
            return  # nothing to send: no member draws, no packet built (hierarchical pools idle most of a period)
        now = self._sched.now()
        dead_horizon = self.config.gossip_to_the_dead_time

        def eligible(m: Member) -> bool:
            if m.state in (State.ALIVE, State.SUSPECT):
                return True
            return m.state == State.DEAD and now - m.state_change < dead_horizon

        for m in self._random_members(self.config.gossip_nodes, (), eligible):
            if not self._send(m.addr, mesh_pb2.MeshPacket(), gossip_only=True):
                return

    def _push_pull_interval(self) -> float:
        """memberlist ``pushPullScale``: beyond 32 members the interval grows with log2(n)."""
        n = self._num_live
        base = self.config.push_pull_interval
        if n <= 32:
            return base
        return base * (math.ceil(math.log2(n) - math.log2(32)) + 1)

    def _push_pull_tick(self) -> None:
        if not self._running:
            return
        self._timers["push_pull"] = self._sched.call_later(self._push_pull_interval(), self._push_pull_tick)
        if self._leaving:
            return
        peers = self._random_members(1, (), lambda m: m.state == State.ALIVE)
        if peers:
            self._push_pull(peers[0].addr, join=False, on_done=None)

    def _reconnect_tick(self) -> None:
        if not self._running:
            return
        interval = self.config.reconnect_interval
        self._timers["reconnect"] = self._sched.call_later(interval, self._reconnect_tick)
        if self._leaving:
            return
        num_dead = sum(1 for m in self._members.values() if m.state == State.DEAD)
        # Serf: attempt with probability dead / alive, so that a fleet makes about one attempt per interval
        # for each dead member, however large it is.
        if num_dead == 0 or self._rng.random() > num_dead / max(1, self._num_live):
            return
        dead = self._random_members(1, (), lambda m: m.state == State.DEAD)
        if dead:
            self.counters["reconnects"] += 1
            self._push_pull(dead[0].addr, join=False, on_done=None)

    def _local_push_pull(self, join: bool, remote_user: bytes | None) -> mesh_pb2.PushPull:
        pp = mesh_pb2.PushPull(source=self.node_id, source_addr=self.address, join=join)
        for m in self._members.values():
            pp.members.add(node=m.node_id, addr=m.addr, incarnation=m.incarnation, state=int(m.state),
                           labels=m.labels, public_key=m.public_key, signature=m.signature,
                           leave_signature=m.leave_signature if m.state == State.LEFT else b"")
        if self.delegate is not None:
            try:
                pp.user_state = self.delegate.local_state(join, remote_user)
            except Exception:
                log.exception("mesh delegate local_state failed")
        return pp

    def _push_pull(self, addr: str, join: bool, on_done: Callable[[bool], None] | None) -> None:
        req = mesh_pb2.StreamMessage(push_pull=self._local_push_pull(join, None)).SerializeToString()

        def reply(raw: bytes | None, err: str) -> None:
            ok = False
            if raw is None:
                self.counters["push_pull_failed"] += 1
                log.debug("push-pull with %s failed: %s", addr, err)
            else:
                try:
                    msg = mesh_pb2.StreamMessage.FromString(raw)
                    if msg.WhichOneof("body") != "push_pull":
                        raise PeerError("push-pull answered without state")
                    self._merge_push_pull(msg.push_pull, addr, asked=True)
                    ok = True
                except (DecodeError, PeerError) as exc:
                    self.counters["streams_malformed"] += 1
                    log.warning("bad push-pull answer from %s dropped: %s", addr, exc)
            if on_done is not None:
                on_done(ok)

        self.counters["push_pulls"] += 1
        self._request(addr, req, reply)

    def _merge_push_pull(self, pp: mesh_pb2.PushPull, source_addr: str, asked: bool) -> None:
        """Merge a peer's member list: the answer to an exchange this node started (``asked``), or state
        pushed to it. Pushed state is believed only about its sender and members already known: the members
        a node learns come from peers it chose to ask (at a member's or seed's address), so a sender cannot
        make it list, and then probe, members at addresses the sender chose."""
        members = self._members
        if len(pp.members) > self.config.max_members:
            self.counters["push_pulls_oversize"] += 1
            raise PeerError(f"push-pull names {len(pp.members)} members (max {self.config.max_members})")
        unsolicited = 0
        for pm in pp.members:
            known = members.get(pm.node)
            if (
                known is not None
                and pm.state == mesh_pb2.ALIVE
                and known.state == State.ALIVE
                and pm.incarnation <= known.incarnation
                and pm.node != self.node_id
            ):
                continue  # nothing new: the common case, kept cheap for large fleets
            if known is None and not asked and pm.node != pp.source:
                unsolicited += 1
                continue
            if not self._admit(pm.node, pm.incarnation, new=pm.state == mesh_pb2.ALIVE, accuser=pp.source):
                continue
            try:
                st = State(pm.state)
                if st == State.ALIVE:
                    self._alive(mesh_pb2.Alive(node=pm.node, incarnation=pm.incarnation, addr=pm.addr,
                                               labels=pm.labels, public_key=pm.public_key,
                                               signature=pm.signature))
                elif st == State.LEFT:
                    d = dead_message(pm.node, pm.incarnation, pm.node)
                    d.public_key, d.signature = pm.public_key, pm.leave_signature
                    self._dead(d)
                else:
                    # memberlist mergeState: a dead member is only suspected, so that it gets a chance to refute.
                    self._suspect(mesh_pb2.Suspect(node=pm.node, incarnation=pm.incarnation,
                                                   **{"from": pp.source}))
            except (ValueError, PeerError) as exc:
                self.counters["members_malformed"] += 1
                log.warning("bad member in push-pull state from %s dropped: %s", source_addr, exc)
        if unsolicited:
            self.counters["members_unsolicited"] += unsolicited
            log.warning("push-pull from %s named %d members this node does not know; not taken", source_addr,
                        unsolicited)
        if self.delegate is not None and pp.user_state and (asked or self._dialable(pp.source, source_addr)):
            try:
                self.delegate.merge_remote_state(pp.user_state, pp.join, source_addr)
            except Exception:
                log.exception("mesh delegate merge_remote_state failed (state from %s)", source_addr)

    # ---------------------------------------------------------------- receiving

    def _on_packet(self, from_addr: str, data: bytes) -> None:
        if not self._running:
            return
        try:
            pkt = mesh_pb2.MeshPacket.FromString(data)
            self._handle_packet(from_addr, pkt)
        except (DecodeError, PeerError, ValueError) as exc:
            self.counters["packets_malformed"] += 1
            log.warning("bad packet from %s dropped: %s", from_addr, exc)
        except Exception:
            self.counters["packets_failed"] += 1
            log.exception("packet from %s could not be handled; dropped", from_addr)

    def _handle_packet(self, from_addr: str, pkt: mesh_pb2.MeshPacket) -> None:
        if not self._source_authentic(pkt.source):
            return
        reply_to = pkt.source_addr or from_addr
        if len(reply_to) > _MAX_ADDR or len(pkt.source) > _MAX_NODE_ID:
            raise PeerError("source id or address too long")
        body = pkt.WhichOneof("body")
        ack_after_gossip = False
        if body == "ping":
            if pkt.ping.target and pkt.ping.target != self.node_id:
                self.counters["pings_misdirected"] += 1
            elif self._member_at(pkt.source, reply_to):
                self._send(reply_to, mesh_pb2.MeshPacket(ack=mesh_pb2.Ack(seq_no=pkt.ping.seq_no)))
            else:
                # a joining member's own Alive rides its first probes: answered if it lists the sender here
                ack_after_gossip = True
        elif body == "indirect_ping":
            if self._dialable(pkt.source, reply_to):
                self._relay_ping(reply_to, pkt.indirect_ping)
        elif body == "ack":
            self._on_ack(pkt.ack.seq_no, pkt.source)
        elif body == "nack":
            self._on_nack(pkt.nack.seq_no)
        for g in pkt.gossip:
            kind = g.WhichOneof("msg")
            if kind == "alive":
                if self._admit(g.alive.node, g.alive.incarnation, new=True):
                    self._alive(g.alive)
            elif kind == "suspect":
                if self._admit(g.suspect.node, g.suspect.incarnation, accuser=getattr(g.suspect, "from")):
                    self._suspect(g.suspect)
            elif kind == "dead":
                if self._admit(g.dead.node, g.dead.incarnation, accuser=getattr(g.dead, "from")):
                    self._dead(g.dead)
            elif kind == "user" and self.delegate is not None and self._dialable(pkt.source, reply_to):
                try:
                    self.delegate.notify_msg(pkt.source, reply_to, g.user)
                except Exception:
                    log.exception("mesh delegate notify_msg failed (message from %s)", reply_to)
        if ack_after_gossip and self._dialable(pkt.source, reply_to):
            self._send(reply_to, mesh_pb2.MeshPacket(ack=mesh_pb2.Ack(seq_no=pkt.ping.seq_no)))

    def _on_stream(self, from_addr: str, data: bytes) -> bytes:
        try:
            msg = mesh_pb2.StreamMessage.FromString(data)
        except DecodeError as exc:
            self.counters["streams_malformed"] += 1
            log.warning("bad stream request from %s dropped: %s", from_addr, exc)
            raise PeerError(f"malformed stream request from {from_addr}") from exc
        body = msg.WhichOneof("body")
        if body == "push_pull":
            pp = msg.push_pull
            source_addr = pp.source_addr or from_addr
            if len(source_addr) > _MAX_ADDR or len(pp.source) > _MAX_NODE_ID:
                self.counters["streams_malformed"] += 1
                raise PeerError("push-pull source id or address too long")
            if not self._source_authentic(pp.source):
                raise PeerError(f"push-pull from {from_addr} names a source its certificate does not bind")
            self._merge_push_pull(pp, source_addr, asked=False)
            local = self._local_push_pull(pp.join, pp.user_state)
            return mesh_pb2.StreamMessage(push_pull=local).SerializeToString()
        if body == "user" and self.delegate is not None:
            answer = self.delegate.handle_request(from_addr, msg.user)
            return mesh_pb2.StreamMessage(user=answer).SerializeToString()
        self.counters["streams_malformed"] += 1
        raise PeerError(f"empty stream request from {from_addr}")

    # ---------------------------------------------------------------- what a peer's message may do

    def _admit(self, node: str, incarnation: int, *, new: bool = False, accuser: str = "") -> bool:
        """Whether a peer's claim about ``node`` at ``incarnation`` may reach the state machine; each refusal
        is counted. ``new``: an Alive, which lists a member not held yet; ``accuser``: who suspects or
        declares it dead (kept as a confirmation, so bounded like a node id)."""
        m = self._members.get(node)
        if not incarnation_admissible(incarnation, None if m is None else m.incarnation):
            self.counters["incarnations_refused"] += 1
            log.warning("claim about %s at incarnation %d refused (held %s)", node[:_MAX_NODE_ID], incarnation,
                        None if m is None else m.incarnation)
            return False
        if len(accuser) > _MAX_NODE_ID:
            self.counters["members_malformed"] += 1
            return False
        if new and m is None and len(self._members) >= self.config.max_members:
            self.counters["members_refused_table_full"] += 1
            log.debug("member table full (%d): %s not listed", len(self._members), node[:_MAX_NODE_ID])
            return False
        return True

    def _member_at(self, node: str, addr: str) -> bool:
        """Whether ``node`` is another member, held at ``addr``."""
        m = self._members.get(node)
        return m is not None and m.addr == addr and node != self.node_id

    def _dialable(self, node: str, addr: str) -> bool:
        """Whether a message from or about ``node`` may make this node send to ``addr``: only when that is
        the address held for ``node``, a member. Addresses a packet names are otherwise never dialled (a
        reflector for whoever wrote them); a refusal is counted ``dials_refused``."""
        if self._member_at(node, addr):
            return True
        self.counters["dials_refused"] += 1
        log.debug("%s named by a message about %s not dialled: not its member address", addr[:_MAX_ADDR],
                  node[:_MAX_NODE_ID])
        return False

    # ---------------------------------------------------------------- alive / suspect / dead

    def _check_node(self, node: str) -> None:
        if not node or len(node) > _MAX_NODE_ID:
            raise PeerError(f"bad node id {node[:_MAX_NODE_ID]!r}")

    def _check_alive(self, a: mesh_pb2.Alive) -> None:
        self._check_node(a.node)
        cfg = self.config
        if not a.addr or len(a.addr) > _MAX_ADDR:
            raise PeerError(f"bad address for {a.node}")
        if len(a.labels) > cfg.max_labels:
            raise PeerError(f"{a.node} carries {len(a.labels)} labels (max {cfg.max_labels})")
        for k, v in a.labels.items():
            if len(k) > cfg.max_label_bytes or len(v) > cfg.max_label_bytes:
                raise PeerError(f"{a.node} carries an oversize label")

    def _refute(self, me: Member, accused_incarnation: int) -> None:
        """Someone suspects (or declares dead) this node: outbid their incarnation and say we are alive."""
        me.incarnation = next_incarnation(me.incarnation, accused_incarnation)
        self._queue_alive(me)
        self.awareness.apply_delta(1)
        self.counters["refuted"] += 1

    def _source_authentic(self, source: str) -> bool:
        """Identity check (mTLS): the source a message names is its sender's certified node id."""
        return self.identity is None or self.identity.source_ok(source)

    def _alive_authentic(self, a: mesh_pb2.Alive) -> bool:
        """Identity check (mTLS): an Alive comes from its member's own connection or carries its signature."""
        return self.identity is None or self.identity.alive_ok(a)

    def _leave_authentic(self, d: mesh_pb2.Dead) -> bool:
        """Identity check (mTLS): a leave comes from its member's own connection or carries its signature."""
        return self.identity is None or self.identity.leave_ok(d)

    def _alive(self, a: mesh_pb2.Alive) -> None:
        self._check_alive(a)
        if not self._alive_authentic(a):
            return
        if a.node != self.node_id and self.admit_labels is not None and not self.admit_labels(a.labels):
            self.counters["members_refused_other_pool"] += 1
            return
        m = self._members.get(a.node)
        if a.node == self.node_id:
            assert m is not None
            if self._leaving:
                return
            if a.incarnation > m.incarnation or (
                a.incarnation == m.incarnation and (a.addr != m.addr or dict(a.labels) != m.labels)
            ):
                self._refute(m, a.incarnation)
            return
        if m is None:
            m = Member(a.node, a.addr, a.incarnation, State.ALIVE, dict(a.labels), self._sched.now(),
                       public_key=a.public_key, signature=a.signature)
            self._add(m)
            self._live_changed(None, State.ALIVE)
            self._broadcasts.queue(a.node, mesh_pb2.Gossip(alive=a).SerializeToString())
            self._emit("join", m)
            return
        if a.incarnation <= m.incarnation:
            return
        was = m.state
        s = self._suspicions.pop(a.node, None)
        if s is not None:
            s.cancel()
        m.incarnation = a.incarnation
        m.addr = a.addr
        m.labels = dict(a.labels)
        m.public_key, m.signature = a.public_key, a.signature
        m.leave_signature = b""
        self._set_state(m, State.ALIVE)
        self._broadcasts.queue(a.node, mesh_pb2.Gossip(alive=a).SerializeToString())
        self._emit("join" if was in (State.DEAD, State.LEFT) else "update", m)

    def _suspect(self, s: mesh_pb2.Suspect) -> None:
        self._check_node(s.node)
        m = self._members.get(s.node)
        if m is None or s.incarnation < m.incarnation:
            return
        suspecter = getattr(s, "from")
        if m.state == State.SUSPECT:
            susp = self._suspicions.get(s.node)
            if susp is not None and susp.confirm(suspecter):
                self.counters["suspicion_confirmations"] += 1
                self._broadcasts.queue(s.node, mesh_pb2.Gossip(suspect=s).SerializeToString())
            return
        if m.state != State.ALIVE:
            return
        if s.node == self.node_id:
            if not self._leaving:
                self._refute(m, s.incarnation)
            return
        self._broadcasts.queue(s.node, mesh_pb2.Gossip(suspect=s).SerializeToString())
        m.incarnation = s.incarnation
        self._set_state(m, State.SUSPECT)
        self.counters["suspicions"] += 1
        cfg = self.config
        n = self._num_live
        k = cfg.suspicion_mult - 2
        if n - 2 < k:
            k = 0
        min_t = suspicion_timeout(cfg.suspicion_mult, n, cfg.probe_interval)
        max_t = cfg.suspicion_max_timeout_mult * min_t
        incarnation = s.incarnation
        node = s.node

        def timeout(confirmations: int) -> None:
            cur = self._members.get(node)
            if cur is not None and cur.state == State.SUSPECT and cur.incarnation == incarnation:
                log.info("suspect %s timed out after %d confirmations: dead", node, confirmations)
                self.counters["declared_dead"] += 1
                self._dead(dead_message(node, incarnation, self.node_id))

        self._suspicions[node] = Suspicion(self._sched, suspecter, k, min_t, max_t, timeout)

    def _dead(self, d: mesh_pb2.Dead) -> None:
        self._check_node(d.node)
        m = self._members.get(d.node)
        if m is None or d.incarnation < m.incarnation or m.state in (State.DEAD, State.LEFT):
            return
        left = getattr(d, "from") == d.node
        if left and not self._leave_authentic(d):
            return
        if d.node == self.node_id and not self._leaving:
            self._refute(m, d.incarnation)
            return
        s = self._suspicions.pop(d.node, None)
        if s is not None:
            s.cancel()
        self._broadcasts.queue(d.node, mesh_pb2.Gossip(dead=d).SerializeToString())
        m.incarnation = d.incarnation
        if left and d.signature:
            # relayed in push-pull, so that members who missed the broadcast can check the leave too
            m.public_key, m.leave_signature = d.public_key, d.signature
        self._set_state(m, State.LEFT if left else State.DEAD)
        self.counters["left" if left else "dead"] += 1
        self._emit("leave", m)
