"""The scenario fleet: six hosts in two sites with real traffic, optional meshnode nodes, and named faults.

Issue 8 asks the blame analysis to find the right suspect for a few named faults in a lab of at least six
hosts in two sites. This module builds that lab once, the same way for the blame tests, the benchmark and
the demo (``meshnode lab up``)::

    from meshnode.lab import Fleet

    with Fleet.up(nodes=True, export_period=2) as fleet:   # lab, services, client loops, 6 nodes in a mesh
        fleet.node_addr("web1")                             # "10.<slot>.1.1:7400" (reachable inside the lab)
        fleet.meshctl("web1", "blame")                      # meshctl on web1's node, parsed --json output
        fleet.restart_node("web1")                          # SIGTERM, then the same node on the same data
        handle = fleet.fault("refuse-port")                 # cache1 refuses 6379
        handle.expected                                     # Suspect(kind="service", name="10.x.2.3:6379")
        handle.remove()                                     # or fleet.heal(): every fault removed
    # leaving the block (or fleet.down()) kills everything and removes namespaces, cgroups, temp files

The fleet (``SITES``, ``SERVICES``, ``CLIENTS``; all names are host labels too)::

    site ams1 (region eu)            site fra1 (region eu)
      web1  frontend ──┐               app1  api :8080          worker ──┐
      web2  frontend   │ prometheus    app2  api :8080          worker   │
      db1   postgres :5432             cache1 redis-server :6379          │
            node_exporter :9100               unbound :53/udp, node_exporter :9100

    frontend (web1, web2)  -> app1:8080, app2:8080 (cross-site), db1:5432, cache1:6379 (cross-site)
    worker (app1, app2)    -> db1:5432 (cross-site), cache1:6379, cache1:53/udp
    prometheus (web2)      -> db1:9100, cache1:9100, once a second

Every client process runs one thread per target, each making a fresh TCP connection (or a fresh UDP
socket) with a small request every 100-200 ms, so one failing backend does not slow the others down, as
with a real connection pool. Every process sets its ``comm`` (``prctl``), so flows name ``frontend`` or
``postgres`` rather than ``python3``. Clients write what happened to each target (ok, refused, timeout,
unreachable, reset, error) to a JSON file every half second: ``fleet.traffic()`` reads them, so a test can
check what the network did independently of the sensor.

With ``nodes=True`` each host runs ``meshnode run --insecure`` with the eBPF sensor scoped to the host's
cgroup, labels ``region``, ``site`` and ``host``, listening on the host's lab address (port 7400) and
joining web1's node; data directories live under the fleet's temporary directory. The nodes run in the
hosts' cgroups, so they see their own mesh traffic, as a node on a real machine would.

Scenarios (``SCENARIOS``; ``fleet.fault(name)`` returns a ``ScenarioHandle``, ``expected_suspect(name)``
what blame should name, as a ``Suspect`` with the ``meshnode.diagnosis`` entity kind and name):

    none              nothing; blame should find no suspect above its threshold           -> None
    blackhole-server  db1 routes everything it sends into a blackhole: connects to it time out
                                                                                          -> dst_host db1
    site-loss         15 % random loss each way on fra1's uplink: cross-site flows retransmit
                                                                                          -> path eu/ams1<->eu/fra1
    refuse-port       cache1 answers SYNs to 6379 with a reset (nft); its other services work
                                                                                          -> service <cache1 ip>:6379
    bad-client        a process ``billing-sync`` on app2 retries a dead address (<fra1 net>.77:5432) from 8
                      threads, 1 s connect timeout, 100 ms between tries                  -> process app2/billing-sync

Faults compose (each name at most once at a time). Nothing is changed outside the lab's namespaces and
cgroups; ``down()`` runs on ``with`` exit, at interpreter exit and on SIGTERM (through the lab's safety
nets), and a later lab sweeps what a SIGKILLed fleet left.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

from . import _cmd
from ._errors import LabError, LabUsageError
from ._host import Host
from ._lab import Lab
from ._names import nft_table

NODE_PORT = 7400
REGION = "eu"
#: site -> (region, host names). Host names are also the nodes' ``host`` labels.
SITES: dict[str, tuple[str, tuple[str, ...]]] = {
    "ams1": (REGION, ("web1", "web2", "db1")),
    "fra1": (REGION, ("app1", "app2", "cache1")),
}
#: The host whose node the others join, and the one ``meshnode lab up`` opens ``meshctl top`` on.
SEED = "web1"
#: Host index (last octet) of the dead address the ``bad-client`` scenario retries, in fra1's subnet.
DEAD_HOST_INDEX = 77

Proto = Literal["tcp", "udp"]


@dataclass(frozen=True)
class Service:
    """A server process on a host: ``comm`` listens on ``port`` and answers each request with ``response`` bytes."""

    host: str
    comm: str
    port: int
    proto: Proto
    response: int

    @property
    def key(self) -> str:
        """``host:port/proto``, how traffic stats name it."""
        return f"{self.host}:{self.port}/{self.proto}"


@dataclass(frozen=True)
class Client:
    """A client process on a host: one loop per target (``host:port/proto`` keys of ``SERVICES``)."""

    host: str
    comm: str
    targets: tuple[str, ...]
    request: int = 200
    interval: tuple[float, float] = (0.1, 0.2)


SERVICES: tuple[Service, ...] = (
    Service("app1", "api", 8080, "tcp", 2048),
    Service("app2", "api", 8080, "tcp", 2048),
    Service("db1", "postgres", 5432, "tcp", 4096),
    Service("db1", "node_exporter", 9100, "tcp", 8192),
    Service("cache1", "redis-server", 6379, "tcp", 256),
    Service("cache1", "unbound", 53, "udp", 120),
    Service("cache1", "node_exporter", 9100, "tcp", 8192),
)

_FRONTEND = ("app1:8080/tcp", "app2:8080/tcp", "db1:5432/tcp", "cache1:6379/tcp")
_WORKER = ("db1:5432/tcp", "cache1:6379/tcp", "cache1:53/udp")
CLIENTS: tuple[Client, ...] = (
    Client("web1", "frontend", _FRONTEND),
    Client("web2", "frontend", _FRONTEND),
    Client("app1", "worker", _WORKER),
    Client("app2", "worker", _WORKER),
    Client("web2", "prometheus", ("db1:9100/tcp", "cache1:9100/tcp"), request=120, interval=(0.9, 1.1)),
)


@dataclass(frozen=True)
class Suspect:
    """What blame should name: a ``meshnode.diagnosis`` entity kind (``dst_host``, ``path``...) and name."""

    kind: str
    name: str


@dataclass(frozen=True)
class Scenario:
    """A named fault: what it does, in one line."""

    name: str
    description: str


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("none", "no fault: a healthy fleet (blame should find no suspect)"),
        Scenario("blackhole-server", "db1 routes everything it sends into a blackhole; connects to it time out"),
        Scenario("site-loss", "15 % random loss each way on site fra1's uplink; cross-site flows retransmit"),
        Scenario("refuse-port", "cache1 refuses TCP port 6379 (redis) with a reset; its other services work"),
        Scenario("bad-client", "process billing-sync on app2 retries a dead address (fra1 .77:5432), 8 threads"),
    )
}

# One server process per service; ``comm`` set with prctl so flows name the service's program.
SERVER_CODE = r"""
import ctypes, json, socket, socketserver, sys
cfg = json.loads(sys.argv[1])
ctypes.CDLL(None).prctl(15, cfg["comm"].encode()[:15], 0, 0, 0)
reply = b"s" * cfg["response"]
if cfg["proto"] == "udp":
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", cfg["port"]))
    while True:
        data, peer = s.recvfrom(65535)
        s.sendto(reply, peer)

class Handler(socketserver.StreamRequestHandler):
    timeout = 10
    def handle(self):
        self.rfile.readline(65536)
        self.wfile.write(reply)

class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    request_queue_size = 256

Server(("0.0.0.0", cfg["port"]), Handler).serve_forever()
"""

# A client process: per target, ``workers`` threads each looping request -> sleep(interval). Counts outcomes
# per target and writes them to cfg["stats"] (atomically) every 0.5 s.
CLIENT_CODE = r"""
import ctypes, errno, json, os, random, socket, sys, threading, time
cfg = json.loads(sys.argv[1])
ctypes.CDLL(None).prctl(15, cfg["comm"].encode()[:15], 0, 0, 0)
lock = threading.Lock()
KINDS = ("ok", "refused", "timeout", "unreachable", "reset", "error")
stats = {t["key"]: dict.fromkeys(KINDS, 0) for t in cfg["targets"]}
UNREACH = {errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EINVAL, errno.EACCES, errno.EPERM}

def once(t):
    if t["proto"] == "udp":
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(cfg["timeout"])
        try:
            s.sendto(b"q" * cfg["request"], (t["addr"], t["port"]))
            return "ok" if len(s.recv(65535)) == t["response"] else "error"
        finally:
            s.close()
    with socket.create_connection((t["addr"], t["port"]), timeout=cfg["timeout"]) as c:
        c.settimeout(max(cfg["timeout"], 5.0))
        c.sendall(b"r" * (cfg["request"] - 1) + b"\n")
        got = 0
        while True:
            d = c.recv(65536)
            if not d:
                break
            got += len(d)
    return "ok" if t["response"] < 0 or got == t["response"] else "error"

def outcome(t):
    try:
        return once(t)
    except ConnectionRefusedError:
        return "refused"
    except (socket.timeout, TimeoutError):
        return "timeout"
    except ConnectionResetError:
        return "reset"
    except OSError as exc:
        return "unreachable" if exc.errno in UNREACH else "error"

def loop(t):
    lo, hi = cfg["interval"]
    time.sleep(random.uniform(0, hi))
    while True:
        kind = outcome(t)
        with lock:
            stats[t["key"]][kind] += 1
        time.sleep(random.uniform(lo, hi))

for t in cfg["targets"]:
    for _ in range(cfg["workers"]):
        threading.Thread(target=loop, args=(t,), daemon=True).start()
path = cfg["stats"]
while True:
    with lock:
        doc = {"pid": os.getpid(), "comm": cfg["comm"], "time": time.time(), "targets": stats}
        text = json.dumps(doc)
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)
    time.sleep(0.5)
"""


class ScenarioHandle:
    """A scenario in force; ``remove()`` (idempotent) undoes it, as does leaving its ``with`` block.

    Attributes:
        name: the scenario's name (a key of ``SCENARIOS``).
        description: what it does.
        expected: what blame should name (``None`` for ``none``).
        started: ``time.monotonic()`` when it was put in force; ``started_ns`` the wall clock (UTC ns).
    """

    def __init__(self, fleet: Fleet, name: str, expected: Suspect | None, undo: list[Callable[[], None]]) -> None:
        self.name = name
        self.description = SCENARIOS[name].description
        self.expected = expected
        self.started = time.monotonic()
        self.started_ns = time.time_ns()
        self._fleet = fleet
        self._undo = undo
        self._active = True

    @property
    def active(self) -> bool:
        """True until removed (or the fleet is down)."""
        return self._active and not self._fleet.closed

    def remove(self) -> None:
        """Undo the scenario; every step is tried, then the first failure is raised."""
        if not self._active:
            return
        self._active = False
        self._fleet._handle_gone(self)
        if self._fleet.closed:
            return
        first: BaseException | None = None
        for step in reversed(self._undo):
            try:
                step()
            except (LabError, OSError, subprocess.SubprocessError) as exc:
                first = first or exc
        if first is not None:
            raise first

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.remove()

    def __repr__(self) -> str:
        return f"<ScenarioHandle {self.name} {'active' if self.active else 'removed'}>"


@dataclass
class _Node:
    host: str
    proc: subprocess.Popen[bytes]
    log: Path
    data: Path


@dataclass
class _Proc:
    host: str
    comm: str
    proc: subprocess.Popen[bytes]
    stats: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _tool(name: str) -> list[str]:
    """argv prefix of a meshnode console script next to this interpreter, or ``python -m`` of its module."""
    exe = Path(sys.executable).with_name(name)
    if exe.exists():
        return [str(exe)]
    module = {"meshnode": "meshnode.cli_main", "meshctl": "meshnode.cli.main"}[name]
    return [sys.executable, "-m", module]


class Fleet:
    """Six lab hosts in two sites with services, client loops, optional nodes and named faults.

    Build it with ``Fleet.up(...)``; see the module docstring for the layout and the scenarios.

    Args:
        nodes: start ``meshnode run --insecure`` on every host (eBPF sensor unless ``sensor`` says otherwise).
        export_period: the nodes' ``--export-period`` in seconds.
        sensor: the nodes' ``--sensor`` (``ebpf``, ``diag``, ``auto``).
        data_dir: where node data, node logs and traffic stats go; default a new temporary directory that
            ``down()`` removes (a given directory is left in place).
        timeout: the clients' connect (and UDP answer) timeout in seconds.

    Attributes:
        lab: the ``Lab`` (``fleet.lab["db1"]`` is a ``Host``).
        data_dir: see above.
        handles: the scenarios in force.
    """

    def __init__(
        self,
        *,
        nodes: bool = True,
        export_period: float = 2,
        sensor: str = "ebpf",
        data_dir: str | os.PathLike[str] | None = None,
        timeout: float = 1.5,
    ) -> None:
        self.with_nodes = nodes
        self.export_period = export_period
        self.sensor = sensor
        self.timeout = timeout
        self._own_dir = data_dir is None
        self.data_dir = Path(data_dir) if data_dir is not None else Path(tempfile.mkdtemp(prefix="meshnode-fleet-"))
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.lab: Lab | None = None
        self.handles: list[ScenarioHandle] = []
        self.nodes: dict[str, _Node] = {}
        self.servers: list[_Proc] = []
        self.clients: list[_Proc] = []
        self._closed = False

    # -- building -------------------------------------------------------------------------------------

    @classmethod
    def up(
        cls,
        nodes: bool = True,
        export_period: float = 2,
        *,
        sensor: str = "ebpf",
        data_dir: str | os.PathLike[str] | None = None,
        timeout: float = 1.5,
        node_timeout: float = 120.0,
    ) -> Fleet:
        """Build the lab, start the services, the nodes (if asked) and the client loops; wait until all run.

        Raises:
            LabError: the lab could not be built, a service did not listen or a node did not answer within
                ``node_timeout`` seconds (its log's tail is in the message). What was built is removed.
        """
        fleet = cls(nodes=nodes, export_period=export_period, sensor=sensor, data_dir=data_dir, timeout=timeout)
        try:
            fleet._start(node_timeout)
        except BaseException:
            with contextlib.suppress(Exception):
                fleet.down()
            raise
        return fleet

    def _start(self, node_timeout: float) -> None:
        self.lab = Lab(sites={site: list(names) for site, (_region, names) in SITES.items()})
        (self.data_dir / "traffic").mkdir(exist_ok=True)
        for svc in SERVICES:
            cfg = {"comm": svc.comm, "port": svc.port, "proto": svc.proto, "response": svc.response}
            proc = self.host(svc.host).python(SERVER_CODE, json.dumps(cfg), stdin=subprocess.DEVNULL,
                                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            self.servers.append(_Proc(svc.host, svc.comm, proc, extra={"port": svc.port, "proto": svc.proto}))
        for svc in SERVICES:
            self.host(svc.host).wait_listening(svc.port, udp=svc.proto == "udp", timeout=20)
        if self.with_nodes:
            self._start_nodes(node_timeout)
        for client in CLIENTS:
            self.clients.append(self._start_client(client))
        for running in self.clients:
            self._wait_client(running)

    def _start_nodes(self, timeout: float) -> None:
        for names in SITES.values():
            for name in names[1]:
                self._launch_node(name)
        self._wait_nodes(set(self.nodes), timeout)

    def _launch_node(self, name: str) -> None:
        site = next(s for s, (_, names) in SITES.items() if name in names)
        region = SITES[site][0]
        host = self.host(name)
        data = self.data_dir / "nodes" / name
        data.mkdir(parents=True, exist_ok=True)
        log = self.data_dir / "nodes" / f"{name}.log"
        argv = [*_tool("meshnode"), "run", "--insecure", "--node-id", name, "--listen", self.node_addr(name),
                "--data-dir", str(data), "--export-period", str(self.export_period), "--metrics", "off",
                "--sensor", self.sensor, "--cgroup", host.cgroup_rel, "--label", f"region={region}",
                "--label", f"site={site}", "--label", f"host={name}"]  # fmt: skip
        if name != SEED:
            argv += ["--join", self.node_addr(SEED)]
        with open(log, "ab") as out:
            proc = host.popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        self.nodes[name] = _Node(name, proc, log, data)

    def _wait_nodes(self, waiting: set[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while waiting:
            for name in sorted(waiting):
                node = self.nodes[name]
                if node.proc.poll() is not None:
                    raise LabError(f"node on {name} exited {node.proc.returncode}: {_tail(node.log)}")
                if self.meshctl_raw(name, "status", timeout=10).returncode == 0:
                    waiting.discard(name)
            if waiting and time.monotonic() > deadline:
                name = sorted(waiting)[0]
                raise LabError(f"nodes {sorted(waiting)} did not answer within {timeout}s; {name}: "
                               f"{_tail(self.nodes[name].log)}")
            if waiting:
                time.sleep(0.3)

    def restart_node(self, name: str, timeout: float = 60.0) -> None:
        """Stop ``name``'s node (SIGTERM, as a service manager would) and start it again on the same data
        directory; returns when it answers.

        Raises:
            LabUsageError: the fleet has no node on ``name``.
            LabError: it did not stop within 10 s or did not answer within ``timeout``.
        """
        node = self.nodes.get(name)
        if node is None:
            raise LabUsageError(f"no node on {name!r}; nodes: {', '.join(sorted(self.nodes)) or 'none'}")
        if node.proc.poll() is None:
            node.proc.send_signal(signal.SIGTERM)
            try:
                node.proc.wait(timeout=10)
            except subprocess.TimeoutExpired as exc:
                raise LabError(f"the node on {name} did not stop within 10 s of SIGTERM") from exc
        self._launch_node(name)
        self._wait_nodes({name}, timeout)

    def _start_client(self, client: Client, *, workers: int = 1, timeout: float | None = None,
                      targets: list[dict[str, Any]] | None = None) -> _Proc:
        stats = self.data_dir / "traffic" / f"{client.host}-{client.comm}.json"
        if targets is None:
            targets = []
            for key in client.targets:
                svc = _service(key)
                targets.append({"key": key, "addr": self.host(svc.host).ip, "port": svc.port, "proto": svc.proto,
                                "response": svc.response})
        cfg = {"comm": client.comm, "targets": targets, "request": client.request, "interval": list(client.interval),
               "workers": workers, "timeout": timeout or self.timeout, "stats": str(stats)}
        proc = self.host(client.host).python(CLIENT_CODE, json.dumps(cfg), stdin=subprocess.DEVNULL,
                                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return _Proc(client.host, client.comm, proc, stats)

    def _wait_client(self, proc: _Proc, timeout: float = 20.0) -> None:
        """Wait for a client's first stats file: from then on it runs, under its own name, with its threads."""
        assert proc.stats is not None
        deadline = time.monotonic() + timeout
        while not proc.stats.exists():
            if proc.proc.poll() is not None:
                raise LabError(f"client {proc.comm} on {proc.host} exited {proc.proc.returncode}")
            if time.monotonic() > deadline:
                raise LabError(f"client {proc.comm} on {proc.host} wrote no stats within {timeout}s")
            time.sleep(0.05)

    # -- looking at it --------------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True once ``down()`` has started."""
        return self._closed

    def host(self, name: str) -> Host:
        """The lab host called ``name``."""
        if self.lab is None:
            raise LabUsageError("the fleet is not up")
        return self.lab[name]

    def node_addr(self, host: str) -> str:
        """``ip:port`` of the node on ``host`` (reachable from inside the lab's namespaces only)."""
        return f"{self.host(host).ip}:{NODE_PORT}"

    def expected_suspect(self, name: str) -> Suspect | None:
        """What blame should name as the top suspect under scenario ``name`` (None: nothing)."""
        _check_scenario(name)
        if name == "blackhole-server":
            return Suspect("dst_host", "db1")
        if name == "site-loss":
            return Suspect("path", "<->".join(sorted(f"{region}/{site}" for site, (region, _) in SITES.items())))
        if name == "refuse-port":
            return Suspect("service", f"{self.host('cache1').ip}:6379")
        if name == "bad-client":
            return Suspect("process", "app2/billing-sync")
        return None

    def dead_address(self) -> str:
        """The address the ``bad-client`` scenario retries: unused, in fra1's subnet."""
        assert self.lab is not None
        return str(self.lab.sites["fra1"].subnet4.network_address + DEAD_HOST_INDEX)

    def netns_argv(self, host: str, argv: list[str]) -> list[str]:
        """``argv`` run in ``host``'s network namespace but *not* its cgroup (the node does not see it)."""
        return _cmd.netns_argv(self.host(host).netns, argv)

    def meshctl_raw(self, host: str, *args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
        """``meshctl --node <host's node> ARGS --json`` in the host's namespace, completed."""
        argv = self.netns_argv(host, [*_tool("meshctl"), "--node", self.node_addr(host), *args, "--json"])
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            return subprocess.CompletedProcess(argv, 124, "", f"timed out after {timeout}s: {exc}")

    def meshctl(self, host: str, *args: str, timeout: float = 20) -> Any:
        """``meshctl ... --json`` on ``host``'s node, parsed (JSON Lines give a list).

        Raises:
            LabError: meshctl failed (its stderr is in the message).
        """
        out = self.meshctl_raw(host, *args, timeout=timeout)
        if out.returncode != 0:
            raise LabError(f"meshctl {' '.join(args)} on {host} exited {out.returncode}: {out.stderr.strip()}")
        lines = [ln for ln in out.stdout.splitlines() if ln.strip()]
        try:
            return json.loads(out.stdout)
        except json.JSONDecodeError:
            return [json.loads(ln) for ln in lines]

    def traffic(self) -> dict[str, dict[str, dict[str, int]]]:
        """``host/comm`` of each client -> target key -> outcome counts so far (from the clients' own files)."""
        out: dict[str, dict[str, dict[str, int]]] = {}
        for client in self.clients:
            if client.stats is None:
                continue
            try:
                doc = json.loads(client.stats.read_text())
            except (OSError, json.JSONDecodeError):
                continue  # not written yet
            out[f"{client.host}/{client.comm}"] = doc["targets"]
        return out

    def tcp_counters(self, host: str) -> dict[str, int]:
        """The TCP MIB counters of ``host``'s namespace (``/proc/net/snmp``: RetransSegs, AttemptFails...)."""
        argv = self.netns_argv(host, [_cmd.tool("sh"), "-c", "cat /proc/net/snmp"])
        text = _cmd.run(argv, what=f"read TCP counters of {host}").stdout
        rows = [line.split()[1:] for line in text.splitlines() if line.startswith("Tcp:")]
        return {k: int(v) for k, v in zip(rows[0], rows[1], strict=True)}

    def nodes_alive(self) -> dict[str, bool]:
        """Host -> whether its node process still runs."""
        return {name: node.proc.poll() is None for name, node in self.nodes.items()}

    def describe(self) -> dict[str, Any]:
        """Plain data about the fleet: hosts (site, region, address, node, services, clients) and faults."""
        hosts = []
        for site, (region, names) in SITES.items():
            for name in names:
                hosts.append({
                    "host": name, "site": site, "region": region, "ip": self.host(name).ip,
                    "node": self.node_addr(name) if name in self.nodes else None,
                    "services": [f"{s.comm}:{s.port}/{s.proto}" for s in SERVICES if s.host == name],
                    "clients": [c.comm for c in self.clients if c.host == name],
                })  # fmt: skip
        assert self.lab is not None
        return {
            "lab_id": self.lab.id, "hosts": hosts, "seed": SEED, "export_period": self.export_period,
            "faults": [{"name": h.name, "description": h.description,
                        "expected": None if h.expected is None else {"kind": h.expected.kind,
                                                                     "name": h.expected.name},
                        "since_ns": h.started_ns} for h in self.handles if h.active],
        }  # fmt: skip

    # -- faults ---------------------------------------------------------------------------------------

    def fault(self, name: str) -> ScenarioHandle:
        """Put scenario ``name`` in force and return its handle.

        Raises:
            LabUsageError: unknown scenario (the message lists the known ones), or it is already in force.
        """
        _check_scenario(name)
        if self.lab is None or self._closed:
            raise LabUsageError("the fleet is not up")
        if any(h.name == name and h.active for h in self.handles):
            raise LabUsageError(f"scenario {name!r} is already in force; heal first")
        undo: list[Callable[[], None]] = []
        lab = self.lab
        if name == "blackhole-server":
            undo.append(lab["db1"].blackhole().remove)
        elif name == "site-loss":
            undo.append(lab.sites["fra1"].uplink.loss(15).remove)
        elif name == "refuse-port":
            undo.append(self._refuse_port(lab["cache1"], 6379))
        elif name == "bad-client":
            bad = Client("app2", "billing-sync", ())
            target = {"key": f"{self.dead_address()}:5432/tcp", "addr": self.dead_address(), "port": 5432,
                      "proto": "tcp", "response": -1}
            proc = self._start_client(bad, workers=8, timeout=1.0, targets=[target])
            self.clients.append(proc)
            self._wait_client(proc)
            undo.append(lambda: self._stop_client(proc))
        handle = ScenarioHandle(self, name, self.expected_suspect(name), undo)
        self.handles.append(handle)
        return handle

    def heal(self) -> None:
        """Remove every scenario in force (each removal is attempted; the first error is raised)."""
        first: BaseException | None = None
        for handle in reversed(self.handles):
            try:
                handle.remove()
            except (LabError, OSError, subprocess.SubprocessError) as exc:
                first = first or exc
        if first is not None:
            raise first

    def _handle_gone(self, handle: ScenarioHandle) -> None:
        if handle in self.handles:
            self.handles.remove(handle)

    def _refuse_port(self, host: Host, port: int) -> Callable[[], None]:
        """nft in ``host``'s namespace: SYNs to TCP ``port`` arriving on the lab interface get a reset.

        The lab's ``reject`` fault is per host or peer; a service port needs a match on ``tcp dport``. The
        table carries the lab id like every fault table, so deleting the namespace (or a sweep) removes it.
        """
        assert self.lab is not None
        table = nft_table(self.lab.id, self.lab._next_fault_seq())
        ruleset = textwrap.dedent(f"""\
            table inet {table} {{
            \tchain input {{
            \t\ttype filter hook input priority 0; policy accept;
            \t\tiifname "{host.iface}" tcp dport {port} reject with tcp reset
            \t}}
            }}
            """)
        what = f"refuse TCP port {port} on {host.name}"
        _cmd.nft(host.netns, ruleset, what=what)
        delete = _cmd.netns_argv(host.netns, [_cmd.tool("nft"), "delete", "table", "inet", table])

        def undo() -> None:
            _cmd.run(delete, what=f"undo {what}")

        return undo

    def _stop_client(self, proc: _Proc) -> None:
        proc.proc.kill()
        proc.proc.wait(timeout=10)
        if proc.stats is not None:
            proc.stats.unlink(missing_ok=True)
        if proc in self.clients:
            self.clients.remove(proc)

    # -- tearing down ---------------------------------------------------------------------------------

    def down(self) -> None:
        """Stop the nodes (SIGTERM, so they flush), then kill everything and remove the lab and temp files.

        Idempotent; the lab's teardown error (if any) is raised after everything was attempted.
        """
        if self._closed:
            return
        with contextlib.suppress(Exception):
            self.heal()
        self._closed = True
        for node in self.nodes.values():
            if node.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    node.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for node in self.nodes.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        try:
            if self.lab is not None:
                self.lab.close()
        finally:
            if self._own_dir:
                shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.down()

    def __iter__(self) -> Iterator[Host]:
        return iter(self.lab or ())


def _service(key: str) -> Service:
    for svc in SERVICES:
        if svc.key == key:
            return svc
    raise LabUsageError(f"no service {key!r} (services: {[s.key for s in SERVICES]})")


def _check_scenario(name: str) -> None:
    if name not in SCENARIOS:
        raise LabUsageError(f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)}")


def _tail(path: Path, lines: int = 8) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
