"""Real eBPF: a TCP flow's final record carries the last tcp_info sample the sensor took while it was open.

The sensor reads tcp_info through sock_diag in its own network namespace, so it runs on a lab host (its
netns and cgroup), where the flow is made: a connection that moves 4 MiB, is sampled by ``active()`` (the
node does it once a period), moves 4 MiB more, and closes. Before, the final record had zeros there.
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

from tests._support.lab import make_lab  # noqa: F401 (fixture)

_ON_HOST = """
import json, socket, threading, time
from meshnode.sensor._ebpf import EbpfSensor

sensor = EbpfSensor(scope=CGROUP)
sensor.start()
server = socket.create_server(("127.0.0.1", 0))
port = server.getsockname()[1]

def serve():
    conn, _ = server.accept()
    while conn.recv(1 << 16):
        pass
    conn.close()

threading.Thread(target=serve, daemon=True).start()
client = socket.create_connection(("127.0.0.1", port))
client.sendall(b"x" * (4 << 20))
time.sleep(0.2)
live = [f for f in sensor.active() if f.dport == port]
client.sendall(b"y" * (4 << 20))
client.close()
deadline = time.monotonic() + 10
finals = []
while not finals and time.monotonic() < deadline:
    finals = [f for f in sensor.poll().ended if f.dport == port and f.direction == "outbound"]
    time.sleep(0.05)
sensor.close()
print(json.dumps({"live": [f.to_json() for f in live], "final": [f.to_json() for f in finals]}))
"""


def test_final_record_carries_the_last_tcp_info_sample(make_lab: Any) -> None:  # noqa: F811
    lab = make_lab(1)
    host = lab["a"]
    proc = host.python(_ON_HOST.replace("CGROUP", repr(host.cgroup_rel)), stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-3000:]
    got = json.loads(out)
    [live] = [f for f in got["live"] if f["direction"] == "outbound"]
    [final] = got["final"]
    assert live["delivery_rate"] > 0 and live["rttvar_us"] > 0  # the sample active() took
    assert (final["kind"], final["outcome"], final["bytes_tx"]) == ("final", "established", 8 << 20)
    # the final record carries that sample (it is the last one: active() ran once)
    assert [final[k] for k in ("delivery_rate", "rttvar_us", "lost", "reordering")] == [
        live[k] for k in ("delivery_rate", "rttvar_us", "lost", "reordering")]
