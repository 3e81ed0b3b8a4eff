"""The API's limits: filter caps, matching that does not grow with the values, stream age and resume, and
``ApiGuard`` (default deadline, INTERNAL for a servicer's bug, streams per peer)."""

from __future__ import annotations

import asyncio
import ipaddress
from pathlib import Path

import grpc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshnode.api import ApiLimits, ApiServer, FilterError, ObserverServicer, Selector, compile_filter
from meshnode.api._filters import NetSet, _under_any
from meshnode.store import Store
from meshnode.v1 import flow_pb2, observer_pb2, observer_pb2_grpc
from tests.unit._flows import flow
from tests.unit._node import Harness, running_node

F = flow_pb2.FlowFilter
RESUME = "meshnode-page-token"


@pytest.mark.parametrize(("whitelist", "field"), [
    ([F(dst=["10.0.0.1"] * 1_025)], "whitelist[0].dst"),
    ([F(port=[1] * 1_024), F(pid=[1] * 1_024), F(comm=["a"] * 1_024), F(sport=[1] * 1_024), F(dport=[1])],
     "whitelist[4].dport"),
    ([F()] * 65, "whitelist"),
    ([F(cgroup=["/" + "a" * 5_000])], "whitelist[0].cgroup[0]"),
])
def test_filters_over_the_caps_are_refused_naming_the_field(whitelist: list[flow_pb2.FlowFilter], field: str) -> None:
    with pytest.raises(FilterError) as err:
        Selector.from_request(whitelist, [])
    assert err.value.field == field
    Selector.from_request([F(dst=["10.0.0.1"] * 1_024)], [])  # the cap itself is allowed


_NETS = st.one_of(
    st.builds(lambda a, p: ipaddress.ip_network((a, p), strict=False), st.integers(0, (1 << 32) - 1),
              st.integers(0, 32)),
    st.builds(lambda a, p: ipaddress.ip_network((a, p), strict=False), st.integers(0, (1 << 128) - 1),
              st.integers(0, 128)),
)
_ADDRS = st.one_of(st.integers(0, (1 << 32) - 1).map(ipaddress.IPv4Address),
                   st.integers(0, (1 << 128) - 1).map(ipaddress.IPv6Address))


@settings(max_examples=300, deadline=None)
@given(st.lists(_NETS, max_size=20), st.lists(_ADDRS, max_size=10))
def test_netset_agrees_with_testing_each_network(nets: list[ipaddress.IPv4Network], addrs: list[ipaddress.IPv4Address]
                                                 ) -> None:
    ns = NetSet(nets)
    for a in [*addrs, *(n.network_address for n in nets), *(n.broadcast_address for n in nets)]:
        assert (a in ns) == any(a in n for n in nets), (a, nets)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["", "/", "/a", "/a/", "/a/b", "/ab", "/b", "a"]), max_size=4),
       st.sampled_from(["", "/", "/a", "/a/b", "/a/b/c", "/ab", "/abc", "/b", "a", "a/b"]))
def test_cgroup_prefixes_agree_with_testing_each(prefixes: list[str], path: str) -> None:
    def under(p: str, prefix: str) -> bool:
        p, prefix = p or "/", prefix.rstrip("/")
        return not prefix or p == prefix or p.startswith(prefix + "/")

    compiled = compile_filter(F(cgroup=prefixes), "f")
    assert _under_any(path, compiled.cgroup_prefixes) == any(under(path, q) for q in prefixes)


def test_a_follow_stream_ends_at_its_age_and_resumes_without_gap_or_repeat(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        await h.period(flow(1))
        req = observer_pb2.FlowsRequest(follow=True, number=5)
        call = h.stub.Flows(req, timeout=10)
        assert (await call.read()).flow.flow_id == 1
        await asyncio.sleep(0.1)
        await h.period(flow(2))
        assert (await asyncio.wait_for(call.read(), 2)).flow.flow_id == 2
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await asyncio.wait_for(call.read(), 3)
        assert err.value.code() == grpc.StatusCode.ABORTED and "maximum age" in (err.value.details() or "")
        token = dict(err.value.trailing_metadata() or ()).get(RESUME)
        assert token
        await h.period(flow(3))  # closed while the client was away
        req.page_token = str(token)
        call = h.stub.Flows(req, timeout=10)
        assert (await asyncio.wait_for(call.read(), 2)).flow.flow_id == 3  # not 1 or 2 again
        await asyncio.sleep(0.1)
        await h.period(flow(4))
        assert (await asyncio.wait_for(call.read(), 2)).flow.flow_id == 4
        call.cancel()

    async def main() -> None:
        async with running_node(tmp_path, api_stream_age=1.0) as h:
            await body(h)

    asyncio.run(main())


def test_guard_gives_a_default_deadline_internal_for_bugs_and_caps_streams_per_peer(tmp_path: Path) -> None:
    async def slow(request: bytes, context: object) -> bytes:
        await asyncio.sleep(10)
        return request

    async def boom(request: bytes, context: object) -> bytes:
        raise RuntimeError("a bug")

    def register(server: grpc.aio.Server) -> None:
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Guarded", {
            "Slow": grpc.unary_unary_rpc_method_handler(slow),
            "Boom": grpc.unary_unary_rpc_method_handler(boom),
        }),))

    async def main() -> None:
        with Store(tmp_path / "m.db") as store:
            limits = ApiLimits(default_deadline_s=0.3, streams_per_peer=2)
            api = ApiServer("127.0.0.1:0", ObserverServicer(store, limits=limits))
            api.add_servicer(register, "test.Guarded", guarded=True)
            await api.start()
            try:
                async with grpc.aio.insecure_channel(api.address) as ch:
                    with pytest.raises(grpc.aio.AioRpcError) as err:
                        await ch.unary_unary("/test.Guarded/Slow")(b"x")  # the client sets no deadline
                    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                    assert "default deadline" in (err.value.details() or "")
                    with pytest.raises(grpc.aio.AioRpcError) as err:
                        await ch.unary_unary("/test.Guarded/Boom")(b"x", timeout=5)
                    assert err.value.code() == grpc.StatusCode.INTERNAL and "a bug" in (err.value.details() or "")
                    stub = observer_pb2_grpc.ObserverStub(ch)
                    follow = observer_pb2.FlowsRequest(follow=True)
                    held = [stub.Flows(follow) for _ in range(2)]
                    await asyncio.sleep(0.2)
                    with pytest.raises(grpc.aio.AioRpcError) as err:
                        await stub.Flows(follow, timeout=5).read()
                    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                    assert "streams per peer" in (err.value.details() or "")
                    held[0].cancel()
                    await asyncio.sleep(0.2)
                    third = stub.Flows(follow)  # a slot was given back
                    await asyncio.sleep(0.2)
                    assert not third.done()
                    for c in (*held, third):
                        c.cancel()
                    assert api.guard.counters["streams_per_peer"] == 1
                    assert api.guard.counters["internal_errors"] == 1
            finally:
                await api.stop()

    asyncio.run(main())


def test_streams_are_capped_per_client_certificate_under_mutual_tls(tmp_path: Path) -> None:
    """Two meshctl certificates calling from one address (a NAT, a bastion) each get the cap; one certificate
    gets it once, however many connections it opens."""
    from meshnode.trust import server_credentials
    from tests._support.tlsnode import Pki

    pki = Pki(tmp_path / "pki")
    server_dir, alice, bob = pki.node("node"), pki.client("alice"), pki.client("bob")

    async def main() -> None:
        with Store(tmp_path / "m.db") as store:
            api = ApiServer("127.0.0.1:0", ObserverServicer(store, limits=ApiLimits(streams_per_peer=2)),
                            credentials=server_credentials(server_dir, "node"))
            await api.start()
            follow = observer_pb2.FlowsRequest(follow=True)
            channels = [pki.channel(api.address, d) for d in (alice, alice, bob)]
            try:
                a1, a2, b = (observer_pb2_grpc.ObserverStub(c) for c in channels)
                held = [a1.Flows(follow), a2.Flows(follow)]  # alice's two, on two connections
                await asyncio.sleep(0.3)
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await a2.Flows(follow, timeout=5).read()
                assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert "cert:" in (err.value.details() or "")
                bobs = [b.Flows(follow) for _ in range(2)]  # same address, another certificate: its own cap
                await asyncio.sleep(0.3)
                assert not any(c.done() for c in (*held, *bobs))
                assert api.guard.counters["streams_per_peer"] == 1 and len(api.guard.streams) == 2
                for c in (*held, *bobs):
                    c.cancel()
            finally:
                for c in channels:
                    await c.close()
                await api.stop()

    asyncio.run(main())
