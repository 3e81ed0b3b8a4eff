"""A real ``meshnode run`` (eBPF sensor) exporting to a real clickhouse-server, with real HTTP traffic.

The node runs in the root network namespace (ClickHouse listens on its loopback), scoped to a cgroup the
test creates; an HTTP server and a client making requests of known sizes run in that cgroup, on loopback.
What ClickHouse holds must be what ``meshctl flows --json`` shows, flow for flow, byte for byte, also for the
flows that ended while ClickHouse was stopped; and the counters in ``meshctl status`` and on the metrics
endpoint must agree with it.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests._support.clickhouse import ClickHouseServer, free_port
from tests._support.env import CGROUP_ROOT, require_kernel
from tests._support.labnode import MESHCTL, MESHNODE

REQUESTS = 6

SERVER = r"""
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        reply = b"r" * (len(body) * 3)
        self.send_response(200); self.send_header("Content-Length", str(len(reply))); self.end_headers()
        self.wfile.write(reply)
    def log_message(self, *a): pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""

CLIENT = r"""
import sys, time, urllib.request
port, first, n = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
for i in range(first, first + n):
    data = b"q" * (1000 * i)
    with urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/", data=data), timeout=5) as r:
        assert len(r.read()) == 3 * len(data)
    time.sleep(0.2)
"""


@pytest.fixture
def cgroup() -> Iterator[Path]:
    require_kernel()
    path = CGROUP_ROOT / f"meshnode-chtest-{os.getpid()}"
    path.mkdir()
    try:
        yield path
    finally:
        for pid in (path / "cgroup.procs").read_text().split():
            os.kill(int(pid), signal.SIGKILL)
        deadline = time.monotonic() + 5
        while (path / "cgroup.procs").read_text().strip() and time.monotonic() < deadline:
            time.sleep(0.05)
        path.rmdir()


def in_cgroup(cgroup: Path, args: list[str], **kw: object) -> subprocess.Popen[str]:
    def enter() -> None:
        (cgroup / "cgroup.procs").write_text(str(os.getpid()))

    return subprocess.Popen(args, preexec_fn=enter, text=True, **kw)  # type: ignore[call-overload,no-any-return]


def meshctl(node: str, *args: str) -> str:
    return subprocess.run([MESHCTL, "--node", node, *args], check=True, capture_output=True, text=True,
                          timeout=30).stdout


def test_a_real_node_exports_what_meshctl_shows_across_a_clickhouse_restart(cgroup: Path, tmp_path: Path) -> None:
    ch = ClickHouseServer()
    node_proc: subprocess.Popen[str] | None = None
    server: subprocess.Popen[str] | None = None
    try:
        ch.start()
        listen, metrics, http_port = f"127.0.0.1:{free_port()}", free_port(), free_port()
        rel = "/" + cgroup.relative_to(CGROUP_ROOT).as_posix()
        node_proc = subprocess.Popen(
            [MESHNODE, "run", "--insecure", "--listen", listen, "--data-dir", str(tmp_path / "data"),
             "--export-period", "1", "--metrics", f"127.0.0.1:{metrics}", "--cgroup", rel, "--sensor", "ebpf",
             "--clickhouse", ch.url], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 30
        while True:
            assert node_proc.poll() is None, node_proc.stderr.read() if node_proc.stderr else ""
            if subprocess.run([MESHCTL, "--node", listen, "status"], capture_output=True).returncode == 0:
                break
            assert time.monotonic() < deadline, "meshnode run did not answer in 30 s"
            time.sleep(0.2)
        server = in_cgroup(cgroup, [sys.executable, "-c", SERVER, str(http_port)])
        time.sleep(0.5)

        def requests(first: int) -> None:
            client = in_cgroup(cgroup, [sys.executable, "-c", CLIENT, str(http_port), str(first), str(REQUESTS)])
            assert client.wait(30) == 0

        def flows() -> list[dict[str, object]]:
            lines = meshctl(listen, "flows", "--json", "--port", str(http_port), "--since", "all").splitlines()
            return [f for f in map(json.loads, lines) if http_port in (f["dport"], f["sport"])]

        def exported() -> list[tuple[object, ...]]:  # the node created the table at its start
            return ch.query(f"SELECT src, sport, dst, dport, direction, outcome, bytes_tx, bytes_rx, packets_tx, "
                            f"packets_rx, start_ns, end_ns, pid, comm, node_id, host FROM meshnode.flows "
                            f"WHERE dport = {http_port} OR sport = {http_port}")

        def exporter() -> dict[str, object]:
            (exp,) = json.loads(meshctl(listen, "status", "--json"))["exporters"]
            return exp  # type: ignore[no-any-return]

        def wait(cond: object, what: str, timeout: float = 40) -> None:
            deadline = time.monotonic() + timeout
            while not cond():  # type: ignore[operator]
                assert time.monotonic() < deadline, f"timed out waiting for {what}"
                time.sleep(0.3)

        requests(1)  # each request is a client flow and a server flow
        wait(lambda: len(exported()) == 2 * REQUESTS, "the first requests in ClickHouse")
        ch.stop()
        requests(REQUESTS + 1)  # the node goes on while ClickHouse is down
        wait(lambda: len(flows()) == 4 * REQUESTS, "the node's own record of all requests")
        wait(lambda: int(exporter()["counters"]["queued_rows"]) > 0, "rows queued in the spool")  # type: ignore[index]
        down = exporter()
        assert down["last_error"], down
        human = meshctl(listen, "status")
        assert f"clickhouse  {ch.url}" in human and "failing:" in human
        ch.start()
        wait(lambda: int(exporter()["counters"]["queued_rows"]) == 0, "the spool to drain")  # type: ignore[index]

        shown = flows()
        status = json.loads(meshctl(listen, "status", "--json"))
        rows = exported()
        want = [(f["src"], f["sport"], f["dst"], f["dport"], f["direction"], f["outcome"], f["bytes_tx"],
                 f["bytes_rx"], f["packets_tx"], f["packets_rx"], f["start_ns"], f["end_ns"], f["pid"], f["comm"],
                 status["node_id"], status["host"]) for f in shown]
        assert len(want) == 4 * REQUESTS
        assert sorted(rows) == sorted(want)  # once each, byte for byte
        # what the client sent: the body plus the request's headers, growing by 1,000 bytes a request (and a
        # byte where Content-Length gains a digit)
        client_rows = sorted((r for r in rows if r[4] == "outbound"), key=lambda r: int(r[11]))  # type: ignore[call-overload]
        sent = [int(r[6]) for r in client_rows]  # type: ignore[call-overload]
        bodies = [1000 * i for i in range(1, 2 * REQUESTS + 1)]
        growth = [b - a + len(str(b)) - len(str(a)) for a, b in itertools.pairwise(bodies)]
        assert [b - a for a, b in itertools.pairwise(sent)] == growth, sent

        # the counters agree with the table, in meshctl status and on the metrics endpoint
        total = ch.query("SELECT count() FROM meshnode.flows")[0][0]
        dupes = ch.query("SELECT count() FROM (SELECT node_id, batch, row FROM meshnode.flows "
                         "GROUP BY node_id, batch, row HAVING count() > 1)")[0][0]
        assert dupes == 0
        exp = status["exporters"][0]
        assert exp["name"] == "clickhouse" and exp["target"] == ch.url and exp["last_error"] == ""
        assert int(exp["counters"]["sent_rows"]) == total
        assert int(exp["counters"]["dropped_rows"]) == 0 and int(exp["counters"]["send_failures"]) >= 1
        text = urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=5).read().decode()
        values = {line.split()[0]: float(line.split()[-1]) for line in text.splitlines()
                  if line.startswith("meshnode_export_")}
        assert values['meshnode_export_rows_total{exporter="clickhouse",result="sent"}'] >= total
        assert values['meshnode_export_rows_total{exporter="clickhouse",result="dropped"}'] == 0
        assert values['meshnode_export_send_failures_total{exporter="clickhouse"}'] >= 1
    finally:
        if server is not None:
            server.kill()
            server.wait()
        if node_proc is not None:
            node_proc.send_signal(signal.SIGTERM)
            try:
                node_proc.wait(30)
            except subprocess.TimeoutExpired:
                node_proc.kill()
        ch.close()
