"""Status names the node by its mesh node id (key fingerprint) when the mesh runs, and its host name apart
(issue 6 leftover): the Status RPC, the daemon's mesh seam, and meshctl status."""

from __future__ import annotations

import asyncio
from pathlib import Path

from meshnode.cli._convert import message_dict
from meshnode.cli._output import render_text
from meshnode.cli._views import status_view
from meshnode.daemon import Node, NodeConfig
from meshnode.sensor._fake import FakeSensor
from meshnode.v1 import observer_pb2
from tests._support.fakenode import sample_status
from tests.unit._node import running_node


def test_status_rpc_says_the_mesh_node_id_and_the_host_apart(tmp_path: Path) -> None:
    async def run() -> tuple[observer_pb2.StatusResponse, observer_pb2.StatusResponse]:
        async with running_node(tmp_path) as h:
            alone = await h.stub.Status(observer_pb2.StatusRequest(), timeout=5)
            h.node.mesh_node_id = "3f2a9c0d1e2b4a5f"
            meshed = await h.stub.Status(observer_pb2.StatusRequest(), timeout=5)
            return alone, meshed

    alone, meshed = asyncio.run(run())
    assert (alone.node_id, alone.host) == ("test-node", "test-node")
    assert (meshed.node_id, meshed.host) == ("3f2a9c0d1e2b4a5f", "test-node")


def test_the_mesh_seam_gives_the_node_its_key_fingerprint(tmp_path: Path) -> None:
    from meshnode.daemon._services import MeshRunner
    from meshnode.mesh import NodeKey

    cfg = NodeConfig(listen="127.0.0.1:0", metrics="off", watch_addresses=False, data_dir=tmp_path,
                     node_id="web-1", insecure=True)
    node = Node(cfg, FakeSensor("/"))
    try:
        runner = MeshRunner(node)
        key_id = NodeKey.load_or_create(tmp_path / "node.key").node_id
        assert node.mesh_node_id == runner.mesh.node_id == key_id != "web-1"
        st = node.status()
        assert (st.node_id, st.host) == (key_id, "web-1")
    finally:
        node.store.close()


def test_meshctl_status_shows_the_host_beside_the_node_id() -> None:
    s = sample_status()
    s.host = "web-1"
    out = render_text(status_view(message_dict(s), plain=True), width=80)
    assert out.splitlines()[0] == "node     3f2a9c0d1e2b4a5f (host web-1)  meshnode 0.1.0, up 2h30m"
    s.host = s.node_id  # a node without the mesh: its id is its host name, said once
    out = render_text(status_view(message_dict(s), plain=True), width=80)
    assert out.splitlines()[0] == "node     3f2a9c0d1e2b4a5f  meshnode 0.1.0, up 2h30m"
