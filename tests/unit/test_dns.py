"""DNS in user space: transaction records, the name cache, and remote_name from the sensor to every view.

No kernel here: the kernel's rows are built as probes/_records.py models them, and the sensor runs over
FakeProbes (tests/_support/sensor.py). The kernel side is proven in tests/integration/test_sensor_dns.py.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from meshnode._batch import FlowBatch
from meshnode._model import FlowRecord
from meshnode.api._convert import period_pb
from meshnode.cli._dashboard import named_key, rollup_rows
from meshnode.cli._flowtext import flows_text
from meshnode.mesh import digest_from_period, rollups_from_flows
from meshnode.probes._records import DnsTxnRow, dns_name_text
from meshnode.sensor._capture_cmd import _emit_dns, dns_line, human_line
from meshnode.sensor._dns import DnsRecord, NameCache, dns_record, qtype_name, rcode_name
from meshnode.summary import PeriodBuilder
from meshnode.trust import PrivacyPolicy
from meshnode.v1 import flow_pb2
from tests._support.sensor import NAME, NAME_ID, NAMED, NAMED_PID, fake_sensor, poll_both_ways, raw_event
from tests.unit._flows import T0, S, flow

OFFSET = 1_764_000_000_000_000_000


def txn(**kw: object) -> DnsTxnRow:
    base: dict[str, object] = dict(
        netns=4026531840, name_id=NAME_ID, server="10.0.0.53", family=2, qtype=28, rcode=3, tcp=False,
        first_ns=1_000, last_ns=9_000_000, answers=3, timed=2, latency_sum_ns=3_000_000, latency_max_ns=2_500_000,
        pid=NAMED_PID, addrs=0)
    base.update(kw)
    return DnsTxnRow(**base)  # type: ignore[arg-type]


def test_a_transaction_row_becomes_a_record_with_names_and_mean_latency() -> None:
    d = dns_record(txn(), NAME, OFFSET, "dig")
    assert (d.time_ns, d.server, d.query, d.qtype, d.rcode, d.failed) == (
        OFFSET + 9_000_000, "10.0.0.53", NAME, "AAAA", "NXDOMAIN", True)
    assert (d.answers, d.timed, d.latency_us, d.latency_max_us, d.pid, d.comm) == (3, 2, 1500, 2500, NAMED_PID, "dig")
    untimed = dns_record(txn(timed=0, latency_sum_ns=0, latency_max_ns=0, rcode=0, qtype=1), "", OFFSET)
    assert (untimed.latency_us, untimed.rcode, untimed.failed, untimed.qtype) == (0, "NOERROR", False, "A")
    assert [dns_record(txn(rcode=r), NAME, 0).failed for r in range(6)] == [False, False, True, True, False, True]


def test_type_and_code_names_fall_back_to_rfc_3597_forms() -> None:
    assert [qtype_name(t) for t in (1, 28, 5, 65, 999)] == ["A", "AAAA", "CNAME", "HTTPS", "TYPE999"]
    assert [rcode_name(r) for r in (0, 2, 3, 5, 11)] == ["NOERROR", "SERVFAIL", "NXDOMAIN", "REFUSED", "RCODE11"]
    assert dns_name_text(b"web.example\0stale-tail\0") == "web.example"


def test_the_name_cache_reads_each_id_once_and_stays_bounded() -> None:
    reads: list[set[int]] = []

    def read(ids: object) -> dict[int, str]:
        got = set(ids)  # type: ignore[call-overload]
        reads.append(got)
        return {i: f"n{i}" for i in got if i % 2}

    cache = NameCache(read, limit=4)
    assert cache.names([1, 2, 3, 0]) == {1: "n1", 3: "n3"}
    assert cache.names([1, 3]) == {1: "n1", 3: "n3"} and len(reads) == 1  # cached: no second read
    assert cache.missing == 1  # id 2: the kernel no longer held it
    assert cache.names([5, 7, 9]) == {5: "n5", 7: "n7", 9: "n9"}
    assert cache.forgotten == 1 and cache.names([1]) == {1: "n1"} and len(reads) == 3  # 1 was forgotten, read again


def test_the_sensor_names_flows_and_makes_dns_records_from_the_kernel_rows(tmp_path: Path) -> None:
    sensor = fake_sensor(tmp_path, [raw_event(cookie=7, name_id=NAME_ID), raw_event(cookie=8),
                                    raw_event(cookie=9, name_id=12345)])  # an id the kernel no longer holds
    sensor._probes.dns_rows = [txn()]  # type: ignore[attr-defined]
    sensor._probes.ctr.update(dns_malformed=2, dns_truncated=1, dns_txn_map_full=4)  # type: ignore[attr-defined]
    batch = sensor.poll()
    c = batch.completeness
    assert (c.dns_malformed, c.dns_truncated, c.map_evictions) == (2, 1, 5 + 4)  # udp_map_full 5, dns_txn 4
    assert [(f.flow_id, f.remote_name) for f in batch.ended] == [(7, NAME), (8, ""), (9, "")]
    assert batch.dns == [DnsRecord(time_ns=OFFSET + 9_000_000, server="10.0.0.53", query=NAME, qtype="AAAA",
                                   rcode="NXDOMAIN", answers=3, timed=2, latency_us=1500, latency_max_us=2500,
                                   addresses=0, pid=NAMED_PID, comm=NAMED, netns=4026531840)]
    assert batch.completeness.drained_rows >= 1
    failed = [e for e in batch.events if e.type == "dns_failed"]
    assert [(e.flow.dst, e.flow.dport, e.flow.proto, e.flow.comm, e.value, e.detail) for e in failed] == [
        ("10.0.0.53", 53, "udp", NAMED, 3.0, f"NXDOMAIN {NAME} AAAA")]
    from meshnode.api._convert import event_pb

    assert event_pb(failed[0]).type == flow_pb2.DNS_FAILED


@pytest.mark.parametrize("native", [False, True], ids=["python", "c"])
def test_named_flows_take_the_same_text_through_every_json_path(tmp_path: Path, native: bool) -> None:
    raws = [raw_event(cookie=1), raw_event(cookie=2, name_id=NAME_ID), raw_event(cookie=3)]
    old, new, c_old, c_new = poll_both_ways(tmp_path, raws, native)
    assert new == old and c_new == c_old
    assert [json.loads(line)["remote_name"] for line in new.splitlines()] == ["", NAME, ""]


def test_remote_name_round_trips_the_model_the_wire_and_the_batch() -> None:
    rec = flow(1, remote_name="db.example")
    assert FlowRecord.from_proto(rec.to_proto()) == rec and rec.to_proto().remote_name == "db.example"
    assert FlowRecord.from_json(json.loads(rec.to_json_text())) == rec
    assert FlowBatch.from_records([rec, flow(2)])["remote_name"].tolist() == ["db.example", ""]


def test_destination_rollups_digests_and_the_window_carry_the_name() -> None:
    period = PeriodBuilder("n").build(1, T0, T0 + 10, [flow(1), flow(2, remote_name="api.example"),
                                                       flow(3, dst="10.0.0.9")], [], {})
    names = {r.key: r.remote_name for r in period.by_destination}
    assert names == {"10.0.0.2:443": "api.example", "10.0.0.9:443": ""}
    assert {r.key: r.remote_name for r in period_pb(period).by_destination} == names
    assert {r.key: r.remote_name for r in digest_from_period(period).by_destination} == names
    assert {r.key: r.remote_name for r in rollups_from_flows([flow(1), flow(2, remote_name="api.example")])} == {
        "10.0.0.2:443": "api.example"}


def test_privacy_drops_the_name_wherever_it_rewrites_the_address() -> None:
    p = PrivacyPolicy.from_config({"keep": ["10.0.0.0/8"], "outside": "hash", "secret": "s" * 20})
    inside = flow(1, remote_name="db.internal")
    outside = flow(2, dst="192.0.2.80", remote_name="shop.example")
    assert p.filter_flow(inside).remote_name == "db.internal"
    hidden = p.filter_flow(outside)
    assert hidden.dst.startswith("anon-") and hidden.remote_name == ""
    period = PeriodBuilder("n").build(1, T0, T0 + 10, [inside, outside], [], {})
    digest = p.filter_digest(digest_from_period(period))
    assert sorted((r.key.startswith("anon-"), r.remote_name) for r in digest.by_destination) == [
        (False, "db.internal"), (True, "")]


def test_views_show_the_name_in_place_of_the_address() -> None:
    msgs = [flow(1, remote_name="db.example").to_proto(), flow(2).to_proto()]
    lines, _marks = flows_text(msgs, width=80) or ([], [])
    assert "db.example:443" in lines[1] and "10.0.0.2:443" in lines[2]
    assert named_key("10.0.0.2:443", "db.example") == "db.example:443"
    assert named_key("[fd00::2]:443", "") == "[fd00::2]:443" and named_key("curl/100", "x") == "curl/100"
    totals = {"key": "10.0.0.2:443", "remote_name": "db.example", "flows": 1, "useful": 1, "failures": {},
              "bytes_tx": 1, "bytes_rx": 2, "rtt_p50_us": 0, "rtt_p95_us": 0, "retransmits": 0}
    row = rollup_rows([{"totals": totals}])[0]
    assert (row["key"], row["address"]) == ("db.example:443", "10.0.0.2:443")
    assert human_line(flow(1, remote_name="db.example")).endswith(" (db.example)")


def test_capture_prints_dns_transactions() -> None:
    d = dns_record(txn(tcp=True), NAME, OFFSET, "dig")
    assert dns_line(d) == f"    DNS {NAME} AAAA NXDOMAIN (failed) from 10.0.0.53:53/tcp x3 1.5ms dig/{NAMED_PID}"
    out = io.StringIO()
    _emit_dns([d], True, out)
    doc = json.loads(out.getvalue())["dns"]
    assert (doc["query"], doc["rcode"], doc["failed"], doc["transport"], doc["latency_us"]) == (
        NAME, "NXDOMAIN", True, "tcp", 1500)


def test_the_store_keeps_remote_name_and_an_older_store_gains_the_column(tmp_path: Path) -> None:
    import sqlite3

    from meshnode.store import FlowQuery, Store

    def stored(store: Store) -> list[FlowRecord]:
        with store.reader() as conn:
            return sorted((s.record for s in store.query_flows(FlowQuery(include_interim=True), conn)),
                          key=lambda r: r.flow_id)

    path = tmp_path / "m.db"
    old = flow(1, kind="interim")
    with Store(path) as store:
        seq = store.open_period(T0)
        store.close_period(seq, T0 + S, [], [old], "{}", next_start_ns=T0 + S)
    conn = sqlite3.connect(path, isolation_level=None)
    tables = [t for (t,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
              if any(c[1] == "remote_name" for c in conn.execute(f"PRAGMA table_info({t})"))]
    assert "interim" in tables
    for t in tables:  # as a meshnode before remote_name wrote it
        conn.execute(f"ALTER TABLE {t} DROP COLUMN remote_name")
    conn.close()
    with Store(path) as store:
        assert stored(store) == [old]
        seq = store.open_period(T0 + 2 * S)
        final, interim = flow(3, remote_name="db.example"), flow(4, kind="interim", remote_name="api.example")
        store.close_period(seq, T0 + 3 * S, [final], [interim], "{}")
        got = stored(store)
        assert final in got and interim in got and [r.remote_name for r in got if r.flow_id == 1] == [""]


def test_otlp_flow_logs_carry_remote_name_as_an_attribute() -> None:
    from opentelemetry.sdk.resources import Resource

    from meshnode.export import encode_flow_logs

    request = encode_flow_logs(FlowBatch.from_records([flow(1, remote_name="db.example"), flow(2)]), node_id="n",
                               host="h", resource=Resource.create({}), observed_ns=1)
    got = [{kv.key: kv.value.string_value for kv in r.attributes if kv.key == "remote_name"}
           for r in request.resource_logs[0].scope_logs[0].log_records]
    assert got == [{"remote_name": "db.example"}, {"remote_name": ""}]
