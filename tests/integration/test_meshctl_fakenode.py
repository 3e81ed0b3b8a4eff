"""The fake node meshctl's tests run against (tests/_support/fakenode.py) serves what it was given."""

from __future__ import annotations

import grpc

from meshnode.v1 import observer_pb2, observer_pb2_grpc
from tests._support.fakenode import FakeNode


def test_fake_serves_status_and_flows() -> None:
    with FakeNode() as node, grpc.insecure_channel(node.address) as ch:
        stub = observer_pb2_grpc.ObserverStub(ch)
        assert stub.Status(observer_pb2.StatusRequest(), timeout=5).node_id == "3f2a9c0d1e2b4a5f"
        got = list(stub.Flows(observer_pb2.FlowsRequest(batch_size=2, include_interim=True), timeout=5))
        assert [len(r.flows) for r in got] == [2, 2, 1]
