"""A real ``meshnode run`` process (fake sensor) killed with SIGKILL and restarted on the same data dir."""

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


def _start(data_dir: Path) -> tuple[subprocess.Popen[str], str, str]:
    env = {**os.environ, "MESHNODE_ALLOW_FAKE_SENSOR": "1", "MESHNODE_FAKE_FLOWS_PER_POLL": "3",
           "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "meshnode.cli_main", "run", "--insecure", "--sensor", "fake", "--listen", "127.0.0.1:0",
         "--metrics", "off", "--export-period", "0.3", "--data-dir", str(data_dir)],
        stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT,
    )
    assert proc.stderr is not None
    deadline = time.monotonic() + 20
    seen = ""
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        seen += line
        m = re.search(r"listening on (\S+),", line)
        if m:
            return proc, m.group(1), seen
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError("meshnode run did not start")


async def _call(addr: str, method: str, request: object) -> object:
    async with grpc.aio.insecure_channel(addr) as ch:
        stub = observer_pb2_grpc.ObserverStub(ch)
        if method == "Flows":
            return [r.flow.flow_id async for r in stub.Flows(request, timeout=10)]
        return await getattr(stub, method)(request, timeout=10)


def test_sigkill_then_restart_keeps_exported_periods_and_marks_the_cut_one(tmp_path: Path) -> None:
    proc, addr, _ = _start(tmp_path)
    try:
        time.sleep(1.5)
        before = asyncio.run(_call(addr, "Flows", observer_pb2.FlowsRequest(number=1_000_000)))
        assert isinstance(before, list) and before
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    proc, addr, startup = _start(tmp_path)
    assert "1 export period(s) were cut short by a crash" in startup
    try:
        after = asyncio.run(_call(addr, "Flows", observer_pb2.FlowsRequest(number=1_000_000)))
        assert isinstance(after, list)
        assert set(before) <= set(after), "records exported before the kill are gone"
        assert len(after) == len(set(after)), "duplicated records"
        st = asyncio.run(_call(addr, "Status", observer_pb2.StatusRequest()))
        assert st.completeness.incomplete_periods == 1  # type: ignore[attr-defined]
        sums = asyncio.run(_call(addr, "Summaries", observer_pb2.SummariesRequest(number=1000)))
        incomplete = [s for s in sums.summaries if s.incomplete]  # type: ignore[attr-defined]
        assert len(incomplete) == 1 and incomplete[0].final_flows == 0
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
        assert proc.returncode == 0 and "Traceback" not in err
    finally:
        if proc.poll() is None:
            proc.kill()
