"""Real ``meshnode run`` processes with mutual TLS from ``meshnode ca init/issue``, and meshctl against them.

One node (fake sensor, 127.0.0.1) with an operator key: meshctl with a client certificate works, without one
it is refused with a clear message; an unsigned fleet query gets PERMISSION_DENIED, a signed one is answered,
one signed by a key the node does not trust or replayed is refused, and each refusal is counted. Two nodes
with TLS form a mesh over mTLS, exchange digests, and a fleet query fans out to both (signed by the node).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from meshnode.mesh import NodeKey
from meshnode.trust import auth_metadata
from meshnode.v1 import mesh_pb2, mesh_pb2_grpc, observer_pb2, observer_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]
FLEET_QUERY = "/meshnode.v1.Mesh/FleetQuery"


def _env() -> dict[str, str]:
    env = {**os.environ, "MESHNODE_ALLOW_FAKE_SENSOR": "1", "PYTHONPATH": str(ROOT)}
    for k in list(env):
        if k.startswith("MESHCTL_") or k in ("MESHNODE_CONFIG", "MESHNODE_TLS_DIR", "MESHNODE_INSECURE"):
            del env[k]
    return env


def meshnode(*args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "meshnode.cli_main", *args], capture_output=True, text=True,
                         env=_env(), cwd=ROOT, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    return out.stdout


def meshctl(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True, text=True,
                          env={**_env(), **(env or {})}, cwd=ROOT, timeout=60, check=False)


def poll(what: str, check: Callable[[], Any], timeout: float = 40.0) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.3)
    raise AssertionError(f"{what} within {timeout:g} s; last: {last!r}")


@dataclass
class Fleet:
    ca: Path
    root: Path
    procs: list[subprocess.Popen[str]]

    def issue(self, name: str, *extra: str) -> Path:
        out = self.root / name
        meshnode("ca", "issue", name, "--dir", str(self.ca), "--out", str(out), *extra)
        return out

    def start(self, name: str, *args: str) -> str:
        tls = self.issue(name, "--ip", "127.0.0.1")
        proc = subprocess.Popen(
            [sys.executable, "-m", "meshnode.cli_main", "run", "--tls-dir", str(tls), "--sensor", "fake",
             "--listen", "127.0.0.1:0", "--metrics", "off", "--export-period", "0.5",
             "--data-dir", str(self.root / f"data-{name}"), *args],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_env(), cwd=ROOT)
        self.procs.append(proc)
        assert proc.stderr is not None
        seen = ""
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line and proc.poll() is not None:
                break
            seen += line
            m = re.search(r"listening on (\S+),", line)
            if m:
                assert "mutual TLS with the fleet CA" in seen and "INSECURE" not in seen
                return m.group(1)
        raise AssertionError(f"node {name} did not start: {seen}")


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    ca = tmp_path / "ca"
    meshnode("ca", "init", "--dir", str(ca), "--name", "test")
    f = Fleet(ca, tmp_path, [])
    try:
        yield f
    finally:
        for p in f.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in f.procs:
            try:
                p.communicate(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.communicate()


def _channel(addr: str, tls: Path, name: str) -> grpc.Channel:
    creds = grpc.ssl_channel_credentials(
        root_certificates=(tls / "ca.crt").read_bytes(), private_key=(tls / f"{name}.key").read_bytes(),
        certificate_chain=(tls / f"{name}.crt").read_bytes())
    return grpc.secure_channel(addr, creds)


def test_tls_node_clients_certificates_and_signed_queries(fleet: Fleet, tmp_path: Path) -> None:
    alice = fleet.issue("alice", "--client", "--operator")
    mallory = fleet.issue("mallory", "--client", "--operator")  # a fleet certificate, a key nobody listed
    addr = fleet.start("n1", "--operator-keys-file", str(alice / "alice.sign.pub"))

    # meshctl with a client certificate: status over mTLS, and it says the node is not insecure
    ok = meshctl("--node", addr, "--tls-dir", str(alice), "status", "--json")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["insecure"] is False

    # without a certificate: refused, with what to do (exit 5, no traceback)
    bare = meshctl("--node", addr, "status")
    assert bare.returncode == 5
    assert bare.stderr.startswith(f"meshctl status: the node at {addr} requires mutual TLS and meshctl has no "
                                  "client certificate; pass --tls-dir DIR or set $MESHCTL_TLS_DIR")
    assert "Traceback" not in bare.stderr

    # a certificate from another CA: the handshake fails, the message says why it may have
    other_ca = tmp_path / "other-ca"
    meshnode("ca", "init", "--dir", str(other_ca))
    eve = tmp_path / "eve"
    meshnode("ca", "issue", "eve", "--dir", str(other_ca), "--client", "--out", str(eve))
    foreign = meshctl("--node", addr, "--tls-dir", str(eve), "status")
    assert foreign.returncode != 0 and "Traceback" not in foreign.stderr
    with _channel(addr, eve, "eve") as ch, pytest.raises(grpc.RpcError) as refused:
        observer_pb2_grpc.ObserverStub(ch).Status(observer_pb2.StatusRequest(), timeout=10)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE

    # signed by alice (meshctl finds alice.sign.key in --tls-dir): answered, once the node has a digest
    def signed_query() -> Any:
        out = meshctl("--node", addr, "--tls-dir", str(alice), "query", "--json")
        assert out.returncode == 0, out.stderr
        doc = json.loads(out.stdout)
        return doc if [n["answered"] for n in doc["nodes"]] == [True] else None

    doc = poll("a signed fleet query answered", signed_query)
    assert len(doc["digests"]) == 1

    with _channel(addr, alice, "alice") as ch:
        stub = mesh_pb2_grpc.MeshStub(ch)
        req = mesh_pb2.FleetQueryRequest(deadline_ms=1000)
        # unsigned, over a good mTLS connection: PERMISSION_DENIED
        with pytest.raises(grpc.RpcError) as unsigned:
            stub.FleetQuery(req, timeout=10)
        assert unsigned.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "unsigned" in (unsigned.value.details() or "")
        # signed by alice's key: answered; the same signature again: replayed
        key = NodeKey.load_or_create(alice / "alice.sign.key")
        node_id = observer_pb2_grpc.ObserverStub(ch).Status(observer_pb2.StatusRequest(), timeout=10).node_id
        md = auth_metadata(key, FLEET_QUERY, req, node_id)
        assert stub.FleetQuery(req, timeout=10, metadata=md).nodes[0].answered
        with pytest.raises(grpc.RpcError) as replayed:
            stub.FleetQuery(req, timeout=10, metadata=md)
        assert replayed.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "replayed" in (replayed.value.details() or "")
        # alice's signature over another request does not cover this one
        other = mesh_pb2.FleetQueryRequest(deadline_ms=1000, destination="10.0.0.1:80")
        with pytest.raises(grpc.RpcError) as forged:
            stub.FleetQuery(other, timeout=10, metadata=auth_metadata(key, FLEET_QUERY, req, node_id))
        assert forged.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "bad_signature" in (forged.value.details() or "")

    # signed by a key the node does not trust (mallory has a fleet certificate, not an operator key)
    unknown = meshctl("--node", addr, "--tls-dir", str(mallory), "query")
    assert unknown.returncode == 5
    assert "not a trusted key" in unknown.stderr and "Traceback" not in unknown.stderr
    # meshctl without a signing key says how to get one
    nokey = meshctl("--node", addr, "--tls-dir", str(alice), "--sign-key", str(tmp_path / "none"), "query")
    assert nokey.returncode != 0 and "cannot load the signing key" in nokey.stderr
    (alice / "alice.sign.key").rename(tmp_path / "alice.sign.key")
    unsigned_cli = meshctl("--node", addr, "--tls-dir", str(alice), "query")
    assert unsigned_cli.returncode == 5
    assert "--sign-key FILE" in unsigned_cli.stderr

    # every refusal counted where operators look (meshctl peers)
    peers = meshctl("--node", addr, "--tls-dir", str(alice), "peers", "--json")
    assert peers.returncode == 0, peers.stderr
    counters = json.loads(peers.stdout)["counters"]
    assert counters["requests_unsigned"] == 2
    assert counters["requests_replayed"] == 1
    assert counters["requests_bad_signature"] == 1
    assert counters["requests_unknown_key"] == 1
    assert counters["requests_authorized"] >= 2


def test_two_tls_nodes_form_a_mesh_and_answer_a_fleet_query(fleet: Fleet) -> None:
    alice = fleet.issue("alice", "--client", "--operator")
    keys = ("--operator-keys-file", str(alice / "alice.sign.pub"))
    a = fleet.start("a", *keys)
    b = fleet.start("b", *keys, "--join", a)

    def peers(on: str) -> dict[str, Any]:
        out = meshctl("--node", on, "--tls-dir", str(alice), "peers", "--json")
        assert out.returncode == 0, out.stderr
        doc: dict[str, Any] = json.loads(out.stdout)
        return doc

    def digests_exchanged() -> bool:
        for on in (a, b):
            others = [p for p in peers(on)["peers"] if not p["is_self"]]
            if len(others) != 1 or others[0]["state"] != "alive" or others[0]["digest_seq"] < 1:
                return False
        return True

    poll("both nodes alive to each other with a digest held", digests_exchanged)
    assert peers(a)["counters"].get("digests_accepted", 0) >= 1

    def both_answer() -> Any:
        out = meshctl("--node", a, "--tls-dir", str(alice), "query", "--json", "--deadline", "3s")
        assert out.returncode == 0, out.stderr
        doc = json.loads(out.stdout)
        return doc if len(doc["nodes"]) == 2 and all(n["answered"] for n in doc["nodes"]) else None

    doc = poll("a fleet query from a answered by both nodes", both_answer)
    assert len(doc["digests"]) == 2
    # b accepted a's fan-out because a is a member and signed it with its node key
    assert peers(b)["counters"]["requests_authorized"] >= 1
    assert peers(b)["counters"].get("requests_unknown_key", 0) == 0
