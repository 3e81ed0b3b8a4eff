"""A real node (store, gRPC API on 127.0.0.1:0) around a FakeSensor, for API and daemon tests."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc

from meshnode.daemon import Node, NodeConfig
from meshnode.sensor._fake import FakeSensor
from meshnode.v1 import observer_pb2_grpc


@dataclass
class Harness:
    node: Node
    sensor: FakeSensor
    channel: grpc.aio.Channel
    stub: observer_pb2_grpc.ObserverStub

    async def period(self, *records, active=()) -> None:
        """Feed ended records (and set active ones), poll once and close a period."""
        self.sensor.feed(records)
        self.sensor.set_active(active)
        await self.node.tick()
        await self.node.close_period()


@contextlib.asynccontextmanager
async def running_node(tmp_path: Path, **config: object) -> AsyncIterator[Harness]:
    cfg = NodeConfig(**{  # type: ignore[arg-type]
        "listen": "127.0.0.1:0", "metrics": "off", "watch_addresses": False, "data_dir": tmp_path,
        "node_id": "test-node", "labels": {"site": "lab"}, "export_period": 3600.0,
        "retention_age": 0.0, **config,
    })
    sensor = FakeSensor("/")
    node = Node(cfg, sensor)
    await node.start()
    channel = grpc.aio.insecure_channel(node.api.address)
    try:
        yield Harness(node, sensor, channel, observer_pb2_grpc.ObserverStub(channel))
    finally:
        await channel.close()
        await node.shutdown()
