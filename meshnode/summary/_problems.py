"""What makes a finished flow a problem: the one definition shared by the rollups and by diagnosis.

A leaf module (it imports only the flow model), so that ``meshnode.summary`` can count degraded flows per
destination for the digest without importing ``meshnode.diagnosis``, which sits above it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

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

RETRANSMIT_RATE: Final = 0.01
"""An established flow with retransmissions is a problem when at least this fraction of its packets were
retransmitted. 007 counts any retransmission; the rate spares long bulk flows whose congestion control
probes for bandwidth by losing a few segments of many thousands, which is health, not trouble."""


def pending_connect(rec: FlowRecord, at_ns: int, pending_us: int = PENDING_CONNECT_US) -> bool:
    """True when ``rec`` is the interim record of an outbound TCP connect that has waited for its answer
    longer than ``pending_us`` at ``at_ns`` (the period's end, wall clock)."""
    return (rec.kind == "interim" and rec.direction == "outbound" and rec.proto == "tcp"
            and rec.outcome == "in_progress" and at_ns - rec.start_ns > pending_us * 1000)


def problem_kind(rec: FlowRecord, slow_connect_us: int = SLOW_CONNECT_US) -> str:
    """What kind of problem a flow had: a failed outcome, ``retransmits``, ``slow_connect`` or ``ok``.

    Failure wins over degradation, and retransmissions over a slow handshake (a slow handshake is usually
    a retransmitted SYN, so the retransmissions are the more basic fact).
    """
    if rec.outcome in FAILED_OUTCOMES:
        return rec.outcome
    if rec.retransmits > 0 and rec.retransmits >= RETRANSMIT_RATE * max(1, rec.packets_tx):
        return RETRANSMITS
    if rec.connect_us > slow_connect_us:
        return SLOW_CONNECT
    return OK
