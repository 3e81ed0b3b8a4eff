"""Setup's bad-input paths: without root it says what is missing and how to fix it, and exits non-zero."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests._support.env import require_kernel

ROOT = Path(__file__).resolve().parents[2]


def test_setup_refuses_without_root() -> None:
    require_kernel()  # needs root to drop to another user
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.fail("setpriv (util-linux) is missing")
    res = subprocess.run([setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", "bash",
                          str(ROOT / "scripts" / "setup.sh")], capture_output=True, text=True, timeout=60)
    assert res.returncode == 1
    assert "must run as root" in res.stderr and "Fix:" in res.stderr
    assert "Traceback" not in res.stderr


def test_setup_is_idempotent_and_quiet_when_done() -> None:
    """A second run on a set-up machine installs nothing and touches no headers."""
    require_kernel()
    res = subprocess.run(["bash", str(ROOT / "scripts" / "setup.sh")], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    assert "installing" not in res.stderr and "linked" not in res.stderr
    assert "ready:" in res.stderr
