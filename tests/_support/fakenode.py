"""A fake meshnode for meshctl's tests: a real ``grpc.aio`` server on 127.0.0.1 serving canned data.

The node service is built in parallel with meshctl; until it exists, this fake fixes the RPC semantics
meshctl assumes (see ``FakeObserver``). Run it alone for manual checks, tmux tests and the throughput
measurement::

    python -m tests._support.fakenode --port 7411 [--flows 100000] [--live] [--mesh]

It prints the port it listens on, then serves until killed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
from grpc_reflection.v1alpha import reflection

from meshnode.v1 import flow_pb2, mesh_pb2, mesh_pb2_grpc, observer_pb2, observer_pb2_grpc

NOW_NS = 1_795_000_000_000_000_000  # 2026-11-18T..., fixed so rendered text is stable
S = 1_000_000_000


def sample_flows(now_ns: int = NOW_NS) -> list[flow_pb2.Flow]:
    """Five flows covering the outcomes, both directions and both protocols."""
    F = flow_pb2.Flow
    return [
        F(flow_id=1, src="10.0.0.1", sport=40001, dst="10.0.0.2", dport=443, proto=flow_pb2.TCP,
          direction=flow_pb2.OUTBOUND, pid=4242, comm="curl", cgroup="/lab/a", start_ns=now_ns - 3 * S,
          end_ns=now_ns - 2 * S, bytes_tx=1_300, bytes_rx=1_258_291, packets_tx=12, packets_rx=900,
          outcome=flow_pb2.ESTABLISHED, retransmits=2, srtt_us=1_200, min_rtt_us=900, cwnd=10,
          kind=flow_pb2.FINAL, fidelity=flow_pb2.EXACT, service="https"),
        F(flow_id=2, src="10.0.0.1", sport=40002, dst="10.0.0.9", dport=8080, proto=flow_pb2.TCP,
          direction=flow_pb2.OUTBOUND, pid=777, comm="fakeclient", start_ns=now_ns - 2 * S,
          end_ns=now_ns - 2 * S + 1000, outcome=flow_pb2.REFUSED, resets_rx=1, kind=flow_pb2.FINAL,
          fidelity=flow_pb2.EXACT),
        F(flow_id=3, src="10.0.0.1", sport=40003, dst="10.0.0.9", dport=8080, proto=flow_pb2.TCP,
          direction=flow_pb2.OUTBOUND, pid=777, comm="fakeclient", start_ns=now_ns - S,
          end_ns=now_ns, outcome=flow_pb2.TIMEOUT, kind=flow_pb2.FINAL, fidelity=flow_pb2.EXACT),
        F(flow_id=4, src="10.0.0.1", sport=53001, dst="10.0.0.53", dport=53, proto=flow_pb2.UDP,
          direction=flow_pb2.OUTBOUND, pid=99, comm="dig", start_ns=now_ns - S, end_ns=now_ns - S + 500_000,
          bytes_tx=40, bytes_rx=120, packets_tx=1, packets_rx=1, outcome=flow_pb2.UDP_ANSWERED,
          connect_us=480, kind=flow_pb2.FINAL, fidelity=flow_pb2.EXACT, service="domain",
          drop_reasons={"NO_SOCKET": 1}),
        F(flow_id=5, src="10.0.0.1", sport=8000, dst="10.0.0.7", dport=51234, proto=flow_pb2.TCP,
          direction=flow_pb2.INBOUND, pid=1, comm="nginx", start_ns=now_ns - 60 * S, end_ns=now_ns,
          bytes_tx=52_428_800, bytes_rx=2_048, outcome=flow_pb2.ESTABLISHED, srtt_us=45_000,
          retransmits=31, kind=flow_pb2.INTERIM, fidelity=flow_pb2.EXACT, limited_by=flow_pb2.CONGESTION),
    ]


def sample_status() -> observer_pb2.StatusResponse:
    return observer_pb2.StatusResponse(
        node_id="3f2a9c0d1e2b4a5f", version="0.1.0", uptime_s=9000, sensor_mode="ebpf",
        sensor_reason="tracepoints and cgroup-skb available", fidelity=flow_pb2.EXACT, scope="/lab",
        export_period_s=10, store_bytes=1_258_291, store_rows=10_000, data_dir="/var/lib/meshnode",
        labels={"region": "eu", "site": "ams1"}, listen="127.0.0.1:7400", periods=900, insecure=True,
        active_flows=42,
        completeness=flow_pb2.Completeness(flows_recorded=12_345, lost_events=3, map_evictions=0,
                                           ringbuf_overruns=0, drained_rows=50_000),
    )


def sample_health() -> observer_pb2.HealthResponse:
    def row(scope: str, key: str, attempts: int, useful: int, failures: dict[str, int]) -> flow_pb2.HealthRow:
        r = flow_pb2.HealthRow(scope=scope, key=key, attempts=attempts, useful=useful, failures=failures)
        if attempts:
            r.useful_fraction.value = useful / attempts
        return r

    return observer_pb2.HealthResponse(
        host=row("host", "host", 200, 190, {"refused": 6, "timeout": 4}),
        by_process=[row("process", "curl/4242", 100, 100, {}),
                    row("process", "fakeclient/777", 10, 0, {"refused": 6, "timeout": 4})],
        by_destination=[row("destination", "10.0.0.2:443", 100, 100, {}),
                        row("destination", "10.0.0.9:8080", 10, 0, {"refused": 6, "timeout": 4})],
        retries=[flow_pb2.RetryPattern(comm="fakeclient", pid=777, destination="10.0.0.9:8080", failures=10,
                                           interval_p50_ms=1000, interval_min_ms=900, interval_max_ms=1100,
                                           first_ns=NOW_NS - 10 * S, last_ns=NOW_NS)],
        since_ns=NOW_NS - 900 * S, until_ns=NOW_NS,
    )


def sample_events() -> list[flow_pb2.Event]:
    flows = sample_flows()
    return [
        flow_pb2.Event(type=flow_pb2.RETRANSMIT_BURST, time_ns=NOW_NS - 2 * S, flow=flows[0], value=5),
        flow_pb2.Event(type=flow_pb2.CONNECT_FAILED, time_ns=NOW_NS - S, flow=flows[1], detail="refused"),
        flow_pb2.Event(type=flow_pb2.RTT_SHIFT, time_ns=NOW_NS, flow=flows[4], value=45_000,
                       detail="rtt 1.2ms -> 45ms"),
    ]


def sample_rollups(now_ns: int = NOW_NS) -> observer_pb2.RollupsResponse:
    """The window of ``sample_flows`` as a node answers Rollups: four 10 s periods, the client flows in
    the last two, nginx's inbound transfer active in all four (under its service port, 10.0.0.1:8000)."""
    R, W = flow_pb2.Rollup, flow_pb2.WindowRollup

    def w(totals: flow_pb2.Rollup, flows: list[int], failures: list[int] | None = None,
          retransmits: list[int] | None = None) -> flow_pb2.WindowRollup:
        return W(totals=totals, flows=flows, failures=failures or [0] * 4, retransmits=retransmits or [0] * 4)

    curl = w(R(key="curl/4242", flows=1, useful=1, bytes_tx=1_300, bytes_rx=1_258_291, retransmits=2,
               rtt_p50_us=1_200, rtt_p95_us=1_200, responses=1, response_us_sum=210_000, response_us_max=210_000,
               response_hist=[0] * 17 + [1], response_p50_us=262_144, response_p95_us=262_144, flows_slow_server=1),
             [0, 0, 0, 1], retransmits=[0, 0, 0, 2])
    fake = w(R(key="fakeclient/777", flows=2, failures={"refused": 1, "timeout": 1}), [0, 0, 1, 1], [0, 0, 1, 1])
    dig = w(R(key="dig/99", flows=1, useful=1, bytes_tx=40, bytes_rx=120), [0, 0, 0, 1])
    nginx = w(R(key="nginx/1", flows=4, useful=4, bytes_tx=52_428_800, bytes_rx=2_048, retransmits=31,
                rtt_p50_us=45_000, rtt_p95_us=52_000, flows_retransmitting=1), [1, 1, 1, 1],
              retransmits=[5, 6, 10, 10])

    def as_key(row: flow_pb2.WindowRollup, key: str, service: str = "") -> flow_pb2.WindowRollup:
        out = flow_pb2.WindowRollup()
        out.CopyFrom(row)
        out.totals.key, out.totals.service = key, service
        return out

    return observer_pb2.RollupsResponse(
        periods=[flow_pb2.PeriodSpan(seq=87 + i, start_ns=now_ns - (4 - i) * 10 * S, end_ns=now_ns - (3 - i) * 10 * S)
                 for i in range(4)],
        by_process=[nginx, fake, curl, dig],
        by_destination=[as_key(fake, "10.0.0.9:8080"), as_key(curl, "10.0.0.2:443", "https"),
                        as_key(dig, "10.0.0.53:53", "domain")],
        by_service=[as_key(nginx, "10.0.0.1:8000")],
        since_ns=now_ns - 300 * S, until_ns=now_ns,
    )


@dataclass
class Canned:
    """What the fake serves, and what it saw. Tests change it between calls."""

    flows: list[flow_pb2.Flow] = field(default_factory=sample_flows)
    status: observer_pb2.StatusResponse = field(default_factory=sample_status)
    health: observer_pb2.HealthResponse = field(default_factory=sample_health)
    events: list[flow_pb2.Event] = field(default_factory=sample_events)
    rollups: observer_pb2.RollupsResponse = field(default_factory=sample_rollups)
    peers: mesh_pb2.PeersResponse | None = None
    # method name -> (status code, details): the method fails with that status
    fail: dict[str, tuple[grpc.StatusCode, str]] = field(default_factory=dict)
    # method name -> seconds to sleep before answering (deadline tests)
    delay: dict[str, float] = field(default_factory=dict)
    requests: list[tuple[str, object]] = field(default_factory=list)
    fleet: mesh_pb2.FleetQueryResponse | None = None
    # Flows pages: at most this many records per call, then next_page_token (0: no paging)
    page_size: int = 0
    live: bool = False
    event_every_s: float = 0.5
    # Events: the coverage response sent before the past events (none when empty)
    events_coverage: str = ""


def _matches(f: flow_pb2.Flow, flt: flow_pb2.FlowFilter) -> bool:
    """The subset of FlowFilter the fake implements: comm, pid, dport, port, outcome, proto, direction."""
    checks = (
        (flt.comm, f.comm), (flt.pid, f.pid), (flt.dport, f.dport), (flt.outcome, f.outcome),
        (flt.proto, f.proto), (flt.direction, f.direction),
    )
    if any(values and have not in values for values, have in checks):
        return False
    return not (flt.port and f.sport not in flt.port and f.dport not in flt.port)


class FakeObserver(observer_pb2_grpc.ObserverServicer):
    """Observer with the semantics meshctl assumes:

    - Flows: records with end_ns >= since_ns (and start_ns <= until_ns), whitelist ORed, blacklist
      removed, at most ``number`` (0 -> 1,000; 0 with follow -> no history), oldest first; packed
      ``batch_size`` per response in ``flows`` when asked; a page token when ``page_size`` cuts the
      answer; ``until < since`` -> INVALID_ARGUMENT; with follow, the stream stays open.
    - Events: the last ``number`` events, then (follow) new ones as they happen.
    - Status, Health, Rollups: the canned messages.
    """

    def __init__(self, canned: Canned) -> None:
        self.c = canned

    async def _gate(self, name: str, request: object, context: grpc.aio.ServicerContext) -> None:
        self.c.requests.append((name, request))
        if name in self.c.delay:
            await asyncio.sleep(self.c.delay[name])
        if name in self.c.fail:
            code, details = self.c.fail[name]
            await context.abort(code, details)

    async def Status(self, request: observer_pb2.StatusRequest, context: grpc.aio.ServicerContext
                     ) -> observer_pb2.StatusResponse:
        await self._gate("Status", request, context)
        if self.c.live:
            st = observer_pb2.StatusResponse()
            st.CopyFrom(self.c.status)
            st.periods = st.periods + int(time.time())
            return st
        return self.c.status

    async def Health(self, request: observer_pb2.HealthRequest, context: grpc.aio.ServicerContext
                     ) -> observer_pb2.HealthResponse:
        await self._gate("Health", request, context)
        return self.c.health

    async def Flows(self, request: observer_pb2.FlowsRequest, context: grpc.aio.ServicerContext
                    ) -> AsyncIterator[observer_pb2.FlowsResponse]:
        await self._gate("Flows", request, context)
        if request.until_ns and request.until_ns < request.since_ns:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "until_ns is before since_ns")
        if request.number > 1_000_000:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "number over the maximum of 1,000,000")
        number = request.number or (0 if request.follow else 1000)  # follow + 0: no history, as the node
        offset = int(request.page_token or 0)
        out = []
        for f in self.c.flows[offset:] if number else []:
            if f.end_ns < request.since_ns or (request.until_ns and f.start_ns > request.until_ns):
                continue
            if f.kind == flow_pb2.INTERIM and not request.include_interim:
                continue
            if request.whitelist and not any(_matches(f, w) for w in request.whitelist):
                continue
            if any(_matches(f, b) for b in request.blacklist):
                continue
            out.append(f)
            if len(out) >= number:
                break
        token = ""
        if self.c.page_size and len(out) > self.c.page_size:
            # Offsets index the unfiltered list: good enough for the unfiltered paging tests.
            out = out[: self.c.page_size]
            token = str(offset + self.c.page_size)
        responses: list[observer_pb2.FlowsResponse] = []
        if request.batch_size:
            for i in range(0, len(out), request.batch_size):
                responses.append(observer_pb2.FlowsResponse(flows=out[i:i + request.batch_size]))
        else:
            responses = [observer_pb2.FlowsResponse(flow=f) for f in out]
        if responses and token:
            responses[-1].next_page_token = token
        for r in responses:
            yield r
        if request.follow:
            while True:
                await asyncio.sleep(3600)

    async def Events(self, request: observer_pb2.EventsRequest, context: grpc.aio.ServicerContext
                     ) -> AsyncIterator[observer_pb2.EventsResponse]:
        await self._gate("Events", request, context)
        if request.number:
            if self.c.events_coverage:
                yield observer_pb2.EventsResponse(held_since_ns=1, coverage=self.c.events_coverage)
            for e in self.c.events[-request.number:]:
                yield observer_pb2.EventsResponse(event=e)
        if not request.follow:
            return
        n = 0
        while True:
            await asyncio.sleep(self.c.event_every_s)
            if self.c.live:
                n += 1
                e = flow_pb2.Event()
                e.CopyFrom(self.c.events[n % len(self.c.events)])
                e.time_ns = time.time_ns()
                yield observer_pb2.EventsResponse(event=e)

    async def Summaries(self, request: observer_pb2.SummariesRequest, context: grpc.aio.ServicerContext
                        ) -> observer_pb2.SummariesResponse:
        await self._gate("Summaries", request, context)
        return observer_pb2.SummariesResponse()

    async def Rollups(self, request: observer_pb2.RollupsRequest, context: grpc.aio.ServicerContext
                      ) -> observer_pb2.RollupsResponse:
        await self._gate("Rollups", request, context)
        return self.c.rollups


class FakeMesh(mesh_pb2_grpc.MeshServicer):
    """Mesh.Peers from the canned PeersResponse; the other methods stay UNIMPLEMENTED."""

    def __init__(self, canned: Canned) -> None:
        self.c = canned

    async def Peers(self, request: mesh_pb2.PeersRequest, context: grpc.aio.ServicerContext
                    ) -> mesh_pb2.PeersResponse:
        self.c.requests.append(("Peers", request))
        if self.c.peers is None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "mesh not enabled")
        return self.c.peers  # type: ignore[return-value]

    async def FleetQuery(self, request: mesh_pb2.FleetQueryRequest, context: grpc.aio.ServicerContext
                         ) -> mesh_pb2.FleetQueryResponse:
        self.c.requests.append(("FleetQuery", request))
        if self.c.fleet is None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "mesh not enabled")
        return self.c.fleet  # type: ignore[return-value]


def sample_peers() -> mesh_pb2.PeersResponse:
    return mesh_pb2.PeersResponse(
        peers=[
            mesh_pb2.Peer(node_id="3f2a9c0d1e2b4a5f", addr="10.0.0.1:7400", state=mesh_pb2.ALIVE,
                          incarnation=1, labels={"site": "ams1"}, digest_seq=90, digest_age_ms=4000,
                          is_self=True),
            mesh_pb2.Peer(node_id="77aa00bb11cc22dd", addr="10.0.0.2:7400", state=mesh_pb2.SUSPECT,
                          incarnation=3, labels={"site": "ams1"}, digest_seq=88, digest_age_ms=25_000,
                          rtt_us=850),
            mesh_pb2.Peer(node_id="0123456789abcdef", addr="10.0.0.3:7400", state=mesh_pb2.DEAD,
                          labels={"site": "fra1"}, digest_age_ms=-1),
        ],
        counters={"digests_bad_signature": 1},
    )


_LOOP: asyncio.AbstractEventLoop | None = None


def _shared_loop() -> asyncio.AbstractEventLoop:
    """One event loop on one daemon thread for every FakeNode of the process (grpc.aio dislikes
    loops that come and go)."""
    global _LOOP
    if _LOOP is None:
        _LOOP = asyncio.new_event_loop()
        threading.Thread(target=_LOOP.run_forever, name="fake-node-loop", daemon=True).start()
    return _LOOP


class FakeNode:
    """The fake served from a background event loop, so sync tests can call meshctl in-process."""

    def __init__(self, canned: Canned | None = None, *, port: int = 0, mesh: bool = False) -> None:
        self.canned = canned or Canned()
        self.port = port
        self.mesh = mesh
        self._loop = _shared_loop()
        self._server: grpc.aio.Server | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def _start(self) -> int:
        self._server = server = grpc.aio.server()
        observer_pb2_grpc.add_ObserverServicer_to_server(FakeObserver(self.canned), server)
        names = [observer_pb2.DESCRIPTOR.services_by_name["Observer"].full_name, reflection.SERVICE_NAME]
        if self.mesh:
            mesh_pb2_grpc.add_MeshServicer_to_server(FakeMesh(self.canned), server)
            names.append(mesh_pb2.DESCRIPTOR.services_by_name["Mesh"].full_name)
        reflection.enable_server_reflection(names, server)
        port = server.add_insecure_port(f"127.0.0.1:{self.port}")
        await server.start()
        return port

    def start(self) -> FakeNode:
        self.port = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def stop(self) -> None:
        if self._server is not None:
            asyncio.run_coroutine_threadsafe(self._server.stop(0), self._loop).result(10)
            self._server = None

    def __enter__(self) -> FakeNode:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def bulk_flows(n: int) -> list[flow_pb2.Flow]:
    """``n`` flows shaped like real ones (for the throughput measurement)."""
    base = sample_flows()[0]
    out = []
    for i in range(n):
        f = flow_pb2.Flow()
        f.CopyFrom(base)
        f.flow_id = 1000 + i
        f.sport = 1024 + i % 60000
        f.bytes_tx = 1000 + i
        f.end_ns = NOW_NS + i
        out.append(f)
    return out


async def _serve(ns: argparse.Namespace) -> None:
    canned = Canned(live=ns.live)
    if ns.flows:
        canned.flows = bulk_flows(ns.flows)
    if ns.live:
        now = time.time_ns()
        canned.flows = sample_flows(now)
        for e in canned.events:
            e.time_ns = now
    if ns.mesh:
        canned.peers = sample_peers()
    for item in ns.fail:
        method, _, code = item.partition("=")
        canned.fail[method] = (grpc.StatusCode[code], f"fake node: {code.lower()}")
    server = grpc.aio.server()
    observer_pb2_grpc.add_ObserverServicer_to_server(FakeObserver(canned), server)
    names = [observer_pb2.DESCRIPTOR.services_by_name["Observer"].full_name, reflection.SERVICE_NAME]
    if ns.mesh:
        mesh_pb2_grpc.add_MeshServicer_to_server(FakeMesh(canned), server)
        names.append("meshnode.v1.Mesh")
    reflection.enable_server_reflection(names, server)
    port = server.add_insecure_port(f"127.0.0.1:{ns.port}")
    await server.start()
    print(port, flush=True)
    if ns.live:
        async def refresh() -> None:
            while True:  # keep the flows inside the dashboard's window
                await asyncio.sleep(1)
                fresh = sample_flows(time.time_ns())
                canned.flows = fresh
        task = asyncio.get_running_loop().create_task(refresh())
        task.add_done_callback(lambda _t: None)
    await server.wait_for_termination()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="fake meshnode for meshctl tests")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--flows", type=int, default=0, help="serve this many bulk flows instead of the samples")
    p.add_argument("--live", action="store_true", help="fresh timestamps, periods ticking, events flowing")
    p.add_argument("--mesh", action="store_true", help="serve Mesh.Peers")
    p.add_argument("--fail", action="append", default=[], metavar="METHOD=CODE",
                   help="make METHOD fail with the gRPC status CODE (e.g. Status=PERMISSION_DENIED)")
    ns = p.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(ns))
    return 0


if __name__ == "__main__":
    sys.exit(main())
