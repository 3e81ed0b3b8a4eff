"""What makes a finished flow a problem: the one definition shared by the rollups and by diagnosis.

A leaf module (it imports only the flow model), so that ``meshnode.summary`` can count degraded flows per
destination for the digest without importing ``meshnode.diagnosis``, which sits above it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from meshnode._model import FAILED_OUTCOMES

if TYPE_CHECKING:
    from meshnode._model import FlowRecord

OK: Final = "ok"
"""The kind of a flow without a problem."""

RETRANSMITS: Final = "retransmits"
"""The kind of an established flow that retransmitted (007: a flow with retransmissions votes)."""

SLOW_CONNECT: Final = "slow_connect"
"""The kind of an established flow whose handshake took longer than ``SLOW_CONNECT_US``."""

SLOW_CONNECT_US: Final = 200_000
"""A handshake slower than this (200 ms) is a problem: inside a fleet it means a lost SYN or SYN-ACK
(the first retransmission is 1 s on Linux) or an overloaded accept queue, never a normal round trip."""

CONNECT_PENDING: Final = "connect_pending"
"""The kind of an outbound TCP connect still unanswered at a period's end after ``PENDING_CONNECT_US``: a
SYN that was lost, dropped or blackholed, seen a connect timeout before the flow ends as ``timeout``."""

PENDING_CONNECT_US: Final = SLOW_CONNECT_US
"""A connect pending longer than this at a period's end is a problem: whatever it ends as (a timeout, a late
refusal, or a handshake of more than ``SLOW_CONNECT_US``), it will be one, so counting it now and not again
when it ends (``meshnode.diagnosis.ClientView``) changes when blame sees it, not what blame counts."""

SLOW_PATH: Final = "slow_path"
"""The kind of an established TCP flow whose round trip grew by ``PATH_QUEUE_US`` over the path's minimum:
packets waited in a queue on the way (a rate limit, a congested link), so the path is slow to carry."""

SLOW_SERVER: Final = "slow_server"
"""The kind of an established TCP flow whose peer took ``SLOW_RESPONSE_US`` on average to answer a request it
had received (acknowledged), while the path was not queueing: the answer was late, not its transport
(seed 001)."""

PATH_QUEUE_US: Final = 50_000
"""A smoothed RTT that rose this much (50 ms) above the flow's minimum RTT is queueing on the path: more than
a continent's propagation, and half of what a 100 ms tbf or a bufferbloated home router holds."""

SLOW_RESPONSE_US: Final = 100_000
"""A peer that takes this long (100 ms) on average to answer requests it has is a slow server: a request a
service answers from memory takes a few ms; 100 ms is a lock, a disk, a cold cache or an overload."""

PATH_KINDS: Final = frozenset({"retransmits", SLOW_PATH, SLOW_CONNECT})
"""Degradations the network causes: lost segments, queueing, lost SYNs. A path slow to carry."""

SERVER_KINDS: Final = frozenset({SLOW_SERVER})
"""Degradations the far end causes while the network carries well. A server slow to answer."""

RETRANSMIT_RATE: Final = 0.01
"""An established flow with retransmissions is a problem when at least this fraction of its packets were
retransmitted. 007 counts any retransmission; the rate spares long bulk flows whose congestion control
probes for bandwidth by losing a few segments of many thousands, which is health, not trouble."""


def pending_connect(rec: FlowRecord, at_ns: int, pending_us: int = PENDING_CONNECT_US) -> bool:
    """True when ``rec`` is the interim record of an outbound TCP connect that has waited for its answer
    longer than ``pending_us`` at ``at_ns`` (the period's end, wall clock)."""
    return (rec.kind == "interim" and rec.direction == "outbound" and rec.proto == "tcp"
            and rec.outcome == "in_progress" and at_ns - rec.start_ns > pending_us * 1000)


def queueing(max_rtt_us: Any, min_rtt_us: Any) -> Any:
    """Whether a flow's RTT rose ``PATH_QUEUE_US`` over its minimum (scalars or numpy columns alike)."""
    return (min_rtt_us > 0) & (max_rtt_us - min_rtt_us >= PATH_QUEUE_US)


def slow_answers(responses: Any, answer_us_sum: Any) -> Any:
    """Whether a flow's peer took ``SLOW_RESPONSE_US`` on average to answer once it had the request
    (scalars or numpy columns alike).

    ``answer_us_sum`` is the part of each exchange after the last ACK of its request (the kernel splits
    them): the time the path took to carry the request is before it, so an upload through a rate limit is
    not read as a slow server; the answer's own trip back is after it, at most one round trip.
    """
    return (responses > 0) & (answer_us_sum >= responses * SLOW_RESPONSE_US)


def problem_kind(rec: FlowRecord, slow_connect_us: int = SLOW_CONNECT_US) -> str:
    """What kind of problem a flow had: a failed outcome, ``retransmits``, ``slow_connect``, ``slow_path``,
    ``slow_server`` or ``ok``.

    Failure wins over degradation, and the network's degradations over the server's: retransmissions over a
    slow handshake (a slow handshake is usually a retransmitted SYN, so the retransmissions are the more
    basic fact), and any of them over slow answers (an answer carried slowly arrives late without the server
    being slow). A flow is a slow server only while its path was not queueing.
    """
    if rec.outcome in FAILED_OUTCOMES:
        return rec.outcome
    if rec.retransmits > 0 and rec.retransmits >= RETRANSMIT_RATE * max(1, rec.packets_tx):
        return RETRANSMITS
    if rec.connect_us > slow_connect_us:
        return SLOW_CONNECT
    if queueing(rec.max_rtt_us, rec.min_rtt_us):
        return SLOW_PATH
    if slow_answers(rec.responses, rec.answer_us_sum):
        return SLOW_SERVER
    return OK
