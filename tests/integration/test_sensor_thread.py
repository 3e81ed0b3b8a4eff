"""The eBPF sensor names flows as ``ps`` names processes (root, real eBPF, loopback).

A real ``python3`` (exec'd, so its leader is named ``python3``) whose worker thread names itself
``worker-xyz`` with prctl(PR_SET_NAME) opens the flows and exits before the sensor polls: /proc cannot name it
any more. The sensor's records say ``comm`` python3 (the kernel side's process name) and ``thread``
worker-xyz (the kernel's comm for the socket), with exact bytes, through ``poll`` and ``poll_json`` alike.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests._support.env import require_kernel

N_TCP = 123_457
N_UDP = 321

# argv: tcp port, udp port, who connects ("worker" or "main"). The named worker (or the main thread) sends
# N_TCP bytes over TCP, then one N_UDP-byte datagram, reads its answer, and closes both; then it exits.
PROGRAM = r"""
import ctypes, socket, sys, threading
libc = ctypes.CDLL(None, use_errno=True)
tcp_port, udp_port, who = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
def work():
    if who == "worker":
        assert libc.prctl(15, b"worker-xyz", 0, 0, 0) == 0  # PR_SET_NAME: this thread only
    with socket.create_connection(("127.0.0.1", tcp_port)) as s:
        s.sendall(b"x" * N_TCP)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        u.settimeout(5)
        u.sendto(b"q" * N_UDP, ("127.0.0.1", udp_port))
        u.recvfrom(2048)
if who == "worker":
    t = threading.Thread(target=work)
    t.start()
    t.join()
else:
    work()
""".replace("N_TCP", str(N_TCP)).replace("N_UDP", str(N_UDP))


def python3() -> str:
    """A python3 whose path ends in ``python3``: exec names the process after it."""
    exe = shutil.which("python3")
    assert exe is not None and Path(exe).name == "python3", exe
    return exe


class Servers:
    """A loopback TCP sink that counts what each connection sent, and a UDP echo, in this process."""

    def __init__(self) -> None:
        self.tcp = socket.create_server(("127.0.0.1", 0))
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 0))
        self.tcp_port, self.udp_port = self.tcp.getsockname()[1], self.udp.getsockname()[1]
        self.received: list[int] = []
        self._threads = [threading.Thread(target=f, daemon=True) for f in (self._sink, self._echo)]
        for t in self._threads:
            t.start()

    def _sink(self) -> None:
        while True:
            try:
                conn, _ = self.tcp.accept()
            except OSError:
                return
            with conn:
                n = 0
                while chunk := conn.recv(65536):
                    n += len(chunk)
                self.received.append(n)

    def _echo(self) -> None:
        while True:
            try:
                data, peer = self.udp.recvfrom(2048)
                self.udp.sendto(data, peer)
            except OSError:
                return

    def close(self) -> None:
        self.tcp.close()
        self.udp.close()


@pytest.fixture(scope="module")
def sensor() -> Iterator[Any]:
    require_kernel()
    from meshnode.sensor._ebpf import EbpfSensor

    s = EbpfSensor(idle_timeout_s=60.0, udp_scan_interval_s=0.1)  # the whole host
    s.start()
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def servers() -> Iterator[Servers]:
    s = Servers()
    try:
        yield s
    finally:
        s.close()


def run_client(servers: Servers, who: str) -> int:
    """Run the program to its end (exited and reaped: /proc no longer names it); its pid."""
    proc = subprocess.Popen([python3(), "-c", PROGRAM, str(servers.tcp_port), str(servers.udp_port), who],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert not Path(f"/proc/{proc.pid}").exists()
    return proc.pid


def polled(sensor: Any) -> Callable[[], list[dict[str, Any]]]:
    return lambda: [f.to_json() for f in sensor.poll().ended]


def polled_json(sensor: Any) -> Callable[[], list[dict[str, Any]]]:
    return lambda: [json.loads(line) for line in sensor.poll_json().text.splitlines()]


def wait_for(poll: Callable[[], list[dict[str, Any]]], pred: Callable[[dict[str, Any]], bool], count: int,
             timeout: float = 15.0) -> list[dict[str, Any]]:
    """Poll until ``count`` flows match (each flow as its JSON document)."""
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while True:
        seen += poll()
        found = [f for f in seen if pred(f)]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def client_flows(sensor: Any, servers: Servers, who: str, path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The TCP and UDP flows the program opened, as ``path`` ("poll" or "poll_json") reports them."""
    pid = run_client(servers, who)
    poll = polled(sensor) if path == "poll" else polled_json(sensor)
    found = wait_for(poll, lambda f: f["pid"] == pid and f["direction"] == "outbound" and f["dport"] in (
        servers.tcp_port, servers.udp_port), 2)
    assert sorted(f["proto"] for f in found) == ["tcp", "udp"], found
    tcp, udp = sorted(found, key=lambda f: f["proto"])
    assert servers.received[-1:] == [N_TCP]
    assert (tcp["dport"], tcp["outcome"], tcp["bytes_tx"], tcp["bytes_rx"]) == (
        servers.tcp_port, "established", N_TCP, 0)
    assert (udp["dport"], udp["outcome"], udp["bytes_tx"], udp["bytes_rx"]) == (
        servers.udp_port, "udp_answered", N_UDP, N_UDP)
    return tcp, udp


@pytest.mark.kernel
@pytest.mark.parametrize("path", ["poll", "poll_json"])
def test_a_named_worker_thread_is_the_thread_and_the_process_keeps_its_name(
        sensor: Any, servers: Servers, path: str) -> None:
    tcp, udp = client_flows(sensor, servers, "worker", path)
    assert (tcp["comm"], tcp["thread"]) == ("python3", "worker-xyz")
    assert (udp["comm"], udp["thread"]) == ("python3", "worker-xyz")


@pytest.mark.kernel
def test_the_main_thread_connecting_leaves_thread_empty(sensor: Any, servers: Servers) -> None:
    tcp, udp = client_flows(sensor, servers, "main", "poll")
    assert (tcp["comm"], tcp["thread"]) == (udp["comm"], udp["thread"]) == ("python3", "")


@pytest.mark.kernel
def test_no_process_names_were_lost(sensor: Any) -> None:
    assert sensor._probes.process_name_gaps() == []
    assert sensor.counters()["proc_map_full"] == 0
