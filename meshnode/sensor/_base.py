"""What the node needs from a sensor, whichever one is running.

A sensor is polled once per tick by the node. ``poll`` hands over flows that ended and low-level events
since the last call, with the completeness counters moved by them; ``active`` returns totals-so-far of
flows still open (the node turns them into interim records each export period).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from meshnode._batch import FlowBatch

if TYPE_CHECKING:
    from meshnode._model import FlowRecord
    from meshnode.sensor._dns import DnsRecord

EVENT_TYPES = (
    "retransmit_burst", "zero_window", "rtt_shift", "reset_sent", "reset_received", "drop",
    "connect_failed", "anomaly", "icmp_unreachable", "frag_needed", "ttl_exceeded", "dns_failed",
)


@dataclass(frozen=True, slots=True)
class EventRecord:
    """One low-level event (seed 001) on a flow; ``flow`` may carry partial counters."""

    type: str
    time_ns: int
    flow: FlowRecord
    value: float = 0.0
    detail: str = ""


@dataclass(slots=True)
class Completeness:
    """What the sensor could not record, counted; nothing is lost silently."""

    flows_recorded: int = 0
    lost_events: int = 0
    map_evictions: int = 0
    ringbuf_overruns: int = 0
    drained_rows: int = 0
    unattributed_drops: int = 0
    dns_malformed: int = 0
    """DNS answers the kernel refused part-way (a compression loop, an overlong name, a bad label)."""
    dns_truncated: int = 0
    """DNS answers the kernel parsed only in part (cut short, or past its buffer or step budget)."""
    dns_dropped: int = 0
    """DNS transactions the node did not keep: past its bound on one export period's (``MAX_PERIOD_DNS``)."""

    def add(self, other: Completeness) -> None:
        """Accumulate another set of counters into this one."""
        for name in self.__slots__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass(slots=True)
class SensorBatch:
    """What one ``poll`` returns: the flows that ended (as columns, and records made one at a time by a
    sensor's slower paths), events, and the counters they moved."""

    records: list[FlowRecord] = field(default_factory=list)
    """Ended flows made one record at a time (sock_diag, UDP scans, half-open resets)."""
    events: list[EventRecord] = field(default_factory=list)
    completeness: Completeness = field(default_factory=Completeness)
    columns: list[FlowBatch] = field(default_factory=list)
    """Ended flows as columnar batches (the eBPF sensor's TCP end records)."""
    dns: list[DnsRecord] = field(default_factory=list)
    """DNS transactions answered since the last poll (the eBPF sensor; one per question, resolver and
    answer code)."""

    @property
    def ended(self) -> FlowBatch:
        """Every flow that ended, as one batch: the columns, then the records."""
        made = [FlowBatch.from_records(self.records)] if self.records else []  # most polls: none
        return FlowBatch.concat([*self.columns, *made])


@dataclass(slots=True)
class JsonBatch:
    """What ``poll_json`` returns (a sensor's fast path for ``meshnode capture --json``)."""

    text: str = ""
    """The flows that ended, as JSON Lines: per flow ``FlowRecord.to_json_text()`` and a newline."""
    completeness: Completeness = field(default_factory=Completeness)
    dns: list[DnsRecord] = field(default_factory=list)
    """DNS transactions answered since the last poll, as ``SensorBatch.dns``."""


class Sensor(Protocol):
    """The interface both sensors (eBPF and sock_diag) implement."""

    mode: str
    """``"ebpf"`` or ``"diag"``."""
    reason: str
    """Why this mode was chosen, for stderr and ``status``."""
    fidelity: str
    """``"exact"`` or ``"polled"``."""
    scope: str
    """The cgroup v2 path watched (``/`` for the whole host)."""

    def start(self) -> None:
        """Load and attach; raises ``SensorError`` naming what is missing and how to fix it."""

    def poll(self) -> SensorBatch:
        """Flows ended and events since the last call."""

    def active(self) -> list[FlowRecord]:
        """Totals so far of flows still open, as ``kind="interim"`` records."""

    def close(self) -> None:
        """Detach and free kernel resources; safe to call twice."""
