from meshnode.v1 import flow_pb2 as _flow_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class MemberState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MEMBER_STATE_UNKNOWN: _ClassVar[MemberState]
    ALIVE: _ClassVar[MemberState]
    SUSPECT: _ClassVar[MemberState]
    DEAD: _ClassVar[MemberState]
    LEFT: _ClassVar[MemberState]
MEMBER_STATE_UNKNOWN: MemberState
ALIVE: MemberState
SUSPECT: MemberState
DEAD: MemberState
LEFT: MemberState

class PacketRequest(_message.Message):
    __slots__ = ("from_addr", "payload")
    FROM_ADDR_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    from_addr: str
    payload: bytes
    def __init__(self, from_addr: _Optional[str] = ..., payload: _Optional[bytes] = ...) -> None: ...

class PacketResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StreamRequest(_message.Message):
    __slots__ = ("from_addr", "payload")
    FROM_ADDR_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    from_addr: str
    payload: bytes
    def __init__(self, from_addr: _Optional[str] = ..., payload: _Optional[bytes] = ...) -> None: ...

class StreamResponse(_message.Message):
    __slots__ = ("payload",)
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    payload: bytes
    def __init__(self, payload: _Optional[bytes] = ...) -> None: ...

class Ping(_message.Message):
    __slots__ = ("seq_no", "target")
    SEQ_NO_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    seq_no: int
    target: str
    def __init__(self, seq_no: _Optional[int] = ..., target: _Optional[str] = ...) -> None: ...

class IndirectPing(_message.Message):
    __slots__ = ("seq_no", "target", "target_addr")
    SEQ_NO_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    TARGET_ADDR_FIELD_NUMBER: _ClassVar[int]
    seq_no: int
    target: str
    target_addr: str
    def __init__(self, seq_no: _Optional[int] = ..., target: _Optional[str] = ..., target_addr: _Optional[str] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("seq_no",)
    SEQ_NO_FIELD_NUMBER: _ClassVar[int]
    seq_no: int
    def __init__(self, seq_no: _Optional[int] = ...) -> None: ...

class Nack(_message.Message):
    __slots__ = ("seq_no",)
    SEQ_NO_FIELD_NUMBER: _ClassVar[int]
    seq_no: int
    def __init__(self, seq_no: _Optional[int] = ...) -> None: ...

class Alive(_message.Message):
    __slots__ = ("node", "incarnation", "addr", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NODE_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    ADDR_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    node: str
    incarnation: int
    addr: str
    labels: _containers.ScalarMap[str, str]
    def __init__(self, node: _Optional[str] = ..., incarnation: _Optional[int] = ..., addr: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Suspect(_message.Message):
    __slots__ = ("node", "incarnation")
    NODE_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    FROM_FIELD_NUMBER: _ClassVar[int]
    node: str
    incarnation: int
    def __init__(self, node: _Optional[str] = ..., incarnation: _Optional[int] = ..., **kwargs) -> None: ...

class Dead(_message.Message):
    __slots__ = ("node", "incarnation")
    NODE_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    FROM_FIELD_NUMBER: _ClassVar[int]
    node: str
    incarnation: int
    def __init__(self, node: _Optional[str] = ..., incarnation: _Optional[int] = ..., **kwargs) -> None: ...

class Gossip(_message.Message):
    __slots__ = ("alive", "suspect", "dead", "user")
    ALIVE_FIELD_NUMBER: _ClassVar[int]
    SUSPECT_FIELD_NUMBER: _ClassVar[int]
    DEAD_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    alive: Alive
    suspect: Suspect
    dead: Dead
    user: bytes
    def __init__(self, alive: _Optional[_Union[Alive, _Mapping]] = ..., suspect: _Optional[_Union[Suspect, _Mapping]] = ..., dead: _Optional[_Union[Dead, _Mapping]] = ..., user: _Optional[bytes] = ...) -> None: ...

class MeshPacket(_message.Message):
    __slots__ = ("source", "source_addr", "ping", "indirect_ping", "ack", "nack", "gossip")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_ADDR_FIELD_NUMBER: _ClassVar[int]
    PING_FIELD_NUMBER: _ClassVar[int]
    INDIRECT_PING_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    NACK_FIELD_NUMBER: _ClassVar[int]
    GOSSIP_FIELD_NUMBER: _ClassVar[int]
    source: str
    source_addr: str
    ping: Ping
    indirect_ping: IndirectPing
    ack: Ack
    nack: Nack
    gossip: _containers.RepeatedCompositeFieldContainer[Gossip]
    def __init__(self, source: _Optional[str] = ..., source_addr: _Optional[str] = ..., ping: _Optional[_Union[Ping, _Mapping]] = ..., indirect_ping: _Optional[_Union[IndirectPing, _Mapping]] = ..., ack: _Optional[_Union[Ack, _Mapping]] = ..., nack: _Optional[_Union[Nack, _Mapping]] = ..., gossip: _Optional[_Iterable[_Union[Gossip, _Mapping]]] = ...) -> None: ...

class PushPullMember(_message.Message):
    __slots__ = ("node", "addr", "incarnation", "state", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NODE_FIELD_NUMBER: _ClassVar[int]
    ADDR_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    node: str
    addr: str
    incarnation: int
    state: MemberState
    labels: _containers.ScalarMap[str, str]
    def __init__(self, node: _Optional[str] = ..., addr: _Optional[str] = ..., incarnation: _Optional[int] = ..., state: _Optional[_Union[MemberState, str]] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class PushPull(_message.Message):
    __slots__ = ("source", "source_addr", "join", "members", "user_state")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_ADDR_FIELD_NUMBER: _ClassVar[int]
    JOIN_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    USER_STATE_FIELD_NUMBER: _ClassVar[int]
    source: str
    source_addr: str
    join: bool
    members: _containers.RepeatedCompositeFieldContainer[PushPullMember]
    user_state: bytes
    def __init__(self, source: _Optional[str] = ..., source_addr: _Optional[str] = ..., join: _Optional[bool] = ..., members: _Optional[_Iterable[_Union[PushPullMember, _Mapping]]] = ..., user_state: _Optional[bytes] = ...) -> None: ...

class StreamMessage(_message.Message):
    __slots__ = ("push_pull", "user")
    PUSH_PULL_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    push_pull: PushPull
    user: bytes
    def __init__(self, push_pull: _Optional[_Union[PushPull, _Mapping]] = ..., user: _Optional[bytes] = ...) -> None: ...

class Digest(_message.Message):
    __slots__ = ("version", "node_id", "seq", "period_start_ns", "period_end_ns", "labels", "by_destination", "endpoints", "rollups_truncated", "endpoints_truncated", "measurements", "addresses", "processes", "processes_truncated")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    VERSION_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    PERIOD_START_NS_FIELD_NUMBER: _ClassVar[int]
    PERIOD_END_NS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    BY_DESTINATION_FIELD_NUMBER: _ClassVar[int]
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    ROLLUPS_TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    ENDPOINTS_TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    MEASUREMENTS_FIELD_NUMBER: _ClassVar[int]
    ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    PROCESSES_FIELD_NUMBER: _ClassVar[int]
    PROCESSES_TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    version: int
    node_id: str
    seq: int
    period_start_ns: int
    period_end_ns: int
    labels: _containers.ScalarMap[str, str]
    by_destination: _containers.RepeatedCompositeFieldContainer[_flow_pb2.Rollup]
    endpoints: _containers.RepeatedCompositeFieldContainer[_flow_pb2.Flow]
    rollups_truncated: int
    endpoints_truncated: int
    measurements: _containers.RepeatedCompositeFieldContainer[MeasureResponse]
    addresses: _containers.RepeatedScalarFieldContainer[str]
    processes: _containers.RepeatedCompositeFieldContainer[ProcessTransactions]
    processes_truncated: int
    def __init__(self, version: _Optional[int] = ..., node_id: _Optional[str] = ..., seq: _Optional[int] = ..., period_start_ns: _Optional[int] = ..., period_end_ns: _Optional[int] = ..., labels: _Optional[_Mapping[str, str]] = ..., by_destination: _Optional[_Iterable[_Union[_flow_pb2.Rollup, _Mapping]]] = ..., endpoints: _Optional[_Iterable[_Union[_flow_pb2.Flow, _Mapping]]] = ..., rollups_truncated: _Optional[int] = ..., endpoints_truncated: _Optional[int] = ..., measurements: _Optional[_Iterable[_Union[MeasureResponse, _Mapping]]] = ..., addresses: _Optional[_Iterable[str]] = ..., processes: _Optional[_Iterable[_Union[ProcessTransactions, _Mapping]]] = ..., processes_truncated: _Optional[int] = ...) -> None: ...

class ProcessTransactions(_message.Message):
    __slots__ = ("comm", "destination", "kinds")
    class KindsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    COMM_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_FIELD_NUMBER: _ClassVar[int]
    KINDS_FIELD_NUMBER: _ClassVar[int]
    comm: str
    destination: str
    kinds: _containers.ScalarMap[str, int]
    def __init__(self, comm: _Optional[str] = ..., destination: _Optional[str] = ..., kinds: _Optional[_Mapping[str, int]] = ...) -> None: ...

class SignedDigest(_message.Message):
    __slots__ = ("payload", "signature", "public_key")
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    payload: bytes
    signature: bytes
    public_key: bytes
    def __init__(self, payload: _Optional[bytes] = ..., signature: _Optional[bytes] = ..., public_key: _Optional[bytes] = ...) -> None: ...

class DigestAnnounce(_message.Message):
    __slots__ = ("node_id", "seq")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    seq: int
    def __init__(self, node_id: _Optional[str] = ..., seq: _Optional[int] = ...) -> None: ...

class DigestPull(_message.Message):
    __slots__ = ("node_ids",)
    NODE_IDS_FIELD_NUMBER: _ClassVar[int]
    node_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, node_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class DigestState(_message.Message):
    __slots__ = ("seqs", "digests")
    class SeqsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    SEQS_FIELD_NUMBER: _ClassVar[int]
    DIGESTS_FIELD_NUMBER: _ClassVar[int]
    seqs: _containers.ScalarMap[str, int]
    digests: _containers.RepeatedCompositeFieldContainer[SignedDigest]
    def __init__(self, seqs: _Optional[_Mapping[str, int]] = ..., digests: _Optional[_Iterable[_Union[SignedDigest, _Mapping]]] = ...) -> None: ...

class PeersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Peer(_message.Message):
    __slots__ = ("node_id", "addr", "state", "incarnation", "labels", "digest_seq", "digest_age_ms", "rtt_us", "is_self")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ADDR_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    DIGEST_SEQ_FIELD_NUMBER: _ClassVar[int]
    DIGEST_AGE_MS_FIELD_NUMBER: _ClassVar[int]
    RTT_US_FIELD_NUMBER: _ClassVar[int]
    IS_SELF_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    addr: str
    state: MemberState
    incarnation: int
    labels: _containers.ScalarMap[str, str]
    digest_seq: int
    digest_age_ms: int
    rtt_us: int
    is_self: bool
    def __init__(self, node_id: _Optional[str] = ..., addr: _Optional[str] = ..., state: _Optional[_Union[MemberState, str]] = ..., incarnation: _Optional[int] = ..., labels: _Optional[_Mapping[str, str]] = ..., digest_seq: _Optional[int] = ..., digest_age_ms: _Optional[int] = ..., rtt_us: _Optional[int] = ..., is_self: _Optional[bool] = ...) -> None: ...

class PeersResponse(_message.Message):
    __slots__ = ("peers", "counters", "health_score")
    class CountersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    PEERS_FIELD_NUMBER: _ClassVar[int]
    COUNTERS_FIELD_NUMBER: _ClassVar[int]
    HEALTH_SCORE_FIELD_NUMBER: _ClassVar[int]
    peers: _containers.RepeatedCompositeFieldContainer[Peer]
    counters: _containers.ScalarMap[str, int]
    health_score: int
    def __init__(self, peers: _Optional[_Iterable[_Union[Peer, _Mapping]]] = ..., counters: _Optional[_Mapping[str, int]] = ..., health_score: _Optional[int] = ...) -> None: ...

class DigestsRequest(_message.Message):
    __slots__ = ("node_ids",)
    NODE_IDS_FIELD_NUMBER: _ClassVar[int]
    node_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, node_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class DigestsResponse(_message.Message):
    __slots__ = ("digests",)
    DIGESTS_FIELD_NUMBER: _ClassVar[int]
    digests: _containers.RepeatedCompositeFieldContainer[SignedDigest]
    def __init__(self, digests: _Optional[_Iterable[_Union[SignedDigest, _Mapping]]] = ...) -> None: ...

class FleetQueryRequest(_message.Message):
    __slots__ = ("destination", "selector", "group_by", "deadline_ms", "local_only", "service")
    class SelectorEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    DESTINATION_FIELD_NUMBER: _ClassVar[int]
    SELECTOR_FIELD_NUMBER: _ClassVar[int]
    GROUP_BY_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_MS_FIELD_NUMBER: _ClassVar[int]
    LOCAL_ONLY_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    destination: str
    selector: _containers.ScalarMap[str, str]
    group_by: str
    deadline_ms: int
    local_only: bool
    service: str
    def __init__(self, destination: _Optional[str] = ..., selector: _Optional[_Mapping[str, str]] = ..., group_by: _Optional[str] = ..., deadline_ms: _Optional[int] = ..., local_only: _Optional[bool] = ..., service: _Optional[str] = ...) -> None: ...

class NodeStatus(_message.Message):
    __slots__ = ("node_id", "answered", "error")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ANSWERED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    answered: bool
    error: str
    def __init__(self, node_id: _Optional[str] = ..., answered: _Optional[bool] = ..., error: _Optional[str] = ...) -> None: ...

class HealthAggregate(_message.Message):
    __slots__ = ("group", "destination", "hosts", "attempts", "useful", "useful_fraction_median", "failures", "rtt_p50_us_median", "rtt_p95_us_median", "retransmits", "newest_age_ms", "oldest_age_ms", "hosts_excluded")
    class FailuresEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    GROUP_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_FIELD_NUMBER: _ClassVar[int]
    HOSTS_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    USEFUL_FIELD_NUMBER: _ClassVar[int]
    USEFUL_FRACTION_MEDIAN_FIELD_NUMBER: _ClassVar[int]
    FAILURES_FIELD_NUMBER: _ClassVar[int]
    RTT_P50_US_MEDIAN_FIELD_NUMBER: _ClassVar[int]
    RTT_P95_US_MEDIAN_FIELD_NUMBER: _ClassVar[int]
    RETRANSMITS_FIELD_NUMBER: _ClassVar[int]
    NEWEST_AGE_MS_FIELD_NUMBER: _ClassVar[int]
    OLDEST_AGE_MS_FIELD_NUMBER: _ClassVar[int]
    HOSTS_EXCLUDED_FIELD_NUMBER: _ClassVar[int]
    group: str
    destination: str
    hosts: int
    attempts: int
    useful: int
    useful_fraction_median: float
    failures: _containers.ScalarMap[str, int]
    rtt_p50_us_median: int
    rtt_p95_us_median: int
    retransmits: int
    newest_age_ms: int
    oldest_age_ms: int
    hosts_excluded: int
    def __init__(self, group: _Optional[str] = ..., destination: _Optional[str] = ..., hosts: _Optional[int] = ..., attempts: _Optional[int] = ..., useful: _Optional[int] = ..., useful_fraction_median: _Optional[float] = ..., failures: _Optional[_Mapping[str, int]] = ..., rtt_p50_us_median: _Optional[int] = ..., rtt_p95_us_median: _Optional[int] = ..., retransmits: _Optional[int] = ..., newest_age_ms: _Optional[int] = ..., oldest_age_ms: _Optional[int] = ..., hosts_excluded: _Optional[int] = ...) -> None: ...

class FleetQueryResponse(_message.Message):
    __slots__ = ("aggregates", "nodes", "digests", "partial", "hosts_excluded", "excluded")
    AGGREGATES_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    DIGESTS_FIELD_NUMBER: _ClassVar[int]
    PARTIAL_FIELD_NUMBER: _ClassVar[int]
    HOSTS_EXCLUDED_FIELD_NUMBER: _ClassVar[int]
    EXCLUDED_FIELD_NUMBER: _ClassVar[int]
    aggregates: _containers.RepeatedCompositeFieldContainer[HealthAggregate]
    nodes: _containers.RepeatedCompositeFieldContainer[NodeStatus]
    digests: _containers.RepeatedCompositeFieldContainer[SignedDigest]
    partial: bool
    hosts_excluded: int
    excluded: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, aggregates: _Optional[_Iterable[_Union[HealthAggregate, _Mapping]]] = ..., nodes: _Optional[_Iterable[_Union[NodeStatus, _Mapping]]] = ..., digests: _Optional[_Iterable[_Union[SignedDigest, _Mapping]]] = ..., partial: _Optional[bool] = ..., hosts_excluded: _Optional[int] = ..., excluded: _Optional[_Iterable[str]] = ...) -> None: ...

class MeasureRequest(_message.Message):
    __slots__ = ("target", "port", "count", "timeout_ms", "requester_id")
    TARGET_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    REQUESTER_ID_FIELD_NUMBER: _ClassVar[int]
    target: str
    port: int
    count: int
    timeout_ms: int
    requester_id: str
    def __init__(self, target: _Optional[str] = ..., port: _Optional[int] = ..., count: _Optional[int] = ..., timeout_ms: _Optional[int] = ..., requester_id: _Optional[str] = ...) -> None: ...

class MeasureResponse(_message.Message):
    __slots__ = ("node_id", "target", "attempts", "reachable", "connect_us", "errors", "p50_us", "time_ns")
    class ErrorsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    REACHABLE_FIELD_NUMBER: _ClassVar[int]
    CONNECT_US_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    P50_US_FIELD_NUMBER: _ClassVar[int]
    TIME_NS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    target: str
    attempts: int
    reachable: int
    connect_us: _containers.RepeatedScalarFieldContainer[int]
    errors: _containers.ScalarMap[str, int]
    p50_us: int
    time_ns: int
    def __init__(self, node_id: _Optional[str] = ..., target: _Optional[str] = ..., attempts: _Optional[int] = ..., reachable: _Optional[int] = ..., connect_us: _Optional[_Iterable[int]] = ..., errors: _Optional[_Mapping[str, int]] = ..., p50_us: _Optional[int] = ..., time_ns: _Optional[int] = ...) -> None: ...
