"""meshctl's commands against a real gRPC server (the fake node): JSON contracts, requests, errors."""

from __future__ import annotations

import json
import os
import queue
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from meshnode._model import flow_proto_to_json
from meshnode.cli._convert import FLOW_FIELDS
from meshnode.cli.main import main
from meshnode.v1 import flow_pb2, mesh_pb2, observer_pb2
from tests._support.fakenode import Canned, FakeNode, sample_flows, sample_peers

ROOT = Path(__file__).resolve().parents[2]
MESH_LINE = "meshctl peers: this node has no mesh service yet (needs meshnode with the mesh; see issue 6)\n"


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeNode]:
    with FakeNode(mesh=True) as node:
        yield node


@pytest.fixture(autouse=True)
def fresh(fake: FakeNode) -> Canned:
    """Each test starts from the canned samples (recent timestamps, no failures, no mesh)."""
    c = fake.canned
    new = Canned()
    for name in ("flows", "status", "health", "events", "rollups", "peers", "fleet", "page_size", "fail", "delay",
                 "requests", "events_coverage"):
        setattr(c, name, getattr(new, name))
    return c


def run(fake: FakeNode, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["--node", fake.address, *argv])
    out, err = capsys.readouterr()
    return code, out, err


def _fields(message: type) -> set[str]:
    return {f.name for f in message.DESCRIPTOR.fields}  # type: ignore[attr-defined]


# --- JSON contracts -------------------------------------------------------------------------------------

def test_status_json(fake: FakeNode, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(fake, capsys, "status", "--json")
    assert (code, err) == (0, "")
    doc = json.loads(out)
    assert set(doc) == _fields(observer_pb2.StatusResponse)
    assert set(doc["completeness"]) == _fields(flow_pb2.Completeness)
    assert doc["fidelity"] == "exact" and doc["sensor_mode"] == "ebpf"
    assert doc["completeness"]["lost_events"] == 3 and doc["export_period_s"] == 10.0


def test_flows_json_lines_use_the_flow_record_names(fake: FakeNode, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(fake, capsys, "flows", "--json", "--interim", "--since", "all")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert len(lines) == 5
    docs = [json.loads(line) for line in lines]
    assert all(list(d) == list(FLOW_FIELDS) for d in docs)
    assert docs == [flow_proto_to_json(f) for f in sample_flows()]
    assert docs[0]["outcome"] == "established" and docs[0]["bytes_rx"] == 1_258_291
    assert docs[3]["proto"] == "udp" and docs[3]["drop_reasons"] == {"NO_SOCKET": 1}


def test_flows_request_carries_the_filters(fake: FakeNode, fresh: Canned,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(fake, capsys, "flows", "--json", "--proc", "fakeclient", "--outcome", "refused,timeout",
                       "--dst", "10.0.0.0/8", "--port", "8080", "--since", "2026-11-18T00:00:00Z", "--limit", "10")
    assert code == 0
    assert [json.loads(line)["flow_id"] for line in out.splitlines()] == [2, 3]
    name, req = fresh.requests[-1]
    assert name == "Flows" and isinstance(req, observer_pb2.FlowsRequest)
    assert req.number == 10 and req.batch_size == 1000 and not req.follow and not req.include_interim
    assert req.since_ns == 1_794_960_000 * 10**9 and req.until_ns == 0
    (w,) = req.whitelist
    assert list(w.comm) == ["fakeclient"] and list(w.dst) == ["10.0.0.0/8"] and list(w.port) == [8080]
    assert list(w.outcome) == [flow_pb2.REFUSED, flow_pb2.TIMEOUT]
    before = time.time_ns()
    run(fake, capsys, "flows", "--since", "5m", "--until", "1m", "--interim")
    req = fresh.requests[-1][1]
    assert isinstance(req, observer_pb2.FlowsRequest) and req.include_interim and not req.whitelist
    assert before - 301 * 10**9 < req.since_ns <= time.time_ns() - 300 * 10**9
    assert req.until_ns - req.since_ns == 240 * 10**9


def test_flows_default_to_the_last_15_minutes(fake: FakeNode, fresh: Canned,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    before = time.time_ns()
    code, out, _ = run(fake, capsys, "flows")
    assert (code, out) == (0, "no flows match\n")  # the samples are days old
    req = fresh.requests[-1][1]
    assert isinstance(req, observer_pb2.FlowsRequest)
    assert before - 901 * 10**9 < req.since_ns <= time.time_ns() - 900 * 10**9
    run(fake, capsys, "flows", "--since", "all")
    req = fresh.requests[-1][1]
    assert isinstance(req, observer_pb2.FlowsRequest) and req.since_ns == 0


def test_flows_limit_is_honoured_even_if_the_node_sends_more(fake: FakeNode, fresh: Canned,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(fake, capsys, "flows", "--json", "--limit", "2", "--interim", "--since", "all")
    assert code == 0 and len(out.splitlines()) == 2


def test_health_json(fake: FakeNode, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(fake, capsys, "health", "--json", "--since", "1h", "--proc", "curl")
    assert code == 0
    doc = json.loads(out)
    assert set(doc) == _fields(observer_pb2.HealthResponse)
    assert doc["host"]["useful_fraction"] == 0.95 and doc["host"]["failures"] == {"refused": 6, "timeout": 4}
    assert doc["retries"][0]["destination"] == "10.0.0.9:8080"


def test_events_json_lines(fake: FakeNode, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(fake, capsys, "events", "--json", "--last", "2")
    assert code == 0
    docs = [json.loads(line) for line in out.splitlines()]
    assert [d["type"] for d in docs] == ["connect_failed", "rtt_shift"]
    assert all(set(d) == _fields(flow_pb2.Event) and list(d["flow"]) == list(FLOW_FIELDS) for d in docs)
    assert docs[1]["detail"] == "rtt 1.2ms -> 45ms" and docs[1]["flow"]["comm"] == "nginx"


def test_events_since_asks_for_every_event_and_says_what_the_node_holds(
        fake: FakeNode, fresh: Canned, capsys: pytest.CaptureFixture[str]) -> None:
    fresh.events_coverage = "asked from 2026-12-08 00:00:00 UTC, but this node holds events from 01:00 UTC only"
    code, out, err = run(fake, capsys, "events", "--json", "--since", "3h")
    assert code == 0
    assert [json.loads(line)["type"] for line in out.splitlines()] == ["retransmit_burst", "connect_failed",
                                                                       "rtt_shift"]  # every one the fake has
    assert err == f"meshctl events: note: {fresh.events_coverage}\n"
    req = next(r for n, r in fresh.requests if n == "Events")
    assert isinstance(req, observer_pb2.EventsRequest) and req.number == 100_000 and req.since_ns > 0
    code, out, _ = run(fake, capsys, "events")
    text = " ".join(out.split())  # rich wraps the note at 80 columns
    assert text.startswith(f"note: {fresh.events_coverage} TIME EVENT ") and "rtt_shift nginx/1" in text
    assert [r.number for n, r in fresh.requests if n == "Events"][1:] == [20]  # type: ignore[attr-defined]


def test_peers_json(fake: FakeNode, fresh: Canned, capsys: pytest.CaptureFixture[str]) -> None:
    fresh.peers = sample_peers()
    code, out, _ = run(fake, capsys, "peers", "--json")
    assert code == 0
    doc = json.loads(out)
    assert set(doc) == _fields(mesh_pb2.PeersResponse)
    assert [p["state"] for p in doc["peers"]] == ["alive", "suspect", "dead"]
    assert doc["peers"][0]["is_self"] and doc["counters"] == {"digests_bad_signature": 1}


def test_top_json_is_one_snapshot(fake: FakeNode, fresh: Canned, capsys: pytest.CaptureFixture[str]) -> None:
    before = time.time_ns()
    code, out, _ = run(fake, capsys, "top", "--json", "--window", "2m")
    assert code == 0
    doc = json.loads(out)
    assert {"node", "status", "rollups", "events", "mesh"} <= set(doc)
    assert set(doc["rollups"]) == _fields(observer_pb2.RollupsResponse)  # the node's rollups, as it sent them
    assert [r["totals"]["key"] for r in doc["rollups"]["by_process"]] == [
        "nginx/1", "fakeclient/777", "curl/4242", "dig/99"]
    assert doc["rollups"]["by_service"][0]["flows"] == [1, 1, 1, 1]
    assert doc["mesh"] is None  # the fake's Mesh.Peers says UNIMPLEMENTED
    names = [n for n, _ in fresh.requests]
    assert "Rollups" in names and "Flows" not in names  # no raw flows: the node rolled them up
    req = next(r for n, r in fresh.requests if n == "Rollups")
    assert isinstance(req, observer_pb2.RollupsRequest) and req.number == 200
    assert req.until_ns - req.since_ns == 120 * 10**9 and before <= req.until_ns <= time.time_ns()


def test_flows_follow_page_tokens_up_to_the_limit(fake: FakeNode, fresh: Canned,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    fresh.flows = sample_flows() * 3  # 15 records (flow ids repeat: fine for paging)
    fresh.page_size = 4
    code, out, err = run(fake, capsys, "flows", "--json", "--interim", "--limit", "10", "--since", "all")
    assert (code, err) == (0, "")
    assert len(out.splitlines()) == 10
    pages = [r for n, r in fresh.requests if n == "Flows"]
    # the node binds a token to its request: the next page repeats the request but for page_token
    assert [(r.page_token, r.number) for r in pages] == [("", 10), ("4", 10), ("8", 10)]  # type: ignore[attr-defined]


def test_flows_default_limit_does_not_page_and_says_so(fake: FakeNode, fresh: Canned,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    fresh.flows = sample_flows() * 3
    fresh.page_size = 4
    code, out, err = run(fake, capsys, "flows", "--json", "--interim", "--since", "all")
    assert code == 0 and len(out.splitlines()) == 4
    assert err == ("meshctl flows: showing the node's default of 4 records; more remain "
                   "(use --limit N or a narrower --since)\n")


def test_query_json_and_view(fake: FakeNode, fresh: Canned, capsys: pytest.CaptureFixture[str]) -> None:
    fresh.fleet = mesh_pb2.FleetQueryResponse(
        aggregates=[mesh_pb2.HealthAggregate(group="eu", destination="10.0.0.2:443", hosts=3, attempts=30,
                                             useful=29, useful_fraction_median=0.97, rtt_p50_us_median=1200,
                                             rtt_p95_us_median=9000, retransmits=4, newest_age_ms=3000)],
        nodes=[mesh_pb2.NodeStatus(node_id="b2", answered=False, error="DEADLINE_EXCEEDED")], partial=True)
    code, out, _ = run(fake, capsys, "query", "--json", "--group-by", "region", "--where", "site=ams1",
                       "--destination", "10.0.0.2:443", "--deadline", "1500ms")
    assert code == 0
    doc = json.loads(out)
    assert set(doc) == _fields(mesh_pb2.FleetQueryResponse) and doc["partial"] is True
    assert doc["aggregates"][0]["useful_fraction_median"] == 0.97
    req = fresh.requests[-1][1]
    assert isinstance(req, mesh_pb2.FleetQueryRequest)
    assert (req.group_by, dict(req.selector), req.destination, req.deadline_ms) == (
        "region", {"site": "ams1"}, "10.0.0.2:443", 1500)
    code, out, _ = run(fake, capsys, "query")
    assert "eu         10.0.0.2:443              3  97.0%  1.2ms  9.0ms" in out
    assert "partial: 1 node(s) did not answer: b2 (DEADLINE_EXCEEDED)" in out
    code, _, err = run(fake, capsys, "query", "--where", "nonsense")
    assert code == 2 and "LABEL=VALUE" in err


def test_top_on_a_pipe_prints_one_plain_frame(fake: FakeNode, fresh: Canned,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(fake, capsys, "top")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == f"node {fake.address} 3f2a9c0d · ebpf/exact · period 10s · window 5m"
    assert any(line.startswith("curl/4242 ") for line in lines)
    assert " SERVICES by flows (1)" in lines
    assert any(line.startswith("10.0.0.1:8000 ") for line in lines)  # nginx's inbound flows, by its port
    assert "mesh: not enabled" in lines and "\x1b" not in out


# --- human output ---------------------------------------------------------------------------------------

def test_flows_human_output_is_plain_text_on_a_pipe(fake: FakeNode, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(fake, capsys, "flows", "--proc", "curl", "--since", "all")
    assert code == 0
    assert out == (
        "TIME     PROCESS        DESTINATION           OUTCOME          TX      RX    RTT\n"
        "11:06:38 curl/4242      10.0.0.2:443          established 1.3 KiB 1.2 MiB  1.2ms\n"
    )
    assert "\x1b" not in out


def test_status_health_events_human(fake: FakeNode, fresh: Canned, capsys: pytest.CaptureFixture[str]) -> None:
    assert "lost     lost_events 3 · map_evictions 0" in run(fake, capsys, "status")[1]
    assert "fakeclient/777                       10   0.0% refused 6, timeout 4" in run(fake, capsys, "health")[1]
    assert "connect_failed   fakeclient/777 10.0.0.9:8080         refused" in run(fake, capsys, "events")[1]
    fresh.events = []
    assert run(fake, capsys, "events")[1] == "no events\n"
    fresh.flows = []
    assert run(fake, capsys, "flows", "--since", "5m")[1] == "no flows match since 5m\n"


# --- errors ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("code", "details", "exit_code", "line"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, "dst '10.0.0.0/33' is not an address or CIDR", 1,
         "meshctl flows: the node rejected the request: dst '10.0.0.0/33' is not an address or CIDR; "
         "check the flags\n"),
        (grpc.StatusCode.PERMISSION_DENIED, "peer 127.0.0.1 is not allowed", 5,
         "meshctl flows: the node at {node} refused Observer.Flows: peer 127.0.0.1 is not allowed; "
         "check meshctl's credentials and the node's access rules\n"),
        (grpc.StatusCode.UNAUTHENTICATED, "no client certificate", 5, None),
        (grpc.StatusCode.INTERNAL, "store is corrupt", 1,
         "meshctl flows: Observer.Flows failed on the node at {node}: INTERNAL store is corrupt\n"),
        (grpc.StatusCode.UNIMPLEMENTED, "", 2,
         "meshctl flows: the node at {node} does not implement Observer.Flows (it may be older than meshctl)\n"),
    ],
)
def test_node_errors_become_one_line_and_an_exit_code(
    fake: FakeNode, fresh: Canned, capsys: pytest.CaptureFixture[str], code: grpc.StatusCode, details: str,
    exit_code: int, line: str | None,
) -> None:
    fresh.fail["Flows"] = (code, details)
    got, out, err = run(fake, capsys, "flows", "--json")
    assert got == exit_code and out == ""
    assert err.count("\n") == 1
    if line is not None:
        assert err == line.format(node=fake.address)


def test_resource_exhausted_suggests_a_smaller_limit(fake: FakeNode, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(fake, capsys, "flows", "--limit", "2000000")
    assert code == 1
    assert err == "meshctl flows: the node refused: number over the maximum of 1,000,000; try a smaller --limit\n"


def test_deadline_exceeded_exits_4(fake: FakeNode, fresh: Canned, capsys: pytest.CaptureFixture[str]) -> None:
    fresh.delay["Status"] = 2.0
    code, out, err = run(fake, capsys, "status", "--timeout", "300ms")
    assert (code, out) == (4, "")
    assert err == (f"meshctl status: the node at {fake.address} did not answer Observer.Status within 0.3s; "
                   "try a narrower range or filter, or a longer --timeout\n")


def test_unreachable_node_exits_3(capsys: pytest.CaptureFixture[str]) -> None:
    gone = FakeNode().start()
    address = gone.address
    gone.stop()
    for cmd in ("status", "flows", "health", "events", "peers", "top"):
        code = main(["--node", address, cmd, "--json"])
        out, err = capsys.readouterr()
        assert (code, out) == (3, ""), cmd
        assert err == (f"meshctl {cmd}: cannot reach the node at {address} (connection refused); is meshnode "
                       "running there? try --node HOST:PORT or $MESHCTL_NODE\n")


def test_unreachable_in_a_subprocess_prints_no_traceback() -> None:
    gone = FakeNode().start()
    address = gone.address
    gone.stop()
    out = subprocess.run([sys.executable, "-m", "cli", "--node", address, "flows"], cwd=ROOT,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 3 and out.stdout == ""
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr


def test_until_before_since_is_a_usage_error(fake: FakeNode, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(fake, capsys, "flows", "--since", "5m", "--until", "10m")
    assert code == 2 and err == "meshctl flows: --until (10m) is before --since (5m)\n"
    code, _, err = run(fake, capsys, "flows", "--follow", "--until", "1m")
    assert code == 2 and "conflict" in err


# --- commands whose service is not there yet ------------------------------------------------------------

def test_peers_without_a_mesh_exits_2_in_one_line(fake: FakeNode, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(fake, capsys, "peers") == (2, "", MESH_LINE)
    assert run(fake, capsys, "query", "--group-by", "region") == (2, "", MESH_LINE.replace("peers", "query"))
    with FakeNode() as no_mesh:  # no Mesh service registered at all
        assert run(no_mesh, capsys, "peers", "--json") == (2, "", MESH_LINE)


def test_blame_and_validate_say_their_service_is_missing(fake: FakeNode,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert run(fake, capsys, "blame") == (
        2, "", "meshctl blame: this node has no diagnosis service (it runs an older meshnode; upgrade it)\n")
    assert run(fake, capsys, "validate") == (
        2, "", "meshctl validate: this node has no trust service (it runs an older meshnode; upgrade it)\n")


# --- streams and Ctrl-C ---------------------------------------------------------------------------------

@pytest.mark.parametrize("argv", [["events", "--follow"],
                                  ["flows", "--follow", "--json", "--since", "all", "--limit", "3"]])
def test_ctrl_c_on_a_stream_exits_130_quietly(fake: FakeNode, argv: list[str]) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    p = subprocess.Popen([sys.executable, "-m", "cli", "--node", fake.address, *argv], cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert p.stdout is not None
        ready, _, _ = select.select([p.stdout], [], [], 20)
        assert ready, "the stream printed nothing"
        first = p.stdout.readline()  # the stream is open and printing
        assert first
        p.send_signal(signal.SIGINT)
        _out, err = p.communicate(timeout=10)
    finally:
        p.kill()
    assert p.returncode == 130
    assert err == ""


def test_flows_follow_prints_the_header_once_then_rows_as_they_come(fake: FakeNode) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    p = subprocess.Popen([sys.executable, "-m", "cli", "--node", fake.address, "flows", "--follow", "--since", "all",
                          "--limit", "3"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=env)
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert p.stdout is not None
        for line in p.stdout:
            lines.put(line.rstrip("\n"))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        got = [lines.get(timeout=20) for _ in range(4)]
        p.send_signal(signal.SIGINT)
        p.wait(10)
        reader.join(10)
        assert p.stderr is not None
        err = p.stderr.read()
    finally:
        p.kill()
    assert lines.empty()  # nothing after the three records: the stream was waiting for new ones
    assert got == [
        "TIME     PROCESS        DESTINATION           OUTCOME          TX      RX    RTT",
        "11:06:38 curl/4242      10.0.0.2:443          established 1.3 KiB 1.2 MiB  1.2ms",
        "11:06:38 fakeclient/777 10.0.0.9:8080         refused         0 B     0 B      -",
        "11:06:40 fakeclient/777 10.0.0.9:8080         timeout         0 B     0 B      -",
    ]
    assert (p.returncode, err) == (130, "")
