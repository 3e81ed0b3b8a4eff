"""The Flows fast path (store rows straight into messages) sends exactly what the FlowRecord path sent.

The reference is ``ObserverServicer._history`` (rows decoded into ``FlowRecord``, re-checked by the Python
filters) followed by ``FlowRecord.to_proto``, batched as the servicer did before; the fast path is
``HistoryReader`` over ``Store.query_rows``. Both run over the same store and must produce equal messages
(compared serialized, field by field), the same "more" and the same key for the page token. Serialized
deterministically: upb writes map entries (``drop_reasons``) in its hash table's order, seeded per process.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import random
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshnode._model import FlowRecord
from meshnode.api import ObserverServicer, Selector
from meshnode.api._executor import ApiExecutor
from meshnode.api._flowstream import HistoryReader, ReadAhead, SnapshotExpired
from meshnode.store import ROW_FIELDS, FlowQuery, Store
from meshnode.store import _store as store_mod
from meshnode.v1 import flow_pb2, observer_pb2
from tests.unit._flows import T0, S, flow

F = flow_pb2.FlowFilter
U64_TOP = (1 << 64) - 1


def varied(n: int, rng: random.Random) -> list[FlowRecord]:
    """Records with every field set, failures, UDP, IPv6, u64 ids above 2**63, drop reasons, odd values."""
    out = []
    for i in range(1, n + 1):
        udp = rng.random() < 0.3
        v6 = rng.random() < 0.3
        outcome = rng.choice(["udp_answered", "udp_unanswered"] if udp else
                             ["established", "refused", "timeout", "reset", "in_progress"])
        out.append(flow(
            rng.choice([i, (1 << 63) + i, U64_TOP - i]),
            src=rng.choice(["fd00::1", "fe80::1%eth0"]) if v6 else "10.0.0.1",
            dst=rng.choice(["fd00::7", "2001:db8::1"]) if v6 else rng.choice(["10.1.2.3", "192.0.2.9"]),
            sport=rng.randrange(65536), dport=rng.choice([0, 22, 53, 443, 65535]), proto="udp" if udp else "tcp",
            direction=rng.choice(["outbound", "inbound"]), pid=rng.choice([0, 1, 4_000_000]),
            comm=rng.choice(["", "curl", "名前", 'q"uo\\te', "[x]"]), cgroup=rng.choice(["", "/", "/a/b", "/ab"]),
            cgroup_id=rng.choice([0, 7, U64_TOP]), netns=rng.choice([0, 4026531840, (1 << 63) + 5]),
            start_ns=T0 + (i // 3) * S - rng.randrange(S), end_ns=T0 + (i // 3) * S,  # shared end_ns: ids order
            bytes_tx=rng.choice([0, 1, 1 << 40]), bytes_rx=rng.randrange(1 << 33), packets_tx=rng.randrange(99),
            packets_rx=rng.randrange(99), outcome=outcome, retransmits=rng.randrange(5),
            srtt_us=rng.randrange(10**6), min_rtt_us=rng.randrange(1000), max_rtt_us=rng.randrange(10**7),
            cwnd=rng.randrange(100), cwnd_min=rng.randrange(10), cwnd_max=rng.randrange(1000),
            limited_by=rng.choice(["app", "receiver_window", "send_buffer", "congestion", "unknown"]),
            connect_us=rng.randrange(5000), resets_tx=rng.randrange(2), resets_rx=rng.randrange(2),
            drops=rng.randrange(3), fidelity=rng.choice(["exact", "polled"]), rttvar_us=rng.randrange(500),
            delivery_rate=rng.randrange(10**9), lost=rng.randrange(3), reordering=rng.randrange(3),
            service=rng.choice(["", "https", "dns"]), node_id=rng.choice(["", "n1"]),
            drop_reasons=rng.choice([{}, {}, {"NO_SOCKET": 2}, {"TCP_RETRANS": 1, "NETFILTER_DROP": 9}]),
        ))
    return out


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    rng = random.Random(11)
    recs = varied(600, rng)
    with Store(tmp_path_factory.mktemp("fast") / "m.db") as st:
        seq = st.open_period(T0)
        half = len(recs) // 2
        ids = iter(range(10**6, 10**7))
        interims = [r.replace(kind="interim", flow_id=next(ids)) for r in recs[:40]]
        _, seq2, _ = st.close_period(seq, T0 + 200 * S, recs[:half], interims, "", next_start_ns=T0 + 200 * S)
        assert seq2 is not None
        later = [r.replace(kind="interim", flow_id=next(ids), end_ns=r.end_ns + S) for r in recs[40:60]]
        st.close_period(seq2, T0 + 400 * S, recs[half:], later, "")
        yield st


def reference(store: Store, query: FlowQuery, sel: Selector, limit: int, batch: int
              ) -> tuple[list[bytes], bool, tuple[int, int, int] | None]:
    """What the servicer sent before the fast path: ``_history`` then ``to_proto`` per record."""
    page = ObserverServicer(store)._history(query, sel, limit, None)
    if batch:
        out = [observer_pb2.FlowsResponse(flows=[sf.record.to_proto() for sf in page.items[s:s + batch]])
               for s in range(0, len(page.items), batch)]
    else:
        out = [observer_pb2.FlowsResponse(flow=sf.record.to_proto()) for sf in page.items]
    last = page.items[-1].key if page.more else None
    return [r.SerializeToString(deterministic=True) for r in out], page.more, last


def fast(store: Store, query: FlowQuery, sel: Selector, limit: int, batch: int
         ) -> tuple[list[bytes], bool, tuple[int, int, int] | None]:
    keys: list[tuple[int, int, int]] = []

    def token(key: tuple[int, int, int]) -> str:
        keys.append(key)
        return f"token-{key}"

    h = HistoryReader(store, sel.query(query), limit, batch, None, token)
    out = list(h.responses())
    if h.more:
        assert out[-1].next_page_token == f"token-{keys[0]}"
        out[-1].next_page_token = ""
    assert not any(r.next_page_token for r in out)
    return [r.SerializeToString(deterministic=True) for r in out], h.more, keys[0] if keys else None


CASES = [
    ("everything", FlowQuery(), Selector(), 100_000),
    ("with interim", FlowQuery(include_interim=True), Selector(), 100_000),
    ("limit, more remain", FlowQuery(include_interim=True), Selector(), 250),
    ("limit exactly the matches", FlowQuery(), Selector(), 600),
    ("time range", FlowQuery(since_ns=T0 + 20 * S, until_ns=T0 + 150 * S), Selector(), 100_000),
    ("after a key", FlowQuery(after=(T0 + 50 * S, 0, 3), include_interim=True), Selector(), 90),
    ("v6 CIDR minus failures", FlowQuery(),
     Selector.from_request([F(dst=["fd00::/8", "2001:db8::1"])], [F(outcome=[flow_pb2.REFUSED, flow_pb2.TIMEOUT])]),
     100_000),
    ("udp or port 22, not inbound", FlowQuery(include_interim=True),
     Selector.from_request([F(proto=[flow_pb2.UDP]), F(port=[22])], [F(direction=[flow_pb2.INBOUND])]), 100_000),
    ("comm and cgroup", FlowQuery(), Selector.from_request([F(comm=["名前", 'q"uo\\te'], cgroup=["/a"])], []),
     100_000),
    ("nothing matches", FlowQuery(), Selector.from_request([F(comm=["nobody"])], []), 100),
    ("limit 0", FlowQuery(), Selector(), 0),
]


@pytest.mark.parametrize("batch", [0, 1, 7, 1000])
@pytest.mark.parametrize(("name", "query", "sel", "limit"), CASES, ids=[c[0] for c in CASES])
def test_fast_path_sends_what_the_record_path_sent(
    store: Store, name: str, query: FlowQuery, sel: Selector, limit: int, batch: int
) -> None:
    want = reference(store, query, sel, limit, batch)
    got = fast(store, query, sel, limit, batch)
    assert got[1:] == want[1:]
    assert len(got[0]) == len(want[0])
    for g, w in zip(got[0], want[0], strict=True):
        if g != w:  # name the first differing field
            gm, wm = observer_pb2.FlowsResponse.FromString(g), observer_pb2.FlowsResponse.FromString(w)
            assert gm == wm
        assert g == w
    if name == "everything":
        assert len(b"".join(got[0])) > 0 and want[1] is False


def test_the_store_sees_every_kind_of_record(store: Store) -> None:
    """The varied records really vary (guards the comparison above against a degenerate store)."""
    with store.reader() as conn:
        recs = [s.record for s in store.query_flows(FlowQuery(include_interim=True), conn)]
    assert {r.kind for r in recs} == {"final", "interim"}
    assert {r.proto for r in recs} == {"tcp", "udp"}
    assert {r.outcome for r in recs} >= {"established", "refused", "timeout", "reset", "udp_answered",
                                          "udp_unanswered", "in_progress"}
    assert any(":" in r.dst for r in recs) and any(r.flow_id >= 1 << 63 for r in recs)
    assert any(r.drop_reasons for r in recs) and any(r.cgroup_id == U64_TOP for r in recs)


def test_rows_carry_wire_numbers_and_unsigned_ids(store: Store) -> None:
    with store.reader() as conn:
        rows = list(store.query_rows(FlowQuery(), conn))
        recs = [s.record for s in store.query_flows(FlowQuery(), conn)]
    assert len(rows) == len(recs)
    for row, rec in zip(rows, recs, strict=True):
        values = dict(zip(ROW_FIELDS, row, strict=False))
        assert values["flow_id"] == rec.flow_id and values["netns"] == rec.netns
        assert values["outcome"] == flow_pb2.Outcome.Value(rec.outcome.upper())
        assert values["drop_reasons"] == (rec.drop_reasons or None)


def test_rows_across_a_chunks_slices_are_its_records(tmp_path: Path) -> None:
    """query_rows makes a chunk's rows into values a slice (1,024 rows) at a time: every row of a chunk of
    2,600, on both sides of each slice's edge, equals its record."""
    recs = varied(2600, random.Random(5))
    with Store(tmp_path / "m.db") as st:
        seq = st.open_period(T0)
        st.close_period(seq, T0 + 400 * S, recs, [], "")
        with st.reader() as conn:
            rows = list(st.query_rows(FlowQuery(), conn))
            stored = [s.record for s in st.query_flows(FlowQuery(), conn)]
    assert len(rows) == len(stored) == 2600
    for row, rec in zip(rows, stored, strict=True):
        values = dict(zip(ROW_FIELDS, row, strict=False))
        assert (values["flow_id"], values["netns"], values["bytes_rx"], values["comm"], values["dst"]) == (
            rec.flow_id, rec.netns, rec.bytes_rx, rec.comm, rec.dst)
        assert values["drop_reasons"] == (rec.drop_reasons or None)
        assert row[len(ROW_FIELDS)] == (rec.flow_id >= 1 << 63 or rec.netns >= 1 << 63 or rec.cgroup_id >= 1 << 63
                                        or bool(rec.drop_reasons))


def test_rows_of_a_chunk_out_of_key_order_are_made_a_run_at_a_time(tmp_path: Path) -> None:
    """A chunk's rows are stored in arrival order, not key order; query_rows makes only the selected rows into
    values, 1,024 at a time in key order (each run once, going forward), and the rows equal the records."""
    rng = random.Random(8)
    recs = varied(5000, rng)
    rng.shuffle(recs)  # arrival order: end_ns goes back and forth within the chunk
    made: list[int] = []
    wire_lists = store_mod._wire_lists

    def counting(chunk: object, rows: object) -> object:
        made.append(len(rows))  # type: ignore[arg-type]
        return wire_lists(chunk, rows)  # type: ignore[arg-type]

    q = FlowQuery(equals={"proto": ["tcp"]})
    with Store(tmp_path / "m.db") as st:
        seq = st.open_period(T0)
        st.close_period(seq, T0 + 4000 * S, recs, [], "")
        with st.reader() as conn:
            store_mod._wire_lists = counting  # type: ignore[assignment]
            try:
                rows = list(st.query_rows(q, conn))
            finally:
                store_mod._wire_lists = wire_lists
            stored = [s.record for s in st.query_flows(q, conn)]
    tcp = sum(r.proto == "tcp" for r in recs)
    assert tcp < 5000 and len(rows) == len(stored) == tcp
    assert made == [1024] * (tcp // 1024) + [tcp % 1024]
    assert [r[-3:] for r in rows] == sorted(r[-3:] for r in rows)
    for row, rec in zip(rows, stored, strict=True):
        values = dict(zip(ROW_FIELDS, row, strict=False))
        assert (values["flow_id"], values["end_ns"], values["comm"], values["dst"]) == (
            rec.flow_id, rec.end_ns, rec.comm, rec.dst)


def test_an_open_history_read_holds_no_list_longer_than_a_run(tmp_path: Path) -> None:
    """While a Flows stream reads a 20,000-row chunk, the store holds its keys and values as Python lists of
    at most 1,024 items: a full collection visits every item of every list, and three 20,000-int lists per
    stream (the merge's keys) made it tens of ms of the event loop's time under sixteen streams."""
    recs = [flow(i) for i in range(1, 20_001)]
    with Store(tmp_path / "m.db") as st:
        seq = st.open_period(T0)
        st.close_period(seq, T0 + 30_000 * S, recs, [], "")
        before = {id(o) for o in gc.get_objects() if isinstance(o, list)}
        with st.reader() as conn:
            rows = st.query_rows(FlowQuery(), conn)
            first = [next(rows) for _ in range(5_000)]
            held = [len(o) for o in gc.get_objects()
                    if isinstance(o, list) and id(o) not in before and o is not first and len(o) > 1024]
            rows.close()
    assert [r[0] for r in first[:3]] == [1, 2, 3]
    assert held == []


def test_read_ahead_stops_and_closes_the_producer_when_the_consumer_leaves() -> None:
    closed = threading.Event()
    threads: set[str] = set()

    def items() -> Iterator[int]:
        try:
            for i in range(10**9):
                threads.add(threading.current_thread().name)
                yield i
        finally:
            threads.add(threading.current_thread().name)
            closed.set()

    async def main() -> list[int]:
        got = []
        async for i in ReadAhead(items(), ApiExecutor(2, "api-test"), ahead=3):
            got.append(i)
            if i == 5:
                break
        return got

    assert asyncio.run(main()) == list(range(6))
    assert closed.wait(10)
    assert threads and all(t.startswith("api-test-") for t in threads)  # never on the event loop's thread


def test_read_ahead_raises_the_producers_error() -> None:
    def items() -> Iterator[int]:
        yield 1
        raise ValueError("boom")

    async def main() -> list[int]:
        return [i async for i in ReadAhead(items(), ApiExecutor(1))]

    with pytest.raises(ValueError, match="boom"):
        asyncio.run(main())


def test_read_ahead_gives_back_the_producer_at_its_maximum_age_while_the_consumer_waits() -> None:
    closed = threading.Event()

    def items() -> Iterator[int]:
        try:
            yield from range(10**9)
        finally:
            closed.set()

    async def main() -> list[int]:
        got = []
        with pytest.raises(SnapshotExpired):
            async for i in ReadAhead(items(), ApiExecutor(1), ahead=2, max_age_s=0.2):
                got.append(i)
                if i == 1:  # a consumer stuck (a client that does not read): the producer is closed anyway
                    assert await asyncio.to_thread(closed.wait, 10)
        return got

    assert asyncio.run(main()) == [0, 1]


@pytest.mark.parametrize(("name", "query", "sel"), [c[:3] for c in CASES if c[1].until_ns == 0 and c[1].after is None],
                         ids=[c[0] for c in CASES if c[1].until_ns == 0 and c[1].after is None])
def test_a_follow_streams_period_is_matched_on_columns_as_record_by_record(
    tmp_path: Path, name: str, query: FlowQuery, sel: Selector
) -> None:
    """A closed period's records for a follow stream (``StoredFlows.matching``, numpy on the period's
    columns) are exactly those the per-record Python match kept, in the same key order."""
    rng = random.Random(23)
    recs = varied(500, rng)
    ids = iter(range(10**6, 10**7))
    interims = [r.replace(kind="interim", flow_id=next(ids)) for r in recs[:60]]
    with Store(tmp_path / "m.db") as st:
        stored, _, _ = st.close_period(st.open_period(T0), T0 + 400 * S, recs, interims, "")
    for since in (0, T0 + 80 * S):
        q = dataclasses.replace(query, since_ns=since)
        want = [sf for sf in stored if (sf.record.kind != "interim" or q.include_interim)
                and sf.record.end_ns >= since and sel.matches(sf.record)]
        got = stored.matching(sel.query(q))
        assert [(sf.key, sf.record) for sf in got] == [(sf.key, sf.record) for sf in want]
        assert len(want) > 0 or name == "nothing matches"
