"""The seam where optional node services plug into ``meshnode run``: the mesh, diagnosis beside it, and the
exporters.

``extra_services(node)`` returns services started after the built-in ones (gRPC API, metrics, address
watcher) and stopped before them. A service implements ``meshnode.daemon.Service``: ``name``,
``async start()``, ``async stop()``.

The mesh shares the node's gRPC port (``meshnode.v1.Mesh`` beside ``Observer``), signs each closed
period's summary with the node's Ed25519 key (``<data_dir>/node.key``, created on first start, mode 0600; under
TLS the key the node's certificate binds, ``NAME.node.key`` beside it when ``meshnode ca issue`` made it),
and joins the ``--join`` seeds. Its address for peers is the node's listen address; when that is a wildcard
(``0.0.0.0``), the local address that routes to the first seed (or the host name's address).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import ipaddress
import logging
import socket
from typing import TYPE_CHECKING

from meshnode.daemon._addresses import local_addresses
from meshnode.daemon._security import node_key_path

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    import grpc
    from prometheus_client import Metric

    from meshnode._model import FlowRecord
    from meshnode.daemon._node import Node, Service
    from meshnode.mesh import MeshService
    from meshnode.metrics import MeshView, TrustView
    from meshnode.summary import PeriodSummary
    from meshnode.trust import MeshTrust, PrivacyPolicy
    from meshnode.v1 import mesh_pb2

log = logging.getLogger(__name__)


def extra_services(node: Node) -> list[Service]:
    """The mesh and diagnosis, on the node's own gRPC port; the OTLP exporter when ``otlp`` is set."""
    mesh = MeshRunner(node)
    trust = attach_trust(node, mesh.mesh)
    return [mesh, DiagnosisRunner(node, mesh.mesh, privacy=trust.policy), *exporters(node)]


def exporters(node: Node) -> list[Service]:
    """The configured exporters (ClickHouse, OTLP), each a record listener with its status in Status and its
    counters on the node's Prometheus endpoint. Made after the mesh, whose key gives the node its id."""
    from meshnode.export import ClickHouseExporter, OtlpExporter, parse_clickhouse_url, register_exporter

    cfg = node.config
    found: list[Service] = []
    if cfg.clickhouse:
        exporter = ClickHouseExporter(parse_clickhouse_url(cfg.clickhouse), cfg.data_dir / "export" / "clickhouse",
                                      cfg.clickhouse_spool, node_id=lambda: node.mesh_node_id or cfg.node_id,
                                      host=cfg.node_id)
        node.record_listeners.append(exporter.on_period)
        node.exporters.append(exporter.status)
        register_exporter(node.metrics.registry, exporter.status)
        found.append(exporter)
    if cfg.otlp:
        otlp = OtlpExporter(cfg.otlp, node_id=node.mesh_node_id or cfg.node_id, host=cfg.node_id,
                            labels=cfg.labels, timeout=cfg.otlp_timeout)
        node.record_listeners.append(otlp.on_period)
        node.exporters.append(otlp.status)
        otlp.register_metrics(node.metrics.registry)
        found.append(otlp)
    return found


class MeshRunner:
    """Builds the mesh when the node's API is bound (its port is only known then) and runs it."""

    name = "mesh"

    def __init__(self, node: Node) -> None:
        from meshnode.mesh import (
            MESH_SERVICE,
            Ledger,
            MeshConfig,
            MeshService,
            NodeKey,
            Quota,
            SiteConfig,
            StoredMeasurements,
            TaskPolicy,
            parse_quotas,
        )

        cfg = node.config
        self._node = node
        key = NodeKey.load_or_create(node_key_path(cfg))
        labels = {"host": cfg.node_id, **cfg.labels}
        policy = TaskPolicy(enabled=cfg.active_tasks, deny=frozenset(cfg.task_deny), path_probes=cfg.active_tasks_path)
        ledger = Ledger(Quota(cfg.task_quota, cfg.query_quota), parse_quotas(cfg.peer_quotas))
        self.mesh: MeshService = MeshService(advertise=cfg.listen, key=key, labels=labels, seeds=list(cfg.join),
                                             export_period=cfg.export_period, task_policy=policy, ledger=ledger,
                                             config=MeshConfig(max_members=cfg.mesh_max_members),
                                             site_config=SiteConfig(aggregators=cfg.site_aggregators,
                                                                    period=cfg.export_period)
                                             if cfg.site_aggregators else None)
        self.mesh.results = StoredMeasurements(node.store)
        node.api.add_servicer(self.mesh.register, MESH_SERVICE)
        node.record_listeners.append(self.mesh.on_period)
        node.mesh_node_id = self.mesh.node_id
        from meshnode.api import StoreHistory

        self.mesh.history = StoreHistory(node.store, node.api.executor)  # members' fleet flow queries
        node.metrics.mesh_source = self.metrics_view
        self.mesh.addresses = published_addresses
        self.channel_credentials: grpc.ChannelCredentials | None = None
        """Peer channels' mutual-TLS credentials, and their interceptors (signing the fan-out); set by
        ``meshnode run`` (``meshnode.daemon._security``) before ``start``."""
        self.channel_interceptors: list[grpc.aio.ClientInterceptor] = []

    async def start(self) -> None:
        from meshnode.mesh._grpc_transport import GrpcTransport

        self.mesh.advertise = advertise_address(self._node.api.address, list(self._node.config.join))
        self.mesh.transport = GrpcTransport(self.mesh.advertise, packet_timeout=self.mesh.transport.packet_timeout,
                                            credentials=self.channel_credentials,
                                            interceptors=self.channel_interceptors)
        log.info("mesh: node %s advertising %s, joining %s", self.mesh.node_id, self.mesh.advertise,
                 ", ".join(self._node.config.join) or "nobody (first node)")
        await self.mesh.start()

    async def stop(self) -> None:
        await self.mesh.stop()

    def metrics_view(self) -> MeshView | None:
        """The mesh's state for the metrics (None before it started)."""
        from meshnode.metrics import MeshView

        if not self.mesh.running:
            return None
        ledger = self.mesh.ledger
        return MeshView(members=self.mesh.member_states(), counters=self.mesh.counter_totals(),
                        health_score=self.mesh.membership.awareness.score,
                        digests_held=len(self.mesh.exchange.history),
                        accounts=[(p, dataclasses.asdict(a)) for p, a, _ in ledger.accounts()],
                        accounts_evicted=ledger.evicted)


class DiagnosisRunner:
    """Diagnosis in the node (issue 8): ``meshnode.v1.Diagnosis`` over this node's periods and held digests,
    and anomalies of each period against the node's own history as ``anomaly`` events.

    Works without the mesh (``mesh=None``: blame over the local flows only); with it, every verified peer
    digest joins the source (``MeshService.digest_listeners``), and each digest this node publishes carries
    its client transactions per destination and its processes with problems, filtered by ``privacy`` (the
    policy trust's decorator applied to the digest before this one).
    """

    name = "diagnosis"

    def __init__(self, node: Node, mesh: MeshService | None = None, *, privacy: PrivacyPolicy | None = None) -> None:
        from meshnode.diagnosis import (
            DIAGNOSIS_SERVICE,
            AnomalyDetector,
            DiagnosisServicer,
            DigestLog,
            NodeSource,
            add_to_server,
            rebuild,
            store_dns,
        )

        self._node = node
        self._privacy = privacy
        self.source = NodeSource({"host": node.config.node_id, **node.config.labels},
                                 addresses=published_addresses,
                                 period_ns=int(node.config.export_period * 1_000_000_000),
                                 dns=store_dns(node.store))
        self.detector = AnomalyDetector()
        self.anomalies = 0
        self.baselines_failed = 0
        """Hourly baselines the store could not take (a restart would not have them)."""
        self.baselines_evicted = 0
        """Hourly baselines the store's bound removed (``MAX_HOUR_BASELINES``)."""
        self._writes: set[asyncio.Task[None]] = set()
        self.digest_log = DigestLog.in_dir(node.config.data_dir)
        # before any listener is attached: what the node held before a restart comes first, in order
        rebuilt = rebuild(node.store, self.source, self.detector, now_ns=node.clock(), digests=self.digest_log)
        if rebuilt.anomalies:
            # the store holds the anomaly events of every period but the last before a stop (they are found
            # after its write) and those of a store older than its events table: only those are pushed again
            self.anomalies += len(rebuilt.anomalies)
            held = {(e.time_ns, e.detail) for e in node.store.events(
                min(a.time_ns for a in rebuilt.anomalies), types=("anomaly",))}
            node.events.push([a.to_event() for a in rebuilt.anomalies if (a.time_ns, a.detail) not in held])
        log.info("diagnosis: rebuilt %d own periods, %d digests, %d anomalies and %d hourly baselines from the "
                 "store (%d older periods' flows over the budget left out)", rebuilt.periods, rebuilt.digests,
                 len(rebuilt.anomalies), rebuilt.hours, rebuilt.skipped)
        servicer = DiagnosisServicer(self.source, clock=node.clock, executor=node.api.executor)

        def register(server: grpc.aio.Server) -> None:
            add_to_server(servicer, server)

        node.api.add_servicer(register, DIAGNOSIS_SERVICE, guarded=True)
        node.record_listeners.append(self.on_period)
        node.metrics.registry.register(_DiagnosisCollector(self))
        if mesh is not None:
            mesh.digest_listeners.append(self.on_digest)
            mesh.digest_decorators.append(self.decorate)

    def on_digest(self, digest: mesh_pb2.Digest, signed: object, own: bool) -> None:
        """A digest listener: hold the digest for blame, and log it for the next start."""
        self.source.add_digest(digest, own=own)
        self.digest_log.append(digest, own)

    def decorate(self, digest: mesh_pb2.Digest, period: object, records: Sequence[FlowRecord]) -> None:
        """A digest decorator: the period's client transactions per destination (``Rollup.client_kinds``) and
        its processes with the most problems (``Digest.processes``)."""
        from meshnode.diagnosis import decorate_digest

        decorate_digest(digest, records, self._privacy, self.source.view)

    def on_period(self, summary: PeriodSummary, records: Sequence[FlowRecord]) -> None:
        """A record listener: hold the period for blame, and push its anomalies to the Events stream."""
        self.source.add_period(summary.period_end_ns, records)
        found = self.detector.observe(summary.period_end_ns, summary.by_destination, summary.by_process)
        if found:
            self.anomalies += len(found)
            self._node.events.push([a.to_event() for a in found])
            for a in found[:3]:
                log.info("anomaly: %s", a.detail)
        rolled = [h.to_row() for h in self.detector.take_rolled()]
        if rolled:  # once an hour: the hour's medians, for the next start (off the loop)
            task = asyncio.get_running_loop().create_task(self._keep_baselines(rolled))
            self._writes.add(task)
            task.add_done_callback(self._writes.discard)

    async def _keep_baselines(self, rows: list[tuple[int, str, str, str]]) -> None:
        try:
            self.baselines_evicted += await asyncio.to_thread(self._node.store.record_hour_baselines, rows)
        except Exception as exc:  # a full disk must not stop diagnosis; the next start misses these hours
            self.baselines_failed += len(rows)
            log.warning("diagnosis: cannot keep %d hourly baselines in the store: %s", len(rows), exc)

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        if self._writes:
            await asyncio.wait(set(self._writes))
        self.digest_log.close()


class _DiagnosisCollector:
    """``meshnode_diagnosis_*`` read from the runner at scrape time: the bounded things of diagnosis."""

    def __init__(self, runner: DiagnosisRunner) -> None:
        self._runner = runner

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        r, det = self._runner, self._runner.detector
        dropped = CounterMetricFamily(
            "meshnode_diagnosis_dropped", "What diagnosis's bounds dropped: hourly_keys (keys whose hour-of-day "
            "history went to keep the key bound), hours_untaken (hour rollups no one took), hours_unstored "
            "(hour rollups the store could not take), hours_evicted (by the store's row bound), "
            "digests_unstored (digests the digest log could not take).", labels=["what"])
        for what, n in (("hourly_keys", det.seasonal_evicted), ("hours_untaken", det.rolled_dropped),
                        ("hours_unstored", r.baselines_failed), ("hours_evicted", r.baselines_evicted),
                        ("digests_unstored", r.digest_log.failed)):
            dropped.add_metric([what], n)
        keys = GaugeMetricFamily("meshnode_anomaly_keys", "Destinations and processes with an anomaly baseline, "
                                 "by baseline: recent (the last periods) or hourly (hours of day).",
                                 labels=["baseline"])
        keys.add_metric(["recent"], det.keys())
        keys.add_metric(["hourly"], det.seasonal_keys())
        return [dropped, keys]


def attach_trust(node: Node, mesh: MeshService) -> MeshTrust:
    """Cross-validation in the node (issue 7): endpoint records and the privacy policy in every digest,
    every verified digest into a ``TrustMonitor`` judged each period (a record listener after the mesh's),
    flagged peers left out of fleet aggregates, and ``meshnode.v1.Trust`` on the node's gRPC port.

    Raises:
        ConfigError: the test-only ``MESHNODE_TEST_LIE`` fault without ``MESHNODE_ALLOW_FAKE_SENSOR=1``.
    """
    from meshnode.trust import TRUST_SERVICE, Lie, MeshTrust

    trust = MeshTrust(mesh, export_period=node.config.export_period, policy=node.config.privacy,
                      lie=Lie.from_env())
    trust.attach()
    node.api.add_servicer(trust.register, TRUST_SERVICE, guarded=True)
    node.record_listeners.append(trust.on_period)
    node.metrics.trust_source = functools.partial(trust_view, trust)
    if trust.lie is not None:
        log.warning("TEST FAULT: this node misreports its flows to %s (%s); never use outside tests",
                    trust.lie.peer, trust.lie.kind)
    return trust


def trust_view(trust: MeshTrust) -> TrustView | None:
    """Trust's state for the metrics (None before the mesh started)."""
    from meshnode.metrics import TrustView

    if not trust.mesh.running:
        return None
    monitor = trust.monitor
    return TrustView(scores=[(t.node_id, t.score, t.flagged) for t in monitor.trust.snapshot()],
                     threshold=monitor.trust.config.threshold,
                     counters=dict(monitor.validator.counters + monitor.counters))


def published_addresses() -> list[str]:
    """This host's addresses for its digest (peers map flow ends to members by them): no link-local ones."""
    return sorted(a for a in local_addresses() if not ipaddress.ip_address(a).is_link_local)


def advertise_address(listen: str, seeds: list[str]) -> str:
    """The address peers should use for this node: ``listen`` unless its host is a wildcard."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    try:
        wildcard = ipaddress.ip_address(host).is_unspecified
    except ValueError:
        wildcard = host in ("", "*")
    if not wildcard:
        return listen
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    local = ""
    for seed in seeds:
        seed_host = seed.rpartition(":")[0].strip("[]")
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as s:
                s.connect((seed_host, 9))  # UDP connect sends nothing; it only picks the route
                local = s.getsockname()[0]
                break
        except OSError:
            continue
    if not local:
        try:
            local = socket.gethostbyname(socket.gethostname())
        except OSError:
            local = "127.0.0.1"
    return f"[{local}]:{port}" if ":" in local else f"{local}:{port}"
