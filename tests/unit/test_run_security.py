"""``meshnode run`` and transport security: TLS or an explicit --insecure, nothing in between."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc

from meshnode.v1 import observer_pb2, observer_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]


def _env() -> dict[str, str]:
    env = {**os.environ, "MESHNODE_ALLOW_FAKE_SENSOR": "1", "PYTHONPATH": str(ROOT)}
    for k in ("MESHNODE_CONFIG", "MESHNODE_TLS_DIR", "MESHNODE_INSECURE"):
        env.pop(k, None)
    return env


def _run(tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "meshnode.cli_main", "run", "--sensor", "fake", "--listen", "127.0.0.1:0",
         "--metrics", "off", "--data-dir", str(tmp_path / "data"), *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=ROOT,
    )


def test_run_without_tls_or_insecure_exits_2_and_says_how(tmp_path: Path) -> None:
    proc = _run(tmp_path)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert "Traceback" not in err
    assert "--tls-dir" in err and "--insecure" in err
    assert "meshnode ca init --dir CA_DIR" in err and "meshnode ca issue NAME --dir CA_DIR" in err
    assert not (tmp_path / "data").exists()  # refused before the sensor or the store started


def test_run_with_a_missing_tls_dir_exits_2_naming_it(tmp_path: Path) -> None:
    proc = _run(tmp_path, "--tls-dir", str(tmp_path / "nope"))
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert "Traceback" not in err
    assert f"{tmp_path / 'nope'} is not a directory" in err and "meshnode ca issue" in err


def test_insecure_run_warns_loudly_and_status_says_insecure(tmp_path: Path) -> None:
    proc = _run(tmp_path, "--insecure", "--export-period", "0.5")
    assert proc.stderr is not None
    seen = ""
    addr = ""
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not addr:
            line = proc.stderr.readline()
            if not line and proc.poll() is not None:
                break
            seen += line
            m = re.search(r"listening on (\S+),", line)
            addr = m.group(1) if m else ""
        assert addr, seen

        async def status() -> observer_pb2.StatusResponse:
            async with grpc.aio.insecure_channel(addr) as ch:
                stub = observer_pb2_grpc.ObserverStub(ch)
                return await stub.Status(observer_pb2.StatusRequest(), timeout=10)

        st = asyncio.run(status())
        assert st.insecure is True
        proc.send_signal(signal.SIGTERM)
        _, rest = proc.communicate(timeout=30)
        seen += rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0
    warnings = [ln for ln in seen.splitlines() if " WARNING " in ln and "INSECURE" in ln]
    assert len(warnings) == 2, warnings
    assert "plaintext" in warnings[0] and "without client certificates" in warnings[0]
    assert "unsigned fleet queries and active tasks are accepted" in warnings[1]
