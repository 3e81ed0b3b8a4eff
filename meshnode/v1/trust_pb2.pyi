from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Severity(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SEVERITY_UNKNOWN: _ClassVar[Severity]
    CONTRADICTION: _ClassVar[Severity]
    MISMATCH: _ClassVar[Severity]
    MINOR: _ClassVar[Severity]

class ChallengeVerdict(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CHALLENGE_VERDICT_UNKNOWN: _ClassVar[ChallengeVerdict]
    CHALLENGE_PASSED: _ClassVar[ChallengeVerdict]
    CHALLENGE_FAILED: _ClassVar[ChallengeVerdict]
    CHALLENGE_INCONCLUSIVE: _ClassVar[ChallengeVerdict]
SEVERITY_UNKNOWN: Severity
CONTRADICTION: Severity
MISMATCH: Severity
MINOR: Severity
CHALLENGE_VERDICT_UNKNOWN: ChallengeVerdict
CHALLENGE_PASSED: ChallengeVerdict
CHALLENGE_FAILED: ChallengeVerdict
CHALLENGE_INCONCLUSIVE: ChallengeVerdict

class Evidence(_message.Message):
    __slots__ = ("reporter", "witness", "proto", "src", "sport", "dst", "dport", "field", "claimed", "witnessed", "reason", "severity", "at_ns", "blamed")
    REPORTER_FIELD_NUMBER: _ClassVar[int]
    WITNESS_FIELD_NUMBER: _ClassVar[int]
    PROTO_FIELD_NUMBER: _ClassVar[int]
    SRC_FIELD_NUMBER: _ClassVar[int]
    SPORT_FIELD_NUMBER: _ClassVar[int]
    DST_FIELD_NUMBER: _ClassVar[int]
    DPORT_FIELD_NUMBER: _ClassVar[int]
    FIELD_FIELD_NUMBER: _ClassVar[int]
    CLAIMED_FIELD_NUMBER: _ClassVar[int]
    WITNESSED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    SEVERITY_FIELD_NUMBER: _ClassVar[int]
    AT_NS_FIELD_NUMBER: _ClassVar[int]
    BLAMED_FIELD_NUMBER: _ClassVar[int]
    reporter: str
    witness: str
    proto: str
    src: str
    sport: int
    dst: str
    dport: int
    field: str
    claimed: str
    witnessed: str
    reason: str
    severity: Severity
    at_ns: int
    blamed: str
    def __init__(self, reporter: _Optional[str] = ..., witness: _Optional[str] = ..., proto: _Optional[str] = ..., src: _Optional[str] = ..., sport: _Optional[int] = ..., dst: _Optional[str] = ..., dport: _Optional[int] = ..., field: _Optional[str] = ..., claimed: _Optional[str] = ..., witnessed: _Optional[str] = ..., reason: _Optional[str] = ..., severity: _Optional[_Union[Severity, str]] = ..., at_ns: _Optional[int] = ..., blamed: _Optional[str] = ...) -> None: ...

class TrustScore(_message.Message):
    __slots__ = ("node_id", "score", "flagged", "evidence", "last_evidence_ns")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    FLAGGED_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_FIELD_NUMBER: _ClassVar[int]
    LAST_EVIDENCE_NS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    score: float
    flagged: bool
    evidence: int
    last_evidence_ns: int
    def __init__(self, node_id: _Optional[str] = ..., score: _Optional[float] = ..., flagged: _Optional[bool] = ..., evidence: _Optional[int] = ..., last_evidence_ns: _Optional[int] = ...) -> None: ...

class ValidateRequest(_message.Message):
    __slots__ = ("peer", "max_evidence")
    PEER_FIELD_NUMBER: _ClassVar[int]
    MAX_EVIDENCE_FIELD_NUMBER: _ClassVar[int]
    peer: str
    max_evidence: int
    def __init__(self, peer: _Optional[str] = ..., max_evidence: _Optional[int] = ...) -> None: ...

class ValidateResponse(_message.Message):
    __slots__ = ("scores", "evidence", "counters", "threshold")
    class CountersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    SCORES_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_FIELD_NUMBER: _ClassVar[int]
    COUNTERS_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    scores: _containers.RepeatedCompositeFieldContainer[TrustScore]
    evidence: _containers.RepeatedCompositeFieldContainer[Evidence]
    counters: _containers.ScalarMap[str, int]
    threshold: float
    def __init__(self, scores: _Optional[_Iterable[_Union[TrustScore, _Mapping]]] = ..., evidence: _Optional[_Iterable[_Union[Evidence, _Mapping]]] = ..., counters: _Optional[_Mapping[str, int]] = ..., threshold: _Optional[float] = ...) -> None: ...

class RequestAuth(_message.Message):
    __slots__ = ("public_key", "timestamp_ns", "nonce", "signature")
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_NS_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    public_key: bytes
    timestamp_ns: int
    nonce: bytes
    signature: bytes
    def __init__(self, public_key: _Optional[bytes] = ..., timestamp_ns: _Optional[int] = ..., nonce: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class ChallengeRequest(_message.Message):
    __slots__ = ("suspect", "prober", "port", "count", "deadline_ms")
    SUSPECT_FIELD_NUMBER: _ClassVar[int]
    PROBER_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_MS_FIELD_NUMBER: _ClassVar[int]
    suspect: str
    prober: str
    port: int
    count: int
    deadline_ms: int
    def __init__(self, suspect: _Optional[str] = ..., prober: _Optional[str] = ..., port: _Optional[int] = ..., count: _Optional[int] = ..., deadline_ms: _Optional[int] = ...) -> None: ...

class ChallengeResponse(_message.Message):
    __slots__ = ("suspect", "prober", "target", "attempts", "connected", "reported", "tolerance", "verdict", "detail", "digests", "score", "flagged", "started_ns", "finished_ns")
    SUSPECT_FIELD_NUMBER: _ClassVar[int]
    PROBER_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_FIELD_NUMBER: _ClassVar[int]
    REPORTED_FIELD_NUMBER: _ClassVar[int]
    TOLERANCE_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    DIGESTS_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    FLAGGED_FIELD_NUMBER: _ClassVar[int]
    STARTED_NS_FIELD_NUMBER: _ClassVar[int]
    FINISHED_NS_FIELD_NUMBER: _ClassVar[int]
    suspect: str
    prober: str
    target: str
    attempts: int
    connected: int
    reported: int
    tolerance: int
    verdict: ChallengeVerdict
    detail: str
    digests: int
    score: float
    flagged: bool
    started_ns: int
    finished_ns: int
    def __init__(self, suspect: _Optional[str] = ..., prober: _Optional[str] = ..., target: _Optional[str] = ..., attempts: _Optional[int] = ..., connected: _Optional[int] = ..., reported: _Optional[int] = ..., tolerance: _Optional[int] = ..., verdict: _Optional[_Union[ChallengeVerdict, str]] = ..., detail: _Optional[str] = ..., digests: _Optional[int] = ..., score: _Optional[float] = ..., flagged: _Optional[bool] = ..., started_ns: _Optional[int] = ..., finished_ns: _Optional[int] = ...) -> None: ...
