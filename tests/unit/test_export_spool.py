"""The export spool: order, bounds, restarts, corruption; the ClickHouse URL; batch encoding."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshnode._batch import FlowBatch
from meshnode._exceptions import ConfigError
from meshnode.daemon import load_config
from meshnode.export import Spool, create_table_sql, parse_clickhouse_url
from meshnode.export._clickhouse import COLUMNS, decode_batch, encode_batch, insert_columns
from tests.unit._flows import T0, flow

HEADER = 20  # magic 8 + rows 4 + length 4 + crc 4


def drain(spool: Spool) -> list[bytes]:
    out = []
    while (entry := spool.head()) is not None:
        out.append(entry.payload)
        spool.remove_sent(entry.seq)
    return out


def test_batches_leave_in_the_order_they_came_and_are_counted(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 10_000)
    for i in range(12):  # past 10, so that names must sort as numbers, not text
        spool.append(f"batch {i}".encode(), rows=i + 1)
    assert spool.counters()["queued_batches"] == 12
    assert spool.counters()["queued_rows"] == sum(range(1, 13))
    assert drain(spool) == [f"batch {i}".encode() for i in range(12)]
    assert spool.counters() == {"queued_batches": 0, "queued_rows": 0, "queued_bytes": 0, "sent_batches": 12,
                                "sent_rows": 78, "dropped_batches": 0, "dropped_rows": 0, "corrupt_batches": 0}
    assert list(tmp_path.iterdir()) == []


def test_a_restart_keeps_the_queue_and_its_order_and_clears_half_written_files(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 10_000)
    for i in range(3):
        spool.append(bytes([i]) * 10, rows=2)
    (tmp_path / "00000000000000000009.batch.tmp").write_bytes(b"cut short")  # a crash mid-write
    again = Spool(tmp_path, 10_000)
    assert again.counters()["queued_batches"] == 3
    assert again.counters()["queued_bytes"] == 3 * (HEADER + 10)
    assert not list(tmp_path.glob("*.tmp"))
    again.append(b"new", rows=1)  # after the ones already there
    assert drain(again) == [b"\0" * 10, b"\1" * 10, b"\2" * 10, b"new"]


def test_a_full_spool_drops_its_oldest_batches_and_counts_them(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 3 * (HEADER + 100))
    for i in range(5):
        spool.append(bytes([i]) * 100, rows=10 + i)
    c = spool.counters()
    assert (c["queued_batches"], c["dropped_batches"], c["dropped_rows"]) == (3, 2, 10 + 11)
    assert c["queued_bytes"] <= spool.max_bytes
    assert drain(spool) == [bytes([i]) * 100 for i in (2, 3, 4)]


def test_a_batch_larger_than_the_whole_spool_is_refused_and_counted(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 100)
    spool.append(b"x" * 10, rows=1)
    assert spool.append(b"y" * 200, rows=7) is None
    c = spool.counters()
    assert (c["queued_batches"], c["dropped_batches"], c["dropped_rows"]) == (1, 1, 7)


def test_damaged_files_are_dropped_and_counted_and_the_rest_still_flows(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 10_000)
    for i in range(4):
        spool.append(bytes([65 + i]) * 50, rows=5)
    files = sorted(tmp_path.iterdir())
    flipped = bytearray(files[1].read_bytes())
    flipped[-1] ^= 0xFF  # a bit flipped: the checksum catches it
    files[1].write_bytes(bytes(flipped))
    files[2].write_bytes(files[2].read_bytes()[:30])  # truncated: the length catches it on start
    (tmp_path / "00000000000000000099.batch").write_bytes(b"garbage")  # not a spool file at all
    again = Spool(tmp_path, 10_000)
    assert drain(again) == [b"A" * 50, b"D" * 50]
    c = again.counters()
    assert (c["sent_batches"], c["dropped_batches"], c["corrupt_batches"]) == (2, 3, 3)
    assert c["dropped_rows"] == 5 + 5  # the garbage file's row count is unknown: 0
    assert list(tmp_path.iterdir()) == []


def test_spool_size_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="positive"):
        Spool(tmp_path, 0)


# -- the URL ---------------------------------------------------------------------------------------------

def test_url_forms() -> None:
    t = parse_clickhouse_url("clickhouse://10.0.0.9:9440/net")
    assert (t.host, t.port, t.database, t.user, t.password) == ("10.0.0.9", 9440, "net", "default", "")
    assert parse_clickhouse_url("clickhouse://ch.example/net").port == 9000
    t = parse_clickhouse_url("clickhouse://writer:p%40ss@[::1]:9000/flows_db")
    assert (t.host, t.user, t.password, t.database) == ("::1", "writer", "p@ss", "flows_db")
    assert t.display == "clickhouse://[::1]:9000/flows_db"  # no credentials in logs and status


@pytest.mark.parametrize(("url", "says"), [
    ("http://127.0.0.1:8123/net", "must start with clickhouse://"),
    ("127.0.0.1:9000/net", "must start with clickhouse://"),
    ("clickhouse://127.0.0.1:9000", "names no database: add /DATABASE"),
    ("clickhouse://127.0.0.1:9000/", "names no database"),
    ("clickhouse://:9000/net", "names no host"),
    ("clickhouse://127.0.0.1:99999/net", "bad port"),
    ("clickhouse://127.0.0.1:x/net", "bad port"),
    ("clickhouse://127.0.0.1:0/net", "bad port"),
    ("clickhouse://127.0.0.1:9000/net;drop", "letters, digits and _"),
    ("clickhouse://127.0.0.1:9000/a/b", "letters, digits and _"),
    ("clickhouse://127.0.0.1:9000/9net", "not starting with a digit"),
    ("clickhouse://127.0.0.1:9000/net?secure=1", "options after ? or # are not supported"),
])
def test_bad_urls_say_what_is_wrong(url: str, says: str) -> None:
    with pytest.raises(ValueError, match=says.replace("?", r"\?")) as exc:
        parse_clickhouse_url(url)
    assert "clickhouse://127.0.0.1:9000/meshnode" in str(exc.value) or "digit" in says or "letters" in says


def test_config_takes_the_url_from_flag_env_and_file_and_names_the_source(tmp_path: Path) -> None:
    assert load_config({"clickhouse": "clickhouse://h:9000/db"}, environ={}).clickhouse == "clickhouse://h:9000/db"
    assert load_config({}, environ={"MESHNODE_CLICKHOUSE": "clickhouse://e/db"}).clickhouse == "clickhouse://e/db"
    f = tmp_path / "node.toml"
    f.write_text('clickhouse = "clickhouse://f:9000/db"\nclickhouse_spool = "10MiB"\n')
    cfg = load_config({}, environ={}, config_file=f)
    assert (cfg.clickhouse, cfg.clickhouse_spool) == ("clickhouse://f:9000/db", 10 << 20)
    assert load_config({}, environ={}).clickhouse is None
    with pytest.raises(ConfigError, match=r"clickhouse: .*names no database.*\(from environment MESHNODE_CLICKHOUSE\)"):
        load_config({}, environ={"MESHNODE_CLICKHOUSE": "clickhouse://h:9000"})
    with pytest.raises(ConfigError, match=r"clickhouse_spool: .*more than 0"):
        load_config({"clickhouse_spool": "0"}, environ={})


# -- batches ---------------------------------------------------------------------------------------------

def test_a_batch_round_trips_to_insert_columns_exactly() -> None:
    flows = FlowBatch.from_records([
        flow(1, bytes_tx=2**40 + 3, bytes_rx=7, retransmits=4, comm="curl", thread="worker-1"),
        flow(2, proto="udp", dst="fd00::2", dport=53, outcome="udp_unanswered", direction="outbound",
             service="dns", limited_by="congestion", pid=-1),
    ])
    doc = decode_batch(encode_batch(flows, "node-a", "host-a", batch=T0, row0=10))
    cols = dict(zip([name for name, _t in COLUMNS], insert_columns(doc), strict=True))
    assert cols["node_id"] == ["node-a", "node-a"] and cols["host"] == ["host-a", "host-a"]
    assert cols["batch"] == [T0, T0] and cols["row"] == [10, 11]
    assert cols["bytes_tx"] == [2**40 + 3, 100] and cols["bytes_rx"] == [7, 2000]
    assert cols["proto"] == [6, 17] and cols["outcome"] == [1, 6] and cols["limited_by"] == [0, 4]
    assert cols["dst"] == ["10.0.0.2", "fd00::2"] and cols["dport"] == [443, 53]
    assert cols["thread"] == ["worker-1", ""] and cols["service"] == ["", "dns"]
    assert cols["pid"] == [100, 0]  # a negative pid (unknown) would not fit UInt32: 0
    assert cols["end_ns"] == [T0 + 1_000_000_000, T0 + 2_000_000_000]
    only_second = dict(zip([n for n, _t in COLUMNS], insert_columns(doc, keep=[1]), strict=True))
    assert only_second["row"] == [11] and only_second["dst"] == ["fd00::2"]


def test_table_has_the_flow_record_names_and_an_order_for_time_and_destination() -> None:
    sql = create_table_sql("net")
    assert sql.startswith("CREATE TABLE IF NOT EXISTS `net`.`flows`")
    for name in ("node_id", "host", "src", "sport", "dst", "dport", "proto", "direction", "pid", "comm",
                 "cgroup", "netns", "start_ns", "end_ns", "bytes_tx", "bytes_rx", "packets_tx", "packets_rx",
                 "outcome", "retransmits", "srtt_us", "min_rtt_us", "cwnd", "limited_by", "thread"):
        assert f"`{name}` " in sql
    assert "Enum8('unknown' = 0, 'tcp' = 6, 'udp' = 17)" in sql
    assert "ORDER BY (toStartOfHour(end_time), dst, dport, node_id, end_ns)" in sql
