"""A tmux server on a private socket: a real terminal for full-screen tests (``meshctl top``).

Tests take it through the ``tmux`` fixture of tests/conftest.py, which kills the server afterwards.
"""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid

TMUX = shutil.which("tmux")


class Tmux:
    """One tmux server on a private socket, so the test touches no one else's sessions."""

    def __init__(self) -> None:
        self.socket = f"meshctl-test-{uuid.uuid4().hex[:10]}"
        self.session = "top"

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(TMUX), "-L", self.socket, *args], capture_output=True, text=True,
                              check=check, timeout=10)

    def start(self, command: str) -> None:
        self.run("new-session", "-d", "-s", self.session, "-x", "100", "-y", "40", command)

    def screen(self) -> str:
        r = self.run("capture-pane", "-p", "-t", self.session, check=False)
        return r.stdout

    def keys(self, *keys: str) -> None:
        self.run("send-keys", "-t", self.session, *keys)

    def alive(self) -> bool:
        return self.run("has-session", "-t", self.session, check=False).returncode == 0

    def wait(self, *needles: str, absent: str | None = None, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        screen = ""
        while time.monotonic() < deadline:
            screen = self.screen()
            if all(n in screen for n in needles) and (absent is None or absent not in screen):
                return screen
            time.sleep(0.2)
        raise AssertionError(f"waited {timeout}s for {needles} (absent {absent!r}); screen:\n{screen}")

    def kill(self) -> None:
        self.run("kill-server", check=False)
