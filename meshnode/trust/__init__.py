"""Trust: cross-validation of peers' reports, trust scores, mTLS, signed requests, privacy.

Modules (internal, re-exported here):

    _validate   EndpointClaim, claims_from_digest, compare_final/compare_bound (pure), CrossValidator, Evidence
    _score      TrustState: per-node scores with recovery, attribution, flagging; excluded()
    _privacy    PrivacyPolicy: keyed hashing, /24-/48 coarsening, comm dropping, before data leaves the node
    _authz      sign_request/auth_metadata and Authorizer: signed, fresh, non-replayed, allowed queries
    _ca         the fleet CA (ECDSA P-256): init_ca, issue, load_ca
    _tls        server_credentials / channel_credentials for gRPC mutual TLS
    _challenge  ChallengeWatch (pure): does a suspect's digests report a prober's test connections (seed 003)
    _monitor    TrustMonitor: validator + scores + recent evidence, the node's trust loop (pure)
    _service    TrustServicer (meshnode.v1.Trust/Validate), SignedRequestInterceptor (PERMISSION_DENIED)
    _ca_cmd     ``meshnode ca init|issue``
    _wiring     MeshTrust: the monitor wired into the node's mesh (endpoint records, privacy, exclusions);
                Lie, the test-only fault (``MESHNODE_TEST_LIE``)
    _errors     TlsError, BadClaim, Unauthorized

In the node (``meshnode.daemon._services.attach_trust`` does this)::

    trust = MeshTrust(mesh, export_period=cfg.export_period, policy=cfg.privacy, lie=Lie.from_env())
    trust.attach()                                       # decorator, digest listener, mesh.exclude
    api.add_servicer(trust.register, TRUST_SERVICE)
    node.record_listeners.append(trust.on_period)         # after the mesh's: members, close_period

Underneath, by hand::

    monitor = TrustMonitor(key.node_id, validation=ValidationConfig(period_s=export_period),
                           normalize=policy.endpoint_address, now_ns=time.time_ns())
    add_trust_servicer(monitor, server)                      # before the server starts
    exchange.on_accept = lambda digest, signed: monitor.on_digest(digest, "gossip")
    # each period, after publishing: monitor.on_digest(own digest); monitor.set_members({ip: node_id})
    monitor.close_period(time.time_ns())
    got = meshnode.mesh.trusted_aggregate(reports, excluded=monitor.excluded(node_ids), now_ns=now_ns)
    # (what MeshService.fleet_query answers: mesh.exclude = monitor.excluded, set by MeshTrust.attach)

    server = grpc.aio.server(interceptors=[SignedRequestInterceptor(Authorizer(operator_keys),
                                                                    ["/meshnode.v1.Mesh/FleetQuery"])])
    server.add_secure_port(listen, server_credentials(tls_dir, "node"))
"""

from meshnode.trust._authz import (
    AUTH_METADATA_KEY,
    AUTH_REASONS,
    GRPC_CODE,
    Authorizer,
    auth_metadata,
    request_payload,
    sign_request,
    signed_bytes,
)
from meshnode.trust._ca import CA_CERT, CA_KEY, Issued, init_ca, issue, load_ca
from meshnode.trust._challenge import ChallengeRefused, ChallengeWatch
from meshnode.trust._errors import BadClaim, TlsError, Unauthorized
from meshnode.trust._monitor import TrustMonitor, evidence_to_proto
from meshnode.trust._privacy import HASH_PREFIX, PrivacyPolicy
from meshnode.trust._score import DEFAULT_WEIGHTS, Blame, NodeTrust, ScoreConfig, TrustState
from meshnode.trust._service import SignedRequestInterceptor, TrustServicer, add_trust_servicer
from meshnode.trust._tls import TlsMaterial, channel_credentials, load_material, server_credentials
from meshnode.trust._validate import (
    MAX_UDP_PAYLOAD,
    CrossValidator,
    EndpointClaim,
    Evidence,
    FlowKey,
    PeriodClaims,
    Severity,
    ValidationConfig,
    ValidationReport,
    claim_from_proto,
    claims_from_digest,
    compare_bound,
    compare_final,
    overlaps,
)
from meshnode.trust._wiring import LIE_ENV, TRUST_SERVICE, Lie, MeshTrust, apply_lie, filter_published

__all__ = [
    "AUTH_METADATA_KEY",
    "AUTH_REASONS",
    "CA_CERT",
    "CA_KEY",
    "DEFAULT_WEIGHTS",
    "GRPC_CODE",
    "HASH_PREFIX",
    "LIE_ENV",
    "MAX_UDP_PAYLOAD",
    "TRUST_SERVICE",
    "Authorizer",
    "BadClaim",
    "Blame",
    "ChallengeRefused",
    "ChallengeWatch",
    "CrossValidator",
    "EndpointClaim",
    "Evidence",
    "FlowKey",
    "Issued",
    "Lie",
    "MeshTrust",
    "NodeTrust",
    "PeriodClaims",
    "PrivacyPolicy",
    "ScoreConfig",
    "Severity",
    "SignedRequestInterceptor",
    "TlsError",
    "TlsMaterial",
    "TrustMonitor",
    "TrustServicer",
    "TrustState",
    "Unauthorized",
    "ValidationConfig",
    "ValidationReport",
    "add_trust_servicer",
    "apply_lie",
    "auth_metadata",
    "channel_credentials",
    "claim_from_proto",
    "claims_from_digest",
    "compare_bound",
    "compare_final",
    "evidence_to_proto",
    "filter_published",
    "init_ca",
    "issue",
    "load_ca",
    "load_material",
    "overlaps",
    "request_payload",
    "server_credentials",
    "sign_request",
    "signed_bytes",
]
