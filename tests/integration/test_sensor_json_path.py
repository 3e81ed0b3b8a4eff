"""``meshnode capture --json``'s fast path over real kernel records: the ring records of real loopback traffic
(IPv4 and IPv6, both ends, refused connects) rendered by ``EbpfSensor.poll_json`` (in C, and in Python) and
by ``poll`` + ``json_line`` (the path the fast one replaced for capture) give the same bytes."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests._support.env import require_kernel, scoped_cgroup

CONNS = 6  # per address family

TRAFFIC = r"""
import os, socket, sys
open(sys.argv[1] + "/cgroup.procs", "w").write(str(os.getpid()))
print(os.getpid())
for fam, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
    with socket.create_server((host, 0), family=fam) as srv:
        for i in range(int(sys.argv[2])):
            c = socket.create_connection((host, srv.getsockname()[1]))
            s, _ = srv.accept()
            c.sendall(b"q" * (100 + i)); s.recv(65536); s.sendall(b"r" * (5000 * (i + 1))); s.close()
            while c.recv(65536): pass
            c.close()
probe = socket.socket(); probe.bind(("127.0.0.1", 0)); closed = probe.getsockname()[1]; probe.close()
try:
    socket.create_connection(("127.0.0.1", closed))
except ConnectionRefusedError:
    pass
"""


SOLO_REFUSED = r"""
import os, socket, sys
open(sys.argv[1] + "/cgroup.procs", "w").write(str(os.getpid()))
print(os.getpid())
probe = socket.socket(); probe.bind(("127.0.0.1", 0)); closed = probe.getsockname()[1]; probe.close()
try:
    socket.create_connection(("127.0.0.1", closed))
except ConnectionRefusedError:
    pass
"""


@pytest.fixture(params=[True, False], ids=["comm-in-sock_ops", "comm-by-tracepoint"])
def sensor(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, Path]]:
    """A sensor scoped to a fresh cgroup; built as this kernel allows (sock_ops notes a connect's comm,
    Linux 6.16 on), and as older kernels need it (the inet_sock_set_state tracepoint notes it)."""
    require_kernel()
    from meshnode.probes import _loader
    from meshnode.sensor._ebpf import EbpfSensor

    if not request.param:
        monkeypatch.setattr(_loader, "sockops_has_comm", lambda: False)
    elif not _loader.sockops_has_comm():
        pytest.skip("this kernel's sock_ops cannot call bpf_get_current_comm (before 6.16)")

    with scoped_cgroup("json") as cg:
        s = EbpfSensor(scope="/" + cg.name)
        try:
            s.start()
            yield s, cg
        finally:
            s.close()


def test_fast_path_equals_poll_on_real_records(sensor: tuple[Any, Path]) -> None:
    from meshnode.probes import _records as rec
    from meshnode.sensor._capture_cmd import json_line

    s, cg = sensor
    proc = subprocess.run([sys.executable, "-c", TRAFFIC, str(cg), str(CONNS)], check=True, timeout=60,
                          stdout=subprocess.PIPE, text=True)
    pid = int(proc.stdout)
    # a process whose one connect is refused: no data moves, so only the connect can have noted its name
    solo = subprocess.run([sys.executable, "-c", SOLO_REFUSED, str(cg)], check=True, timeout=60,
                          stdout=subprocess.PIPE, text=True)
    solo_pid = int(solo.stdout)
    want = 2 * 2 * CONNS + 2  # both ends of each connection, and the two refused connects
    raws: list[tuple[Any, ...]] = []
    deadline = time.monotonic() + 10
    while sum(1 for v in raws if v[0] == rec.EV_TCP_END) < want and time.monotonic() < deadline:
        raws += s._probes.poll_raw()
        time.sleep(0.05)
    assert sum(1 for v in raws if v[0] == rec.EV_TCP_END) == want

    s._probes.poll_raw = lambda: list(raws)
    s._probes.poll_events = lambda: [rec.event_from_raw(v) for v in raws]
    s._probes.poll_records = lambda: (b"".join(rec.EVENT_STRUCT.pack(*v) for v in raws), len(raws),
                                      rec.EVENT_SIZE, 0)
    assert s._native_json() is not None  # the C renderer (make setup builds it)
    in_c = [ln for ln in s.poll_json().text.splitlines(True) if '"proto": "tcp"' in ln]
    s._native = None
    in_python = [ln for ln in s.poll_json().text.splitlines(True) if '"proto": "tcp"' in ln]
    old = [ln for ln in map(json_line, s.poll().ended) if '"proto": "tcp"' in ln]
    assert in_c == in_python == old and len(old) == want
    got = [json.loads(ln) for ln in in_c]
    assert {g["src"] for g in got} == {"127.0.0.1", "::1"}
    assert sorted(g["outcome"] for g in got).count("established") == want - 2
    assert [g["outcome"] for g in got].count("refused") == 2
    # both processes have exited: their names come from the kernel side, noted at connect and read
    assert {(g["direction"], g["comm"], g["pid"]) for g in got} == {
        ("outbound", "python", pid), ("inbound", "python", pid), ("outbound", "python", solo_pid)}
    assert sorted(g["bytes_rx"] for g in got if g["direction"] == "outbound" and g["outcome"] == "established") \
        == sorted(5000 * (i + 1) for i in range(CONNS) for _ in range(2))
