from meshnode.v1 import flow_pb2 as _flow_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EntityKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ENTITY_KIND_UNKNOWN: _ClassVar[EntityKind]
    ENTITY_KIND_PROCESS: _ClassVar[EntityKind]
    ENTITY_KIND_SERVICE: _ClassVar[EntityKind]
    ENTITY_KIND_HOST: _ClassVar[EntityKind]
    ENTITY_KIND_DST_HOST: _ClassVar[EntityKind]
    ENTITY_KIND_SITE: _ClassVar[EntityKind]
    ENTITY_KIND_DST_SITE: _ClassVar[EntityKind]
    ENTITY_KIND_PATH: _ClassVar[EntityKind]
    ENTITY_KIND_REGION: _ClassVar[EntityKind]
    ENTITY_KIND_DST_REGION: _ClassVar[EntityKind]
    ENTITY_KIND_REGION_PATH: _ClassVar[EntityKind]
    ENTITY_KIND_UPLINK: _ClassVar[EntityKind]
ENTITY_KIND_UNKNOWN: EntityKind
ENTITY_KIND_PROCESS: EntityKind
ENTITY_KIND_SERVICE: EntityKind
ENTITY_KIND_HOST: EntityKind
ENTITY_KIND_DST_HOST: EntityKind
ENTITY_KIND_SITE: EntityKind
ENTITY_KIND_DST_SITE: EntityKind
ENTITY_KIND_PATH: EntityKind
ENTITY_KIND_REGION: EntityKind
ENTITY_KIND_DST_REGION: EntityKind
ENTITY_KIND_REGION_PATH: EntityKind
ENTITY_KIND_UPLINK: EntityKind

class BlameRequest(_message.Message):
    __slots__ = ("since_ns", "until_ns", "target", "threshold", "max_suspects")
    SINCE_NS_FIELD_NUMBER: _ClassVar[int]
    UNTIL_NS_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    MAX_SUSPECTS_FIELD_NUMBER: _ClassVar[int]
    since_ns: int
    until_ns: int
    target: str
    threshold: float
    max_suspects: int
    def __init__(self, since_ns: _Optional[int] = ..., until_ns: _Optional[int] = ..., target: _Optional[str] = ..., threshold: _Optional[float] = ..., max_suspects: _Optional[int] = ...) -> None: ...

class FlowTuple(_message.Message):
    __slots__ = ("src", "sport", "dst", "dport", "proto")
    SRC_FIELD_NUMBER: _ClassVar[int]
    SPORT_FIELD_NUMBER: _ClassVar[int]
    DST_FIELD_NUMBER: _ClassVar[int]
    DPORT_FIELD_NUMBER: _ClassVar[int]
    PROTO_FIELD_NUMBER: _ClassVar[int]
    src: str
    sport: int
    dst: str
    dport: int
    proto: _flow_pb2.Protocol
    def __init__(self, src: _Optional[str] = ..., sport: _Optional[int] = ..., dst: _Optional[str] = ..., dport: _Optional[int] = ..., proto: _Optional[_Union[_flow_pb2.Protocol, str]] = ...) -> None: ...

class BlameSuspect(_message.Message):
    __slots__ = ("rank", "kind", "name", "display", "level", "problem_fraction", "transactions", "problems", "problem_kinds", "hosts", "sites", "examples", "shared", "verdict", "problem_destinations")
    class ProblemKindsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class ProblemDestinationsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    RANK_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_FIELD_NUMBER: _ClassVar[int]
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    PROBLEM_FRACTION_FIELD_NUMBER: _ClassVar[int]
    TRANSACTIONS_FIELD_NUMBER: _ClassVar[int]
    PROBLEMS_FIELD_NUMBER: _ClassVar[int]
    PROBLEM_KINDS_FIELD_NUMBER: _ClassVar[int]
    HOSTS_FIELD_NUMBER: _ClassVar[int]
    SITES_FIELD_NUMBER: _ClassVar[int]
    EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    SHARED_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    PROBLEM_DESTINATIONS_FIELD_NUMBER: _ClassVar[int]
    rank: int
    kind: EntityKind
    name: str
    display: str
    level: int
    problem_fraction: float
    transactions: int
    problems: int
    problem_kinds: _containers.ScalarMap[str, int]
    hosts: _containers.RepeatedScalarFieldContainer[str]
    sites: _containers.RepeatedScalarFieldContainer[str]
    examples: _containers.RepeatedCompositeFieldContainer[FlowTuple]
    shared: bool
    verdict: str
    problem_destinations: _containers.ScalarMap[str, int]
    def __init__(self, rank: _Optional[int] = ..., kind: _Optional[_Union[EntityKind, str]] = ..., name: _Optional[str] = ..., display: _Optional[str] = ..., level: _Optional[int] = ..., problem_fraction: _Optional[float] = ..., transactions: _Optional[int] = ..., problems: _Optional[int] = ..., problem_kinds: _Optional[_Mapping[str, int]] = ..., hosts: _Optional[_Iterable[str]] = ..., sites: _Optional[_Iterable[str]] = ..., examples: _Optional[_Iterable[_Union[FlowTuple, _Mapping]]] = ..., shared: _Optional[bool] = ..., verdict: _Optional[str] = ..., problem_destinations: _Optional[_Mapping[str, int]] = ...) -> None: ...

class BlameResponse(_message.Message):
    __slots__ = ("suspects", "verdict", "transactions", "problems", "hosts", "threshold", "since_ns", "until_ns", "retry_advice", "discovery")
    SUSPECTS_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    TRANSACTIONS_FIELD_NUMBER: _ClassVar[int]
    PROBLEMS_FIELD_NUMBER: _ClassVar[int]
    HOSTS_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    SINCE_NS_FIELD_NUMBER: _ClassVar[int]
    UNTIL_NS_FIELD_NUMBER: _ClassVar[int]
    RETRY_ADVICE_FIELD_NUMBER: _ClassVar[int]
    DISCOVERY_FIELD_NUMBER: _ClassVar[int]
    suspects: _containers.RepeatedCompositeFieldContainer[BlameSuspect]
    verdict: str
    transactions: int
    problems: int
    hosts: int
    threshold: float
    since_ns: int
    until_ns: int
    retry_advice: _containers.RepeatedCompositeFieldContainer[RetryAdvice]
    discovery: _containers.RepeatedCompositeFieldContainer[DiscoveryChatter]
    def __init__(self, suspects: _Optional[_Iterable[_Union[BlameSuspect, _Mapping]]] = ..., verdict: _Optional[str] = ..., transactions: _Optional[int] = ..., problems: _Optional[int] = ..., hosts: _Optional[int] = ..., threshold: _Optional[float] = ..., since_ns: _Optional[int] = ..., until_ns: _Optional[int] = ..., retry_advice: _Optional[_Iterable[_Union[RetryAdvice, _Mapping]]] = ..., discovery: _Optional[_Iterable[_Union[DiscoveryChatter, _Mapping]]] = ...) -> None: ...

class RetryAdvice(_message.Message):
    __slots__ = ("comm", "pid", "destination", "outages", "attempts", "attempts_per_outage", "retry_interval_ms", "outage_p50_ms", "outage_max_ms", "fixed_interval", "suggest_backoff", "attempts_with_backoff", "suggestion")
    COMM_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_FIELD_NUMBER: _ClassVar[int]
    OUTAGES_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_PER_OUTAGE_FIELD_NUMBER: _ClassVar[int]
    RETRY_INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    OUTAGE_P50_MS_FIELD_NUMBER: _ClassVar[int]
    OUTAGE_MAX_MS_FIELD_NUMBER: _ClassVar[int]
    FIXED_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    SUGGEST_BACKOFF_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_WITH_BACKOFF_FIELD_NUMBER: _ClassVar[int]
    SUGGESTION_FIELD_NUMBER: _ClassVar[int]
    comm: str
    pid: int
    destination: str
    outages: int
    attempts: int
    attempts_per_outage: float
    retry_interval_ms: float
    outage_p50_ms: float
    outage_max_ms: float
    fixed_interval: bool
    suggest_backoff: bool
    attempts_with_backoff: int
    suggestion: str
    def __init__(self, comm: _Optional[str] = ..., pid: _Optional[int] = ..., destination: _Optional[str] = ..., outages: _Optional[int] = ..., attempts: _Optional[int] = ..., attempts_per_outage: _Optional[float] = ..., retry_interval_ms: _Optional[float] = ..., outage_p50_ms: _Optional[float] = ..., outage_max_ms: _Optional[float] = ..., fixed_interval: _Optional[bool] = ..., suggest_backoff: _Optional[bool] = ..., attempts_with_backoff: _Optional[int] = ..., suggestion: _Optional[str] = ...) -> None: ...

class DiscoveryChatter(_message.Message):
    __slots__ = ("comm", "protocol", "flows", "destinations")
    COMM_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    FLOWS_FIELD_NUMBER: _ClassVar[int]
    DESTINATIONS_FIELD_NUMBER: _ClassVar[int]
    comm: str
    protocol: str
    flows: int
    destinations: int
    def __init__(self, comm: _Optional[str] = ..., protocol: _Optional[str] = ..., flows: _Optional[int] = ..., destinations: _Optional[int] = ...) -> None: ...

class CompareRequest(_message.Message):
    __slots__ = ("destination", "since_ns", "until_ns", "group_by")
    DESTINATION_FIELD_NUMBER: _ClassVar[int]
    SINCE_NS_FIELD_NUMBER: _ClassVar[int]
    UNTIL_NS_FIELD_NUMBER: _ClassVar[int]
    GROUP_BY_FIELD_NUMBER: _ClassVar[int]
    destination: str
    since_ns: int
    until_ns: int
    group_by: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, destination: _Optional[str] = ..., since_ns: _Optional[int] = ..., until_ns: _Optional[int] = ..., group_by: _Optional[_Iterable[str]] = ...) -> None: ...

class MetricComparison(_message.Message):
    __slots__ = ("metric", "value", "median", "p05", "p95", "peers", "worst_fraction", "outlier", "summary")
    METRIC_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    MEDIAN_FIELD_NUMBER: _ClassVar[int]
    P05_FIELD_NUMBER: _ClassVar[int]
    P95_FIELD_NUMBER: _ClassVar[int]
    PEERS_FIELD_NUMBER: _ClassVar[int]
    WORST_FRACTION_FIELD_NUMBER: _ClassVar[int]
    OUTLIER_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    metric: str
    value: float
    median: float
    p05: float
    p95: float
    peers: int
    worst_fraction: float
    outlier: bool
    summary: str
    def __init__(self, metric: _Optional[str] = ..., value: _Optional[float] = ..., median: _Optional[float] = ..., p05: _Optional[float] = ..., p95: _Optional[float] = ..., peers: _Optional[int] = ..., worst_fraction: _Optional[float] = ..., outlier: _Optional[bool] = ..., summary: _Optional[str] = ...) -> None: ...

class DestinationComparison(_message.Message):
    __slots__ = ("destination", "metrics", "verdict", "outlier")
    DESTINATION_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    OUTLIER_FIELD_NUMBER: _ClassVar[int]
    destination: str
    metrics: _containers.RepeatedCompositeFieldContainer[MetricComparison]
    verdict: str
    outlier: bool
    def __init__(self, destination: _Optional[str] = ..., metrics: _Optional[_Iterable[_Union[MetricComparison, _Mapping]]] = ..., verdict: _Optional[str] = ..., outlier: _Optional[bool] = ...) -> None: ...

class CompareResponse(_message.Message):
    __slots__ = ("host", "group", "destinations", "verdict")
    HOST_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    DESTINATIONS_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    host: str
    group: str
    destinations: _containers.RepeatedCompositeFieldContainer[DestinationComparison]
    verdict: str
    def __init__(self, host: _Optional[str] = ..., group: _Optional[str] = ..., destinations: _Optional[_Iterable[_Union[DestinationComparison, _Mapping]]] = ..., verdict: _Optional[str] = ...) -> None: ...
