"""The flow record: the one model every layer above the probes uses.

Field names are the contract of shared/DESIGN.md; ``to_json`` uses them as keys, ``to_proto`` fills
``meshnode.v1.Flow``. Enumerations are plain strings in Python (``"established"``), enum values on the wire.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from json.encoder import encode_basestring_ascii as _json_str
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

#: The one numbering of each enumerated field: ``meshnode.v1``'s enum numbers (0 is ``*_UNKNOWN``), used
#: by the kernel records, the columnar batches, the store and the wire alike. A unit test checks them
#: against the generated descriptors; the model keeps the lower-case names for people and JSON.
ENUM_NUMBERS: Final[dict[str, dict[str, int]]] = {
    "proto": {"tcp": 6, "udp": 17},
    "direction": {"outbound": 1, "inbound": 2},
    "outcome": {"established": 1, "refused": 2, "timeout": 3, "reset": 4, "udp_answered": 5,
                "udp_unanswered": 6, "in_progress": 7},
    "limited_by": {"app": 1, "receiver_window": 2, "send_buffer": 3, "congestion": 4},
    "kind": {"final": 1, "interim": 2},
    "fidelity": {"exact": 1, "polled": 2},
}
#: Enum numbers -> names; 0 is "unknown" (a record kind and a fidelity default to final and exact, as on the wire).
ENUM_NAMES: Final[dict[str, dict[int, str]]] = {
    field: {0: {"proto": "unknown", "direction": "unknown", "outcome": "unknown", "limited_by": "unknown",
                "kind": "final", "fidelity": "exact"}[field], **{v: k for k, v in table.items()}}
    for field, table in ENUM_NUMBERS.items()
}
#: Event types (``meshnode.v1.EventType``) -> wire numbers, as the store keeps them; 0 is unknown.
EVENT_TYPE_NUMBERS: Final[dict[str, int]] = {
    "retransmit_burst": 1, "zero_window": 2, "rtt_shift": 3, "reset_sent": 4, "reset_received": 5, "drop": 6,
    "connect_failed": 7, "anomaly": 8, "dns_failed": 9, "icmp_unreachable": 10, "frag_needed": 11,
    "ttl_exceeded": 12,
}
EVENT_TYPE_NAMES: Final[dict[int, str]] = {v: k for k, v in EVENT_TYPE_NUMBERS.items()}
_PROTO_NUM: Final = ENUM_NUMBERS["proto"]
_NUM_PROTO: Final = {v: k for k, v in _PROTO_NUM.items()}


@dataclass(frozen=True, slots=True)
class FlowRecord:
    """One 5-tuple owned by one socket in one network namespace, seen from this host.

    ``src``/``sport`` are always the local end. Counters are totals since the flow started; an interim
    record (``kind="interim"``) is a flow still active when its export period closed. ``comm`` is the
    process's name as ``ps`` shows it (its main thread's); ``thread`` is the name of the thread that used the
    socket where it differs (a runtime's worker: ``isc-net-0000``, ``event_engine``), else empty.

    Exchange timing (TCP, eBPF sensor): an exchange runs from the first byte this end sends first (a client's
    request; a server reads first) to the first byte the other way. ``responses`` counts the flow's closed
    exchanges, ``response_us_sum`` and ``response_us_max`` are their total and longest duration, and
    ``first_byte_us`` is the first one's: a client's time to first byte, a server's time to answer.
    ``answer_us_sum`` is the part of the exchanges after the last ACK of the request: the peer's time to
    answer, without the time the path took to carry the request.

    ``remote_name`` is the DNS name the host last resolved to ``dst`` before the flow began (the question's
    name, before any CNAME), empty when none.
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
    thread: str = ""
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
    icmp_unreachable: int = 0
    icmp_unreachable_code: int = 0
    icmp_frag_needed: int = 0
    path_mtu: int = 0
    icmp_time_exceeded: int = 0
    attempts: int = 0
    ports_probed: int = 0
    first_byte_us: int = 0
    responses: int = 0
    response_us_sum: int = 0
    response_us_max: int = 0
    answer_us_sum: int = 0
    remote_name: str = ""
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

    @classmethod
    def from_fields(cls, *values: Any) -> FlowRecord:
        """A record from every field's value, positionally in declaration order (``drop_reasons`` last).

        For decoders that produce every field anyway (the eBPF sensor, store rows): about 1.5 us where the
        frozen dataclass's ``__init__`` takes 6-9 us, because it sets each of its ~40 slots through
        ``object.__setattr__``. The values are built on a plain slotted twin of this class (same slots,
        same layout), which is then re-typed as a FlowRecord; the result is indistinguishable from one
        made by ``__init__``. No defaults and no checks: pass exactly ``len(dataclasses.fields(cls))``.
        """
        return _from_fields(*values)

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

    def to_json_text(self) -> str:
        """``json.dumps(self.to_json())``, the same text, in a third of the time (``meshnode capture --json``
        prints one per flow).

        The keys and their order are fixed, so the text is one %-template: strings go through the json
        module's own C escaper, ints are printed as json prints them. Any value of another type (a bool,
        a float, None) falls back to ``json.dumps``, so the output never differs.
        """
        values = list(_ALL_VALUES(self))
        try:
            for i in _STR_POSITIONS:
                values[i] = _json_str(values[i])
        except TypeError:
            return json.dumps(self.to_json())
        reasons = values[-1]
        values[-1] = json.dumps(reasons) if reasons else "{}"
        if tuple(map(type, values)) != _JSON_TYPES:
            return json.dumps(self.to_json())
        return _JSON_TEMPLATE % tuple(values)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FlowRecord:
        """Inverse of ``to_json``; unknown keys are ignored so newer writers do not break older readers."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def to_proto(self) -> flow_pb2.Flow:
        """The wire form, ``meshnode.v1.Flow``.

        Only non-default fields are passed, and enums go through precomputed tables: the node serves 100,000
        records per ``meshctl flows --json`` and this ran at 11 us per record with ``Enum.Value`` lookups.
        """
        enums = _enum_tables()
        fields = {name: value for name in _SCALAR_FIELDS if (value := getattr(self, name))}
        fields["proto"] = _PROTO_NUM.get(self.proto, 0)
        fields["direction"] = enums["direction"].get(self.direction, 0)
        fields["outcome"] = enums["outcome"].get(self.outcome, 0)
        fields["limited_by"] = enums["limited_by"].get(self.limited_by, 0)
        fields["kind"] = enums["kind"].get(self.kind, 0)
        fields["fidelity"] = enums["fidelity"].get(self.fidelity, 0)
        if self.drop_reasons:
            fields["drop_reasons"] = self.drop_reasons
        msg: flow_pb2.Flow = _flow_message()(**fields)
        return msg

    @classmethod
    def from_proto(cls, msg: flow_pb2.Flow) -> FlowRecord:
        """Inverse of ``to_proto``."""
        return cls(**flow_proto_to_json(msg))


_FIELD_NAMES: Final = tuple(f.name for f in dataclasses.fields(FlowRecord))
_ALL_VALUES: Final = operator.attrgetter(*_FIELD_NAMES)
_STR_POSITIONS: Final = tuple(i for i, f in enumerate(dataclasses.fields(FlowRecord)) if f.type in ("str", str))
# After escaping: str where the field is a string (or drop_reasons, rendered), exactly int elsewhere.
_JSON_TYPES: Final = tuple(str if i in _STR_POSITIONS or name == "drop_reasons" else int
                           for i, name in enumerate(_FIELD_NAMES))
_JSON_TEMPLATE: Final = "{" + ", ".join(f"{json.dumps(name)}: %s" for name in _FIELD_NAMES) + "}"
_Builder: Final = dataclasses.make_dataclass(
    "_FlowRecordBuilder", [(f.name, f.type) for f in dataclasses.fields(FlowRecord)],
    slots=True, eq=False, repr=False, match_args=False,
)


def _retyped(*values: Any) -> FlowRecord:
    obj: FlowRecord = _Builder(*values)
    obj.__class__ = FlowRecord
    return obj


def _pick_from_fields() -> Callable[..., FlowRecord]:
    """``_retyped`` where the interpreter allows re-typing between the two layouts (CPython), else __init__."""
    values = tuple(range(len(_FIELD_NAMES)))
    try:
        probe = _retyped(*values)
    except TypeError:
        return FlowRecord
    assert type(probe) is FlowRecord and _ALL_VALUES(probe) == values
    return _retyped


_from_fields: Final = _pick_from_fields()
_ENUM_FIELDS: Final = ("proto", "direction", "outcome", "limited_by", "kind", "fidelity", "drop_reasons")
_SCALAR_FIELDS: Final = tuple(n for n in _FIELD_NAMES if n not in _ENUM_FIELDS)


@functools.cache
def _flow_message() -> Any:
    """The generated ``Flow`` class, imported on first use (``meshnode.v1`` is not needed to use the model)."""
    from meshnode.v1 import flow_pb2

    return flow_pb2.Flow


def _enum_tables() -> dict[str, dict[str, int]]:
    """Model strings → wire enum numbers."""
    return ENUM_NUMBERS


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
        "pid": msg.pid, "comm": msg.comm, "thread": msg.thread, "cgroup": msg.cgroup, "cgroup_id": msg.cgroup_id,
        "netns": msg.netns, "start_ns": msg.start_ns, "end_ns": msg.end_ns, "bytes_tx": msg.bytes_tx,
        "bytes_rx": msg.bytes_rx, "packets_tx": msg.packets_tx, "packets_rx": msg.packets_rx,
        "outcome": enum(flow_pb2.Outcome, msg.outcome, "unknown"),
        "retransmits": msg.retransmits, "srtt_us": msg.srtt_us, "min_rtt_us": msg.min_rtt_us,
        "max_rtt_us": msg.max_rtt_us, "cwnd": msg.cwnd, "cwnd_min": msg.cwnd_min, "cwnd_max": msg.cwnd_max,
        "limited_by": enum(flow_pb2.LimitedBy, msg.limited_by, "unknown"),
        "connect_us": msg.connect_us, "resets_tx": msg.resets_tx, "resets_rx": msg.resets_rx,
        "drops": msg.drops, "kind": enum(flow_pb2.RecordKind, msg.kind, "final"),
        "fidelity": enum(flow_pb2.Fidelity, msg.fidelity, "exact"),
        "rttvar_us": msg.rttvar_us, "delivery_rate": msg.delivery_rate, "lost": msg.lost,
        "reordering": msg.reordering, "service": msg.service,
        "icmp_unreachable": msg.icmp_unreachable, "icmp_unreachable_code": msg.icmp_unreachable_code,
        "icmp_frag_needed": msg.icmp_frag_needed, "path_mtu": msg.path_mtu,
        "icmp_time_exceeded": msg.icmp_time_exceeded, "attempts": msg.attempts, "ports_probed": msg.ports_probed,
        "first_byte_us": msg.first_byte_us,
        "responses": msg.responses, "response_us_sum": msg.response_us_sum, "response_us_max": msg.response_us_max,
        "answer_us_sum": msg.answer_us_sum, "remote_name": msg.remote_name,
        "drop_reasons": dict(msg.drop_reasons),
    }
