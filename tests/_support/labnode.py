"""A real ``meshnode run`` (eBPF sensor) on a lab host, and the console scripts the lab tests run.

The node listens on the host's loopback (``NODE``), scoped to the host's cgroup, exporting every ``PERIOD``
seconds; ``start_node`` returns once ``meshctl status`` answers through it.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
MESHNODE = str(ROOT / ".venv" / "bin" / "meshnode")
MESHCTL = str(ROOT / ".venv" / "bin" / "meshctl")
NODE = "127.0.0.1:7400"
PERIOD = 1.0


def start_node(host: Any, data_dir: Path, cgroup: str = "", timeout: float = 20) -> subprocess.Popen[str]:
    """``meshnode run`` on ``host`` scoped to its cgroup (``cgroup``: as given on the command line; by default the
    path relative to the cgroup2 mount), answering ``meshctl status`` within ``timeout`` seconds."""
    node: subprocess.Popen[str] = host.popen(
        [MESHNODE, "run", "--insecure", "--listen", NODE, "--data-dir", str(data_dir), "--export-period", str(PERIOD),
         "--metrics", "off", "--cgroup", cgroup or host.cgroup_rel, "--sensor", "ebpf"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if node.poll() is not None:
            raise AssertionError(f"meshnode run exited {node.returncode}: {node.stderr.read() if node.stderr else ''}")
        if host.run([MESHCTL, "--node", NODE, "status", "--json"], check=False).returncode == 0:
            return node
        time.sleep(0.2)
    node.kill()
    raise AssertionError(f"meshnode run did not answer within {timeout:g} s: "
                         f"{node.communicate(timeout=5)[1] if node.stderr else ''}")


def stop_nodes(procs: Iterable[subprocess.Popen[Any]], timeout: float = 20) -> None:
    """SIGTERM every node at once (each flushes its last period), then wait; kill one that does not stop."""
    procs = list(procs)
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
