"""The Observer API against a real grpc.aio server on 127.0.0.1, fed by a FakeSensor."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from meshnode._model import FlowRecord
from meshnode.api import HEALTH_SERVICE, OBSERVER_SERVICE, Selector
from meshnode.sensor import Completeness, EventRecord
from meshnode.store import FlowQuery, StoreTimeout
from meshnode.summary import with_service
from meshnode.v1 import flow_pb2, observer_pb2
from tests.unit._flows import T0, S, flow
from tests.unit._node import Harness, running_node


def run(tmp_path: Path, body: Callable[[Harness], Awaitable[None]], **config: object) -> None:
    async def main() -> None:
        async with running_node(tmp_path, **config) as h:
            await body(h)

    asyncio.run(main())


async def flows(h: Harness, timeout: float = 10, **kw: object) -> list[observer_pb2.FlowsResponse]:
    req = observer_pb2.FlowsRequest(**kw)  # type: ignore[arg-type]
    return [r async for r in h.stub.Flows(req, timeout=timeout)]


def records(responses: list[observer_pb2.FlowsResponse]) -> list[FlowRecord]:
    return [FlowRecord.from_proto(r.flow) for r in responses]


def test_flows_returns_exact_records(tmp_path: Path) -> None:
    sent = [flow(i, bytes_tx=i * 7, retransmits=i, drop_reasons={"NO_SOCKET": i}) for i in range(1, 11)]

    async def body(h: Harness) -> None:
        await h.period(*sent)
        got = records(await flows(h))
        assert got == [with_service(r) for r in sent]

    run(tmp_path, body)


F = flow_pb2.FlowFilter
INVALID = grpc.StatusCode.INVALID_ARGUMENT


def test_filters_and_or_deny_cidr(tmp_path: Path) -> None:
    sent = [
        flow(1, comm="curl", dport=443),
        flow(2, comm="curl", dport=80),
        flow(3, comm="wget", dport=443),
        flow(4, comm="apt", dst="10.1.2.3", dport=80),
        flow(5, comm="apt", dst="10.1.9.9", dport=80, outcome="refused"),
        flow(6, comm="apt", dst="10.2.0.1", dport=80),
        flow(7, comm="ssh", dst="fd00::7", dport=22, direction="inbound", sport=22),
    ]

    async def body(h: Harness) -> None:
        await h.period(*sent)

        async def ids(**kw: object) -> list[int]:
            return [r.flow_id for r in records(await flows(h, **kw))]

        assert await ids(whitelist=[F(comm=["curl"], dport=[443])]) == [1]                 # AND
        assert await ids(whitelist=[F(comm=["curl", "wget"])]) == [1, 2, 3]               # OR in a field
        assert await ids(whitelist=[F(comm=["curl"], dport=[443]), F(dst=["10.1.0.0/16"])]) == [1, 4, 5]
        assert await ids(whitelist=[F(dst=["10.1.0.0/16"])],
                         blacklist=[F(outcome=[flow_pb2.REFUSED])]) == [4]                # allow - deny
        assert await ids(blacklist=[F(dport=[80]), F(comm=["ssh"])]) == [1, 3]
        assert await ids(whitelist=[F(dst=["fd00::/8"])]) == [7]
        assert await ids(whitelist=[F(dst=["10.2.0.1"])]) == [6]
        assert await ids(whitelist=[F(port=[22])]) == [7]
        assert await ids(whitelist=[F(direction=[flow_pb2.INBOUND], proto=[flow_pb2.TCP])]) == [7]
        assert await ids(whitelist=[F(cgroup=["/system.slice"])]) == [1, 2, 3, 4, 5, 6, 7]
        assert await ids(whitelist=[F(cgroup=["/system.sli"])]) == []
        # end >= since, start <= until
        assert await ids(since_ns=T0 + 3 * S, until_ns=T0 + 5 * S) == [3, 4, 5]

    run(tmp_path, body)


def test_pagination(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        await h.period(*[flow(i) for i in range(1, 16)])
        await h.period(*[flow(i) for i in range(16, 26)])
        seen: list[int] = []
        token = ""
        pages = 0
        while True:
            page = await flows(h, number=10, page_token=token, blacklist=[F(pid=[999])])
            pages += 1
            seen += [r.flow.flow_id for r in page]
            token = page[-1].next_page_token
            assert all(not r.next_page_token for r in page[:-1])
            if not token:
                break
        assert pages == 3 and seen == list(range(1, 26))
        # a token belongs to its request
        first = await flows(h, number=10)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await flows(h, number=10, page_token=first[-1].next_page_token, whitelist=[F(comm=["x"])])
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "page_token" in (err.value.details() or "")

    run(tmp_path, body)


def test_interim_records_only_on_request_and_never_twice(tmp_path: Path) -> None:
    long = flow(100, kind="interim", bytes_tx=5)

    async def body(h: Harness) -> None:
        await h.period(flow(1), active=[long])
        await h.period(active=[long.replace(bytes_tx=50, end_ns=long.end_ns + S)])
        assert [r.flow_id for r in records(await flows(h))] == [1]
        got = records(await flows(h, include_interim=True))
        assert [(r.flow_id, r.kind, r.bytes_tx) for r in got] == [(1, "final", 100), (100, "interim", 50)]

    run(tmp_path, body)


def test_follow_delivers_new_flow_within_one_period(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        await h.period(flow(1))
        call = h.stub.Flows(observer_pb2.FlowsRequest(follow=True, number=5), timeout=10)
        first = await call.read()
        assert first.flow.flow_id == 1  # history first
        await asyncio.sleep(0.1)  # the stream is now following
        await h.period(flow(2), flow(3, comm="other"))
        got = [(await asyncio.wait_for(call.read(), 2)).flow.flow_id for _ in range(2)]
        assert got == [2, 3]
        call.cancel()

    run(tmp_path, body)


def test_follow_with_real_period_timer(tmp_path: Path) -> None:
    """The node loop closes periods by itself; a followed flow arrives within one period."""

    async def body(h: Harness) -> None:
        stop = asyncio.Event()
        loop_task = asyncio.create_task(h.node._loop(stop))
        call = h.stub.Flows(observer_pb2.FlowsRequest(follow=True, whitelist=[F(comm=["late"])]), timeout=10)
        await asyncio.sleep(0.1)
        h.sensor.feed([flow(42, comm="late")])
        start = time.monotonic()
        resp = await asyncio.wait_for(call.read(), 3)
        assert resp.flow.flow_id == 42 and time.monotonic() - start <= 0.5 + 0.3
        call.cancel()
        stop.set()
        await loop_task

    run(tmp_path, body, export_period=0.5, tick=0.05)


def test_health_finds_scans_and_ignores_non_patterns(tmp_path: Path) -> None:
    scan = [flow(100 + p, direction="inbound", sport=p, dst="192.0.2.66", outcome="refused") for p in range(20, 26)]
    few = [flow(200 + p, direction="inbound", sport=p, dst="192.0.2.77", outcome="refused") for p in range(20, 24)]
    twice = [flow(300 + i, outcome="timeout", dport=8443) for i in range(2)]

    async def body(h: Harness) -> None:
        await h.period(*scan, *few, *twice)
        resp = await h.stub.Health(observer_pb2.HealthRequest(since_ns=T0, until_ns=T0 + 400 * S), timeout=10)
        assert [(s.src, s.ports, s.failures) for s in resp.scans] == [("192.0.2.66", 6, 6)]
        assert list(resp.retries) == []
        # seed 004: the scan's 6 flows are left out of the host (the 4 of the source below the threshold stay)
        assert (resp.host.attempts, resp.host.useful, resp.scan_flows) == (6, 0, 6)
        assert dict(resp.host.failures) == {"refused": 4, "timeout": 2}

    run(tmp_path, body)


def test_health_counts_a_kernel_aggregated_sweep_and_lists_path_mtu_problems(tmp_path: Path) -> None:
    sweep = flow(300, direction="inbound", sport=1499, dst="192.0.2.88", outcome="refused", attempts=500,
                 ports_probed=500)
    narrow = [flow(310 + i, icmp_frag_needed=2, path_mtu=1400 - 120 * i) for i in range(2)]

    async def body(h: Harness) -> None:
        await h.period(sweep, *narrow, flow(320))
        resp = await h.stub.Health(observer_pb2.HealthRequest(since_ns=T0, until_ns=T0 + 400 * S), timeout=10)
        assert [(s.src, s.ports, s.failures) for s in resp.scans] == [("192.0.2.88", 500, 500)]
        assert (resp.host.attempts, resp.host.useful, resp.scan_flows) == (3, 3, 1)
        assert [(p.destination, p.mtu, p.flows, p.errors) for p in resp.path_mtu] == [("10.0.0.2:443", 1280, 2, 4)]

    run(tmp_path, body)


def test_health_reports_the_fraction(tmp_path: Path) -> None:
    good = [flow(i) for i in range(1, 8)]
    bad = [flow(i, outcome="refused", start_ns=T0 + i * S) for i in range(8, 11)]

    async def body(h: Harness) -> None:
        await h.period(*good, *bad)
        resp = await h.stub.Health(observer_pb2.HealthRequest(since_ns=T0, until_ns=T0 + 60 * S), timeout=10)
        assert resp.host.attempts == 10 and resp.host.useful == 7
        assert resp.host.useful_fraction.value == pytest.approx(0.7)
        assert dict(resp.host.failures) == {"refused": 3}
        assert [(r.key, r.useful_fraction.value) for r in resp.by_destination] == [("10.0.0.2:443", 0.7)]
        assert [r.key for r in resp.by_process] == ["curl/100"]
        assert len(resp.by_period) == 1 and resp.by_period[0].useful_fraction.value == pytest.approx(0.7)
        [retry] = resp.retries
        assert (retry.failures, retry.interval_p50_ms) == (3, 1000.0)
        assert list(resp.scans) == []
        filtered = await h.stub.Health(observer_pb2.HealthRequest(
            since_ns=T0, until_ns=T0 + 60 * S, filter=F(outcome=[flow_pb2.ESTABLISHED])), timeout=10)
        assert filtered.host.useful_fraction.value == 1.0
        empty = await h.stub.Health(observer_pb2.HealthRequest(since_ns=1, until_ns=2), timeout=10)
        assert empty.host.attempts == 0 and not empty.host.HasField("useful_fraction")

    run(tmp_path, body)


@pytest.mark.parametrize(
    ("request_kw", "code", "field"),
    [
        (dict(whitelist=[F(dst=["10.0.0.0/33"])]), INVALID, "whitelist[0].dst[0]"),
        (dict(blacklist=[F(), F(dst=["not-an-ip"])]), INVALID, "blacklist[1].dst[0]"),
        (dict(whitelist=[F(outcome=[99])]), grpc.StatusCode.INVALID_ARGUMENT, "whitelist[0].outcome"),
        (dict(whitelist=[F(proto=[3])]), grpc.StatusCode.INVALID_ARGUMENT, "whitelist[0].proto"),
        (dict(since_ns=10, until_ns=5), grpc.StatusCode.INVALID_ARGUMENT, "until_ns"),
        (dict(follow=True, until_ns=5), grpc.StatusCode.INVALID_ARGUMENT, "until_ns"),
        (dict(page_token="garbage!"), grpc.StatusCode.INVALID_ARGUMENT, "page_token"),
        (dict(number=10**7), grpc.StatusCode.RESOURCE_EXHAUSTED, "number"),
    ],
)
def test_bad_flows_requests(tmp_path: Path, request_kw, code, field) -> None:
    async def body(h: Harness) -> None:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await flows(h, **request_kw)
        assert err.value.code() == code
        assert (err.value.details() or "").startswith(field), err.value.details()

    run(tmp_path, body)


def test_bad_health_and_summaries_requests(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        for call, req, code, field in [
            (h.stub.Health, observer_pb2.HealthRequest(since_ns=10, until_ns=5), INVALID.name, "until_ns"),
            (h.stub.Health, observer_pb2.HealthRequest(filter=F(dst=["x/1"])), INVALID.name, "filter.dst"),
            (h.stub.Summaries, observer_pb2.SummariesRequest(since_ns=9, until_ns=1), "INVALID_ARGUMENT",
             "until_ns"),
            (h.stub.Summaries, observer_pb2.SummariesRequest(number=10**6), "RESOURCE_EXHAUSTED", "number"),
        ]:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call(req, timeout=10)
            assert err.value.code().name == code
            assert (err.value.details() or "").startswith(field)

    run(tmp_path, body)


def test_deadline_stops_a_query(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        await h.period(*[flow(i) for i in range(1, 600)])
        store = h.node.store
        with store.reader() as conn, pytest.raises(StoreTimeout):
            list(store.query_flows(FlowQuery(), conn, deadline=time.monotonic() - 1))
        # a scan that matches nothing still stops at its deadline: chunks are read one at a time and the
        # deadline is checked before each (a scan of these 59,000 flows takes ~1 ms, so it is already past)
        for start in range(1000, 60_000, 20_000):
            await h.period(*[flow(i, comm="busy") for i in range(start, min(start + 20_000, 60_000))])
        nothing = Selector.from_request([F(comm=["nobody"])], [])
        with pytest.raises(StoreTimeout):
            h.node.observer._history(FlowQuery(), nothing, 10, time.monotonic() - 0.001)
        with pytest.raises(StoreTimeout):
            h.node.observer._health(1, T0 + 10**6 * S, nothing, time.monotonic() - 0.001)
        assert h.node.observer._history(FlowQuery(), nothing, 10, time.monotonic() + 30).items == []
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await flows(h, whitelist=[F(comm=["nobody"])], timeout=0.001)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED

    run(tmp_path, body)


def test_summaries(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        h.sensor.add_completeness(Completeness(lost_events=4, map_evictions=1))
        await h.period(flow(1), flow(2, outcome="timeout"), active=[flow(3, kind="interim")])
        await h.period(flow(4, dport=22))
        resp = await h.stub.Summaries(observer_pb2.SummariesRequest(), timeout=10)
        newest, older = resp.summaries
        assert newest.seq > older.seq and newest.final_flows == 1 and newest.node_id == "test-node"
        assert (older.final_flows, older.interim_flows) == (2, 1)
        assert older.completeness.lost_events == 4 and older.completeness.map_evictions == 1
        assert older.completeness.flows_recorded == 2
        [proc] = older.by_process
        assert (proc.key, proc.flows, proc.useful, dict(proc.failures)) == ("curl/100", 3, 2, {"timeout": 1})
        assert newest.by_destination[0].service == "ssh"
        assert list(newest.by_service) == []  # no inbound flows

    run(tmp_path, body)


def test_rollups_merge_the_window_with_series(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        await h.period(flow(1), flow(2, outcome="refused", bytes_tx=0, bytes_rx=0, srtt_us=0))
        await h.period(flow(3, retransmits=4),
                       flow(4, direction="inbound", src="10.0.0.1", sport=8000, dst="10.0.0.7", dport=51000,
                            comm="server", pid=9))
        resp = await h.stub.Rollups(observer_pb2.RollupsRequest(), timeout=10)
        assert [p.seq for p in resp.periods] == sorted(p.seq for p in resp.periods) and len(resp.periods) == 2
        [dest] = resp.by_destination  # the inbound flow is not a destination
        t = dest.totals
        assert (t.key, t.flows, t.useful, dict(t.failures), t.retransmits, t.service) == (
            "10.0.0.2:443", 3, 2, {"refused": 1}, 4, "https")
        assert (list(dest.flows), list(dest.failures), list(dest.retransmits)) == ([2, 1], [1, 0], [0, 4])
        assert (t.flows_retransmitting, t.flows_slow_connect) == (1, 0)  # 4 of 5 segments sent again
        [svc] = resp.by_service
        assert (svc.totals.key, list(svc.flows)) == ("10.0.0.1:8000", [0, 1])
        assert [r.totals.key for r in resp.by_process] == ["curl/100", "server/9"]
        assert resp.by_process_omitted == 0 and resp.until_ns - resp.since_ns == 15 * 60 * S
        cut = await h.stub.Rollups(observer_pb2.RollupsRequest(number=1), timeout=10)
        assert [r.totals.key for r in cut.by_process] == ["curl/100"] and cut.by_process_omitted == 1
        soon = time.time_ns() + 60 * S
        later = await h.stub.Rollups(observer_pb2.RollupsRequest(since_ns=soon, until_ns=soon + S), timeout=10)
        assert list(later.periods) == [] and list(later.by_process) == []
        for req, code, name in ((observer_pb2.RollupsRequest(since_ns=9, until_ns=1), "INVALID_ARGUMENT",
                                 "until_ns"),
                                (observer_pb2.RollupsRequest(number=10**6), "RESOURCE_EXHAUSTED", "number")):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await h.stub.Rollups(req, timeout=10)
            assert err.value.code().name == code and (err.value.details() or "").startswith(name)

    run(tmp_path, body)


def test_events_history_follow_and_filters(tmp_path: Path) -> None:
    def ev(kind: str, t: int, comm: str = "curl") -> EventRecord:
        return EventRecord(type=kind, time_ns=t, flow=flow(t, comm=comm), value=3.0, detail="x")

    async def body(h: Harness) -> None:
        h.sensor.push_event(ev("retransmit_burst", 1))
        h.sensor.push_event(ev("zero_window", 2))
        h.sensor.push_event(ev("retransmit_burst", 3, comm="other"))
        await h.node.tick()
        req = observer_pb2.EventsRequest(number=10, whitelist=[F(event_type=[flow_pb2.RETRANSMIT_BURST])])
        got = [r.event async for r in h.stub.Events(req, timeout=10)]
        assert [(e.time_ns, e.flow.comm, e.value) for e in got] == [(1, "curl", 3.0), (3, "other", 3.0)]
        call = h.stub.Events(observer_pb2.EventsRequest(follow=True, blacklist=[F(comm=["other"])]),
                             timeout=10)
        await asyncio.sleep(0.1)
        h.sensor.push_event(ev("drop", 4, comm="other"))
        h.sensor.push_event(ev("drop", 5))
        await h.node.tick()
        got_ev = (await asyncio.wait_for(call.read(), 2)).event
        assert (got_ev.type, got_ev.time_ns) == (flow_pb2.DROP, 5)
        call.cancel()

    run(tmp_path, body)


def test_status_fields(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        h.sensor.add_completeness(Completeness(ringbuf_overruns=2))
        await h.period(flow(1), active=[flow(2), flow(3)])
        st = await h.stub.Status(observer_pb2.StatusRequest(), timeout=10)
        assert (st.node_id, st.sensor_mode, st.scope) == ("test-node", "fake", "/")
        assert st.fidelity == flow_pb2.EXACT
        assert st.listen == h.node.api.address and st.data_dir == str(tmp_path)
        assert dict(st.labels) == {"site": "lab"}
        assert st.periods == 1 and st.store_rows == 1 and st.store_bytes > 0 and st.active_flows == 2
        assert st.completeness.ringbuf_overruns == 2 and st.completeness.flows_recorded == 1
        assert st.export_period_s == 3600.0 and st.uptime_s > 0 and st.version
        assert st.insecure

    run(tmp_path, body)


def test_health_checking_and_reflection(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        health = health_pb2_grpc.HealthStub(h.channel)
        for service in ("", OBSERVER_SERVICE):
            resp = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert resp.status == health_pb2.HealthCheckResponse.SERVING
        refl = reflection_pb2_grpc.ServerReflectionStub(h.channel)
        call = refl.ServerReflectionInfo(timeout=10)
        await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
        resp = await call.read()
        await call.done_writing()
        names = {s.name for s in resp.list_services_response.service}
        assert {OBSERVER_SERVICE, HEALTH_SERVICE, "grpc.reflection.v1alpha.ServerReflection",
                "grpc.reflection.v1.ServerReflection"} <= names

    run(tmp_path, body)


def test_reflection_v1_as_grpcurl_asks_it(tmp_path: Path) -> None:
    """A client that knows only ``grpc.reflection.v1`` (grpcurl asks it first): messages built from the v1 file in
    a pool of the client's own, on v1's method path; it lists the services and describes the Observer and v1."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    from meshnode.api._reflection import v1_file

    pool = descriptor_pool.DescriptorPool()
    pool.Add(v1_file())
    request_t = message_factory.GetMessageClass(
        pool.FindMessageTypeByName("grpc.reflection.v1.ServerReflectionRequest"))
    response_t = message_factory.GetMessageClass(
        pool.FindMessageTypeByName("grpc.reflection.v1.ServerReflectionResponse"))

    async def body(h: Harness) -> None:
        call = h.channel.stream_stream("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
                                       request_serializer=lambda m: m.SerializeToString(),
                                       response_deserializer=response_t.FromString)(timeout=10)
        await call.write(request_t(list_services=""))
        names = {s.name for s in (await call.read()).list_services_response.service}
        assert {OBSERVER_SERVICE, HEALTH_SERVICE, "grpc.reflection.v1.ServerReflection"} <= names
        described = {}
        for symbol in (OBSERVER_SERVICE, "grpc.reflection.v1.ServerReflection"):
            await call.write(request_t(file_containing_symbol=symbol))
            files = (await call.read()).file_descriptor_response.file_descriptor_proto
            described[symbol] = {descriptor_pb2.FileDescriptorProto.FromString(f).package for f in files}
        await call.done_writing()
        assert "meshnode.v1" in described[OBSERVER_SERVICE]
        assert described["grpc.reflection.v1.ServerReflection"] == {"grpc.reflection.v1"}

    run(tmp_path, body)


def test_sql_pushdown_agrees_with_python_filters(tmp_path: Path) -> None:
    """The store's SQL for a selector returns exactly what the Python ``matches`` accepts."""
    import random

    from meshnode.api import Selector
    from meshnode.store import Store

    rng = random.Random(7)
    recs = [
        flow(i, comm=rng.choice(["curl", "apt", "ssh"]), pid=rng.choice([1, 2]),
             dst=rng.choice(["10.1.2.3", "10.2.0.1", "192.0.2.9", "fd00::7", "fe80::1"]),
             dport=rng.choice([22, 80, 443]), sport=rng.choice([22, 40000, 50000]),
             outcome=rng.choice(["established", "refused", "timeout"]), proto=rng.choice(["tcp", "udp"]),
             direction=rng.choice(["inbound", "outbound"]),
             cgroup=rng.choice(["", "/", "/a", "/a/b", "/ab", "/system.slice/x.service"]))
        for i in range(1, 400)
    ]
    filters = [
        ([F(comm=["curl"], dport=[443])], []),
        ([F(dst=["10.0.0.0/8", "fd00::/8"])], [F(outcome=[flow_pb2.REFUSED])]),
        ([F(dst=["192.0.2.9"]), F(port=[22])], [F(proto=[flow_pb2.UDP]), F(pid=[2], sport=[50000])]),
        ([F(cgroup=["/a"])], []),
        ([F(cgroup=["/"])], [F(cgroup=["/system.slice/"])]),
        ([], [F(direction=[flow_pb2.INBOUND])]),
        ([F()], [F(comm=["ssh"], outcome=[flow_pb2.TIMEOUT, flow_pb2.REFUSED])]),
        ([F(dst=["10.1.2.3/32"], comm=["apt", "ssh"])], []),
    ]
    with Store(tmp_path / "m.db") as store:
        seq = store.open_period(T0)
        store.close_period(seq, T0 + 1000 * S, recs, [], "")
        for allow, deny in filters:
            sel = Selector.from_request(allow, deny)
            want = [r.flow_id for r in recs if sel.matches(r)]
            with store.reader() as conn:
                got = [s.record.flow_id for s in store.query_flows(sel.query(FlowQuery()), conn)]
            assert got == want, (allow, deny)
            assert want  # each case selects something


def test_more_services_on_the_same_port(tmp_path: Path) -> None:
    """The mesh registers its servicer on the node's server; health and reflection list it."""
    from meshnode.api import ApiServer, ObserverServicer
    from meshnode.store import Store

    def register(server: grpc.aio.Server) -> None:
        async def ping(request: bytes, context: object) -> bytes:
            return b"pong:" + request

        handler = grpc.method_handlers_generic_handler("test.Echo", {
            "Ping": grpc.unary_unary_rpc_method_handler(ping),
        })
        server.add_generic_rpc_handlers((handler,))

    async def main() -> None:
        with Store(tmp_path / "m.db") as store:
            api = ApiServer("127.0.0.1:0", ObserverServicer(store))
            api.add_servicer(register, "test.Echo")
            await api.start()
            try:
                async with grpc.aio.insecure_channel(api.address) as ch:
                    assert await ch.unary_unary("/test.Echo/Ping")(b"x", timeout=5) == b"pong:x"
                    health = health_pb2_grpc.HealthStub(ch)
                    resp = await health.Check(health_pb2.HealthCheckRequest(service="test.Echo"), timeout=5)
                    assert resp.status == health_pb2.HealthCheckResponse.SERVING
                    call = reflection_pb2_grpc.ServerReflectionStub(ch).ServerReflectionInfo(timeout=5)
                    await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
                    names = {s.name for s in (await call.read()).list_services_response.service}
                    await call.done_writing()
                    assert {"test.Echo", OBSERVER_SERVICE} <= names
            finally:
                await api.stop()
            with pytest.raises(RuntimeError):
                api._server = object()  # type: ignore[assignment]
                api.add_servicer(register)

    asyncio.run(main())


def test_batched_flows_same_records_packed_and_paged(tmp_path: Path) -> None:
    """batch_size packs records into each response (meshctl asks for 1,000: one message per record costs
    gRPC Python ~70 us); the records, their order and paging are those of the unbatched answer."""
    async def body(h: Harness) -> None:
        await h.period(*[flow(i) for i in range(1, 26)])
        plain = records(await flows(h))
        packed = await flows(h, batch_size=7)
        assert [len(r.flows) for r in packed] == [7, 7, 7, 4]
        assert all(not r.HasField("flow") for r in packed)
        assert [FlowRecord.from_proto(f) for r in packed for f in r.flows] == plain
        seen: list[int] = []
        token = ""
        while True:
            page = await flows(h, number=10, batch_size=4, page_token=token)
            assert [len(r.flows) for r in page] in ([4, 4, 2], [4, 1])
            seen += [f.flow_id for r in page for f in r.flows]
            token = page[-1].next_page_token
            assert all(not r.next_page_token for r in page[:-1])
            if not token:
                break
        assert seen == list(range(1, 26))

    run(tmp_path, body)


def test_a_forged_page_token_out_of_range_is_refused(tmp_path: Path) -> None:
    """The token's fingerprint is computable by any client: a key outside the store's 64-bit integers must
    be refused as a bad argument, not reach the store (SQLite refused to bind it: an internal error)."""
    from meshnode.api._servicer import encode_page_token

    async def body(h: Harness) -> None:
        await h.period(flow(1), flow(2))
        for key in ((2**70, 0, 1), (1, 0, -(2**64)), (1, 5, 1)):
            req = observer_pb2.FlowsRequest(number=10)
            req.page_token = encode_page_token(req, key)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                async for _ in h.stub.Flows(req, timeout=10):
                    pass
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (key, err.value.details())
            assert (err.value.details() or "").startswith("page_token")

    run(tmp_path, body)
