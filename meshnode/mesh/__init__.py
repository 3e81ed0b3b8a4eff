"""The gossip mesh: SWIM membership with Lifeguard, signed digests, label aggregation, fleet queries.

Internal modules start with ``_``; this package re-exports the public surface.
"""

from meshnode.mesh._awareness import Awareness, apply_delta, scale_timeout
from meshnode.mesh._broadcast import TransmitLimitedQueue, retransmit_limit
from meshnode.mesh._clock import AsyncioScheduler, ManualScheduler, Scheduler, Timer
from meshnode.mesh._config import MeshConfig
from meshnode.mesh._memnet import MemoryNetwork, MemoryTransport
from meshnode.mesh._state import Delegate, Member, Membership, State
from meshnode.mesh._suspicion import Suspicion, remaining_suspicion_time, suspicion_timeout
from meshnode.mesh._transport import PacketHandler, ReplyCallback, StreamHandler, Transport

__all__ = [
    "AsyncioScheduler",
    "Awareness",
    "Delegate",
    "ManualScheduler",
    "Member",
    "Membership",
    "MemoryNetwork",
    "MemoryTransport",
    "MeshConfig",
    "PacketHandler",
    "ReplyCallback",
    "Scheduler",
    "State",
    "StreamHandler",
    "Suspicion",
    "Timer",
    "TransmitLimitedQueue",
    "Transport",
    "apply_delta",
    "remaining_suspicion_time",
    "retransmit_limit",
    "scale_timeout",
    "suspicion_timeout",
]
