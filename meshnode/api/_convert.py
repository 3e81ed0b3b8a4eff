"""Plain data (summaries, health rows, events) → ``meshnode.v1`` messages."""

from __future__ import annotations

from collections.abc import Mapping

from google.protobuf import wrappers_pb2

from meshnode._dns import DnsBatch
from meshnode.health import HealthRow, PathMtu, ResolverHealth, RetryPattern, ScanPattern
from meshnode.sensor import EventRecord
from meshnode.summary import PeriodSummary, Rollup, WindowRollup, WindowRollups, quantile_us
from meshnode.v1 import flow_pb2, observer_pb2

_EVENT_TYPE_NAMES = frozenset(flow_pb2.EventType.keys())
_COMPLETENESS_FIELDS = frozenset(f.name for f in flow_pb2.Completeness.DESCRIPTOR.fields)


def completeness_pb(counters: Mapping[str, int]) -> flow_pb2.Completeness:
    """Known counters into ``Completeness`` (unknown names are ignored, so newer sensors do not break us)."""
    return flow_pb2.Completeness(**{k: int(v) for k, v in counters.items() if k in _COMPLETENESS_FIELDS})


def rollup_pb(r: Rollup) -> flow_pb2.Rollup:
    """A ``Rollup`` message."""
    return flow_pb2.Rollup(
        key=r.key, flows=r.flows, useful=r.useful, failures=r.failures, bytes_tx=r.bytes_tx,
        bytes_rx=r.bytes_rx, retransmits=r.retransmits, rtt_p50_us=r.rtt_p50_us, rtt_p95_us=r.rtt_p95_us,
        service=r.service, flows_retransmitting=r.flows_retransmitting, flows_slow_connect=r.flows_slow_connect,
        throughput_p50_bps=r.throughput_p50_bps, throughput_p05_bps=r.throughput_p05_bps,
        responses=r.responses, response_us_sum=r.response_us_sum, response_us_max=r.response_us_max,
        response_hist=r.response_hist, first_byte_hist=r.first_byte_hist, connect_hist=r.connect_hist,
        flows_slow_path=r.flows_slow_path, flows_slow_server=r.flows_slow_server,
        response_p50_us=quantile_us(r.response_hist, 0.5), response_p95_us=quantile_us(r.response_hist, 0.95),
        remote_name=r.remote_name,
    )


def period_pb(s: PeriodSummary) -> flow_pb2.PeriodSummary:
    """A ``PeriodSummary`` message."""
    return flow_pb2.PeriodSummary(
        node_id=s.node_id, period_start_ns=s.period_start_ns, period_end_ns=s.period_end_ns, seq=s.seq,
        by_process=[rollup_pb(r) for r in s.by_process],
        by_destination=[rollup_pb(r) for r in s.by_destination],
        by_cgroup=[rollup_pb(r) for r in s.by_cgroup],
        by_service=[rollup_pb(r) for r in s.by_service],
        completeness=completeness_pb(s.completeness), final_flows=s.final_flows,
        interim_flows=s.interim_flows, incomplete=s.incomplete,
    )


def window_rollup_pb(w: WindowRollup) -> flow_pb2.WindowRollup:
    """A ``WindowRollup`` message."""
    return flow_pb2.WindowRollup(totals=rollup_pb(w.totals), flows=w.flows, failures=w.failures,
                                 retransmits=w.retransmits)


def rollups_pb(w: WindowRollups, since_ns: int, until_ns: int) -> observer_pb2.RollupsResponse:
    """A ``RollupsResponse`` for the window ``[since_ns, until_ns]``."""
    return observer_pb2.RollupsResponse(
        periods=[flow_pb2.PeriodSpan(seq=p.seq, start_ns=p.start_ns, end_ns=p.end_ns, incomplete=p.incomplete)
                 for p in w.periods],
        by_process=[window_rollup_pb(r) for r in w.by_process],
        by_destination=[window_rollup_pb(r) for r in w.by_destination],
        by_service=[window_rollup_pb(r) for r in w.by_service],
        by_cgroup=[window_rollup_pb(r) for r in w.by_cgroup],
        by_process_omitted=w.omitted.get("by_process", 0),
        by_destination_omitted=w.omitted.get("by_destination", 0),
        by_service_omitted=w.omitted.get("by_service", 0),
        by_cgroup_omitted=w.omitted.get("by_cgroup", 0),
        since_ns=since_ns, until_ns=until_ns,
    )


def health_row_pb(h: HealthRow) -> flow_pb2.HealthRow:
    """A ``HealthRow`` message; ``useful_fraction`` stays unset without attempts."""
    msg = flow_pb2.HealthRow(
        scope=h.scope, key=h.key, attempts=h.attempts, useful=h.useful, failures=h.failures
    )
    frac = h.useful_fraction
    if frac is not None:
        msg.useful_fraction.CopyFrom(wrappers_pb2.DoubleValue(value=frac))
    return msg


def retry_pb(p: RetryPattern) -> flow_pb2.RetryPattern:
    """A ``RetryPattern`` message."""
    return flow_pb2.RetryPattern(
        comm=p.comm, pid=p.pid, destination=p.destination, failures=p.failures,
        interval_p50_ms=p.interval_p50_ms, interval_min_ms=p.interval_min_ms,
        interval_max_ms=p.interval_max_ms, first_ns=p.first_ns, last_ns=p.last_ns,
    )


def path_mtu_pb(p: PathMtu) -> observer_pb2.PathMtu:
    """A ``PathMtu`` message."""
    return observer_pb2.PathMtu(destination=p.destination, mtu=p.mtu, flows=p.flows, errors=p.errors)


def scan_pb(s: ScanPattern) -> flow_pb2.ScanPattern:
    """A ``ScanPattern`` message."""
    return flow_pb2.ScanPattern(src=s.src, ports=s.ports, failures=s.failures)


def event_pb(ev: EventRecord) -> flow_pb2.Event:
    """An ``Event`` message (an unknown event type goes out as EVENT_TYPE_UNKNOWN)."""
    etype = ev.type.upper()
    if etype not in _EVENT_TYPE_NAMES:
        etype = "EVENT_TYPE_UNKNOWN"
    return flow_pb2.Event(type=etype, time_ns=ev.time_ns, flow=ev.flow.to_proto(), value=ev.value,
                          detail=ev.detail)


def dns_pbs(dns: DnsBatch) -> list[flow_pb2.DnsTransaction]:
    """``DnsTransaction`` messages of a batch, in its order."""
    return [flow_pb2.DnsTransaction(**row) for row in dns.rows()]


def resolver_pb(r: ResolverHealth) -> flow_pb2.ResolverHealth:
    """A ``ResolverHealth`` message."""
    return flow_pb2.ResolverHealth(resolver=r.resolver, queries=r.queries, failed=r.failed, failures=r.failures,
                                   latency_p50_us=r.latency_p50_us, latency_p95_us=r.latency_p95_us,
                                   names=r.names)
