"""A fleet of real ``MeshService`` nodes, each on its own grpc.aio server on 127.0.0.1, joined and published."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Sequence

import grpc

from meshnode.mesh import LocalDigestSource, MeshConfig, MeshService, NodeKey, SiteConfig, State

CALM = MeshConfig(probe_interval=1.0, probe_timeout=0.5, suspicion_mult=6, gossip_interval=0.2,
                  push_pull_interval=30.0, reconnect_interval=0)
"""Calm timers: these fleets test queries and digests, not failure detection, on a loaded 2-core machine."""
FAST = MeshConfig(probe_interval=0.2, probe_timeout=0.1, gossip_interval=0.05, push_pull_interval=1.0,
                  suspicion_mult=3, stream_timeout=1.0, reconnect_interval=0)
"""Fast timers: joins, probes and digest pulls within a second (mesh tests that wait for them)."""


async def until(pred: Callable[[], bool], timeout: float) -> None:
    """Poll ``pred`` every 0.1 s; fail when it is still false after ``timeout`` seconds."""
    start = time.monotonic()
    while not pred():
        assert time.monotonic() - start < timeout, "condition not met in time"
        await asyncio.sleep(0.1)


def three_sites(i: int) -> dict[str, str]:
    return {"region": "eu", "site": f"s{i % 3}", "host": f"h{i}"}


class Fleet:
    """Nodes ``fq-0``... with labels ``labels(i)`` (default ``region=eu, site=s{i % 3}, host=h{i}``), the first
    one the seed. With ``site_config``, site aggregates: membership per site (``start`` waits for every
    node to list its site's members)."""

    def __init__(self, name: str = "fq", labels: Callable[[int], dict[str, str]] = three_sites,
                 site_config: SiteConfig | None = None, config: MeshConfig = CALM) -> None:
        self.name = name
        self.labels = labels
        self.site_config = site_config
        self.config = config
        self.servers: list[grpc.aio.Server] = []
        self.meshes: list[MeshService] = []

    async def start(self, sources: Sequence[LocalDigestSource]) -> None:
        """One node per source, all joined (alive at the first node), each with its digest published."""
        for i, source in enumerate(sources):
            server = grpc.aio.server()
            port = server.add_insecure_port("127.0.0.1:0")
            mesh = MeshService(advertise=f"127.0.0.1:{port}", key=NodeKey.from_seed(f"{self.name}-{i}".encode()),
                               labels=self.labels(i), seeds=[self.meshes[0].advertise] if self.meshes else [],
                               source=source, config=self.config, export_period=0, rng=random.Random(i),
                               site_config=self.site_config, rejoin_interval=1.0 if self.site_config else 10.0)
            mesh.register(server)
            self.servers.append(server)
            await server.start()
            await mesh.start()
            self.meshes.append(mesh)
        if self.site_config is not None:
            await until(self.sites_formed, 15)
        else:
            first = self.meshes[0]
            await until(lambda: sum(m.state == State.ALIVE for m in first.membership.members()) == len(sources), 15)
        for mesh in self.meshes:
            await mesh.publish()

    def site_of(self, mesh: MeshService) -> tuple[str, str]:
        return mesh.labels.get("region", ""), mesh.labels.get("site", "")

    def sites_formed(self) -> bool:
        """Every node lists exactly the members of its own site, all alive."""
        for mesh in self.meshes:
            want = {m.node_id for m in self.meshes if self.site_of(m) == self.site_of(mesh)}
            listed = {x.node_id for x in mesh.membership.members() if x.state == State.ALIVE}
            if listed != want:
                return False
        return True

    async def stop(self) -> None:
        for mesh in self.meshes:
            await mesh.stop(leave=False)
        for server in self.servers:
            await server.stop(0)


def run(sources: Sequence[LocalDigestSource], scenario: Callable[[Fleet], Awaitable[None]], *,
        name: str = "fq", timeout: float = 60, labels: Callable[[int], dict[str, str]] = three_sites,
        site_config: SiteConfig | None = None, config: MeshConfig = CALM) -> None:
    """Start a fleet of ``sources``, run ``scenario`` on it, and stop it all whatever happens."""

    async def main() -> None:
        fleet = Fleet(name, labels, site_config, config)
        try:
            await fleet.start(sources)
            await scenario(fleet)
        finally:
            await fleet.stop()

    asyncio.run(asyncio.wait_for(main(), timeout))
