"""``meshctl top`` in tmux against a real node (eBPF sensor) on a lab host, with real traffic.

The node, the traffic and the dashboard all run on host b (its netns and cgroup); the server is on host a.
The screen must show the test's process (named with prctl so the name is unmistakable) and destination;
killing the node shows "reconnecting"; restarting it on the same address recovers without a keypress.
"""

from __future__ import annotations

import shlex
import subprocess
import time
from pathlib import Path
from typing import Any

from tests._support import traffic as t
from tests._support.env import require_kernel
from tests._support.labnode import MESHCTL, NODE, start_node
from tests._support.tmux import Tmux

PORT = 31234

# Upload 50 KB every 0.3 s to a:PORT under a process name no other program has.
UPLOADER = r"""
import ctypes, socket, sys, time
ctypes.CDLL(None).prctl(15, b"mn-uploader", 0, 0, 0)
while True:
    try:
        c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
        c.sendall(b"u" * 50_000); c.close()
    except OSError:
        pass
    time.sleep(0.3)
"""


def test_top_shows_real_traffic_and_survives_a_node_restart(tmux: Tmux, tmp_path: Path) -> None:
    require_kernel()
    from meshnode.lab import Lab

    with Lab(2) as lab:
        a, b = lab["a"], lab["b"]
        sink = t.start(a, t.TCP_SINK, PORT)
        t.wait_ready(sink)
        node: Any = start_node(b, tmp_path)
        b.python(UPLOADER, a.ip, str(PORT), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            tmux.start(shlex.join(b.wrap([MESHCTL, "--node", NODE, "top", "--interval", "0.5"])))
            screen = tmux.wait("mn-uploader", f":{PORT}", "connected", "ebpf", timeout=30)
            # the blame line (Diagnosis.Blame, every few seconds): a healthy upload names no suspect
            screen = tmux.wait("blame ", "no problem above 20%", "transactions from 1 host", timeout=30)
            print("\n--- meshctl top, real node on a lab host, 100x40 ---\n" + screen)

            node.kill()
            node.wait(timeout=10)
            screen = tmux.wait("reconnecting", timeout=20)
            print("\n--- node killed ---\n" + screen)

            node = start_node(b, tmp_path)
            screen = tmux.wait("connected", "mn-uploader", absent="reconnecting", timeout=30)
            print("\n--- node restarted ---\n" + screen)

            tmux.keys("q")
            deadline = time.monotonic() + 5
            while tmux.alive() and time.monotonic() < deadline:
                time.sleep(0.1)
            assert not tmux.alive(), "q did not quit"
        finally:
            node.terminate()
            node.wait(timeout=20)
            sink.kill()
