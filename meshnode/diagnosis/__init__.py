"""Diagnosis (issue 8): who is to blame, how this host compares with its peers, what changed, and why.

Modules (internal, re-exported here):

    _transaction  Transaction (the unit of blame), Place, adapters from FlowRecords and digest rollups
    _blame        distributed blame allocation (pure): blame, entities, BlameConfig, the rule's thresholds
    _change       change detection per entity (pure CUSUM): where the current regime, which blame analyses, begins
    _compare      comparative analysis (pure): compare, PeerSample, samples_from_flows
    _anomaly      anomalies from the node's own history: AnomalyDetector, Anomaly (-> ``anomaly`` events)
    _taxonomy     seed 004's failure taxonomy (pure): discovery chatter, retries vs outage inertia
    _servicer     meshnode.v1.Diagnosis: DiagnosisServicer over a DiagnosisSource; MemorySource
    _source       NodeSource: the running node's source (its periods, held peer digests; bounded)
    _history      rebuild at start: own periods, anomaly baselines (hourly too) from the store, digests from DigestLog
    _resolvers    failing DNS resolvers as suspects, from the node's stored DNS transactions (pure)

In the node (``meshnode.daemon._services.DiagnosisRunner``)::

    source = NodeSource(labels, addresses=published_addresses, period_ns=export_period_ns,
                        dns=store_dns(store))
    detector = AnomalyDetector()                       # hour-of-day aware (AnomalyConfig.seasonal)
    rebuild(store, source, detector, now_ns=now, digests=DigestLog.in_dir(data_dir))  # before listeners
    service_name = add_to_server(DiagnosisServicer(source), server)   # list it in server reflection
    mesh.digest_listeners.append(source.on_digest)     # every verified peer digest (and its place), logged
    # each period: source.add_period(end_ns, records)
    #              events += [a.to_event() for a in detector.observe(end_ns, p.by_destination, p.by_process)]
    #              store.record_hour_baselines(h.to_row() for h in detector.take_rolled())
"""

from meshnode.diagnosis._anomaly import (
    ANOMALY_METRICS,
    MIN_SEASON_DAYS,
    SEASON_DAYS,
    Anomaly,
    AnomalyConfig,
    AnomalyDetector,
    AnomalyMetric,
    Baseline,
    HourBaseline,
    baseline,
    deviation,
    metric_values,
)
from meshnode.diagnosis._blame import (
    ENTITY_KINDS,
    LEVELS,
    MAX_SUSPECTS,
    MIN_PART_TRANSACTIONS,
    MIN_PROBLEMS,
    MIN_TRANSACTIONS,
    PART_THRESHOLD_RATIO,
    PROBLEM_THRESHOLD,
    SPREAD_FRACTION,
    TIE_BAND,
    BlameConfig,
    BlameReport,
    EntityStats,
    Suspect,
    blame,
    entities,
    entity_counts,
    healthy_verdict,
    verdict_of,
)
from meshnode.diagnosis._change import DEFAULT_H, Change, changes, hypotheses, latest_changes, llr, regime_start
from meshnode.diagnosis._compare import (
    METRICS,
    Comparison,
    Metric,
    MetricComparison,
    PeerSample,
    compare,
    samples_from_flows,
)
from meshnode.diagnosis._history import DigestLog, Rebuilt, rebuild
from meshnode.diagnosis._resolvers import RESOLVER, resolver_suspects, resolver_verdict, with_resolvers
from meshnode.diagnosis._servicer import (
    DEFAULT_RANGE_NS,
    DIAGNOSIS_SERVICE,
    DiagnosisServicer,
    DiagnosisSource,
    MemorySource,
    add_to_server,
    blame_pb,
    compare_pb,
    coverage_note,
    current_regime,
)
from meshnode.diagnosis._source import (
    DIGEST_PROCESS_DESTINATIONS,
    DIGEST_PROCESSES,
    HORIZON_NS,
    ClientView,
    NodeSource,
    client_kinds,
    client_transactions,
    decorate_digest,
    digest_processes,
    store_dns,
)
from meshnode.diagnosis._taxonomy import (
    DISCOVERY_PORTS,
    MAX_ATTEMPTS_PER_OUTAGE,
    DiscoveryChatter,
    Outage,
    RetryAdvice,
    backoff_attempts,
    classify,
    discovery_chatter,
    discovery_protocol,
    is_discovery,
    outages,
    retry_advice,
    split_discovery,
)
from meshnode.diagnosis._transaction import (
    PROBLEM_KINDS,
    FiveTuple,
    Place,
    Transaction,
    split_destination,
    transactions_from_flows,
    transactions_from_rollups,
)
from meshnode.summary._problems import (
    CONNECT_PENDING,
    PENDING_CONNECT_US,
    RETRANSMIT_RATE,
    SLOW_CONNECT_US,
    pending_connect,
    problem_kind,
)

__all__ = [
    "ANOMALY_METRICS",
    "CONNECT_PENDING",
    "DEFAULT_H",
    "DEFAULT_RANGE_NS",
    "DIAGNOSIS_SERVICE",
    "DIGEST_PROCESSES",
    "DIGEST_PROCESS_DESTINATIONS",
    "DISCOVERY_PORTS",
    "ENTITY_KINDS",
    "HORIZON_NS",
    "LEVELS",
    "MAX_ATTEMPTS_PER_OUTAGE",
    "MAX_SUSPECTS",
    "METRICS",
    "MIN_PART_TRANSACTIONS",
    "MIN_PROBLEMS",
    "MIN_SEASON_DAYS",
    "MIN_TRANSACTIONS",
    "PART_THRESHOLD_RATIO",
    "PENDING_CONNECT_US",
    "PROBLEM_KINDS",
    "PROBLEM_THRESHOLD",
    "RESOLVER",
    "RETRANSMIT_RATE",
    "SEASON_DAYS",
    "SLOW_CONNECT_US",
    "SPREAD_FRACTION",
    "TIE_BAND",
    "Anomaly",
    "AnomalyConfig",
    "AnomalyDetector",
    "AnomalyMetric",
    "Baseline",
    "BlameConfig",
    "BlameReport",
    "Change",
    "ClientView",
    "Comparison",
    "DiagnosisServicer",
    "DiagnosisSource",
    "DigestLog",
    "DiscoveryChatter",
    "EntityStats",
    "FiveTuple",
    "HourBaseline",
    "MemorySource",
    "Metric",
    "MetricComparison",
    "NodeSource",
    "Outage",
    "PeerSample",
    "Place",
    "Rebuilt",
    "RetryAdvice",
    "Suspect",
    "Transaction",
    "add_to_server",
    "backoff_attempts",
    "baseline",
    "blame",
    "blame_pb",
    "changes",
    "classify",
    "client_kinds",
    "client_transactions",
    "compare",
    "compare_pb",
    "coverage_note",
    "current_regime",
    "decorate_digest",
    "deviation",
    "digest_processes",
    "discovery_chatter",
    "discovery_protocol",
    "entities",
    "entity_counts",
    "healthy_verdict",
    "hypotheses",
    "is_discovery",
    "latest_changes",
    "llr",
    "metric_values",
    "outages",
    "pending_connect",
    "problem_kind",
    "rebuild",
    "regime_start",
    "resolver_suspects",
    "resolver_verdict",
    "retry_advice",
    "samples_from_flows",
    "split_destination",
    "split_discovery",
    "store_dns",
    "transactions_from_flows",
    "transactions_from_rollups",
    "verdict_of",
    "with_resolvers",
]
