"""``meshnode lab`` end to end, as a newcomer would run it (subprocesses, stdin not a terminal): ``up`` builds
the fleet and opens ``meshctl top`` in tmux, ``status`` and ``fault`` act on the running lab, a second
``up`` fails clearly, ``down`` leaves nothing; and ``down`` also cleans up after the ``up`` process
(the supervisor) was SIGKILLed.

Each test uses a state directory of its own (``MESHNODE_LAB_DIR``), so a demo lab someone has up in
/run/meshnode-lab is never touched.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests._support.env import require_kernel

MESHNODE = str(Path(sys.executable).with_name("meshnode"))
CGROUP_ROOT = Path("/sys/fs/cgroup/unified")


@dataclass
class Demo:
    state_dir: Path
    up_out: str
    up_seconds: float

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "MESHNODE_LAB_DIR": str(self.state_dir)}
        return subprocess.run([MESHNODE, "lab", *args], capture_output=True, text=True, env=env,
                              stdin=subprocess.DEVNULL, timeout=timeout, check=False)

    def state(self) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads((self.state_dir / "state.json").read_text())
        return doc

    def tmux(self, *args: str) -> subprocess.CompletedProcess[str]:
        sock = self.state()["tmux_socket"]
        return subprocess.run(["tmux", "-L", sock, *args], capture_output=True, text=True, timeout=10, check=False)


def leftovers(pid: int, pids: list[int], data_dir: str, tmux_socket: str) -> list[str]:
    """Everything of the lab of supervisor ``pid`` that still exists."""
    left = [f"netns {n}" for n in os.listdir("/run/netns") if n.startswith(f"mnlab-{pid}-")]
    left += [f"cgroup {n}" for n in os.listdir(CGROUP_ROOT) if n.startswith(f"mnlab-{pid}-")]
    left += [f"process {p}" for p in [pid, *pids] if _alive(p)]
    if Path(data_dir).exists():
        left.append(f"data {data_dir}")
    tmux = subprocess.run(["tmux", "-L", tmux_socket, "ls"], capture_output=True, text=True, check=False)
    if tmux.returncode == 0:
        left.append(f"tmux {tmux.stdout.strip()}")
    if (Path(os.environ.get("TMUX_TMPDIR") or "/tmp") / f"tmux-{os.getuid()}" / tmux_socket).exists():
        left.append(f"tmux socket {tmux_socket}")
    return left


def lab_pids(lab_id: str) -> list[int]:
    pids = []
    for procs in (CGROUP_ROOT / lab_id).glob("*/cgroup.procs"):
        pids += [int(p) for p in procs.read_text().split()]
    return pids


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


def start(state_dir: Path, *extra: str) -> Demo:
    demo = Demo(state_dir, "", 0.0)
    t0 = time.monotonic()
    out = demo.run("up", *extra, timeout=300)
    demo.up_seconds = time.monotonic() - t0
    demo.up_out = out.stdout
    assert out.returncode == 0, f"up failed ({out.returncode}):\n{out.stdout}\n{out.stderr}"
    return demo


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    require_kernel()
    d = start(tmp_path_factory.mktemp("lab-demo") / "state")
    try:
        yield d
    finally:
        d.run("down")


def test_up_prints_the_fleet_and_opens_top_in_tmux(demo: Demo) -> None:
    print(f"\nmeshnode lab up took {demo.up_seconds:.1f} s\n{demo.up_out}")
    state = demo.state()
    out = demo.up_out
    assert re.search(r"lab mnlab-\d+-\d+ up in \d+ s", out)
    for h in state["hosts"]:
        assert re.search(rf"{h['site']}\s+{h['host']}\s+{re.escape(h['ip'])}\s+:7400", out), h
    assert {h["host"] for h in state["hosts"]} == {"web1", "web2", "db1", "app1", "app2", "cache1"}
    for name in ("blackhole-server", "site-loss", "refuse-port", "bad-client"):
        assert name in out
    assert f"tmux -L {state['tmux_socket']} attach -t top" in out  # stdin is not a terminal
    deadline = time.monotonic() + 30
    screen = ""
    while time.monotonic() < deadline:
        screen = demo.tmux("capture-pane", "-p", "-t", "top").stdout
        if "connected" in screen and "frontend" in screen and "mesh: 6 alive" in screen:
            break
        time.sleep(0.5)
    print(screen)
    assert "web1" in screen and "frontend" in screen and "mesh: 6 alive" in screen


def test_status_shows_nodes_and_traffic(demo: Demo) -> None:
    deadline = time.monotonic() + 20  # every client has reached every target at least once by then
    while True:
        out = demo.run("status", "--json")
        assert out.returncode == 0, out.stderr
        doc = json.loads(out.stdout)
        traffic = doc["traffic"]
        if all(n["ok"] > 0 for targets in traffic.values() for n in targets.values()):
            break
        assert time.monotonic() < deadline, f"a target never answered: {traffic}"
        time.sleep(1)
    assert all(doc["nodes_alive"].values()) and len(doc["nodes_alive"]) == 6
    assert doc["state"]["faults"] == []
    assert set(traffic) == {"web1/frontend", "web2/frontend", "app1/worker", "app2/worker", "web2/prometheus"}
    text = demo.run("status").stdout
    assert "faults in force: none" in text and "node up" in text and "NODE DOWN" not in text


def test_second_up_fails_clearly(demo: Demo) -> None:
    out = demo.run("up")
    assert out.returncode == 1
    assert "a lab is already up" in out.stderr and demo.state()["lab_id"] in out.stderr
    assert "meshnode lab down" in out.stderr


def test_fault_unknown_then_refuse_port_then_heal(demo: Demo) -> None:
    out = demo.run("fault", "meteor-strike")
    assert out.returncode == 2
    assert "unknown fault 'meteor-strike'" in out.stderr
    assert "none, blackhole-server, site-loss, refuse-port, bad-client" in out.stderr

    cache1 = next(h for h in demo.state()["hosts"] if h["host"] == "cache1")
    out = demo.run("fault", "refuse-port")
    assert out.returncode == 0, out.stderr
    assert f"blame should name: service {cache1['ip']}:6379" in out.stdout
    again = demo.run("fault", "refuse-port")
    assert again.returncode == 2 and "already in force" in again.stderr

    def redis_counts() -> list[dict[str, int]]:
        doc = json.loads(demo.run("status", "--json").stdout)
        assert [f["name"] for f in doc["state"]["faults"]] == ["refuse-port"]
        return [t["cache1:6379/tcp"] for t in doc["traffic"].values() if "cache1:6379/tcp" in t]

    time.sleep(1.5)
    before = redis_counts()
    time.sleep(3.0)
    after = redis_counts()
    assert len(after) == 4
    for b, a in zip(before, after, strict=True):
        assert a["ok"] == b["ok"] and a["failed"] >= b["failed"] + 5, (b, a)

    out = demo.run("heal")
    assert out.returncode == 0 and "removed: refuse-port" in out.stdout
    assert json.loads(demo.run("status", "--json").stdout)["state"]["faults"] == []


def test_down_leaves_nothing(demo: Demo) -> None:
    state = demo.state()
    pids = lab_pids(state["lab_id"])
    assert len(pids) >= 18  # 6 nodes, 7 servers, 5 clients
    out = demo.run("down")
    assert out.returncode == 0, out.stderr
    assert f"lab {state['lab_id']} removed" in out.stdout
    assert leftovers(state["pid"], pids, state["data_dir"], state["tmux_socket"]) == []
    assert not (demo.state_dir / "state.json").exists() and not (demo.state_dir / "control.sock").exists()
    again = demo.run("down")
    assert again.returncode == 0 and "nothing to remove" in again.stdout
    status = demo.run("status")
    assert status.returncode == 1 and "no lab is up" in status.stderr


def test_down_after_the_supervisor_was_killed(tmp_path: Path) -> None:
    """SIGKILL the process that owns the lab: down removes what it left by name prefix. The diag sensor
    here: this is about cleanup, and it spares six eBPF compiles."""
    require_kernel()
    demo = start(tmp_path / "state", "--sensor", "diag")
    try:
        state = demo.state()
        pids = lab_pids(state["lab_id"])
        assert len(pids) >= 18
        os.kill(state["pid"], signal.SIGKILL)
        deadline = time.monotonic() + 10
        while _alive(state["pid"]) and time.monotonic() < deadline:
            time.sleep(0.1)
        status = demo.run("status")
        assert status.returncode == 1 and "crashed lab left state" in status.stderr
        out = demo.run("down")
        assert out.returncode == 0, out.stderr
        assert f"lab {state['lab_id']}" in out.stdout and "removed what a crashed lab left" in out.stdout
        assert leftovers(state["pid"], pids, state["data_dir"], state["tmux_socket"]) == []
    finally:
        demo.run("down")
