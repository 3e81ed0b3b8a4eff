"""The flow record: the one model every layer above the probes uses.

Field names are the contract of shared/DESIGN.md; ``to_json`` uses them as keys, ``to_proto`` fills
``meshnode.v1.Flow``. Enumerations are plain strings in Python (``"established"``), enum values on the wire.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from meshnode.v1 import flow_pb2

OUTCOMES: Final = ("established", "refused", "timeout", "reset", "udp_answered", "udp_unanswered", "in_progress")
USEFUL_OUTCOMES: Final = frozenset({"established", "udp_answered"})
FAILED_OUTCOMES: Final = frozenset({"refused", "timeout", "reset", "udp_unanswered"})
DIRECTIONS: Final = ("outbound", "inbound")
PROTOS: Final = ("tcp", "udp")
LIMITS: Final = ("app", "receiver_window", "send_buffer", "congestion", "unknown")
FIDELITIES: Final = ("exact", "polled")
KINDS: Final = ("final", "interim")

_PROTO_NUM: Final = {"tcp": 6, "udp": 17}
_NUM_PROTO: Final = {v: k for k, v in _PROTO_NUM.items()}


@dataclass(frozen=True, slots=True)
class FlowRecord:
    """One 5-tuple owned by one socket in one network namespace, seen from this host.

    ``src``/``sport`` are always the local end. Counters are totals since the flow started; an interim
    record (``kind="interim"``) is a flow still active when its export period closed.
    """

    flow_id: int
    src: str
    sport: int
    dst: str
    dport: int
    proto: str
    direction: str
    pid: int = 0
    comm: str = ""
    cgroup: str = ""
    cgroup_id: int = 0
    netns: int = 0
    start_ns: int = 0
    end_ns: int = 0
    bytes_tx: int = 0
    bytes_rx: int = 0
    packets_tx: int = 0
    packets_rx: int = 0
    outcome: str = "in_progress"
    retransmits: int = 0
    srtt_us: int = 0
    min_rtt_us: int = 0
    max_rtt_us: int = 0
    cwnd: int = 0
    cwnd_min: int = 0
    cwnd_max: int = 0
    limited_by: str = "unknown"
    connect_us: int = 0
    resets_tx: int = 0
    resets_rx: int = 0
    drops: int = 0
    kind: str = "final"
    fidelity: str = "exact"
    rttvar_us: int = 0
    delivery_rate: int = 0
    lost: int = 0
    reordering: int = 0
    service: str = ""
    node_id: str = ""
    drop_reasons: dict[str, int] = field(default_factory=dict, hash=False, compare=True)

    @property
    def useful(self) -> bool:
        """True when the flow did what a flow is for: a completed handshake or an answered datagram."""
        return self.outcome in USEFUL_OUTCOMES

    @property
    def failed(self) -> bool:
        """True for refused, timed-out, reset and unanswered flows."""
        return self.outcome in FAILED_OUTCOMES

    @property
    def destination(self) -> str:
        """The remote end as ``addr:port`` (IPv6 in brackets)."""
        host = f"[{self.dst}]" if ":" in self.dst else self.dst
        return f"{host}:{self.dport}"

    def replace(self, **changes: Any) -> FlowRecord:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict keyed by the DESIGN field names.

        A direct walk over the field names: ``dataclasses.asdict`` deep-copies every value and cost 85 % of
        a capture's CPU per flow.
        """
        out = {name: getattr(self, name) for name in _FIELD_NAMES}
        out["drop_reasons"] = dict(self.drop_reasons)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FlowRecord:
        """Inverse of ``to_json``; unknown keys are ignored so newer writers do not break older readers."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def to_proto(self) -> flow_pb2.Flow:
        """The wire form, ``meshnode.v1.Flow``."""
        from meshnode.v1 import flow_pb2

        fields: dict[str, Any] = dict(
            flow_id=self.flow_id, node_id=self.node_id, src=self.src, sport=self.sport, dst=self.dst,
            dport=self.dport, proto=_PROTO_NUM.get(self.proto, 0),
            direction=flow_pb2.Direction.Value(self.direction.upper()),
            pid=self.pid, comm=self.comm, cgroup=self.cgroup, cgroup_id=self.cgroup_id, netns=self.netns,
            start_ns=self.start_ns, end_ns=self.end_ns, bytes_tx=self.bytes_tx, bytes_rx=self.bytes_rx,
            packets_tx=self.packets_tx, packets_rx=self.packets_rx,
            outcome=flow_pb2.Outcome.Value(self.outcome.upper()),
            retransmits=self.retransmits, srtt_us=self.srtt_us, min_rtt_us=self.min_rtt_us,
            max_rtt_us=self.max_rtt_us, cwnd=self.cwnd, cwnd_min=self.cwnd_min, cwnd_max=self.cwnd_max,
            limited_by=(0 if self.limited_by == "unknown" else flow_pb2.LimitedBy.Value(self.limited_by.upper())),
            connect_us=self.connect_us, resets_tx=self.resets_tx, resets_rx=self.resets_rx, drops=self.drops,
            kind=flow_pb2.RecordKind.Value(self.kind.upper()),
            fidelity=flow_pb2.Fidelity.Value(self.fidelity.upper()),
            rttvar_us=self.rttvar_us, delivery_rate=self.delivery_rate, lost=self.lost,
            reordering=self.reordering, service=self.service,
        )
        msg = flow_pb2.Flow(**fields)
        msg.drop_reasons.update(self.drop_reasons)
        return msg

    @classmethod
    def from_proto(cls, msg: flow_pb2.Flow) -> FlowRecord:
        """Inverse of ``to_proto``."""
        return cls(**flow_proto_to_json(msg))


_FIELD_NAMES: Final = tuple(f.name for f in dataclasses.fields(FlowRecord))


def flow_proto_to_json(msg: flow_pb2.Flow) -> dict[str, Any]:
    """``meshnode.v1.Flow`` as a dict keyed by the DESIGN names, enums as lower-case strings.

    ``meshctl`` uses this shape for ``--json``; it needs only the generated module, not the model.
    """
    from meshnode.v1 import flow_pb2

    def enum(e: Any, value: int, zero: str) -> str:
        return zero if value == 0 else str(e.Name(value)).lower()

    return {
        "flow_id": msg.flow_id, "node_id": msg.node_id, "src": msg.src, "sport": msg.sport, "dst": msg.dst,
        "dport": msg.dport, "proto": _NUM_PROTO.get(msg.proto, "unknown"),
        "direction": enum(flow_pb2.Direction, msg.direction, "unknown"),
        "pid": msg.pid, "comm": msg.comm, "cgroup": msg.cgroup, "cgroup_id": msg.cgroup_id, "netns": msg.netns,
        "start_ns": msg.start_ns, "end_ns": msg.end_ns, "bytes_tx": msg.bytes_tx, "bytes_rx": msg.bytes_rx,
        "packets_tx": msg.packets_tx, "packets_rx": msg.packets_rx,
        "outcome": enum(flow_pb2.Outcome, msg.outcome, "unknown"),
        "retransmits": msg.retransmits, "srtt_us": msg.srtt_us, "min_rtt_us": msg.min_rtt_us,
        "max_rtt_us": msg.max_rtt_us, "cwnd": msg.cwnd, "cwnd_min": msg.cwnd_min, "cwnd_max": msg.cwnd_max,
        "limited_by": enum(flow_pb2.LimitedBy, msg.limited_by, "unknown"),
        "connect_us": msg.connect_us, "resets_tx": msg.resets_tx, "resets_rx": msg.resets_rx,
        "drops": msg.drops, "kind": enum(flow_pb2.RecordKind, msg.kind, "final"),
        "fidelity": enum(flow_pb2.Fidelity, msg.fidelity, "exact"),
        "rttvar_us": msg.rttvar_us, "delivery_rate": msg.delivery_rate, "lost": msg.lost,
        "reordering": msg.reordering, "service": msg.service, "drop_reasons": dict(msg.drop_reasons),
    }
