"""Property-based fuzzing of every Observer, Diagnosis and Trust request message, over real gRPC (the store
holds flows and DNS transactions).

One node runs in this process (store with history, the mesh, trust and diagnosis, as ``meshnode run``
wires them) on an event loop in a thread of its own; hypothesis sends it arbitrary requests through a
plain gRPC channel: every field drawn from its type with the extremes (2**64-1, NaN, unknown enum numbers),
garbage and oversized text, repeated fields up to thousands of values, and page tokens both random and
forged (valid base64 JSON with wrong keys, huge or fractional numbers). The node must answer each with a
proper status (never UNKNOWN or INTERNAL), hold no stream or worker afterwards, and still answer ``Status``.

``MESHNODE_FUZZ_EXAMPLES`` sets the examples per message type (default 600: the module then takes about a
minute on the shared 2-core machine, most of it in Flows and Events; a soak run sets more).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshnode._dns import DnsBatch
from meshnode._model import FlowRecord
from meshnode.daemon import Node, NodeConfig
from meshnode.daemon._security import NodeSecurity
from meshnode.daemon._services import MeshRunner, extra_services
from meshnode.sensor import DnsRecord
from meshnode.sensor._fake import FakeSensor
from meshnode.v1 import (
    diagnosis_pb2,
    diagnosis_pb2_grpc,
    observer_pb2,
    observer_pb2_grpc,
    trust_pb2,
    trust_pb2_grpc,
)
from tests._support.nodeproc import percentile

EXAMPLES = int(os.environ.get("MESHNODE_FUZZ_EXAMPLES", "600"))
S = 1_000_000_000
PROPER_ERRORS = frozenset(grpc.StatusCode) - {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}


@dataclass
class FuzzNode:
    node: Node
    loop: asyncio.AbstractEventLoop
    channel: grpc.Channel
    counts: dict[str, int]

    def status_ms(self) -> float:
        stub = observer_pb2_grpc.ObserverStub(self.channel)
        began = time.monotonic()
        stub.Status(observer_pb2.StatusRequest(), timeout=5)
        return (time.monotonic() - began) * 1000


def _history(node: Node) -> None:
    """Two closed periods of varied flows (both directions, failures, IPv6, interims) in the store."""
    now = time.time_ns()
    outcomes = ["established", "refused", "timeout", "reset", "udp_answered", "udp_unanswered"]
    for p in range(2):
        seq = node.store.open_period(now - (3 - p) * 60 * S)
        recs = [FlowRecord(flow_id=p * 1000 + i + 1, src="10.0.0.1", sport=30000 + i, dst=("fd00::9" if i % 7 else
                           f"10.0.{i % 4}.{i % 50}"), dport=[443, 53, 22, 8080][i % 4],
                           proto="udp" if "udp" in outcomes[i % 6] else "tcp",
                           direction="inbound" if i % 5 == 0 else "outbound", pid=100 + i % 3,
                           comm=["curl", "dig", "名前"][i % 3], cgroup=f"/lab/{i % 3}",
                           start_ns=now - (3 - p) * 60 * S + i * S // 10, end_ns=now - (2 - p) * 60 * S + i,
                           outcome=outcomes[i % 6], bytes_tx=i, bytes_rx=2 * i, srtt_us=100 + i, kind="final")
                for i in range(100)]
        rcodes = ["NOERROR", "NXDOMAIN", "SERVFAIL", "REFUSED", "RCODE11"]
        dns = [DnsRecord(time_ns=now - (2 - p) * 60 * S - i, server="fd00::53" if i % 3 else "10.0.0.53",
                         query=["a.example.com", "名前.test", "", "x" * 253][i % 4], qtype="A", rcode=rcodes[i % 5],
                         answers=1 + i % 2, timed=i % 2, latency_us=i * 100, latency_max_us=i * 150, addresses=i % 3,
                         pid=100 + i % 3, comm="dig", netns=2**64 - 1, tcp=bool(i % 2)) for i in range(50)]
        node.store.close_period(seq, now - (2 - p) * 60 * S, recs, recs[:20], "", next_start_ns=None,
                                dns=DnsBatch.from_records(dns))


@pytest.fixture(scope="module")
def fuzz_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzNode]:
    data = tmp_path_factory.mktemp("fuzz-node")
    cfg = NodeConfig(listen="127.0.0.1:0", metrics="off", watch_addresses=False, data_dir=data, node_id="fuzz",
                     labels={"site": "lab", "region": "eu"}, export_period=3600.0, retention_age=0.0,
                     insecure=True, active_tasks=False)
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    stop = asyncio.Event()
    holder: dict[str, Any] = {}

    async def main() -> None:
        node = Node(cfg, FakeSensor("/"))
        _history(node)
        services = extra_services(node)
        mesh = next(s for s in services if isinstance(s, MeshRunner))
        NodeSecurity.from_config(cfg).apply(node, mesh.mesh)
        for svc in services:
            node.add_service(svc)
        holder["node"] = node
        task = asyncio.ensure_future(node.run(stop))
        while not node.api.port and not task.done():
            await asyncio.sleep(0.01)
        ready.set()
        await task

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    assert ready.wait(30), "the node did not start"
    node: Node = holder["node"]
    with grpc.insecure_channel(node.api.address, options=[("grpc.max_send_message_length", 64 << 20)]) as ch:
        yield FuzzNode(node, loop, ch, {})
    loop.call_soon_threadsafe(stop.set)
    thread.join(30)
    assert not thread.is_alive(), "the node did not stop"


# -- strategies: any message, from its descriptor -------------------------------------------------------------

_INTS = {
    FieldDescriptor.TYPE_UINT64: (0, (1 << 64) - 1), FieldDescriptor.TYPE_FIXED64: (0, (1 << 64) - 1),
    FieldDescriptor.TYPE_UINT32: (0, (1 << 32) - 1), FieldDescriptor.TYPE_FIXED32: (0, (1 << 32) - 1),
    FieldDescriptor.TYPE_INT64: (-(1 << 63), (1 << 63) - 1), FieldDescriptor.TYPE_SINT64: (-(1 << 63), (1 << 63) - 1),
    FieldDescriptor.TYPE_INT32: (-(1 << 31), (1 << 31) - 1), FieldDescriptor.TYPE_SINT32: (-(1 << 31), (1 << 31) - 1),
}
_TEXTS = ["", "10.0.0.1", "10.0.0.0/8", "fd00::9", "fd00::/8", "fe80::1%eth0", "::ffff:10.0.0.1", "300.1.1.1",
          "1.2.3.4/33", "10.0.0.1:443", "[fd00::9]:443", "curl", "名前", "/lab/1", "/", "host", "site", "region",
          "\x00", "a" * 300, "%s%n", "'; DROP TABLE flows; --"]


def _int(lo: int, hi: int) -> st.SearchStrategy[int]:
    edges = sorted({lo, hi, 0, 1, hi // 2, hi // 2 + 1, min(hi, (1 << 63) - 1), min(hi, 1 << 63) if hi >= 1 << 63
                    else hi, max(lo, -1)} & set(range(lo, hi + 1)) if hi < 1 << 20 else
                   {v for v in (lo, hi, 0, 1, hi // 2, hi // 2 + 1, (1 << 63) - 1, 1 << 63, -1, 65535, 65536,
                                1_000_000, 1_000_001) if lo <= v <= hi})
    return st.one_of(st.sampled_from(edges), st.integers(lo, hi), st.integers(max(lo, 0), min(hi, 1 << 20)))


def _text(small: bool = False) -> st.SearchStrategy[str]:
    """Known-interesting text, any text, and (unless ``small``: thousands of copies are made) up to 20,000
    characters."""
    if small:
        return st.one_of(st.sampled_from(_TEXTS), st.text(max_size=12))
    return st.one_of(st.sampled_from(_TEXTS), st.text(max_size=40), st.integers(0, 20_000).map(lambda n: "x" * n))


def _page_token() -> st.SearchStrategy[str]:
    """Random text, and forged tokens: base64 JSON with wrong, missing, huge or fractional fields."""
    value = st.one_of(st.none(), st.integers(-(1 << 70), 1 << 70), st.floats(), st.text(max_size=8),
                      st.lists(st.integers(-(1 << 70), 1 << 70), max_size=4),
                      st.lists(st.one_of(st.floats(), st.text(max_size=3)), max_size=4))
    forged = st.dictionaries(st.sampled_from(["k", "h", "n", "x"]), value, max_size=4).map(
        lambda d: base64.urlsafe_b64encode(json.dumps(d).encode()).decode().rstrip("="))
    raw = st.binary(max_size=60).map(lambda b: base64.urlsafe_b64encode(b).decode())
    return st.one_of(_text(), forged, raw)


def _field(f: FieldDescriptor, depth: int, small: bool = False) -> st.SearchStrategy[Any]:
    if f.type == FieldDescriptor.TYPE_MESSAGE:
        return message_strategy(f.message_type, depth + 1, small)
    if f.type in _INTS:
        return _int(*_INTS[f.type])
    if f.type == FieldDescriptor.TYPE_ENUM:
        numbers = [v.number for v in f.enum_type.values]
        return st.one_of(st.sampled_from(numbers), st.integers(-(1 << 31), (1 << 31) - 1))
    if f.type == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if f.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return st.floats(allow_nan=True, allow_infinity=True, width=64 if f.type == FieldDescriptor.TYPE_DOUBLE
                         else 32)
    if f.type == FieldDescriptor.TYPE_STRING:
        return _page_token() if f.name == "page_token" else _text(small)
    if f.type == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=64)
    raise AssertionError(f"no strategy for {f.full_name}")


def message_strategy(desc: Descriptor, depth: int = 0, small: bool = False) -> st.SearchStrategy[dict[str, Any]]:
    """Field values for ``desc`` (a dict for the message's constructor); repeated fields are empty, a few
    values, or thousands (over the API's caps) of one small value."""
    fields: dict[str, st.SearchStrategy[Any]] = {}
    for f in desc.fields:
        one = _field(f, depth, small)
        if f.is_repeated:
            many = st.tuples(_field(f, depth, small=True), st.integers(0, 2_000)).map(lambda t: [t[0]] * t[1])
            fields[f.name] = st.lists(one, max_size=2) if small or depth >= 2 else st.one_of(
                st.lists(one, max_size=4), many)
        else:
            fields[f.name] = one
    if not fields:
        return st.just({})
    return st.fixed_dictionaries({}, optional=fields)


# -- the calls ----------------------------------------------------------------------------------------------------

Call = Callable[[grpc.Channel], Callable[..., Any]]
RPCS: list[tuple[str, type[Message], Call, bool]] = [
    ("Flows", observer_pb2.FlowsRequest, lambda ch: observer_pb2_grpc.ObserverStub(ch).Flows, True),
    ("Summaries", observer_pb2.SummariesRequest, lambda ch: observer_pb2_grpc.ObserverStub(ch).Summaries, False),
    ("Rollups", observer_pb2.RollupsRequest, lambda ch: observer_pb2_grpc.ObserverStub(ch).Rollups, False),
    ("Health", observer_pb2.HealthRequest, lambda ch: observer_pb2_grpc.ObserverStub(ch).Health, False),
    ("Events", observer_pb2.EventsRequest, lambda ch: observer_pb2_grpc.ObserverStub(ch).Events, True),
    ("Status", observer_pb2.StatusRequest, lambda ch: observer_pb2_grpc.ObserverStub(ch).Status, False),
    ("DnsTransactions", observer_pb2.DnsTransactionsRequest,
     lambda ch: observer_pb2_grpc.ObserverStub(ch).DnsTransactions, False),
    ("Blame", diagnosis_pb2.BlameRequest, lambda ch: diagnosis_pb2_grpc.DiagnosisStub(ch).Blame, False),
    ("Compare", diagnosis_pb2.CompareRequest, lambda ch: diagnosis_pb2_grpc.DiagnosisStub(ch).Compare, False),
    ("Validate", trust_pb2.ValidateRequest, lambda ch: trust_pb2_grpc.TrustStub(ch).Validate, False),
    ("Challenge", trust_pb2.ChallengeRequest, lambda ch: trust_pb2_grpc.TrustStub(ch).Challenge, False),
]


def _call(fn: Callable[..., Any], request: Message, stream: bool, follow: bool) -> grpc.StatusCode:
    """The call's status; a follow stream is read for a moment and cancelled."""
    try:
        if not stream:
            fn(request, timeout=10)
            return grpc.StatusCode.OK
        call = fn(request, timeout=0.05 if follow else 10)
        try:
            for _ in call:
                pass
        finally:
            call.cancel()
        return grpc.StatusCode.OK
    except grpc.RpcError as exc:
        code: grpc.StatusCode = exc.code()  # type: ignore[attr-defined]
        what = f"{exc.details()} for {str(request)[:2000]}"  # type: ignore[attr-defined]
        assert code in PROPER_ERRORS, f"{code.name}: {what}"
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            assert follow, f"a call without follow ran past its deadline: {what}"
        return code


@pytest.mark.parametrize(("name", "cls", "stub", "stream"), RPCS, ids=[r[0] for r in RPCS])
def test_any_request_gets_a_proper_status_and_the_node_keeps_answering(
    fuzz_node: FuzzNode, name: str, cls: type[Message], stub: Call, stream: bool
) -> None:
    fn = stub(fuzz_node.channel)
    own = fuzz_node.node.mesh_node_id
    fields = message_strategy(cls.DESCRIPTOR)
    if name == "Challenge":  # the node itself is the one member a challenge can name
        fields = st.one_of(fields, fields.map(lambda d: {**d, "suspect": own}))
    codes: dict[str, int] = {}

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example])
    @given(fields)
    def one(values: dict[str, Any]) -> None:
        request = cls(**values)
        follow = bool(getattr(request, "follow", False))
        code = _call(fn, request, stream, follow)
        if stream:  # the stream's slot is given back before the next call (or the peer cap refuses it)
            for _ in range(1000):
                if not fuzz_node.node.api.guard.streams:
                    break
                time.sleep(0.001)
        codes[code.name] = codes.get(code.name, 0) + 1

    began = time.monotonic()
    one()
    took = time.monotonic() - began
    # nothing held afterwards: no stream counted to a peer, no Flows stream open, no worker busy
    node = fuzz_node.node
    for _ in range(50):
        if not node.api.guard.streams and not node.observer._streams and not node.observer.executor.busy:
            break
        time.sleep(0.1)
    assert not node.api.guard.streams and not node.observer._streams and not node.observer.executor.busy
    assert node.api.guard.counters["internal_errors"] == 0
    latencies = [fuzz_node.status_ms() for _ in range(20)]
    print(f"{name}: {sum(codes.values())} cases in {took:.1f} s ({codes}); Status after: p50 "
          f"{percentile(latencies, 0.5):.1f} ms, max {max(latencies):.1f} ms")
    assert sum(codes.values()) >= (min(EXAMPLES, 100) if cls.DESCRIPTOR.fields else 1)
    assert percentile(latencies, 0.5) < 100 and max(latencies) < 500
