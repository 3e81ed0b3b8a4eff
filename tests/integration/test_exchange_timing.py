"""Exchange timing from the kernel on real loopback traffic: a server that sleeps before each answer shows
its delay as the response time of both ends' flows (counted exactly, timed within tolerance), while the
handshake stays fast."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests._support.env import require_kernel, scoped_cgroup

EXCHANGES = 3
DELAY_S = 0.2

# One process in the sensor's cgroup: a server thread that reads a request, sleeps, answers; a client that
# makes EXCHANGES request/response rounds on one connection, then a second connection whose server answers
# at once (the contrast).
TRAFFIC = r"""
import os, socket, sys, threading, time
open(sys.argv[1] + "/cgroup.procs", "w").write(str(os.getpid()))
rounds, delay = int(sys.argv[2]), float(sys.argv[3])
srv = socket.create_server(("127.0.0.1", 0))
port = srv.getsockname()[1]

def serve(n, pause):
    s, _ = srv.accept()
    for _ in range(n):
        s.recv(65536)
        time.sleep(pause)
        s.sendall(b"r" * 3000)
    s.recv(1)
    s.close()

def client(n):
    c = socket.create_connection(("127.0.0.1", port))
    for _ in range(n):
        c.sendall(b"q" * 100)
        got = 0
        while got < 3000:
            got += len(c.recv(65536))
    c.close()

for n, pause in ((rounds, delay), (1, 0.0)):
    t = threading.Thread(target=serve, args=(n, pause))
    t.start()
    client(n)
    t.join()
print(port)
"""


@pytest.fixture
def sensor() -> Iterator[tuple[Any, Path]]:
    require_kernel()
    from meshnode.sensor._ebpf import EbpfSensor

    with scoped_cgroup("timing") as cg:
        s = EbpfSensor(scope="/" + cg.name)
        try:
            s.start()
            yield s, cg
        finally:
            s.close()


def test_a_server_that_sleeps_shows_as_response_time_on_both_ends(sensor: tuple[Any, Path]) -> None:
    s, cg = sensor
    proc = subprocess.run([sys.executable, "-c", TRAFFIC, str(cg), str(EXCHANGES), str(DELAY_S)], check=True,
                          timeout=30, stdout=subprocess.PIPE, text=True)
    port = int(proc.stdout)
    flows: list[Any] = []
    deadline = time.monotonic() + 10
    while len(flows) < 4 and time.monotonic() < deadline:
        flows += [f for f in s.poll().ended if port in (f.sport, f.dport) and f.proto == "tcp"]
        time.sleep(0.05)
    assert len(flows) == 4
    by_role = {(f.direction, f.responses): f for f in flows}
    assert set(by_role) == {("outbound", EXCHANGES), ("inbound", EXCHANGES), ("outbound", 1), ("inbound", 1)}

    delay_us = DELAY_S * 1e6
    for direction in ("outbound", "inbound"):
        slow = by_role[(direction, EXCHANGES)]
        # every exchange waited for the sleep: no less, and not much more on an idle loopback
        assert delay_us <= slow.response_us_max < delay_us + 60_000, slow
        assert EXCHANGES * delay_us <= slow.response_us_sum < EXCHANGES * (delay_us + 60_000), slow
        assert delay_us <= slow.first_byte_us <= slow.response_us_max, slow
        fast = by_role[(direction, 1)]
        assert fast.response_us_sum == fast.response_us_max == fast.first_byte_us < 50_000, fast
    client = by_role[("outbound", EXCHANGES)]
    assert 0 < client.connect_us < 50_000, client  # the handshake is not what was slow
    assert client.srtt_us < 10_000, client  # nor the path
