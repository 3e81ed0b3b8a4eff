from meshnode.v1 import flow_pb2 as _flow_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FlowsRequest(_message.Message):
    __slots__ = ("number", "follow", "since_ns", "until_ns", "whitelist", "blacklist", "page_token", "include_interim", "batch_size")
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    SINCE_NS_FIELD_NUMBER: _ClassVar[int]
    UNTIL_NS_FIELD_NUMBER: _ClassVar[int]
    WHITELIST_FIELD_NUMBER: _ClassVar[int]
    BLACKLIST_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_INTERIM_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    number: int
    follow: bool
    since_ns: int
    until_ns: int
    whitelist: _containers.RepeatedCompositeFieldContainer[_flow_pb2.FlowFilter]
    blacklist: _containers.RepeatedCompositeFieldContainer[_flow_pb2.FlowFilter]
    page_token: str
    include_interim: bool
    batch_size: int
    def __init__(self, number: _Optional[int] = ..., follow: _Optional[bool] = ..., since_ns: _Optional[int] = ..., until_ns: _Optional[int] = ..., whitelist: _Optional[_Iterable[_Union[_flow_pb2.FlowFilter, _Mapping]]] = ..., blacklist: _Optional[_Iterable[_Union[_flow_pb2.FlowFilter, _Mapping]]] = ..., page_token: _Optional[str] = ..., include_interim: _Optional[bool] = ..., batch_size: _Optional[int] = ...) -> None: ...

class FlowsResponse(_message.Message):
    __slots__ = ("flow", "next_page_token", "flows")
    FLOW_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    FLOWS_FIELD_NUMBER: _ClassVar[int]
    flow: _flow_pb2.Flow
    next_page_token: str
    flows: _containers.RepeatedCompositeFieldContainer[_flow_pb2.Flow]
    def __init__(self, flow: _Optional[_Union[_flow_pb2.Flow, _Mapping]] = ..., next_page_token: _Optional[str] = ..., flows: _Optional[_Iterable[_Union[_flow_pb2.Flow, _Mapping]]] = ...) -> None: ...

class SummariesRequest(_message.Message):
    __slots__ = ("since_ns", "until_ns", "number")
    SINCE_NS_FIELD_NUMBER: _ClassVar[int]
    UNTIL_NS_FIELD_NUMBER: _ClassVar[int]
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    since_ns: int
    until_ns: int
    number: int
    def __init__(self, since_ns: _Optional[int] = ..., until_ns: _Optional[int] = ..., number: _Optional[int] = ...) -> None: ...

class SummariesResponse(_message.Message):
    __slots__ = ("summaries",)
    SUMMARIES_FIELD_NUMBER: _ClassVar[int]
    summaries: _containers.RepeatedCompositeFieldContainer[_flow_pb2.PeriodSummary]
    def __init__(self, summaries: _Optional[_Iterable[_Union[_flow_pb2.PeriodSummary, _Mapping]]] = ...) -> None: ...

class HealthRequest(_message.Message):
    __slots__ = ("since_ns", "until_ns", "filter")
    SINCE_NS_FIELD_NUMBER: _ClassVar[int]
    UNTIL_NS_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    since_ns: int
    until_ns: int
    filter: _flow_pb2.FlowFilter
    def __init__(self, since_ns: _Optional[int] = ..., until_ns: _Optional[int] = ..., filter: _Optional[_Union[_flow_pb2.FlowFilter, _Mapping]] = ...) -> None: ...

class HealthResponse(_message.Message):
    __slots__ = ("host", "by_process", "by_destination", "retries", "scans", "failures_after_address_change", "since_ns", "until_ns", "by_period", "address_changes")
    HOST_FIELD_NUMBER: _ClassVar[int]
    BY_PROCESS_FIELD_NUMBER: _ClassVar[int]
    BY_DESTINATION_FIELD_NUMBER: _ClassVar[int]
    RETRIES_FIELD_NUMBER: _ClassVar[int]
    SCANS_FIELD_NUMBER: _ClassVar[int]
    FAILURES_AFTER_ADDRESS_CHANGE_FIELD_NUMBER: _ClassVar[int]
    SINCE_NS_FIELD_NUMBER: _ClassVar[int]
    UNTIL_NS_FIELD_NUMBER: _ClassVar[int]
    BY_PERIOD_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_CHANGES_FIELD_NUMBER: _ClassVar[int]
    host: _flow_pb2.HealthRow
    by_process: _containers.RepeatedCompositeFieldContainer[_flow_pb2.HealthRow]
    by_destination: _containers.RepeatedCompositeFieldContainer[_flow_pb2.HealthRow]
    retries: _containers.RepeatedCompositeFieldContainer[_flow_pb2.RetryPattern]
    scans: _containers.RepeatedCompositeFieldContainer[_flow_pb2.ScanPattern]
    failures_after_address_change: int
    since_ns: int
    until_ns: int
    by_period: _containers.RepeatedCompositeFieldContainer[_flow_pb2.HealthRow]
    address_changes: int
    def __init__(self, host: _Optional[_Union[_flow_pb2.HealthRow, _Mapping]] = ..., by_process: _Optional[_Iterable[_Union[_flow_pb2.HealthRow, _Mapping]]] = ..., by_destination: _Optional[_Iterable[_Union[_flow_pb2.HealthRow, _Mapping]]] = ..., retries: _Optional[_Iterable[_Union[_flow_pb2.RetryPattern, _Mapping]]] = ..., scans: _Optional[_Iterable[_Union[_flow_pb2.ScanPattern, _Mapping]]] = ..., failures_after_address_change: _Optional[int] = ..., since_ns: _Optional[int] = ..., until_ns: _Optional[int] = ..., by_period: _Optional[_Iterable[_Union[_flow_pb2.HealthRow, _Mapping]]] = ..., address_changes: _Optional[int] = ...) -> None: ...

class EventsRequest(_message.Message):
    __slots__ = ("number", "follow", "whitelist", "blacklist", "since_ns")
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    WHITELIST_FIELD_NUMBER: _ClassVar[int]
    BLACKLIST_FIELD_NUMBER: _ClassVar[int]
    SINCE_NS_FIELD_NUMBER: _ClassVar[int]
    number: int
    follow: bool
    whitelist: _containers.RepeatedCompositeFieldContainer[_flow_pb2.FlowFilter]
    blacklist: _containers.RepeatedCompositeFieldContainer[_flow_pb2.FlowFilter]
    since_ns: int
    def __init__(self, number: _Optional[int] = ..., follow: _Optional[bool] = ..., whitelist: _Optional[_Iterable[_Union[_flow_pb2.FlowFilter, _Mapping]]] = ..., blacklist: _Optional[_Iterable[_Union[_flow_pb2.FlowFilter, _Mapping]]] = ..., since_ns: _Optional[int] = ...) -> None: ...

class EventsResponse(_message.Message):
    __slots__ = ("event",)
    EVENT_FIELD_NUMBER: _ClassVar[int]
    event: _flow_pb2.Event
    def __init__(self, event: _Optional[_Union[_flow_pb2.Event, _Mapping]] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatusResponse(_message.Message):
    __slots__ = ("node_id", "version", "uptime_s", "sensor_mode", "sensor_reason", "fidelity", "scope", "export_period_s", "completeness", "store_bytes", "store_rows", "data_dir", "labels", "listen", "periods", "insecure", "active_flows", "host")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    UPTIME_S_FIELD_NUMBER: _ClassVar[int]
    SENSOR_MODE_FIELD_NUMBER: _ClassVar[int]
    SENSOR_REASON_FIELD_NUMBER: _ClassVar[int]
    FIDELITY_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    EXPORT_PERIOD_S_FIELD_NUMBER: _ClassVar[int]
    COMPLETENESS_FIELD_NUMBER: _ClassVar[int]
    STORE_BYTES_FIELD_NUMBER: _ClassVar[int]
    STORE_ROWS_FIELD_NUMBER: _ClassVar[int]
    DATA_DIR_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    LISTEN_FIELD_NUMBER: _ClassVar[int]
    PERIODS_FIELD_NUMBER: _ClassVar[int]
    INSECURE_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FLOWS_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    version: str
    uptime_s: float
    sensor_mode: str
    sensor_reason: str
    fidelity: _flow_pb2.Fidelity
    scope: str
    export_period_s: float
    completeness: _flow_pb2.Completeness
    store_bytes: int
    store_rows: int
    data_dir: str
    labels: _containers.ScalarMap[str, str]
    listen: str
    periods: int
    insecure: bool
    active_flows: int
    host: str
    def __init__(self, node_id: _Optional[str] = ..., version: _Optional[str] = ..., uptime_s: _Optional[float] = ..., sensor_mode: _Optional[str] = ..., sensor_reason: _Optional[str] = ..., fidelity: _Optional[_Union[_flow_pb2.Fidelity, str]] = ..., scope: _Optional[str] = ..., export_period_s: _Optional[float] = ..., completeness: _Optional[_Union[_flow_pb2.Completeness, _Mapping]] = ..., store_bytes: _Optional[int] = ..., store_rows: _Optional[int] = ..., data_dir: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., listen: _Optional[str] = ..., periods: _Optional[int] = ..., insecure: _Optional[bool] = ..., active_flows: _Optional[int] = ..., host: _Optional[str] = ...) -> None: ...
