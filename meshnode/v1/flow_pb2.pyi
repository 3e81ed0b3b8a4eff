from google.protobuf import wrappers_pb2 as _wrappers_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Protocol(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PROTOCOL_UNKNOWN: _ClassVar[Protocol]
    TCP: _ClassVar[Protocol]
    UDP: _ClassVar[Protocol]

class Direction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DIRECTION_UNKNOWN: _ClassVar[Direction]
    OUTBOUND: _ClassVar[Direction]
    INBOUND: _ClassVar[Direction]

class Outcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OUTCOME_UNKNOWN: _ClassVar[Outcome]
    ESTABLISHED: _ClassVar[Outcome]
    REFUSED: _ClassVar[Outcome]
    TIMEOUT: _ClassVar[Outcome]
    RESET: _ClassVar[Outcome]
    UDP_ANSWERED: _ClassVar[Outcome]
    UDP_UNANSWERED: _ClassVar[Outcome]
    IN_PROGRESS: _ClassVar[Outcome]

class LimitedBy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LIMITED_BY_UNKNOWN: _ClassVar[LimitedBy]
    APP: _ClassVar[LimitedBy]
    RECEIVER_WINDOW: _ClassVar[LimitedBy]
    SEND_BUFFER: _ClassVar[LimitedBy]
    CONGESTION: _ClassVar[LimitedBy]

class Fidelity(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FIDELITY_UNKNOWN: _ClassVar[Fidelity]
    EXACT: _ClassVar[Fidelity]
    POLLED: _ClassVar[Fidelity]

class RecordKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RECORD_KIND_UNKNOWN: _ClassVar[RecordKind]
    FINAL: _ClassVar[RecordKind]
    INTERIM: _ClassVar[RecordKind]

class EventType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVENT_TYPE_UNKNOWN: _ClassVar[EventType]
    RETRANSMIT_BURST: _ClassVar[EventType]
    ZERO_WINDOW: _ClassVar[EventType]
    RTT_SHIFT: _ClassVar[EventType]
    RESET_SENT: _ClassVar[EventType]
    RESET_RECEIVED: _ClassVar[EventType]
    DROP: _ClassVar[EventType]
    CONNECT_FAILED: _ClassVar[EventType]
    ANOMALY: _ClassVar[EventType]
PROTOCOL_UNKNOWN: Protocol
TCP: Protocol
UDP: Protocol
DIRECTION_UNKNOWN: Direction
OUTBOUND: Direction
INBOUND: Direction
OUTCOME_UNKNOWN: Outcome
ESTABLISHED: Outcome
REFUSED: Outcome
TIMEOUT: Outcome
RESET: Outcome
UDP_ANSWERED: Outcome
UDP_UNANSWERED: Outcome
IN_PROGRESS: Outcome
LIMITED_BY_UNKNOWN: LimitedBy
APP: LimitedBy
RECEIVER_WINDOW: LimitedBy
SEND_BUFFER: LimitedBy
CONGESTION: LimitedBy
FIDELITY_UNKNOWN: Fidelity
EXACT: Fidelity
POLLED: Fidelity
RECORD_KIND_UNKNOWN: RecordKind
FINAL: RecordKind
INTERIM: RecordKind
EVENT_TYPE_UNKNOWN: EventType
RETRANSMIT_BURST: EventType
ZERO_WINDOW: EventType
RTT_SHIFT: EventType
RESET_SENT: EventType
RESET_RECEIVED: EventType
DROP: EventType
CONNECT_FAILED: EventType
ANOMALY: EventType

class Flow(_message.Message):
    __slots__ = ("flow_id", "node_id", "src", "sport", "dst", "dport", "proto", "direction", "pid", "comm", "cgroup", "cgroup_id", "netns", "start_ns", "end_ns", "bytes_tx", "bytes_rx", "packets_tx", "packets_rx", "outcome", "retransmits", "srtt_us", "min_rtt_us", "max_rtt_us", "cwnd", "cwnd_min", "cwnd_max", "limited_by", "connect_us", "resets_tx", "resets_rx", "drops", "kind", "fidelity", "rttvar_us", "delivery_rate", "lost", "reordering", "service", "drop_reasons")
    class DropReasonsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    FLOW_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    SRC_FIELD_NUMBER: _ClassVar[int]
    SPORT_FIELD_NUMBER: _ClassVar[int]
    DST_FIELD_NUMBER: _ClassVar[int]
    DPORT_FIELD_NUMBER: _ClassVar[int]
    PROTO_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    COMM_FIELD_NUMBER: _ClassVar[int]
    CGROUP_FIELD_NUMBER: _ClassVar[int]
    CGROUP_ID_FIELD_NUMBER: _ClassVar[int]
    NETNS_FIELD_NUMBER: _ClassVar[int]
    START_NS_FIELD_NUMBER: _ClassVar[int]
    END_NS_FIELD_NUMBER: _ClassVar[int]
    BYTES_TX_FIELD_NUMBER: _ClassVar[int]
    BYTES_RX_FIELD_NUMBER: _ClassVar[int]
    PACKETS_TX_FIELD_NUMBER: _ClassVar[int]
    PACKETS_RX_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    RETRANSMITS_FIELD_NUMBER: _ClassVar[int]
    SRTT_US_FIELD_NUMBER: _ClassVar[int]
    MIN_RTT_US_FIELD_NUMBER: _ClassVar[int]
    MAX_RTT_US_FIELD_NUMBER: _ClassVar[int]
    CWND_FIELD_NUMBER: _ClassVar[int]
    CWND_MIN_FIELD_NUMBER: _ClassVar[int]
    CWND_MAX_FIELD_NUMBER: _ClassVar[int]
    LIMITED_BY_FIELD_NUMBER: _ClassVar[int]
    CONNECT_US_FIELD_NUMBER: _ClassVar[int]
    RESETS_TX_FIELD_NUMBER: _ClassVar[int]
    RESETS_RX_FIELD_NUMBER: _ClassVar[int]
    DROPS_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    FIDELITY_FIELD_NUMBER: _ClassVar[int]
    RTTVAR_US_FIELD_NUMBER: _ClassVar[int]
    DELIVERY_RATE_FIELD_NUMBER: _ClassVar[int]
    LOST_FIELD_NUMBER: _ClassVar[int]
    REORDERING_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    DROP_REASONS_FIELD_NUMBER: _ClassVar[int]
    flow_id: int
    node_id: str
    src: str
    sport: int
    dst: str
    dport: int
    proto: Protocol
    direction: Direction
    pid: int
    comm: str
    cgroup: str
    cgroup_id: int
    netns: int
    start_ns: int
    end_ns: int
    bytes_tx: int
    bytes_rx: int
    packets_tx: int
    packets_rx: int
    outcome: Outcome
    retransmits: int
    srtt_us: int
    min_rtt_us: int
    max_rtt_us: int
    cwnd: int
    cwnd_min: int
    cwnd_max: int
    limited_by: LimitedBy
    connect_us: int
    resets_tx: int
    resets_rx: int
    drops: int
    kind: RecordKind
    fidelity: Fidelity
    rttvar_us: int
    delivery_rate: int
    lost: int
    reordering: int
    service: str
    drop_reasons: _containers.ScalarMap[str, int]
    def __init__(self, flow_id: _Optional[int] = ..., node_id: _Optional[str] = ..., src: _Optional[str] = ..., sport: _Optional[int] = ..., dst: _Optional[str] = ..., dport: _Optional[int] = ..., proto: _Optional[_Union[Protocol, str]] = ..., direction: _Optional[_Union[Direction, str]] = ..., pid: _Optional[int] = ..., comm: _Optional[str] = ..., cgroup: _Optional[str] = ..., cgroup_id: _Optional[int] = ..., netns: _Optional[int] = ..., start_ns: _Optional[int] = ..., end_ns: _Optional[int] = ..., bytes_tx: _Optional[int] = ..., bytes_rx: _Optional[int] = ..., packets_tx: _Optional[int] = ..., packets_rx: _Optional[int] = ..., outcome: _Optional[_Union[Outcome, str]] = ..., retransmits: _Optional[int] = ..., srtt_us: _Optional[int] = ..., min_rtt_us: _Optional[int] = ..., max_rtt_us: _Optional[int] = ..., cwnd: _Optional[int] = ..., cwnd_min: _Optional[int] = ..., cwnd_max: _Optional[int] = ..., limited_by: _Optional[_Union[LimitedBy, str]] = ..., connect_us: _Optional[int] = ..., resets_tx: _Optional[int] = ..., resets_rx: _Optional[int] = ..., drops: _Optional[int] = ..., kind: _Optional[_Union[RecordKind, str]] = ..., fidelity: _Optional[_Union[Fidelity, str]] = ..., rttvar_us: _Optional[int] = ..., delivery_rate: _Optional[int] = ..., lost: _Optional[int] = ..., reordering: _Optional[int] = ..., service: _Optional[str] = ..., drop_reasons: _Optional[_Mapping[str, int]] = ...) -> None: ...

class Completeness(_message.Message):
    __slots__ = ("flows_recorded", "lost_events", "map_evictions", "ringbuf_overruns", "drained_rows", "unattributed_drops", "store_evictions", "incomplete_periods", "events_dropped")
    FLOWS_RECORDED_FIELD_NUMBER: _ClassVar[int]
    LOST_EVENTS_FIELD_NUMBER: _ClassVar[int]
    MAP_EVICTIONS_FIELD_NUMBER: _ClassVar[int]
    RINGBUF_OVERRUNS_FIELD_NUMBER: _ClassVar[int]
    DRAINED_ROWS_FIELD_NUMBER: _ClassVar[int]
    UNATTRIBUTED_DROPS_FIELD_NUMBER: _ClassVar[int]
    STORE_EVICTIONS_FIELD_NUMBER: _ClassVar[int]
    INCOMPLETE_PERIODS_FIELD_NUMBER: _ClassVar[int]
    EVENTS_DROPPED_FIELD_NUMBER: _ClassVar[int]
    flows_recorded: int
    lost_events: int
    map_evictions: int
    ringbuf_overruns: int
    drained_rows: int
    unattributed_drops: int
    store_evictions: int
    incomplete_periods: int
    events_dropped: int
    def __init__(self, flows_recorded: _Optional[int] = ..., lost_events: _Optional[int] = ..., map_evictions: _Optional[int] = ..., ringbuf_overruns: _Optional[int] = ..., drained_rows: _Optional[int] = ..., unattributed_drops: _Optional[int] = ..., store_evictions: _Optional[int] = ..., incomplete_periods: _Optional[int] = ..., events_dropped: _Optional[int] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("type", "time_ns", "flow", "value", "detail")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    TIME_NS_FIELD_NUMBER: _ClassVar[int]
    FLOW_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    type: EventType
    time_ns: int
    flow: Flow
    value: float
    detail: str
    def __init__(self, type: _Optional[_Union[EventType, str]] = ..., time_ns: _Optional[int] = ..., flow: _Optional[_Union[Flow, _Mapping]] = ..., value: _Optional[float] = ..., detail: _Optional[str] = ...) -> None: ...

class FlowFilter(_message.Message):
    __slots__ = ("comm", "pid", "dst", "dport", "sport", "outcome", "proto", "direction", "cgroup", "port", "event_type")
    COMM_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    DST_FIELD_NUMBER: _ClassVar[int]
    DPORT_FIELD_NUMBER: _ClassVar[int]
    SPORT_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    PROTO_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    CGROUP_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    EVENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    comm: _containers.RepeatedScalarFieldContainer[str]
    pid: _containers.RepeatedScalarFieldContainer[int]
    dst: _containers.RepeatedScalarFieldContainer[str]
    dport: _containers.RepeatedScalarFieldContainer[int]
    sport: _containers.RepeatedScalarFieldContainer[int]
    outcome: _containers.RepeatedScalarFieldContainer[Outcome]
    proto: _containers.RepeatedScalarFieldContainer[Protocol]
    direction: _containers.RepeatedScalarFieldContainer[Direction]
    cgroup: _containers.RepeatedScalarFieldContainer[str]
    port: _containers.RepeatedScalarFieldContainer[int]
    event_type: _containers.RepeatedScalarFieldContainer[EventType]
    def __init__(self, comm: _Optional[_Iterable[str]] = ..., pid: _Optional[_Iterable[int]] = ..., dst: _Optional[_Iterable[str]] = ..., dport: _Optional[_Iterable[int]] = ..., sport: _Optional[_Iterable[int]] = ..., outcome: _Optional[_Iterable[_Union[Outcome, str]]] = ..., proto: _Optional[_Iterable[_Union[Protocol, str]]] = ..., direction: _Optional[_Iterable[_Union[Direction, str]]] = ..., cgroup: _Optional[_Iterable[str]] = ..., port: _Optional[_Iterable[int]] = ..., event_type: _Optional[_Iterable[_Union[EventType, str]]] = ...) -> None: ...

class Rollup(_message.Message):
    __slots__ = ("key", "flows", "useful", "failures", "bytes_tx", "bytes_rx", "retransmits", "rtt_p50_us", "rtt_p95_us", "service", "flows_retransmitting", "flows_slow_connect", "client_kinds")
    class FailuresEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class ClientKindsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    KEY_FIELD_NUMBER: _ClassVar[int]
    FLOWS_FIELD_NUMBER: _ClassVar[int]
    USEFUL_FIELD_NUMBER: _ClassVar[int]
    FAILURES_FIELD_NUMBER: _ClassVar[int]
    BYTES_TX_FIELD_NUMBER: _ClassVar[int]
    BYTES_RX_FIELD_NUMBER: _ClassVar[int]
    RETRANSMITS_FIELD_NUMBER: _ClassVar[int]
    RTT_P50_US_FIELD_NUMBER: _ClassVar[int]
    RTT_P95_US_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    FLOWS_RETRANSMITTING_FIELD_NUMBER: _ClassVar[int]
    FLOWS_SLOW_CONNECT_FIELD_NUMBER: _ClassVar[int]
    CLIENT_KINDS_FIELD_NUMBER: _ClassVar[int]
    key: str
    flows: int
    useful: int
    failures: _containers.ScalarMap[str, int]
    bytes_tx: int
    bytes_rx: int
    retransmits: int
    rtt_p50_us: int
    rtt_p95_us: int
    service: str
    flows_retransmitting: int
    flows_slow_connect: int
    client_kinds: _containers.ScalarMap[str, int]
    def __init__(self, key: _Optional[str] = ..., flows: _Optional[int] = ..., useful: _Optional[int] = ..., failures: _Optional[_Mapping[str, int]] = ..., bytes_tx: _Optional[int] = ..., bytes_rx: _Optional[int] = ..., retransmits: _Optional[int] = ..., rtt_p50_us: _Optional[int] = ..., rtt_p95_us: _Optional[int] = ..., service: _Optional[str] = ..., flows_retransmitting: _Optional[int] = ..., flows_slow_connect: _Optional[int] = ..., client_kinds: _Optional[_Mapping[str, int]] = ...) -> None: ...

class PeriodSummary(_message.Message):
    __slots__ = ("node_id", "period_start_ns", "period_end_ns", "seq", "by_process", "by_destination", "by_cgroup", "completeness", "final_flows", "interim_flows", "incomplete")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    PERIOD_START_NS_FIELD_NUMBER: _ClassVar[int]
    PERIOD_END_NS_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    BY_PROCESS_FIELD_NUMBER: _ClassVar[int]
    BY_DESTINATION_FIELD_NUMBER: _ClassVar[int]
    BY_CGROUP_FIELD_NUMBER: _ClassVar[int]
    COMPLETENESS_FIELD_NUMBER: _ClassVar[int]
    FINAL_FLOWS_FIELD_NUMBER: _ClassVar[int]
    INTERIM_FLOWS_FIELD_NUMBER: _ClassVar[int]
    INCOMPLETE_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    period_start_ns: int
    period_end_ns: int
    seq: int
    by_process: _containers.RepeatedCompositeFieldContainer[Rollup]
    by_destination: _containers.RepeatedCompositeFieldContainer[Rollup]
    by_cgroup: _containers.RepeatedCompositeFieldContainer[Rollup]
    completeness: Completeness
    final_flows: int
    interim_flows: int
    incomplete: bool
    def __init__(self, node_id: _Optional[str] = ..., period_start_ns: _Optional[int] = ..., period_end_ns: _Optional[int] = ..., seq: _Optional[int] = ..., by_process: _Optional[_Iterable[_Union[Rollup, _Mapping]]] = ..., by_destination: _Optional[_Iterable[_Union[Rollup, _Mapping]]] = ..., by_cgroup: _Optional[_Iterable[_Union[Rollup, _Mapping]]] = ..., completeness: _Optional[_Union[Completeness, _Mapping]] = ..., final_flows: _Optional[int] = ..., interim_flows: _Optional[int] = ..., incomplete: _Optional[bool] = ...) -> None: ...

class HealthRow(_message.Message):
    __slots__ = ("scope", "key", "attempts", "useful", "useful_fraction", "failures")
    class FailuresEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    USEFUL_FIELD_NUMBER: _ClassVar[int]
    USEFUL_FRACTION_FIELD_NUMBER: _ClassVar[int]
    FAILURES_FIELD_NUMBER: _ClassVar[int]
    scope: str
    key: str
    attempts: int
    useful: int
    useful_fraction: _wrappers_pb2.DoubleValue
    failures: _containers.ScalarMap[str, int]
    def __init__(self, scope: _Optional[str] = ..., key: _Optional[str] = ..., attempts: _Optional[int] = ..., useful: _Optional[int] = ..., useful_fraction: _Optional[_Union[_wrappers_pb2.DoubleValue, _Mapping]] = ..., failures: _Optional[_Mapping[str, int]] = ...) -> None: ...

class RetryPattern(_message.Message):
    __slots__ = ("comm", "pid", "destination", "failures", "interval_p50_ms", "interval_min_ms", "interval_max_ms", "first_ns", "last_ns")
    COMM_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_FIELD_NUMBER: _ClassVar[int]
    FAILURES_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_P50_MS_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_MIN_MS_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_MAX_MS_FIELD_NUMBER: _ClassVar[int]
    FIRST_NS_FIELD_NUMBER: _ClassVar[int]
    LAST_NS_FIELD_NUMBER: _ClassVar[int]
    comm: str
    pid: int
    destination: str
    failures: int
    interval_p50_ms: float
    interval_min_ms: float
    interval_max_ms: float
    first_ns: int
    last_ns: int
    def __init__(self, comm: _Optional[str] = ..., pid: _Optional[int] = ..., destination: _Optional[str] = ..., failures: _Optional[int] = ..., interval_p50_ms: _Optional[float] = ..., interval_min_ms: _Optional[float] = ..., interval_max_ms: _Optional[float] = ..., first_ns: _Optional[int] = ..., last_ns: _Optional[int] = ...) -> None: ...

class ScanPattern(_message.Message):
    __slots__ = ("src", "ports", "failures")
    SRC_FIELD_NUMBER: _ClassVar[int]
    PORTS_FIELD_NUMBER: _ClassVar[int]
    FAILURES_FIELD_NUMBER: _ClassVar[int]
    src: str
    ports: int
    failures: int
    def __init__(self, src: _Optional[str] = ..., ports: _Optional[int] = ..., failures: _Optional[int] = ...) -> None: ...
