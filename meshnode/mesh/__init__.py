"""The gossip mesh: SWIM membership with Lifeguard, signed digests, label aggregation, fleet queries.

Modules (internal, re-exported here):

    _config      MeshConfig: protocol parameters
    _clock       Scheduler protocol; ManualScheduler (tests, simulation), AsyncioScheduler (the node)
    _transport   Transport protocol: send_packet, request (reliable request/response), close
    _memnet      MemoryNetwork: in-memory transport with per-link loss, partitions, latency, byte counts
    _awareness   Lifeguard local health (pure: scale_timeout, apply_delta)
    _suspicion   suspicion timeouts (pure: suspicion_timeout, remaining_suspicion_time) and Suspicion
    _broadcast   TransmitLimitedQueue (pure: retransmit_limit)
    _state       Membership: the SWIM + Lifeguard state machine; Delegate protocol; Member, State
    _digest      NodeKey, Digest building/bounding/signing/verifying, DigestExchange (the delegate)
    _aggregate   label aggregation (pure): aggregate, trusted_aggregate, health_of, hierarchy; HostLimits, centres
    _grpc_transport  GrpcTransport, PoolTransport (pools on one port), RETRYABLE_CODES, with_retries
    _identity    identities bound to certificates (mTLS): PeerCertificate, IdentityGuard, signed Alives, audiences
    _service     MeshService (the node's service) and MeshServicer (meshnode.v1.Mesh); LocalHistory protocol
    _fleetflows  fleet flow queries (pure): limits, member_after cursors, page tokens, merge of answers,
                 signed answers and the relayed, cut ones (check_member)
    _tasks       active tasks (seed 003): TaskPolicy, TokenBucket, measure_tcp
    _pathprobe   path probes (trace_path, Hop) and handshake RTTs without raw sockets
    _measurements  where task results are kept: MeasurementStore, HeldMeasurements, StoredMeasurements
    _accounts    accounting (seed 003): Ledger, Account, Quota, parse_quotas
    _sites       site aggregates (seed 000): elect, build/sign/verify_aggregate, aggregate_rows, SiteNode
    _mux         DelegateMux: the digest exchange and the site hierarchy on one site pool
    _sim         SimCluster: many nodes on a MemoryNetwork (tests, bench/bench_mesh.py)

In the node::

    mesh = MeshService(advertise="10.0.0.5:7946", listen="0.0.0.0:7946", key=NodeKey.load_or_create(p),
                       labels={"region": "eu", "site": "ams1", "host": "web-1"}, seeds=["10.0.0.2:7946"])
    node.period_listeners.append(mesh.on_period)
    await mesh.start()      # or: mesh.register(server) before the daemon's server starts, without listen=
    ...
    await mesh.stop()
"""

from meshnode.mesh._accounts import Account, Ledger, Quota, parse_quotas
from meshnode.mesh._aggregate import (
    DEFAULT_LABEL_ORDER,
    FLEET,
    HOST_LIMITS,
    U64_MAX,
    Aggregate,
    HostLimits,
    HostReport,
    TrustedAggregates,
    aggregate,
    clamp_rollup,
    group_of,
    health_of,
    hierarchy,
    host_reports,
    matches,
    median,
    saturating_sum,
    trimmed_count,
    trimmed_mean,
    trusted_aggregate,
)
from meshnode.mesh._awareness import Awareness, apply_delta, scale_timeout
from meshnode.mesh._broadcast import TransmitLimitedQueue, retransmit_limit
from meshnode.mesh._clock import AsyncioScheduler, ManualScheduler, Scheduler, Timer
from meshnode.mesh._config import MeshConfig
from meshnode.mesh._digest import (
    DIGEST_VERSION,
    DigestConfig,
    DigestExchange,
    DigestRejected,
    FlowLike,
    HeldDigest,
    NodeKey,
    PeriodLike,
    RollupLike,
    SignatureCheck,
    bound_digest,
    check_signature,
    digest_from_period,
    endpoint_records,
    members_only,
    node_id_from_public_key,
    rollups_from_flows,
    sign_digest,
    verify_digest,
)
from meshnode.mesh._fleetflows import (
    Answer,
    Checked,
    FleetRefused,
    Page,
    answer_signed_by,
    check_member,
    cut,
    decode_token,
    encode_token,
    member_after,
    merge,
    records_sha256,
    relay_members,
    sign_answer,
)
from meshnode.mesh._grpc_transport import RETRYABLE_CODES, GrpcTransport, PoolTransport, with_retries
from meshnode.mesh._identity import (
    AUDIENCE_METADATA_KEY,
    KEY_URI_PREFIX,
    IdentityGuard,
    PeerCertificate,
    alive_signed_by_member,
    audience_metadata,
    bound_node_ids,
    leave_signed_by_member,
    over_tls,
    peer_certificate,
    sign_alive,
    sign_leave,
    tls_peer,
)
from meshnode.mesh._measurements import HeldMeasurements, MeasurementStore, StoredMeasurements
from meshnode.mesh._memnet import MemoryNetwork, MemoryTransport
from meshnode.mesh._mux import DelegateMux
from meshnode.mesh._pathprobe import Hop, trace_path
from meshnode.mesh._service import MESH_SERVICE, LocalDigestSource, LocalHistory, MeshService, MeshServicer
from meshnode.mesh._sites import (
    SiteConfig,
    SiteNode,
    aggregate_rows,
    build_aggregate,
    elect,
    election_rank,
    sign_aggregate,
    verify_aggregate,
)
from meshnode.mesh._state import Delegate, Member, Membership, State
from meshnode.mesh._suspicion import Suspicion, remaining_suspicion_time, suspicion_timeout
from meshnode.mesh._tasks import MEMBER_CALLER, Measurement, TaskPolicy, TaskRefused, TokenBucket, measure_tcp
from meshnode.mesh._transport import PacketHandler, ReplyCallback, StreamHandler, Transport

__all__ = [
    "AUDIENCE_METADATA_KEY",
    "DEFAULT_LABEL_ORDER",
    "DIGEST_VERSION",
    "FLEET",
    "HOST_LIMITS",
    "KEY_URI_PREFIX",
    "MEMBER_CALLER",
    "MESH_SERVICE",
    "RETRYABLE_CODES",
    "U64_MAX",
    "Account",
    "Aggregate",
    "Answer",
    "AsyncioScheduler",
    "Awareness",
    "Checked",
    "Delegate",
    "DelegateMux",
    "DigestConfig",
    "DigestExchange",
    "DigestRejected",
    "FleetRefused",
    "FlowLike",
    "GrpcTransport",
    "HeldDigest",
    "HeldMeasurements",
    "Hop",
    "HostLimits",
    "HostReport",
    "IdentityGuard",
    "Ledger",
    "LocalDigestSource",
    "LocalHistory",
    "ManualScheduler",
    "Measurement",
    "MeasurementStore",
    "Member",
    "Membership",
    "MemoryNetwork",
    "MemoryTransport",
    "MeshConfig",
    "MeshService",
    "MeshServicer",
    "NodeKey",
    "PacketHandler",
    "Page",
    "PeerCertificate",
    "PeriodLike",
    "PoolTransport",
    "Quota",
    "ReplyCallback",
    "RollupLike",
    "Scheduler",
    "SignatureCheck",
    "SiteConfig",
    "SiteNode",
    "State",
    "StoredMeasurements",
    "StreamHandler",
    "Suspicion",
    "TaskPolicy",
    "TaskRefused",
    "Timer",
    "TokenBucket",
    "TransmitLimitedQueue",
    "Transport",
    "TrustedAggregates",
    "aggregate",
    "aggregate_rows",
    "alive_signed_by_member",
    "answer_signed_by",
    "apply_delta",
    "audience_metadata",
    "bound_digest",
    "bound_node_ids",
    "build_aggregate",
    "check_member",
    "check_signature",
    "clamp_rollup",
    "cut",
    "decode_token",
    "digest_from_period",
    "elect",
    "election_rank",
    "encode_token",
    "endpoint_records",
    "group_of",
    "health_of",
    "hierarchy",
    "host_reports",
    "leave_signed_by_member",
    "matches",
    "measure_tcp",
    "median",
    "member_after",
    "members_only",
    "merge",
    "node_id_from_public_key",
    "over_tls",
    "parse_quotas",
    "peer_certificate",
    "records_sha256",
    "relay_members",
    "remaining_suspicion_time",
    "retransmit_limit",
    "rollups_from_flows",
    "saturating_sum",
    "scale_timeout",
    "sign_aggregate",
    "sign_alive",
    "sign_answer",
    "sign_digest",
    "sign_leave",
    "suspicion_timeout",
    "tls_peer",
    "trace_path",
    "trimmed_count",
    "trimmed_mean",
    "trusted_aggregate",
    "verify_aggregate",
    "verify_digest",
    "with_retries",
]
