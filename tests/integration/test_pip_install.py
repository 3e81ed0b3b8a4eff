"""``pip install .`` on its own: a fresh virtual environment (no setup.sh, no editable install, no .pth for bcc)
gets one package, ``meshnode``, with the generated protobuf modules and the BPF sources in it, and no generic
top-level ``cli`` or ``probes``; its ``meshnode run`` starts the eBPF sensor (bcc found in Debian's
dist-packages) and its ``meshctl`` asks it for its status."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests._support.env import require_kernel

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_pip_install_dot_works_on_its_own(tmp_path: Path) -> None:
    require_kernel()
    venv = tmp_path / "venv"
    subprocess.run([sys._base_executable, "-m", "venv", str(venv)], check=True, timeout=120)  # type: ignore[attr-defined]
    pip = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(ROOT)], capture_output=True, text=True,
                         timeout=900, cwd=tmp_path)
    assert pip.returncode == 0, pip.stderr[-3000:]
    purelib = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    site = Path(subprocess.run([str(venv / "bin" / "python"), "-c", purelib], capture_output=True, text=True,
                               check=True, cwd=tmp_path).stdout.strip())
    assert not (site / "cli").exists() and not (site / "probes").exists(), sorted(p.name for p in site.iterdir())
    pkg = site / "meshnode"
    assert (pkg / "v1" / "observer_pb2.py").is_file() and (pkg / "probes" / "sensor.bpf.c").is_file()
    assert not (pkg / "cli").is_symlink() and not (pkg / "probes").is_symlink()

    port = _free_port()
    node = subprocess.Popen([str(venv / "bin" / "meshnode"), "run", "--insecure", "--listen", f"127.0.0.1:{port}",
                             "--data-dir", str(tmp_path / "data"), "--metrics", "off", "--sensor", "ebpf",
                             "--export-period", "1"], cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        status = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and node.poll() is None:
            out = subprocess.run([str(venv / "bin" / "meshctl"), "--node", f"127.0.0.1:{port}", "status", "--json"],
                                 capture_output=True, text=True, cwd=tmp_path, timeout=30)
            if out.returncode == 0:
                status = json.loads(out.stdout)
                break
            time.sleep(0.5)
        assert status is not None, node.stderr.read() if node.poll() is not None and node.stderr else "no answer"
        assert status["sensor_mode"] == "ebpf", status
    finally:
        node.terminate()
        node.wait(timeout=30)
