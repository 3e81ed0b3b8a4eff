"""``meshctl top`` end to end in a real terminal (tmux): data shows, keys work, a node that goes away
shows "reconnecting", and the dashboard recovers by itself when the node comes back on the same port.

These run against the fake node in a subprocess; test_top_real_node.py runs the same against a real
node (eBPF sensor) in a lab host.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from tests._support.tmux import Tmux

ROOT = Path(__file__).resolve().parents[2]



def _meshctl() -> str:
    exe = Path(sys.executable).with_name("meshctl")
    return str(exe) if exe.exists() else f"{sys.executable} -m meshnode.cli"


def _start_fake(port: int = 0, *extra: str) -> tuple[subprocess.Popen[str], int]:
    p = subprocess.Popen([sys.executable, "-m", "tests._support.fakenode", "--live",
                          "--port", str(port), *extra], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None
    line = p.stdout.readline()
    assert line.strip().isdigit(), f"fake node did not start: {line!r}"
    return p, int(line)


def test_top_in_tmux_shows_reconnects_and_recovers(tmux: Tmux) -> None:
    server, port = _start_fake()
    try:
        tmux.start(f"{_meshctl()} --node 127.0.0.1:{port} top")
        screen = tmux.wait("curl/4242", "fakeclient/777", "10.0.0.2:443", "10.0.0.9:8080", "connected",
                           "mesh: not enabled", "retransmit_burst")
        print("\n--- meshctl top (fake node), 100x40 ---\n" + screen)
        lines = screen.splitlines()
        assert lines[0].startswith(f"node 127.0.0.1:{port} 3f2a9c0d · ebpf/exact · period 10s · window 5m")
        assert lines[1].startswith("lost 3 · evicted 0")
        assert max(len(line) for line in lines) <= 80  # the 80-column layout, even in a wider terminal

        tmux.keys("s")
        tmux.wait("PROCESSES by failures")
        tmux.keys("/", "d", "i", "g", "Enter")
        screen = tmux.wait("process ~ 'dig'", "dig/99", absent="curl/4242 ")
        tmux.keys("Escape")
        tmux.wait("curl/4242")

        server.terminate()
        server.wait(10)
        screen = tmux.wait("reconnecting (attempt")
        print("\n--- node stopped ---\n" + "\n".join(screen.splitlines()[:4]))
        assert "Traceback" not in screen

        server, _ = _start_fake(port)
        screen = tmux.wait("connected · updated", "curl/4242", absent="reconnecting", timeout=30)
        print("\n--- node restarted on the same port ---\n" + "\n".join(screen.splitlines()[:4]))

        tmux.keys("q")
        deadline = time.monotonic() + 5
        while tmux.alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not tmux.alive(), "q did not quit"
    finally:
        server.terminate()
        server.wait(10)


def _then_report(command: str) -> str:
    """Run ``command`` in the pane, then print its exit code and whether the tty is back in canonical mode."""
    # trap with a handler (not an ignore, which the child would inherit) keeps the shell alive on Ctrl-C
    return (f"sh -c 'trap : INT; {command}; echo \"rc=$?\"; stty -a | grep -o -- \"-*icanon\" | head -1; "
            "sleep 60'")


def test_top_ctrl_c_exits_130_and_restores_the_terminal(tmux: Tmux) -> None:
    server, port = _start_fake()
    try:
        tmux.start(_then_report(f"{_meshctl()} --node 127.0.0.1:{port} top"))
        tmux.wait("curl/4242", "connected")
        tmux.keys("C-c")
        screen = tmux.wait("rc=")
        assert "rc=130" in screen
        assert "\nicanon" in screen and "-icanon" not in screen  # cbreak undone
        assert "Traceback" not in screen
    finally:
        server.terminate()
        server.wait(10)


def test_top_permission_denied_exits_5_with_one_line(tmux: Tmux) -> None:
    server, port = _start_fake(0, "--fail", "Status=PERMISSION_DENIED")
    try:
        tmux.start(_then_report(f"{_meshctl()} --node 127.0.0.1:{port} top"))
        screen = tmux.wait("rc=")
        print("\n--- top against a node that refuses ---\n" + screen.strip())
        lines = [line for line in screen.splitlines() if line.strip()]
        message = (f"meshctl top: the node at 127.0.0.1:{port} refused Observer.Status: fake node: "
                   "permission_denied; check meshctl's credentials and the node's access rules")
        # one line of output, wrapped by the 100-column pane
        assert "".join(lines[:-2]) == message
        assert lines[-2:] == ["rc=5", "icanon"]
        assert "rc=5" in screen and "icanon" in screen and "-icanon" not in screen
        assert "Traceback" not in screen
    finally:
        server.terminate()
        server.wait(10)
