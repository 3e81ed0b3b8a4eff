"""The Prometheus families per service and per process, their top-K folding, and the mesh and trust families."""

from __future__ import annotations

import re
from collections.abc import Sequence

from prometheus_client import CollectorRegistry, generate_latest

from meshnode._batch import FlowBatch
from meshnode._model import FlowRecord
from meshnode.metrics import OTHER, FlowFamilies, MeshView, NodeMetrics, StateCollector, TrustView, default_dimensions
from meshnode.summary import PeriodBuilder, PeriodFlows
from tests.unit._flows import flow


def _period(builder: PeriodBuilder, finals: Sequence[FlowRecord], interims: Sequence[FlowRecord] = ()) -> PeriodFlows:
    builder.build(1, 0, 1, FlowBatch.from_records(finals), FlowBatch.from_records(interims), {})
    return builder.last_flows


def _text(families: FlowFamilies | StateCollector) -> str:
    registry = CollectorRegistry()
    registry.register(families)
    return generate_latest(registry).decode()


def _key(labels: str) -> str:
    """Labels text with the labels in name order (the writer's order), so that tests can name them in any."""
    return ",".join(sorted(re.findall(r'[a-z_]+="[^"]*"', labels)))


class _Samples(dict[str, float]):
    """``{labels text: value}`` whose lookups and comparisons take the labels in any order."""

    def __getitem__(self, labels: str) -> float:
        return super().__getitem__(_key(labels))

    def __contains__(self, labels: object) -> bool:
        return super().__contains__(_key(str(labels)))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, dict) and dict(self) == {_key(k): v for k, v in other.items()}

    __hash__ = None  # type: ignore[assignment]


def _samples(text: str, name: str) -> _Samples:
    """The samples of one sample name, by labels text (e.g. ``service="https"``)."""
    out = _Samples()
    for line in text.splitlines():
        m = re.fullmatch(re.escape(name) + r"(?:\{(.*)\})? (\S+)", line)
        if m:
            dict.__setitem__(out, _key(m.group(1) or ""), float(m.group(2)))
    return out


def test_service_families_count_each_flow_once_with_exact_values() -> None:
    fam = FlowFamilies()
    b = PeriodBuilder()
    fam.observe(_period(b, [
        flow(1, service="https", connect_us=300, srtt_us=800),
        flow(2, service="https", connect_us=2_000, srtt_us=40_000, retransmits=3, bytes_tx=50, bytes_rx=70),
        flow(3, dport=5432, service="postgresql", outcome="refused", bytes_tx=0, bytes_rx=0, srtt_us=0),
        flow(4, dport=53, proto="udp", service="domain", outcome="udp_unanswered", bytes_tx=40, bytes_rx=0,
             srtt_us=0),
        flow(5, direction="inbound", src="10.0.0.1", sport=8080, dst="10.0.0.9", dport=51000, comm="api",
             connect_us=100, srtt_us=100),
    ]))
    text = _text(fam)
    conns = _samples(text, "meshnode_service_connections_total")
    assert conns == {
        'flow_direction="inbound",service="8080",network_transport="tcp"': 1.0,  # an unnamed port: its number
        'flow_direction="outbound",service="domain",network_transport="udp"': 1.0,
        'flow_direction="outbound",service="https",network_transport="tcp"': 2.0,
        'flow_direction="outbound",service="postgresql",network_transport="tcp"': 1.0,
    }
    assert _samples(text, "meshnode_service_connection_failures_total") == {
        'flow_direction="outbound",service="domain",network_transport="udp",outcome="udp_unanswered"': 1.0,
        'flow_direction="outbound",service="postgresql",network_transport="tcp",outcome="refused"': 1.0,
    }
    by = _samples(text, "meshnode_service_bytes_total")
    assert by['flow_direction="outbound",service="https",network_transport="tcp",network_io_direction="transmit"'] \
        == 150.0
    assert by['flow_direction="outbound",service="https",network_transport="tcp",network_io_direction="receive"'] \
        == 2070.0
    assert by['flow_direction="outbound",service="domain",network_transport="udp",network_io_direction="transmit"'] \
        == 40.0
    assert not any("postgresql" in k for k in by)  # nothing moved: no series
    assert _samples(text, "meshnode_service_retransmits_total") == {'flow_direction="outbound",service="https"': 3.0}
    rtt = _samples(text, "meshnode_service_rtt_seconds_bucket")
    https = 'flow_direction="outbound",service="https"'
    assert rtt[f'{https},le="0.0005"'] == 0.0
    assert rtt[f'{https},le="0.001"'] == 1.0  # 800 us
    assert rtt[f'{https},le="0.025"'] == 1.0
    assert rtt[f'{https},le="0.05"'] == 2.0  # 40 ms
    assert rtt[f'{https},le="+Inf"'] == 2.0
    assert _samples(text, "meshnode_service_rtt_seconds_sum")[https] == 0.0408
    assert _samples(text, "meshnode_service_rtt_seconds_count")[https] == 2.0
    connect = _samples(text, "meshnode_service_connect_seconds_bucket")
    assert connect[f'{https},le="0.00025"'] == 0.0
    assert connect[f'{https},le="0.0005"'] == 1.0
    assert connect[f'{https},le="0.0025"'] == 2.0
    assert connect['flow_direction="inbound",service="8080",le="0.0001"'] == 1.0  # on the bound: in it
    assert 'service="postgresql"' not in "".join(connect)  # refused: no handshake time
    # the process dimension sees the same flows by process name
    assert _samples(text, "meshnode_process_connections_total") == {
        'process="api",flow_direction="inbound",network_transport="tcp"': 1.0,
        'process="curl",flow_direction="outbound",network_transport="tcp"': 3.0,
        'process="curl",flow_direction="outbound",network_transport="udp"': 1.0,
    }
    assert _samples(text, "meshnode_metrics_folded_total") == {'dimension="service"': 0.0, 'dimension="process"': 0.0}


def test_long_flow_counts_once_its_bytes_per_period_and_its_rtt_each_period() -> None:
    fam = FlowFamilies()
    b = PeriodBuilder()
    syn = flow(7, outcome="in_progress", service="https", bytes_tx=0, bytes_rx=0, srtt_us=0)
    fam.observe(_period(b, [], [syn]))  # handshake not done: not counted yet
    text = _text(fam)
    assert _samples(text, "meshnode_service_connections_total") == {}
    up = syn.replace(outcome="established", bytes_tx=1000, bytes_rx=10, srtt_us=500, connect_us=900)
    fam.observe(_period(b, [], [up]))
    fam.observe(_period(b, [], [up.replace(bytes_tx=1500)]))
    fam.observe(_period(b, [up.replace(bytes_tx=1600, kind="final")]))
    text = _text(fam)
    https = 'flow_direction="outbound",service="https"'
    assert _samples(text, "meshnode_service_connections_total") == {f'{https},network_transport="tcp"': 1.0}
    assert _samples(text, "meshnode_service_bytes_total")[f'{https},network_transport="tcp",'
                                                          'network_io_direction="transmit"'] == 1600.0
    assert _samples(text, "meshnode_service_rtt_seconds_count")[https] == 3.0  # three periods it was seen in
    assert _samples(text, "meshnode_service_connect_seconds_count")[https] == 1.0
    # a UDP flow counts when it ends: its answer may still come
    dns = flow(8, proto="udp", dport=53, service="domain", outcome="udp_unanswered", srtt_us=0)
    fam.observe(_period(b, [], [dns]))
    assert "domain" not in "".join(_samples(_text(fam), "meshnode_service_connections_total"))
    fam.observe(_period(b, [dns.replace(outcome="udp_answered")]))
    text = _text(fam)
    assert _samples(text, "meshnode_service_connections_total")[
        'flow_direction="outbound",service="domain",network_transport="udp"'] == 1.0
    assert "domain" not in "".join(_samples(text, "meshnode_service_connection_failures_total"))


def _by_comm(flows: dict[str, int], first_id: int) -> list[FlowRecord]:
    return [flow(first_id + i, comm=comm, pid=1000 + i, bytes_tx=n, bytes_rx=0)
            for i, (comm, n) in enumerate(flows.items())]


def test_processes_fold_into_other_beyond_top_k_and_count_what_was_folded() -> None:
    fam = FlowFamilies(default_dimensions(top_services=30, top_processes=2))
    b = PeriodBuilder()
    fam.observe(_period(b, _by_comm({"nginx": 900, "postgres": 500, "cron": 10, "sshd": 20, "curl": 30}, 1)))
    text = _text(fam)
    tx = 'flow_direction="outbound",network_transport="tcp",network_io_direction="transmit"'
    assert _samples(text, "meshnode_process_bytes_total") == {
        f'process="nginx",{tx}': 900.0, f'process="postgres",{tx}': 500.0, f'process="{OTHER}",{tx}': 60.0,
    }
    assert _samples(text, "meshnode_process_connections_total")[
        f'process="{OTHER}",flow_direction="outbound",network_transport="tcp"'] == 3.0
    assert _samples(text, "meshnode_metrics_folded_total")['dimension="process"'] == 3.0
    assert fam.series("process") == 2
    # postgres is quiet, java arrives busy: java takes postgres's place and postgres's series go
    fam.observe(_period(b, _by_comm({"nginx": 100, "java": 5000, "cron": 1}, 100)))
    text = _text(fam)
    assert _samples(text, "meshnode_process_bytes_total") == {
        f'process="nginx",{tx}': 1000.0, f'process="java",{tx}': 5000.0, f'process="{OTHER}",{tx}': 61.0,
    }
    assert _samples(text, "meshnode_metrics_folded_total")['dimension="process"'] == 4.0
    assert _samples(text, "meshnode_metrics_label_values")['dimension="process"'] == 2.0
    # an idle period keeps what is kept (ties go to the values already kept)
    fam.observe(_period(b, _by_comm({"cron": 0}, 200)))
    assert fam.series("process") == 2
    assert 'process="java"' in _text(fam)


def test_top_zero_puts_everything_in_other() -> None:
    fam = FlowFamilies(default_dimensions(top_services=0, top_processes=0))
    fam.observe(_period(PeriodBuilder(), [flow(1, service="https"), flow(2, comm="wget", service="https")]))
    text = _text(fam)
    assert _samples(text, "meshnode_service_connections_total") == {
        f'flow_direction="outbound",service="{OTHER}",network_transport="tcp"': 2.0}
    assert _samples(text, "meshnode_process_connections_total") == {
        f'process="{OTHER}",flow_direction="outbound",network_transport="tcp"': 2.0}
    assert _samples(text, "meshnode_metrics_folded_total") == {'dimension="service"': 1.0, 'dimension="process"': 2.0}


def test_ten_thousand_destinations_on_many_ports_stay_within_top_k_series() -> None:
    top = 5
    fam = FlowFamilies(default_dimensions(top_services=top, top_processes=3))
    b = PeriodBuilder()
    flows = [flow(i + 1, dst=f"127.{1 + i // 65536}.{i // 256 % 256}.{i % 256}", dport=50000 + i % 300,
                  comm=f"worker{i % 50}", bytes_tx=1 + i % 300)
             for i in range(10_000)]
    fam.observe(_period(b, flows))
    text = _text(fam)
    services = {k for k in _samples(text, "meshnode_service_connections_total")}
    assert len(services) == top + 1
    # the busiest ports (bytes 300, 299, ... by construction: port 50000 + k carries 1 + k bytes per flow)
    assert {re.search(r'service="([^"]+)"', k).group(1) for k in services} == {  # type: ignore[union-attr]
        *(str(50000 + k) for k in range(295, 300)), OTHER}
    assert sum(_samples(text, "meshnode_service_connections_total").values()) == 10_000.0
    assert _samples(text, "meshnode_metrics_folded_total")['dimension="service"'] == 295.0
    processes = {re.search(r'process="([^"]+)"', k).group(1)  # type: ignore[union-attr]
                 for k in _samples(text, "meshnode_process_connections_total")}
    assert len(processes) == 4 and OTHER in processes
    # no family of either dimension has more series than the kept values allow
    for line in text.splitlines():
        assert "127." not in line  # no remote address is ever a label


def test_node_metrics_reject_a_negative_top() -> None:
    try:
        NodeMetrics(top_processes=-1)
    except ValueError as exc:
        assert "process" in str(exc) and "-1" in str(exc)
    else:
        raise AssertionError("a negative top-K was accepted")


def test_mesh_families_split_digests_by_reason_and_keep_every_counter() -> None:
    st = StateCollector()
    assert _text(st) == ""  # no mesh: no mesh families
    st.set_mesh(MeshView(
        members={"alive": 3, "dead": 1},
        counters={"digests_accepted": 40, "digests_published": 12, "digests_bad_signature": 2, "digests_stale": 5,
                  "digests_evicted": 1, "digests_history_filled": 3, "members_refused_table_full": 7,
                  "gossip_refused_unbound": 1, "packet_bytes_sent": 9000, "stream_bytes_sent": 4000,
                  "declared_dead": 1},
        health_score=2, digests_held=8,
    ))
    text = _text(st)
    assert _samples(text, "meshnode_mesh_members") == {
        'state="alive"': 3.0, 'state="suspect"': 0.0, 'state="dead"': 1.0, 'state="left"': 0.0}
    assert _samples(text, "meshnode_mesh_digests_accepted_total") == {"": 40.0}
    assert _samples(text, "meshnode_mesh_digests_published_total") == {"": 12.0}
    assert _samples(text, "meshnode_mesh_digests_refused_total") == {
        'reason="bad_signature"': 2.0, 'reason="stale"': 5.0}
    assert _samples(text, "meshnode_mesh_sent_bytes_total") == {'kind="packet"': 9000.0, 'kind="stream"': 4000.0}
    assert _samples(text, "meshnode_mesh_events_total") == {
        'event="declared_dead"': 1.0, 'event="digests_evicted"': 1.0, 'event="digests_history_filled"': 3.0,
        'event="gossip_refused_unbound"': 1.0, 'event="members_refused_table_full"': 7.0}
    assert _samples(text, "meshnode_mesh_health_score") == {"": 2.0}
    assert _samples(text, "meshnode_mesh_digests_held") == {"": 8.0}


def test_trust_families_list_the_lowest_scores_and_count_the_rest() -> None:
    st = StateCollector()
    scores = [(f"node{i:02d}", 0.9 + i / 1000, False) for i in range(30)] + [("liar", 0.2, True)]
    st.set_trust(TrustView(scores=scores, threshold=0.5, counters={"digests_validated": 17, "challenges_failed": 1}))
    text = _text(st)
    assert _samples(text, "meshnode_trust_flagged_nodes") == {"": 1.0}
    assert _samples(text, "meshnode_trust_scored_nodes") == {"": 31.0}
    assert _samples(text, "meshnode_trust_score_threshold") == {"": 0.5}
    listed = _samples(text, "meshnode_trust_score")
    assert len(listed) == 20 and listed['node_id="liar"'] == 0.2 and 'node_id="node19"' not in listed
    assert listed['node_id="node18"'] == 0.918
    assert _samples(text, "meshnode_trust_flagged") ['node_id="liar"'] == 1.0
    assert _samples(text, "meshnode_trust_flagged")['node_id="node00"'] == 0.0
    assert _samples(text, "meshnode_trust_scores_unlisted") == {"": 11.0}
    assert _samples(text, "meshnode_trust_events_total") == {
        'event="challenges_failed"': 1.0, 'event="digests_validated"': 17.0}


def test_node_metrics_serve_process_cpu_and_rss() -> None:
    text = generate_latest(NodeMetrics().registry).decode()
    cpu = _samples(text, "process_cpu_seconds_total")[""]
    rss = _samples(text, "process_resident_memory_bytes")[""]
    assert cpu > 0 and rss > 10_000_000  # this Python process: some CPU, tens of MB
