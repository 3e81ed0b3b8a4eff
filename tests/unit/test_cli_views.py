"""meshctl's views: rich renderables from plain data, compared as text at a fixed width of 80 columns."""

from __future__ import annotations

import textwrap

from meshnode.cli._convert import flow_dict, message_dict
from meshnode.cli._output import render_text
from meshnode.cli._views import events_table, flows_table, health_view, peers_view, process, query_view, status_view
from tests._support.fakenode import (
    sample_events,
    sample_flows,
    sample_health,
    sample_peers,
    sample_status,
)

BOX_CHARS = set("─│┌┐└┘├┤┬┴┼━═")


def _text(s: str) -> str:
    return textwrap.dedent(s).lstrip("\n")


def test_status_view() -> None:
    out = render_text(status_view(message_dict(sample_status()), plain=True), width=80)
    assert out == _text("""
        node     3f2a9c0d1e2b4a5f  meshnode 0.1.0, up 2h30m
        listen   127.0.0.1:7400  INSECURE: plaintext, no client certificates
        sensor   ebpf, exact fidelity (tracepoints and cgroup-skb available)
        scope    /lab
        export   every 10s, 900 periods closed
        flows    42 active
        store    1.2 MiB, 10,000 rows in /var/lib/meshnode
        labels   region=eu site=ams1
        lost     lost_events 3 · map_evictions 0 · ringbuf_overruns 0 · events_dropped 0
                 · unattributed_drops 0 · incomplete_periods 0 · dns_dropped 0
        counted  flows_recorded 12,345 · drained_rows 50,000 · store_evictions 0 ·
                 dns_malformed 0 · dns_truncated 0
        """)


def test_status_view_shows_each_exporter_and_its_trouble() -> None:
    from meshnode.v1 import observer_pb2

    st = sample_status()
    st.exporters.append(observer_pb2.ExporterStatus(
        name="clickhouse", target="clickhouse://10.0.0.9:9000/net",
        counters={"sent_batches": 12, "sent_rows": 3400, "queued_batches": 2, "queued_rows": 150,
                  "queued_bytes": 20480, "dropped_batches": 0, "dropped_rows": 0, "send_failures": 5},
        last_error="NetworkError: Code: 210. Connection refused (10.0.0.9:9000)"))
    out = render_text(status_view(message_dict(st), plain=True), width=80)
    lines = out.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("clickhouse"))
    assert lines[at - 1:at + 4] == [
        "labels      region=eu site=ams1",
        "clickhouse  clickhouse://10.0.0.9:9000/net  sent 12 batches (3,400 rows) ·",
        "            queued 2 batches (150 rows) 20 KiB on disk · dropped 0 · failing:",
        "            NetworkError: Code: 210. Connection refused (10.0.0.9:9000)",
        "lost        lost_events 3 · map_evictions 0 · ringbuf_overruns 0 ·",
    ]


def test_flows_table_fits_80_columns() -> None:
    out = render_text(flows_table([flow_dict(f) for f in sample_flows()], plain=True), width=80)
    assert out == _text("""
        TIME     PROCESS        DESTINATION           OUTCOME          TX      RX    RTT
        11:06:38 curl/4242      10.0.0.2:443          established 1.3 KiB 1.2 MiB  1.2ms
        11:06:38 fakeclient/777 10.0.0.9:8080         refused         0 B     0 B      -
        11:06:40 fakeclient/777 10.0.0.9:8080         timeout         0 B     0 B      -
        11:06:39 dig/99         10.0.0.53:53          udp ok         40 B   120 B      -
        11:06:40 nginx/1        10.0.0.7:51234        established  50 MiB 2.0 KiB 45.0ms
        """)
    assert max(len(line) for line in out.splitlines()) <= 80


def test_flows_table_on_a_terminal_has_a_header_rule_and_same_columns() -> None:
    rows = [flow_dict(f) for f in sample_flows()[:2]]
    out = render_text(flows_table(rows, plain=False), width=80, plain=False)
    assert out == _text("""
        TIME     PROCESS        DESTINATION           OUTCOME          TX      RX    RTT
        ────────────────────────────────────────────────────────────────────────────────
        11:06:38 curl/4242      10.0.0.2:443          established 1.3 KiB 1.2 MiB  1.2ms
        11:06:38 fakeclient/777 10.0.0.9:8080         refused         0 B     0 B      -
        """)


def test_plain_output_has_no_box_characters() -> None:
    rows = [flow_dict(f) for f in sample_flows()]
    for r in (flows_table(rows, plain=True), flows_table(rows, wide=True, plain=True),
              health_view(message_dict(sample_health()), plain=True),
              peers_view(message_dict(sample_peers()), plain=True)):
        assert not BOX_CHARS & set(render_text(r, width=200))


def test_flows_table_wide_adds_columns() -> None:
    out = render_text(flows_table([flow_dict(f) for f in sample_flows()], wide=True, plain=True), width=200)
    header, first = out.splitlines()[:2]
    assert header.split() == ["TIME", "PROCESS", "SOURCE", "DIR", "PROTO", "DESTINATION", "OUTCOME", "TX",
                              "RX", "RTT", "RETX", "DUR", "KIND", "SERVICE", "CGROUP"]
    assert first.split() == ["11:06:38", "curl/4242", "10.0.0.1:40001", "out", "tcp", "10.0.0.2:443",
                             "established", "1.3", "KiB", "1.2", "MiB", "1.2ms", "2", "1.0s", "final",
                             "https", "/lab/a"]


def test_flows_table_without_header_lines_up_with_the_first_batch() -> None:
    rows = [flow_dict(f) for f in sample_flows()]
    first = render_text(flows_table(rows[:1], plain=True), width=80).splitlines()
    later = render_text(flows_table(rows[1:2], plain=True, header=False), width=80).splitlines()
    assert len(later) == 1
    assert [first[0].index(w) for w in ("DESTINATION", "OUTCOME")] == [
        later[0].index("10.0.0.9"), later[0].index("refused")]


def test_health_view() -> None:
    out = render_text(health_view(message_dict(sample_health()), plain=True), width=80)
    assert out == _text("""
        host  95.0% useful of 200 attempts  (10:51:40 to 11:06:40 UTC)
        failures: refused 6, timeout 4

        PROCESSES (least useful first)
        PROCESS                        ATTEMPTS USEFUL FAILURES
        fakeclient/777                       10   0.0% refused 6, timeout 4
        curl/4242                           100   100% -

        DESTINATIONS (least useful first)
        DESTINATION                    ATTEMPTS USEFUL FAILURES
        10.0.0.9:8080                        10   0.0% refused 6, timeout 4
        10.0.0.2:443                        100   100% -

        RETRY PATTERNS
        PROCESS          DESTINATION            FAILS    EVERY LAST
        fakeclient/777   10.0.0.9:8080             10       1s 11:06:40
        """)


def test_events_table() -> None:
    out = render_text(events_table([message_dict(e) for e in sample_events()], plain=True), width=80)
    assert out == _text("""
        TIME     EVENT            PROCESS        DESTINATION           DETAIL
        11:06:38 retransmit_burst curl/4242      10.0.0.2:443          5
        11:06:39 connect_failed   fakeclient/777 10.0.0.9:8080         refused
        11:06:40 rtt_shift        nginx/1        10.0.0.7:51234        rtt 1.2ms -> 4…
        """)


def test_peers_view() -> None:
    out = render_text(peers_view(message_dict(sample_peers()), plain=True), width=80)
    assert out == _text("""
        NODE              ADDRESS               STATE     DIGEST    RTT LABELS
        3f2a9c0d1e2b4a5f* 10.0.0.1:7400         alive         4s      - site=ams1
        77aa00bb11cc22dd  10.0.0.2:7400         suspect      25s  850us site=ams1
        0123456789abcdef  10.0.0.3:7400         dead           -      - site=fra1
        health score 0 (0 is healthy)  ·  digests_bad_signature 1
        """)


def test_query_view_names_nodes_that_did_not_answer() -> None:
    doc = {
        "aggregates": [{"group": "eu", "destination": "10.0.0.2:443", "hosts": 3, "attempts": 30,
                        "useful": 29, "useful_fraction_median": 0.97, "failures": {}, "rtt_p50_us_median": 1200,
                        "rtt_p95_us_median": 9000, "retransmits": 4, "newest_age_ms": 3000,
                        "oldest_age_ms": 9000}],
        "nodes": [{"node_id": "a1", "answered": True, "error": ""},
                  {"node_id": "b2", "answered": False, "error": "DEADLINE_EXCEEDED"}],
        "digests": [], "partial": True,
    }
    out = render_text(query_view(doc, plain=True), width=80)
    assert out == _text("""
        GROUP      DESTINATION           HOSTS USEFUL  RTT50  RTT95   RETX   AGE
        eu         10.0.0.2:443              3  97.0%  1.2ms  9.0ms      4    3s
        partial: 1 node(s) did not answer: b2 (DEADLINE_EXCEEDED)
        """)


def test_process_names_shorten_but_keep_the_pid() -> None:
    assert process("curl", 42) == "curl/42"
    assert process("", 0) == "?"
    assert process("averyveryverylongname", 12345, 14) == "averyve…/12345"


def test_ipv6_endpoints_and_bracketed_names_survive_rendering() -> None:
    """Regression: rich read ``[fd6d:6e6c:6162:1::2]:7000`` as a markup tag and printed ``:7000``."""
    import time

    from meshnode.cli._output import render_text
    from meshnode.cli._views import flows_table

    row = dict(end_ns=time.time_ns(), comm="[kworker]", pid=7, src="fd6d:6e6c:6162:1::1", sport=50000,
               dst="fd6d:6e6c:6162:1::2", dport=7000, outcome="established", bytes_tx=1, bytes_rx=2, srtt_us=70,
               proto="tcp", direction="outbound", retransmits=0, kind="final")
    text = render_text(flows_table([row], plain=True))
    assert "…6e6c:6162:1::2]:7000" in text, text
    assert "[kworker]/7" in text, text


def test_query_view_says_which_rows_hold_a_clamped_host() -> None:
    row = {"group": "eu", "destination": "10.0.0.2:443", "hosts": 3, "attempts": 30, "useful": 29,
           "useful_fraction_median": 0.97, "failures": {}, "rtt_p50_us_median": 1200, "rtt_p95_us_median": 9000,
           "retransmits": 4, "newest_age_ms": 3000, "oldest_age_ms": 9000}
    doc = {"aggregates": [row, {**row, "group": "us", "hosts_clamped": 1}], "nodes": [], "digests": []}
    out = render_text(query_view(doc, plain=True), width=80)
    assert out.splitlines()[3:] == _text("""
        clamped: a host reported more than one host can (counted at the limit; the
        medians are unmoved, the sums are not) in: us 10.0.0.2:443
        """).splitlines()
